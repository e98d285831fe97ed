"""The orchestrator's view of its workers (pure state, no I/O).

Workers come from *sources*: the static ``workers`` list and mDNS
discovery. A source only calls ``add``/``remove`` (through ``control``);
status updates come from the workers' links. Capacity counts the jobs this
orchestrator has assigned (in flight or running) as well as what the worker
reports, so a burst of submissions never overshoots ``max_jobs``.
"""

CONNECTING = "connecting"
READY = "ready"
NOT_READY = "not_ready"
DRAINING = "draining"
OFFLINE = "offline"


class WorkerRecord:
    def __init__(self, key, address, source):
        self.key = key
        self.address = address            # (host, port)
        self.source = source              # "static", "mdns"
        self.name = ""
        self.state = CONNECTING
        self.reason = "not connected yet"
        self.max_jobs = 1
        self.cpus = 1
        self.benchmark = 1.0
        self.cpu_load = 0.0               # percent, whole machine
        self.weight = 1.0
        self.priority = 0
        self.hw_codecs = frozenset()      # "hevc:vaapi:decode", ...
        self.has_gpu = False
        self.gpus = []                    # per GPU load from the worker's load messages (see _gpus)
        self.gpu_vendors = frozenset()    # "intel", "amd", "nvidia" (a job's pinned VA driver needs its vendor)
        self.reported_jobs = frozenset()  # job ids the worker says it runs
        self.jobs = {}                    # job id -> time assigned (ours)
        self.info = {}
        self.last_seen = None

    @property
    def address_str(self):
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @property
    def active(self):
        return len(self.jobs.keys() | self.reported_jobs)

    def can_take(self):
        return self.state == READY and self.active < self.max_jobs

    def view(self):
        return {
            "key": self.key,
            "name": self.name or self.address_str,
            "address": self.address_str,
            "source": self.source,
            "state": self.state,
            "reason": self.reason if self.state != READY else "",
            "running_jobs": self.active,
            "max_jobs": self.max_jobs,
            "weight": self.weight,
            "priority": self.priority,
            "load": {"cpu": round(self.cpu_load, 1)},
            "gpus": self.gpus,
            "hardware": {"cpus": self.cpus, "benchmark": self.benchmark, **self.info.get("hardware", {}),
                         "hw_codecs": sorted(self.hw_codecs)},
            "version": self.info.get("version", ""),
            "codecs": _codecs_view(self.info.get("codecs")),
            "eae": self.info.get("eae"),
        }


class WorkerRegistry:
    def __init__(self):
        self._workers = {}

    def __iter__(self):
        return iter(sorted(self._workers.values(), key=lambda w: w.key))

    def __len__(self):
        return len(self._workers)

    def get(self, key):
        return self._workers.get(key)

    def add(self, key, address, source):
        """Register a worker (idempotent); returns (record, created)."""
        rec = self._workers.get(key)
        if rec is not None:
            rec.address = address
            return rec, False
        rec = self._workers[key] = WorkerRecord(key, address, source)
        return rec, True

    def remove(self, key):
        return self._workers.pop(key, None)

    def connected(self, key, status, now):
        self.update_status(key, status, now)

    def update_status(self, key, status, now):
        """Apply a worker's ``status`` message (its own view of itself)."""
        rec = self._workers.get(key)
        if rec is None:
            return None
        rec.last_seen = now
        rec.name = str(status.get("name") or rec.name)[:128]
        state = status.get("state")
        rec.state = state if state in (READY, NOT_READY, DRAINING) else NOT_READY
        rec.reason = str(status.get("reason") or "")[:500]
        rec.max_jobs = _int(status.get("max_jobs"), rec.max_jobs, 0, 4096)
        rec.cpus = _int(status.get("cpus"), rec.cpus, 1, 4096)
        rec.benchmark = _num(status.get("benchmark"), rec.benchmark)
        rec.weight = max(0.01, _num(status.get("weight"), rec.weight))
        rec.priority = _int(status.get("priority"), rec.priority, -1000, 1000)
        hw = status.get("hardware") if isinstance(status.get("hardware"), dict) else {}
        codecs = hw.get("hw_codecs")
        if isinstance(codecs, list):
            rec.hw_codecs = frozenset(c for c in codecs if isinstance(c, str) and len(c) < 64)
        gpus = hw.get("gpus")
        if isinstance(gpus, list):
            rec.has_gpu = bool(gpus)
            rec.gpu_vendors = frozenset(str(g.get("vendor", "")).lower() for g in gpus if isinstance(g, dict))
        running = status.get("running")
        if isinstance(running, list):
            rec.reported_jobs = frozenset(j for j in running if isinstance(j, str))
        info = {k: status[k] for k in ("hardware", "version", "transcoder", "codecs", "eae")
                if isinstance(status.get(k), (dict, str))}
        rec.info.update(info)
        return rec

    def update_load(self, key, load, now):
        rec = self._workers.get(key)
        if rec is None:
            return None
        rec.last_seen = now
        rec.cpu_load = min(100.0, max(0.0, _num(load.get("cpu"), rec.cpu_load)))
        if isinstance(load.get("gpus"), list):
            rec.gpus = _gpus(load["gpus"])
        running = load.get("running")
        if isinstance(running, list):
            rec.reported_jobs = frozenset(j for j in running if isinstance(j, str))
        return rec

    def disconnected(self, key, reason):
        rec = self._workers.get(key)
        if rec is not None:
            rec.state = OFFLINE
            rec.reason = reason
            rec.reported_jobs = frozenset()
        return rec

    def assign(self, key, job_id, now):
        self._workers[key].jobs[job_id] = now

    def release(self, key, job_id):
        rec = self._workers.get(key)
        if rec is not None:
            rec.jobs.pop(job_id, None)
            rec.reported_jobs = rec.reported_jobs - {job_id}

    def counts(self):
        ready = sum(1 for w in self._workers.values() if w.state == READY)
        return ready, len(self._workers)


def _codecs_view(c):
    """``codecs 120/310`` and friends from a worker's codecs state (None: not managed/needed)."""
    if not isinstance(c, dict):
        return None
    keys = ("state", "present", "total", "reason", "version", "arch")
    return {k: c.get(k) for k in keys}


MAX_GPUS = 16
_GPU_VENDORS = ("intel", "amd", "nvidia")


def _gpus(items):
    """The load message's ``gpus``, kept only in the expected shape: bounded, typed, percentages clamped."""
    out = []
    for g in items:
        if len(out) >= MAX_GPUS:
            break
        if not isinstance(g, dict) or not isinstance(g.get("id"), str) or not g["id"]:
            continue
        entry = {"id": g["id"][:64], "vendor": g.get("vendor") if g.get("vendor") in _GPU_VENDORS else "other"}
        for k in ("util", "encoder", "decoder"):
            v = _num(g.get(k), None)
            entry[k] = None if v is None else round(min(100.0, max(0.0, v)), 1)
        entry["sessions"] = _int(g.get("sessions"), None, 0, 1 << 20)
        entry["session_limit"] = _int(g.get("session_limit"), 0, 0, 1 << 20)
        out.append(entry)
    return out


def _int(value, default, lo, hi):
    if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
        return value
    return default


def _num(value, default):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < 1e12:
        return float(value)
    return default
