"""The CLI's pure parts: the documented JSON shapes, the tables, and where the orchestrator URL comes from."""

import json
import types

import pytest

from clusterplex.cli import api, commands, views

WORKER_KEYS = {"name", "address", "source", "state", "busy", "reason", "running_jobs", "max_jobs", "load_cpu",
               "gpu_load", "weight", "priority", "cpus", "arch", "memory", "gpus", "hw_codecs", "plex_codecs", "eae", "version"}
JOB_KEYS = {"id", "session", "worker", "state", "pid", "exit_code", "reason", "decision", "needs", "restarts",
            "age_seconds", "running_seconds", "progress"}

API_WORKER = {   # as the orchestrator's /api/v1/workers shows one (registry.WorkerRecord.view)
    "key": "10.0.0.5:3501", "name": "gpu1", "address": "10.0.0.5:3501", "source": "mdns", "state": "ready",
    "reason": "", "running_jobs": 2, "max_jobs": 2, "weight": 1.0, "priority": 0, "load": {"cpu": 37.5},
    "hardware": {"cpus": 16, "benchmark": 15230, "arch": "x86_64", "model": "Intel i7", "memory": 64 << 30,
                 "gpus": [{"vendor": "intel", "driver": "i915", "name": "Intel UHD 630"},
                          {"vendor": "nvidia", "driver": "nvidia", "name": None}],
                 "hw_codecs": ["h264:vaapi:decode", "h264:vaapi:encode", "hevc:vaapi:encode", "h264:nvenc:encode",
                               "eae"]},
    "version": "0.1.0", "codecs": {"state": "downloading", "present": 120, "total": 310, "reason": "",
                                   "version": "1a2b", "arch": "linux-x86_64-standard"},
    "eae": {"enabled": True, "running": True, "problem": ""},
}


def test_worker_json_is_the_documented_shape():
    w = views.worker_json(API_WORKER)
    assert set(w) == WORKER_KEYS
    assert w["busy"] is True and w["load_cpu"] == 37.5 and w["cpus"] == 16
    assert w["gpus"] == ["Intel UHD 630", "nvidia (nvidia)"]
    assert w["plex_codecs"] == {"state": "downloading", "present": 120, "total": 310, "version": "1a2b",
                                "arch": "linux-x86_64-standard", "reason": ""}
    assert json.loads(json.dumps(w)) == w
    # a worker that never sent its status yet (connecting) still gives every key
    assert set(views.worker_json({"name": "10.0.0.6:3501", "state": "connecting"})) == WORKER_KEYS


def test_worker_row_for_people():
    w = views.worker_json(API_WORKER)
    [row] = views.worker_rows([w])
    assert row == ("gpu1", "10.0.0.5:3501", "busy", "2/2", "37.5%",
                   "16 CPU x86_64 64 GiB, Intel UHD 630, nvidia (nvidia), hw h264 (nvenc), hw h264/hevc (vaapi), EAE",
                   "downloading 120/310")
    idle = views.worker_json({**API_WORKER, "running_jobs": 0, "codecs": None,
                              "hardware": {"cpus": 4, "arch": "aarch64", "memory": 4 << 30}})
    assert views.worker_rows([idle])[0][2:] == ("ready", "0/2", "37.5%", "4 CPU aarch64 4.0 GiB", "-")
    gone = views.worker_json({**API_WORKER, "state": "offline", "reason": "connection lost", "running_jobs": 0})
    assert views.display_state(gone) == "offline"
    assert views.display_state(views.worker_json({**API_WORKER, "state": "not_ready"})) == "not ready"
    assert views.worker_notes([gone]) == ["  gpu1: connection lost"]


def test_job_json_and_rows():
    running = views.job_json({"id": "0123456789abcdef0123456789abcdef", "session": "k/u", "state": "running",
                            "worker": "gpu1", "pid": 42, "exit_code": None, "reason": "", "decision": "",
                            "needs": "h264", "restarts": 0, "age_seconds": 75.2, "running_seconds": 74.9})
    assert set(running) == JOB_KEYS and running["progress"] is None
    failed = views.job_json({"id": "fedcba9876543210", "session": "", "state": "failed", "worker": "",
                           "reason": "no worker can take it", "age_seconds": 3.0, "running_seconds": None})
    exited = views.job_json({"id": "aaaaaaaabbbb", "session": "k2", "state": "exited", "worker": "w2",
                           "exit_code": 187, "age_seconds": 4000, "running_seconds": 3999, "progress": 42.25})
    assert views.job_rows([running, failed, exited]) == [
        ("01234567", "k/u", "gpu1", "running", "1m14s", "-", ""),
        ("fedcba98", "-", "-", "failed", "3s", "-", "no worker can take it"),
        ("aaaaaaaa", "k2", "w2", "exited", "1h06m", "42.2%", "exit status 187")]


def test_drain_progress_counts_the_workers_jobs():
    w = views.worker_json({**API_WORKER, "state": "draining", "running_jobs": 1})
    jobs = [views.job_json({"id": "a" * 32, "worker": "gpu1", "state": "running"}),
            views.job_json({"id": "b" * 32, "worker": "gpu1", "state": "exited"}),
            views.job_json({"id": "c" * 32, "worker": "other", "state": "running"})]
    n, left = views.drain_progress(w, jobs)
    assert n == 1 and [j["id"] for j in left] == ["a" * 32]
    # the worker still reports a job the orchestrator no longer lists: it counts
    assert views.drain_progress({**w, "running_jobs": 2}, jobs)[0] == 2


def test_codecs_progress_lines():
    assert views.codecs_line({"enabled": False}) == "not managed"
    assert views.codecs_line({"enabled": True, "codecs": None}) == "not needed"
    info = {"enabled": True, "codecs": {"state": "downloading", "present": 2, "total": 3}}
    assert views.codecs_line(info) == "downloading 2/3" and not views.codecs_settled(info)
    assert views.codecs_settled({"enabled": True, "codecs": {"state": "error", "present": 0, "total": 3}})
    assert not views.codecs_settled({"enabled": True, "codecs": {"state": "idle", "present": 0, "total": 3}})


def test_table_aligns_and_says_none():
    assert views.table([], ("a", "b")) == "  (none)"
    assert views.table([("x", "long value"), ("yy", "v")], ("a", "b")).splitlines() == [
        "  A   B", "  x   long value", "  yy  v"]


# --- where the URL comes from -------------------------------------------------------------------

def opts(tmp_path, orchestrator=None, config_text=None):
    path = tmp_path / "pms.yaml"
    if config_text is not None:
        path.write_text(config_text)
    return types.SimpleNamespace(orchestrator=orchestrator, config=str(path))


def test_orchestrator_from_the_flag(tmp_path):
    t = api.orchestrator_target(opts(tmp_path, "10.0.0.2:3500/", "orchestrator: http://10.0.0.9:3500\n"))
    assert (t.url, t.source) == ("http://10.0.0.2:3500", "the --orchestrator option")
    assert any("10.0.0.2 port 3500/tcp" in h for h in t.hints)


def test_orchestrator_from_pms_yaml(tmp_path):
    t = api.orchestrator_target(opts(tmp_path, config_text="orchestrator: http://10.0.0.9:3500\n"))
    assert t.url == "http://10.0.0.9:3500" and t.source == f"the orchestrator key in {tmp_path / 'pms.yaml'}"
    assert any("systemctl status clusterplex-orchestrator" in h for h in t.hints)


def test_orchestrator_from_the_discovery_cache(tmp_path):
    cache = tmp_path / "orchestrator.json"
    text = f"orchestrator: auto\ndiscovery:\n  cache_file: {cache}\n"
    t = api.orchestrator_target(opts(tmp_path, config_text=text))
    assert t.url == api.DEFAULT_ORCHESTRATOR and f"{cache} has none yet" in t.source
    assert any("clusterplex-relay" in h for h in t.hints)
    cache.write_text(json.dumps({"url": "http://10.0.0.7:3500", "name": "orch"}))
    t = api.orchestrator_target(opts(tmp_path, config_text=text))
    assert t.url == "http://10.0.0.7:3500" and t.source.startswith(f"the discovery cache {cache}")


def test_orchestrator_default_says_why(tmp_path):
    t = api.orchestrator_target(opts(tmp_path))
    assert t.url == "http://127.0.0.1:3500" and t.source == f"the default (no {tmp_path / 'pms.yaml'} here)"
    t = api.orchestrator_target(opts(tmp_path, config_text="orchestrator: [1\n"))
    assert t.url == "http://127.0.0.1:3500" and "not usable" in t.source and "invalid YAML" in t.source


def test_worker_from_worker_yaml(tmp_path):
    path = tmp_path / "worker.yaml"
    o = types.SimpleNamespace(worker=None, worker_config=str(path))
    t = api.worker_target(o)
    assert t.url == "http://127.0.0.1:3501" and "the default (no" in t.source
    path.write_text("listen: 0.0.0.0:3600\n")
    t = api.worker_target(o)
    assert (t.url, t.source) == ("http://127.0.0.1:3600", f"listen in {path}")
    path.write_text("listen: 10.0.0.4:3601\n")
    assert api.worker_target(o).url == "http://10.0.0.4:3601"


@pytest.mark.parametrize("argv", [["status"], ["workers", "--json"], ["jobs", "--all"],
                                  ["worker", "drain", "w1", "--wait", "--timeout", "3"], ["worker", "resume", "w1"],
                                  ["worker", "codecs", "--refresh", "--json"]])
def test_every_command_parses(argv):
    parser, _ = commands.build_parser()
    o = parser.parse_args(argv)
    assert callable(o.func)


def test_recent_failures_and_fallbacks():
    entry = {"seq": 3, "time": 0.0, "kind": "fell_back_local", "job": "0123456789abcdef", "session": "k/u",
             "worker": "", "reason": "no worker can take it: worker1 is full (2/2)"}
    r = views.recent_json(entry)
    assert set(r) == {"time", "kind", "job", "session", "worker", "reason"}
    assert views.recent_rows([r], localtime=__import__("time").gmtime) == [
        ("00:00:00", "ran locally", "01234567", "k/u", "-", "no worker can take it: worker1 is full (2/2)")]
