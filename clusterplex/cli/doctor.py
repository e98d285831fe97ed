"""clusterplex doctor: finds what keeps transcodes off the workers and says how to fix it.

On the Plex host it checks the shim's dpkg diversion, Plex's transcode directory
(from its Preferences.xml) against the workers' ``transcode_root``, the
orchestrator (a real authenticated handshake), and asks every connected worker,
through the orchestrator, for a probe: does it see a sample media file and its
transcode root, reach the relay, have its codecs, run as Plex's uid, and what
time is it there. On a worker host it checks that worker locally.

Layout: the ``check_*`` and ``parse_*`` functions are pure (facts in, findings
out); the ``gather``/``run_*`` functions do the I/O. What a worker runs for a probe,
and the filesystem checks both sides share, are in ``clusterplex.worker.probe``.
"""

import asyncio
import ipaddress
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

from ..core import cache, config, protocol
from ..worker import rewrite, runner
from ..worker.probe import ping, rw_test_as, sample_test, uid_of

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
EX_FAILED = 1
EX_USAGE = 2

PLEX_DIR = os.path.dirname(config.PLEX_TRANSCODER)
TRANSCODER_NAME = os.path.basename(config.PLEX_TRANSCODER)
PLEX_SUPPORT = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"
PREFERENCES = f"{PLEX_SUPPORT}/Preferences.xml"
PLEX_DB = f"{PLEX_SUPPORT}/Plug-in Support/Databases/com.plexapp.plugins.library.db"
SHIM_PACKAGE = "clusterplex-pms"
CLOCK_WARN = 2.0          # seconds of clock difference worth a warning
CLOCK_FAIL = 30.0         # ... and a failure (logs, segment times and TLS go wrong)


def finding(check, status, message, fix="", host=""):
    """One result: ``check`` (a stable id), ``status`` (ok/warn/fail/skip), a sentence, the fix."""
    return {"check": check, "host": host, "status": status, "message": message, "fix": fix}


# --- pure: Plex's files ------------------------------------------------------------------

class PreferencesError(Exception):
    pass


def parse_preferences(text):
    """Attributes of Plex's ``<Preferences …/>`` element."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise PreferencesError(f"not valid XML ({e})") from None
    if root.tag != "Preferences":
        raise PreferencesError(f"root element is <{root.tag}>, not <Preferences>")
    return dict(root.attrib)


def plex_transcode_dir(prefs, preferences_path):
    """(Plex's transcode directory, where that comes from). Sessions go to ``<dir>/Transcode/Sessions``.

    ``TranscoderTempDirectory`` when set, else Plex's default: ``Cache`` next to Preferences.xml.
    """
    value = (prefs.get("TranscoderTempDirectory") or "").strip()
    if value:
        return os.path.normpath(value), f"TranscoderTempDirectory in {preferences_path}"
    return (os.path.join(os.path.dirname(preferences_path), "Cache"),
            f"Plex's default: TranscoderTempDirectory is not set in {preferences_path}")


def parse_divert(listpackage, truename, path):
    """(package, diverted-to) from ``dpkg-divert --listpackage`` / ``--truename`` output; None if not diverted."""
    package = listpackage.strip()
    target = truename.strip()
    if not package and target in ("", path):
        return None
    return package or "LOCAL", target


def covered_by(networks_text, address):
    """Is ``address`` in Plex's ``allowedNetworks`` (``10.0.0.0/8,192.168.1.0/255.255.255.0``)?"""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for item in (networks_text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            if ip in ipaddress.ip_network(item, strict=False):
                return True
        except ValueError:
            continue
    return False


def same_dir(a, b):
    return os.path.normpath(a) == os.path.normpath(b)


# --- pure: Plex-host checks --------------------------------------------------------------

def check_shim(path, diversion, present, path_is_shim, distrib_present, distrib_is_shim, original):
    """The shim at Plex's transcoder path, Plex's binary at the diverted name.

    ``diversion``: (package, diverted-to) or None; ``original``: ``original_transcoder`` from pms.yaml.
    """
    distrib = path + ".distrib"
    reinstall = f"reinstall the shim: apt install --reinstall {SHIM_PACKAGE}"
    if diversion is None:
        if not present:
            return finding("shim", FAIL, f"Plex's transcoder {path} does not exist and is not diverted: Plex "
                                         f"Media Server is not installed here, or elsewhere.",
                           "install plexmediaserver, then " + reinstall + " (or pass --plex-dir)")
        if path_is_shim:
            return finding("shim", FAIL, f"the shim is at {path} but dpkg knows no diversion for it: the next "
                                         f"Plex upgrade overwrites it and transcodes silently stay local.",
                           reinstall)
        return finding("shim", FAIL, f"the shim is not installed: {path} is Plex's own transcoder (no dpkg "
                                     f"diversion), so every transcode runs on this host.",
                       f"install the shim: apt install {SHIM_PACKAGE} (it diverts Plex's transcoder to "
                       f"{distrib})")
    package, target = diversion
    if package != SHIM_PACKAGE or not same_dir(target, distrib):
        return finding("shim", FAIL, f"{path} is diverted to {target} by {package}, not to {distrib} by "
                                     f"{SHIM_PACKAGE}: Plex's transcoder is not where the shim runs it from.",
                       f"remove that diversion (dpkg-divert --package {package} --rename --remove '{path}'), "
                       f"then {reinstall}")
    if not present or not path_is_shim:
        what = "missing" if not present else "Plex's own binary, not the shim"
        return finding("shim", FAIL, f"{path} is diverted by {SHIM_PACKAGE} but is {what}: transcodes do not "
                                     f"reach the cluster.", reinstall)
    if not distrib_present or distrib_is_shim:
        what = "missing" if not distrib_present else "a copy of the shim"
        return finding("shim", FAIL, f"Plex's real transcoder at {distrib} is {what}: local transcodes and "
                                     f"fallbacks fail.",
                       "reinstall Plex so its binary lands at the diverted name: apt install --reinstall "
                       "plexmediaserver")
    if original and not same_dir(original, distrib):
        return finding("shim", FAIL, f"the shim runs Plex's transcoder from original_transcoder {original}, "
                                     f"but Plex's binary is at {distrib}.",
                       f"set original_transcoder: \"{distrib}\" in pms.yaml (or remove the key)")
    return finding("shim", OK, f"Plex runs the ClusterPlex shim at {path}; Plex's own transcoder is at {distrib} "
                               f"(diverted by {SHIM_PACKAGE}).")


def check_worker_transcode_dir(host, plex_dir, source, transcode):
    """Plex's transcode directory (as this worker maps it) against the worker's transcode_root."""
    root, mapped = transcode.get("root", ""), transcode.get("mapped", "") or plex_dir
    if not plex_dir:
        return None
    if runner.under(mapped, root):
        here = f"is {mapped} here, inside" if not same_dir(mapped, root) else "is"
        return finding("transcode-path", OK, f"Plex's transcode directory {plex_dir} {here} transcode_root "
                                             f"{root}.", host=host)
    where = f" (mapped to {mapped} by path_map)" if not same_dir(mapped, plex_dir) else ""
    return finding("transcode-path", FAIL,
                   f"Plex writes transcodes to {plex_dir} ({source}){where}, but {host}'s transcode_root is "
                   f"{root}: every job sent there is refused and plays fall back to the Plex host.",
                   f"make both the same shared directory: in Plex, Settings > Transcoder > \"Transcoder temporary "
                   f"directory\" = the share (e.g. {root}), then restart Plex; or set transcode_root (and "
                   f"path_map) in {host}'s worker.yaml", host=host)


def check_sample(host, sample):
    path, mapped = sample.get("path", ""), sample.get("mapped", "")
    shown = path + (f" (= {mapped} there, by path_map)" if mapped and mapped != path else "")
    if sample.get("ok"):
        return finding("media", OK, f"sees the media: {shown} is readable.", host=host)
    return finding("media", FAIL, f"cannot see the media: {shown}: {sample.get('problem') or 'not readable'}.",
                   f"mount the media share on {host} at the same path as on the Plex host (check `findmnt`, "
                   f"/etc/fstab, `systemctl status remote-fs.target`), or add a path_map in {host}'s "
                   f"worker.yaml", host=host)


def check_transcode_root(host, transcode, user_hint="the worker's user (plex)"):
    root = transcode.get("root", "")
    if transcode.get("ok"):
        return finding("transcode-root", OK, f"wrote, read back and deleted a file in transcode_root {root}.",
                       host=host)
    return finding("transcode-root", FAIL, f"transcode_root {root}: {transcode.get('problem') or 'not usable'}.",
                   f"mount the shared transcode directory at {root} on {host} and make it writable by "
                   f"{user_hint} (same uid as on the Plex host)", host=host)


def check_relay(host, relay):
    url, kind = relay.get("url", ""), relay.get("kind", "relay")
    what = "the relay" if kind == "relay" else "Plex directly (relay disabled)"
    if relay.get("ok"):
        return finding("relay", OK, f"reaches {what} at {url}.", host=host)
    problem = relay.get("problem") or "no answer"
    if kind == "relay":
        fix = (f"make sure clusterplex-relay runs on the Plex host and listens on an address {host} can reach "
               f"(relay.listen), that relay.advertise in pms.yaml is that address as {host} sees it, and that "
               f"no firewall blocks the port")
        if relay.get("status") == 403:
            fix = ("the relay answers only workers the orchestrator knows: check that the orchestrator lists "
                   f"{host} (clusterplex status), or add its network to relay.allow in pms.yaml")
    else:
        fix = (f"make sure {host} can reach Plex at {url} (relay.direct_url in pms.yaml) and that Plex listens "
               f"there")
    return finding("relay", FAIL, f"cannot reach {what} at {url}: {problem}; Plex never hears about the "
                                  f"transcode's progress and playback stalls.", fix, host=host)


def check_codecs(host, codecs):
    """``codecs``: {enabled, version, arch, state, present, total, reason} (state None: not provisioned)."""
    version, arch = codecs.get("version"), codecs.get("arch")
    if version is None:
        return finding("codecs", OK, "the transcoder carries no Plex codec version: no codec libraries to "
                                     "provision.", host=host)
    if not codecs.get("enabled"):
        return finding("codecs", WARN, f"the transcoder needs Plex's codec libraries {version} ({arch}), but "
                                       f"codecs.enabled is false: jobs that need a codec not on this host fail.",
                       f"set codecs.enabled: true in {host}'s worker.yaml (or provide the libraries yourself "
                       f"with env FFMPEG_EXTERNAL_LIBS)", host=host)
    state = codecs.get("state")
    counts = f"{codecs.get('present', 0)}/{codecs.get('total', 0)}"
    if state == "ready":
        return finding("codecs", OK, f"Plex codec libraries {version} ({arch}) ready: {counts}.", host=host)
    if state in ("downloading", "idle"):
        return finding("codecs", WARN, f"Plex codec libraries {version} ({arch}) still downloading: {counts}; the "
                                       f"worker takes jobs once they are all there.",
                       f"wait, or watch `clusterplex worker codecs` on {host}", host=host)
    reason = codecs.get("reason") or "not provisioned"
    return finding("codecs", FAIL, f"Plex codec libraries {version} ({arch}) missing: {counts} present "
                                   f"({reason}); the worker takes no jobs without them.",
                   f"let {host} reach codecs.server (Plex's codec download server), then run `clusterplex worker "
                   f"codecs --refresh` on {host}", host=host)


def check_uid(host, plex_user, local_uid, worker_uid, worker_plex_uid):
    if local_uid is None:
        return finding("uid", WARN, f"no user {plex_user} on this host to compare {host}'s uids with.",
                       "pass --plex-user with the user Plex runs as", host=host)
    bad = []
    if worker_uid != local_uid:
        bad.append(f"the worker runs as uid {worker_uid}")
    if worker_plex_uid is not None and worker_plex_uid != local_uid:
        bad.append(f"user {plex_user} there is uid {worker_plex_uid}")
    if not bad:
        return finding("uid", OK, f"runs as uid {local_uid}, the uid of {plex_user} here.", host=host)
    return finding("uid", FAIL, f"{' and '.join(bad)}, but {plex_user} is uid {local_uid} on the Plex host: files "
                                f"one writes in the shared transcode directory the other cannot read or clean up.",
                   f"give {plex_user} the same uid everywhere (on {host}: usermod -u {local_uid} {plex_user}; "
                   f"groupmod likewise; then chown its files) and run clusterplex-worker as {plex_user}", host=host)


def clock_offset(worker_clock, received_by_orchestrator, orchestrator_clock, received_here):
    """Seconds the worker's clock is ahead of this host's (each step off by a one-way network delay)."""
    return (worker_clock - received_by_orchestrator) + (orchestrator_clock - received_here)


def check_clock(host, offset):
    off = abs(offset)
    text = f"clock {'ahead of' if offset > 0 else 'behind'} this host's by {off:.1f} s"
    if off <= CLOCK_WARN:
        return finding("clock", OK, f"clock within {CLOCK_WARN:g} s of this host's ({offset:+.2f} s).", host=host)
    return finding("clock", WARN if off <= CLOCK_FAIL else FAIL,
                   f"{text}: logs do not line up and timed segments and tokens can go wrong.",
                   f"run time sync on every host (timedatectl set-ntp true; systemctl status systemd-timesyncd "
                   f"or chrony) on {host} and here", host=host)


def check_worker_result(entry, ctx):
    """Findings for one worker from the orchestrator's ``probe_results`` entry.

    ``ctx``: plex_dir, plex_dir_source, sample (bool: one was sent), relay (bool), plex_user, plex_uid,
    orchestrator_clock, received (local time the results arrived).
    """
    host = entry.get("name") or entry.get("address") or "?"
    result = entry.get("result")
    if result is None:
        why = entry.get("error") or "no answer"
        if entry.get("state") not in (None, "ready", "not_ready", "draining"):
            return [finding("worker", FAIL, f"the orchestrator is not connected to this worker at "
                                            f"{entry.get('address')}: {entry.get('reason') or why}.",
                            f"start clusterplex-worker on it (systemctl status clusterplex-worker), let the "
                            f"orchestrator reach its port, and make sure it has the same secret (clusterplex "
                            f"join)", host=host)]
        return [finding("worker", FAIL, f"did not answer the probe: {why}.",
                        "update clusterplex on it to this version; look at journalctl -u clusterplex-worker",
                        host=host)]
    out = []
    state, reason = result.get("state"), result.get("reason")
    if state == "ready":
        out.append(finding("worker", OK, f"ready (clusterplex {result.get('version')}).", host=host))
    elif state == "draining":
        out.append(finding("worker", WARN, "draining: it takes no new jobs.",
                           f"clusterplex worker resume {host}", host=host))
    else:
        out.append(finding("worker", FAIL, f"not ready: {reason}.", "see the checks below and journalctl -u "
                                                                     "clusterplex-worker", host=host))
    t = result["transcoder"]
    if t.get("ok"):
        out.append(finding("transcoder", OK, f"transcoder {t.get('path')} present.", host=host))
    else:
        out.append(finding("transcoder", FAIL, f"{t.get('problem')}.",
                           f"install Plex Media Server on {host} (the transcoder comes with it) or set "
                           f"`transcoder` in its worker.yaml", host=host))
    if ctx.get("sample"):
        if result.get("sample") is not None:
            out.append(check_sample(host, result["sample"]))
    out.append(check_transcode_root(host, result["transcode"]))
    tp = check_worker_transcode_dir(host, ctx.get("plex_dir"), ctx.get("plex_dir_source", ""), result["transcode"])
    if tp is not None:
        out.append(tp)
    if ctx.get("relay") and result.get("relay") is not None:
        out.append(check_relay(host, result["relay"]))
    out.append(check_codecs(host, result["codecs"]))
    out.append(check_uid(host, ctx.get("plex_user", "plex"), ctx.get("plex_uid"), result["uid"],
                         result.get("plex_uid")))
    if isinstance(entry.get("received"), (int, float)) and ctx.get("orchestrator_clock") is not None:
        out.append(check_clock(host, clock_offset(result["clock"], entry["received"], ctx["orchestrator_clock"],
                                                  ctx["received"])))
    return out


def check_allowed_networks(addresses, allowed_text, readable):
    """Relay disabled: Plex must accept the workers' callbacks without auth."""
    fix = ("in Plex, Settings > Network > \"List of IP addresses and networks that are allowed without auth\": "
           "add the workers' network (e.g. 192.168.1.0/24)")
    if not readable:
        return finding("allowed-networks", WARN, "relay.enabled is false: workers call Plex directly, and Plex "
                                                 "accepts their progress only from networks allowed without auth "
                                                 "(Preferences.xml not readable to check).", fix)
    missing = [a for a in addresses if not covered_by(allowed_text, a)]
    if missing:
        return finding("allowed-networks", FAIL, f"relay.enabled is false, but Plex does not allow "
                                                 f"{', '.join(missing)} without auth (allowedNetworks: "
                                                 f"{allowed_text or 'empty'}): their progress callbacks are "
                                                 f"refused and plays stall.", fix)
    return finding("allowed-networks", OK, f"relay.enabled is false; Plex allows the workers without auth "
                                           f"({allowed_text}).")


def summary(findings):
    counts = {s: 0 for s in (OK, WARN, FAIL, SKIP)}
    for f in findings:
        counts[f["status"]] += 1
    return counts


def exit_code(findings):
    return EX_FAILED if any(f["status"] == FAIL for f in findings) else 0


def format_text(findings, title):
    labels = {OK: "ok", WARN: "WARN", FAIL: "FAIL", SKIP: "skip"}
    lines = [title]
    for f in findings:
        where = f"{f['host']}: " if f["host"] else ""
        lines.append(f"  {labels[f['status']]:<4}  {where}{f['check']}: {f['message']}")
        if f["fix"] and f["status"] in (WARN, FAIL, SKIP):
            lines.append(f"        fix: {f['fix']}")
    c = summary(findings)
    lines.append(f"{c[OK]} ok, {c[WARN]} warnings, {c[FAIL]} failed" + (f", {c[SKIP]} skipped" if c[SKIP] else ""))
    return "\n".join(lines)


# --- I/O: this host ------------------------------------------------------------------------

def divert_query(path, admindir=None, dpkg_divert="dpkg-divert"):
    """Ask dpkg who diverts ``path``: (package, diverted-to), None, or raise OSError when dpkg cannot say."""
    base = [dpkg_divert] + (["--admindir", admindir] if admindir else [])
    outs = []
    for flag in ("--listpackage", "--truename"):
        r = subprocess.run(base + [flag, path], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise OSError(f"dpkg-divert {flag} failed: {(r.stderr or r.stdout).strip()}")
        outs.append(r.stdout)
    return parse_divert(outs[0], outs[1], path)


def sample_from_plex_db(path, limit=50):
    """A media file from Plex's library database that exists here, or None."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    try:
        rows = db.execute("SELECT file FROM media_parts WHERE file LIKE '/%' ORDER BY id DESC LIMIT ?",
                          (limit,)).fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    for (f,) in rows:
        if isinstance(f, str) and os.path.isfile(f):
            return f
    return None


# --- I/O: the orchestrator ------------------------------------------------------------------

class Unreachable(Exception):
    """The orchestrator could not be asked: ``check`` finding attached."""

    def __init__(self, f):
        super().__init__(f["message"])
        self.finding = f


async def ask_orchestrator(url, secret, probe, timeout):
    """Handshake with the cluster secret, send the probe (unless None); (finding, probe_results msg or None)."""
    import aiohttp
    from ..common import link
    async with aiohttp.ClientSession() as http:
        try:
            ws, _info = await link.connect(http, url + protocol.SHIM_PATH, secret, protocol.ROLE_SHIM,
                                           protocol.ROLE_ORCHESTRATOR, None, timeout)
        except protocol.AuthError as e:
            raise Unreachable(finding(
                "orchestrator", FAIL, f"the orchestrator at {url} does not accept this host's cluster secret ({e}).",
                "use the same secret on both: on the orchestrator host `clusterplex token`, here "
                "`clusterplex join TOKEN` (or copy secret_file)")) from None
        except aiohttp.WSServerHandshakeError as e:
            raise Unreachable(finding(
                "orchestrator", FAIL, f"{url} answers HTTP {e.status}, but it is not a ClusterPlex orchestrator.",
                "set `orchestrator` in pms.yaml to the orchestrator's address (port 3500 by default)")) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise Unreachable(finding(
                "orchestrator", FAIL, f"cannot reach the orchestrator at {url}: "
                                      f"{e or 'no answer within ' + format(timeout, 'g') + ' s'}.",
                "start it (systemctl status clusterplex-orchestrator on its host) and check `orchestrator` in "
                "pms.yaml and the firewall")) from None
        ok = finding("orchestrator", OK, f"the orchestrator at {url} answers and accepts this host's cluster secret.")
        if probe is None:
            await ws.close()
            return ok, None
        try:
            await ws.send_str(protocol.encode({"type": "probe", "probe": probe}))
            deadline = time.monotonic() + probe["timeout"] + timeout
            while True:
                msg = await asyncio.wait_for(ws.receive(), max(0.1, deadline - time.monotonic()))
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise Unreachable(finding("orchestrator", FAIL, f"the orchestrator at {url} closed the "
                                                                    f"connection instead of answering the probe.",
                                              "update clusterplex-orchestrator to this version"))
                reply = protocol.decode(msg.data)
                if reply["type"] == "probe_results":
                    return ok, reply
        except asyncio.TimeoutError:
            raise Unreachable(finding("orchestrator", FAIL, f"the orchestrator at {url} accepts this host's secret "
                                                            f"but did not answer the probe.",
                                      "update clusterplex-orchestrator to this version")) from None
        except protocol.ProtocolError as e:
            raise Unreachable(finding("orchestrator", FAIL, f"the orchestrator at {url} sent a bad answer: {e}.",
                                      "update clusterplex-orchestrator to this version")) from None
        finally:
            await ws.close()


def _orchestrator_url(opts, cfg):
    if opts.orchestrator:
        return opts.orchestrator.rstrip("/"), ""
    if cfg.orchestrator == "auto":
        found = cache.read(cfg.discovery.cache_file)
        if not found:
            return None, (f"orchestrator is auto and the relay has not found one ({cfg.discovery.cache_file} "
                          f"missing)")
        return found["url"], ""
    return cfg.orchestrator, ""


# --- the Plex host ---------------------------------------------------------------------------

def run_pms(opts):
    findings = []
    try:
        cfg = config.load("pms", opts.config)
        findings.append(finding("config", OK, f"{opts.config} is valid."))
    except config.ConfigError as e:
        findings.append(finding("config", FAIL, f"{e}.", f"fix {opts.config} (see /usr/share/doc/clusterplex, "
                                                           f"etc/pms.yaml)"))
        cfg = config.PMS.default_value()

    # the shim and its diversion
    path = os.path.join(opts.plex_dir, TRANSCODER_NAME)
    try:
        diversion = (opts.divert_query or divert_query)(path, opts.dpkg_admindir)
    except (OSError, subprocess.TimeoutExpired) as e:
        findings.append(finding("shim", SKIP, f"cannot ask dpkg about {path}: {e}.",
                                "on a system without dpkg the shim must replace Plex's transcoder by hand"))
    else:
        distrib = path + ".distrib"
        findings.append(check_shim(path, diversion, os.path.exists(path), runner.is_shim(path), os.path.exists(distrib),
                                   runner.is_shim(distrib), cfg.original_transcoder))

    # Plex's transcode directory
    plex_dir = source = ""
    prefs = {}
    prefs_ok = False
    try:
        with open(opts.plex_preferences, "rb") as f:
            prefs = parse_preferences(f.read(1 << 20))
        prefs_ok = True
        plex_dir, source = plex_transcode_dir(prefs, opts.plex_preferences)
    except (OSError, PreferencesError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        findings.append(finding("transcode-dir", WARN, f"cannot read Plex's settings {opts.plex_preferences}: "
                                                       f"{why}; Plex's transcode directory is not checked.",
                                "run as root (sudo clusterplex doctor) or pass --plex-preferences"))
    if plex_dir:
        problem, who = rw_test_as(plex_dir, opts.plex_user)       # Plex writes there as its user
        problem = f"{problem} (checked as {who})" if problem else ""
        if opts.transcode_root and not same_dir(plex_dir, opts.transcode_root):
            findings.append(finding("transcode-dir", FAIL, f"Plex writes transcodes to {plex_dir} ({source}), not "
                                                           f"to the shared transcode root {opts.transcode_root}.",
                                    f"in Plex, Settings > Transcoder > \"Transcoder temporary directory\" = "
                                    f"{opts.transcode_root}, then restart Plex"))
        elif problem:
            findings.append(finding("transcode-dir", FAIL, f"Plex's transcode directory {plex_dir} ({source}): "
                                                           f"{problem}.",
                                    f"mount the shared transcode directory there, writable by {opts.plex_user}"))
        else:
            findings.append(finding("transcode-dir", OK, f"Plex writes transcodes to {plex_dir} ({source})."))

    # a sample media path
    sample = opts.sample or sample_from_plex_db(opts.plex_db) or ""
    if sample and not os.path.exists(sample):
        findings.append(finding("media", FAIL, f"the sample {sample} does not exist on this host either.",
                                "give --sample a file from your Plex library"))
        sample = ""
    elif sample:
        findings.append(finding("media", OK, f"sample media file {sample}"
                                             f"{'' if opts.sample else ' (from Plex library database)'} exists "
                                             f"here; every worker must see it."))
    else:
        findings.append(finding("media", SKIP, "no sample media file: the workers' view of the media is not "
                                               "checked.", "pass --sample /path/to/a/file/in/your/library"))

    # what the workers must reach
    relay_enabled = getattr(cfg.relay, "enabled", True)
    if relay_enabled:
        relay_url = cfg.relay.advertise or f"http://{socket.gethostname()}:{cfg.relay.listen[1]}"
        relay_kind = "relay"
    else:
        relay_url = getattr(cfg.relay, "direct_url", "") or cfg.plex_url
        relay_kind = "plex"

    # the orchestrator and, through it, every worker
    plex_uid = uid_of(opts.plex_user)
    url, why = _orchestrator_url(opts, cfg)
    secret = None
    try:
        secret = config.load_secret(cfg.secret_file)
    except config.ConfigError as e:
        findings.append(finding("secret", FAIL, f"{e}.", "run as root (sudo clusterplex doctor), or join this host: "
                                                         "clusterplex join TOKEN"))
    if url is None:
        findings.append(finding("orchestrator", FAIL, f"{why}.", "start clusterplex-relay, or set `orchestrator` "
                                                                 "in pms.yaml, or pass --orchestrator URL"))
    if url is None or secret is None:
        return findings
    probe = {"sample": sample, "transcode_dir": plex_dir, "relay_url": relay_url, "relay_kind": relay_kind,
             "plex_user": opts.plex_user, "timeout": opts.timeout}
    try:
        probe = protocol.check_probe(probe)
        ok, reply = asyncio.run(ask_orchestrator(url, secret, probe, min(opts.timeout, 10.0)))
    except protocol.ProtocolError as e:
        findings.append(finding("orchestrator", FAIL, f"cannot probe: {e}.", "check the options"))
        return findings
    except Unreachable as e:
        findings.append(e.finding)
        return findings
    received = time.time()
    findings.append(ok)
    workers = [w for w in reply.get("workers", []) if isinstance(w, dict)] \
        if isinstance(reply.get("workers"), list) else []
    if reply.get("error"):
        findings.append(finding("workers", FAIL, f"the orchestrator did not probe: {reply['error']}.",
                                "update clusterplex-orchestrator to this version"))
    if not workers:
        findings.append(finding("workers", FAIL, "the orchestrator knows no worker: every transcode stays on "
                                                 "this host.",
                                "install clusterplex-worker on the workers and run `clusterplex join TOKEN` there "
                                "(token from `clusterplex token`); mDNS must reach them, or list them in the "
                                "orchestrator's `workers`"))
        return findings
    ready = sum(1 for w in workers if isinstance(w.get("result"), dict) and w["result"].get("state") == "ready")
    findings.append(finding("workers", OK if ready else FAIL, f"{ready} of {len(workers)} workers ready.",
                            "" if ready else "see each worker's findings below"))
    ctx = {"plex_dir": plex_dir, "plex_dir_source": source, "sample": bool(sample), "relay": True,
           "plex_user": opts.plex_user, "plex_uid": plex_uid,
           "orchestrator_clock": reply.get("clock") if isinstance(reply.get("clock"), (int, float)) else None,
           "received": received}
    for w in sorted(workers, key=lambda w: str(w.get("name"))):
        res = w.get("result")
        if res is not None:
            try:
                w = dict(w, result=protocol.check_probe_result(res))
            except protocol.ProtocolError as e:
                w = dict(w, result=None, error=f"malformed probe result: {e}")
        findings.extend(check_worker_result(w, ctx))
    if not relay_enabled:
        addresses = [str(w.get("address", "")).rsplit(":", 1)[0].strip("[]") for w in workers]
        findings.append(check_allowed_networks(addresses, prefs.get("allowedNetworks", ""), prefs_ok))
    return findings


# --- a worker host ---------------------------------------------------------------------------

def run_worker(opts):
    import urllib.error
    import urllib.request
    findings = []
    try:
        cfg = config.load("worker", opts.worker_config)
        findings.append(finding("config", OK, f"{opts.worker_config} is valid."))
    except config.ConfigError as e:
        return [finding("config", FAIL, f"{e}.", f"fix {opts.worker_config} (see etc/worker.yaml)")]
    host = cfg.name or socket.gethostname()
    secret = None
    try:
        secret = config.load_secret(cfg.secret_file)
        findings.append(finding("secret", OK, f"joined: cluster {protocol.secret_fingerprint(secret)}."))
    except config.ConfigError as e:
        findings.append(finding("secret", FAIL, f"{e}.", "run `clusterplex token` on the orchestrator host and "
                                                         "`clusterplex join TOKEN` here (as root)"))
    path, problem = runner.resolve_transcoder(cfg.transcoder)
    findings.append(finding("transcoder", OK, f"transcoder {path} present.") if path else
                    finding("transcoder", FAIL, f"{problem}.", "install Plex Media Server here (the worker runs "
                                                               "its transcoder) or set `transcoder` in worker.yaml"))
    problem, who = rw_test_as(cfg.transcode_root, opts.service_user)
    findings.append(check_transcode_root(host, {"root": cfg.transcode_root, "ok": not problem,
                                                "problem": f"{problem} (checked as {who})" if problem else ""},
                                         opts.service_user))
    if opts.sample:
        pm = [{"from": getattr(m, "from"), "to": m.to} for m in cfg.path_map]
        mapped = rewrite.map_path(opts.sample, pm)
        sp = sample_test(mapped)
        findings.append(check_sample(host, {"path": opts.sample, "mapped": mapped, "ok": not sp,
                                                     "problem": sp}))
    base = opts.worker.rstrip("/") if opts.worker else f"http://127.0.0.1:{cfg.listen[1]}"

    def get(p):
        with urllib.request.urlopen(base + p, timeout=opts.timeout) as resp:
            return json.load(resp)
    try:
        health, info = get("/health"), get("/api/v1/codecs")
    except (urllib.error.URLError, OSError, ValueError) as e:
        findings.append(finding("worker", FAIL, f"clusterplex-worker does not answer at {base}: "
                                                f"{getattr(e, 'reason', e)}.",
                                "start it: systemctl start clusterplex-worker; journalctl -u clusterplex-worker"))
        health = info = None
    if health is not None:
        if health.get("state") == "ready":
            findings.append(finding("worker", OK, f"clusterplex-worker {health.get('name')} is ready."))
        else:
            findings.append(finding("worker", FAIL if health.get("state") != "draining" else WARN,
                                    f"clusterplex-worker is {health.get('state')}: {health.get('reason')}.",
                                    "see the other checks; journalctl -u clusterplex-worker"))
        t = info.get("transcoder") or {}
        st = info.get("codecs") or {}
        findings.append(check_codecs(host, {"enabled": bool(info.get("enabled")), "version": t.get("codec_version"),
                                          "arch": t.get("plex_arch"), "state": st.get("state"),
                                          "present": st.get("present", 0), "total": st.get("total", 0),
                                          "reason": st.get("reason", "")}))
        n = health.get("orchestrators")
        if isinstance(n, int):
            findings.append(finding("orchestrator", OK, f"{n} orchestrator(s) connected to this worker.") if n else
                            finding("orchestrator", FAIL, "no orchestrator is connected to this worker: it gets no "
                                                          "jobs (the orchestrator connects to the worker, not the "
                                                          "other way round).",
                                    f"check that the orchestrator finds this worker (mDNS on the same LAN, or list "
                                    f"{socket.gethostname()}:{cfg.listen[1]} in its `workers`), that its port "
                                    f"{cfg.listen[1]} is open, and that both have the same secret"))
    if opts.orchestrator and secret is not None:
        try:
            ok, _ = asyncio.run(ask_orchestrator(opts.orchestrator.rstrip("/"), secret, None,
                                                 min(opts.timeout, 10.0)))
            findings.append(ok)
        except Unreachable as e:
            findings.append(e.finding)
    if opts.relay:
        fp = protocol.secret_fingerprint(secret) if secret else ""
        r = asyncio.run(ping(opts.relay, "relay", fp, min(opts.timeout, 10.0)))
        findings.append(check_relay(host, r))
    elif not opts.orchestrator:
        findings.append(finding("relay", SKIP, "the relay is checked from every worker by `clusterplex doctor` on "
                                               "the Plex host.", "or pass --relay URL (relay.advertise)"))
    return findings


# --- command line ------------------------------------------------------------------------------

def add_arguments(p):
    p.add_argument("--role", choices=("pms", "worker"), action="append",
                   help="what this host is (default: from which configs exist); may be given twice")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", default=config.default_path("pms"), help="pms.yaml (default: %(default)s)")
    p.add_argument("--worker-config", default=config.default_path("worker"), help="default: %(default)s")
    p.add_argument("--orchestrator", help="orchestrator URL (default: from pms.yaml)")
    p.add_argument("--sample", help="a media file of the Plex library (as Plex sees it) that every worker must "
                                    "see (default: one from Plex's library database, if readable)")
    p.add_argument("--transcode-root", help="the shared transcode directory Plex must use (default: the "
                                            "workers' transcode_root)")
    p.add_argument("--plex-dir", default=PLEX_DIR, help="where Plex is installed (default: %(default)s)")
    p.add_argument("--plex-preferences", default=PREFERENCES, help="Plex's Preferences.xml")
    p.add_argument("--plex-db", default=PLEX_DB, help="Plex's library database (for a sample media file)")
    p.add_argument("--plex-user", default="plex", help="the user Plex runs as (default: %(default)s)")
    p.add_argument("--service-user", default="plex", help="the user clusterplex-worker runs as (default: "
                                                          "%(default)s)")
    p.add_argument("--dpkg-admindir", help="dpkg's database (default: dpkg's own)")
    p.add_argument("--worker", help="this worker's URL (default: http://127.0.0.1:<port from worker.yaml>)")
    p.add_argument("--relay", help="with --role worker: the relay URL to try from here")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for each network check (default: "
                                                               "%(default)s)")
    p.set_defaults(func=cmd_doctor, divert_query=None)


def cmd_doctor(opts):
    roles = opts.role or [r for r, path in (("pms", opts.config), ("worker", opts.worker_config))
                          if os.path.exists(path)]
    if not roles:
        print(f"clusterplex doctor: neither {opts.config} nor {opts.worker_config} exists: is ClusterPlex installed "
              f"here? (or pass --role pms|worker and the config paths)", file=sys.stderr)
        return EX_USAGE
    if not 0.5 <= opts.timeout <= protocol.PROBE_TIMEOUT_MAX:
        print(f"clusterplex doctor: --timeout must be 0.5 to {protocol.PROBE_TIMEOUT_MAX:g} seconds", file=sys.stderr)
        return EX_USAGE
    findings = []
    for role in dict.fromkeys(roles):
        part = run_pms(opts) if role == "pms" else run_worker(opts)
        for f in part:
            f["role"] = role
        findings += part
    if opts.json:
        print(json.dumps({"ok": exit_code(findings) == 0, "roles": list(dict.fromkeys(roles)),
                          "summary": summary(findings), "findings": findings}, indent=2))
    else:
        name = socket.gethostname()
        what = " and ".join({"pms": "Plex host", "worker": "worker"}[r] for r in dict.fromkeys(roles))
        print(format_text(findings, f"clusterplex doctor on {name} ({what})"))
    return exit_code(findings)
