"""The orchestrator's decisions, sans I/O: events in, effects out (in the manner of h11's core).

Every event is a method that takes the time (``now``, monotonic seconds) and
returns what the shell must do, in order (``effects``): messages to workers
and shims, notes for the web page, metric events, log records, links to start
or stop, probes to run, a changed status. ``next_deadline()`` is when ``tick``
must next be called (jobs waiting ``queue_timeout`` for a free worker, shims
waiting ``ATTACH_WAIT`` for a worker to report their job). No asyncio, no
sockets, no clock. ``placement`` decides where jobs go and what happens to them
when workers fail (docs/failure.md), with ``registry``, ``scheduler`` and ``jobs``.

Messages are dispatched by tables keyed by ``core.messages`` types; an event
that the state does not allow (``jobs.IllegalTransition``) is logged and ignored.
"""

from ..core import capabilities, messages, protocol
from ..core.outcomes import CANCELLED, REMOTE_FAILED, REMOTE_OK
from . import feed, jobs, placement
from .effects import DEBUG, INFO, WARNING, Link, Probe, ProbeResult
from .jobs import IllegalTransition
from .placement import session_key

ATTACH_WAIT = 5.0      # how long a re-attaching shim waits for the workers to report its job
MODES = ("both", "remote")


class Shim:
    """A shim connection as control sees it; the shell's ``handle`` is what effects address."""

    __slots__ = ("handle", "name", "job", "mode", "busy", "waiting")

    def __init__(self, handle, name):
        self.handle = handle
        self.name = name
        self.job = None
        self.mode = ""              # the shim's mode (pms.yaml), as it said in its submission
        self.busy = False           # an attach or a probe is being answered
        self.waiting = None         # (job id, deadline): an attach waiting for a worker to report the job


class Control(placement.Placement):
    """The events; ``placement.Placement`` holds the state and the decisions they share."""

    # --- time ------------------------------------------------------------------

    def next_deadline(self):
        """When ``tick`` must next be called (monotonic seconds), or None."""
        times = [d for d, _ in self.queue.values()]
        times += [s.waiting[1] for s in self.sessions.values() if s.waiting is not None]
        return min(times, default=None)

    def tick(self, now):
        for job_id, (deadline, reason) in list(self.queue.items()):
            if deadline <= now:
                self._queue_expired(job_id, reason, now)
        for s in list(self.sessions.values()):
            if s.waiting is not None and s.waiting[1] <= now:
                self._answer_attach(s, s.waiting[0])
        return self.out.flush()

    def stop(self):
        """The orchestrator is stopping: running jobs stay with their workers (shims re-attach)."""
        self.stopping = True
        return self.out.flush()

    # --- shims -----------------------------------------------------------------

    def shim_opened(self, handle, name):
        self.sessions[handle] = Shim(handle, name)
        return self.out.flush()

    def shim_message(self, handle, msg, now):
        s = self.sessions[handle]
        handler = self._SHIM_HANDLERS.get(msg["type"])
        try:
            if handler is None:
                raise IllegalTransition(f"no such message {msg['type']!r}")
            handler(self, s, msg, now)
        except IllegalTransition as e:
            self.out.log(WARNING, "unexpected %r from shim at %s", msg["type"], s.name, once=("shimmsg", s.name))
            self.out.log(DEBUG, "shim at %s: %s", s.name, e)
        return self.out.flush()

    def submit(self, handle, raw, mode, now):
        return self.shim_message(handle, messages.submit(raw, mode), now)

    def attach(self, handle, job_id, now):
        return self.shim_message(handle, messages.attach(job_id), now)

    def cancel(self, handle, now):
        return self.shim_message(handle, messages.cancel(), now)

    def probe_done(self, handle):
        s = self.sessions.get(handle)
        if s is not None:
            s.busy = False
        return self.out.flush()

    def shim_gone(self, handle, now):
        """The shim's connection ended: PMS stopped the transcode (unless we are stopping)."""
        s = self.sessions.pop(handle, None)
        job = s.job if s is not None else None
        if job is not None and self.shims.get(job.id) is handle:
            del self.shims[job.id]
            if not job.final and not self.stopping:
                self._cancel(job, "shim went away (PMS stopped the transcode)", now)
        return self.out.flush()

    @staticmethod
    def _idle(s):
        if s.job is not None:
            raise IllegalTransition(f"this connection already carries job {s.job.id[:8]}")
        if s.busy:
            raise IllegalTransition("this connection's attach or probe is still being answered")

    def _on_submit(self, s, msg, now):
        self._idle(s)
        s.mode = msg.get("mode") if msg.get("mode") in MODES else ""
        try:
            spec = protocol.check_job(msg.get("job"))
        except protocol.ProtocolError as e:
            self.out.to_shim(s.handle, messages.failed(f"malformed job: {e}", False, True))
            return
        job = jobs.Job(spec, now)
        try:
            self.jobs.add(job)
        except IllegalTransition:
            self.out.to_shim(s.handle, messages.failed("duplicate job id", False, False))
            return
        job.needs = capabilities.needs(spec["argv"])
        self.out.metric("posted")
        s.job = job
        self.shims[job.id] = s.handle
        self.out.log(INFO, "job %s submitted (session %s; %s)", job.id[:8], job.session or "-", job.needs.describe())
        key = session_key(job)
        if key:
            for old in self.jobs.active():
                if old is not job and not old.final and session_key(old) == key:
                    self._cancel(old, f"superseded by job {job.id[:8]} of the same Plex session", now)
        self._dispatch(job, now)

    def _on_attach(self, s, msg, now):
        """A shim lost us (we restarted) and comes back for its job; an unknown one is waited for
        (``ATTACH_WAIT``): the workers report their jobs in their first status."""
        self._idle(s)
        job_id = msg.get("job_id")
        if isinstance(job_id, str) and self.jobs.get(job_id) is None and self.jobs.finished(job_id) is None:
            s.busy = True
            s.waiting = (job_id, now + ATTACH_WAIT)
            return
        self._answer_attach(s, job_id)

    def _answer_attach(self, s, job_id):
        s.busy, s.waiting = False, None
        job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            done = self.jobs.finished(job_id) if isinstance(job_id, str) else None
            if done is not None and done.state == jobs.EXITED:
                self.out.to_shim(s.handle, messages.exit(done.exit_code, done.signal))
            else:
                self.out.to_shim(s.handle, messages.failed("no worker reports this job (it was lost)",
                                                           done is not None, done is None))
            return
        s.job = job
        self.shims[job.id] = s.handle
        self.out.log(INFO, "job %s: shim re-attached", job.id[:8])
        self.out.to_shim(s.handle, messages.attached(job.worker_name))

    def _on_cancel(self, s, msg, now):
        if s.job is None:
            raise IllegalTransition("no job on this connection")
        if s.job.final:
            raise IllegalTransition(f"job {s.job.id[:8]} is {s.job.state} already")
        self._cancel(s.job, "cancelled by the shim", now)

    def _on_probe(self, s, msg, now):
        self._idle(s)
        s.busy = True
        self.out.add(Probe(s.handle, msg.get("probe")))

    _SHIM_HANDLERS = {messages.SUBMIT: _on_submit, messages.ATTACH: _on_attach, messages.CANCEL: _on_cancel,
                      messages.PROBE: _on_probe}

    # --- worker sources --------------------------------------------------------

    def worker_added(self, key, address, source, now):
        rec, created = self.registry.add(key, address, source)
        if created:
            self.out.add(Link(key, True))
            self.out.log(INFO, "worker %s added (%s)", rec.address_str, source)
        return self.out.flush()

    def worker_removed(self, key, reason, now):
        self.out.add(Link(key, False))
        self._lost(key, reason, now)
        self.registry.remove(key)
        self.out.changed(status=True)
        return self.out.flush()

    def worker_lost(self, key, reason, now):
        """The link to a worker ended: its jobs move on (or fail), as docs/failure.md says."""
        self._lost(key, reason, now)
        return self.out.flush()

    # --- worker messages -------------------------------------------------------

    def worker_message(self, key, msg, now):
        kind = msg["type"]
        handler = self._WORKER_HANDLERS.get(kind)
        if self.registry.get(key) is None:
            pass                        # removed meanwhile
        elif handler is None:
            self.out.log(WARNING, "ignoring unknown message %r from worker %s", kind, key, once=("type", key, kind))
        else:
            try:
                handler(self, key, msg, now)
            except IllegalTransition as e:
                self.out.log(WARNING, "worker %s: ignoring %s: %s", key, kind, e, once=("illegal", key, kind))
        return self.out.flush()

    def _held(self, key, msg):
        """The job ``msg`` is about, if the worker ``key`` holds it (else None, logged)."""
        job = self.jobs.get(msg.get("job_id"))
        if job is None or job.worker != key:
            self.out.log(DEBUG, "worker %s: %s for unknown job %r", key, msg["type"], msg.get("job_id"))
            return None
        return job

    def _on_status(self, key, msg, now):
        before = self.registry.get(key).state
        rec = self.registry.update_status(key, msg, now)
        if rec.state != before:
            self.out.log(INFO, "worker %s (%s) is %s%s", rec.name, rec.address_str, rec.state,
                         f": {rec.reason}" if rec.reason else "")
        self._adopt(key, rec, msg.get("jobs"), now)
        self.out.changed(status=True)
        self._drain_queue(now)

    def _adopt(self, key, rec, reported, now):
        """Jobs a worker runs that we do not know: a previous orchestrator started them. Take them
        over (the worker replays what we missed) so their shims can re-attach. A worker runs at most
        its ``max_jobs``: beyond that (plus what we dispatched to it), nothing more is adopted."""
        if not isinstance(reported, list):
            return
        room = rec.max_jobs - sum(1 for j in rec.jobs if self.jobs.get(j) is not None and self.jobs.get(j).adopted)
        excess = 0
        for item in reported:
            if not isinstance(item, dict):
                continue
            try:
                spec = protocol.check_job({"id": item.get("id"), "argv": [], "cwd": "/", "env": {},
                                           "session": item.get("session", "")})
            except protocol.ProtocolError:
                continue
            active = self.jobs.get(spec["id"])
            known = active or self.jobs.finished(spec["id"])
            if known is not None:
                if item.get("state") == "running" and not (active is not None and active.worker == key):
                    # It moved on (failover) or ended while this worker was cut off: fence the copy.
                    # (One of ours, cancelled and not ended yet, is not a copy: its exit is coming.)
                    self.out.log(WARNING, "job %s still runs on %s, which was cut off; stopping that copy",
                                 spec["id"][:8], rec.name or rec.address_str)
                    self.out.to_worker(key, messages.cancel(spec["id"]))
                continue
            if room <= 0:
                excess += 1
                continue
            room -= 1
            job = jobs.Job(spec, now)
            job.adopted = True
            job.assign(key, rec.name or rec.address_str, now)
            job.started(item.get("pid") if isinstance(item.get("pid"), int) else None, now)
            job.decision = f"{job.worker_name}: adopted after an orchestrator restart"
            self.jobs.add(job)
            self.registry.assign(key, job.id, now)
            self.out.to_worker(key, messages.attach(job.id))
            self.out.log(INFO, "job %s adopted from worker %s (session %s)", job.id[:8], job.worker_name,
                         job.session or "-")
            for s in list(self.sessions.values()):
                if s.waiting is not None and s.waiting[0] == job.id:
                    self._answer_attach(s, job.id)
        if excess:
            self.out.log(WARNING, "worker %s reports %d jobs more than its max_jobs (%d) lets it run: not adopted",
                         rec.name or rec.address_str, excess, rec.max_jobs, once=("adopt", key))

    def _on_load(self, key, msg, now):
        self.registry.update_load(key, msg, now)
        self.out.changed()

    def _on_probe_result(self, key, msg, now):
        self.out.add(ProbeResult(key, msg))

    def _on_started(self, key, msg, now):
        job = self._held(key, msg)
        if job is None:
            return
        if job.state != jobs.ASSIGNED:       # cancelled meanwhile, or replayed to us after an adoption
            self.out.log(DEBUG, "job %s: started on %s while %s", job.id[:8], job.worker_name, job.state)
            return
        first = job.restarts == 0
        job.started(msg.get("pid"), now)
        if first:
            self.out.metric("dispatched", now - job.created)
        self.out.log(INFO, "job %s running on %s (pid %s), dispatch %.1f ms", job.id[:8], job.worker_name,
                     job.pid, (now - job.created) * 1000)
        self.out.to_shim(self.shims.get(job.id), messages.started(job.worker_name, job.pid))
        self.out.changed(status=True)

    def _on_out(self, key, msg, now):
        job = self._held(key, msg)
        if job is not None and msg.get("fd") in (1, 2) and isinstance(msg.get("data"), str):
            self.out.to_shim(self.shims.get(job.id), messages.out(msg["fd"], msg["data"]))

    def _on_exit(self, key, msg, now):
        if isinstance(msg.get("job_id"), str):
            # The worker holds an exit until we confirm it: one sent into a connection that was
            # dying (our crash) goes to the next orchestrator instead of being lost.
            self.out.to_worker(key, messages.exit_ack(msg["job_id"]))
        job = self._held(key, msg)
        if job is None:
            return
        code = msg.get("code") if isinstance(msg.get("code"), int) else 1
        sig = msg.get("signal") if isinstance(msg.get("signal"), int) else None
        ended = f"signal {sig}" if sig else f"exit code {code}"
        ran = now - job.started_at if job.started_at is not None else None
        if job.state == jobs.CANCELLED:
            self.out.metric("outcome", CANCELLED, ran)
        else:
            job.exited(code, sig, now)
            if code == 0 and not sig:
                self.out.metric("outcome", REMOTE_OK, ran)
            else:
                self.out.metric("outcome", REMOTE_FAILED, ran)
                self.out.note(feed.REMOTE_FAILED, job, f"transcoder on {job.worker_name} ended with {ended}")
        self.registry.release(key, job.id)
        self.out.log(INFO, "job %s on %s ended with %s", job.id[:8], job.worker_name, ended)
        self.jobs.finish(job)
        self.out.to_shim(self.shims.get(job.id), messages.exit(code, sig))
        self.out.changed(status=True)
        self._drain_queue(now)

    def _on_refused(self, key, msg, now):
        job = self._held(key, msg)
        if job is None:
            return
        if job.state == jobs.RUNNING:
            raise IllegalTransition(f"job {job.id[:8]} refused after it started")
        reason = str(msg.get("reason") or "refused")[:1000]
        self.out.log(WARNING, "worker %s refused job %s: %s", job.worker_name, job.id[:8], reason)
        self.registry.release(key, job.id)
        if job.state == jobs.CANCELLED:
            self.out.metric("outcome", CANCELLED)
            self.jobs.finish(job)
            self.out.changed(status=True)
            return
        self.out.metric("refused", job.worker_name)
        self.out.note(feed.REFUSED, job, f"{job.worker_name} refused it: {reason}")
        job.refused(reason)
        self._dispatch(job, now)
        self._drain_queue(now)

    def _on_unknown(self, key, msg, now):
        job = self._held(key, msg)
        if job is not None:
            self.out.log(DEBUG, "job %s: worker %s does not have it", job.id[:8], job.worker_name)

    _WORKER_HANDLERS = {messages.STATUS: _on_status, messages.LOAD: _on_load, messages.PROBE_RESULT: _on_probe_result,
                        messages.STARTED: _on_started, messages.OUT: _on_out, messages.EXIT: _on_exit,
                        messages.REFUSED: _on_refused, messages.UNKNOWN: _on_unknown}

    def set_progress(self, job_id, percent):
        """The relay's report of how far an active job is; True if it applied to one."""
        job = self.jobs.get(job_id)
        if job is None or job.final:
            return False
        job.progress = round(min(100.0, max(0.0, float(percent))), 1)
        return True
