"""The doctor on the Plex host: the shim's diversion, Plex's transcode directory, a sample media file,
the orchestrator, and, through it, every worker."""

import asyncio
import os
import socket
import sqlite3
import subprocess
import time

from ...core import config, protocol
from ...worker import runner
from ...worker.probe import rw_test_as, uid_of
from .ask import Unreachable, ask_orchestrator, orchestrator_url
from .checks import (FAIL, OK, SKIP, WARN, PreferencesError, check_allowed_networks, check_shim, check_worker_result,
                     finding, parse_divert, parse_preferences, plex_transcode_dir, same_dir)

PLEX_DIR = os.path.dirname(config.PLEX_TRANSCODER)
TRANSCODER_NAME = os.path.basename(config.PLEX_TRANSCODER)
PLEX_SUPPORT = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"
PREFERENCES = f"{PLEX_SUPPORT}/Preferences.xml"
PLEX_DB = f"{PLEX_SUPPORT}/Plug-in Support/Databases/com.plexapp.plugins.library.db"


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
                                "run as root or pass --plex-preferences"))
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
    url, why = orchestrator_url(opts, cfg)
    secret = None
    try:
        secret = config.load_secret(cfg.secret_file)
    except config.ConfigError as e:
        findings.append(finding("secret", FAIL, f"{e}.", "run as root, or join this host: "
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

