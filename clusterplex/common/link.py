"""Authenticated WebSocket links between daemons (aiohttp side of protocol.py)."""

import asyncio
import logging

import aiohttp
from aiohttp import web

from ..core import protocol
from ..core.messages import refused
from . import listener

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 5.0


class LinkClosed(Exception):
    pass


async def accept(request, secret, role, accept_roles, info, log_once, heartbeat=None):
    """Server side: upgrade and authenticate the peer.

    Returns ``(ws, ok)``: the handler returns ``ws`` in any case; when ``ok``
    is False the connection has been refused and closed.
    """
    ws = web.WebSocketResponse(max_msg_size=protocol.MAX_MESSAGE, heartbeat=heartbeat, autoping=True)
    await ws.prepare(request)
    peer = request.remote or "?"
    if secret is None:
        await ws.send_str(protocol.encode(refused("this node has no cluster secret yet (not joined)")))
        await ws.close(code=protocol.CLOSE_AUTH_FAILED, message=b"not joined")
        log_once.warning(("nosecret", peer), "refused %s from %s: no cluster secret configured here", role, peer)
        return ws, False
    hs = protocol.ServerHandshake(secret, role, accept_roles)
    try:
        await ws.send_str(protocol.encode(hs.hello()))
        msg = await asyncio.wait_for(ws.receive(), HANDSHAKE_TIMEOUT)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise protocol.AuthError("connection closed during handshake")
        peer_role, welcome = hs.check(protocol.decode(msg.data), info)
    except (protocol.ProtocolError, asyncio.TimeoutError) as e:
        reason = str(e) or "handshake timed out"
        log_once.warning(("auth", peer), "refused unauthenticated connection from %s: %s", peer, reason)
        if not ws.closed:
            try:
                await ws.send_str(protocol.encode(refused("authentication failed")))
            except ConnectionError:
                pass
            await ws.close(code=protocol.CLOSE_AUTH_FAILED, message=b"authentication failed")
        return ws, False
    await ws.send_str(protocol.encode(welcome))
    listener.authenticated(request)          # no longer counted (nor pushed out) with anonymous connections
    logger.debug("authenticated %s from %s", peer_role, peer)
    return ws, True


def _close_timeout(seconds):
    """ws_connect's close timeout: a float up to aiohttp 3.9, ClientWSTimeout since (float deprecated)."""
    if hasattr(aiohttp, "ClientWSTimeout"):
        return {"timeout": aiohttp.ClientWSTimeout(ws_close=seconds)}
    return {"timeout": seconds}


async def connect(session, url, secret, role, expect_role, heartbeat, timeout):
    """Client side: connect and authenticate; return (ws, peer info). Raises on failure."""
    ws = await session.ws_connect(url, heartbeat=heartbeat, autoping=True, max_msg_size=protocol.MAX_MESSAGE,
                                  autoclose=True, **_close_timeout(timeout))
    try:
        hs = protocol.ClientHandshake(secret, role, expect_role)
        hello = await _receive(ws, timeout)
        await ws.send_str(protocol.encode(hs.on_hello(hello)))
        info = hs.on_welcome(await _receive(ws, timeout))
    except BaseException:
        await ws.close()
        raise
    return ws, info


async def _receive(ws, timeout):
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise protocol.AuthError(f"peer closed the connection during the handshake"
                                 f"{' (' + ws.close_code.__str__() + ')' if ws.close_code else ''}")
    return protocol.decode(msg.data)


async def messages(ws, peer, log_once):
    """Yield decoded messages until the connection closes; malformed ones are logged and skipped."""
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            try:
                yield protocol.decode(msg.data)
            except protocol.ProtocolError as e:
                log_once.warning(("proto", peer), "ignoring malformed message from %s: %s", peer, e)
        elif msg.type == aiohttp.WSMsgType.ERROR:
            logger.debug("connection to %s failed: %s", peer, ws.exception())
            return
        else:
            log_once.warning(("binary", peer), "ignoring non-text frame from %s", peer)


async def send(ws, msg):
    """Send one message; False if the connection is gone."""
    if ws.closed:
        return False
    try:
        await ws.send_str(protocol.encode(msg))
        return True
    except (ConnectionError, RuntimeError):
        return False


class Peer:
    """An authenticated connection with an ordered outbox.

    ``post`` never blocks the caller (callbacks from process output, other
    links): a writer task drains the queue in order.
    """

    def __init__(self, ws, name):
        self.ws = ws
        self.name = name
        self._queue = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    @property
    def closed(self):
        return self.ws.closed

    def post(self, msg):
        if not self.ws.closed:
            self._queue.put_nowait(msg)

    async def _write(self):
        while True:
            msg = await self._queue.get()
            if msg is None or not await send(self.ws, msg):
                return

    async def flush_and_close(self, code=1000, message=b""):
        """Send what is queued, then close."""
        self._queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._writer), 2.0)
        except asyncio.TimeoutError:
            self._writer.cancel()
        await self.ws.close(code=code, message=message)

    def abort(self):
        self._writer.cancel()
