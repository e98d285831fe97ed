"""Floods of connections at every daemon, bounded in count and time, loopback only.

Half-open connections, slow request heads, idle keep-alive connections and SSE clients from
other loopback addresses (127.0.0.2...: other hosts, as far as the daemons can tell) at the
orchestrator, a worker and the relay: /health, a real transcode through a shim and the worker's
link keep working during and after it, the flood is closed within the timeouts, memory and the
logs stay small. And a daemon out of file descriptors pauses accepting instead of logging in a
tight loop, and serves again once descriptors are free.
"""

import asyncio
import json
import select
import socket
import threading
import time
import urllib.request
import uuid

import aiohttp
import pytest

from clusterplex.common import link, listener
from clusterplex.core import protocol
from testbed import cluster as cl
from testbed import fixtures

pytestmark = pytest.mark.timeout(240)

HALF_OPEN = 100        # per source address and daemon
OVER_CAP = listener.MAX_PER_PEER + 22
IDLE = 20
SSE = 30


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100      # utime + stime, in clock ticks (USER_HZ 100)


def log_lines(d, since):
    with open(d.log_path, "rb") as f:
        f.seek(since)
        return f.read().decode(errors="replace").splitlines()


def hostport(listen):
    host, port = listen.rsplit(":", 1)
    return host, int(port)


def connect(addr, source, n, send=b""):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(addr)
        if send:
            s.sendall(send)
        socks.append(s)
    return socks


def wait_closed(socks, timeout):
    """Read every socket until the daemon closes it (EOF or reset); return those still open."""
    poll = select.poll()
    pending = {s.fileno(): s for s in socks}
    for fd in pending:
        poll.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for fd, _ in poll.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            try:
                data = pending[fd].recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                data = b""
            if not data:
                poll.unregister(fd)
                del pending[fd]
    return list(pending.values())


def status_line(s):
    """The status line of the answer on ``s`` (b"" when closed without one)."""
    buf = b""
    while b"\r\n" not in buf:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return b""
        if not chunk:
            return buf
        buf += chunk
    return buf.split(b"\r\n", 1)[0]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("flood"), workers=1) as c:
        yield c


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    clip = tmp_path_factory.mktemp("media") / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=4)
    return clip


def transcode(c, media):
    key, uid = f"f{uuid.uuid4().hex[:12]}", str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(media), session_dir=str(sdir),
                                plex_url="http://127.0.0.1:32400", session_key=key, job_uuid=uid)
    return c.shim(argv, sdir, mode="remote"), sdir


def finished(proc, sdir, timeout=90):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert (sdir / "init-stream0.m4s").exists() and sorted(sdir.glob("chunk-stream0-*.m4s"))


def test_every_daemon_keeps_serving_through_a_flood(c, media):
    daemons = {"orchestrator": c.orchestrator, "worker": c.workers[0], "relay": c.relay}
    logs = {name: d.log_size() for name, d in daemons.items()}
    rss = {name: rss_kb(d.proc.pid) for name, d in daemons.items()}
    ping = {"orchestrator": c.orchestrator.url + "/health", "worker": c.workers[0].url + "/health",
            "relay": c.relay.url + protocol.RELAY_PING}
    half_open, slow, over, idle = [], [], [], []
    for d in daemons.values():
        addr = hostport(d.listen)
        half_open += connect(addr, "127.0.0.2", HALF_OPEN)
        slow += connect(addr, "127.0.0.3", HALF_OPEN, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        group = connect(addr, "127.0.0.4", OVER_CAP)
        # over the per-peer cap: closed at once (the others wait for the header timeout)
        assert len(wait_closed(group, 1)) == listener.MAX_PER_PEER
        over += group
        idle += connect(addr, "127.0.0.5", IDLE, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    sse = connect(hostport(c.orchestrator.listen), "127.0.0.6", SSE, b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()

    # during: what the cluster is for still works, and the page is not locked out
    job, sdir = transcode(c, media)
    for name, url in ping.items():
        assert get(url)[0] == 200, name
    answers = [status_line(s) for s in sse]
    assert answers.count(b"HTTP/1.1 200 OK") == 8 and answers.count(b"HTTP/1.1 503 Service Unavailable") == SSE - 8
    with urllib.request.urlopen(c.orchestrator.url + "/api/v1/events", timeout=5) as r:
        assert r.readline() == b"event: snapshot\n"
    # the flood is closed by the header timeout, idle keep-alive by the keep-alive timeout
    assert wait_closed(half_open + slow + over, started + listener.HEADER_TIMEOUT + 5 - time.monotonic()) == []
    finished(job, sdir)
    assert wait_closed(idle, listener.KEEPALIVE_TIMEOUT + 5) == []
    for s in half_open + slow + over + idle + sse:
        s.close()

    # after: still serving, the worker's link never dropped, memory and logs small
    for name, url in ping.items():
        assert get(url)[0] == 200, name
    job, sdir = transcode(c, media)
    finished(job, sdir)
    assert [w["state"] for w in c.api("/api/v1/workers")] == ["ready"]
    assert c.orchestrator.log().count("connected to worker") == 1
    for name, d in daemons.items():
        assert rss_kb(d.proc.pid) < rss[name] + 64 * 1024, name
        lines = log_lines(d, logs[name])
        assert len(lines) < 150 and sum(map(len, lines)) < 32 * 1024, (name, len(lines), lines[-20:])
        assert not [line for line in lines if "Traceback" in line or "ERROR" in line], (name, lines[-20:])


class Shims(threading.Thread):
    """Authenticated shim connections (never counted as anonymous), opened until one hangs (the
    orchestrator is out of descriptors) and kept alive (answering pings) until ``release``."""

    def __init__(self, url, secret, n):
        super().__init__(daemon=True)
        self.url, self.secret, self.n = url, secret, n
        self.held = 0
        self.ready, self.release, self.done = threading.Event(), threading.Event(), threading.Event()

    def run(self):
        try:
            asyncio.run(self._main())
        finally:
            self.ready.set()
            self.done.set()

    async def _main(self):
        async with aiohttp.ClientSession() as session:
            held, readers = [], []
            for _ in range(self.n):
                try:
                    ws, _ = await asyncio.wait_for(link.connect(session, self.url, self.secret, protocol.ROLE_SHIM,
                                                                protocol.ROLE_ORCHESTRATOR, None, 2.0), 3.0)
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    break
                held.append(ws)
                readers.append(asyncio.get_running_loop().create_task(self._read(ws)))
            self.held = len(held)
            self.ready.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
            for ws in held:
                await ws.close()
            for r in readers:
                r.cancel()

    @staticmethod
    async def _read(ws):
        async for _ in ws:           # answers the orchestrator's pings
            pass


class LowNofile(cl.Cluster):
    """The orchestrator runs with a low RLIMIT_NOFILE."""

    NOFILE = 96

    def wrap(self, role, cmd):
        return ["prlimit", f"--nofile={self.NOFILE}:{self.NOFILE}", "--"] + cmd if role == "orchestrator" else cmd


def test_out_of_descriptors_the_orchestrator_pauses_then_recovers(tmp_path):
    with LowNofile(tmp_path, workers=1) as c:
        o = c.orchestrator
        since = o.log_size()
        shims = Shims(o.url + protocol.SHIM_PATH, c.secret.encode(), LowNofile.NOFILE)
        shims.start()
        try:
            assert shims.ready.wait(60) and 0 < shims.held < LowNofile.NOFILE
            text = o.wait_log("cannot accept connections for shims and the API: Too many open files", 10, since)
            # out of descriptors for a while: no tight loop (CPU), one line (the log)
            cpu, size = cpu_seconds(o.proc.pid), o.log_size()
            waiting = connect(hostport(o.listen), "127.0.0.2", 20)
            time.sleep(3)          # a measured stretch of exhaustion, not a synchronization
            assert cpu_seconds(o.proc.pid) - cpu < 1.0
            grown = log_lines(o, size)
            assert len(grown) < 10, grown
            assert "out of system resource" not in text + "\n".join(grown)
        finally:
            shims.release.set()
            assert shims.done.wait(30)
        # descriptors free again: it accepts (the waiting ones too) and serves
        assert get(o.url + "/health", timeout=10)[0] == 200
        assert wait_closed(waiting, listener.HEADER_TIMEOUT + 5) == []
        for s in waiting:
            s.close()
        assert json.loads(get(o.url + "/api/v1/workers")[1])[0]["state"] == "ready"
