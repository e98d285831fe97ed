"""Fake of Plex's codec server and codec API, for tests (loopback only).

``FakeCodecServer`` runs an aiohttp app in a background thread with its own event loop, bound to
127.0.0.1 on a free port; usable from sync and async tests::

    with FakeCodecServer() as srv:
        srv.put("8217c1c-4578", "linux-x86_64-standard", "libh264_decoder", elf_bytes)
        srv.codecs_url          # http://127.0.0.1:PORT/codecs  (CodecManager's server)
        srv.eae_api_url         # http://127.0.0.1:PORT/api/codecs/easyaudioencoder

Routes:
  GET /codecs/<version>/<arch>/<name>.so   from ``files`` ("<version>/<arch>/<name>" -> bytes),
                                           then ``directory``/<version>/<arch>/<name>.so; else 404
  GET /api/codecs/easyaudioencoder         XML: <Codec url=".../eae/EasyAudioEncoder-<build>.zip"
                                           license="..."> (or ``eae_xml`` verbatim)
  GET /eae/<file>                          ``eae_zip``

Behaviour knobs (thread-safe to set from the test thread; names are library names without .so,
"*" matches every library):
  ``not_found``            set of names answered 404
  ``fail(name, times, mode)``  the next ``times`` requests fail: mode "503" (HTTP 503), "reset"
                           (connection closed before any answer), "truncate" (headers and half the
                           body, then the connection closed)
  ``stall(name, after=N)`` the next request for ``name`` sends headers and ``N`` bytes, then waits
                           until ``release()`` (or ``stop()``); ``after=None`` waits before the
                           headers. ``stalled`` (threading.Event) is set when a response reaches its
                           stall point; ``wait_stalled(timeout)`` waits for it.
  ``down()`` / ``up()``    stop listening (connection refused) and listen again on the same port
Records: ``requests`` (list of {"method", "path", "name", "status", "query"}); ``count(name)``;
``max_inflight`` (most library requests in progress at once).
Helpers: ``elf_header()`` and ``elf_library(arch)`` build small ELF files for a Plex arch.
"""

import asyncio
import os
import struct
import threading
from xml.sax.saxutils import quoteattr

from aiohttp import web

DEFAULT_LICENSE = ("ABCDEFGHIJ " + "a1" * 30 + " " + "b2" * 32)

EM_ARM, EM_X86_64, EM_AARCH64 = 40, 62, 183
ET_EXEC, ET_DYN = 2, 3
ARCH_MACHINE = {"linux-x86_64-standard": (2, EM_X86_64), "linux-aarch64-standard": (2, EM_AARCH64),
                "linux-armv7neon-standard": (1, EM_ARM)}


def elf_header(machine, elf_class=2, byte_order=1, etype=ET_DYN, *, phoff=0, phentsize=0, phnum=0,
               shoff=0, shentsize=0, shnum=0):
    """A minimal ELF header (64 bytes for ELFCLASS64, 52 for ELFCLASS32) with these fields."""
    ident = b"\x7fELF" + bytes([elf_class, byte_order, 1, 0]) + bytes(8)
    fmt = "<" if byte_order == 1 else ">"
    if elf_class == 2:
        rest = struct.pack(fmt + "HHIQQQIHHHHHH", etype, machine, 1, 0, phoff, shoff, 0, 64,
                           phentsize, phnum, shentsize, shnum, 0)
    else:
        rest = struct.pack(fmt + "HHIIIIIHHHHHH", etype, machine, 1, 0, phoff, shoff, 0, 52,
                           phentsize, phnum, shentsize, shnum, 0)
    return ident + rest


def elf_library(arch, size=4096, *, name="", etype=ET_DYN, machine=None):
    """A small "library" for a Plex arch: an ELF header whose section header table ends exactly at
    ``size`` (so cutting the file short is detectable), padded with bytes derived from ``name``."""
    elf_class, default_machine = ARCH_MACHINE[arch]
    entsize = 64 if elf_class == 2 else 40
    shnum = 2
    hdr = elf_header(default_machine if machine is None else machine, elf_class, etype=etype,
                     shoff=size - entsize * shnum, shentsize=entsize, shnum=shnum)
    fill = (name.encode() or b"x") + b"\0"
    body = (fill * (size // len(fill) + 1))[:size - len(hdr)]
    return hdr + body


class FakeCodecServer:
    def __init__(self, files=None, directory=None, *, eae_zip=None, eae_license=DEFAULT_LICENSE):
        self.files = dict(files or {})
        self.directory = directory
        self.not_found = set()
        self.eae_zip = eae_zip
        self.eae_license = eae_license
        self.eae_xml = None
        self.requests = []
        self.inflight = 0
        self.max_inflight = 0            # most library requests served at once
        self.stalled = threading.Event()
        self._failures = {}              # name -> [mode, remaining]
        self._stalls = {}                # name -> after (bytes or None)
        self._lock = threading.Lock()
        self._release = None             # asyncio.Event, in the server loop
        self._loop = None
        self._thread = None
        self._runner = None
        self.host = "127.0.0.1"
        self.port = 0

    # --- test API --------------------------------------------------------------

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def codecs_url(self):
        return f"{self.url}/codecs"

    @property
    def eae_api_url(self):
        return f"{self.url}/api/codecs/easyaudioencoder"

    def put(self, version, arch, name, data):
        with self._lock:
            self.files[f"{version}/{arch}/{name}"] = bytes(data)

    def fail(self, name, times=1, mode="503"):
        if mode not in ("503", "reset", "truncate"):
            raise ValueError(mode)
        with self._lock:
            self._failures[name] = [mode, int(times)]

    def stall(self, name, after=0):
        with self._lock:
            self._stalls[name] = after
        self.stalled.clear()

    def wait_stalled(self, timeout=10):
        if not self.stalled.wait(timeout):
            raise TimeoutError("no response reached its stall point")

    def release(self):
        loop, ev = self._loop, self._release
        if loop is not None and ev is not None and not loop.is_closed():
            loop.call_soon_threadsafe(ev.set)

    def count(self, name=None, status=None):
        with self._lock:
            return sum(1 for r in self.requests
                       if (name is None or r["name"] == name) and (status is None or r["status"] == status))

    def down(self):
        self._call(self._stop_site())

    def up(self):
        self._call(self._start_site())

    # --- lifecycle -------------------------------------------------------------

    def start(self):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-codec-server", daemon=True)
        self._thread.start()
        self._call(self._init())
        self._call(self._start_site())
        return self

    def stop(self):
        if self._loop is None:
            return
        self.release()
        try:
            self._call(self._stop_site())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _call(self, coro, timeout=20):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _init(self):
        self._release = asyncio.Event()

    def _make_app(self):
        app = web.Application()
        app.router.add_get("/codecs/{version}/{arch}/{file}", self.h_codec)
        app.router.add_get("/api/codecs/easyaudioencoder", self.h_eae_api)
        app.router.add_get("/eae/{file}", self.h_eae_zip)
        return app

    async def _start_site(self):
        if self._runner is not None:
            return
        runner = web.AppRunner(self._make_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def _stop_site(self):
        runner, self._runner = self._runner, None
        if runner is not None:
            self._release.set()
            await runner.cleanup()

    # --- handlers --------------------------------------------------------------

    def _record(self, request, name, status):
        with self._lock:
            self.requests.append({"method": request.method, "path": request.path, "name": name,
                                  "status": status, "query": dict(request.query)})

    def _take(self, table, name):
        """The entry for name (or "*") in table, consumed; None if none."""
        with self._lock:
            key = name if name in table else "*" if "*" in table else None
            if key is None:
                return None
            entry = table[key]
            if isinstance(entry, list):          # failures: [mode, remaining]
                entry[1] -= 1
                if entry[1] <= 0:
                    del table[key]
                return entry[0]
            del table[key]
            return ("stall", entry)

    def _lookup(self, version, arch, name):
        with self._lock:
            data = self.files.get(f"{version}/{arch}/{name}")
        if data is None and self.directory:
            path = os.path.join(self.directory, version, arch, f"{name}.so")
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                data = None
        return data

    @staticmethod
    def _abort(request):
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def h_codec(self, request):
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return await self._codec(request)
        finally:
            with self._lock:
                self.inflight -= 1

    async def _codec(self, request):
        v, a, file = request.match_info["version"], request.match_info["arch"], request.match_info["file"]
        name = file[:-3] if file.endswith(".so") else file
        with self._lock:
            missing = name in self.not_found or "*" in self.not_found
        if missing:
            self._record(request, name, 404)
            raise web.HTTPNotFound()
        mode = self._take(self._failures, name)
        data = self._lookup(v, a, name) if file.endswith(".so") else None
        if mode == "503":
            self._record(request, name, 503)
            raise web.HTTPServiceUnavailable(text="try again later")
        if mode == "reset":
            self._record(request, name, "reset")
            self._abort(request)
            return web.Response(status=500)   # never reaches the client
        if data is None:
            self._record(request, name, 404)
            raise web.HTTPNotFound()
        stall = self._take(self._stalls, name)
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(data)
        if mode == "truncate":
            self._record(request, name, "truncate")
            await resp.prepare(request)
            await resp.write(data[:len(data) // 2])
            self._abort(request)
            return resp
        self._record(request, name, 200)
        try:
            if stall is not None and stall[1] is None:
                await self._wait_release()
            await resp.prepare(request)
            if stall is not None and stall[1] is not None:
                await resp.write(data[:stall[1]])
                await self._wait_release()
                await resp.write(data[stall[1]:])
            else:
                await resp.write(data)
            await resp.write_eof()
        except ConnectionError:
            self._abort(request)
        return resp

    async def _wait_release(self):
        self._release.clear()
        self.stalled.set()
        try:
            await asyncio.wait_for(self._release.wait(), 30)
        except asyncio.TimeoutError:
            pass

    async def h_eae_api(self, request):
        self._record(request, "easyaudioencoder", 200)
        if self.eae_xml is not None:
            return web.Response(text=self.eae_xml, content_type="application/xml")
        build = request.query.get("build", "")
        url = f"{self.url}/eae/EasyAudioEncoder-{build}.zip"
        xml = ('<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="1">\n'
               f'<Codec url={quoteattr(url)} license={quoteattr(self.eae_license)} '
               f'build={quoteattr(build)} version={quoteattr(request.query.get("version", ""))} />\n'
               '</MediaContainer>\n')
        return web.Response(text=xml, content_type="application/xml")

    async def h_eae_zip(self, request):
        if self.eae_zip is None:
            self._record(request, "eae-zip", 404)
            raise web.HTTPNotFound()
        self._record(request, "eae-zip", 200)
        return web.Response(body=self.eae_zip, content_type="application/zip")
