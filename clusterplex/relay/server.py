"""clusterplex-relay: forwards transcoder callbacks from workers to PMS.

PMS trusts callbacks that come from loopback. The shim rewrites PMS's URL
in the transcoder's arguments to ``<relay.advertise>/_cp/<job id>/<mac>``;
the relay checks that capability (an HMAC of the job id with the cluster
secret, so only jobs submitted by our shim get through), strips it, and
streams the request to ``plex_url`` from 127.0.0.1, and the answer back.
Only Plex's transcode and Live TV paths are forwarded; it is no open proxy.
"""

import asyncio
import ipaddress
import logging
import os
import re
import socket
import stat
import time

import aiohttp
from aiohttp import web

from ..core import cache, config, protocol
from ..common import daemon, discovery
from . import metrics, playlist

logger = logging.getLogger("clusterplex.relay")

ALLOWED_PREFIXES = ("/video/:/transcode/", "/livetv/")
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Proxy-Connection"))
_CAP_RE = re.compile(r"/_cp/([0-9A-Za-z]{8,64})/([0-9a-f]{32})(/.*)?\Z", re.S)
_BAD_PATH = re.compile(r"(^|/)\.\.?(/|$)|//|%2f|%5c|%2e|\\|%00", re.I)
SECRET_RECHECK = 2.0
WORKERS_REFRESH = 5.0        # seconds between updates of the known worker addresses
UPSTREAM_RETRY_FOR = 5.0    # seconds a bodiless callback waits for PMS to come back (restart)
MISS_REFRESH = 0.25         # an unknown peer triggers a refresh at most this often
LOOPBACK = frozenset(("127.0.0.1", "::1"))
PROGRESS_EVERY = 2.0        # seconds between progress reports to the orchestrator (for its web page, CLI)
PROGRESS_JOBS = 1000        # jobs remembered between two reports, at most
_PROGRESS_ARG = re.compile(r"(?:^|&)progress=(-?[0-9]{1,4}(?:\.[0-9]{1,3})?)(?:&|$)")


def route(raw_target, secret):
    """Decide what to do with a raw request target (pure).

    Returns ``(upstream path+query, None)`` or ``(None, (status, reason))``.
    """
    if not raw_target.startswith("/"):
        return None, (403, "absolute-form or authority-form request targets are not accepted")
    path, sep, query = raw_target.partition("?")
    m = _CAP_RE.match(path)
    if not m:
        return None, (403, "missing job capability (requests must come from a ClusterPlex job)")
    job_id, mac, rest = m.group(1), m.group(2), m.group(3) or "/"
    if not protocol.check_relay_capability(secret, job_id, mac):
        return None, (403, "invalid job capability")
    if _BAD_PATH.search(rest):
        return None, (403, "path not allowed")
    if not rest.startswith(ALLOWED_PREFIXES):
        return None, (403, "only Plex transcode and Live TV paths are relayed")
    return rest + sep + query, None


def progress_report(raw_target):
    """``(job id, capability mac, percent)`` of a transcoder's progress callback, or None (pure).

    The transcoder PUTs ``<progressurl>?progress=12.3&size=..`` every ~0.5 s; only requests
    that carry a valid capability get this far, and the mac goes along so the orchestrator can
    check it too."""
    path, _, query = raw_target.partition("?")
    m = _CAP_RE.match(path)
    if not m or not (m.group(3) or "").endswith("/progress"):
        return None
    p = _PROGRESS_ARG.search(query)
    if not p:
        return None
    return m.group(1), m.group(2), float(p.group(1))


class Relay:
    def __init__(self, cfg, config_path, notifier):
        self.cfg = cfg
        self.notifier = notifier
        self.secret = None
        self.http = None
        self.listen_address = ""
        self.log_once = daemon.LogOnce(logger)
        self.requests = 0
        self.refused = 0
        self.orchestrator = None    # (mDNS name, url) when discovered
        self.secret_error = ""
        self._secret_task = None
        self.worker_ips = frozenset()          # addresses of the workers the orchestrator knows
        self._tasks = set()
        self._workers_task = None
        self._last_refresh = 0.0
        try:
            self.allow_nets = [ipaddress.ip_network(n, strict=False) for n in cfg.relay.allow]
        except ValueError as e:
            raise config.ConfigError(f"{config_path}: /relay/allow: {e}") from None
        try:
            self.metrics_nets = [ipaddress.ip_network(n, strict=False) for n in cfg.relay.metrics_allow]
        except ValueError as e:
            raise config.ConfigError(f"{config_path}: /relay/metrics_allow: {e}") from None
        self.metrics = metrics.RelayMetrics(self)
        self._events = None          # datagram transport: the shim's local runs
        self._events_inode = None
        self._progress = {}          # job id -> (mac, percent), until the next report
        self._progress_task = None
        self.mdns = None
        self.watch = None
        self._runner = None

    def _load_secret(self):
        """The secret may arrive after us (package order, `clusterplex join`): until then, refuse all."""
        try:
            self.secret = config.load_secret(self.cfg.secret_file)
            self.secret_error = ""
            logger.info("cluster secret loaded")
        except config.ConfigError as e:
            self.secret, self.secret_error = None, str(e)
            logger.warning("not joined: %s; refusing every request until it exists", e)
        self.notifier.status(self.status_line())

    async def _wait_for_secret(self):
        while self.secret is None:
            await asyncio.sleep(SECRET_RECHECK)
            if os.path.exists(self.cfg.secret_file):
                self._load_secret()
        if self.cfg.orchestrator == "auto" and self.cfg.discovery.enabled and self.watch is None:
            await self._start_discovery()

    async def start(self):
        self._load_secret()
        self.http = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        app = web.Application(client_max_size=1 << 30, middlewares=[self.guard])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        host, port = self.cfg.relay.listen
        if self.cfg.relay.enabled:
            self._runner, self.listen_address = await daemon.serve(app, host, port, "the relay")
            await self._open_events()
        else:   # relay.enabled false: workers call PMS at relay.direct_url; we only find the orchestrator
            logger.info("relay off (relay.enabled: false): workers call PMS at %s directly", self.cfg.relay.direct_url)
        if self.cfg.relay.restrict_to_workers and self.cfg.relay.enabled:
            self._workers_task = asyncio.get_running_loop().create_task(self._follow_workers())
        if self.secret is None:
            self._secret_task = asyncio.get_running_loop().create_task(self._wait_for_secret())
        elif self.cfg.orchestrator == "auto" and self.cfg.discovery.enabled:
            await self._start_discovery()

    async def _start_discovery(self):
        """Find the orchestrator for the shim (``orchestrator: auto``) and keep the cache file current."""
        self.mdns = await discovery.open_mdns(self.cfg.discovery.interfaces)
        cache.remove(self.cfg.discovery.cache_file)
        self.watch = discovery.Watch(self.mdns, discovery.ORCHESTRATOR_TYPE, self._orch_up, self._orch_down)
        await self.watch.start()

    def _orchestrator_url(self):
        if self.cfg.orchestrator != "auto":
            return self.cfg.orchestrator
        return self.orchestrator[1] if self.orchestrator else None

    async def _refresh_workers(self):
        """Learn the workers' addresses from the orchestrator (kept as they were if it is away)."""
        self._last_refresh = time.monotonic()
        url = self._orchestrator_url()
        if url is None:
            return
        try:
            async with self.http.get(url + "/api/v1/workers", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                workers = await resp.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            logger.debug("cannot list workers at %s: %s", url, e)
            return
        ips = set()
        loop = asyncio.get_running_loop()
        for w in workers if isinstance(workers, list) else []:
            host = str(w.get("address", "")).rsplit(":", 1)[0].strip("[]")
            try:
                for info in await loop.getaddrinfo(host, None):
                    ips.add(info[4][0])
            except OSError:
                continue
        if ips != self.worker_ips:
            logger.info("relaying for workers at %s", ", ".join(sorted(ips)) or "(none)")
            self.worker_ips = frozenset(ips)

    async def _follow_workers(self):
        while True:
            await self._refresh_workers()
            await asyncio.sleep(WORKERS_REFRESH)

    async def _peer_allowed(self, ip):
        if not self.cfg.relay.restrict_to_workers or ip in LOOPBACK or ip in self.worker_ips:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if any(addr in net for net in self.allow_nets):
            return True
        if time.monotonic() - self._last_refresh > MISS_REFRESH:     # a worker that just joined?
            await self._refresh_workers()
        return ip in self.worker_ips

    def _orch_up(self, name, host, port, txt):
        if txt.get("fp") != protocol.secret_fingerprint(self.secret):
            logger.info("ignoring orchestrator %s at %s:%d: another cluster", name, host, port)
            return
        url = f"http://{config.format_hostport(host, port)}"
        if self.orchestrator != (name, url):
            logger.info("orchestrator %s found at %s", name, url)
            self.orchestrator = (name, url)
            if self.cfg.relay.restrict_to_workers:
                task = asyncio.get_running_loop().create_task(self._refresh_workers())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            err = cache.write(self.cfg.discovery.cache_file, {"url": url, "name": name})
            if err:
                logger.error("%s: the shim cannot find the orchestrator", err)
            self.notifier.status(self.status_line())

    def _orch_down(self, name):
        if self.orchestrator and self.orchestrator[0] == name:
            logger.warning("orchestrator %s said goodbye", name)
            self.orchestrator = None
            cache.remove(self.cfg.discovery.cache_file)
            self.notifier.status(self.status_line())

    def status_line(self):
        if self.secret is None:
            return f"not joined: {self.secret_error}"
        line = f"relaying to {self.cfg.plex_url}: {self.requests} requests, {self.refused} refused"
        if not self.cfg.relay.enabled:
            line = f"relay off: workers call PMS at {self.cfg.relay.direct_url}"
        if self.cfg.orchestrator == "auto":
            line += f"; orchestrator {self.orchestrator[1] if self.orchestrator else 'not found yet'}"
        return line

    async def _open_events(self):
        """The socket the shim sends its local runs to (counted in the metrics; never fatal)."""
        path = self.cfg.relay.events_socket
        if not path:
            return
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)              # left over from a previous run
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("relay.events_socket %s: %s; local runs are not counted", path, e)
            return
        try:
            self._events, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _ShimEvents(self), local_addr=path, family=socket.AF_UNIX)
            self._events_inode = os.lstat(path).st_ino
        except OSError as e:
            logger.warning("cannot listen on relay.events_socket %s: %s; local runs are not counted", path, e)

    def shim_event(self, data):
        if not self.metrics.shim_event(data):
            self.log_once.warning(("shim-event",), "ignoring a malformed event on %s: %r",
                                  self.cfg.relay.events_socket, data[:100])

    def _note_progress(self, raw_target):
        report = progress_report(raw_target)
        if report is None:
            return
        job_id, mac, pct = report
        self._progress.pop(job_id, None)
        self._progress[job_id] = (mac, pct)
        while len(self._progress) > PROGRESS_JOBS:
            self._progress.pop(next(iter(self._progress)))
        if self._progress_task is None:
            self._progress_task = asyncio.get_running_loop().create_task(self._report_progress())

    async def _report_progress(self):
        """Tell the orchestrator how far its jobs are (it cannot see the callbacks), in batches."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            batch, self._progress = self._progress, {}
            url = self._orchestrator_url()
            if not batch or url is None:
                continue
            reports = [{"job_id": j, "mac": mac, "progress": pct} for j, (mac, pct) in batch.items()]
            try:
                async with self.http.post(url + "/api/v1/progress", json={"reports": reports},
                                          timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                logger.debug("cannot report progress to %s: %s", url, e)

    async def shutdown(self):
        for task in (self._secret_task, self._workers_task, self._progress_task):
            if task is not None:
                task.cancel()
        if self._events is not None:
            self._events.close()
            try:
                if os.lstat(self.cfg.relay.events_socket).st_ino == self._events_inode:
                    os.unlink(self.cfg.relay.events_socket)     # ours, not a newer relay's
            except OSError:
                pass
        if self.watch is not None:
            await self.watch.close()
        if self.mdns is not None:
            await self.mdns.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http is not None:
            await self.http.close()

    def _refuse(self, request, status, reason):
        self.refused += 1
        self.metrics.refusal(reason)
        self.log_once.warning(("refused", request.remote), "refused %s %s from %s: %s", request.method,
                              request.path[:200], request.remote, reason)
        return web.Response(status=status, text=reason + "\n")

    @web.middleware
    async def guard(self, request, handler):
        """Runs before routing decisions count: CONNECT and odd targets never reach a handler."""
        if request.method == "CONNECT":
            return self._refuse(request, 405, "CONNECT is not allowed: this is not an open proxy")
        if request.method == "GET" and str(request.message.path) == "/metrics":
            return self._metrics(request)
        if self.secret is None:
            return self._refuse(request, 503, "relay not joined to a cluster yet (no cluster secret)")
        if not await self._peer_allowed(request.remote or ""):
            return self._refuse(request, 403, f"{request.remote} is not a known worker (relay.allow adds networks)")
        if request.method == "GET" and str(request.message.path) == protocol.RELAY_PING:
            # `clusterplex doctor`: a worker checks it reaches us; nothing is forwarded
            return web.json_response({"service": "clusterplex-relay",
                                      "cluster": protocol.secret_fingerprint(self.secret)})
        return await handler(request)

    def _metrics(self, request):
        """Prometheus metrics: this host and relay.metrics_allow only (not the workers, not relay.allow)."""
        ip = request.remote or ""
        try:
            allowed = ip in LOOPBACK or any(ipaddress.ip_address(ip) in net for net in self.metrics_nets)
        except ValueError:
            allowed = False
        if not allowed:
            return self._refuse(request, 403, f"{ip} may not read the metrics (relay.metrics_allow adds networks)")
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def _playlist(self, request, target, up):
        """A playlist PMS serves to a job's transcoder, rewritten so its URIs keep the job's capability
        prefix (relay/playlist.py): ``(bytes, complete)``; None for anything else, streamed untouched.
        Not complete: an oversized playlist whose first bytes were read; the rest follows unchanged."""
        path = target.partition("?")[0]
        if request.method != "GET" or up.status != 200 \
                or not playlist.is_playlist(up.headers.get("Content-Type"), path):
            return None
        if up.headers.get("Content-Encoding", "identity").lower() != "identity":
            logger.debug("playlist %s is %s-encoded: passed through unchanged", path[:200],
                         up.headers["Content-Encoding"])
            return None
        length = up.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > playlist.MAX_PLAYLIST):
            logger.debug("playlist %s is %s bytes: passed through unchanged", path[:200], length)
            return None
        data = await _read_capped(up, playlist.MAX_PLAYLIST)
        if len(data) > playlist.MAX_PLAYLIST:
            logger.debug("playlist %s is over %d bytes: passed through unchanged", path[:200], playlist.MAX_PLAYLIST)
            return data, False
        m = _CAP_RE.match(str(request.message.path).partition("?")[0])
        body = playlist.rewrite_body(data, f"/_cp/{m.group(1)}/{m.group(2)}", self.cfg.plex_url)
        if body is None:
            logger.debug("playlist %s is not UTF-8: passed through unchanged", path[:200])
            return data, True
        return body, True

    async def handle(self, request):
        started = time.monotonic()
        target, refusal = route(request.message.path if isinstance(request.message.path, str)
                                else str(request.message.path), self.secret)
        if refusal:
            return self._refuse(request, *refusal)
        self.requests += 1
        if request.method == "PUT":
            self._note_progress(str(request.message.path))
        url = self.cfg.plex_url + target
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        data = None
        chunked = None
        if request.body_exists:
            data = request.content
            if request.content_length is None:
                chunked = True
        resp = None
        # PMS restarting: a request whose body has not been read yet can be sent again.
        deadline = time.monotonic() + UPSTREAM_RETRY_FOR
        delay = 0.1
        try:
            while True:
                try:
                    up_ctx = self.http.request(request.method, url, headers=headers, data=data, chunked=chunked,
                                               allow_redirects=False,
                                               skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
                    async with up_ctx as up:
                        self.metrics.forwarded(up.status, time.monotonic() - started)
                        resp = web.StreamResponse(status=up.status, reason=up.reason)
                        first, whole = await self._playlist(request, target, up) or (b"", False)
                        for k, v in up.headers.items():
                            if k.lower() not in HOP_BY_HOP and not (whole and k.lower() == "content-length"):
                                resp.headers.add(k, v)
                        if whole:
                            resp.content_length = len(first)
                            if not await _to_client(resp.prepare(request)) or not await _to_client(resp.write(first)) \
                                    or not await _to_client(resp.write_eof()):
                                logger.debug("client went away during the answer to %s", request.path[:200])
                            return resp
                        if up.headers.get("Content-Length") is None:
                            resp.enable_chunked_encoding()
                        sent = await _to_client(resp.prepare(request))
                        if sent and first:
                            sent = await _to_client(resp.write(first))
                        if sent:
                            async for chunk in up.content.iter_any():     # PMS's side: errors go below
                                if not await _to_client(resp.write(chunk)):
                                    sent = False
                                    break
                        if not sent or not await _to_client(resp.write_eof()):
                            # PMS killed the transcoder while we answered it: routine
                            logger.debug("client went away during the answer to %s", request.path[:200])
                        return resp
                except aiohttp.ClientConnectorError as e:
                    if data is not None or time.monotonic() + delay > deadline:
                        raise
                    self.log_once.warning(("retry",), "PMS at %s not answering (%s); retrying for up to %ss",
                                          self.cfg.plex_url, e, UPSTREAM_RETRY_FOR)
                    await asyncio.sleep(delay)         # retry backoff, bounded by the deadline
                    delay = min(1.0, delay * 2)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            if resp is not None and resp.prepared:
                logger.warning("PMS connection broke while relaying %s: %s", request.path[:200], e)
                raise   # the client sees the stream end early, as it would talking to PMS directly
            self.log_once.warning(("upstream",), "PMS at %s unreachable: %s", self.cfg.plex_url, e)
            self.metrics.forwarded(None)
            return web.Response(status=502, text=f"PMS unreachable at {self.cfg.plex_url}\n")
        finally:
            self.notifier.status(self.status_line())


async def _read_capped(up, cap):
    """Up to ``cap`` + 1 bytes of PMS's answer (a playlist is small)."""
    data = bytearray()
    async for chunk in up.content.iter_any():
        data += chunk
        if len(data) > cap:
            break
    return bytes(data)


async def _to_client(write):
    """Await a write to our client; False if it went away (reset, "Connection lost", "Cannot write
    to closing transport": builtin ConnectionErrors in aiohttp 3.8 and current)."""
    try:
        await write
        return True
    except ConnectionError:
        return False


class _ShimEvents(asyncio.DatagramProtocol):
    def __init__(self, relay):
        self.relay = relay

    def datagram_received(self, data, addr):
        self.relay.shim_event(data)


def main(argv=None):
    return daemon.main("clusterplex-relay", "pms", Relay, argv)

