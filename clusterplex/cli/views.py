"""The CLI's views of the orchestrator's and worker's API answers (pure).

The documented, stable ``--json`` shapes (``*_json``; docs/operators.md), the tables for people
(``*_rows``, ``table``), and the progress of a drain or a codec download.
"""

import time

ACTIVE_JOB_STATES = ("pending", "assigned", "running")


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
        "gpu_load": [g for g in w.get("gpus") or [] if isinstance(g, dict)],
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


def load_text(w):
    """``12%, renderD128 41% 3/8 sessions``: CPU, then each GPU's busiest engine and its encoder sessions."""
    parts = ["-" if w["load_cpu"] is None else f"{w['load_cpu']:g}%"]
    for g in w.get("gpu_load") or []:
        busy = [g.get(k) for k in ("util", "encoder", "decoder") if isinstance(g.get(k), (int, float))]
        name = str(g.get("id") or "gpu").rpartition("/")[2]
        text = f"{name} {max(busy):g}%" if busy else f"{name} ?"
        if isinstance(g.get("sessions"), int):
            text += f" {g['sessions']}/{g['session_limit']} sessions" if g.get("session_limit") else \
                f" {g['sessions']} sessions"
        parts.append(text)
    return ", ".join(parts)


def worker_rows(workers):
    return [(w["name"], w["address"], display_state(w), f"{w['running_jobs']}/{w['max_jobs']}", load_text(w),
             hardware_text(w), codecs_text(w))
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


def table(rows, columns):
    if not rows:
        return "  (none)"
    widths = [max(len(c), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def drain_progress(worker, jobs):
    """(jobs left, their active job_json records) for a draining worker_json (pure)."""
    left = [j for j in jobs if j["worker"] == worker["name"] and j["state"] in ACTIVE_JOB_STATES]
    return max(worker["running_jobs"], len(left)), left


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

