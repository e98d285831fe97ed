"""Pick a worker for a job (pure: workers and the time in, a decision out).

Strategies, as ClusterPlex defines them, plus in-flight accounting:

- ``RR``: round robin over workers that can take a job.
- ``LOAD_TASKS``: fewest active jobs (ours in flight + running).
- ``LOAD_CPU``: lowest CPU load.
- ``LOAD_RANK``: highest ``benchmark x free CPU``.

A worker's CPU load is measured, so it lags behind a job just assigned: each
job assigned less than ``SETTLE`` seconds ago counts as ``100 / cpus`` percent
of extra load until the measurement catches up. Ties go round robin, so a
burst of 6 jobs on 3 idle, equal workers spreads 2-2-2. ``max_jobs`` is a
hard limit in every strategy.
"""

STRATEGIES = ("RR", "LOAD_CPU", "LOAD_TASKS", "LOAD_RANK")
SETTLE = 5.0


class SchedulerState:
    """What a strategy remembers between decisions (the round-robin cursor)."""

    def __init__(self):
        self.last_key = None


def effective_cpu(worker, now):
    fresh = sum(1 for t in worker.jobs.values() if now - t < SETTLE)
    return min(100.0, worker.cpu_load + fresh * 100.0 / max(1, worker.cpus))


def _rotated(workers, last_key):
    """Workers sorted by key, starting just after ``last_key``."""
    ordered = sorted(workers, key=lambda w: w.key)
    if last_key is None:
        return ordered
    for i, w in enumerate(ordered):
        if w.key > last_key:
            return ordered[i:] + ordered[:i]
    return ordered


def choose(strategy, workers, state, now, exclude=()):
    """Return the worker to run the next job on, or None if none can take it."""
    candidates = [w for w in workers if w.can_take() and w.key not in exclude]
    if not candidates:
        return None
    ordered = _rotated(candidates, state.last_key)
    if strategy == "RR":
        best = ordered[0]
    elif strategy == "LOAD_TASKS":
        best = min(ordered, key=lambda w: w.active)
    elif strategy == "LOAD_CPU":
        best = min(ordered, key=lambda w: effective_cpu(w, now))
    elif strategy == "LOAD_RANK":
        best = max(ordered, key=lambda w: w.benchmark * (100.0 - effective_cpu(w, now)))
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    state.last_key = best.key
    return best
