"""Hostile and broken input at every listening endpoint of live daemons (bounded, seeded).

Malformed, truncated, oversized, wrong-typed and out-of-order messages, before and after
authentication, raw bytes on the HTTP ports: the daemons answer or drop cleanly, keep serving
other clients, and their memory stays bounded.
"""

import asyncio
import json
import random
import socket

import aiohttp
import pytest

from clusterplex.core import protocol
from testbed import cluster as cl

pytestmark = pytest.mark.timeout(180)
CASES = 120          # per endpoint and phase; the seed makes every run the same


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def garbage(rng):
    """One hostile frame: a mix of broken JSON, wrong types, huge values and plausible-but-wrong messages."""
    kinds = ["hello", "auth", "welcome", "submit", "attach", "cancel", "start", "status", "load", "out", "exit",
             "refused", "started", "resume", "", None, 5, ["x"], {"y": 1}]   # ("drain" is a legit order)
    pick = rng.randrange(9)
    if pick == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))).decode("latin-1")
    if pick == 1:
        return json.dumps({"type": rng.choice(kinds)})[: rng.randrange(1, 20)]          # truncated
    if pick == 2:
        return "[" * rng.randrange(1, 5000)                                               # deep nesting
    if pick == 3:
        return json.dumps({"type": "submit", "job": {"id": "a" * 32, "argv": ["x"] * rng.randrange(5000),
                                                     "cwd": "/t", "env": {}}})           # too many args
    if pick == 4:
        return json.dumps({"type": rng.choice(kinds), "job": rng.choice([None, 1, "s", [], {}]),
                           "job_id": rng.choice([None, 7, "", "../x", "a" * 5000]),
                           "code": rng.choice([None, -1, 10 ** 30, "0"]), "data": rng.choice([None, 1, "x" * 10])})
    if pick == 5:
        return json.dumps({"type": "auth", "proto": rng.choice([1, 2, None]), "role": rng.choice(["shim", "orchestrator", 1]),
                           "nonce": rng.choice(["ab" * 16, "", None]), "mac": rng.choice(["0" * 64, None, 1])})
    if pick == 6:
        return json.dumps({"type": "status", "state": "ready", "max_jobs": rng.choice([-1, 10 ** 9, "x"]),
                           "jobs": [{"id": rng.choice(["a" * 32, 5, None]), "state": "running"}] * rng.randrange(3),
                           "hardware": rng.choice([None, [], {"hw_codecs": ["x" * 100] * 3}])})
    if pick == 7:
        return "x" * rng.choice([0, 1, 70000])
    return json.dumps(rng.choice([None, 1, "str", [], {}, {"type": None}]))


async def fuzz_ws(url, seed, authenticate=None, role=None, expect=None):
    """Open connections, optionally authenticate, send garbage; return how many cases ran."""
    rng = random.Random(seed)
    ran = 0
    async with aiohttp.ClientSession() as s:
        for _ in range(6):                     # several connections: each may be closed by the peer
            try:
                async with s.ws_connect(url, max_msg_size=protocol.MAX_MESSAGE) as ws:
                    hello = json.loads((await ws.receive()).data)
                    if authenticate is not None:
                        hs = protocol.ClientHandshake(authenticate, role, expect)
                        await ws.send_str(protocol.encode(hs.on_hello(hello)))
                        hs.on_welcome(json.loads((await ws.receive()).data))
                    for _ in range(CASES // 6):
                        if ws.closed:
                            break
                        frame = garbage(rng)
                        try:
                            if rng.random() < 0.1:
                                await ws.send_bytes(frame.encode("utf-8", "replace"))
                            else:
                                await ws.send_str(frame)
                        except (ConnectionError, RuntimeError):
                            break
                        ran += 1
                    await ws.close()
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError, ValueError):
                continue
    return ran


def fuzz_raw(address, seed, n=40):
    """Raw bytes, broken HTTP requests and half-open connections on an HTTP port."""
    rng = random.Random(seed)
    host, port = address.rsplit(":", 1)
    requests = [b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS hello
                b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /api/v1/shim HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nxx",
                b"GET /api/v1/workers HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n",
                b"\r\n\r\n\r\n", b"GET /health HTTP/9.9\r\n\r\n", b"PUT /_cp/%00/../ HTTP/1.1\r\n\r\n"]
    for i in range(n):
        data = rng.choice(requests) if i % 2 else bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            try:
                sock.sendall(data)
                if rng.random() < 0.5:
                    sock.shutdown(socket.SHUT_WR)
                    sock.recv(65536)
            except OSError:
                pass
    return n


def test_daemons_survive_fuzzing_and_keep_serving(tmp_path):
    with cl.Cluster(tmp_path, workers=1, orchestrator_overrides={"log_level": "info"},
                    worker_overrides={0: {"log_level": "info"}}) as c:
        pids = {d.name: d.proc.pid for d in (c.orchestrator, c.workers[0], c.relay)}
        before = {name: rss_kb(pid) for name, pid in pids.items()}
        secret = cl.SECRET.encode()
        ran = asyncio.run(fuzz_ws(f"{c.orchestrator.url}{protocol.SHIM_PATH}", 1))
        ran += asyncio.run(fuzz_ws(f"{c.orchestrator.url}{protocol.SHIM_PATH}", 2, secret, "shim", "orchestrator"))
        ran += asyncio.run(fuzz_ws(f"{c.workers[0].url}{protocol.CONTROL_PATH}", 3))
        ran += asyncio.run(fuzz_ws(f"{c.workers[0].url}{protocol.CONTROL_PATH}", 4, secret, "orchestrator", "worker"))
        for seed, d in enumerate((c.orchestrator, c.workers[0], c.relay)):
            ran += fuzz_raw(d.listen, 10 + seed)
        print(f"fuzz: {ran} hostile frames and requests")
        assert ran >= 300
        for d in (c.orchestrator, c.workers[0], c.relay):
            assert d.proc.poll() is None, f"{d.name} died:\n{d.log_tail()}"
            assert "Traceback" not in d.log(), d.name
        grown = {name: rss_kb(pid) - before[name] for name, pid in pids.items()}
        assert all(g < 20 * 1024 for g in grown.values()), grown
        # ... and still serve a real job end to end
        key, uid = "fz", "00000000-0000-4000-8000-00000000f122"
        sdir = c.session_dir(key, uid)
        shim = c.shim(["-x_test_exit", "187", "-i", str(sdir), "-progressurl",
                       f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "o.ts"],
                      sdir, mode="remote")
        _, err = shim.communicate(timeout=30)
        assert shim.returncode == 187, err
        log = c.orchestrator.log()
        assert log.count("WARNING clusterplex.orchestrator: refused unauthenticated connection from 127.0.0.1") == 1
