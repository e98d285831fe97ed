"""``clusterplex worker drain|resume NAME`` (through the orchestrator; ``--wait``: until the worker is idle)
and ``clusterplex worker codecs [--refresh]`` (this machine's worker; the download's progress)."""

import sys
import time
import urllib.parse

from .api import Refused, Unreachable, emit_json, fail, orchestrator_target, worker_target
from .views import codecs_line, codecs_settled, drain_progress, duration_text, job_json, plural, worker_json

EX_TEMPFAIL = 75
POLL_INTERVAL = 0.5          # seconds between polls of a daemon's API while waiting (--wait, --refresh)
WAIT_TIMEOUT = 600.0         # default bound of --wait and --refresh


# --- drain / resume ---------------------------------------------------------------------------

def _find_worker(workers, name):
    for w in workers:
        if name in (w.get("name"), w.get("address"), w.get("key")):
            return w
    return None


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
        return fail(opts, e)
    except Unreachable as e:
        return fail(opts, e)
    names = body.get("workers") or [opts.name]
    done = "draining: no new jobs, running ones finish" if opts.action == "drain" else "taking jobs again"
    print(f"{', '.join(names)}: {done}", file=_progress_out(opts), flush=True)
    result = {"action": opts.action, "workers": names}
    code = 0
    if waiting:
        try:
            code, message, left = _wait_drained(opts, target, names[0], wait_for, request_timeout)
        except (Unreachable, Refused) as e:
            return fail(opts, e)
        print(message, file=_progress_out(opts) if code == 0 else sys.stderr, flush=True)
        result.update(idle=code == 0, message=message, jobs_left=left)
    if opts.json:
        emit_json(result)
    return code


# --- codecs -------------------------------------------------------------------------------------
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
                        emit_json(info)
                    return EX_TEMPFAIL
                time.sleep(min(POLL_INTERVAL, remaining))   # polling a remote API
                info = target.get("/api/v1/codecs", request_timeout)
        else:
            info = target.get("/api/v1/codecs", request_timeout)
    except (Unreachable, Refused) as e:
        return fail(opts, e)
    st = info.get("codecs")
    ready = st is None or st.get("state") == "ready" or not info.get("enabled")
    if opts.json:
        emit_json(info)
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

