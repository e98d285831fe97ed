"""The worker's jobs: how one starts, what it owes its orchestrator, and how it outlives a connection.

A job belongs to the worker, not to the connection that started it. When its
orchestrator goes away the job keeps running for ``detached_grace`` seconds
while its events (output up to a bound, the exit always) are kept for
whichever orchestrator re-attaches; an exit sent on a live connection is
held until that orchestrator confirms it (``exit_ack``).
"""

import asyncio
import logging
import os
import shlex
import time

from ..core import args as plexargs
from ..core import capabilities, messages, policy, protocol, resume, shape
from . import rewrite, runner

logger = logging.getLogger("clusterplex.worker")

MAX_DETACHED_OUTPUT = 256 * 1024     # bytes of output kept for a job while no orchestrator follows it
MAX_UNACKED = 1000                   # exits sent but not yet confirmed by the orchestrator (oldest dropped)


class WorkerJob:
    """A job as the worker holds it: the truth about it survives its orchestrator connection.

    While detached (the orchestrator went away) its events are kept, the exit
    included, and replayed in order to whichever orchestrator re-attaches.
    """

    def __init__(self, spec, owner):
        self.spec = spec
        self.id = spec["id"]
        self.owner = owner           # link.Peer or None when detached
        self.transcode = None
        self.task = None
        self.detach_timer = None
        self.pid = None
        self.ended = False
        self.exit_msg = None
        self.backlog = []            # events while detached
        self._backlog_bytes = 0

    def post(self, msg):
        if self.owner is not None:
            self.owner.post(msg)
            return
        if msg["type"] == messages.OUT:
            size = len(msg["data"])
            if self._backlog_bytes + size > MAX_DETACHED_OUTPUT:
                return               # output is best effort; the exit code is not
            self._backlog_bytes += size
        self.backlog.append(msg)

    def attach(self, peer):
        """A (new) orchestrator follows this job: replay what it missed."""
        self.owner = peer
        if self.detach_timer is not None:
            self.detach_timer.cancel()
            self.detach_timer = None
        for msg in self.backlog:
            peer.post(msg)
        self.backlog, self._backlog_bytes = [], 0

    def view(self):
        return {"id": self.id, "session": self.spec.get("session", ""), "pid": self.pid,
                "state": "exited" if self.ended else "running"}


class Jobs:
    """The worker's jobs: running, ended while detached, and ended with their exit not yet confirmed.

    ``worker`` is the ``server.Worker`` they run on (its state, settings,
    hardware and transcoder decide whether and how a job starts).
    """

    def __init__(self, worker):
        self.worker = worker
        self.running = {}            # job id -> WorkerJob
        self.detached_done = {}      # job id -> WorkerJob that ended while detached (until re-attach/expiry)
        self.unacked = {}            # job id -> WorkerJob whose exit the orchestrator has not confirmed yet

    def views(self):
        return [j.view() for j in list(self.running.values()) + list(self.detached_done.values())]

    # --- the start path ----------------------------------------------------------

    async def start(self, peer, raw):
        """Check, rewrite for this machine, resume if taken over, check again, start; or refuse."""
        w = self.worker
        job_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else ""

        def refuse(reason):
            logger.warning("job %s refused: %s", job_id[:8] or "?", reason)
            peer.post(messages.refused(reason, job_id))

        try:
            spec = protocol.check_job(raw)
        except protocol.ProtocolError as e:
            return refuse(f"malformed job: {e}")
        busy = w.refusal()
        if busy:
            return refuse(busy)
        if spec["id"] in self.running:
            return refuse("duplicate job id")
        if len(self.running) >= w.max_jobs:
            return refuse(f"worker {w.name} is full ({len(self.running)}/{w.max_jobs} jobs)")
        parsed = plexargs.parse(spec["argv"])
        capability = self.capability
        problem = shape.check(parsed, spec["cwd"], spec["id"], capability)
        if problem:                  # what the wire sent: nothing runs, nothing is rewritten
            return refuse(f"{problem} (worker {w.name})")
        if capabilities.needs(parsed).eae and not (w.eae and w.eae.running):
            return refuse(f"job needs EasyAudioEncoder, which is not running on worker {w.name} "
                          f"(eae.enabled is {str(w.cfg.eae.enabled).lower()})")
        res = rewrite.rewrite({"argv": spec["argv"], "cwd": spec["cwd"], "env": policy.filter_env(spec["env"])},
                              w.rewrites, w.hardware, parsed)
        spec, parsed = dict(spec, argv=res.argv, cwd=res.cwd, env=res.env), res.parsed
        for note in res.notes:
            logger.log(logging.DEBUG if note.startswith("env ") else logging.INFO, "job %s: %s", spec["id"][:8], note)
        if spec.get("resume"):
            spec, parsed = resumed(spec, parsed)    # after path_map: the session dir as this worker sees it
        problem = runner.preflight(spec, w.cfg.transcode_root, w.name, w.cfg.output_roots, parsed,
                                   media_roots=w.cfg.media_roots, capability=capability,
                                   private=(w.cfg.secret_file, w.cfg.state_dir))
        if problem:
            return refuse(problem)
        logger.debug("job %s: %s %s (cwd %s)", spec["id"][:8], shlex.quote(w.transcoder),
                     shlex.join(spec["argv"]), spec["cwd"])
        job = self.running[spec["id"]] = WorkerJob(spec, peer)
        job.transcode = runner.Transcode(
            spec, w.transcoder, runner.job_env(spec, w.job_env_overrides()),
            lambda fd, data: job.post(messages.out(fd, data.decode("latin-1"), job.id)),
            w.cfg.kill_grace)
        try:
            pid = await job.transcode.start()
        except OSError as e:
            del self.running[job.id]
            return refuse(f"cannot start transcoder {w.transcoder} on worker {w.name}: {e.strerror}")
        job.pid = pid
        logger.info("job %s started: pid %d, cwd %s", job.id[:8], pid, spec["cwd"])
        job.post(messages.job_started(job.id, pid, time.time()))
        job.task = w.spawn(self._finish(job))
        w.changed()

    async def _finish(self, job):
        code, sig = await job.transcode.wait()
        self.running.pop(job.id, None)
        if job.detach_timer is not None:
            job.detach_timer.cancel()
        how = f"signal {sig}" if sig else f"exit code {code}"
        logger.info("job %s ended: %s%s", job.id[:8], how, " (cancelled)" if job.transcode.cancelled else "")
        job.ended = True
        exit_msg = messages.exit(code, sig, job.id)
        job.post(exit_msg)
        if job.owner is None:        # keep the exit code for an orchestrator that re-attaches
            self._keep_done(job)
        else:                        # sent, maybe into a dying connection: held until confirmed
            job.exit_msg = exit_msg
            self.unacked[job.id] = job
            while len(self.unacked) > MAX_UNACKED:
                self.unacked.pop(next(iter(self.unacked)))
        self.worker.changed()

    def capability(self, job_id, mac):
        """Whether ``mac`` is the relay capability of ``job_id`` under this worker's secret."""
        secret = self.worker.secret
        return secret is not None and protocol.check_relay_capability(secret, job_id, mac)

    # --- what the orchestrator asks ----------------------------------------------

    def cancel(self, job_id):
        job = self.running.get(job_id)
        if job is not None and job.transcode is not None:
            logger.info("job %s: cancel requested", job.id[:8])
            self.worker.spawn(job.transcode.terminate())
        self.detached_done.pop(job_id, None)

    def ack(self, job_id):
        """The orchestrator has the exit: stop holding it."""
        self.unacked.pop(job_id, None)

    def attach(self, job_id, peer):
        """``peer`` follows the job from now on (its missed events replayed); False if unknown here."""
        job = self.running.get(job_id) or self.detached_done.pop(job_id, None)
        if job is None:
            return False
        logger.info("job %s re-attached by the orchestrator at %s", job.id[:8], peer.name)
        job.attach(peer)
        return True

    # --- an orchestrator connection ends -----------------------------------------

    def detach(self, peer):
        """The orchestrator went away: keep its jobs for a grace period, then stop them."""
        grace = self.worker.cfg.detached_grace
        for job in [j for j in self.unacked.values() if j.owner is peer]:
            # Its exit may have died with the connection: report it to the next orchestrator.
            del self.unacked[job.id]
            job.owner = None
            job.backlog, job._backlog_bytes = [job.exit_msg], 0
            self._keep_done(job)
        loop = asyncio.get_running_loop()
        for job in self.running.values():
            if job.owner is peer:
                job.owner = None
                logger.warning("job %s lost its orchestrator; stopping it in %ss unless re-attached",
                               job.id[:8], grace)
                job.detach_timer = loop.call_later(grace, self._expire, job)

    def _keep_done(self, job):
        self.detached_done[job.id] = job
        job.detach_timer = asyncio.get_running_loop().call_later(
            self.worker.cfg.detached_grace, self.detached_done.pop, job.id, None)

    def _expire(self, job):
        job.detach_timer = None
        if job.owner is None and job.transcode is not None:
            logger.warning("job %s: no orchestrator re-attached; stopping it", job.id[:8])
            self.worker.spawn(job.transcode.terminate())


def resumed(spec, parsed):
    """A job taken over from a dead worker: continue after its last complete segment; ``(spec, parsed)``."""
    try:
        names = os.listdir(spec["cwd"])
    except OSError:
        return spec, parsed
    plan = resume.plan(parsed, names)
    logger.info("job %s: %s", spec["id"][:8], plan.reason)
    if plan.argv is None:
        return spec, parsed
    return dict(spec, argv=plan.argv), plexargs.parse(plan.argv)
