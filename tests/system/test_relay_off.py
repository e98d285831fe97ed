"""Relay off (``relay.enabled: false``, ClusterPlex's LOCAL_RELAY_ENABLED=0): the transcoders on the
workers call PMS directly at ``relay.direct_url``. Hosts are network namespaces on one bridge, so
the fake PMS sees each callback's real source address: the worker's, not the relay's 127.0.0.1."""

import socket
import uuid

import pytest

from clusterplex.core import config
from testbed import cluster as cl
from testbed import fixtures
from testbed import netns
from testbed.netcluster import DirectCluster

pytestmark = pytest.mark.system

LAN_NET = "198.51.100.0/24"


def connect(host, port):
    socket.create_connection((host, port), timeout=5).close()


def dash_job(c, clip):
    key, uid = "d" + uuid.uuid4().hex[:8], str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(clip), session_dir=str(sdir),
                                session_key=key, job_uuid=uid)
    assert [a for a in argv if a.startswith("http://127.0.0.1:32400/video/")]     # PMS wrote loopback URLs
    return argv, sdir, key, uid


def test_without_the_relay_the_workers_call_pms_directly(lan, tmp_path):
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=4)
    with DirectCluster(tmp_path / "c", lan, workers=2, allowed_networks=LAN_NET) as c:
        assert c.pms.listen.startswith(c.orch_host.addr + ":")
        c.relay.wait_status(rf"^relay off: workers call PMS at http://{c.orch_host.addr}:\d+; orchestrator http://",
                            10)
        # the relay does not listen at all: nothing answers on its port
        with pytest.raises(ConnectionRefusedError):
            netns.run_in(c.orch_host.ns, connect, c.orch_host.addr, 32499)
        netns.run_in(c.orch_host.ns, connect, *config.parse_hostport(c.pms.listen))   # (the probe works)

        argv, sdir, key, uid = dash_job(c, clip)
        shim = c.shim(argv, sdir, mode="remote")
        out, err = shim.communicate(timeout=120)
        assert shim.returncode == 0, err
        assert b"callback" not in err                                    # no callback failed
        assert sorted(sdir.glob("chunk-stream0-*.m4s")) and (sdir / "init-stream0.m4s").exists()

        [job] = [j for j in c.api("/api/v1/jobs") if j["session"] == f"{key}/{uid}"]
        assert job["state"] == "exited" and job["exit_code"] == 0
        worker_addr = c.worker_hosts[int(job["worker"].removeprefix("worker"))].addr
        calls = [r for r in c.pms_requests() if f"/session/{key}/" in r["path"]]
        kinds = {r["kind"] for r in calls}
        assert {"progress", "manifest"} <= kinds, kinds
        # every callback came straight from the worker that ran the job, and PMS accepted it
        assert {r["remote"] for r in calls} == {worker_addr}
        assert all(r["status"] < 400 for r in calls), [(r["method"], r["path"], r["status"]) for r in calls]
        assert all("/_cp/" not in r["raw_path"] for r in calls)
        progress = [r for r in calls if r["kind"] == "progress" and r["method"] == "PUT"]
        assert progress and all(r["headers"].get("X-Plex-Token") == cl.PLEX_TOKEN for r in progress)
        manifests = [r for r in calls if r["kind"] == "manifest"]
        assert "<MPD" in manifests[-1]["body"] and "X-Plex-Token" not in manifests[-1]["headers"]


def test_without_the_workers_network_allowed_pms_refuses_the_manifests(lan, tmp_path):
    """Why the docs (and doctor) insist on Plex's "allowed without auth" list: the transcoder posts its
    manifests without a token, so PMS refuses them from a worker's address."""
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=2)
    with DirectCluster(tmp_path / "c", lan, workers=1, allowed_networks="192.0.2.0/24") as c:
        argv, sdir, key, uid = dash_job(c, clip)
        shim = c.shim(argv, sdir, mode="remote")
        out, err = shim.communicate(timeout=120)
        assert shim.returncode == 0, err                                  # the transcode itself runs
        assert b"HTTP 401" in err                                         # the stand-in reports the refusal
        calls = [r for r in c.pms_requests() if f"/session/{key}/" in r["path"]]
        manifests = [r for r in calls if r["kind"] == "manifest"]
        assert manifests and all(r["status"] == 401 and r["remote"] == c.worker_hosts[0].addr for r in manifests)
        assert [r for r in calls if r["kind"] == "progress" and r["status"] == 206]    # token-bearing ones pass
