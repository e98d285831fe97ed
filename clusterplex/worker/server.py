"""clusterplex-worker: runs transcodes for the orchestrator.

It listens for authenticated orchestrator connections (``CONTROL_PATH``),
reports its state (ready / not ready with the reason / draining) and load,
runs only its configured transcoder in cwds under ``transcode_root``, and
streams each job's output and exit code back. Jobs belong to the worker,
not to a connection: if the orchestrator goes away a job keeps running for
``detached_grace`` seconds (room for re-attaching), then it is stopped.
"""

import asyncio
import functools
import logging
import os
import platform
import shlex
import socket
import time

import psutil
from aiohttp import web

from .. import __version__
from ..core import capabilities, config, policy, protocol, resume
from . import codecs, eae, hardware, probe, rewrite, runner
from ..common import daemon, discovery, link

logger = logging.getLogger("clusterplex.worker")

READY, NOT_READY, DRAINING = "ready", "not_ready", "draining"
RECHECK_INTERVAL = 2.0
LOAD_INTERVAL = 1.0


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
        if msg["type"] == "out":
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


class Worker:
    def __init__(self, cfg, config_path, notifier):
        self.cfg = cfg
        self.config_path = config_path
        self.notifier = notifier
        self.name = cfg.name or socket.gethostname()
        self.secret = None
        self.secret_error = ""
        self.transcoder = None
        self.state = NOT_READY
        self.reason = "starting"
        self.draining = False
        self.jobs = {}
        self.detached_done = {}      # job id -> WorkerJob that ended while detached (until re-attach/expiry)
        self.unacked = {}            # job id -> WorkerJob whose exit the orchestrator has not confirmed yet
        self.peers = set()
        self.listen_address = ""
        self.id = os.urandom(6).hex()
        self.mdns = None
        self.announcement = None
        self.rewrites = None
        self.codecs = None           # codecs.CodecManager while this transcoder needs Plex's codecs
        self._codecs_task = None
        self.eae = None              # eae.Supervisor when eae.enabled
        self.eae_problem = ""
        self.hardware = {"cpu": {"arch": platform.machine(), "threads": os.cpu_count() or 1, "model": "",
                                 "benchmark": float(os.cpu_count() or 1)},
                         "memory": 0, "gpus": [], "hw_codecs": [], "vaapi": {}, "transcoder": {}}
        self.log_once = daemon.LogOnce(logger)
        self._runner = None
        self._tasks = set()
        self._load_secret()

    # --- state ---------------------------------------------------------------

    @property
    def max_jobs(self):
        if self.cfg.max_jobs == "auto":
            return max(1, (os.cpu_count() or 2) // 2)
        return self.cfg.max_jobs

    def _check_rewrites(self, cfg):
        """The worker-side rewrite settings, validated (a ConfigError names the key)."""
        try:
            return rewrite.check_settings({
                "path_map": [{"from": getattr(m, "from"), "to": m.to} for m in cfg.path_map],
                "hwaccel": cfg.hwaccel, "encoder_swaps": cfg.encoder_swaps,
                "render_node": cfg.render_node or None})
        except rewrite.SettingsError as e:
            key, _, message = str(e).partition(": ")
            raise config.ConfigError(f"{self.config_path}: /{key.replace('.', '/')}: {message}") from None

    async def detect_hardware(self):
        """Detect CPU, GPUs and hardware codecs (tools and a short benchmark: off the event loop)."""
        try:
            os.makedirs(self.cfg.state_dir, mode=0o750, exist_ok=True)
        except OSError as e:
            logger.warning("cannot create state_dir %s: %s (the CPU benchmark is not cached)",
                           self.cfg.state_dir, e.strerror)
        detect = functools.partial(hardware.detect, transcoder=self.transcoder or self.cfg.transcoder,
                                   cache_path=os.path.join(self.cfg.state_dir, "benchmark.json"))
        self.hardware = await asyncio.get_running_loop().run_in_executor(None, detect)
        hw = self.hardware
        logger.info("hardware: %s, %d threads, %s, benchmark %.0f; GPUs: %s; hardware codecs: %s; "
                    "Plex codecs %s", hw["cpu"]["model"] or "cpu", hw["cpu"]["threads"], hw["cpu"]["arch"],
                    hw["cpu"]["benchmark"],
                    ", ".join(f"{g['vendor']} {g['name'] or g['driver']}" for g in hw["gpus"]) or "none",
                    ", ".join(hw["hw_codecs"]) or "none", hw["transcoder"].get("codec_version") or "unknown")

    def _codec_list(self, cfg):
        if not cfg.codecs.list:
            return list(codecs.DEFAULT_LIBS)
        try:
            return codecs.load_list(cfg.codecs.list)
        except codecs.CodecListError as e:
            raise config.ConfigError(f"{self.config_path}: /codecs/list: {e}") from None

    def _start_codecs(self):
        """Provision Plex's codec libraries for this transcoder's version (in the background)."""
        version = self.hardware["transcoder"].get("codec_version")
        arch = self.hardware["transcoder"].get("plex_arch")
        if not self.cfg.codecs.enabled:
            self._stop_codecs()
            return
        if version is None:
            if self.transcoder:
                logger.warning("no Plex codec version in %s: not Plex's transcoder? Codecs are not provisioned",
                               self.transcoder)
            self._stop_codecs()
            return
        if self.codecs is not None and (self.codecs.version, self.codecs.arch) == (version, arch):
            return
        self._stop_codecs()
        self.codecs = codecs.CodecManager(self.cfg.codecs.dir, self.cfg.codecs.server, version, arch, self.libs,
                                          on_progress=lambda state: self.evaluate())
        logger.info("codecs for Plex transcoder %s (%s) in %s", version, arch, self.codecs.path)
        self._codecs_task = self._spawn(self.codecs.run())

    def _stop_codecs(self):
        if self._codecs_task is not None:
            self._codecs_task.cancel()
        self.codecs = self._codecs_task = None

    async def _start_eae(self):
        """Fetch EasyAudioEncoder if needed, then keep one running."""
        binary = os.path.join(self.cfg.eae.dir, eae.BINARY)
        if not os.path.exists(binary):
            arch = self.hardware["transcoder"].get("plex_arch")
            try:
                os.makedirs(self.cfg.eae.dir, mode=0o750, exist_ok=True)
                await codecs.fetch_eae(None, self.cfg.eae.api, arch, self.cfg.eae.dir, device_id=self.id)
            except (codecs.EAEError, OSError) as e:
                self.eae_problem = f"cannot fetch EasyAudioEncoder: {e}"
                logger.error("%s; EAE jobs go to other workers", self.eae_problem)
                self.broadcast_status()
                return
        self.eae = eae.Supervisor(binary, os.path.join(self.cfg.eae.dir, "watch"), on_change=self._eae_changed)
        self.eae.start()

    def _eae_changed(self, running):
        self.broadcast_status()        # the "eae" capability comes and goes with the process
        self.notifier.status(self.status_line())

    def _load_secret(self):
        try:
            self.secret = config.load_secret(self.cfg.secret_file)
            self.secret_error = ""
        except config.ConfigError as e:
            self.secret, self.secret_error = None, str(e)

    def evaluate(self):
        """Recompute ready / not ready; tell everyone if it changed."""
        reasons = []
        if self.secret is None and os.path.exists(self.cfg.secret_file):
            self._load_secret()          # joined meanwhile (package order, `clusterplex join`, Ansible)
            if self.announcement is not None:
                self._spawn(self.announcement.update(self._txt()))
        if self.secret is None:
            reasons.append(f"not joined: {self.secret_error}")
        self.transcoder, why = runner.resolve_transcoder(self.cfg.transcoder)
        if why:
            reasons.append(why)
        if self.codecs is not None and not self.codecs.state.ready:
            st = self.codecs.state
            reasons.append(f"{st.summary()}" if st.reason else f"{st.summary()} (downloading)")
        root = self.cfg.transcode_root
        if not os.path.isdir(root):
            reasons.append(f"transcode_root {root} does not exist (shared transcode directory not mounted?)")
        elif not os.access(root, os.W_OK | os.X_OK):
            reasons.append(f"transcode_root {root} is not writable by uid {os.getuid()}")
        if self.draining:
            state, reason = DRAINING, "draining: finishing running jobs, taking no new ones"
        elif reasons:
            state, reason = NOT_READY, "; ".join(reasons)
        else:
            state, reason = READY, ""
        if (state, reason) != (self.state, self.reason):
            if state == NOT_READY:
                logger.warning("not ready: %s", reason)
            else:
                logger.info("state %s%s", state, f" ({reason})" if reason else "")
            self.state, self.reason = state, reason
            self.broadcast_status()
            if self.announcement is not None:
                self._spawn(self.announcement.update(self._txt()))
        self.notifier.status(self.status_line())

    def status(self):
        hw = self.hardware
        return {
            "type": "status",
            "id": self.id,
            "proto": protocol.PROTO_VERSION,
            "name": self.name,
            "state": self.state,
            "reason": self.reason,
            "max_jobs": self.max_jobs,
            "weight": self.cfg.weight,
            "priority": self.cfg.priority,
            "cpus": hw["cpu"]["threads"],
            "benchmark": hw["cpu"]["benchmark"],
            "running": sorted(self.jobs),
            "jobs": [j.view() for j in list(self.jobs.values()) + list(self.detached_done.values())],
            "version": __version__,
            "transcoder": self.transcoder or self.cfg.transcoder,
            "codecs": self.codecs.state.as_dict() if self.codecs is not None else None,
            "eae": {"enabled": self.cfg.eae.enabled, "running": bool(self.eae and self.eae.running),
                    "problem": self.eae_problem},
            "hardware": {"cpus": hw["cpu"]["threads"], "arch": hw["cpu"]["arch"], "model": hw["cpu"]["model"],
                         "memory": hw["memory"], "gpus": hw["gpus"],
                         "hw_codecs": hw["hw_codecs"] + ([capabilities.EAE] if self.eae and self.eae.running else []),
                         "plex_codecs": hw["transcoder"].get("codec_version"),
                         "plex_arch": hw["transcoder"].get("plex_arch")},
        }

    def status_line(self):
        jobs = f"{len(self.jobs)}/{self.max_jobs} jobs running"
        if self.codecs is not None and not self.codecs.state.ready:
            jobs += f", {self.codecs.state.summary()}"
        if self.cfg.eae.enabled:
            jobs += ", EAE running" if self.eae and self.eae.running else ", EAE not running"
        if self.state == READY:
            return f"ready, {jobs}, {len(self.peers)} orchestrator(s) connected"
        return f"{self.state}: {self.reason}; {jobs}"

    def broadcast_status(self):
        msg = self.status()
        for peer in self.peers:
            peer.post(msg)

    # --- lifecycle -------------------------------------------------------------

    async def start(self):
        self.rewrites = self._check_rewrites(self.cfg)
        self.libs = self._codec_list(self.cfg)
        self.evaluate()
        await self.detect_hardware()
        self._start_codecs()
        if self.cfg.eae.enabled:
            self._spawn(self._start_eae())
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/v1/codecs", self.api_codecs)
        app.router.add_post("/api/v1/codecs/refresh", self.api_codecs_refresh)
        app.router.add_get(protocol.CONTROL_PATH, self.control)
        host, port = self.cfg.listen
        self._runner, self.listen_address = await daemon.serve(app, host, port, "orchestrator connections")
        self._spawn(self._recheck_loop())
        self._spawn(self._load_loop())
        if self.cfg.discovery.enabled:
            await self._announce()

    def _txt(self):
        fp = protocol.secret_fingerprint(self.secret) if self.secret else ""
        return discovery.worker_txt(self.status(), fp, hardware.summary(self.hardware))

    async def _announce(self):
        host, port = config.parse_hostport(self.listen_address)
        addresses = discovery.local_addresses(self.cfg.discovery.interfaces, host)
        self.mdns = await discovery.open_mdns(self.cfg.discovery.interfaces)
        # "<name>-<random id>" is unique by construction, so registration skips probing
        self.announcement = discovery.Announcement(self.mdns, discovery.WORKER_TYPE, f"{self.name}-{self.id}", port,
                                                   addresses, self._txt(), unique=True)
        await self.announcement.register()

    def _spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _recheck_loop(self):
        """Notice fixes (share mounted, transcoder installed) without a restart."""
        while True:
            await asyncio.sleep(RECHECK_INTERVAL)
            self.evaluate()

    async def _load_loop(self):
        psutil.cpu_percent(interval=None)
        while True:
            await asyncio.sleep(LOAD_INTERVAL)
            msg = {"type": "load", "cpu": psutil.cpu_percent(interval=None), "running": sorted(self.jobs)}
            for peer in self.peers:
                peer.post(msg)

    async def reload(self):
        cfg = config.load("worker", self.config_path)
        self.rewrites = self._check_rewrites(cfg)
        if cfg.listen != self.cfg.listen:
            logger.warning("`listen` changed: restart the worker to apply it")
        self.cfg = cfg
        self.name = cfg.name or socket.gethostname()
        self._load_secret()
        logger.info("configuration reloaded")
        self.libs = self._codec_list(cfg)
        self.evaluate()
        await self.detect_hardware()
        self._start_codecs()
        self.broadcast_status()
        if self.announcement is not None:
            await self.announcement.update(self._txt())

    async def shutdown(self):
        if self.announcement is not None:
            await self.announcement.withdraw()     # goodbye first: orchestrators drop us at once
            self.announcement = None
        self.draining = True
        if self._runner is not None:
            self.evaluate()
        if self.jobs and self.cfg.drain_timeout > 0:
            logger.info("draining: waiting up to %ss for %d job(s)", self.cfg.drain_timeout, len(self.jobs))
            tasks = [j.task for j in self.jobs.values() if j.task]
            await asyncio.wait(tasks, timeout=self.cfg.drain_timeout)
        jobs = [j for j in self.jobs.values() if j.transcode]
        if jobs:
            logger.info("stopping %d running transcoder(s)", len(jobs))
            await asyncio.gather(*(j.transcode.terminate() for j in jobs))
            await asyncio.wait([j.task for j in jobs if j.task], timeout=5)
        for peer in list(self.peers):
            await peer.flush_and_close(code=1001, message=b"worker stopping")
        self._stop_codecs()
        if self.eae is not None:
            await self.eae.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- HTTP / control ----------------------------------------------------------

    async def health(self, request):
        return web.json_response({"name": self.name, "state": self.state, "reason": self.reason,
                                  "running_jobs": len(self.jobs), "max_jobs": self.max_jobs,
                                  "orchestrators": len(self.peers)})

    async def api_codecs(self, request):
        return web.json_response({"enabled": self.cfg.codecs.enabled,
                                  "codecs": self.codecs.state.as_dict() if self.codecs else None,
                                  "transcoder": self.hardware["transcoder"],
                                  "eae": self.status()["eae"]})

    async def api_codecs_refresh(self, request):
        """Check and download again (from this host only)."""
        if request.remote not in ("127.0.0.1", "::1"):
            return web.json_response({"error": "only from the worker's own host"}, status=403)
        self._stop_codecs()
        self._start_codecs()
        self.evaluate()
        return await self.api_codecs(request)

    async def control(self, request):
        ws, ok = await link.accept(request, self.secret, protocol.ROLE_WORKER, (protocol.ROLE_ORCHESTRATOR,),
                                   {"name": self.name}, self.log_once, heartbeat=2.0)
        if not ok:
            return ws
        peer = link.Peer(ws, request.remote or "?")
        self.peers.add(peer)
        peer.post(self.status())
        logger.info("orchestrator connected from %s", peer.name)
        try:
            async for msg in link.messages(ws, peer.name, self.log_once):
                await self.on_message(peer, msg)
        finally:
            self.peers.discard(peer)
            peer.abort()
            self._detach(peer)
            logger.info("orchestrator at %s disconnected", peer.name)
        return ws

    async def on_message(self, peer, msg):
        kind = msg["type"]
        if kind == "start":
            await self.start_job(peer, msg.get("job"))
        elif kind == "cancel":
            job = self.jobs.get(msg.get("job_id"))
            if job is not None and job.transcode is not None:
                logger.info("job %s: cancel requested", job.id[:8])
                self._spawn(job.transcode.terminate())
            self.detached_done.pop(msg.get("job_id"), None)
        elif kind == "exit_ack":
            self.unacked.pop(msg.get("job_id"), None)
        elif kind in ("drain", "resume"):
            self.draining = kind == "drain"
            logger.info("%s requested by the orchestrator at %s", "drain" if self.draining else "resume", peer.name)
            self.evaluate()
        elif kind == "attach":
            job_id = msg.get("job_id")
            job = self.jobs.get(job_id) or self.detached_done.pop(job_id, None)
            if job is None:
                peer.post({"type": "unknown", "job_id": job_id})
                return
            logger.info("job %s re-attached by the orchestrator at %s", job.id[:8], peer.name)
            job.attach(peer)
        elif kind == "probe":
            self._spawn(self._probe(peer, msg))
        else:
            self.log_once.warning(("type", peer.name, kind), "ignoring unknown message %r from %s", kind, peer.name)

    async def _probe(self, peer, msg):
        """`clusterplex doctor` asks (through the orchestrator): check what jobs need here."""
        probe_id = msg.get("probe_id")
        try:
            if not (isinstance(probe_id, str) and 8 <= len(probe_id) <= 64 and probe_id.isalnum()):
                raise protocol.ProtocolError("probe_id must be 8-64 alphanumeric characters")
            request = protocol.check_probe(msg.get("probe"))
        except protocol.ProtocolError as e:
            self.log_once.warning(("probe", peer.name), "ignoring a malformed probe from %s: %s", peer.name, e)
            return
        self.evaluate()
        _, problem = runner.resolve_transcoder(self.cfg.transcoder)
        st = self.codecs.state if self.codecs is not None else None
        facts = {"name": self.name, "version": __version__, "state": self.state, "reason": self.reason,
                 "transcoder": self.transcoder or self.cfg.transcoder, "transcoder_problem": problem,
                 "transcode_root": self.cfg.transcode_root,
                 "path_map": [{"from": getattr(m, "from"), "to": m.to} for m in self.cfg.path_map],
                 "codecs": {"enabled": self.cfg.codecs.enabled,
                            "version": self.hardware["transcoder"].get("codec_version"),
                            "arch": self.hardware["transcoder"].get("plex_arch"),
                            "state": st.state if st else None, "present": st.present if st else 0,
                            "total": st.total if st else 0, "reason": st.reason if st else ""},
                 "fingerprint": protocol.secret_fingerprint(self.secret) if self.secret else ""}
        result = await probe.probe_here(request, facts)
        logger.info("doctor probe from %s answered", peer.name)
        peer.post({"type": "probe_result", "probe_id": probe_id, "result": result})

    async def start_job(self, peer, raw):
        job_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else ""

        def refuse(reason):
            logger.warning("job %s refused: %s", job_id[:8] or "?", reason)
            peer.post({"type": "refused", "job_id": job_id, "reason": reason})

        try:
            spec = protocol.check_job(raw)
        except protocol.ProtocolError as e:
            return refuse(f"malformed job: {e}")
        if self.state != READY:
            return refuse(f"worker {self.name} is {self.state}: {self.reason}")
        if spec["id"] in self.jobs:
            return refuse("duplicate job id")
        if len(self.jobs) >= self.max_jobs:
            return refuse(f"worker {self.name} is full ({len(self.jobs)}/{self.max_jobs} jobs)")
        if capabilities.needs(spec["argv"]).eae and not (self.eae and self.eae.running):
            return refuse(f"job needs EasyAudioEncoder, which is not running on worker {self.name} "
                          f"(eae.enabled is {str(self.cfg.eae.enabled).lower()})")
        res = rewrite.rewrite({"argv": spec["argv"], "cwd": spec["cwd"], "env": policy.filter_env(spec["env"])},
                              self.rewrites, self.hardware)
        spec = dict(spec, argv=res.argv, cwd=res.cwd, env=res.env)
        for note in res.notes:
            logger.log(logging.DEBUG if note.startswith("env ") else logging.INFO, "job %s: %s", spec["id"][:8], note)
        if spec.get("resume"):
            spec = self._resumed(spec)        # after path_map: the session dir as this worker sees it
        problem = runner.preflight(spec, self.cfg.transcode_root, self.name, self.cfg.output_roots)
        if problem:
            return refuse(problem)
        logger.debug("job %s: %s %s (cwd %s)", spec["id"][:8], shlex.quote(self.transcoder),
                     shlex.join(spec["argv"]), spec["cwd"])
        job = self.jobs[spec["id"]] = WorkerJob(spec, peer)
        job.transcode = runner.Transcode(
            spec, self.transcoder, runner.job_env(spec, self._job_env_overrides()),
            lambda fd, data: job.post({"type": "out", "job_id": job.id, "fd": fd, "data": data.decode("latin-1")}),
            self.cfg.kill_grace)
        try:
            pid = await job.transcode.start()
        except OSError as e:
            del self.jobs[job.id]
            return refuse(f"cannot start transcoder {self.transcoder} on worker {self.name}: {e.strerror}")
        job.pid = pid
        logger.info("job %s started: pid %d, cwd %s", job.id[:8], pid, spec["cwd"])
        job.post({"type": "started", "job_id": job.id, "pid": pid, "t": time.time()})
        job.task = self._spawn(self._finish(job))
        self.broadcast_status()
        self.notifier.status(self.status_line())

    def _resumed(self, spec):
        """A job taken over from a dead worker: continue after its last complete segment."""
        try:
            names = os.listdir(spec["cwd"])
        except OSError:
            return spec
        plan = resume.plan(spec["argv"], names)
        logger.info("job %s: %s", spec["id"][:8], plan.reason)
        return dict(spec, argv=plan.argv) if plan.argv is not None else spec

    def _job_env_overrides(self):
        """What the worker sets whatever the Plex host sent: its own codec dir and EAE folder."""
        env = {}
        if self.codecs is not None:
            env["FFMPEG_EXTERNAL_LIBS"] = rewrite.escape_spaces(self.codecs.path.rstrip("/")) + "/"
        if self.eae is not None:
            env["EAE_ROOT"] = self.eae.watch_dir
        env.update(self.cfg.env)
        return env

    async def _finish(self, job):
        code, sig = await job.transcode.wait()
        self.jobs.pop(job.id, None)
        if job.detach_timer is not None:
            job.detach_timer.cancel()
        how = f"signal {sig}" if sig else f"exit code {code}"
        logger.info("job %s ended: %s%s", job.id[:8], how, " (cancelled)" if job.transcode.cancelled else "")
        job.ended = True
        exit_msg = {"type": "exit", "job_id": job.id, "code": code, "signal": sig}
        job.post(exit_msg)
        if job.owner is None:        # keep the exit code for an orchestrator that re-attaches
            self._keep_done(job)
        else:                        # sent, maybe into a dying connection: held until confirmed
            job.exit_msg = exit_msg
            self.unacked[job.id] = job
            while len(self.unacked) > MAX_UNACKED:
                self.unacked.pop(next(iter(self.unacked)))
        self.broadcast_status()
        self.notifier.status(self.status_line())

    def _keep_done(self, job):
        self.detached_done[job.id] = job
        job.detach_timer = asyncio.get_running_loop().call_later(
            self.cfg.detached_grace, self.detached_done.pop, job.id, None)

    def _detach(self, peer):
        """The orchestrator went away: keep its jobs for a grace period, then stop them."""
        for job in [j for j in self.unacked.values() if j.owner is peer]:
            # Its exit may have died with the connection: report it to the next orchestrator.
            del self.unacked[job.id]
            job.owner = None
            job.backlog, job._backlog_bytes = [job.exit_msg], 0
            self._keep_done(job)
        loop = asyncio.get_running_loop()
        for job in self.jobs.values():
            if job.owner is peer:
                job.owner = None
                logger.warning("job %s lost its orchestrator; stopping it in %ss unless re-attached",
                               job.id[:8], self.cfg.detached_grace)
                job.detach_timer = loop.call_later(self.cfg.detached_grace, self._expire, job)

    def _expire(self, job):
        job.detach_timer = None
        if job.owner is None and job.transcode is not None:
            logger.warning("job %s: no orchestrator re-attached; stopping it", job.id[:8])
            self._spawn(job.transcode.terminate())


def main(argv=None):
    return daemon.main("clusterplex-worker", "worker", Worker, argv)

