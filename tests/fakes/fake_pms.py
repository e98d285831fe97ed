#!/usr/bin/env python3
"""Fake Plex Media Server: the transcoder-facing routes, recorded.

Run:    python tests/fakes/fake_pms.py --listen 127.0.0.1:0 [--token TOKEN]
Import: ``make_app(token=None) -> aiohttp.web.Application`` or ``FakePMS``.

Routes (PMS behaviour as far as the transcoder sees it):
  PUT  /video/:/transcode/session/{key}/{uuid}/progress              -> 206 + ~350 B XML
  PUT  .../progress/stream, .../progress/streamDetail                 -> 200
  POST .../progress/log                                               -> 200
  (all of the above also without {uuid}: the 2016 form)
  POST /video/:/transcode/session/{key}/{uuid}/manifest (body streamed) -> 200
  GET  /livetv/...                                                    -> 200 dummy (*.ts: 7.5 MiB streamed)
  GET  /livetv/sessions/{live}/{session}/index.m3u8, media.m3u8, NNNNN.ts  once Live TV is configured
       (below): a live HLS stream as PMS serves a tuner's recording (master -> media playlist, a
       sliding window over real MPEG-TS segments that moves one segment per media playlist fetch and
       ends with #EXT-X-ENDLIST at the last one). URIs are root-relative (``/livetv/sessions/...``,
       as PMS writes them), relative or absolute (``http://<host>/livetv/...``), with the request's
       X-Plex-Token appended; every Live TV request needs the token, loopback or not.
  GET  /identity                                                      -> 200 XML
  GET|PUT|POST /log  (transcoder without a progress URL)              -> 200
  anything else                                                       -> 404
Every request above is recorded (404 and 401 too).

Auth as PMS: loopback peers are trusted; with a token configured other
peers need ``X-Plex-Token`` (header or query) or get 401, unless their address
is in ``--allowed-networks`` (Plex's "List of IP addresses and networks that
are allowed without auth", ``allowedNetworks`` in Preferences.xml).  ``--untrusted-loopback``
makes loopback peers need the token too, so tests can exercise the 401 path
without leaving 127.0.0.1.

Test API (not recorded):
  GET    /_fake/requests[?path_contains=&method=&kind=]   JSON list of records
  DELETE /_fake/requests                                  clear
  GET    /_fake/wait?path_contains=X&count=N&timeout=S[&method=&kind=]
         long-poll until N matching records exist -> 200 JSON list, else 408
  POST   /_fake/config  JSON {"can_throttle": bool, "status": {"<path substring>": code},
                              "livetv": {"dir": "<dir of *.ts>", "style": "root|relative|absolute",
                                         "window": 3, "target": 1, "pad": 0} or null}

Readiness: after binding it prints ``LISTENING <host>:<port>`` on stdout
and, when $NOTIFY_SOCKET is set, sends ``READY=1\nX_CLUSTERPLEX_LISTEN=<host>:<port>``
to it (abstract sockets written as ``@name`` supported).  SIGTERM/SIGINT
stop it cleanly (exit 0).
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any

from aiohttp import web

MAX_BODY_KEEP = 1 << 20
RECORDED_HEADERS = ("X-Plex-Token", "X-Plex-Http-Pipeline", "Transfer-Encoding", "Content-Type",
                    "Content-Length", "User-Agent", "Connection")

_SESSION = r"^/video/:/transcode/session/(?P<key>[^/]+)(?:/(?P<uuid>[^/]+))?"
TS_SEGMENT_PACKETS = 1024 * 40          # a Live TV segment: 40960 TS packets, 7.5 MiB
PROGRESS_RE = re.compile(_SESSION + r"/progress(?P<sub>/stream|/streamDetail|/log)?/?$")
MANIFEST_RE = re.compile(_SESSION + r"/manifest/?$")
LIVE_RE = re.compile(r"^/livetv/sessions/(?P<live>[^/]+)/(?P<sess>[^/]+)/"
                     r"(?P<file>index\.m3u8|media\.m3u8|[0-9]{5}\.ts)$")
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"

IDENTITY_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<MediaContainer size="0" claimed="1" machineIdentifier="fakepms0000000000000000000000000000000000"'
                ' version="1.32.8.7639-fb6452ebf"> </MediaContainer>\n')


def _progress_xml(key: str, uuid: str | None, query: dict, can_throttle: bool) -> str:
    """About the ~350 bytes PMS answers a progress PUT with."""
    attrs = {
        "key": key, "throttled": "0", "complete": "0",
        "progress": query.get("progress", "0"), "size": query.get("size", "-1"),
        "speed": query.get("speed", "0"), "error": "0", "duration": query.get("duration", "-1"),
        "remaining": query.get("remaining", "-1"), "context": "streaming",
        "sourceVideoCodec": "h264", "sourceAudioCodec": "aac", "videoDecision": "transcode",
        "audioDecision": "transcode", "protocol": "dash", "container": "mp4",
        "transcodeHwRequested": "0",
    }
    if can_throttle:
        attrs["canThrottle"] = "1"
    a = " ".join(f'{k}="{v}"' for k, v in attrs.items() if v is not None)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="1">\n'
            f"<TranscodeSession {a} />\n</MediaContainer>\n")


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return True  # unix socket
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class FakePMS:
    """State + handlers.  ``app`` is the aiohttp application."""

    def __init__(self, token: str | None = None, *, trust_loopback: bool = True,
                 allowed_networks: tuple = ()) -> None:
        self.token = token
        self.trust_loopback = trust_loopback
        self.allowed_networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self.records: list[dict[str, Any]] = []
        self.seq = 0
        self.can_throttle = False
        self.status_overrides: dict[str, int] = {}
        self.livetv: dict[str, Any] | None = None      # Live TV stream (POST /_fake/config)
        self.live_fetches: dict[str, int] = {}          # session -> media playlist fetches (the window)
        self._cond: asyncio.Condition | None = None
        self.app = web.Application(client_max_size=64 << 20)
        r = self.app.router
        r.add_get("/_fake/requests", self.h_requests)
        r.add_delete("/_fake/requests", self.h_clear)
        r.add_get("/_fake/wait", self.h_wait)
        r.add_post("/_fake/config", self.h_config)
        r.add_route("*", "/{tail:.*}", self.h_any)
        # in-thread runner state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.host: str | None = None
        self.port: int | None = None

    # ------------------------------------------------------------ records ----
    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:  # created inside the running loop
            self._cond = asyncio.Condition()
        return self._cond

    async def _record(self, rec: dict[str, Any]) -> None:
        async with self.cond:
            self.seq += 1
            rec["seq"] = self.seq
            self.records.append(rec)
            self.cond.notify_all()

    @staticmethod
    def _match(rec: dict, path_contains: str | None, method: str | None, kind: str | None) -> bool:
        if path_contains and path_contains not in rec["path"] + ("?" + rec["query_string"] if rec["query_string"] else ""):
            return False
        if method and rec["method"] != method.upper():
            return False
        if kind and rec["kind"] != kind:
            return False
        return True

    def select(self, path_contains: str | None = None, method: str | None = None,
               kind: str | None = None) -> list[dict]:
        return [r for r in list(self.records) if self._match(r, path_contains, method, kind)]

    # ----------------------------------------------------------- test API ----
    async def h_requests(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response(self.select(q.get("path_contains"), q.get("method"), q.get("kind")))

    async def h_clear(self, request: web.Request) -> web.Response:
        async with self.cond:
            n = len(self.records)
            self.records.clear()
        return web.json_response({"cleared": n})

    async def h_wait(self, request: web.Request) -> web.Response:
        q = request.query
        pc, method, kind = q.get("path_contains"), q.get("method"), q.get("kind")
        try:
            count = int(q.get("count", "1"))
            timeout = float(q.get("timeout", "10"))
        except ValueError:
            return web.json_response({"error": "bad count/timeout"}, status=400)

        def ready() -> bool:
            return len(self.select(pc, method, kind)) >= count

        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(ready), timeout)
            except asyncio.TimeoutError:
                return web.json_response(self.select(pc, method, kind), status=408)
        return web.json_response(self.select(pc, method, kind))

    async def h_config(self, request: web.Request) -> web.Response:
        cfg = await request.json()
        if "can_throttle" in cfg:
            self.can_throttle = bool(cfg["can_throttle"])
        if "status" in cfg:
            self.status_overrides = {str(k): int(v) for k, v in (cfg["status"] or {}).items()}
        if "livetv" in cfg:
            live = cfg["livetv"]
            if live is not None:
                segs = sorted(os.path.join(live["dir"], n) for n in os.listdir(live["dir"]) if n.endswith(".ts"))
                live = {"segments": segs, "style": live.get("style", "root"),
                        "window": int(live.get("window", 3)), "target": int(live.get("target", 1)),
                        "pad": int(live.get("pad", 0))}
            self.livetv, self.live_fetches = live, {}
        return web.json_response({"can_throttle": self.can_throttle, "status": self.status_overrides,
                                  "livetv": self.livetv})

    def _live_uri(self, request: web.Request, name: str) -> str:
        base = request.path.rsplit("/", 1)[0]
        q = f"?X-Plex-Token={request.query['X-Plex-Token']}" if "X-Plex-Token" in request.query else ""
        style = self.livetv["style"]
        if style == "relative":
            return name + q
        if style == "absolute":
            return f"http://{request.host}{base}/{name}{q}"
        return f"{base}/{name}{q}"

    def _live(self, request: web.Request, name: str) -> tuple[int, str | bytes, str]:
        """Live TV as PMS serves it: (status, body, content type)."""
        live = self.livetv
        segs = live["segments"]
        if name == "index.m3u8":
            return 200, ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=2000000,RESOLUTION=320x180\n"
                         f"{self._live_uri(request, 'media.m3u8')}\n"), PLAYLIST_TYPE
        if name == "media.m3u8":
            sess = request.path.rsplit("/", 1)[0]
            n = self.live_fetches.get(sess, 0)
            self.live_fetches[sess] = n + 1
            window = min(live["window"], len(segs))
            start = min(n, len(segs) - window)
            lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{live['target']}",
                     f"#EXT-X-MEDIA-SEQUENCE:{start}"]
            for i in range(start, start + window):
                lines += [f"#EXTINF:{live['target']}.000000,", self._live_uri(request, f"{i:05d}.ts")]
            if start + window >= len(segs):
                lines.append("#EXT-X-ENDLIST")
            if live["pad"]:         # a comment line: makes the playlist as big as a test needs
                lines.append("#" + "x" * live["pad"])
            return 200, "\n".join(lines) + "\n", PLAYLIST_TYPE
        i = int(name[:5])
        if i >= len(segs):
            return 404, "404 Not Found\n", "text/plain"
        with open(segs[i], "rb") as f:
            return 200, f.read(), "video/MP2T"

    # --------------------------------------------------------------- PMS ----
    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        if self.livetv is not None and LIVE_RE.match(request.path):       # Live TV: the token, always
            return self.token in (request.headers.get("X-Plex-Token"), request.query.get("X-Plex-Token"))
        if self.trust_loopback and _is_loopback(request.remote):
            return True
        if self.allowed_networks and request.remote:
            try:
                ip = ipaddress.ip_address(request.remote.split("%", 1)[0])
            except ValueError:
                ip = None
            if ip is not None and any(ip in net for net in self.allowed_networks):
                return True
        return self.token in (request.headers.get("X-Plex-Token"), request.query.get("X-Plex-Token"))

    async def h_any(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        path = request.path
        method = request.method
        kind, key, uuid = "unknown", None, None
        m = PROGRESS_RE.match(path)
        if m:
            sub = (m.group("sub") or "").lstrip("/")
            kind = sub or "progress"
            key, uuid = m.group("key"), m.group("uuid")
        elif (m := MANIFEST_RE.match(path)):
            kind, key, uuid = "manifest", m.group("key"), m.group("uuid")
        elif path.startswith("/livetv/"):
            kind = "livetv"
        elif path == "/identity":
            kind = "identity"
        elif path == "/log":
            kind = "log"

        # Read the body as a stream (manifests are chunked POSTs).
        body_len, chunks, kept = 0, [], 0
        async for chunk in request.content.iter_any():
            body_len += len(chunk)
            if kind == "manifest" and kept < MAX_BODY_KEEP:
                piece = chunk[:MAX_BODY_KEEP - kept]
                chunks.append(piece)
                kept += len(piece)
        authorized = self._authorized(request)
        query = dict(request.query)

        status, text, ctype = 404, "404 Not Found\n", "text/plain"
        if not authorized:
            status, text = 401, "<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>\n"
            ctype = "text/html"
        elif kind == "progress" and method == "PUT":
            status, ctype = 206, "text/xml"
            text = _progress_xml(key, uuid, query, self.can_throttle)
        elif kind in ("stream", "streamDetail") and method == "PUT":
            status, text, ctype = 200, "", "text/xml"
        elif kind == "log" and method in (("POST",) if path != "/log" else ("GET", "PUT", "POST")):
            status, text = 200, ""
        elif kind == "manifest" and method == "POST":
            status, text = 200, ""
        elif kind == "livetv" and method == "GET" and self.livetv is not None and (lm := LIVE_RE.match(path)):
            # Live TV configured: the stream
            status, text, ctype = self._live(request, lm.group("file"))
        elif kind == "livetv" and method in ("GET", "HEAD"):
            status, text = 200, "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
            ctype = "application/vnd.apple.mpegurl" if path.endswith(".m3u8") else "video/MP2T"
        elif kind == "identity" and method in ("GET", "HEAD"):
            status, text, ctype = 200, IDENTITY_XML, "text/xml"
        for sub_s, code in self.status_overrides.items():
            if sub_s in path:
                status, text, ctype = code, f"{code}\n", "text/plain"
                break

        rec = {
            "t": t0, "t_end": time.monotonic(), "method": method, "path": path,
            "raw_path": request.raw_path, "query_string": request.query_string, "query": query,
            "headers": {h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers},
            "remote": request.remote, "body_len": body_len,
            "body": b"".join(chunks).decode("utf-8", "replace") if kind == "manifest" else None,
            "kind": kind, "session_key": key, "job_uuid": uuid,
            "authorized": authorized, "status": status,
        }
        await self._record(rec)
        if kind == "livetv" and method == "GET" and status == 200 and path.endswith(".ts") and self.livetv is None:
            return await self._segment(request)
        if isinstance(text, bytes):
            return web.Response(status=status, body=text, content_type=ctype)
        return web.Response(status=status, text=text, content_type=ctype)

    async def _segment(self, request):
        """A Live TV segment: MPEG-TS, megabytes, streamed (clients may go away mid-way)."""
        resp = web.StreamResponse(status=200, headers={"Content-Type": "video/MP2T"})
        resp.content_length = TS_SEGMENT_PACKETS * 188
        await resp.prepare(request)
        packet = b"\x47" + bytes(187)
        try:
            for _ in range(TS_SEGMENT_PACKETS // 1024):
                await resp.write(packet * 1024)
        except ConnectionResetError:
            return resp
        await resp.write_eof()
        return resp

    # ---------------------------------------------------- in-thread helper ----
    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 10) -> "FakePMS":
        """Serve from a background thread (for sync tests); returns self."""
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._runner, self.host, self.port = loop.run_until_complete(start_site(self.app, host, port))
            except BaseException as e:  # pragma: no cover
                error.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-pms", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or error:
            raise RuntimeError(f"fake PMS did not start: {error}")
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def wait(self, path_contains: str | None = None, count: int = 1, timeout: float = 10,
             method: str | None = None, kind: str | None = None) -> list[dict]:
        """Thread-side wait (in-thread mode); raises TimeoutError."""
        assert self._loop is not None

        async def w() -> list[dict]:
            async with self.cond:
                await asyncio.wait_for(
                    self.cond.wait_for(lambda: len(self.select(path_contains, method, kind)) >= count),
                    timeout)
            return self.select(path_contains, method, kind)
        fut = asyncio.run_coroutine_threadsafe(w(), self._loop)
        try:
            return fut.result(timeout + 5)
        except asyncio.TimeoutError as e:
            raise TimeoutError(f"{count} x {path_contains!r} not seen in {timeout}s") from e

    def __enter__(self) -> "FakePMS":
        if self._thread is None:
            self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_app(token: str | None = None, *, trust_loopback: bool = True) -> web.Application:
    return FakePMS(token, trust_loopback=trust_loopback).app


async def start_site(app: web.Application, host: str, port: int):
    """AppRunner + TCPSite; returns (runner, host, bound port)."""
    # Long-polls must not hold shutdown for the 60 s default.  aiohttp >= 3.9
    # takes shutdown_timeout on the runner, 3.8 on the site.
    if "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        site_kw: dict[str, Any] = {}
    else:
        runner = web.AppRunner(app, access_log=None)
        site_kw = {"shutdown_timeout": 1.0}
    await runner.setup()
    site = web.TCPSite(runner, host, port, **site_kw)
    await site.start()
    addr = runner.addresses[0]
    return runner, addr[0], addr[1]


def sd_notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(message.encode())


async def _serve(host: str, port: int, token: str | None, trust_loopback: bool,
                 allowed_networks: tuple = ()) -> None:
    pms = FakePMS(token, trust_loopback=trust_loopback, allowed_networks=allowed_networks)
    runner, bound_host, bound_port = await start_site(pms.app, host, port)
    hp = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
    sys.stdout.write(f"LISTENING {hp}\n")
    sys.stdout.flush()
    sd_notify(f"READY=1\nX_CLUSTERPLEX_LISTEN={hp}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--listen", default="127.0.0.1:32400", help="host:port (port 0 = any)")
    ap.add_argument("--token", default=None, help="token non-loopback peers must present")
    ap.add_argument("--untrusted-loopback", action="store_true",
                    help="require the token from loopback peers too")
    ap.add_argument("--allowed-networks", default="",
                    help="comma-separated networks allowed without the token (Plex's allowedNetworks)")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    nets = tuple(n.strip() for n in a.allowed_networks.split(",") if n.strip())
    asyncio.run(_serve(host, int(port), a.token, not a.untrusted_loopback, nets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
