"""The orchestrator's HTTP API, its web page and the page's live feed (I/O only).

Reads the orchestrator's state (``control``'s registry and jobs, the recent
list); the only things it changes are a worker's drain state (a message to
the worker) and jobs' progress, as the relay reports it.
"""

import asyncio
import json
import logging
import time
from pathlib import Path

from aiohttp import web

from .. import __version__
from ..core import messages, protocol
from ..common import listener
from . import feed, metrics

logger = logging.getLogger("clusterplex.orchestrator")

WEB_DIR = Path(__file__).resolve().parent / "web"
WEB_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "application/javascript"),
             "/style.css": ("style.css", "text/css")}
WEB_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                          "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
FEED_KEEPALIVE = 15.0  # seconds between SSE comments on an idle stream (finds clients that left)
FEED_MAX_CLIENTS = 64
FEED_MAX_PER_PEER = 8      # live streams from one address: one peer cannot lock the page out for the others
BODY_TIMEOUT = 10.0        # seconds a request body may take to arrive


def snapshot(orch):
    """Everything the web page shows, as one JSON text."""
    now = time.monotonic()
    return json.dumps({
        "version": __version__, "time": time.time(), "status": orch.status_line(),
        "clients": len(orch.hub.clients),
        "workers": [w.view() for w in orch.registry],
        "jobs": [j.view(now) for j in orch.jobs.active()],
        "finished": [j.view(now) for j in reversed(orch.jobs.history())][:20],
        "recent": list(reversed(orch.recent.items()))[:50],
    }, separators=(",", ":"))


class Api:
    def __init__(self, orch):
        self.orch = orch

    def add_routes(self, app):
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/v1/workers", self.workers)
        app.router.add_get("/api/v1/jobs", self.jobs)
        app.router.add_post("/api/v1/workers/{name}/{action:drain|resume}", self.drain)
        app.router.add_get("/api/v1/events", self.events)
        app.router.add_get("/api/v1/recent", self.recent)
        app.router.add_post("/api/v1/progress", self.progress)
        app.router.add_get("/metrics", self.exposition)
        for path in WEB_FILES:
            app.router.add_get(path, self.web_file)
        app.router.add_get("/favicon.ico", self.web_file)

    async def health(self, request):
        ready, total = self.orch.registry.counts()
        return web.json_response({"status": "ok", "version": __version__, "workers_ready": ready,
                                  "workers": total, "jobs_active": len(self.orch.jobs.active())})

    async def workers(self, request):
        return web.json_response([w.view() for w in self.orch.registry])

    async def drain(self, request):
        """Stop (or resume) new assignments to a worker; its running jobs finish. Local callers only."""
        if request.remote not in ("127.0.0.1", "::1"):
            return web.json_response({"error": "only from the orchestrator's own host"}, status=403)
        name, action = request.match_info["name"], request.match_info["action"]
        matches = [w for w in self.orch.registry if name in (w.name, w.address_str, w.key)]
        if not matches:
            return web.json_response({"error": f"no worker named {name!r}"}, status=404)
        sent = [w.name or w.address_str for w in matches
                if w.key in self.orch.links and self.orch.links[w.key].post(messages.worker_action(action))]
        if not sent:
            return web.json_response({"error": f"worker {name} is not connected"}, status=409)
        logger.info("%s requested for %s", action, ", ".join(sent))
        return web.json_response({"workers": sent, "action": action})

    async def jobs(self, request):
        now = time.monotonic()
        active = [j.view(now) for j in self.orch.jobs.active()]
        recent = [j.view(now) for j in reversed(self.orch.jobs.history())][:50]
        return web.json_response(active + recent)

    async def recent(self, request):
        """Recent failures, refusals and fallbacks to Plex's own transcoder, newest first."""
        return web.json_response(list(reversed(self.orch.recent.items())))

    async def progress(self, request):
        """The relay reports how far jobs are (their transcoders' progress callbacks). Each report
        carries its job's relay capability, so only someone who has it can set a job's progress."""
        try:
            body = json.loads(await asyncio.wait_for(request.text(), BODY_TIMEOUT))
        except asyncio.TimeoutError:
            return web.json_response({"error": f"request body not sent within {BODY_TIMEOUT:.0f} s"}, status=408)
        except (ValueError, RecursionError):
            return web.json_response({"error": "expected JSON"}, status=400)
        reports = body.get("reports") if isinstance(body, dict) else None
        if not isinstance(reports, list) or len(reports) > 10000:
            return web.json_response({"error": "expected {\"reports\": [...]}"}, status=400)
        accepted = 0
        for r in reports:
            if not isinstance(r, dict):
                continue
            job_id, mac, pct = r.get("job_id"), r.get("mac"), r.get("progress")
            if not (isinstance(mac, str) and mac.isascii()
                    and protocol.check_relay_capability(self.orch.secret, job_id, mac)):
                continue
            if isinstance(pct, bool) or not isinstance(pct, (int, float)) or pct != pct:
                continue
            if self.orch.control.set_progress(job_id, pct):
                accepted += 1
        if accepted:
            self.orch.changed()
        return web.json_response({"accepted": accepted})

    async def exposition(self, request):
        return web.Response(body=self.orch.metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def web_file(self, request):
        if request.path not in WEB_FILES:
            return web.Response(status=204, headers=WEB_HEADERS)       # no icon (browsers ask anyway)
        name, kind = WEB_FILES[request.path]
        try:
            body = (WEB_DIR / name).read_bytes()
        except OSError as e:
            return web.Response(status=404, text=f"web page not installed: {e}\n")
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=WEB_HEADERS)

    async def events(self, request):
        """Server-Sent Events for the web page: a snapshot now, then one after each change."""
        hub = self.orch.hub
        if len(hub.clients) >= FEED_MAX_CLIENTS:
            return web.json_response({"error": "too many live clients"}, status=503)
        peer = listener.peer_key(request.remote or "")
        if hub.count(peer) >= FEED_MAX_PER_PEER:
            self.orch.log_once.warning(("feed", peer), "refused a live stream to %s: %d open from there already",
                                       peer, FEED_MAX_PER_PEER)
            return web.json_response({"error": f"too many live clients from {peer} (at most {FEED_MAX_PER_PEER})"},
                                     status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        client = hub.join(peer)
        try:
            await resp.prepare(request)
            await resp.write(feed.sse("snapshot", snapshot(self.orch)))
            while True:
                try:
                    item = await asyncio.wait_for(client.queue.get(), FEED_KEEPALIVE)
                except asyncio.TimeoutError:
                    item = b": keepalive\n\n"
                if item is None:
                    break
                await resp.write(item)
        except ConnectionError as e:     # the browser went away (aiohttp >= 3.9 notices on writing)
            logger.debug("live client %s: %s", request.remote, e)
        finally:                         # (aiohttp 3.8 cancels the handler instead)
            hub.leave(client)
            logger.debug("live client %s left", request.remote)
        return resp
