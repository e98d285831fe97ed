"""clusterplex-worker: runs transcodes for the orchestrator.

It listens for authenticated orchestrator connections (``CONTROL_PATH``),
reports its state (ready / not ready with the reason / draining) and load,
and dispatches what each orchestrator sends through one table (the types of
``messages.ACCEPTS[(WORKER, ORCHESTRATOR)]``). It runs only its configured
transcoder in cwds under ``transcode_root`` and streams each job's output and
exit code back; the jobs themselves, which outlive a connection for
``detached_grace`` seconds, are in ``job.py``.
"""

import asyncio
import functools
import logging
import os
import platform
import shutil
import socket
import time

import psutil
from aiohttp import web

from .. import __version__
from ..core import capabilities, config, messages, protocol
from . import codecs, eae, hardware, probe, rewrite, runner
from .hardware import load as gpu_load
from .job import Jobs
from ..common import daemon, discovery, link

logger = logging.getLogger("clusterplex.worker")

READY, NOT_READY, DRAINING = "ready", "not_ready", "draining"
RECHECK_INTERVAL = 2.0
LOAD_INTERVAL = 1.0


class Worker:
    """The worker daemon: its readiness, its orchestrator connections, its codecs and EAE, its jobs."""

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
        self.jobs = Jobs(self)
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
        self.gpu_load = None         # hardware.load.GpuLoad once the hardware is detected
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
        run = functools.partial(hardware.run_command, timeout=gpu_load.NVIDIA_TIMEOUT)
        self.gpu_load = gpu_load.GpuLoad(hardware.scan_drm(), run, nvidia=shutil.which("nvidia-smi") is not None,
                                         session_limit=self.cfg.gpu_session_limit)

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
        self._codecs_task = self.spawn(self.codecs.run())

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
                self.spawn(self.announcement.update(self._txt()))
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
                self.spawn(self.announcement.update(self._txt()))
        self.notifier.status(self.status_line())

    def status(self):
        hw = self.hardware
        return messages.status(
            id=self.id,
            proto=protocol.PROTO_VERSION,
            name=self.name,
            state=self.state,
            reason=self.reason,
            max_jobs=self.max_jobs,
            weight=self.cfg.weight,
            priority=self.cfg.priority,
            cpus=hw["cpu"]["threads"],
            benchmark=hw["cpu"]["benchmark"],
            running=sorted(self.jobs.running),
            jobs=self.jobs.views(),
            version=__version__,
            transcoder=self.transcoder or self.cfg.transcoder,
            codecs=self.codecs.state.as_dict() if self.codecs is not None else None,
            eae={"enabled": self.cfg.eae.enabled, "running": bool(self.eae and self.eae.running),
                 "problem": self.eae_problem},
            hardware={"cpus": hw["cpu"]["threads"], "arch": hw["cpu"]["arch"], "model": hw["cpu"]["model"],
                      "memory": hw["memory"], "gpus": hw["gpus"],
                      "hw_codecs": hw["hw_codecs"] + ([capabilities.EAE] if self.eae and self.eae.running else []),
                      "plex_codecs": hw["transcoder"].get("codec_version"),
                      "plex_arch": hw["transcoder"].get("plex_arch")},
        )

    def status_line(self):
        jobs = f"{len(self.jobs.running)}/{self.max_jobs} jobs running"
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

    def changed(self):
        """A job started or ended: tell the orchestrators and systemd."""
        self.broadcast_status()
        self.notifier.status(self.status_line())

    def refusal(self):
        """Why this worker takes no job now (not ready, draining), or None."""
        return None if self.state == READY else f"worker {self.name} is {self.state}: {self.reason}"

    def job_env_overrides(self):
        """What the worker sets whatever the Plex host sent: its own codec dir and EAE folder."""
        env = {}
        if self.codecs is not None:
            env["FFMPEG_EXTERNAL_LIBS"] = rewrite.escape_spaces(self.codecs.path.rstrip("/")) + "/"
        if self.eae is not None:
            env["EAE_ROOT"] = self.eae.watch_dir
        env.update(self.cfg.env)
        return env

    # --- lifecycle -------------------------------------------------------------

    async def start(self):
        self.rewrites = self._check_rewrites(self.cfg)
        self.libs = self._codec_list(self.cfg)
        self.evaluate()
        await self.detect_hardware()
        self._start_codecs()
        if self.cfg.eae.enabled:
            self.spawn(self._start_eae())
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/v1/codecs", self.api_codecs)
        app.router.add_post("/api/v1/codecs/refresh", self.api_codecs_refresh)
        app.router.add_get(protocol.CONTROL_PATH, self.control)
        host, port = self.cfg.listen
        self._runner, self.listen_address = await daemon.serve(app, host, port, "orchestrator connections")
        self.spawn(self._recheck_loop())
        self.spawn(self._load_loop())
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

    def spawn(self, coro):
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
            gpus = await self._sample_gpus()
            msg = messages.load(psutil.cpu_percent(interval=None), sorted(self.jobs.running), gpus)
            for peer in self.peers:
                peer.post(msg)

    async def _sample_gpus(self):
        """Per-GPU load for the load message (sysfs every second, nvidia-smi every few: off the loop)."""
        sampler = self.gpu_load
        if sampler is None:
            return []
        had_nvidia = sampler.nvidia
        gpus = await asyncio.get_running_loop().run_in_executor(None, sampler.sample, time.monotonic())
        if had_nvidia and not sampler.nvidia:
            logger.info("GPU load: not asking nvidia-smi again (%s)", sampler.failure)
        return gpus

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
        running = self.jobs.running
        if running and self.cfg.drain_timeout > 0:
            logger.info("draining: waiting up to %ss for %d job(s)", self.cfg.drain_timeout, len(running))
            tasks = [j.task for j in running.values() if j.task]
            await asyncio.wait(tasks, timeout=self.cfg.drain_timeout)
        jobs = [j for j in running.values() if j.transcode]
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
                                  "running_jobs": len(self.jobs.running), "max_jobs": self.max_jobs,
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
            self.jobs.detach(peer)
            logger.info("orchestrator at %s disconnected", peer.name)
        return ws

    async def on_message(self, peer, msg):
        kind = msg["type"]
        handler = self._HANDLERS.get(kind)
        if handler is None:
            self.log_once.warning(("type", peer.name, kind), "ignoring unknown message %r from %s", kind, peer.name)
            return
        await handler(self, peer, msg)

    async def _on_start(self, peer, msg):
        await self.jobs.start(peer, msg.get("job"))

    async def _on_cancel(self, peer, msg):
        self.jobs.cancel(msg.get("job_id"))

    async def _on_exit_ack(self, peer, msg):
        self.jobs.ack(msg.get("job_id"))

    async def _on_drain_or_resume(self, peer, msg):
        self.draining = msg["type"] == messages.DRAIN
        logger.info("%s requested by the orchestrator at %s", "drain" if self.draining else "resume", peer.name)
        self.evaluate()

    async def _on_attach(self, peer, msg):
        job_id = msg.get("job_id")
        if not self.jobs.attach(job_id, peer):
            peer.post(messages.unknown(job_id))

    async def _on_probe(self, peer, msg):
        self.spawn(self._probe(peer, msg))

    # what an orchestrator may send a worker (messages.ACCEPTS); anything else is logged once and ignored
    _HANDLERS = {messages.START: _on_start, messages.CANCEL: _on_cancel, messages.EXIT_ACK: _on_exit_ack,
                 messages.DRAIN: _on_drain_or_resume, messages.RESUME: _on_drain_or_resume,
                 messages.ATTACH: _on_attach, messages.PROBE: _on_probe}

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
        peer.post(messages.probe_result(probe_id, result))


def main(argv=None):
    return daemon.main("clusterplex-worker", "worker", Worker, argv)

