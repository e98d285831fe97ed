"""clusterplex: the command line for people.

``status``, ``workers``, ``jobs`` (tables, or ``--json`` for scripts), ``worker drain|resume NAME``
(``--wait``: until the worker is idle), ``worker codecs [--refresh]`` (download progress),
``token``, ``join``.

``--json`` output is versioned (``"schema": 1``) and documented in docs/operators.md; fields are
only ever added. On an error, stdout holds ``{"schema": 1, "error": {...}}`` with ``--json`` (and
nothing without it), the explanation goes to stderr, and the exit status is non-zero: 69
(EX_UNAVAILABLE) when the orchestrator or worker cannot be reached, 1 when it refused the request,
75 (EX_TEMPFAIL) when ``--wait``/``--refresh`` ran out of time.

The formatting (``*_json``, ``*_rows``, ``hardware_text``...) is pure; the I/O is urllib against
the daemons' HTTP APIs.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from ..core import cache, config, protocol
from ..common import token

EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_BAD_TOKEN = 2
SYSTEMCTL_TIMEOUT = 120
JSON_SCHEMA = 1
DEFAULT_ORCHESTRATOR = "http://127.0.0.1:3500"
DEFAULT_WORKER_PORT = 3501
POLL_INTERVAL = 0.5          # seconds between polls of a daemon's API while waiting (--wait, --refresh)
WAIT_TIMEOUT = 600.0         # default bound of --wait and --refresh
ACTIVE_JOB_STATES = ("pending", "assigned", "running")


# --- errors -------------------------------------------------------------------------------

class Unreachable(Exception):
    """A daemon's API cannot be used: what was tried, where its URL came from, what to check."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, what, url, source, reason, hints):
        super().__init__(f"cannot reach the {what} at {url}: {reason}")
        self.what, self.url, self.source, self.reason, self.hints = what, url, source, reason, hints

    def explain(self):
        lines = [str(self), f"  that URL came from {self.source}", "  check:"]
        lines += [f"    - {h}" for h in self.hints]
        return "\n".join(lines)


class Refused(Exception):
    """The daemon answered with an error (unknown worker, not from this host...)."""

    exit_code = 1

    def __init__(self, what, url, status, message):
        super().__init__(message)
        self.what, self.url, self.status, self.message = what, url, status, message

    def explain(self):
        return self.message


class Target:
    """A daemon's API base URL and where it came from (for the error messages)."""

    def __init__(self, what, url, source, hints):
        self.what = what            # "orchestrator" or "worker"
        self.url = url.rstrip("/")
        self.source = source
        self.hints = hints          # what to check when it cannot be reached

    def _call(self, req, timeout):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
                message = body.get("error") if isinstance(body, dict) else None
            except ValueError:
                message = None
            if not message:    # not one of ours: something else answers at that address
                message = (f"the {self.what} at {self.url} answered HTTP {e.code} {e.reason} to "
                           f"{urllib.parse.urlsplit(e.url or '').path or '/'}: is this the {self.what}'s address? "
                           f"(that URL came from {self.source})")
            raise Refused(self.what, self.url, e.code, message) from None
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(self.what, self.url, self.source, _reason(e, timeout), self.hints) from None
        except ValueError:
            raise Unreachable(self.what, self.url, self.source,
                              f"it answered, but not with JSON: is this the {self.what}'s address?",
                              self.hints) from None

    def get(self, path, timeout):
        return self._call(self.url + path, timeout)

    def post(self, path, timeout):
        return self._call(urllib.request.Request(self.url + path, method="POST"), timeout)


def _reason(e, timeout):
    r = getattr(e, "reason", e)
    if isinstance(r, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(r, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(r, socket.gaierror):
        return f"unknown host name ({r.strerror})"
    if isinstance(r, OSError) and r.strerror:
        return r.strerror[0].lower() + r.strerror[1:]
    return str(r)


def _hostport(url):
    hp = url.partition("://")[2].split("/", 1)[0]
    host, _, port = hp.rpartition(":") if not hp.endswith("]") else (hp, "", "")
    return (host or hp), (port or "80")


def orchestrator_target(opts):
    """The orchestrator's Target: --orchestrator, else pms.yaml's ``orchestrator`` (for ``auto``
    the relay's discovery cache), else http://127.0.0.1:3500."""
    path = opts.config
    if opts.orchestrator:
        url, source = opts.orchestrator, "the --orchestrator option"
    else:
        try:
            cfg = config.load("pms", path)
        except config.ConfigError as e:
            cfg, why = None, (f"no {path} here" if "file not found" in str(e) else f"{path} not usable: {e}")
        if cfg is None:
            url, source = DEFAULT_ORCHESTRATOR, f"the default ({why})"
        elif cfg.orchestrator != "auto":
            url, source = cfg.orchestrator, f"the orchestrator key in {path}"
        else:
            found = cache.read(cfg.discovery.cache_file)
            if found:
                url = found["url"]
                source = (f"the discovery cache {cfg.discovery.cache_file} (orchestrator: auto in {path}; "
                          f"clusterplex-relay keeps it current)")
            else:
                url = DEFAULT_ORCHESTRATOR
                source = (f"the default: orchestrator is auto in {path} but {cfg.discovery.cache_file} has "
                          f"none yet (clusterplex-relay writes it when it finds the orchestrator over mDNS)")
    url = url if "://" in url else f"http://{url}"
    host, port = _hostport(url)
    hints = [f"is clusterplex-orchestrator running on {host}? (systemctl status clusterplex-orchestrator; "
             f"journalctl -u clusterplex-orchestrator)",
             f"a firewall between here and {host} port {port}/tcp?",
             "another address: --orchestrator http://HOST:3500 (or the orchestrator key in pms.yaml)"]
    if "discovery cache" in source or "auto" in source:
        hints.insert(1, "is clusterplex-relay running here? (systemctl status clusterplex-relay): it finds "
                        "the orchestrator over mDNS")
    return Target("orchestrator", url, source, hints)


def _orchestrator_url(opts):
    return orchestrator_target(opts).url


def worker_target(opts):
    """This machine's worker: --worker, else the ``listen`` of worker.yaml, else port 3501."""
    path = opts.worker_config
    if opts.worker:
        url, source = opts.worker, "the --worker option"
    else:
        try:
            host, port = config.load("worker", path).listen
            source = f"listen in {path}"
        except config.ConfigError as e:
            host, port = "127.0.0.1", DEFAULT_WORKER_PORT
            source = f"the default ({f'no {path} here' if 'file not found' in str(e) else f'{path} not usable: {e}'})"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        url = f"http://{config.format_hostport(host, port)}"
    url = url if "://" in url else f"http://{url}"
    host, port = _hostport(url)
    hints = [f"is clusterplex-worker running on {host}? (systemctl status clusterplex-worker; "
             f"journalctl -u clusterplex-worker)",
             f"a firewall between here and {host} port {port}/tcp?",
             "another address: --worker http://HOST:3501"]
    return Target("worker", url, source, hints)


def _fail(opts, e):
    """Report an Unreachable/Refused: the explanation on stderr, a JSON object on stdout with --json."""
    prog = "clusterplex"
    print(f"{prog}: {e.explain()}", file=sys.stderr)
    if getattr(opts, "json", False):
        err = {"exit_code": e.exit_code, "message": str(e), "what": e.what, "url": e.url}
        if isinstance(e, Unreachable):
            err.update(kind="unreachable", url_source=e.source, reason=e.reason, check=e.hints)
        else:
            err.update(kind="refused", http_status=e.status)
        print(json.dumps({"schema": JSON_SCHEMA, "error": err}, indent=2))
    return e.exit_code


def _emit_json(obj):
    print(json.dumps({"schema": JSON_SCHEMA, **obj}, indent=2), flush=True)


# --- views (pure) -----------------------------------------------------------------------------

def worker_json(w):
    """One worker of ``/api/v1/workers`` in the CLI's documented, stable shape."""
    hw = w.get("hardware") or {}
    codecs = w.get("codecs")
    gpus = [g.get("name") or f"{g.get('vendor') or 'gpu'} ({g.get('driver') or '?'})"
            for g in hw.get("gpus") or [] if isinstance(g, dict)]
    state = w.get("state", "")
    return {
        "name": w.get("name", ""),
        "address": w.get("address", ""),
        "source": w.get("source", ""),
        "state": state,
        "busy": state == "ready" and w.get("running_jobs", 0) >= w.get("max_jobs", 1),
        "reason": w.get("reason", ""),
        "running_jobs": w.get("running_jobs", 0),
        "max_jobs": w.get("max_jobs", 0),
        "load_cpu": (w.get("load") or {}).get("cpu"),
        "weight": w.get("weight"),
        "priority": w.get("priority"),
        "cpus": hw.get("cpus"),
        "arch": hw.get("arch"),
        "memory": hw.get("memory"),
        "gpus": gpus,
        "hw_codecs": list(hw.get("hw_codecs") or []),
        "plex_codecs": None if not isinstance(codecs, dict) else {
            k: codecs.get(k) for k in ("state", "present", "total", "version", "arch", "reason")},
        "eae": w.get("eae") if isinstance(w.get("eae"), dict) else None,
        "version": w.get("version", ""),
    }


def job_json(j):
    """One job of ``/api/v1/jobs`` in the CLI's documented, stable shape."""
    return {
        "id": j.get("id", ""),
        "session": j.get("session", ""),
        "worker": j.get("worker", ""),
        "state": j.get("state", ""),
        "pid": j.get("pid"),
        "exit_code": j.get("exit_code"),
        "reason": j.get("reason", ""),
        "decision": j.get("decision", ""),
        "needs": j.get("needs", ""),
        "restarts": j.get("restarts", 0),
        "age_seconds": j.get("age_seconds"),
        "running_seconds": j.get("running_seconds"),
        "progress": j.get("progress"),
    }


def display_state(w):
    """ready / busy / draining / not ready / connecting / offline (a worker_json)."""
    if w["busy"]:
        return "busy"
    return w["state"].replace("_", " ")


def hardware_text(w):
    """``16 CPU x86_64 62 GiB, Intel UHD 630, hw h264/hevc (vaapi)`` (a worker_json)."""
    parts = [f"{w['cpus'] or '?'} CPU {w['arch'] or ''}".strip()]
    if w["memory"]:
        gib = w["memory"] / (1 << 30)
        parts[0] += f" {gib:.0f} GiB" if gib >= 10 else f" {gib:.1f} GiB"
    parts += w["gpus"]
    apis = {}
    for c in w["hw_codecs"]:
        codec, _, rest = c.partition(":")
        api, _, direction = rest.partition(":")
        if direction == "encode":
            apis.setdefault(api, []).append(codec)
    for api, codecs in sorted(apis.items()):
        parts.append(f"hw {'/'.join(sorted(set(codecs)))} ({api})")
    if "eae" in w["hw_codecs"]:
        parts.append("EAE")
    return ", ".join(parts)


def codecs_text(w):
    c = w["plex_codecs"]
    if c is None:
        return "-"
    return f"{c['state']} {c['present']}/{c['total']}"


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def duration_text(seconds):
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def job_reason(j):
    if j["reason"]:
        return j["reason"]
    if j["state"] == "exited" and j["exit_code"] not in (0, None):
        return f"exit status {j['exit_code']}"
    return ""


def worker_rows(workers):
    return [(w["name"], w["address"], display_state(w), f"{w['running_jobs']}/{w['max_jobs']}",
             "-" if w["load_cpu"] is None else f"{w['load_cpu']:g}%", hardware_text(w), codecs_text(w))
            for w in sorted(workers, key=lambda w: w["name"])]


WORKER_COLUMNS = ("worker", "address", "state", "jobs", "load", "hardware", "codecs")
JOB_COLUMNS = ("job", "session", "worker", "state", "elapsed", "progress", "reason")


def job_rows(jobs):
    return [(j["id"][:8], j["session"] or "-", j["worker"] or "-", j["state"],
             duration_text(j["running_seconds"] if j["running_seconds"] is not None else j["age_seconds"]),
             f"{j['progress']:.1f}%" if isinstance(j["progress"], (int, float)) and j["progress"] >= 0 else "-",
             job_reason(j)) for j in jobs]


RECENT_SHOWN = 5
RECENT_COLUMNS = ("time", "what", "job", "session", "worker", "reason")
RECENT_KINDS = {"no_worker": "no worker", "remote_failed": "failed", "refused": "refused",
                "fell_back_local": "ran locally", "resumed": "resumed"}


def recent_json(r):
    """One entry of ``/api/v1/recent`` (failures, refusals, fallbacks to local), documented shape."""
    return {k: r.get(k) for k in ("time", "kind", "job", "session", "worker", "reason")}


def recent_rows(recent, localtime=time.localtime):
    return [(time.strftime("%H:%M:%S", localtime(r["time"])) if isinstance(r["time"], (int, float)) else "-",
             RECENT_KINDS.get(r["kind"], r["kind"] or "-"), (r["job"] or "-")[:8], r["session"] or "-",
             r["worker"] or "-", r["reason"] or "") for r in recent]


def worker_notes(workers):
    """``  worker1: codecs 3/310`` for each worker that is not ready, with its reason."""
    return [f"  {w['name']}: {w['reason']}" for w in sorted(workers, key=lambda w: w["name"]) if w["reason"]]


def _table(rows, columns):
    if not rows:
        return "  (none)"
    widths = [max(len(c), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# --- status, workers, jobs ----------------------------------------------------------------------

def _fetch(opts, *paths):
    target = orchestrator_target(opts)
    return target, [target.get(p, opts.timeout) for p in paths]


def cmd_status(opts):
    try:
        target, (health, workers, jobs) = _fetch(opts, "/health", "/api/v1/workers", "/api/v1/jobs")
    except (Unreachable, Refused) as e:
        return _fail(opts, e)
    try:
        recent = [recent_json(r) for r in target.get("/api/v1/recent", opts.timeout)[:RECENT_SHOWN]]
    except Refused:              # an orchestrator from before /api/v1/recent
        recent = None
    except Unreachable as e:
        return _fail(opts, e)
    workers = sorted((worker_json(w) for w in workers), key=lambda w: w["name"])
    jobs = [job_json(j) for j in jobs]
    active = [j for j in jobs if j["state"] in ACTIVE_JOB_STATES]
    if opts.json:
        _emit_json({"orchestrator": {"url": target.url, "version": health.get("version", ""),
                                     "workers_ready": health.get("workers_ready"), "workers": health.get("workers"),
                                     "jobs_active": health.get("jobs_active")},
                    "workers": workers, "jobs": active, "recent": recent})
        return 0
    ready = sum(1 for w in workers if w["state"] == "ready")
    print(f"Orchestrator {target.url} (version {health.get('version') or '?'}): {ready} of {len(workers)} "
          f"workers ready, {plural(len(active), 'job')} running")
    print(_table(worker_rows(workers), WORKER_COLUMNS))
    for line in worker_notes(workers):
        print(line)
    print(f"\nRunning jobs: {len(active)}")
    print(_table(job_rows(active), JOB_COLUMNS))
    if recent:
        print("\nRecent failures and fallbacks to local:")
        print(_table(recent_rows(recent), RECENT_COLUMNS))
    elif recent is None:
        failed = [j for j in jobs if j["state"] == "failed"][:RECENT_SHOWN]
        if failed:
            print("\nRecent failures:")
            print(_table(job_rows(failed), JOB_COLUMNS))
    return 0


def cmd_workers(opts):
    try:
        target, (workers,) = _fetch(opts, "/api/v1/workers")
    except (Unreachable, Refused) as e:
        return _fail(opts, e)
    workers = sorted((worker_json(w) for w in workers), key=lambda w: w["name"])
    if opts.json:
        _emit_json({"orchestrator": target.url, "workers": workers})
        return 0
    print(_table(worker_rows(workers), WORKER_COLUMNS))
    for line in worker_notes(workers):
        print(line)
    return 0


def cmd_jobs(opts):
    try:
        target, (jobs,) = _fetch(opts, "/api/v1/jobs")
    except (Unreachable, Refused) as e:
        return _fail(opts, e)
    jobs = [job_json(j) for j in jobs]
    if not opts.all:
        jobs = [j for j in jobs if j["state"] in ACTIVE_JOB_STATES]
    if opts.json:
        _emit_json({"orchestrator": target.url, "jobs": jobs})
        return 0
    print(_table(job_rows(jobs), JOB_COLUMNS))
    return 0


# --- worker drain / resume ---------------------------------------------------------------------

def _find_worker(workers, name):
    for w in workers:
        if name in (w.get("name"), w.get("address"), w.get("key")):
            return w
    return None


def drain_progress(worker, jobs):
    """(jobs left, their active job_json records) for a draining worker_json (pure)."""
    left = [j for j in jobs if j["worker"] == worker["name"] and j["state"] in ACTIVE_JOB_STATES]
    return max(worker["running_jobs"], len(left)), left


def _progress_out(opts):
    return sys.stderr if getattr(opts, "json", False) else sys.stdout


def _wait_drained(opts, target, name, timeout, request_timeout):
    """Poll until worker ``name`` runs no job; print what is left whenever it changes."""
    out = _progress_out(opts)
    deadline = time.monotonic() + timeout
    last, seen_draining, left = None, False, []
    while True:
        workers = target.get("/api/v1/workers", request_timeout)
        jobs = [job_json(j) for j in target.get("/api/v1/jobs", request_timeout)]
        raw = _find_worker(workers, name)
        if raw is None:
            return 1, f"worker {name} is no longer known to the orchestrator", []
        w = worker_json(raw)
        n, left = drain_progress(w, jobs)
        if w["state"] == "draining":
            seen_draining = True
        elif w["state"] == "ready" and seen_draining:
            return 1, f"{w['name']} was resumed while we waited ({plural(n, 'job')} running)", left
        if w["state"] == "offline":
            return 0, f"{w['name']} is offline ({w['reason'] or 'disconnected'}): it runs nothing now", []
        if n == 0 and seen_draining:
            return 0, f"{w['name']}: drained, no jobs left", []
        key = (n, tuple(j["id"] for j in left))
        if key != last:
            last = key
            what = ", ".join(f"{j['id'][:8]} ({j['session'] or 'no session'}, "
                             f"{duration_text(j['running_seconds'] or j['age_seconds'])})" for j in left)
            print(f"{w['name']}: {plural(n, 'job')} left" + (f": {what}" if what else "")
                  if n else f"{w['name']}: waiting for the worker to confirm the drain", file=out, flush=True)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return EX_TEMPFAIL, (f"{w['name']} still runs {plural(n, 'job')} after {timeout:g}s "
                                 f"(it keeps draining; run again to keep waiting)"), left
        time.sleep(min(POLL_INTERVAL, remaining))   # polling a remote API


def cmd_worker_drain(opts):
    target = orchestrator_target(opts)
    waiting = opts.action == "drain" and opts.wait
    wait_for = opts.timeout if opts.timeout is not None else WAIT_TIMEOUT
    request_timeout = min(wait_for, 10.0) if waiting else (opts.timeout or 5.0)
    try:
        body = target.post(f"/api/v1/workers/{urllib.parse.quote(opts.name, safe='')}/{opts.action}",
                           request_timeout)
    except Refused as e:
        e.message = f"{opts.action} {opts.name}: {e.message}"
        return _fail(opts, e)
    except Unreachable as e:
        return _fail(opts, e)
    names = body.get("workers") or [opts.name]
    done = "draining: no new jobs, running ones finish" if opts.action == "drain" else "taking jobs again"
    print(f"{', '.join(names)}: {done}", file=_progress_out(opts), flush=True)
    result = {"action": opts.action, "workers": names}
    code = 0
    if waiting:
        try:
            code, message, left = _wait_drained(opts, target, names[0], wait_for, request_timeout)
        except (Unreachable, Refused) as e:
            return _fail(opts, e)
        print(message, file=_progress_out(opts) if code == 0 else sys.stderr, flush=True)
        result.update(idle=code == 0, message=message, jobs_left=left)
    if opts.json:
        _emit_json(result)
    return code


# --- worker codecs -------------------------------------------------------------------------------

def codecs_line(info):
    """``downloading 120/310`` for a worker's /api/v1/codecs answer (pure)."""
    st = info.get("codecs")
    if not info.get("enabled"):
        return "not managed"
    if st is None:
        return "not needed"
    return f"{st['state']} {st['present']}/{st['total']}"


def codecs_settled(info):
    """True when a refresh has finished (ready or error), or there is nothing to download."""
    st = info.get("codecs")
    return not info.get("enabled") or st is None or st.get("state") in ("ready", "error")


def cmd_worker_codecs(opts):
    target = worker_target(opts)
    out = _progress_out(opts)
    wait_for = opts.timeout if opts.timeout is not None else WAIT_TIMEOUT
    request_timeout = min(wait_for, 10.0) if opts.refresh else (opts.timeout or 10.0)
    try:
        if opts.refresh:
            info = target.post("/api/v1/codecs/refresh", request_timeout)
            deadline = time.monotonic() + wait_for
            last = None
            while not codecs_settled(info):
                line = codecs_line(info)
                if line != last:
                    print(f"Codecs: {line}", file=out, flush=True)
                    last = line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    print(f"clusterplex: codecs still {line} after {wait_for:g}s; the "
                          f"worker keeps downloading (run `clusterplex worker codecs` to look again)",
                          file=sys.stderr)
                    if opts.json:
                        _emit_json(info)
                    return EX_TEMPFAIL
                time.sleep(min(POLL_INTERVAL, remaining))   # polling a remote API
                info = target.get("/api/v1/codecs", request_timeout)
        else:
            info = target.get("/api/v1/codecs", request_timeout)
    except (Unreachable, Refused) as e:
        return _fail(opts, e)
    st = info.get("codecs")
    ready = st is None or st.get("state") == "ready" or not info.get("enabled")
    if opts.json:
        _emit_json(info)
        return 0 if ready else 1
    t = info.get("transcoder") or {}
    print(f"Transcoder {t.get('path') or '?'}: codec version {t.get('codec_version') or 'unknown'}, "
          f"arch {t.get('plex_arch') or 'unknown'}")
    if not info.get("enabled"):
        print("Codecs: not managed (codecs.enabled is false)")
    elif st is None:
        print("Codecs: not needed (no Plex codec version in the transcoder)")
    else:
        print(f"Codecs: {st['state']}, {st['present']}/{st['total']} in {st['path']}")
        if st.get("reason"):
            print(f"  {st['reason']}")
        for lib, why in sorted((st.get("failed") or {}).items()):
            print(f"  {lib}: {why}")
    eae = info.get("eae") or {}
    if eae.get("enabled"):
        print(f"EasyAudioEncoder: {'running' if eae.get('running') else 'not running'}"
              + (f" ({eae['problem']})" if eae.get("problem") else ""))
    return 0 if ready else 1


# --- join tokens -------------------------------------------------------------------

_RUNNING = ("active", "reloading", "activating", "refreshing")


def _secret_path(opts, kind):
    """--secret-file, else ``secret_file`` from the daemon's YAML if readable, else the default."""
    if opts.secret_file:
        return opts.secret_file
    try:
        return config.load(kind, opts.config, missing_ok=True).secret_file
    except config.ConfigError:
        return config.SECRET_FILE.default


def _read_secret(path):
    """The secret in ``path``, or (None, message) with what to do about it."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return None, (f"no cluster secret here ({path} not found): is clusterplex-orchestrator installed? "
                      f"(or pass --secret-file)")
    except PermissionError:
        return None, f"cannot read {path}: permission denied (run as root: sudo clusterplex token)"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        return config.load_secret(path), ""
    except config.ConfigError as e:
        return None, str(e)


def _systemd(actions):
    """Run ``systemctl VERB UNIT`` for each (verb, unit, what-it-did) whose unit is running.

    Units that are absent or stopped, and machines without systemd, are skipped
    quietly. Returns (["clusterplex-worker reloaded", ...], all_ok).
    """
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return [], True
    done, ok = [], True
    for verb, unit, what in actions:
        try:
            state = subprocess.run([systemctl, "is-active", f"{unit}.service"], capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if state not in _RUNNING:
            continue
        try:
            r = subprocess.run([systemctl, verb, f"{unit}.service"], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=SYSTEMCTL_TIMEOUT)
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] if r.returncode else None
        except subprocess.TimeoutExpired:
            why = [f"no answer within {SYSTEMCTL_TIMEOUT}s"]
        except OSError as e:
            why = [e.strerror]
        if why is None:
            done.append(f"{unit} {what}")
        else:
            ok = False
            done.append(f"`systemctl {verb} {unit}` failed: {why[0] if why else 'exit status ' + str(r.returncode)}"
                        f" (journalctl -u {unit})")
    return done, ok


def cmd_token(opts):
    def info(msg):
        if not opts.quiet:
            print(msg, file=sys.stderr)

    path = _secret_path(opts, "orchestrator")
    if opts.rotate:
        secret = token.generate_secret()
        try:
            token.write_secret(path, secret)
        except token.SecretFileError as e:
            hint = "" if os.path.isdir(os.path.dirname(os.path.abspath(path))) else \
                " (is clusterplex-orchestrator installed?)"
            print(f"clusterplex token: {e}{hint}", file=sys.stderr)
            return 1
    else:
        secret, problem = _read_secret(path)
        if secret is None:
            print(f"clusterplex token: {problem}", file=sys.stderr)
            return 1
    try:
        tok = token.make_token(secret)
    except token.TokenError as e:
        print(f"clusterplex token: {path}: {e}", file=sys.stderr)
        return 1
    print(tok, flush=True)
    fp = protocol.secret_fingerprint(secret)
    if not opts.rotate:
        info(f"run on each worker: clusterplex join <token>  (cluster {fp}; the token is the cluster secret: "
             f"keep it private)")
        return 0
    ok = True
    if opts.no_restart:
        info(f"new cluster secret {fp} written to {path}; daemons not restarted (--no-restart): restart "
             f"clusterplex-orchestrator and clusterplex-relay to use it")
    else:
        done, ok = _systemd([("try-restart", "clusterplex-orchestrator", "restarted"),
                             ("try-restart", "clusterplex-relay", "restarted"),
                             ("try-reload-or-restart", "clusterplex-worker", "reloaded")])
        msg = f"new cluster secret {fp} written to {path}; " + ("; ".join(done) if done else
                                                                "no clusterplex daemon running here under systemd")
        if ok:
            info(msg)
        else:
            print(f"clusterplex token: {msg}", file=sys.stderr)
    info("every worker must re-join: run on each worker: clusterplex join <token>  (the token is the cluster "
         "secret: keep it private)")
    return 0 if ok else 1


def cmd_join(opts):
    text = sys.stdin.read() if opts.token == "-" else opts.token
    try:
        secret = token.parse_token(text)
    except token.TokenError as e:
        print(f"clusterplex join: {e}", file=sys.stderr)
        return EX_BAD_TOKEN
    path = _secret_path(opts, "worker")
    try:
        changed = token.write_secret(path, secret)
    except token.SecretFileError as e:
        print(f"clusterplex join: {e}", file=sys.stderr)
        return 1
    fp = protocol.secret_fingerprint(secret)
    if not changed:
        print(f"already joined to cluster {fp} ({path} unchanged)")
        return 0
    if opts.no_reload:
        print(f"joined cluster {fp}; secret written to {path}; not reloading (--no-reload): a worker that was "
              f"not joined picks it up within 2 s, otherwise `systemctl reload clusterplex-worker`")
        return 0
    done, ok = _systemd([("try-reload-or-restart", "clusterplex-worker", "reloaded"),
                         ("try-restart", "clusterplex-relay", "restarted")])
    if done:
        print(f"joined cluster {fp}; " + "; ".join(done), file=sys.stdout if ok else sys.stderr)
    else:
        print(f"joined cluster {fp}; secret written to {path}; no clusterplex-worker running here under systemd "
              f"(a worker that was not joined picks it up within 2 s; a joined one needs a reload: SIGHUP)")
    return 0 if ok else 1


def orchestrator_options(parser, timeout_help="seconds to wait for the orchestrator's answer (default 5)"):
    """--config, --orchestrator, --timeout and --json: every command that talks to the orchestrator."""
    parser.add_argument("--config", default=config.default_path("pms"),
                        help="pms.yaml to read the orchestrator URL from (default: %(default)s)")
    parser.add_argument("--orchestrator", metavar="URL",
                        help=f"orchestrator URL (default: the orchestrator key of --config; for auto the relay's "
                             f"discovery cache; else {DEFAULT_ORCHESTRATOR})")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (schema in docs/operators.md; errors: see EXIT STATUS)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="clusterplex", description="ClusterPlex for bare metal",
        epilog="Exit status: 0 ok; 1 refused or not ready; 2 bad token; 69 orchestrator/worker unreachable; "
               "75 --wait/--refresh ran out of time; 78 configuration error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    st = sub.add_parser("status", help="the orchestrator, its workers, running jobs and recent failures")
    orchestrator_options(st)
    st.set_defaults(func=cmd_status)
    wl = sub.add_parser("workers", help="the workers: state, jobs, load, hardware, Plex codecs")
    orchestrator_options(wl)
    wl.set_defaults(func=cmd_workers)
    jb = sub.add_parser("jobs", help="running jobs: session, worker, state, elapsed time, reason")
    orchestrator_options(jb)
    jb.add_argument("--all", action="store_true", help="also the recently finished jobs (the last 50)")
    jb.set_defaults(func=cmd_jobs)

    wk = sub.add_parser("worker", help="one worker: drain, resume, codecs")
    wsub = wk.add_subparsers(dest="worker_command", required=True, metavar="ACTION")
    wc = wsub.add_parser("codecs", help="Plex codec libraries and EasyAudioEncoder on this worker")
    wc.add_argument("--refresh", action="store_true",
                    help="check and download again, showing the progress until ready or failed")
    wc.add_argument("--json", action="store_true", help="machine-readable output (the worker's /api/v1/codecs)")
    wc.add_argument("--worker", metavar="URL",
                    help=f"worker URL (default: http://127.0.0.1:<port of listen in --worker-config>, "
                         f"else port {DEFAULT_WORKER_PORT})")
    wc.add_argument("--worker-config", default=config.default_path("worker"), help="default: %(default)s")
    wc.add_argument("--timeout", type=float, metavar="SECONDS",
                    help=f"seconds to wait for the worker (default 10); with --refresh for the whole download "
                         f"(default {WAIT_TIMEOUT:g})")
    wc.set_defaults(func=cmd_worker_codecs)
    for action, text in (("drain", "take no new jobs on worker NAME; its running jobs finish"),
                         ("resume", "let worker NAME take jobs again")):
        wd = wsub.add_parser(action, help=text + " (on the orchestrator host)")
        wd.add_argument("name", metavar="NAME", help="worker name (as `clusterplex workers` shows it) or address")
        if action == "drain":
            wd.add_argument("--wait", action="store_true",
                            help="wait until the worker runs no job, showing the jobs left")
            orchestrator_options(wd, f"seconds to wait for the orchestrator (default 5); with --wait for the "
                                     f"whole drain (default {WAIT_TIMEOUT:g})")
        else:
            orchestrator_options(wd)
        wd.set_defaults(func=cmd_worker_drain, action=action, wait=False)

    tk = sub.add_parser("token", help="print the join token for workers (on the orchestrator host)",
                        description="Print the join token that carries the cluster secret (stdout) with a "
                                    "hint (stderr). The token is the secret: keep it private.")
    tk.add_argument("--rotate", action="store_true",
                    help="generate a new secret, write it, restart the local daemons; workers must re-join")
    tk.add_argument("--no-restart", action="store_true", help="with --rotate: do not restart the daemons")
    tk.add_argument("--secret-file", help="default: secret_file from --config, else /etc/clusterplex/secret")
    tk.add_argument("--config", default=config.default_path("orchestrator"), help="default: %(default)s")
    tk.add_argument("--quiet", "-q", action="store_true", help="only the token")
    tk.set_defaults(func=cmd_token)
    jn = sub.add_parser("join", help="join this worker to a cluster with a token from `clusterplex token`",
                        description="Write the cluster secret carried by TOKEN (0600, owner plex) and "
                                    "reload the local worker. Exit 0: joined; 2: bad token; 1: cannot write.")
    jn.add_argument("token", metavar="TOKEN", help="the join token; - reads it from stdin "
                                                    "(keeps it out of the shell history)")
    jn.add_argument("--secret-file", help="default: secret_file from --config, else /etc/clusterplex/secret")
    jn.add_argument("--config", default=config.default_path("worker"), help="default: %(default)s")
    jn.add_argument("--no-reload", action="store_true", help="do not reload clusterplex-worker / restart "
                                                              "clusterplex-relay")
    jn.set_defaults(func=cmd_join)

    from . import doctor
    dr = sub.add_parser("doctor", help="check this host and the cluster, and say how to fix what is wrong",
                        description="On the Plex host: the shim's diversion, Plex's transcode directory, the "
                                    "orchestrator, and every worker (media, transcode root, relay, codecs, uid, "
                                    "clock). On a worker: that worker. Exit 0: nothing failed; 1: something "
                                    "failed; 2: nothing to check here.")
    doctor.add_arguments(dr)
    return parser, sub


def main(argv=None):
    parser, _ = build_parser()
    opts = parser.parse_args(argv)
    try:
        return opts.func(opts)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:       # `clusterplex jobs | head`
        return 0

