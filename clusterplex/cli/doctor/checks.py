"""The doctor's checks (pure): facts in, findings out, and how findings are summed up and shown.

A finding is ``{check, host, status, message, fix}``: ``check`` a stable id, ``status`` ok, warn,
fail or skip, ``message`` a sentence, ``fix`` what to do about it.
"""

import ipaddress
import os
import xml.etree.ElementTree as ET

from ...worker import runner

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
EX_FAILED = 1
SHIM_PACKAGE = "clusterplex-pms"
CLOCK_WARN = 2.0          # seconds of clock difference worth a warning
CLOCK_FAIL = 30.0         # ... and a failure (logs, segment times and TLS go wrong)


def finding(check, status, message, fix="", host=""):
    """One result: ``check`` (a stable id), ``status`` (ok/warn/fail/skip), a sentence, the fix."""
    return {"check": check, "host": host, "status": status, "message": message, "fix": fix}


# --- Plex's files ------------------------------------------------------------------

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


# --- checks --------------------------------------------------------------

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
                            "start clusterplex-worker on it (systemctl status clusterplex-worker), let the "
                            "orchestrator reach its port, and make sure it has the same secret (clusterplex "
                            "join)", host=host)]
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

