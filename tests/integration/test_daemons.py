"""Daemon behaviour: systemd notification, watchdog, clean stop, hostile peers, shim loops."""

import asyncio
import json
import os
import signal
import subprocess

import aiohttp
import pytest

from clusterplex.common import link
from clusterplex.core import protocol
from clusterplex.worker import runner
from testbed import cluster as cl


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("daemons"), workers=1) as c:
        yield c


def test_watchdog_pings_come_from_the_running_daemon(c, tmp_path):
    env = dict(os.environ, WATCHDOG_USEC="200000")
    d = cl.Daemon("wd-worker", cl.command("clusterplex-worker") + ["--config", str(c.worker_config(9))],
                  tmp_path, env=env).start()
    try:
        d.wait_for(lambda f: f.get("WATCHDOG") == "1", 5, what="WATCHDOG=1")
        n = sum(1 for m in d.messages if m.get("WATCHDOG") == "1")
        d.wait_for(lambda f: sum(1 for m in d.messages if m.get("WATCHDOG") == "1") > n, 5, what="a second ping")
        assert d.listen.startswith("127.0.0.1:")
        assert d.wait_status(r"^ready, 0/2 jobs running")
    finally:
        assert d.stop() == 0
    assert any(m.get("STOPPING") == "1" for m in d.messages)


def test_sighup_reloads_the_worker_and_detects_hardware_again(c):
    w = c.workers[0]
    mark = w.mark()
    w.proc.send_signal(signal.SIGHUP)
    w.wait_for(lambda f: f.get("RELOADING") == "1", 10, what="RELOADING=1", since=mark)
    w.wait_for(lambda f: f.get("READY") == "1", 10, what="READY=1 after reload", since=mark)
    log = w.log()
    assert log.count("clusterplex.worker: hardware: ") == 2 and "configuration reloaded" in log
    benchmarks = [line.split("benchmark ")[1].split(";")[0] for line in log.splitlines()
                  if "clusterplex.worker: hardware: " in line]
    assert benchmarks[0] == benchmarks[1]          # cached in state_dir, not measured again


def test_daemons_stop_cleanly_on_sigterm(tmp_path):
    c = cl.Cluster(tmp_path, workers=1).start()
    codes = {d.name: d.stop() for d in reversed(c.daemons)}
    assert codes == {"relay": 0, "orchestrator": 0, "worker0": 0, "fake-pms": 0}
    assert "stopped" in c.orchestrator.log() and "Traceback" not in c.orchestrator.log() + c.workers[0].log()


def test_port_in_use_is_a_clear_startup_error(c, tmp_path):
    cfg = c.worker_config(8, listen=c.workers[0].listen)
    r = subprocess.run(cl.command("clusterplex-worker") + ["--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and "address already in use" in r.stderr


async def _hostile(url, sessions):
    async with aiohttp.ClientSession() as s:
        # garbage instead of auth
        async with s.ws_connect(url) as ws:
            hello = json.loads((await ws.receive()).data)
            assert hello["type"] == "hello" and hello["role"] == "worker"
            await ws.send_str("{not json")
            msg = await ws.receive()
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED) or \
                json.loads(msg.data)["type"] == "refused"
        # a forged auth
        async with s.ws_connect(url) as ws:
            hello = json.loads((await ws.receive()).data)
            await ws.send_str(json.dumps({"type": "auth", "proto": 1, "role": "orchestrator",
                                          "nonce": "ab" * 16, "mac": "00" * 32}))
            replies = [m async for m in ws]
            assert ws.close_code == protocol.CLOSE_AUTH_FAILED
            assert all(json.loads(m.data).get("type") != "welcome" for m in replies if m.type == aiohttp.WSMsgType.TEXT)
        # authenticated, then hostile messages: the worker must survive and refuse them
        hs = protocol.ClientHandshake(cl.SECRET.encode(), protocol.ROLE_ORCHESTRATOR, protocol.ROLE_WORKER)
        async with s.ws_connect(url) as ws:
            await ws.send_str(protocol.encode(hs.on_hello(json.loads((await ws.receive()).data))))
            hs.on_welcome(json.loads((await ws.receive()).data))
            for bad in ["[]", "{}", '{"type": 5}', '{"type": "start"}',
                        '{"type": "start", "job": {"id": "../../x", "argv": [], "cwd": "/"}}',
                        '{"type": "start", "job": {"id": "' + "a" * 32 + '", "argv": ["-i", "x"], "cwd": "/etc"}}',
                        '{"type": "cancel", "job_id": null}', '{"type": "bogus"}', "x" * 5000]:
                await ws.send_str(bad)
            await ws.send_bytes(b"\x00\x01")
            refused = []
            async for m in ws:
                d = json.loads(m.data)
                if d["type"] == "refused":
                    refused.append(d["reason"])
                if len(refused) == 3:
                    break
            assert "malformed job" in refused[0] and "malformed job" in refused[1]
            assert "outside transcode_root" in refused[2]
            eae_job = {"id": "e" * 32, "argv": ["-codec:1", "eac3_eae", "-i", "/etc/hostname", "o.ts"], "cwd": sessions}
            await ws.send_str(json.dumps({"type": "start", "job": eae_job}))
            async for m in ws:
                d = json.loads(m.data)
                if d["type"] == "refused":
                    assert "needs EasyAudioEncoder, which is not running on worker worker0" in d["reason"]
                    break


def test_worker_survives_hostile_peers(c):
    asyncio.run(_hostile(f"{c.workers[0].url}{protocol.CONTROL_PATH}", str(c.sessions)))
    with cl.urllib.request.urlopen(c.workers[0].url + "/health", timeout=5) as r:
        assert json.load(r)["state"] == "ready"
    assert c.workers[0].proc.poll() is None
    log = c.workers[0].log()
    assert log.count("WARNING clusterplex.worker: refused unauthenticated connection") == 1   # logged once


def test_shim_started_by_a_worker_never_forwards_again(c, tmp_path):
    start = tmp_path / "start.json"
    cfg = c.pms_config("loop", mode="remote")
    shim = c.shim(["-x_test_startfile", str(start), "-x_test_exit", "0", "-i", "x", "o.ts"], tmp_path,
                  config=cfg, env={"CLUSTERPLEX_JOB_ID": "a" * 32})
    _, err = shim.communicate(timeout=30)
    assert shim.returncode == 0 and json.loads(start.read_text())["pid"] == shim.pid
    assert b"not forwarding again" in err


def test_worker_never_runs_the_shim(tmp_path):
    plex = tmp_path / "Plex Transcoder"
    plex.write_text("#!/usr/bin/python3\nfrom clusterplex.shim import main\nmain()\n")
    plex.chmod(0o755)
    path, why = runner.resolve_transcoder(str(plex))
    assert path is None and "is the ClusterPlex shim" in why
    distrib = tmp_path / "Plex Transcoder.distrib"
    distrib.write_bytes(b"\x7fELF...")
    distrib.chmod(0o755)
    assert runner.resolve_transcoder(str(plex)) == (str(distrib), "")
    assert runner.resolve_transcoder(str(tmp_path / "nope"))[1].endswith("not found (install Plex Media Server "
                                                                         "here or set `transcoder`)")


async def _as_orchestrator(s, url):
    ws, _ = await link.connect(s, url, cl.SECRET.encode(), protocol.ROLE_ORCHESTRATOR, protocol.ROLE_WORKER,
                               heartbeat=None, timeout=10)
    return ws


async def _next(ws, kind, job_id=None, timeout=20):
    while True:
        m = await asyncio.wait_for(ws.receive(), timeout)
        assert m.type == aiohttp.WSMsgType.TEXT, f"connection ended waiting for {kind}: {m}"
        d = json.loads(m.data)
        if d["type"] == kind and (job_id is None or d.get("job_id") == job_id):
            return d


async def _exit_survives_a_dying_orchestrator(url, sessions, ack):
    job_id = protocol.new_job_id()
    cwd = sessions / f"plex-transcode-ack{int(ack)}-{job_id}"
    cwd.mkdir(parents=True)
    job = {"id": job_id, "argv": ["-x_test_exit", "3", "-i", "/etc/hostname", "o.ts"], "cwd": str(cwd), "env": {}}
    async with aiohttp.ClientSession() as s:
        ws = await _as_orchestrator(s, url)
        await ws.send_str(protocol.encode({"type": "start", "job": job}))
        assert (await _next(ws, "exit", job_id))["code"] == 3
        if ack:
            await ws.send_str(protocol.encode({"type": "exit_ack", "job_id": job_id}))
            await ws.send_str(protocol.encode({"type": "attach", "job_id": job_id}))
            await _next(ws, "unknown", job_id)         # in order after the ack: it is forgotten
        await ws.close()                               # the "crash": the exit may not have been read
        ws = await _as_orchestrator(s, url)            # the next orchestrator
        status = await _next(ws, "status")
        reported = {j["id"]: j["state"] for j in status["jobs"]}
        if ack:
            assert job_id not in reported
        else:
            assert reported.get(job_id) == "exited"
            await ws.send_str(protocol.encode({"type": "attach", "job_id": job_id}))
            assert (await _next(ws, "exit", job_id))["code"] == 3
        await ws.close()


@pytest.fixture(scope="module")
def lone_worker(c):
    """A worker the cluster's orchestrator does not know: the test plays its orchestrators."""
    return c.start_worker(9)


@pytest.mark.parametrize("ack", [False, True], ids=["unconfirmed", "confirmed"])
def test_worker_keeps_an_unconfirmed_exit_for_the_next_orchestrator(c, lone_worker, ack):
    """An exit sent into a connection that was dying (orchestrator SIGKILLed as the job ended) is
    reported again to the next orchestrator; one the orchestrator confirmed is not."""
    asyncio.run(_exit_survives_a_dying_orchestrator(f"{lone_worker.url}{protocol.CONTROL_PATH}", c.sessions, ack))


def test_reattach_to_an_unknown_job_is_answered_not_dropped(c):
    """The orchestrator waits for workers to report a re-attaching shim's job; meanwhile the
    connection's heartbeat must go on (it used to be dropped after 1.5 s, and the shim retried forever)."""
    from clusterplex.core.miniws import WebSocket
    host, port = c.orchestrator.listen.rsplit(":", 1)
    ws = WebSocket.connect(host, int(port), protocol.SHIM_PATH, 5)
    hs = protocol.ClientHandshake(cl.SECRET.encode(), protocol.ROLE_SHIM, protocol.ROLE_ORCHESTRATOR)
    ws.send_text(protocol.encode(hs.on_hello(protocol.decode(ws.recv_text()))))
    hs.on_welcome(protocol.decode(ws.recv_text()))
    ws.settimeout(20)
    ws.send_text(protocol.encode({"type": "attach", "job_id": protocol.new_job_id()}))
    reply = protocol.decode(ws.recv_text())
    ws.sock.close()
    assert reply["type"] == "failed" and "no worker reports this job" in reply["reason"]
