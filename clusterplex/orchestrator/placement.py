"""Where jobs go and what becomes of them when workers fail: the decisions ``control``'s events share.

``Placement`` holds the orchestrator's state (workers, jobs, shims, the
queue, session affinity) and decides: dispatch to the best worker, wait
(FIFO, ``queue_timeout``) when every capable one is full, fail with the
shim's fallback when none can take the job, cancel, and on a lost worker
re-dispatch, fail over with resume (at most ``MAX_RESTARTS`` times) or fail.
Pure, like ``control``: effects go to ``self.out``.
"""

from ..core.outcomes import CANCELLED, FELL_BACK_LOCAL, NO_WORKER, REMOTE_FAILED, RESUMED
from ..core import messages
from . import feed, jobs, registry, scheduler
from .effects import INFO, WARNING, Outbox

AFFINITY_SIZE = 1000   # Plex sessions remembered for affinity
MAX_RESTARTS = 2       # times a job moves on after losing its worker


def session_key(job):
    """Plex's session key (stable across seeks; the job UUID after it changes)."""
    return job.session.split("/", 1)[0]


class Placement:
    def __init__(self, strategy, queue_timeout):
        self.strategy = strategy
        self.queue_timeout = queue_timeout
        self.registry = registry.WorkerRegistry()
        self.jobs = jobs.JobTable()
        self.sched = scheduler.SchedulerState()
        self.sessions = {}          # shim handle -> control.Shim
        self.shims = {}             # job id -> the handle of the shim following it
        self.queue = {}             # job id -> (deadline, reason): waiting for a free worker, FIFO
        self.affinity = {}          # Plex session key -> worker key that ran it last
        self.stopping = False
        self.out = Outbox()

    def _dispatch(self, job, now):
        """Place ``job`` on the best worker now; if every capable worker is full, queue it for
        up to ``queue_timeout``; otherwise tell the shim no worker can take it."""
        decision = scheduler.choose(self.strategy, self.registry, self.sched, now, needs=job.needs,
                                    exclude=job.excluded, prefer=self.affinity.get(session_key(job)))
        rec = decision.worker
        if rec is not None:
            job.assign(rec.key, rec.name or rec.address_str, now)
            job.decision = decision.reason
            self.registry.assign(rec.key, job.id, now)
            self.out.changed()
            self.out.to_worker(rec.key, messages.start(job.spec))
            self.out.log(INFO, "job %s -> %s", job.id[:8], decision.reason)
            if session_key(job):
                self.affinity[session_key(job)] = rec.key
                while len(self.affinity) > AFFINITY_SIZE:
                    self.affinity.pop(next(iter(self.affinity)))
            self.out.to_shim(self.shims.get(job.id), messages.assigned(job.worker_name, rec.address_str,
                                                                       decision.reason))
            return
        if decision.waitable and self.queue_timeout > 0 and job.id not in self.queue:
            self.out.log(INFO, "job %s waits up to %ss for a free worker: %s", job.id[:8], self.queue_timeout,
                         decision.reason)
            self.queue[job.id] = (now + self.queue_timeout, decision.reason)
            self.out.changed(status=True)
            return
        if job.id in self.queue:
            return                      # still waiting; its deadline decides
        self._no_worker(job, decision.reason, now)

    def _no_worker(self, job, reason, now):
        if job.tried:
            reason = f"no worker could start the job: {job.refusal_summary()}"
        self.out.log(WARNING, "job %s: %s", job.id[:8], reason)
        moved = job.restarts > 0
        job.fail(reason, now)
        self.jobs.finish(job)
        self.out.metric("outcome", NO_WORKER)
        self.out.note(feed.NO_WORKER, job, reason)
        s = self.sessions.get(self.shims.get(job.id))
        if s is not None and s.mode == "both":
            # The shim runs Plex's own transcoder now (from the last segment if the job had moved).
            self.out.metric("outcome", FELL_BACK_LOCAL)
            self.out.note(feed.FELL_BACK_LOCAL, job, "Plex's own transcoder on the Plex host runs it" +
                          (", from the last segment" if moved else "") + f": {reason}")
        if s is not None:
            # A job whose worker died and that no other worker can take: the shim's mode decides,
            # and a local run continues from the last segment.
            self.out.to_shim(s.handle, messages.failed(reason, moved, True, resume=moved))

    def _queue_expired(self, job_id, reason, now):
        job = self.jobs.get(job_id)
        self.queue.pop(job_id, None)
        if job is not None and job.state == jobs.PENDING:
            self._no_worker(job, f"{reason} (waited {self.queue_timeout}s)", now)
        self.out.changed(status=True)

    def _drain_queue(self, now):
        """Capacity may have freed up: retry queued jobs, oldest first."""
        for job_id in list(self.queue):
            job = self.jobs.get(job_id)
            if job is None or job.state != jobs.PENDING:
                del self.queue[job_id]
                continue
            decision = scheduler.choose(self.strategy, self.registry, self.sched, now, needs=job.needs,
                                        exclude=job.excluded)
            if decision.worker is None:
                return                  # keep FIFO order: nobody jumps the queue
            del self.queue[job_id]
            self._dispatch(job, now)
            self.out.changed(status=True)

    def _cancel(self, job, why, now):
        job.cancel(now)
        self.out.log(INFO, "job %s: %s", job.id[:8], why)
        if self.queue.pop(job.id, None) is not None:
            self.out.changed(status=True)
        if job.worker is not None:
            self.out.to_worker(job.worker, messages.cancel(job.id))
            return                      # stays active until the worker reports the exit (or is lost)
        self.jobs.finish(job)
        self.out.metric("outcome", CANCELLED)
        self.out.changed()

    def _lost(self, key, reason, now):
        rec = self.registry.disconnected(key, reason)
        if rec is None:
            return
        for job in self.jobs.on_worker(key):
            self.registry.release(key, job.id)
            if job.state == jobs.ASSIGNED:
                job.refused(f"connection to worker lost before start ({reason})")
                self._dispatch(job, now)
            elif job.state == jobs.RUNNING and job.restarts < MAX_RESTARTS:
                lost = f"worker {job.worker_name} lost while running the job ({reason})"
                self.out.log(WARNING, "job %s: %s; starting it again elsewhere", job.id[:8], lost)
                self.out.metric("outcome", RESUMED)
                self.out.note(feed.RESUMED, job, lost + "; continuing from the last segment")
                job.lost(lost)
                job.spec = dict(job.spec, resume=True)     # the next worker continues from the last segment
                self.out.to_shim(self.shims.get(job.id), messages.failover(lost))
                self._dispatch(job, now)
            else:
                if job.state == jobs.CANCELLED:
                    self.out.metric("outcome", CANCELLED)
                if job.state == jobs.RUNNING:
                    self.out.metric("outcome", REMOTE_FAILED, now - job.started_at)
                    self.out.note(feed.REMOTE_FAILED, job, f"worker {job.worker_name} lost while running the job "
                                                           f"({reason}), moved {job.restarts} times already")
                    job.fail(f"worker {job.worker_name} lost while running the job", now)
                    self.out.to_shim(self.shims.get(job.id), messages.failed(job.reason, True, False))
                self.jobs.finish(job)
        self.out.changed(status=True)
