"""Pick a worker for a job (pure: workers, the job's needs and the time in; a decision out).

Order of preference, each step only among workers that can take the job
(ready, under ``max_jobs``, with every hardware capability the job's own
arguments require, not excluded because they refused it):

1. session affinity: the worker that ran this Plex session before (a seek);
2. ``priority``: the highest-priority workers while they have room;
3. hardware fit: heavy jobs (HEVC/AV1, 4K) to a worker with a matching
   hardware codec; light jobs off GPU workers while others are free;
4. the strategy, as ClusterPlex defines it, with in-flight accounting:
   ``RR`` round robin; ``LOAD_TASKS`` fewest active jobs / weight;
   ``LOAD_CPU`` lowest CPU load / weight; ``LOAD_RANK`` highest
   benchmark x free CPU x weight.

A worker's CPU load is measured, so it lags behind a job just assigned: each
job assigned less than ``SETTLE`` seconds ago counts as ``100 / cpus`` percent
of extra load until the measurement catches up. Ties go round robin, so a
burst of 6 jobs on 3 idle, equal workers spreads 2-2-2.

GPU load (the ``gpus`` of the workers' load messages): for a job that uses a
worker's hardware codec, the ``LOAD_*`` strategies first take the workers whose
GPU of that API's vendor is least busy (in ``GPU_STEP`` percent steps; each
fresh job adds ``GPU_SETTLE_SHARE``), then apply their own order. A job whose
argv asks for NVENC is not eligible for a worker whose NVIDIA GPUs are all at
their session limit: it goes elsewhere or waits, as for a full worker.
"""

from ..core import capabilities

STRATEGIES = ("RR", "LOAD_CPU", "LOAD_TASKS", "LOAD_RANK")
SETTLE = 5.0
GPU_STEP = 10.0
GPU_SETTLE_SHARE = 20.0
_NVIDIA_APIS = ("nvenc", "nvdec", "cuda")


class SchedulerState:
    """What a strategy remembers between decisions (the round-robin cursor)."""

    def __init__(self):
        self.last_key = None


class Decision:
    """``worker`` (None if no worker can take the job now), ``reason`` for logs and
    the job's record, and ``waitable``: capable workers exist but are all full."""

    __slots__ = ("worker", "reason", "waitable")

    def __init__(self, worker, reason, waitable=False):
        self.worker = worker
        self.reason = reason
        self.waitable = waitable

    def __repr__(self):
        return f"<Decision {self.worker.key if self.worker else None}: {self.reason}>"


def effective_cpu(worker, now):
    fresh = sum(1 for t in worker.jobs.values() if now - t < SETTLE)
    return min(100.0, worker.cpu_load + fresh * 100.0 / max(1, worker.cpus))


def rank(worker, now):
    """``LOAD_RANK``'s score: benchmark x free CPU x weight (higher is better)."""
    return worker.benchmark * (100.0 - effective_cpu(worker, now)) * worker.weight


def _rotated(workers, last_key):
    """Workers sorted by key, starting just after ``last_key``."""
    ordered = sorted(workers, key=lambda w: w.key)
    if last_key is None:
        return ordered
    for i, w in enumerate(ordered):
        if w.key > last_key:
            return ordered[i:] + ordered[:i]
    return ordered


def _by_strategy(strategy, ordered, now):
    if strategy == "RR":
        return ordered[0]
    if strategy == "LOAD_TASKS":
        return min(ordered, key=lambda w: w.active / w.weight)
    if strategy == "LOAD_CPU":
        return min(ordered, key=lambda w: effective_cpu(w, now) / w.weight)
    if strategy == "LOAD_RANK":
        return max(ordered, key=lambda w: rank(w, now))
    raise ValueError(f"unknown strategy {strategy!r}")


def _label(w):
    return w.name or w.address_str


def _caps(caps):
    return [(cap.split(":") + ["", "", ""])[:3] for cap in caps]


def _gpu_apis(needs, hw_codecs):
    """The hardware APIs a job would use on a worker: those its argv requires, else a matching hardware codec."""
    apis = {api for _c, api, _d in _caps(needs.hw_required)}
    if apis or not needs.heavy:
        return apis
    wanted = {(c, "decode") for c in needs.decode - needs.copied} | {(c, "encode") for c in needs.encode}
    return {api for c, api, d in _caps(hw_codecs) if (c, d) in wanted}


def _gpu_busy(needs, w, now):
    """How busy the GPU a job would use on ``w`` is (percent, fresh jobs included); None: no GPU job."""
    apis = _gpu_apis(needs, w.hw_codecs)
    if not apis:
        return None
    nvidia = bool(apis & set(_NVIDIA_APIS))
    busy = [max(g[k] or 0.0 for k in ("util", "encoder", "decoder")) for g in w.gpus
            if (g["vendor"] == "nvidia") == nvidia]
    fresh = sum(1 for t in w.jobs.values() if now - t < SETTLE)
    return min(100.0, min(busy, default=0.0) + fresh * GPU_SETTLE_SHARE)


def _at_session_limit(needs, w):
    """Why an NVENC job cannot go to ``w`` (every NVIDIA GPU at its session limit), or None."""
    if not any(api == "nvenc" and d == "encode" for _c, api, d in _caps(needs.hw_required)):
        return None
    nv = [g for g in w.gpus if g["vendor"] == "nvidia"]
    if nv and all(g["session_limit"] and (g["sessions"] or 0) >= g["session_limit"] for g in nv):
        g = min(nv, key=lambda g: g["sessions"] - g["session_limit"])
        return f"NVENC sessions at limit ({g['sessions']}/{g['session_limit']})"
    return None


def choose(strategy, workers, state, now, needs=None, exclude=(), prefer=None):
    """Decide where the next job goes. Returns a ``Decision``."""
    capable = []
    refusals = []
    full = 0
    for w in workers:
        if w.key in exclude:
            refusals.append(f"{_label(w)} refused it")
            continue
        if w.state != "ready":
            refusals.append(f"{_label(w)} {w.state}" + (f" ({w.reason})" if w.reason else ""))
            continue
        lack = capabilities.missing(needs, w.hw_codecs, w.gpu_vendors) if needs is not None else []
        if lack:
            refusals.append(f"{_label(w)} lacks {','.join(lack)}")
            continue
        if w.active >= w.max_jobs:
            full += 1
            refusals.append(f"{_label(w)} full ({w.active}/{w.max_jobs})")
            continue
        capped = _at_session_limit(needs, w) if needs is not None else None
        if capped:
            full += 1
            refusals.append(f"{_label(w)} {capped}")
            continue
        capable.append(w)
    if not capable:
        if not refusals:
            return Decision(None, "no workers configured or discovered")
        return Decision(None, "no worker available: " + "; ".join(refusals), waitable=full > 0)

    why = []
    sticky = next((w for w in capable if w.key == prefer), None)
    if sticky is not None:
        best = sticky
        why.append("same session as before")
    else:
        top = max(w.priority for w in capable)
        group = [w for w in capable if w.priority == top]
        if top != min(w.priority for w in capable):
            why.append(f"priority {top}")
        if needs is not None:
            fits = {w.key: capabilities.hardware_fit(needs, w.hw_codecs, w.has_gpu) for w in group}
            tier = min(f[0] for f in fits.values())
            group = [w for w in group if fits[w.key][0] == tier]
        busy = {}
        if needs is not None and strategy != "RR":
            busy = {w.key: _gpu_busy(needs, w, now) for w in group}
            if any(b is not None for b in busy.values()):
                low = min((b or 0.0) // GPU_STEP for b in busy.values())
                group = [w for w in group if (busy[w.key] or 0.0) // GPU_STEP == low]
        best = _by_strategy(strategy, _rotated(group, state.last_key), now)
        if needs is not None:
            why.append(fits[best.key][1])
        if busy.get(best.key) is not None:
            why.append(f"gpu {busy[best.key]:.0f}%")
    state.last_key = best.key
    why.append(f"{best.active + 1}/{best.max_jobs} jobs, cpu {best.cpu_load:.0f}%")
    return Decision(best, f"{_label(best)}: " + ", ".join(why))
