import pytest

from clusterplex.core import capabilities
from clusterplex.orchestrator import registry, scheduler


def make(workers):
    """workers: list of (key, state, max_jobs, cpus, benchmark, cpu_load, active_jobs)."""
    reg = registry.WorkerRegistry()
    for key, state, max_jobs, cpus, bench, cpu, active in workers:
        rec, _ = reg.add(key, ("127.0.0.1", 1), "static")
        reg.update_status(key, {"name": key, "state": state, "max_jobs": max_jobs, "cpus": cpus,
                                "benchmark": bench}, 0.0)
        rec.cpu_load = cpu
        for j in range(active):
            reg.assign(key, f"{key}-old{j}", -100.0)   # long ago: no in-flight penalty
    return reg


def burst(reg, strategy, n, now=10.0):
    state = scheduler.SchedulerState()
    placed = []
    for i in range(n):
        w = scheduler.choose(strategy, reg, state, now).worker
        if w is None:
            placed.append(None)
            continue
        reg.assign(w.key, f"job{i}", now)
        placed.append(w.key)
    return placed


IDLE3 = [("a", "ready", 4, 4, 4.0, 0.0, 0), ("b", "ready", 4, 4, 4.0, 0.0, 0), ("c", "ready", 4, 4, 4.0, 0.0, 0)]


@pytest.mark.parametrize("strategy", scheduler.STRATEGIES)
def test_burst_of_six_on_three_idle_workers_spreads_2_2_2(strategy):
    placed = burst(make(IDLE3), strategy, 6)
    assert sorted(placed.count(k) for k in "abc") == [2, 2, 2]


@pytest.mark.parametrize("strategy", scheduler.STRATEGIES)
def test_max_jobs_is_a_hard_limit(strategy):
    reg = make([("a", "ready", 1, 8, 100.0, 0.0, 0), ("b", "ready", 2, 1, 1.0, 90.0, 0)])
    placed = burst(reg, strategy, 5)
    assert placed.count("a") == 1 and placed.count("b") == 2 and placed[3:] == [None, None]


@pytest.mark.parametrize("strategy", scheduler.STRATEGIES)
def test_only_ready_workers_are_chosen(strategy):
    reg = make([("a", "not_ready", 4, 4, 9.0, 0.0, 0), ("b", "draining", 4, 4, 9.0, 0.0, 0),
                ("c", "ready", 4, 4, 1.0, 50.0, 0)])
    assert burst(reg, strategy, 2) == ["c", "c"]
    reg.disconnected("c", "gone")
    assert burst(reg, strategy, 1) == [None]


@pytest.mark.parametrize("strategy,expected", [
    ("LOAD_TASKS", "b"),   # fewest active jobs
    ("LOAD_CPU", "c"),     # lowest cpu
    ("LOAD_RANK", "a"),    # benchmark x free cpu: a 10*60=600, b 2*80=160, c 1*95=95
])
def test_each_load_strategy_picks_by_its_own_measure(strategy, expected):
    reg = make([("a", "ready", 9, 4, 10.0, 40.0, 2), ("b", "ready", 9, 4, 2.0, 20.0, 0),
                ("c", "ready", 9, 4, 1.0, 5.0, 1)])
    assert scheduler.choose(strategy, reg, scheduler.SchedulerState(), 10.0).worker.key == expected


def test_round_robin_rotates():
    assert burst(make(IDLE3), "RR", 5) == ["a", "b", "c", "a", "b"]


def test_in_flight_penalty_expires_after_settle_time():
    reg = make([("a", "ready", 9, 2, 1.0, 0.0, 0)])
    rec = reg.get("a")
    reg.assign("a", "j1", 100.0)
    assert scheduler.effective_cpu(rec, 100.5) == 50.0
    assert scheduler.effective_cpu(rec, 100.0 + scheduler.SETTLE + 0.1) == 0.0


def test_exclude_skips_workers_that_refused():
    reg = make(IDLE3)
    d = scheduler.choose("LOAD_RANK", reg, scheduler.SchedulerState(), 0.0, exclude={"a", "b"})
    assert d.worker.key == "c"
    d = scheduler.choose("LOAD_RANK", reg, scheduler.SchedulerState(), 0.0, exclude={"a", "b", "c"})
    assert d.worker is None and d.reason == "no worker available: a refused it; b refused it; c refused it"


def test_registry_counts_reported_and_assigned_jobs_once():
    reg = make([("a", "ready", 3, 4, 1.0, 0.0, 0)])
    reg.assign("a", "j1", 0.0)
    reg.update_load("a", {"cpu": 10, "running": ["j1", "j2"]}, 1.0)
    assert reg.get("a").active == 2
    reg.release("a", "j1")
    assert reg.get("a").active == 1


def test_registry_ignores_hostile_status_values():
    reg = make([("a", "ready", 3, 4, 1.0, 0.0, 0)])
    reg.update_status("a", {"state": "evil", "max_jobs": -5, "cpus": "x", "benchmark": float("nan"),
                            "running": [1, "j", None]}, 0.0)
    rec = reg.get("a")
    assert rec.state == "not_ready" and rec.max_jobs == 3 and rec.cpus == 4 and rec.benchmark == 1.0
    assert rec.reported_jobs == {"j"}


# --- capabilities, priority, weight, affinity, waiting ------------------------------------------

def hw_reg(specs):
    """specs: (key, hw_codecs, has_gpu, priority, weight, active)."""
    reg = registry.WorkerRegistry()
    for key, codecs, gpu, prio, weight, active in specs:
        reg.add(key, ("127.0.0.1", 1), "static")
        reg.update_status(key, {"name": key, "state": "ready", "max_jobs": 4, "cpus": 4, "benchmark": 4.0,
                                "priority": prio, "weight": weight,
                                "hardware": {"hw_codecs": codecs, "gpus": [{"vendor": "x"}] if gpu else []}}, 0.0)
        for j in range(active):
            reg.assign(key, f"{key}-old{j}", -100.0)
    return reg


VAAPI = ["hevc:vaapi:decode", "h264:vaapi:decode", "h264:vaapi:encode", "hevc:vaapi:encode"]
NV = ["h264:nvdec:decode", "hevc:nvdec:decode", "h264:nvenc:encode"]


def needs_of(*argv):
    return capabilities.needs(list(argv))


HEVC_4K = needs_of("-codec:0", "hevc", "-i", "/m/x.mkv", "-filter_complex", "[0:0]scale=w=3840:h=2160[0]",
                   "-map", "[0]", "-codec:0", "libx264", "o.ts")
LIGHT = needs_of("-codec:0", "h264", "-i", "/m/x.mkv", "-filter_complex", "[0:0]scale=w=720:h=404[0]",
                 "-map", "[0]", "-codec:0", "libx264", "o.ts")
VAAPI_JOB = needs_of("-codec:0", "av1", "-hwaccel:0", "vaapi", "-i", "/m/x.mkv", "-codec:0", "hevc_vaapi", "o.mp4")


@pytest.mark.parametrize("name,needs,specs,expected,reason", [
    ("heavy job to the hardware decoder", HEVC_4K,
     [("cpu", [], False, 0, 1.0, 0), ("gpu", VAAPI, True, 0, 1.0, 2)], "gpu", "hevc decode in hardware (vaapi)"),
    ("light job kept off the GPU", LIGHT,
     [("cpu", [], False, 0, 1.0, 2), ("gpu", VAAPI, True, 0, 1.0, 0)], "cpu", "light job, no GPU needed"),
    ("light job on a GPU when nothing else is free", LIGHT,
     [("gpu", VAAPI, True, 0, 1.0, 0)], "gpu", "light job on a GPU worker"),
    ("argv that asks for vaapi needs vaapi", VAAPI_JOB,
     [("nv", NV, True, 0, 1.0, 0), ("va", VAAPI + ["av1:vaapi:decode"], True, 0, 1.0, 3)], "va", "vaapi"),
    ("priority first", LIGHT,
     [("a", [], False, 5, 1.0, 3), ("b", [], False, 0, 1.0, 0)], "a", "priority 5"),
    ("weight scales load", LIGHT,
     [("a", [], False, 0, 3.0, 2), ("b", [], False, 0, 1.0, 1)], "a", "3/4 jobs"),
])
def test_routing_table(name, needs, specs, expected, reason):
    d = scheduler.choose("LOAD_TASKS", hw_reg(specs), scheduler.SchedulerState(), 10.0, needs=needs)
    assert d.worker.key == expected, (name, d.reason)
    assert reason in d.reason and d.reason.startswith(f"{expected}: ")


def test_missing_hardware_is_a_hard_refusal_not_a_wait():
    d = scheduler.choose("RR", hw_reg([("nv", NV, True, 0, 1.0, 0)]), scheduler.SchedulerState(), 0.0,
                         needs=VAAPI_JOB)
    assert d.worker is None and not d.waitable
    assert "nv lacks av1:vaapi:decode,hevc:vaapi:encode" in d.reason


def test_a_pinned_va_driver_goes_only_to_a_gpu_of_its_vendor():
    """Plex set up VAAPI itself (-init_hw_device vaapi=vaapi:/dev/dri/renderD128,driver=iHD): an AMD
    worker with VAAPI codecs would match on codecs alone, then fail; only the Intel one may take it."""
    job = needs_of("-init_hw_device", "vaapi=vaapi:/dev/dri/renderD128,driver=iHD", "-codec:0", "hevc",
                   "-hwaccel:0", "vaapi", "-i", "/m/x.mkv", "-codec:0", "h264_vaapi", "o.ts")
    reg = registry.WorkerRegistry()
    for key, vendor, active in (("amd", "AMD", 0), ("intel", "Intel", 3)):
        reg.add(key, ("127.0.0.1", 1), "static")
        reg.update_status(key, {"name": key, "state": "ready", "max_jobs": 4, "cpus": 4, "benchmark": 4.0,
                                "hardware": {"hw_codecs": VAAPI, "gpus": [{"vendor": vendor}]}}, 0.0)
        for j in range(active):
            reg.assign(key, f"{key}-old{j}", -100.0)
    d = scheduler.choose("LOAD_TASKS", reg, scheduler.SchedulerState(), 10.0, needs=job)
    assert d.worker.key == "intel", d.reason
    reg.disconnected("intel", "gone")
    d = scheduler.choose("LOAD_TASKS", reg, scheduler.SchedulerState(), 10.0, needs=job)
    assert d.worker is None and not d.waitable and "va-driver:iHD (intel GPU)" in d.reason, d.reason


def test_eae_jobs_only_go_to_workers_running_eae():
    eae_job = needs_of("-codec:1", "eac3_eae", "-eae_prefix:1", "s_", "-i", "/m/x.mkv", "-codec:1", "aac", "o.ts")
    reg = hw_reg([("plain", [], False, 0, 1.0, 0), ("witheae", ["eae"], False, 0, 1.0, 3)])
    d = scheduler.choose("LOAD_TASKS", reg, scheduler.SchedulerState(), 0.0, needs=eae_job)
    assert d.worker.key == "witheae"
    reg.disconnected("witheae", "gone")
    d = scheduler.choose("LOAD_TASKS", reg, scheduler.SchedulerState(), 0.0, needs=eae_job)
    assert d.worker is None and "plain lacks eae" in d.reason and not d.waitable


def test_full_capable_workers_are_waitable():
    reg = hw_reg([("a", [], False, 0, 1.0, 4), ("b", [], False, 0, 1.0, 4)])
    d = scheduler.choose("RR", reg, scheduler.SchedulerState(), 0.0, needs=LIGHT)
    assert d.worker is None and d.waitable and "a full (4/4)" in d.reason


def test_session_affinity_wins_while_the_worker_can_take_it():
    reg = hw_reg([("a", [], False, 0, 1.0, 3), ("b", [], False, 0, 1.0, 0)])
    d = scheduler.choose("LOAD_TASKS", reg, scheduler.SchedulerState(), 0.0, needs=LIGHT, prefer="a")
    assert d.worker.key == "a" and "same session as before" in d.reason
    reg.assign("a", "x", 0.0)   # now full
    assert scheduler.choose("LOAD_TASKS", reg, scheduler.SchedulerState(), 0.0, needs=LIGHT,
                            prefer="a").worker.key == "b"


# --- GPU load (the gpus of the workers' load messages) and NVENC session limits ---------------
# which worker gets which job under which GPU loads and limits, and the reason it gives

GNV = frozenset({"hevc:nvdec:decode", "h264:nvenc:encode", "hevc:nvenc:encode"})
GVA = frozenset({"hevc:vaapi:decode", "h264:vaapi:encode"})


def _gpu(vendor, util, sessions=None, limit=0, encoder=None):
    return {"id": f"{vendor}0", "vendor": vendor, "util": util, "encoder": encoder, "decoder": None,
            "sessions": sessions, "session_limit": limit}


def gpu_cluster(spec):
    """spec: key -> (hw_codecs, [gpu dicts], cpu load)."""
    reg = registry.WorkerRegistry()
    for key, (codecs, gpus, cpu) in spec.items():
        reg.add(key, ("127.0.0.1", 1), "static")
        reg.update_status(key, {"name": key, "state": "ready", "max_jobs": 4, "cpus": 4,
                                "hardware": {"hw_codecs": sorted(codecs), "gpus": [{}] if gpus else []}}, 0.0)
        reg.update_load(key, {"cpu": cpu, "gpus": gpus}, 0.0)
    return reg


G_HEVC = ["-codec:0", "hevc", "-i", "in.mkv", "-codec:0", "libx264", "-f", "dash", "out.mpd"]
G_HEVC_NVENC = ["-codec:0", "hevc", "-i", "in.mkv", "-codec:0", "h264_nvenc", "-f", "dash", "out.mpd"]
G_LIGHT = ["-codec:0", "h264", "-i", "in.mkv", "-codec:0", "libx264", "-f", "dash", "out.mpd"]

GPU_TABLE = [
    # (strategy, job argv, workers, expected worker or None, waitable, words in the reason)
    ("LOAD_CPU", G_HEVC, {"a": (GNV, [_gpu("nvidia", 90, 2, 8)], 5.0), "b": (GNV, [_gpu("nvidia", 10, 1, 8)], 60.0)},
     "b", False, ["gpu 10%"]),
    ("LOAD_TASKS", G_HEVC, {"a": (GVA, [_gpu("intel", 75)], 0.0), "b": (GVA, [_gpu("intel", 20)], 0.0)},
     "b", False, ["gpu 20%"]),
    ("LOAD_RANK", G_HEVC, {"a": (GNV, [_gpu("nvidia", 5)], 0.0), "b": (GNV, [_gpu("nvidia", 70)], 0.0)},
     "a", False, ["gpu 5%"]),
    # round robin ignores load, GPU or not
    ("RR", G_HEVC, {"a": (GNV, [_gpu("nvidia", 90)], 0.0), "b": (GNV, [_gpu("nvidia", 10)], 0.0)}, "a", False, []),
    # a light job is not a GPU job: CPU load decides
    ("LOAD_CPU", G_LIGHT, {"a": ((), [], 30.0), "b": ((), [], 10.0)}, "b", False, ["cpu 10%"]),
    # the GeForce at its NVENC cap is not eligible for an NVENC job: the other worker gets it...
    ("LOAD_CPU", G_HEVC_NVENC, {"a": (GNV, [_gpu("nvidia", 10, 8, 8)], 0.0),
                                "b": (GNV, [_gpu("nvidia", 95, 2, 8)], 50.0)}, "b", False, ["gpu 95%"]),
    # ... or, when every one is at its cap, the job waits like for a full worker, saying why
    ("LOAD_CPU", G_HEVC_NVENC, {"a": (GNV, [_gpu("nvidia", 10, 8, 8)], 0.0)}, None, True,
     ["a NVENC sessions at limit (8/8)"]),
    # the same worker still takes a job that does not use its encoder (software encode, nvdec decode)
    ("LOAD_CPU", G_HEVC, {"a": (GNV, [_gpu("nvidia", 10, 8, 8)], 0.0)}, "a", False, ["hevc decode in hardware"]),
    # no limit (0: data-centre card) means no cap
    ("LOAD_CPU", G_HEVC_NVENC, {"a": (GNV, [_gpu("nvidia", 10, 30, 0)], 0.0)}, "a", False, []),
    # a worker that reports no GPU load (older worker) counts as 0% busy, not as an error
    ("LOAD_CPU", G_HEVC, {"a": (GNV, [_gpu("nvidia", 40)], 0.0), "b": (GNV, [], 0.0)}, "b", False, []),
]


@pytest.mark.parametrize("strategy, argv, spec, expected, waitable, words", GPU_TABLE)
def test_gpu_load_scheduling_table(strategy, argv, spec, expected, waitable, words):
    d = scheduler.choose(strategy, gpu_cluster(spec), scheduler.SchedulerState(), 10.0, capabilities.needs(argv))
    assert (d.worker.key if d.worker else None) == expected, d.reason
    assert d.waitable == waitable
    for w in words:
        assert w in d.reason
