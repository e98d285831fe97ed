"""Zero-config discovery across hosts: network namespaces on a bridge, real mDNS
(python-zeroconf bound to each host's own address), nothing configured but the
interfaces and the secret."""

import json
import time
import uuid

import pytest

from testbed import cluster as cl
from testbed import fixtures
from testbed import netns
from testbed.netcluster import NetCluster

pytestmark = pytest.mark.system


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
        assert "worker1 said goodbye" in c.orchestrator.log()
        c.daemons.remove(c.workers[1])
        mark = c.orchestrator.mark()
        c.workers[1] = c.start_worker(1)
        c.orchestrator.wait_status(r"^2 of 2 workers ready", 10, since=mark)


def test_sigkill_and_link_cut_are_detected_within_3s_jobs_fail_over_and_links_heal(lan, tmp_path):
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=2)
    # detached_grace 60: only fencing (not expiry) can stop the cut-off copy within the test
    with NetCluster(tmp_path, lan, workers=2, worker_overrides={0: {"detached_grace": 60},
                                                                1: {"detached_grace": 60}}) as c:
        key, uid = "f" + uuid.uuid4().hex[:8], str(uuid.uuid4())
        sdir = c.session_dir(key, uid)
        pidfile = sdir / "pids.json"
        argv = ["-x_test_pidfile", str(pidfile), "-x_test_stderr", "transcoder-up", "-x_test_hold", "60",
                "-i", str(clip), "-progressurl",
                f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
        shim = c.shim(argv, sdir, mode="remote")
        try:
            cl.read_until(shim.stderr, "transcoder-up", 20)
            first_pid = json.loads(pidfile.read_text())["pid"]
            [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
            victim = int(job["worker"][-1])
            mark = c.orchestrator.mark()
            t0 = time.monotonic()
            c.worker_hosts[victim].cut()
            c.orchestrator.wait_status(r"^1 of 2 workers ready, 1 offline", 5, since=mark)
            assert time.monotonic() - t0 <= 3.0
            cl.read_until(shim.stderr, "restarting it on another worker", 5)
            cl.read_until(shim.stderr, "transcoder-up", 10)
            [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
            assert job["worker"] == f"worker{1 - victim}"
            assert cl.pid_alive(first_pid)                 # the cut-off worker still runs its copy
            mark = c.orchestrator.mark()
            c.worker_hosts[victim].heal()
            c.orchestrator.wait_status(r"^2 of 2 workers ready", 15, since=mark)
            # fenced: back on the LAN, the old copy is stopped at once (not after detached_grace)
            assert cl.wait_pid_gone(first_pid, 5), "the cut-off worker kept writing the session"
            assert "which was cut off; stopping that copy" in c.orchestrator.log()
        finally:
            shim.kill()
            shim.communicate(timeout=10)
        mark = c.orchestrator.mark()
        t0 = time.monotonic()
        c.workers[1].kill()
        c.orchestrator.wait_status(r"^1 of 2 workers ready, 1 offline", 5, since=mark)
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


def test_worker_record_follows_its_state(lan, tmp_path):
    """The TXT record says ready / not_ready as the worker's state changes (seen by a plain browser)."""
    import asyncio
    import shutil
    from clusterplex.common import discovery

    missing = tmp_path / "bin" / "transcoder"
    with NetCluster(tmp_path, lan, workers=1, worker_overrides={0: {"transcoder": str(missing)}},
                    wait_ready=False) as c:
        async def browse():
            states = asyncio.Queue()
            mdns = discovery.Mdns([c.orch_host.addr])
            await mdns.start()
            watch = discovery.Watch(mdns, discovery.WORKER_TYPE,
                                    lambda name, host, port, txt: states.put_nowait(txt), lambda name: None)
            await watch.start()
            try:
                async def until(state):
                    while True:
                        txt = await asyncio.wait_for(states.get(), 15)
                        if txt.get("state") == state:
                            return txt
                txt = await until("not_ready")
                assert txt["name"] == "worker0" and txt["arch"] and txt["cpus"]
                missing.parent.mkdir()
                shutil.copy(cl.STANDIN, missing)         # the admin installs the transcoder
                await until("ready")
            finally:
                await watch.close()
                await mdns.close()

        netns.run_in(c.orch_host.ns, asyncio.run, browse())


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_orchestrator_restart_across_hosts_shim_reattaches(lan, tmp_path, crash):
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=1)
    with NetCluster(tmp_path, lan, workers=2) as c:
        key, uid = "r" + uuid.uuid4().hex[:8], str(uuid.uuid4())
        sdir = c.session_dir(key, uid)
        argv = ["-x_test_stderr", "transcoder-up", "-x_test_hold", "5", "-x_test_exit", "187", "-i", str(clip),
                "-progressurl", f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
        shim = c.shim(argv, sdir, mode="remote")
        try:
            cl.read_until(shim.stderr, "transcoder-up", 20)
            c.restart_orchestrator(kill=crash)
            c.wait_workers_ready(2)
            out, err = shim.communicate(timeout=30)
        finally:
            if shim.poll() is None:
                shim.kill()
                shim.communicate()
        assert shim.returncode == 187, err
        assert "adopted from worker" in c.orchestrator.log() and "shim re-attached" in c.orchestrator.log()
