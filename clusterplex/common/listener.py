"""The daemons' listening sockets, guarded against floods; aiohttp serves what gets through.

aiohttp has no header timeout and no connection caps, and asyncio's own accept loop (Python 3.11
to 3.13) answers a process out of file descriptors with one ERROR and traceback and one retry
timer per queued connection, every time the socket is readable (cpython gh-151615): the journal
fills in seconds. So the daemons accept connections themselves and hand each to aiohttp
(``loop.connect_accepted_socket``):

- *anonymous* connections (every one, until it passes the HMAC handshake of a WebSocket link)
  are capped per peer (its IPv4 address, or its IPv6 /64) and in total. Over the per-peer cap a
  new connection is closed at once (with a 503 if the socket takes it); at the total cap the
  oldest connection of the peer holding the most is closed to make room for a peer holding
  fewer, so one peer cannot lock out the others.
- a connection that sends no complete request head within ``HEADER_TIMEOUT`` is closed; an idle
  keep-alive connection is closed after aiohttp's ``keepalive_timeout`` (``serve`` sets it).
- a WebSocket link that authenticated (``link.accept`` calls ``authenticated``) leaves the
  anonymous counts: no flood of anonymous connections pushes out a worker's or a shim's link.
- out of file descriptors (or kernel memory) on accept: stop accepting for ``ACCEPT_PAUSE``,
  then try again; what was refused or closed is logged once, then once per ``LOG_EVERY`` with
  the count.

The caps stay below the file descriptor limit (half of the soft ``RLIMIT_NOFILE``), so they hit
first; the systemd units raise ``LimitNOFILE``.
"""

import asyncio
import errno
import ipaddress
import logging
import resource
import socket

from aiohttp import web

logger = logging.getLogger(__name__)

HEADER_TIMEOUT = 5.0      # seconds from accept to a complete request head
KEEPALIVE_TIMEOUT = 15.0  # seconds an idle keep-alive connection stays open
MAX_CONNECTIONS = 1024    # anonymous connections in total (at most half the soft RLIMIT_NOFILE)
MAX_PER_PEER = 128        # anonymous connections from one address (IPv6: one /64)
ACCEPT_PAUSE = 0.5        # seconds without accepting after EMFILE/ENFILE/ENOBUFS/ENOMEM
ACCEPT_BATCH = 64         # connections accepted per wakeup at most (others wait in the backlog)
LOG_EVERY = 60.0          # seconds between two log lines of the same flood
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
         b"Connection: close\r\n\r\ntoo many connections\n")

_listeners = set()


def caps(nofile=None):
    """``(total, per peer)`` anonymous connections: the defaults, under half the soft fd limit."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    total = MAX_CONNECTIONS if nofile == resource.RLIM_INFINITY else max(8, min(MAX_CONNECTIONS, nofile // 2))
    return total, min(MAX_PER_PEER, total)


def peer_key(ip):
    """What the per-peer cap counts by: the IPv4 address, or the IPv6 /64 (one host's share)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def authenticated(request):
    """The connection of ``request`` passed a handshake: it no longer counts as anonymous."""
    for listener in _listeners:
        if listener.promote(request.protocol):
            return


class RateLimited:
    """Log lines that come at flood rate: the first at once, then one per ``interval`` per kind,
    with how many were held back. Kinds are few and fixed (the key is not the peer)."""

    def __init__(self, log, interval=LOG_EVERY, level=logging.WARNING):
        self._log = log
        self._interval = interval
        self._level = level
        self._held = {}          # kind -> [count held back, last msg, last args]
        self._timer = None

    def __call__(self, kind, msg, *args):
        entry = self._held.get(kind)
        if entry is not None:
            entry[:] = [entry[0] + 1, msg, args]
            return
        self._log.log(self._level, msg, *args)
        self._held[kind] = [0, msg, args]
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def _flush(self):
        self._timer = None
        held, self._held = self._held, {}
        for kind, (count, msg, args) in held.items():
            if count:
                self._log.log(self._level, msg + " (%d more like it in %d s)", *args, count, self._interval)
                self._held[kind] = [0, msg, args]    # the flood may go on: keep holding back
        if self._held:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def close(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Conn:
    __slots__ = ("handler", "peer", "key", "timer", "state")

    def __init__(self, handler, peer, key):
        self.handler = handler
        self.peer = peer
        self.key = key
        self.timer = None        # the header timeout, until the first request head
        self.state = "anonymous"  # "authenticated", "closed"


class Listener:
    """Accepts on ``sock`` for aiohttp's ``server`` (a ``web.Server``), with the caps above.

    Quacks like the ``asyncio.Server`` aiohttp's sites keep (``close``, ``wait_closed``,
    ``sockets``), so ``AppRunner.cleanup`` stops it as it would its own.
    """

    def __init__(self, server, sock, what, max_connections=None, max_per_peer=None, header_timeout=None):
        total, per_peer = caps()
        self.server = server
        self.sock = sock
        self.what = what
        self.max_connections = max_connections or total
        self.max_per_peer = min(max_per_peer or per_peer, self.max_connections)
        self.header_timeout = header_timeout or HEADER_TIMEOUT
        self.sockets = [sock]
        self.anonymous = 0
        self.refused = 0          # connections closed by a cap, a header timeout, or refused
        self._by_peer = {}        # peer key -> {handler: _Conn}, oldest first
        self._conns = {}          # handler -> _Conn, every open connection
        self._loop = None
        self._pause = None
        self._note = RateLimited(logger)
        self._idle_note = RateLimited(logger, level=logging.INFO)     # browsers' preconnects time out too
        self._wrap_server(server)

    def _wrap_server(self, server):
        lost = server.connection_lost

        def connection_lost(handler, exc=None):
            lost(handler, exc)
            self._forget(handler)
        server.connection_lost = connection_lost

    # --- lifecycle -------------------------------------------------------------

    def start(self):
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)
        _listeners.add(self)

    def close(self):
        _listeners.discard(self)
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._note.close()
        self._idle_note.close()
        for conn in self._conns.values():
            if conn.timer is not None:
                conn.timer.cancel()

    async def wait_closed(self):
        return None

    def counts(self):
        """``(anonymous, authenticated)`` open connections."""
        return self.anonymous, sum(1 for c in self._conns.values() if c.state == "authenticated")

    # --- accepting -------------------------------------------------------------

    def _on_readable(self):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in _RESOURCE_ERRORS:
                    self._paused(e)
                else:       # a network error pending on the new connection (accept(2)): that one is gone
                    self._note("error", "accepting a connection for %s failed: %s", self.what, e)
                return
            self._admit(sock, addr)

    def _paused(self, e):
        """Out of descriptors: stop reading the listening socket for a while (the backlog waits)."""
        self._loop.remove_reader(self.sock.fileno())
        self._pause = self._loop.call_later(ACCEPT_PAUSE, self._resume)
        self._note("accept", "cannot accept connections for %s: %s; pausing %.1f s (%d anonymous connections open; "
                   "is LimitNOFILE too low?)", self.what, e.strerror, ACCEPT_PAUSE, self.anonymous)

    def _resume(self):
        self._pause = None
        if self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _admit(self, sock, addr):
        peer = addr[0] if isinstance(addr, tuple) else str(addr)
        key = peer_key(peer)
        mine = self._by_peer.get(key, {})
        if len(mine) >= self.max_per_peer:
            return self._refuse(sock, "peer", "closing new connections from %s to %s: %d open already (the per-peer "
                                "cap)", peer, self.what, len(mine))
        if self.anonymous >= self.max_connections and not self._evict_for(len(mine)):
            return self._refuse(sock, "total", "closing new connections to %s from %s: %d anonymous connections "
                                "open (the cap)", self.what, peer, self.anonymous)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        handler = self.server()
        conn = _Conn(handler, peer, key)
        self._conns[handler] = conn
        self._by_peer.setdefault(key, {})[handler] = conn
        self.anonymous += 1
        conn.timer = self._loop.call_later(self.header_timeout, self._head_timeout, conn)
        task = self._loop.create_task(self._loop.connect_accepted_socket(lambda: handler, sock))
        task.add_done_callback(lambda t: self._connected(t, conn, sock))

    def _connected(self, task, conn, sock):
        if task.cancelled() or task.exception() is not None:
            logger.debug("connection from %s failed at once: %s", conn.peer,
                         "cancelled" if task.cancelled() else task.exception())
            sock.close()
            self._forget(conn.handler)

    def _refuse(self, sock, kind, msg, *args):
        self.refused += 1
        try:
            sock.send(_BUSY)
        except OSError:
            pass
        sock.close()
        self._note(kind, msg, *args)

    def _evict_for(self, mine):
        """At the total cap: close the oldest connection of the peer that holds the most, if it
        holds more than the newcomer's peer would with this one (preferring one that never sent a
        request). True if room was made."""
        key, conns = max(self._by_peer.items(), key=lambda kv: len(kv[1]))
        if len(conns) <= mine + 1:
            return False
        victim = next((c for c in conns.values() if c.timer is not None), None) or next(iter(conns.values()))
        self._close(victim, self._note, "total", "closing the oldest connections to %s of %s, which holds the most: "
                    "%d anonymous connections open (the cap)", self.what, victim.peer, self.anonymous)
        return True

    def _head_timeout(self, conn):
        conn.timer = None
        if conn.state == "anonymous":
            self._close(conn, self._idle_note, "head", "closed connections to %s that sent no request within %.0f s "
                        "(last from %s)", self.what, self.header_timeout, conn.peer)

    def _close(self, conn, note, kind, msg, *args):
        self.refused += 1
        note(kind, msg, *args)
        self._leave_anonymous(conn)
        conn.state = "closed"
        conn.handler.force_close()

    # --- what aiohttp and the handlers tell us ---------------------------------

    def request_started(self, handler):
        """A complete request head arrived on ``handler``'s connection: no header timeout any more."""
        conn = self._conns.get(handler)
        if conn is not None and conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def promote(self, handler):
        conn = self._conns.get(handler)
        if conn is None:
            return False
        if conn.state == "anonymous":
            self._leave_anonymous(conn)
            conn.state = "authenticated"
        return True

    def _leave_anonymous(self, conn):
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        mine = self._by_peer.get(conn.key)
        if mine is not None and mine.pop(conn.handler, None) is not None:
            self.anonymous -= 1
            if not mine:
                del self._by_peer[conn.key]

    def _forget(self, handler):
        conn = self._conns.pop(handler, None)
        if conn is not None:
            self._leave_anonymous(conn)


class GuardedSite(web.SockSite):
    """aiohttp's site for a bound socket, accepting through a ``Listener`` (``guard``)."""

    def __init__(self, runner, sock, what, limits=None, **kwargs):
        super().__init__(runner, sock, **kwargs)
        self.what = what
        self.limits = limits or {}
        self.guard = None

    async def start(self):
        await web.BaseSite.start(self)          # registers the site with the runner
        self.guard = self._server = Listener(self._runner.server, self._sock, self.what, **self.limits)
        self.guard.start()
