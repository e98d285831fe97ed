"""clusterplex-orchestrator: takes jobs from shims, places them on workers (the aiohttp shell).

Every decision is ``control``'s: this module feeds it events (shim
connections and their messages, worker sources, what the workers' links
report, the time) and carries out the effects it returns, arming one loop
timer for ``control.next_deadline()``. Workers come from the static
``workers`` list and from mDNS discovery; each gets a ``links.WorkerLink``.
``api`` serves the HTTP API and the web page; the doctor's probes are
answered here.
"""

import asyncio
import logging
import socket
import time

import aiohttp
from aiohttp import web

from .. import __version__
from ..core import config, messages, protocol
from ..common import daemon, discovery, link
from . import api, control, effects, feed, live, links, metrics

logger = logging.getLogger("clusterplex.orchestrator")

FEED_DELAY = 0.2       # seconds changes are gathered before the web page hears of them
CHANGED, STATUS = "changed", "status"    # what carrying out an effect changed


class Orchestrator:
    def __init__(self, cfg, config_path, notifier):
        self.cfg = cfg
        self.notifier = notifier
        self.secret = None
        self.control = control.Control(cfg.strategy, cfg.queue_timeout)
        self.links = {}             # worker key -> links.WorkerLink
        self.probes = {}            # probe id -> {worker key: Future}, `clusterplex doctor` probes in flight
        self.http = None
        self.mdns = None
        self.watch = None
        self.announcement = None
        self.ignored = {}           # mDNS name -> why it is not used
        self.listen_address = ""
        self.log_once = daemon.LogOnce(logger)
        self.metrics = metrics.OrchestratorMetrics(self)
        self.recent = feed.Recent()           # failures and local fallbacks, for the web page
        self.hub = live.Hub()                 # the web page's live streams
        self._feed_timer = None
        self._deadline = None                 # what the tick timer is armed for
        self._tick_timer = None
        self._runner = None
        self._tasks = set()

    # what the metrics and the API read
    @property
    def registry(self):
        return self.control.registry

    @property
    def jobs(self):
        return self.control.jobs

    @property
    def shims(self):
        return self.control.shims

    @property
    def queue(self):
        return self.control.queue

    # --- lifecycle -------------------------------------------------------------

    async def start(self):
        self.secret = config.load_secret(self.cfg.secret_file)
        self.http = aiohttp.ClientSession()
        app = web.Application()
        api.Api(self).add_routes(app)
        app.router.add_get(protocol.SHIM_PATH, self.shim)
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
            self._do(self.control.worker_removed(key, "announced goodbye", time.monotonic()))

    async def shutdown(self):
        self._do(self.control.stop())   # running jobs stay with their workers; shims re-attach to the next us
        if self.announcement is not None:
            await self.announcement.withdraw()
        if self.watch is not None:
            await self.watch.close()
        for ln in list(self.links.values()):
            ln.stop()
        self.hub.close()            # ends the web page's streams
        for timer in (self._feed_timer, self._tick_timer):
            if timer is not None:
                timer.cancel()
        for peer in list(self.shims.values()):
            await peer.flush_and_close(code=1001, message=b"orchestrator stopping")
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.http is not None:
            await self.http.close()

    def status_line(self):
        return feed.status_line(list(self.registry), self.jobs.active(), len(self.queue), len(self.ignored))

    def _update_status(self):
        self.notifier.status(self.status_line())
        self.changed()

    def changed(self):
        """Something the web page shows changed: send it a snapshot soon (changes are gathered)."""
        if self._feed_timer is None and self.hub.clients and not self.hub.closed:
            self._feed_timer = asyncio.get_running_loop().call_later(FEED_DELAY, self._publish)

    def _publish(self):
        self._feed_timer = None
        self.hub.publish(feed.sse("snapshot", api.snapshot(self)))

    # --- carrying out control's effects ---------------------------------------------

    def _do(self, effects_):
        """Carry out ``effects_`` in order, then refresh the status and re-arm the tick timer."""
        done = {self._EFFECTS[type(e)](self, e) for e in effects_}
        if STATUS in done:
            self._update_status()
        elif CHANGED in done:
            self.changed()
        self._arm()

    def _to_worker(self, e):
        ln = self.links.get(e.key)
        if ln is None or not ln.post(e.msg):
            logger.debug("worker %s not connected: %s not sent", e.key, e.msg["type"])

    def _to_shim(self, e):
        e.shim.post(e.msg)

    def _note(self, e):
        self.recent.add_entry(*e, time.time())
        return CHANGED

    def _metric(self, e):
        getattr(self.metrics, e.name)(*e.args)

    def _log(self, e):
        if e.once is not None:
            self.log_once.warning(e.once, e.text, *e.args)
        else:
            logger.log(e.level, e.text, *e.args)

    def _changed(self, e):
        return STATUS if e.status else CHANGED

    def _link(self, e):
        if e.up:
            ln = self.links[e.key] = links.WorkerLink(self, self.registry.get(e.key))
            ln.start()
        else:
            ln = self.links.pop(e.key, None)
            if ln is not None:
                ln.stop()

    def _probe(self, e):
        task = asyncio.get_running_loop().create_task(self._answer_probe(e.shim, e.body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _probe_result(self, e):
        """A worker's answer to a doctor probe in flight (see ``_run_probe``)."""
        probe_id = e.msg.get("probe_id")
        fut = self.probes.get(probe_id, {}).get(e.key) if isinstance(probe_id, str) else None
        if fut is None or fut.done():
            return
        try:
            fut.set_result({"result": protocol.check_probe_result(e.msg.get("result")), "received": time.time()})
        except protocol.ProtocolError as err:
            fut.set_result({"error": f"malformed probe result: {err}"})

    _EFFECTS = {effects.ToWorker: _to_worker, effects.ToShim: _to_shim, effects.Note: _note,
                effects.Metric: _metric, effects.Log: _log, effects.Changed: _changed, effects.Link: _link,
                effects.Probe: _probe, effects.ProbeResult: _probe_result}

    def _arm(self):
        """One loop timer for the next deadline control has (queue timeouts, re-attach waits)."""
        deadline = self.control.next_deadline()
        if deadline == self._deadline:
            return
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        self._deadline = deadline
        if deadline is not None:
            self._tick_timer = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()),
                                                                     self._tick)

    def _tick(self):
        self._tick_timer = self._deadline = None
        self._do(self.control.tick(time.monotonic()))

    # --- events from the worker sources and links --------------------------------

    def add_worker(self, key, address, source):
        self._do(self.control.worker_added(key, address, source, time.monotonic()))
        return self.registry.get(key)

    def on_worker_message(self, key, msg):
        self._do(self.control.worker_message(key, msg, time.monotonic()))

    def on_worker_lost(self, key, reason):
        self._do(self.control.worker_lost(key, reason, time.monotonic()))

    # --- shim connections -----------------------------------------------------------

    async def shim(self, request):
        ws, ok = await link.accept(request, self.secret, protocol.ROLE_ORCHESTRATOR, (protocol.ROLE_SHIM,),
                                   {"version": __version__}, self.log_once,
                                   heartbeat=max(1.0, self.cfg.heartbeat_interval))
        if not ok:
            return ws
        peer = link.Peer(ws, request.remote or "?")     # also control's handle for this connection
        self._do(self.control.shim_opened(peer, peer.name))
        try:
            # attach and probe wait (for workers): answered beside this loop, which must keep
            # reading or the connection's heartbeat fails and the shim sees us vanish again
            async for msg in link.messages(ws, peer.name, self.log_once):
                self._do(self.control.shim_message(peer, msg, time.monotonic()))
        finally:
            self._do(self.control.shim_gone(peer, time.monotonic()))
            peer.abort()
        return ws

    async def _answer_probe(self, peer, raw):
        try:
            await self._run_probe(peer, raw)
        finally:
            self._do(self.control.probe_done(peer))

    async def _run_probe(self, peer, raw):
        """`clusterplex doctor`: every connected worker checks what jobs need there (media, transcode
        root, relay, codecs, uid, clock); one answer with all results, or why a worker gave none."""
        try:
            probe = protocol.check_probe(raw)
        except protocol.ProtocolError as e:
            peer.post(messages.probe_results([], time.time(), error=str(e)))
            return
        probe_id = protocol.new_nonce()
        waiting = self.probes[probe_id] = {}
        entries = {}
        for rec in self.registry:
            entries[rec.key] = {"name": rec.name or rec.address_str, "address": rec.address_str, "state": rec.state,
                                "reason": rec.reason}
            ln = self.links.get(rec.key)
            if ln is not None and ln.post(messages.probe(probe, probe_id)):
                waiting[rec.key] = asyncio.get_running_loop().create_future()
            else:
                entries[rec.key]["error"] = f"not connected ({rec.reason})"
        logger.info("doctor probe from %s: asking %d worker(s)", peer.name, len(waiting))
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
        peer.post(messages.probe_results(list(entries.values()), time.time()))


def main(argv=None):
    return daemon.main("clusterplex-orchestrator", "orchestrator", Orchestrator, argv)
