"""``clusterplex status``, ``workers`` and ``jobs``: what the orchestrator knows, as tables or ``--json``."""

from .api import Refused, Unreachable, emit_json, fail, orchestrator_target
from .views import (ACTIVE_JOB_STATES, JOB_COLUMNS, RECENT_COLUMNS, RECENT_SHOWN, WORKER_COLUMNS, job_json, job_rows,
                    plural, recent_json, recent_rows, table, worker_json, worker_notes, worker_rows)


def _fetch(opts, *paths):
    target = orchestrator_target(opts)
    return target, [target.get(p, opts.timeout) for p in paths]


def cmd_status(opts):
    try:
        target, (health, workers, jobs) = _fetch(opts, "/health", "/api/v1/workers", "/api/v1/jobs")
    except (Unreachable, Refused) as e:
        return fail(opts, e)
    try:
        recent = [recent_json(r) for r in target.get("/api/v1/recent", opts.timeout)[:RECENT_SHOWN]]
    except Refused:              # an orchestrator from before /api/v1/recent
        recent = None
    except Unreachable as e:
        return fail(opts, e)
    workers = sorted((worker_json(w) for w in workers), key=lambda w: w["name"])
    jobs = [job_json(j) for j in jobs]
    active = [j for j in jobs if j["state"] in ACTIVE_JOB_STATES]
    if opts.json:
        emit_json({"orchestrator": {"url": target.url, "version": health.get("version", ""),
                                    "workers_ready": health.get("workers_ready"), "workers": health.get("workers"),
                                    "jobs_active": health.get("jobs_active")},
                   "workers": workers, "jobs": active, "recent": recent})
        return 0
    ready = sum(1 for w in workers if w["state"] == "ready")
    print(f"Orchestrator {target.url} (version {health.get('version') or '?'}): {ready} of {len(workers)} "
          f"workers ready, {plural(len(active), 'job')} running")
    print(table(worker_rows(workers), WORKER_COLUMNS))
    for line in worker_notes(workers):
        print(line)
    print(f"\nRunning jobs: {len(active)}")
    print(table(job_rows(active), JOB_COLUMNS))
    if recent:
        print("\nRecent failures and fallbacks to local:")
        print(table(recent_rows(recent), RECENT_COLUMNS))
    elif recent is None:
        failed = [j for j in jobs if j["state"] == "failed"][:RECENT_SHOWN]
        if failed:
            print("\nRecent failures:")
            print(table(job_rows(failed), JOB_COLUMNS))
    return 0


def cmd_workers(opts):
    try:
        target, (workers,) = _fetch(opts, "/api/v1/workers")
    except (Unreachable, Refused) as e:
        return fail(opts, e)
    workers = sorted((worker_json(w) for w in workers), key=lambda w: w["name"])
    if opts.json:
        emit_json({"orchestrator": target.url, "workers": workers})
        return 0
    print(table(worker_rows(workers), WORKER_COLUMNS))
    for line in worker_notes(workers):
        print(line)
    return 0


def cmd_jobs(opts):
    try:
        target, (jobs,) = _fetch(opts, "/api/v1/jobs")
    except (Unreachable, Refused) as e:
        return fail(opts, e)
    jobs = [job_json(j) for j in jobs]
    if not opts.all:
        jobs = [j for j in jobs if j["state"] in ACTIVE_JOB_STATES]
    if opts.json:
        emit_json({"orchestrator": target.url, "jobs": jobs})
        return 0
    print(table(job_rows(jobs), JOB_COLUMNS))
    return 0

