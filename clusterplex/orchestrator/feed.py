"""What the orchestrator's web page and ``/api/v1/events`` show, besides its tables (pure).

``status_line``: the headline (also the daemon's sd_notify STATUS).
``Recent``: a bounded list of recent failures, refusals and runs that fell
back to Plex's own transcoder, with their reasons (events and the time in);
``sse`` encodes one Server-Sent Event. ``live.Hub`` fans the events out.
"""

import collections

from . import jobs, registry

# Kinds of entries in the recent list.
NO_WORKER = "no_worker"            # no worker could take the job
REMOTE_FAILED = "remote_failed"    # it ran on a worker and failed (exit code, worker lost)
REFUSED = "refused"                # a worker would not start it (another one was tried)
FELL_BACK_LOCAL = "fell_back_local"  # the shim ran Plex's own transcoder instead
RESUMED = "resumed"                # its worker was lost; it continues from the last segment elsewhere
KINDS = (NO_WORKER, REMOTE_FAILED, REFUSED, FELL_BACK_LOCAL, RESUMED)

MAX_REASON = 500


def status_line(workers, active_jobs, waiting, ignored):
    """``2 of 3 workers ready, 1 offline, 4 jobs running, 1 waiting for a worker``; ``ignored``: mDNS
    workers of other clusters."""
    ready = sum(1 for w in workers if w.state == registry.READY)
    others = {}
    for w in workers:
        if w.state != registry.READY:
            others[w.state] = others.get(w.state, 0) + 1
    running = sum(1 for j in active_jobs if j.state == jobs.RUNNING)
    states = "".join(f", {n} {state}" for state, n in sorted(others.items()))
    if ignored:
        states += f", {ignored} ignored"
    waiting = f", {waiting} waiting for a worker" if waiting else ""
    total = len(workers)
    return f"{ready} of {total} workers ready{states}, {running} job{'' if running == 1 else 's'} running{waiting}"


def worker_of(job):
    """The worker an entry names: the job's, or the last one that tried it."""
    return job.worker_name or (job.tried[-1][0] if job.tried else "")


class Recent:
    """The last ``size`` notable events, oldest first."""

    def __init__(self, size=100):
        self._items = collections.deque(maxlen=size)
        self._seq = 0

    def add(self, kind, job, reason, wall_time):
        """Record ``kind`` for ``job`` (a ``jobs.Job``) at ``wall_time`` (seconds since the epoch)."""
        self.add_entry(kind, job.id, job.session, worker_of(job), reason, wall_time)

    def add_entry(self, kind, job_id, session, worker, reason, wall_time):
        """Record ``kind`` for the job ``job_id`` (``effects.Note`` holds the same fields)."""
        assert kind in KINDS, kind
        self._seq += 1
        self._items.append({
            "seq": self._seq,
            "time": round(wall_time, 3),
            "kind": kind,
            "job": job_id,
            "session": session,
            "worker": worker,
            "reason": str(reason)[:MAX_REASON],
        })

    def items(self):
        return list(self._items)

    def __len__(self):
        return len(self._items)


def sse(event, data):
    """One Server-Sent Event (``data`` is a JSON text without newlines)."""
    return f"event: {event}\ndata: {data}\n\n".encode()
