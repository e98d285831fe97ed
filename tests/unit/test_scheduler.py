import pytest

from clusterplex import registry, scheduler


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
        w = scheduler.choose(strategy, reg, state, now)
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
    assert scheduler.choose(strategy, reg, scheduler.SchedulerState(), 10.0).key == expected


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
    w = scheduler.choose("LOAD_RANK", reg, scheduler.SchedulerState(), 0.0, exclude={"a", "b"})
    assert w.key == "c"
    assert scheduler.choose("LOAD_RANK", reg, scheduler.SchedulerState(), 0.0, exclude={"a", "b", "c"}) is None


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
