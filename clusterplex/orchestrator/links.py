"""The orchestrator's connections to its workers: one ``WorkerLink`` each (I/O only).

A link connects and authenticates, feeds what the worker says to the
orchestrator (``on_worker_message``), tells it when the connection ends
(``on_worker_lost``, with the reason) and reconnects with backoff.
"""

import asyncio
import logging

import aiohttp

from ..core import protocol
from ..common import link

logger = logging.getLogger("clusterplex.orchestrator")

RECONNECT_MIN = 0.2
RECONNECT_MAX = 5.0
CONNECT_TIMEOUT = 5.0


class WorkerLink:
    """Keeps one authenticated connection to a worker, reconnecting with backoff."""

    def __init__(self, orch, rec):
        self.orch = orch
        self.key = rec.key
        self.rec = rec
        self.peer = None
        self.task = None

    @property
    def url(self):
        return f"http://{self.rec.address_str}{protocol.CONTROL_PATH}"

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self):
        if self.task is not None:
            self.task.cancel()

    def post(self, msg):
        """Queue ``msg`` for the worker; False if not connected (then the loss is reported soon)."""
        if self.peer is None or self.peer.closed:
            return False
        self.peer.post(msg)
        return True

    async def run(self):
        delay = RECONNECT_MIN
        while True:
            reason = await self._session()
            self.orch.on_worker_lost(self.key, reason)
            if reason.startswith("connected"):
                delay = RECONNECT_MIN
            await asyncio.sleep(delay)       # reconnect backoff
            delay = min(RECONNECT_MAX, delay * 2)

    async def _session(self):
        orch = self.orch
        try:
            ws, _info = await link.connect(orch.http, self.url, orch.secret, protocol.ROLE_ORCHESTRATOR,
                                           protocol.ROLE_WORKER, orch.cfg.heartbeat_interval, CONNECT_TIMEOUT)
        except protocol.AuthError as e:
            orch.log_once.warning(("auth", self.key), "worker %s refused us or failed authentication: %s",
                                  self.rec.address_str, e)
            return f"authentication failed: {e}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            orch.log_once.warning(("conn", self.key), "cannot connect to worker %s: %s",
                                  self.rec.address_str, e or type(e).__name__)
            return f"unreachable: {e or type(e).__name__}"
        self.peer = link.Peer(ws, self.rec.address_str)
        logger.info("connected to worker %s", self.rec.address_str)
        try:
            async for msg in link.messages(ws, self.rec.address_str, orch.log_once):
                orch.on_worker_message(self.key, msg)
        finally:
            self.peer.abort()
            self.peer = None
            if not ws.closed:
                await ws.close()
        return f"connected, then lost (close code {ws.close_code})"
