"""The daemons' guarded listening socket (common/listener.py): caps, fairness at the total cap,
the header timeout, authenticated links apart, rate-limited flood lines. Loopback only."""

import asyncio
import logging
import resource

import pytest
from aiohttp import web

from clusterplex.common import daemon, listener


@pytest.mark.parametrize("nofile, expected", [
    (65536, (1024, 128)),             # the systemd units' LimitNOFILE
    (1024, (512, 128)),               # a shell's default soft limit
    (100, (50, 50)),
    (10, (8, 8)),
    (resource.RLIM_INFINITY, (1024, 128)),
])
def test_caps_stay_under_half_the_descriptor_limit(nofile, expected):
    assert listener.caps(nofile) == expected


@pytest.mark.parametrize("ip, key", [
    ("10.0.0.1", "10.0.0.1"),
    ("::ffff:10.0.0.1", "10.0.0.1"),
    ("2001:db8::1", "2001:db8::/64"),
    ("2001:db8::ffff:2", "2001:db8::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("not an address", "not an address"),
])
def test_a_peer_is_an_ipv4_address_or_an_ipv6_64(ip, key):
    assert listener.peer_key(ip) == key


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_flood_lines_are_logged_once_then_once_per_interval_with_the_count():
    log = logging.getLogger("test.listener.flood")
    rec = Records()
    log.addHandler(rec)

    async def run():
        note = listener.RateLimited(log, interval=60)
        for i in range(5):
            note("cap", "closing connections from %s", f"10.0.0.{i}")
        note("accept", "cannot accept: %s", "EMFILE")
        assert rec.lines == ["closing connections from 10.0.0.0", "cannot accept: EMFILE"]
        note._flush()                        # the interval is over (driven by hand)
        assert rec.lines[2:] == ["closing connections from 10.0.0.4 (4 more like it in 60 s)"]
        note("cap", "closing connections from %s", "10.0.0.9")     # still held back: the flood goes on
        note._flush()
        note._flush()                        # a quiet interval: nothing, and the window closes
        assert rec.lines[3:] == ["closing connections from 10.0.0.9 (1 more like it in 60 s)"]
        assert note._timer is None
        note("cap", "closing connections from %s", "10.0.0.10")
        assert rec.lines[4:] == ["closing connections from 10.0.0.10"]
        note.close()
    asyncio.run(run())
    log.removeHandler(rec)


async def _serve(**limits):
    app = web.Application()

    async def health(request):
        return web.Response(text="ok")

    async def promote(request):              # what link.accept does once the handshake passed
        listener.authenticated(request)
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"authenticated\n")
        await asyncio.Event().wait()
    app.router.add_get("/health", health)
    app.router.add_get("/promote", promote)
    runner, address = await daemon.serve(app, "127.0.0.1", 0, "the test", **limits)
    host, port = address.rsplit(":", 1)
    return runner, next(iter(runner.sites)).guard, (host, int(port))


async def _open(addr, source, send=b""):
    reader, writer = await asyncio.open_connection(*addr, local_addr=(source, 0))
    if send:
        writer.write(send)
    return reader, writer


async def _until(predicate):
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)              # let the loop accept: no timing involved
    raise AssertionError("condition not reached")


async def _closed(reader):
    return await asyncio.wait_for(reader.read(), 5)


def test_at_the_total_cap_the_heaviest_peer_makes_room_and_authenticated_links_do_not_count():
    async def run():
        runner, guard, addr = await _serve(max_connections=6, max_per_peer=4)
        try:
            heavy = [await _open(addr, "127.0.0.2") for _ in range(4)]
            light = [await _open(addr, "127.0.0.3") for _ in range(2)]
            await _until(lambda: guard.anonymous == 6)
            over_peer = await _open(addr, "127.0.0.2")           # its fifth: over the per-peer cap
            assert (await _closed(over_peer[0])).startswith(b"HTTP/1.1 503 Service Unavailable")
            newcomer = await _open(addr, "127.0.0.4")
            assert await _closed(heavy[0][0]) == b""             # the heaviest peer's oldest made room
            refused = await _open(addr, "127.0.0.2")            # it holds 3, still the most: not again
            assert (await _closed(refused[0])).startswith(b"HTTP/1.1 503")
            late = [await _open(addr, "127.0.0.5") for _ in range(2)]
            assert await _closed(heavy[1][0]) == b""             # 127.0.0.2 held the most again
            assert (await _closed(late[1][0])).startswith(b"HTTP/1.1 503")    # 2, 2, 1, 1: nobody holds more
            assert guard.counts() == (6, 0)
            late[0][1].close()
            await _until(lambda: guard.anonymous == 5)
            link = await _open(addr, "127.0.0.3", b"GET /promote HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.wait_for(link[0].readuntil(b"authenticated\n"), 5)
            assert guard.counts() == (5, 1)                      # out of the anonymous counts
            more = [await _open(addr, "127.0.0.6") for _ in range(2)]     # full again, then refused:
            assert (await _closed(more[1][0])).startswith(b"HTTP/1.1 503")    # the link is never pushed out
            assert guard.counts() == (6, 1) and not link[0].at_eof()
            for _, w in heavy + light + late + more + [over_peer, newcomer, refused, link]:
                w.close()
        finally:
            await runner.cleanup()
    asyncio.run(run())


def test_a_connection_without_a_request_head_is_closed_after_the_header_timeout():
    async def run():
        runner, guard, addr = await _serve(header_timeout=0.2)
        try:
            silent = await _open(addr, "127.0.0.2")
            slow = await _open(addr, "127.0.0.2", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            served = await _open(addr, "127.0.0.2", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await served[0].readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
            assert await _closed(silent[0]) == b"" and await _closed(slow[0]) == b""
            assert guard.counts() == (1, 0) and guard.refused == 2   # the served one stays (keep-alive)
            for _, w in (silent, slow, served):
                w.close()
        finally:
            await runner.cleanup()
    asyncio.run(run())
