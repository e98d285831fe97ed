"""GPU load: the parsers and sampler on recorded outputs (tests/data/hardware, see its README), the
registry's handling of the load message's ``gpus`` (the scheduling table is in test_scheduler.py)."""

from pathlib import Path

import pytest

from clusterplex.core import messages
from clusterplex.orchestrator import registry
from clusterplex.worker.hardware import load, scan_drm

DATA = Path(__file__).resolve().parent.parent / "data" / "hardware"
MACHINES = DATA / "machines"
TOOLS = DATA / "tools"


class Recorded:
    """run(argv): the recorded file for NVIDIA_LOAD_QUERY (rc 0), counting calls; (127, "") for anything else."""

    def __init__(self, name, rc=0):
        self.text = (TOOLS / name).read_text() if name else ""
        self.rc = rc
        self.calls = 0

    def __call__(self, argv):
        if list(argv) != load.NVIDIA_LOAD_QUERY:
            return 127, ""
        self.calls += 1
        return self.rc, self.text


def test_parse_nvidia_load_rtx4070():
    assert load.parse_nvidia_load((TOOLS / "nvidia-smi-load-rtx4070.csv").read_text()) == [
        {"index": 0, "pci_bus_id": "0000:01:00.0", "name": "NVIDIA GeForce RTX 4070", "util": 41.0,
         "encoder": 63.0, "decoder": 22.0, "sessions": 3}]


def test_parse_nvidia_load_not_available_fields_and_errors():
    rows = load.parse_nvidia_load((TOOLS / "nvidia-smi-load-h100.csv").read_text())
    assert [r["pci_bus_id"] for r in rows] == ["0000:18:00.0", "0000:2a:00.0"]
    assert rows[1]["util"] is None and rows[1]["encoder"] is None and rows[1]["sessions"] == 0
    assert load.parse_nvidia_load((TOOLS / "nvidia-smi-load-old-driver.stdout").read_text()) == []
    assert load.parse_nvidia_load("0, 00000000:01:00.0, X, 250, -3, nan, 99999999\n")[0] == {
        "index": 0, "pci_bus_id": "0000:01:00.0", "name": "X", "util": 100.0, "encoder": 0.0, "decoder": None,
        "sessions": None}


@pytest.mark.parametrize("name, limit", [("NVIDIA GeForce RTX 4070", 8), ("NVIDIA GeForce GTX 1660", 8),
                                         ("NVIDIA TITAN RTX", 8), ("NVIDIA H100 80GB HBM3", 0),
                                         ("Quadro RTX 4000", 0), ("NVIDIA RTX A2000", 0), ("", 0)])
def test_nvenc_session_limit_by_name(name, limit):
    assert load.nvenc_session_limit(name) == limit


def sampler(machine, recording, session_limit=0):
    sys_root = str(MACHINES / machine / "sys")
    run = Recorded(recording)
    s = load.GpuLoad(scan_drm(sys_root), run, nvidia=recording is not None, session_limit=session_limit)
    return s, run, sys_root


def test_sample_amd_busy_from_sysfs():
    s, _, root = sampler("amd-gpu", None)
    assert s.sample(0.0, root) == [{"id": "/dev/dri/renderD128", "vendor": "amd", "util": 37.0, "encoder": None,
                                    "decoder": None, "sessions": None, "session_limit": 0}]


def test_sample_intel_clock_share_from_sysfs():
    s, _, root = sampler("intel-igpu", None)
    assert s.sample(0.0, root)[0]["util"] == pytest.approx(51.1)


def test_sample_nvidia_matched_to_render_node_and_cached_between_runs():
    s, run, root = sampler("nvidia-gpu", "nvidia-smi-load-rtx4070.csv")
    first = s.sample(0.0, root)
    assert first == [{"id": "/dev/dri/renderD128", "vendor": "nvidia", "util": 41.0, "encoder": 63.0,
                      "decoder": 22.0, "sessions": 3, "session_limit": 8}]
    assert s.sample(1.0, root) == first and run.calls == 1          # within NVIDIA_INTERVAL: not run again
    s.sample(load.NVIDIA_INTERVAL, root)
    assert run.calls == 2


def test_sample_headless_nvidia_and_configured_limit():
    s, _, root = sampler("nvidia-h100", "nvidia-smi-load-h100.csv", session_limit=3)
    gpus = s.sample(0.0, root)
    assert [(g["id"], g["session_limit"]) for g in gpus] == [("nvidia0", 3), ("nvidia1", 3)]


def test_sample_nvidia_smi_failing_gives_no_nvidia_rows():
    sys_root = str(MACHINES / "intel-nvidia" / "sys")
    run = Recorded("nvidia-smi-load-old-driver.stdout", rc=2)
    s = load.GpuLoad(scan_drm(sys_root), run, nvidia=True)
    assert [g["vendor"] for g in s.sample(0.0, sys_root)] == ["intel"]
    assert [g["vendor"] for g in s.sample(load.NVIDIA_INTERVAL * 3, sys_root)] == ["intel"]
    assert run.calls == 1 and "exit status 2: Field \"utilization.encoder\"" in s.failure


def test_load_message_carries_gpus():
    gpus = [{"id": "nvidia0", "vendor": "nvidia", "util": 5.0}]
    assert messages.load(10.0, ["j"], gpus) == {"type": "load", "cpu": 10.0, "running": ["j"], "gpus": gpus}
    assert "gpus" not in messages.load(10.0, [])


# --- registry and scheduler ------------------------------------------------------------------

def test_registry_keeps_sanitised_gpus():
    reg = registry.WorkerRegistry()
    reg.add("a", ("127.0.0.1", 1), "static")
    junk = [{"id": "/dev/dri/renderD128", "vendor": "nvidia", "util": 250, "encoder": "x", "sessions": 3,
             "session_limit": 8}, "not a dict", {"id": 7}] + [{"id": f"g{i}"} for i in range(40)]
    rec = reg.update_load("a", {"cpu": 1.0, "gpus": junk}, 1.0)
    assert rec.gpus[0] == {"id": "/dev/dri/renderD128", "vendor": "nvidia", "util": 100.0, "encoder": None,
                           "decoder": None, "sessions": 3, "session_limit": 8}
    assert len(rec.gpus) == load.MAX_GPUS and all(isinstance(g["id"], str) for g in rec.gpus)
    assert rec.view()["gpus"] == rec.gpus
    reg.update_load("a", {"cpu": 1.0}, 2.0)                 # a load message without gpus keeps the last ones
    assert len(rec.gpus) == load.MAX_GPUS


def test_workers_table_shows_gpu_load_and_sessions():
    from clusterplex.cli import views
    w = views.worker_json({"name": "w", "address": "a:1", "state": "ready", "running_jobs": 0, "max_jobs": 2,
                           "load": {"cpu": 12.0}, "hardware": {},
                           "gpus": [{"id": "/dev/dri/renderD128", "vendor": "nvidia", "util": 41.0, "encoder": 63.0,
                                     "decoder": None, "sessions": 3, "session_limit": 8},
                                    {"id": "/dev/dri/renderD129", "vendor": "amd", "util": 5.0, "encoder": None,
                                     "decoder": None, "sessions": None, "session_limit": 0},
                                    {"id": "nvidia1", "vendor": "nvidia", "util": None, "encoder": None,
                                     "decoder": None, "sessions": 0, "session_limit": 0}]})
    assert views.worker_rows([w])[0][4] == "12%, renderD128 63% 3/8 sessions, renderD129 5%, nvidia1 ? 0 sessions"


def test_gpu_session_limit_is_a_worker_config_key(tmp_path):
    from clusterplex.core import config
    assert config.load("worker", str(tmp_path / "none.yaml"), missing_ok=True).gpu_session_limit == 0
    p = tmp_path / "worker.yaml"
    p.write_text("gpu_session_limit: 3\n")
    assert config.load("worker", str(p)).gpu_session_limit == 3
    p.write_text("gpu_session_limit: -1\n")
    with pytest.raises(config.ConfigError, match="gpu_session_limit"):
        config.load("worker", str(p))
