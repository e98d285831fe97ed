"""Metrics and the web page's feed (pure parts): exact exposition, labels, bounded queues."""

import asyncio
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterplex.core import outcomes
from clusterplex.orchestrator import feed, jobs, live, metrics, registry
from clusterplex.relay import metrics as relay_metrics


class State:
    """What the orchestrator metrics read, with the real pure state classes."""

    def __init__(self):
        self.registry = registry.WorkerRegistry()
        self.jobs = jobs.JobTable()
        self.shims = {}
        self.queue = {}
        self.hub = live.Hub()


def job(n, session="sess/uuid"):
    return jobs.Job({"id": f"{n:08d}", "argv": [], "cwd": "/", "env": {}, "session": session}, 0.0)


def ready_worker(reg, key, name, host="10.0.0.1", **status):
    reg.add(key, (host, 3501), "static")
    return reg.update_status(key, {"name": name, "state": "ready", "max_jobs": 2, "cpus": 4, "benchmark": 100.0,
                                   **status}, 0.0)


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_clusterplex_counters_keep_their_exact_names_and_types():
    m = metrics.OrchestratorMetrics(State())
    m.posted()
    m.posted()
    m.outcome(outcomes.REMOTE_OK, 10)
    m.outcome(outcomes.CANCELLED)
    text = m.exposition().decode()
    assert text.startswith("# HELP jobs_posted Jobs Posted\n# TYPE jobs_posted counter\njobs_posted 2.0\n")
    for line in ("# TYPE jobs_completed counter\njobs_completed 2.0\n",
                 "# TYPE jobs_succeeded counter\njobs_succeeded 1.0\n",
                 "# TYPE jobs_failed counter\njobs_failed 0.0\n",
                 "# TYPE jobs_killed counter\njobs_killed 1.0\n",
                 "# TYPE job_posters_active gauge\njob_posters_active 0.0\n",
                 "# TYPE workers_active gauge\nworkers_active 0.0\n"):
        assert line in text
    assert "jobs_posted_total" not in text and "_created" not in text


def test_outcomes_map_onto_clusterplex_counters():
    m = metrics.OrchestratorMetrics(State())
    for o in (outcomes.REMOTE_OK, outcomes.REMOTE_FAILED, outcomes.NO_WORKER, outcomes.CANCELLED,
              outcomes.FELL_BACK_LOCAL, outcomes.RESUMED):
        m.outcome(o)
    assert m.legacy == {"jobs_posted": 0, "jobs_completed": 4, "jobs_succeeded": 1, "jobs_failed": 2,
                        "jobs_killed": 1}
    s = samples(m.exposition().decode())
    assert s[("clusterplex_jobs_total", (("outcome", "fell_back_local"),))] == 1
    assert s[("clusterplex_jobs_total", (("outcome", "resumed"),))] == 1
    assert ("clusterplex_jobs_total", (("outcome", "forced_local"),)) not in s       # the relay counts those
    with pytest.raises(AssertionError):
        m.outcome("made_up")


def test_worker_gauges_with_worker_name_and_hostile_names_escaped():
    st = State()
    ready_worker(st.registry, "a", 'evil"\n\\name', hardware={"hw_codecs": ["hevc:vaapi:decode"], "gpus": [{}],
                                                               "arch": "x86_64", "model": "Xeon"})
    ready_worker(st.registry, "b", "twin", host="10.0.0.2")
    ready_worker(st.registry, "c", "twin", host="10.0.0.3")
    st.registry.add("d", ("10.0.0.4", 3501), "mdns")          # still connecting: not "active"
    st.registry.update_load("a", {"cpu": 37.5}, 0.0)
    st.registry.assign("a", "job1", time.monotonic())        # just assigned: counts as load until measured
    text = metrics.OrchestratorMetrics(st).exposition().decode()
    assert 'worker_load_cpu{worker_name="evil\\"\\n\\\\name"} 37.5\n' in text
    s = samples(text)
    assert s[("workers_active", ())] == 3
    assert s[("worker_load_tasks", (("worker_name", 'evil"\n\\name'),))] == 1
    assert s[("worker_load_ops", (("worker_name", "twin (10.0.0.2:3501)"),))] == 100
    assert ("worker_load_cpu", (("worker_name", "10.0.0.4:3501"),)) not in s
    assert s[("clusterplex_worker_state", (("state", "connecting"), ("worker_name", "10.0.0.4:3501")))] == 1
    assert s[("clusterplex_worker_state", (("state", "ready"), ("worker_name", "10.0.0.4:3501")))] == 0
    assert s[("clusterplex_worker_hw_codec", (("api", "vaapi"), ("codec", "hevc"), ("direction", "decode"),
                                              ("worker_name", 'evil"\n\\name')))] == 1
    assert s[("clusterplex_worker_gpus", (("worker_name", 'evil"\n\\name'),))] == 1
    # rank as LOAD_RANK computes it: benchmark x free CPU (a fresh job counts 100/cpus %) x weight
    assert s[("worker_load_rank", (("worker_name", 'evil"\n\\name'),))] == pytest.approx(100 * (100 - 37.5 - 25))


def test_codec_provisioning_state_only_for_workers_that_manage_codecs():
    st = State()
    ready_worker(st.registry, "a", "w1", codecs={"state": "downloading", "present": 12, "total": 310})
    ready_worker(st.registry, "b", "w2", codecs=None)
    s = samples(metrics.OrchestratorMetrics(st).exposition().decode())
    assert s[("clusterplex_worker_codecs_state", (("state", "downloading"), ("worker_name", "w1")))] == 1
    assert s[("clusterplex_worker_codecs_state", (("state", "ready"), ("worker_name", "w1")))] == 0
    assert s[("clusterplex_worker_codecs_present", (("worker_name", "w1"),))] == 12
    assert s[("clusterplex_worker_codecs_total", (("worker_name", "w1"),))] == 310
    assert not [k for k in s if k[0].startswith("clusterplex_worker_codecs") and ("worker_name", "w2") in k[1]]


def test_histograms_are_cumulative_with_sum_and_count():
    h = metrics.Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0, -1):
        h.observe(v)
    assert h.buckets() == [("0.1", 3), ("1.0", 4), ("+Inf", 5)]
    assert h.sum == pytest.approx(3.65) and h.count == 5
    m = metrics.OrchestratorMetrics(State())
    m.dispatched(0.02)
    m.outcome(outcomes.REMOTE_OK, 42.0)
    s = samples(m.exposition().decode())
    assert s[("clusterplex_dispatch_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("clusterplex_dispatch_latency_seconds_bucket", (("le", "0.01"),))] == 0
    assert s[("clusterplex_dispatch_latency_seconds_count", ())] == 1
    assert s[("clusterplex_job_duration_seconds_bucket", (("le", "60.0"), ("outcome", "remote_ok")))] == 1
    assert s[("clusterplex_job_duration_seconds_sum", (("outcome", "remote_ok"),))] == 42


def test_each_daemon_has_its_own_registry():
    a, b = metrics.OrchestratorMetrics(State()), metrics.OrchestratorMetrics(State())
    a.posted()
    assert "jobs_posted 1.0" in a.exposition().decode() and "jobs_posted 0.0" in b.exposition().decode()
    assert a.registry is not b.registry


class RelayState:
    secret = b"x"
    worker_ips = frozenset({"10.0.0.1", "10.0.0.2"})


def test_relay_counts_by_status_class_and_refusal_reason():
    m = relay_metrics.RelayMetrics(RelayState())
    m.forwarded(200, 0.003)
    m.forwarded(206, 0.004)
    m.forwarded(404, 0.002)
    m.forwarded(None)
    for reason in ("missing job capability (requests must come from a ClusterPlex job)", "invalid job capability",
                   "only Plex transcode and Live TV paths are relayed", "path not allowed",
                   "10.1.1.1 is not a known worker (relay.allow adds networks)",
                   "CONNECT is not allowed: this is not an open proxy",
                   "relay not joined to a cluster yet (no cluster secret)",
                   "absolute-form or authority-form request targets are not accepted",
                   "10.1.1.1 may not read the metrics (relay.metrics_allow adds networks)", "something new"):
        m.refusal(reason)
    s = samples(m.exposition().decode())
    assert s[("clusterplex_relay_requests_total", (("code", "2xx"),))] == 2
    assert s[("clusterplex_relay_requests_total", (("code", "4xx"),))] == 1
    assert s[("clusterplex_relay_requests_total", (("code", "error"),))] == 1
    assert s[("clusterplex_relay_latency_seconds_count", ())] == 3
    refused = {dict(k[1])["reason"]: v for k, v in s.items() if k[0] == "clusterplex_relay_refused_total"}
    assert refused == {"capability": 2, "path": 2, "peer": 1, "method": 1, "not_joined": 1, "target": 1,
                       "metrics_peer": 1, "other": 1}
    assert s[("clusterplex_relay_workers_known", ())] == 2 and s[("clusterplex_relay_joined", ())] == 1


# --- the web page's feed ---------------------------------------------------------------

def test_recent_is_bounded_and_keeps_reasons():
    r = feed.Recent(size=3)
    for i in range(5):
        j = job(i)
        j.tried.append((f"w{i}", "refused"))
        r.add(feed.NO_WORKER, j, "x" * 1000 if i == 4 else f"reason {i}", 1000.0 + i)
    items = r.items()
    assert [i["job"] for i in items] == ["00000002", "00000003", "00000004"]
    assert items[0] == {"seq": 3, "time": 1002.0, "kind": "no_worker", "job": "00000002", "session": "sess/uuid",
                        "worker": "w2", "reason": "reason 2"}
    assert len(items[-1]["reason"]) == feed.MAX_REASON
    with pytest.raises(AssertionError):
        r.add("bogus", job(9), "", 0)


def test_hub_queues_are_bounded_and_close_ends_every_stream():
    async def scenario():
        hub = live.Hub()
        slow, fast = hub.join(), hub.join()
        for i in range(10):
            hub.publish(i)
            assert await fast.queue.get() == i
        assert slow.queue.qsize() == live.CLIENT_QUEUE and slow.dropped == 10 - live.CLIENT_QUEUE
        assert [slow.queue.get_nowait() for _ in range(live.CLIENT_QUEUE)] == list(range(10 - live.CLIENT_QUEUE, 10))
        hub.leave(slow)
        hub.publish("after")
        assert slow.queue.empty() and await fast.queue.get() == "after"
        hub.close()
        assert await fast.queue.get() is None
        late = hub.join()
        assert await late.queue.get() is None
    asyncio.run(scenario())


def test_sse_framing():
    assert feed.sse("snapshot", '{"a":1}') == b'event: snapshot\ndata: {"a":1}\n\n'


def test_progress_reports_come_from_progress_callbacks_with_a_capability():
    from clusterplex.relay import server as relay
    cap = "/_cp/" + "a" * 32 + "/" + "0" * 32
    assert relay.progress_report(cap + "/video/:/transcode/session/k/u/progress?progress=12.5&size=1") == \
        ("a" * 32, "0" * 32, 12.5)
    assert relay.progress_report(cap + "/video/:/transcode/session/k/u/progress?size=1&progress=-26.6") == \
        ("a" * 32, "0" * 32, -26.6)
    for target in (cap + "/video/:/transcode/session/k/u/progress?width=720&height=404",   # no progress
                   cap + "/video/:/transcode/session/k/u/progress/log?progress=5",          # not the progress URL
                   cap + "/video/:/transcode/session/k/u/progress?xprogress=5",
                   cap + "/video/:/transcode/session/k/u/progress?progress=1e9",
                   "/video/:/transcode/session/k/u/progress?progress=5"):                   # no capability
        assert relay.progress_report(target) is None, target


def test_codec_states_are_the_ones_workers_report():
    from clusterplex.worker import codecs
    assert set(metrics.CODEC_STATES) == {codecs.IDLE, codecs.DOWNLOADING, codecs.READY, codecs.ERROR}
    assert codecs.CodecState(state=codecs.DOWNLOADING, present=3, total=5).as_dict()["state"] in metrics.CODEC_STATES
