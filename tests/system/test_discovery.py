"""Zero-config discovery across hosts: network namespaces on a bridge, real mDNS
(python-zeroconf bound to each host's own address), nothing configured but the
interfaces and the secret."""

import json
import time
import uuid

import pytest

from tests import cluster as cl
from tests import netns
from tests.fakes import fixtures

pytestmark = pytest.mark.system


@pytest.fixture(scope="module", autouse=True)
def need_netns():
    why = netns.available()
    if why:
        pytest.fail(why)   # never a silent skip: CI runs as root


class NetCluster(cl.Cluster):
    """The orchestrator host (fake PMS, relay, orchestrator, shims) and worker hosts, each its own namespace."""

    def __init__(self, root, lan, workers=2, **kw):
        self.lan = lan
        self.orch_host = lan.add_host("orch")
        self.worker_hosts = [lan.add_host(f"w{i}") for i in range(workers)]
        super().__init__(root, workers=workers, **kw)

    def wrap(self, role, cmd):
        host = self.worker_hosts[int(role[6:])] if role.startswith("worker") else self.orch_host
        return host.exec(cmd)

    def worker_config(self, i, **over):
        h = self.worker_hosts[i]
        return super().worker_config(i, listen=f"{h.addr}:3501", discovery={"enabled": True, "interfaces": [h.addr]},
                                     **over)

    def orchestrator_config(self):
        return cl.write_yaml(self.root / "orchestrator.yaml", {
            "listen": f"{self.orch_host.addr}:3500", "secret_file": str(self.secret_file),
            "strategy": self.strategy, "discovery": {"enabled": True, "interfaces": [self.orch_host.addr]},
            "heartbeat_interval": 1.0, "log_level": "debug"})

    def pms_config(self, name, mode="both", **over):
        cfg = {"relay": {"listen": f"{self.orch_host.addr}:32499", "advertise": f"http://{self.orch_host.addr}:32499"},
               "orchestrator": "auto",
               "discovery": {"enabled": True, "interfaces": [self.orch_host.addr],
                             "cache_file": str(self.root / "orchestrator.json")}}
        cfg.update(over)
        path = super().pms_config(name, mode=mode)
        data = json.loads(path.read_text())
        data.update(cfg)
        return cl.write_yaml(path, data)

    def api(self, path):
        return netns.run_in(self.orch_host.ns, super().api, path)

    def pms_requests(self):
        return netns.run_in(self.orch_host.ns, super().pms_requests)


@pytest.fixture
def lan():
    with netns.Lan("d") as lan:
        yield lan


def test_workers_are_discovered_and_a_job_runs_on_one(lan, tmp_path):
    with NetCluster(tmp_path, lan, workers=2) as c:        # start() waits for "2 of 2 workers ready"
        workers = c.api("/api/v1/workers")
        assert sorted(w["name"] for w in workers) == ["worker0", "worker1"]
        assert all(w["source"] == "mdns" and w["address"].startswith("198.51.100.") for w in workers)
        # the relay found the orchestrator for the shim (orchestrator: auto)
        c.relay.wait_status(r"orchestrator http://198\.51\.100\.1:3500", 10)
        clip = tmp_path / "clip.mkv"
        fixtures.make_clip(str(clip), seconds=4)
        key, uid = "n" + uuid.uuid4().hex[:8], str(uuid.uuid4())
        sdir = c.session_dir(key, uid)
        argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(clip), session_dir=str(sdir),
                                    session_key=key, job_uuid=uid)
        shim = c.shim(argv, sdir, mode="remote")
        out, err = shim.communicate(timeout=120)
        assert shim.returncode == 0, err
        assert sorted(sdir.glob("chunk-stream0-*.m4s"))
        calls = [r for r in c.pms_requests() if f"/session/{key}/" in r["path"]]
        assert calls and all(r["remote"] == "127.0.0.1" for r in calls)


def test_goodbye_removes_at_once_and_a_restarted_worker_is_found_again(lan, tmp_path):
    with NetCluster(tmp_path, lan, workers=2) as c:
        t0 = time.monotonic()
        assert c.workers[1].stop() == 0
        c.orchestrator.wait_status(r"^1 of 1 workers ready", 5)
        assert time.monotonic() - t0 < 2.0
        c.daemons.remove(c.workers[1])
        c.workers[1] = c.start_worker(1)
        c.orchestrator.wait_status(r"^2 of 2 workers ready", 10)


def test_sigkill_and_link_cut_are_detected_within_3s_and_healed(lan, tmp_path):
    with NetCluster(tmp_path, lan, workers=2) as c:
        t0 = time.monotonic()
        c.worker_hosts[0].cut()
        c.orchestrator.wait_status(r"^1 of 2 workers ready", 5)
        assert time.monotonic() - t0 <= 3.0
        c.worker_hosts[0].heal()
        c.orchestrator.wait_status(r"^2 of 2 workers ready", 15)
        t0 = time.monotonic()
        c.workers[1].kill()
        c.orchestrator.wait_status(r"^1 of 2 workers ready", 5)
        assert time.monotonic() - t0 <= 3.0


def test_two_clusters_on_one_lan_ignore_each_other(lan, tmp_path):
    (tmp_path / "other").write_text("another-cluster-" + "x" * 30 + "\n")
    with NetCluster(tmp_path, lan, workers=2, worker_overrides={1: {"secret_file": str(tmp_path / "other")}},
                    wait_ready=False) as c:
        c.orchestrator.wait_status(r"^1 of 1 workers ready, 1 ignored", 15)
        assert [w["name"] for w in c.api("/api/v1/workers")] == ["worker0"]
        assert "ignoring worker worker1" in c.orchestrator.log() and "belongs to another cluster" in c.orchestrator.log()
        # and the other cluster's worker never accepted us either: nobody connected to it
        assert "orchestrator connected" not in c.workers[1].log()
