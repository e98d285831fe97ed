"""clusterplex-orchestrator: takes jobs from shims, places them on workers.

I/O only; decisions live in ``registry`` (worker state), ``scheduler``
(which worker) and ``jobs`` (job state). Worker *sources* feed the registry:
the static ``workers`` list here, mDNS discovery later; each known worker
gets a ``WorkerLink`` that keeps an authenticated connection to it.
"""

import asyncio
import json
import logging
import socket
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from .. import __version__
from ..core import capabilities, config, protocol
from ..common import daemon, discovery, link
from . import feed, jobs, metrics, registry, scheduler

logger = logging.getLogger("clusterplex.orchestrator")

RECONNECT_MIN = 0.2
RECONNECT_MAX = 5.0
AFFINITY_SIZE = 1000
MAX_RESTARTS = 2
ATTACH_WAIT = 5.0      # how long a re-attaching shim waits for the workers to report its job
WEB_DIR = Path(__file__).resolve().parent / "web"
WEB_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "application/javascript"),
             "/style.css": ("style.css", "text/css")}
WEB_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                          "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
FEED_DELAY = 0.2       # seconds changes are gathered before the web page hears of them
FEED_KEEPALIVE = 15.0  # seconds between SSE comments on an idle stream (finds clients that left)
FEED_MAX_CLIENTS = 64


def _session_key(job):
    """Plex's session key (stable across seeks; the job UUID after it changes)."""
    return job.session.split("/", 1)[0]


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

    def post(self, msg):
        if self.peer is None or self.peer.closed:
            return False
        self.peer.post(msg)
        return True

    async def run(self):
        delay = RECONNECT_MIN
        while True:
            reason = await self._session()
            self.orch.worker_lost(self.key, reason)
            if reason.startswith("connected"):
                delay = RECONNECT_MIN
            await asyncio.sleep(delay)       # reconnect backoff
            delay = min(RECONNECT_MAX, delay * 2)

    async def _session(self):
        orch = self.orch
        try:
            ws, _info = await link.connect(orch.http, self.url, orch.secret, protocol.ROLE_ORCHESTRATOR,
                                           protocol.ROLE_WORKER, orch.cfg.heartbeat_interval, 5.0)
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


class ShimSession:
    """One shim connection, carrying one job."""

    def __init__(self, peer):
        self.peer = peer
        self.job = None
        self.mode = ""              # the shim's mode (pms.yaml), as it said in its submission
        self.busy = False           # an attach or probe is being answered
        self.gone = False           # the connection ended


class Orchestrator:
    def __init__(self, cfg, config_path, notifier):
        self.cfg = cfg
        self.notifier = notifier
        self.secret = None
        self.registry = registry.WorkerRegistry()
        self.jobs = jobs.JobTable()
        self.sched = scheduler.SchedulerState()
        self.links = {}
        self.shims = {}             # job id -> ShimSession
        self.queue = {}             # job id -> timer, jobs waiting for a free worker (FIFO)
        self.affinity = {}          # Plex session key -> worker key that ran it last
        self.adoption = {}          # job id -> asyncio.Event, shims waiting for a worker to report their job
        self.probes = {}            # probe id -> {worker key: Future}, `clusterplex doctor` probes in flight
        self.stopping = False
        self.http = None
        self.mdns = None
        self.watch = None
        self.announcement = None
        self.ignored = {}           # mDNS name -> why it is not used
        self.listen_address = ""
        self.log_once = daemon.LogOnce(logger)
        self.metrics = metrics.OrchestratorMetrics(self)
        self.recent = feed.Recent()           # failures and local fallbacks, for the web page
        self.hub = feed.Hub()                 # the web page's live streams
        self._feed_timer = None
        self._runner = None
        self._tasks = set()

    # --- lifecycle -------------------------------------------------------------

    async def start(self):
        self.secret = config.load_secret(self.cfg.secret_file)
        self.http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/v1/workers", self.api_workers)
        app.router.add_get("/api/v1/jobs", self.api_jobs)
        app.router.add_get(protocol.SHIM_PATH, self.shim)
        app.router.add_post("/api/v1/workers/{name}/{action:drain|resume}", self.api_drain)
        app.router.add_get("/api/v1/events", self.api_events)
        app.router.add_get("/api/v1/recent", self.api_recent)
        app.router.add_post("/api/v1/progress", self.api_progress)
        app.router.add_get("/metrics", self.api_metrics)
        for path in WEB_FILES:
            app.router.add_get(path, self.web_file)
        app.router.add_get("/favicon.ico", self.web_file)
        host, port = self.cfg.listen
        self._runner, self.listen_address = await daemon.serve(app, host, port, "shims and the API")
        for host, port in self.cfg.workers:
            self.add_worker(f"static:{config.format_hostport(host, port)}", (host, port), "static")
        if self.cfg.discovery.enabled:
            await self._start_discovery()
        self._update_status()

    async def _start_discovery(self):
        ifaces = self.cfg.discovery.interfaces
        self.mdns = await discovery.open_mdns(ifaces)
        self.watch = discovery.Watch(self.mdns, discovery.WORKER_TYPE, self._mdns_up, self._mdns_down)
        await self.watch.start()
        host, port = config.parse_hostport(self.listen_address)
        fp = protocol.secret_fingerprint(self.secret)
        self.announcement = discovery.Announcement(
            self.mdns, discovery.ORCHESTRATOR_TYPE, f"clusterplex-orchestrator-{socket.gethostname()}", port,
            discovery.local_addresses(ifaces, host), discovery.orchestrator_txt(fp, __version__))
        await self.announcement.register()

    def _mdns_up(self, name, host, port, txt):
        """A worker announced itself (or changed its record)."""
        fp = protocol.secret_fingerprint(self.secret)
        if txt.get("fp") != fp:
            why = "not joined to any cluster" if not txt.get("fp") else "belongs to another cluster"
            if self.ignored.get(name) != why:
                logger.info("ignoring worker %s at %s:%d: %s", txt.get("name") or discovery.instance(name), host,
                            port, why)
                self.ignored[name] = why
                self._update_status()
            return
        if self.ignored.pop(name, None) is not None:
            self._update_status()
        key = f"mdns:{name}"
        for w in self.registry:
            if w.address == (host, port) and w.key != key:
                return       # already known (static entry)
        rec = self.registry.get(key)
        if rec is not None and rec.address != (host, port):
            logger.info("worker %s moved to %s:%d", rec.name or discovery.instance(name), host, port)
        self.add_worker(key, (host, port), "mdns")

    def _mdns_down(self, name):
        if self.ignored.pop(name, None) is not None:
            self._update_status()
        key = f"mdns:{name}"
        rec = self.registry.get(key)
        if rec is not None:
            logger.info("worker %s said goodbye", rec.name or discovery.instance(name))
            self.remove_worker(key, "announced goodbye")
            self._update_status()

    async def shutdown(self):
        self.stopping = True        # running jobs stay with their workers; shims re-attach to the next us
        if self.announcement is not None:
            await self.announcement.withdraw()
        if self.watch is not None:
            await self.watch.close()
        for ln in list(self.links.values()):
            ln.task.cancel()
        self.hub.close()            # ends the web page's streams
        if self._feed_timer is not None:
            self._feed_timer.cancel()
        for sess in list(self.shims.values()):
            await sess.peer.flush_and_close(code=1001, message=b"orchestrator stopping")
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http is not None:
            await self.http.close()

    def status_line(self):
        ready, total = self.registry.counts()
        others = {}
        for w in self.registry:
            if w.state != registry.READY:
                others[w.state] = others.get(w.state, 0) + 1
        running = sum(1 for j in self.jobs.active() if j.state == jobs.RUNNING)
        states = "".join(f", {n} {state}" for state, n in sorted(others.items()))
        if self.ignored:
            states += f", {len(self.ignored)} ignored"
        waiting = f", {len(self.queue)} waiting for a worker" if self.queue else ""
        return f"{ready} of {total} workers ready{states}, {running} job{'' if running == 1 else 's'} running{waiting}"

    def _update_status(self):
        self.notifier.status(self.status_line())
        self._changed()

    def _changed(self):
        """Something the web page shows changed: send it a snapshot soon (changes are gathered)."""
        if self._feed_timer is None and self.hub.clients and not self.hub.closed:
            self._feed_timer = asyncio.get_running_loop().call_later(FEED_DELAY, self._publish)

    def _publish(self):
        self._feed_timer = None
        self.hub.publish(feed.sse("snapshot", self._snapshot()))

    def _snapshot(self):
        now = time.monotonic()
        return json.dumps({
            "version": __version__, "time": time.time(), "status": self.status_line(),
            "clients": len(self.hub.clients),
            "workers": [w.view() for w in self.registry],
            "jobs": [j.view(now) for j in self.jobs.active()],
            "finished": [j.view(now) for j in reversed(self.jobs.history())][:20],
            "recent": list(reversed(self.recent.items()))[:50],
        }, separators=(",", ":"))

    def _note(self, kind, job, reason):
        """A failure or a fallback to remember for the web page (and the journal at debug level)."""
        self.recent.add(kind, job, reason, time.time())
        self._changed()

    # --- worker sources --------------------------------------------------------

    def add_worker(self, key, address, source):
        rec, created = self.registry.add(key, address, source)
        if created:
            ln = self.links[key] = WorkerLink(self, rec)
            ln.task = asyncio.get_running_loop().create_task(ln.run())
            logger.info("worker %s added (%s)", rec.address_str, source)
        return rec

    def remove_worker(self, key, reason):
        ln = self.links.pop(key, None)
        if ln is not None:
            ln.task.cancel()
        self.worker_lost(key, reason)
        self.registry.remove(key)

    # --- worker events -----------------------------------------------------------

    def on_worker_message(self, key, msg):
        now = time.monotonic()
        kind = msg["type"]
        if kind == "status":
            before = self.registry.get(key).state
            rec = self.registry.update_status(key, msg, now)
            if rec.state != before:
                logger.info("worker %s (%s) is %s%s", rec.name, rec.address_str, rec.state,
                            f": {rec.reason}" if rec.reason else "")
            self._adopt(key, rec, msg.get("jobs"), now)
            self._update_status()
            self._drain_queue()
            return
        if kind == "probe_result":
            self._probe_result(key, msg)
            return
        if kind == "load":
            self.registry.update_load(key, msg, now)
            self._changed()
            return
        if kind == "exit" and isinstance(msg.get("job_id"), str):
            # The worker holds an exit until we confirm it: one sent into a connection that was
            # dying (our crash) goes to the next orchestrator instead of being lost.
            self.links[key].post({"type": "exit_ack", "job_id": msg["job_id"]})
        job = self.jobs.get(msg.get("job_id"))
        if job is None or job.worker != key:
            logger.debug("worker %s: %s for unknown job %r", key, kind, msg.get("job_id"))
            return
        sess = self.shims.get(job.id)
        if kind == "out":
            if sess and msg.get("fd") in (1, 2) and isinstance(msg.get("data"), str):
                sess.peer.post({"type": "out", "fd": msg["fd"], "data": msg["data"]})
        elif kind == "started":
            if job.state == jobs.ASSIGNED and job.restarts == 0:
                self.metrics.dispatched(now - job.created)
            job.started(msg.get("pid"), now)
            logger.info("job %s running on %s (pid %s), dispatch %.1f ms", job.id[:8], job.worker_name,
                        job.pid, (now - job.created) * 1000)
            if sess:
                sess.peer.post({"type": "started", "worker": job.worker_name, "pid": job.pid})
            self._update_status()
        elif kind == "exit":
            code = msg.get("code") if isinstance(msg.get("code"), int) else 1
            sig = msg.get("signal") if isinstance(msg.get("signal"), int) else None
            self.registry.release(key, job.id)
            ran = now - job.started_at if job.started_at is not None else None
            if job.state == jobs.CANCELLED:
                self.metrics.outcome(metrics.CANCELLED, ran)
            else:
                job.exited(code, sig, now)
                if code == 0 and not sig:
                    self.metrics.outcome(metrics.REMOTE_OK, ran)
                else:
                    self.metrics.outcome(metrics.REMOTE_FAILED, ran)
                    self._note(feed.REMOTE_FAILED, job, f"transcoder on {job.worker_name} ended with " +
                               (f"signal {sig}" if sig else f"exit code {code}"))
            logger.info("job %s on %s ended with %s", job.id[:8], job.worker_name,
                        f"signal {sig}" if sig else f"exit code {code}")
            self.jobs.finish(job)
            if sess:
                sess.peer.post({"type": "exit", "code": code, "signal": sig})
            self._update_status()
            self._drain_queue()
        elif kind == "refused":
            reason = str(msg.get("reason") or "refused")[:1000]
            logger.warning("worker %s refused job %s: %s", job.worker_name, job.id[:8], reason)
            self.registry.release(key, job.id)
            if job.state != jobs.ASSIGNED:
                if job.state == jobs.CANCELLED:
                    self.metrics.outcome(metrics.CANCELLED)
                self.jobs.finish(job)
                return
            self.metrics.refused(job.worker_name)
            self._note(feed.REFUSED, job, f"{job.worker_name} refused it: {reason}")
            job.refused(reason)
            self.dispatch(job)
            self._drain_queue()

    def _adopt(self, key, rec, reported, now):
        """Jobs a worker runs that we do not know: a previous orchestrator started them. Take them
        over (the worker replays what we missed) so their shims can re-attach."""
        if not isinstance(reported, list):
            return
        for item in reported:
            if not isinstance(item, dict):
                continue
            try:
                spec = protocol.check_job({"id": item.get("id"), "argv": [], "cwd": "/", "env": {},
                                           "session": item.get("session", "")})
            except protocol.ProtocolError:
                continue
            known = self.jobs.get(spec["id"]) or self.jobs.finished(spec["id"])
            if known is not None:
                if item.get("state") == "running" and (known.final or known.worker != key):
                    # It moved on (failover) or ended while this worker was cut off: fence the copy.
                    logger.warning("job %s still runs on %s, which was cut off; stopping that copy",
                                   spec["id"][:8], rec.name or rec.address_str)
                    self.links[key].post({"type": "cancel", "job_id": spec["id"]})
                continue
            job = jobs.Job(spec, now)
            job.adopted = True
            job.assign(key, rec.name or rec.address_str, now)
            job.started(item.get("pid") if isinstance(item.get("pid"), int) else None, now)
            job.decision = f"{job.worker_name}: adopted after an orchestrator restart"
            self.jobs.add(job)
            self.registry.assign(key, job.id, now)
            self.links[key].post({"type": "attach", "job_id": job.id})
            logger.info("job %s adopted from worker %s (session %s)", job.id[:8], job.worker_name, job.session or "-")
            waiter = self.adoption.pop(job.id, None)
            if waiter is not None:
                waiter.set()

    def worker_lost(self, key, reason):
        rec = self.registry.disconnected(key, reason)
        if rec is None:
            return
        now = time.monotonic()
        for job in self.jobs.on_worker(key):
            self.registry.release(key, job.id)
            if job.state == jobs.ASSIGNED:
                job.refused(f"connection to worker lost before start ({reason})")
                self.dispatch(job)
            elif job.state == jobs.RUNNING and job.restarts < MAX_RESTARTS:
                lost = f"worker {job.worker_name} lost while running the job ({reason})"
                logger.warning("job %s: %s; starting it again elsewhere", job.id[:8], lost)
                self.metrics.outcome(metrics.RESUMED)
                self._note(feed.RESUMED, job, lost + "; continuing from the last segment")
                job.lost(lost)
                job.spec = dict(job.spec, resume=True)     # the next worker continues from the last segment
                sess = self.shims.get(job.id)
                if sess:
                    sess.peer.post({"type": "failover", "reason": lost})
                self.dispatch(job)
            else:
                if job.state == jobs.CANCELLED:
                    self.metrics.outcome(metrics.CANCELLED)
                if job.state == jobs.RUNNING:
                    self.metrics.outcome(metrics.REMOTE_FAILED, now - job.started_at)
                    self._note(feed.REMOTE_FAILED, job, f"worker {job.worker_name} lost while running the job "
                                                        f"({reason}), moved {job.restarts} times already")
                    job.fail(f"worker {job.worker_name} lost while running the job", now)
                    sess = self.shims.get(job.id)
                    if sess:
                        sess.peer.post({"type": "failed", "reason": job.reason, "started": True,
                                        "fallback": False})
                self.jobs.finish(job)
        self._update_status()

    # --- dispatch ------------------------------------------------------------------

    def dispatch(self, job):
        """Place ``job`` on the best worker now; if every capable worker is full, queue it for
        up to ``queue_timeout``; otherwise tell the shim no worker can take it."""
        now = time.monotonic()
        sess = self.shims.get(job.id)
        while True:
            decision = scheduler.choose(self.cfg.strategy, self.registry, self.sched, now, needs=job.needs,
                                        exclude=job.excluded, prefer=self.affinity.get(_session_key(job)))
            rec = decision.worker
            if rec is None:
                break
            job.assign(rec.key, rec.name or rec.address_str, now)
            job.decision = decision.reason
            self.registry.assign(rec.key, job.id, now)
            self._changed()
            if self.links[rec.key].post({"type": "start", "job": job.spec}):
                logger.info("job %s -> %s", job.id[:8], decision.reason)
                if _session_key(job):
                    self.affinity[_session_key(job)] = rec.key
                    while len(self.affinity) > AFFINITY_SIZE:
                        self.affinity.pop(next(iter(self.affinity)))
                if sess:
                    sess.peer.post({"type": "assigned", "worker": job.worker_name, "address": rec.address_str,
                                    "reason": decision.reason})
                return
            self.registry.release(rec.key, job.id)
            job.refused("connection to worker lost")
        if decision.waitable and self.cfg.queue_timeout > 0 and job.id not in self.queue:
            logger.info("job %s waits up to %ss for a free worker: %s", job.id[:8], self.cfg.queue_timeout,
                        decision.reason)
            self.queue[job.id] = asyncio.get_running_loop().call_later(
                self.cfg.queue_timeout, self._queue_expired, job, decision.reason)
            self._update_status()
            return
        if job.id in self.queue:
            return                      # still waiting; its timer decides
        self._no_worker(job, decision.reason)

    def _no_worker(self, job, reason):
        if job.tried:
            reason = f"no worker could start the job: {job.refusal_summary()}"
        logger.warning("job %s: %s", job.id[:8], reason)
        moved = job.restarts > 0
        job.fail(reason, time.monotonic())
        self.jobs.finish(job)
        self.metrics.outcome(metrics.NO_WORKER)
        self._note(feed.NO_WORKER, job, reason)
        sess = self.shims.get(job.id)
        if sess and sess.mode == "both":
            # The shim runs Plex's own transcoder now (from the last segment if the job had moved).
            self.metrics.outcome(metrics.FELL_BACK_LOCAL)
            self._note(feed.FELL_BACK_LOCAL, job, "Plex's own transcoder on the Plex host runs it" +
                       (", from the last segment" if moved else "") + f": {reason}")
        if sess:
            # A job whose worker died and that no other worker can take: the shim's mode decides,
            # and a local run continues from the last segment.
            sess.peer.post({"type": "failed", "reason": reason, "started": moved, "fallback": True,
                            "resume": moved})

    def _queue_expired(self, job, reason):
        if self.queue.pop(job.id, None) is not None and job.state == jobs.PENDING:
            self._no_worker(job, f"{reason} (waited {self.cfg.queue_timeout}s)")
        self._update_status()

    def _drain_queue(self):
        """Capacity may have freed up: retry queued jobs, oldest first."""
        for job_id in list(self.queue):
            job = self.jobs.get(job_id)
            if job is None or job.state != jobs.PENDING:
                self.queue.pop(job_id).cancel()
                continue
            decision = scheduler.choose(self.cfg.strategy, self.registry, self.sched, time.monotonic(),
                                        needs=job.needs, exclude=job.excluded)
            if decision.worker is None:
                return                  # keep FIFO order: nobody jumps the queue
            self.queue.pop(job_id).cancel()
            self.dispatch(job)
            self._update_status()

    # --- shim connections -----------------------------------------------------------

    async def shim(self, request):
        ws, ok = await link.accept(request, self.secret, protocol.ROLE_ORCHESTRATOR, (protocol.ROLE_SHIM,),
                                   {"version": __version__}, self.log_once,
                                   heartbeat=max(1.0, self.cfg.heartbeat_interval))
        if not ok:
            return ws
        peer = link.Peer(ws, request.remote or "?")
        sess = ShimSession(peer)
        try:
            async for msg in link.messages(ws, peer.name, self.log_once):
                if msg["type"] == "submit" and sess.job is None:
                    sess.mode = msg.get("mode") if msg.get("mode") in ("both", "remote") else ""
                    self._submit(sess, msg.get("job"))
                # attach and probe wait (for workers): answered beside the loop, which must keep
                # reading or the connection's heartbeat fails and the shim sees us vanish again
                elif msg["type"] == "attach" and sess.job is None and not sess.busy:
                    self._spawn(self._answer(sess, self._attach(sess, msg.get("job_id"))))
                elif msg["type"] == "cancel" and sess.job is not None:
                    self._cancel(sess.job, "cancelled by the shim")
                elif msg["type"] == "probe" and sess.job is None and not sess.busy:
                    self._spawn(self._answer(sess, self._probe(sess, msg.get("probe"))))
                else:
                    self.log_once.warning(("shimmsg", peer.name), "unexpected %r from shim at %s",
                                          msg["type"], peer.name)
        finally:
            sess.gone = True
            if sess.job is not None and self.shims.get(sess.job.id) is sess:
                self.shims.pop(sess.job.id, None)
                if not sess.job.final and not self.stopping:
                    self._cancel(sess.job, "shim went away (PMS stopped the transcode)")
            peer.abort()
        return ws

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _answer(sess, coro):
        sess.busy = True
        try:
            await coro
        finally:
            sess.busy = False

    async def _probe(self, sess, raw):
        """`clusterplex doctor`: every connected worker checks what jobs need there (media, transcode
        root, relay, codecs, uid, clock); one answer with all results, or why a worker gave none."""
        try:
            probe = protocol.check_probe(raw)
        except protocol.ProtocolError as e:
            sess.peer.post({"type": "probe_results", "error": str(e), "workers": [], "clock": time.time()})
            return
        probe_id = protocol.new_nonce()
        waiting = self.probes[probe_id] = {}
        entries = {}
        for rec in self.registry:
            entries[rec.key] = {"name": rec.name or rec.address_str, "address": rec.address_str, "state": rec.state,
                                "reason": rec.reason}
            ln = self.links.get(rec.key)
            if ln is not None and ln.post({"type": "probe", "probe_id": probe_id, "probe": probe}):
                waiting[rec.key] = asyncio.get_running_loop().create_future()
            else:
                entries[rec.key]["error"] = f"not connected ({rec.reason})"
        logger.info("doctor probe from %s: asking %d worker(s)", sess.peer.name, len(waiting))
        try:
            if waiting:
                await asyncio.wait(list(waiting.values()), timeout=probe["timeout"])
        finally:
            self.probes.pop(probe_id, None)
        for key, fut in waiting.items():
            if fut.done():
                entries[key].update(fut.result())
            else:
                entries[key]["error"] = f"no answer within {probe['timeout']:g} s"
        sess.peer.post({"type": "probe_results", "workers": list(entries.values()), "clock": time.time()})

    def _probe_result(self, key, msg):
        probe_id = msg.get("probe_id")
        fut = self.probes.get(probe_id, {}).get(key) if isinstance(probe_id, str) else None
        if fut is None or fut.done():
            return
        try:
            fut.set_result({"result": protocol.check_probe_result(msg.get("result")), "received": time.time()})
        except protocol.ProtocolError as e:
            fut.set_result({"error": f"malformed probe result: {e}"})

    def _submit(self, sess, raw):
        try:
            spec = protocol.check_job(raw)
        except protocol.ProtocolError as e:
            sess.peer.post({"type": "failed", "reason": f"malformed job: {e}", "started": False, "fallback": True})
            return
        job = jobs.Job(spec, time.monotonic())
        try:
            self.jobs.add(job)
        except KeyError:
            sess.peer.post({"type": "failed", "reason": "duplicate job id", "started": False, "fallback": False})
            return
        job.needs = capabilities.needs(spec["argv"])
        self.metrics.posted()
        sess.job = job
        self.shims[job.id] = sess
        logger.info("job %s submitted (session %s; %s)", job.id[:8], job.session or "-", job.needs.describe())
        key = _session_key(job)
        if key:
            for old in self.jobs.active():
                if old is not job and not old.final and _session_key(old) == key:
                    self._cancel(old, f"superseded by job {job.id[:8]} of the same Plex session")
        self.dispatch(job)

    async def _attach(self, sess, job_id):
        """A shim lost us (we restarted) and comes back for its job."""
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None and isinstance(job_id, str) and self.jobs.finished(job_id) is None:
            waiter = self.adoption.setdefault(job_id, asyncio.Event())
            try:
                await asyncio.wait_for(waiter.wait(), ATTACH_WAIT)
            except asyncio.TimeoutError:
                self.adoption.pop(job_id, None)
            job = self.jobs.get(job_id)
        if sess.gone:
            return                  # the shim gave up on this connection meanwhile (it comes back on another)
        if job is None:
            done = self.jobs.finished(job_id) if isinstance(job_id, str) else None
            if done is not None and done.state == jobs.EXITED:
                sess.peer.post({"type": "exit", "code": done.exit_code, "signal": done.signal})
            else:
                sess.peer.post({"type": "failed", "reason": "no worker reports this job (it was lost)",
                                "started": done is not None, "fallback": done is None})
            return
        sess.job = job
        self.shims[job.id] = sess
        logger.info("job %s: shim re-attached", job.id[:8])
        sess.peer.post({"type": "attached", "worker": job.worker_name})

    def _cancel(self, job, why):
        now = time.monotonic()
        logger.info("job %s: %s", job.id[:8], why)
        timer = self.queue.pop(job.id, None)
        if timer is not None:
            timer.cancel()
            self._update_status()
        if job.worker is not None and self.links.get(job.worker) and self.links[job.worker].post(
                {"type": "cancel", "job_id": job.id}):
            job.cancel(now)   # stays active until the worker reports the exit
            return
        if job.worker is not None:
            self.registry.release(job.worker, job.id)
        job.cancel(now)
        self.jobs.finish(job)
        self.metrics.outcome(metrics.CANCELLED)
        self._changed()

    # --- HTTP API ------------------------------------------------------------------

    async def health(self, request):
        ready, total = self.registry.counts()
        return web.json_response({"status": "ok", "version": __version__, "workers_ready": ready,
                                  "workers": total, "jobs_active": len(self.jobs.active())})

    async def api_workers(self, request):
        return web.json_response([w.view() for w in self.registry])

    async def api_drain(self, request):
        """Stop (or resume) new assignments to a worker; its running jobs finish. Local callers only."""
        if request.remote not in ("127.0.0.1", "::1"):
            return web.json_response({"error": "only from the orchestrator's own host"}, status=403)
        name, action = request.match_info["name"], request.match_info["action"]
        matches = [w for w in self.registry if name in (w.name, w.address_str, w.key)]
        if not matches:
            return web.json_response({"error": f"no worker named {name!r}"}, status=404)
        sent = [w.name or w.address_str for w in matches if self.links[w.key].post({"type": action})]
        if not sent:
            return web.json_response({"error": f"worker {name} is not connected"}, status=409)
        logger.info("%s requested for %s", action, ", ".join(sent))
        return web.json_response({"workers": sent, "action": action})

    async def api_jobs(self, request):
        now = time.monotonic()
        active = [j.view(now) for j in self.jobs.active()]
        recent = [j.view(now) for j in reversed(self.jobs.history())][:50]
        return web.json_response(active + recent)

    async def api_recent(self, request):
        """Recent failures, refusals and fallbacks to Plex's own transcoder, newest first."""
        return web.json_response(list(reversed(self.recent.items())))

    async def api_progress(self, request):
        """The relay reports how far jobs are (their transcoders' progress callbacks). Each report
        carries its job's relay capability, so only someone who has it can set a job's progress."""
        try:
            body = json.loads(await request.text())
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
                    and protocol.check_relay_capability(self.secret, job_id, mac)):
                continue
            if isinstance(pct, bool) or not isinstance(pct, (int, float)) or pct != pct:
                continue
            job = self.jobs.get(job_id)
            if job is not None and not job.final:
                job.progress = round(min(100.0, max(0.0, float(pct))), 1)
                accepted += 1
        if accepted:
            self._changed()
        return web.json_response({"accepted": accepted})

    async def api_metrics(self, request):
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def web_file(self, request):
        if request.path not in WEB_FILES:
            return web.Response(status=204, headers=WEB_HEADERS)       # no icon (browsers ask anyway)
        name, kind = WEB_FILES[request.path]
        try:
            body = (WEB_DIR / name).read_bytes()
        except OSError as e:
            return web.Response(status=404, text=f"web page not installed: {e}\n")
        return web.Response(body=body, content_type=kind, charset="utf-8", headers=WEB_HEADERS)

    async def api_events(self, request):
        """Server-Sent Events for the web page: a snapshot now, then one after each change."""
        if len(self.hub.clients) >= FEED_MAX_CLIENTS:
            return web.json_response({"error": "too many live clients"}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        client = self.hub.join()
        try:
            await resp.prepare(request)
            await resp.write(feed.sse("snapshot", self._snapshot()))
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
            self.hub.leave(client)
            logger.debug("live client %s left", request.remote)
        return resp


def main(argv=None):
    return daemon.main("clusterplex-orchestrator", "orchestrator", Orchestrator, argv)

