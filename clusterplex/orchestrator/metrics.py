"""The orchestrator's Prometheus metrics.

ClusterPlex's own names are kept, so its Grafana dashboard works unchanged:
``jobs_posted``, ``jobs_completed``, ``jobs_succeeded``, ``jobs_failed``,
``jobs_killed`` (counters exposed under exactly these names, as ClusterPlex's
Node.js exporter did: prometheus_client would add ``_total``),
``job_posters_active``, ``workers_active`` and ``worker_load_cpu``,
``worker_load_tasks``, ``worker_load_ops``, ``worker_load_rank`` (label
``worker_name``). Everything new is under ``clusterplex_``; see
docs/operators.md for the list.
"""

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.utils import floatToGoString

from ..common.metrics import CONTENT_TYPE, Histogram, build_info, counter_family, histogram_family, number  # noqa: F401
from ..core.outcomes import CANCELLED, NO_WORKER, OUTCOMES, REMOTE_FAILED, REMOTE_OK
from . import registry, scheduler

LEGACY_COUNTERS = (
    ("jobs_posted", "Jobs Posted"),
    ("jobs_completed", "Jobs Completed"),
    ("jobs_succeeded", "Jobs Succeeded"),
    ("jobs_failed", "Jobs Failed"),
    ("jobs_killed", "Jobs Killed"),
)

DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)

WORKER_STATES = (registry.CONNECTING, registry.READY, registry.NOT_READY, registry.DRAINING, registry.OFFLINE)
CODEC_STATES = ("idle", "downloading", "ready", "error")
JOB_STATES = ("pending", "assigned", "running")


def worker_names(workers):
    """``{worker key: label}``: the worker's name, made unique with its address if two share it."""
    names = {}
    seen = {}
    for w in workers:
        name = w.name or w.address_str
        seen[name] = seen.get(name, 0) + 1
        names[w.key] = name
    for w in workers:
        if seen[names[w.key]] > 1:
            names[w.key] = f"{names[w.key]} ({w.address_str})"
    return names


def _connected(w):
    return w.state not in (registry.CONNECTING, registry.OFFLINE)


def _render_legacy_counters(values):
    """ClusterPlex's counters as its Node.js exporter wrote them: no ``_total`` suffix."""
    out = []
    for name, doc in LEGACY_COUNTERS:
        out.append(f"# HELP {name} {doc}\n# TYPE {name} counter\n{name} {floatToGoString(values[name])}\n")
    return "".join(out).encode()


class OrchestratorMetrics:
    """The orchestrator's metrics. ``orch`` provides ``registry`` (workers), ``jobs``,
    ``shims`` and ``queue``, read at scrape time; the event methods update the counters."""

    def __init__(self, orch):
        self.orch = orch
        self.legacy = {name: 0 for name, _ in LEGACY_COUNTERS}
        self.outcomes = {o: 0 for o in OUTCOMES}
        self.refusals = {}           # worker name -> refusals
        self.dispatch = Histogram(DISPATCH_BUCKETS)
        self.durations = {}          # (outcome,) -> Histogram
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # --- events ----------------------------------------------------------------

    def posted(self):
        self.legacy["jobs_posted"] += 1

    def dispatched(self, seconds):
        """Submission to transcoder started (a job's first start only)."""
        self.dispatch.observe(seconds)

    def refused(self, worker_name):
        self.refusals[worker_name] = self.refusals.get(worker_name, 0) + 1

    def outcome(self, outcome, ran_seconds=None):
        """Count ``outcome``; a final one (remote_ok, remote_failed, cancelled, no_worker) also
        completes the job for ClusterPlex's counters; ``ran_seconds``: time on the worker."""
        assert outcome in OUTCOMES, outcome
        self.outcomes[outcome] += 1
        final = {REMOTE_OK: "jobs_succeeded", REMOTE_FAILED: "jobs_failed", NO_WORKER: "jobs_failed",
                 CANCELLED: "jobs_killed"}.get(outcome)
        if final is not None:
            self.legacy["jobs_completed"] += 1
            self.legacy[final] += 1
        if ran_seconds is not None:
            self.durations.setdefault((outcome,), Histogram(DURATION_BUCKETS)).observe(ran_seconds)

    # --- exposition ----------------------------------------------------------------

    def exposition(self):
        return _render_legacy_counters(self.legacy) + generate_latest(self.registry)

    def collect(self):
        orch = self.orch
        workers = list(orch.registry)
        names = worker_names(workers)
        connected = [w for w in workers if _connected(w)]

        yield GaugeMetricFamily("job_posters_active", "Active Job Posters", value=len(orch.shims))
        yield GaugeMetricFamily("workers_active", "Active Workers", value=len(connected))
        legacy = (("worker_load_cpu", "Worker Load - CPU usage", lambda w, now: w.cpu_load),
                  ("worker_load_tasks", "Worker Load - Tasks Count", lambda w, now: w.active),
                  ("worker_load_ops", "Worker Load - CPU ops", lambda w, now: w.benchmark),
                  ("worker_load_rank", "Worker Load - Rank", scheduler.rank))
        now = time.monotonic()
        for name, doc, value in legacy:
            fam = GaugeMetricFamily(name, doc, labels=["worker_name"])
            for w in connected:
                fam.add_metric([names[w.key]], value(w, now))
            yield fam

        yield counter_family("clusterplex_jobs", "Jobs by how they ended up (see docs/operators.md)",
                              self.outcomes, "outcome")
        yield histogram_family("clusterplex_dispatch_latency_seconds",
                                "Time from a shim's submission to the transcoder running on a worker",
                                {(): self.dispatch})
        yield histogram_family("clusterplex_job_duration_seconds",
                                "Time jobs ran on a worker, by outcome", self.durations, ("outcome",))
        yield counter_family("clusterplex_job_refusals", "Jobs a worker refused to start",
                              self.refusals, "worker_name")
        by_state = {s: 0 for s in JOB_STATES}
        for job in orch.jobs.active():
            if job.state in by_state:
                by_state[job.state] += 1
        fam = GaugeMetricFamily("clusterplex_jobs_active", "Jobs not finished yet, by state", labels=["state"])
        for state, n in by_state.items():
            fam.add_metric([state], n)
        yield fam
        yield GaugeMetricFamily("clusterplex_jobs_waiting", "Jobs waiting for a free worker", value=len(orch.queue))
        yield GaugeMetricFamily("clusterplex_web_clients", "Web pages following the live updates",
                                value=len(orch.hub.clients))

        state = GaugeMetricFamily("clusterplex_worker_state", "1 for the state each worker is in",
                                  labels=["worker_name", "state"])
        info = GaugeMetricFamily("clusterplex_worker_info", "Worker identity and hardware (always 1)",
                                 labels=["worker_name", "address", "source", "version", "arch", "cpu_model",
                                         "plex_codecs"])
        running = GaugeMetricFamily("clusterplex_worker_running_jobs", "Jobs on the worker",
                                    labels=["worker_name"])
        max_jobs = GaugeMetricFamily("clusterplex_worker_max_jobs", "Jobs the worker takes at once",
                                     labels=["worker_name"])
        cpus = GaugeMetricFamily("clusterplex_worker_cpus", "CPU threads", labels=["worker_name"])
        bench = GaugeMetricFamily("clusterplex_worker_benchmark", "CPU benchmark score", labels=["worker_name"])
        gpus = GaugeMetricFamily("clusterplex_worker_gpus", "GPUs found", labels=["worker_name"])
        gpu_load = [GaugeMetricFamily(f"clusterplex_worker_gpu_{name}", doc, labels=["worker_name", "gpu"])
                    for name, doc in (("utilization", "GPU busy, percent (Intel: clock share)"),
                                      ("encoder_utilization", "Video encoder busy, percent"),
                                      ("decoder_utilization", "Video decoder busy, percent"),
                                      ("sessions", "Encoder sessions open"),
                                      ("session_limit", "Encoder sessions the driver allows (0: no limit)"))]
        hw = GaugeMetricFamily("clusterplex_worker_hw_codec", "Hardware codecs the worker offers (always 1)",
                               labels=["worker_name", "codec", "api", "direction"])
        cstate = GaugeMetricFamily("clusterplex_worker_codecs_state",
                                   "1 for the state of the Plex codecs a worker provisions (only workers "
                                   "that manage codecs)", labels=["worker_name", "state"])
        cpresent = GaugeMetricFamily("clusterplex_worker_codecs_present", "Plex codec libraries present",
                                     labels=["worker_name"])
        ctotal = GaugeMetricFamily("clusterplex_worker_codecs_total", "Plex codec libraries wanted",
                                   labels=["worker_name"])
        for w in workers:
            n = names[w.key]
            for s in WORKER_STATES:
                state.add_metric([n, s], 1 if w.state == s else 0)
            hardware = w.info.get("hardware") if isinstance(w.info.get("hardware"), dict) else {}
            info.add_metric([n, w.address_str, w.source, str(w.info.get("version", "")),
                             str(hardware.get("arch") or ""), str(hardware.get("model") or "")[:128],
                             str(hardware.get("plex_codecs") or "")], 1)
            running.add_metric([n], w.active)
            max_jobs.add_metric([n], w.max_jobs)
            cpus.add_metric([n], w.cpus)
            bench.add_metric([n], w.benchmark)
            gpus.add_metric([n], len(hardware["gpus"]) if isinstance(hardware.get("gpus"), list) else 0)
            for g in w.gpus:
                for fam, key in zip(gpu_load, ("util", "encoder", "decoder", "sessions", "session_limit")):
                    if g[key] is not None:
                        fam.add_metric([n, g["id"]], g[key])
            for cap in sorted(w.hw_codecs):
                codec, _, rest = cap.partition(":")
                api, _, direction = rest.partition(":")
                hw.add_metric([n, codec, api, direction], 1)
            codecs = w.info.get("codecs")
            if isinstance(codecs, dict) and codecs.get("state") in CODEC_STATES:
                for s in CODEC_STATES:
                    cstate.add_metric([n, s], 1 if codecs["state"] == s else 0)
                cpresent.add_metric([n], number(codecs.get("present")))
                ctotal.add_metric([n], number(codecs.get("total")))
        yield from (state, info, running, max_jobs, cpus, bench, gpus, *gpu_load, hw, cstate, cpresent, ctotal)
        yield build_info("orchestrator")


