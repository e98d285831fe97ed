"""EasyAudioEncoder under the worker's supervision.

Plex's transcoder hands ``*_eae`` audio to EasyAudioEncoder through files in
``EAE_ROOT``: the transcoder writes into a job folder there and EAE, watching
its working directory, writes the result next to it. One EAE runs per worker,
with its working directory (and so its pid file) on local disk, never on the
shared transcode storage; jobs get ``EAE_ROOT`` pointing at it. It is
restarted if it dies and killed with the worker. Fetching it is
:func:`clusterplex.worker.codecs.fetch_eae`.
"""

import asyncio
import ctypes
import logging
import os
import signal

logger = logging.getLogger(__name__)

BINARY = "EasyAudioEncoder"
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent):
    def setup():
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
    return setup


class Supervisor:
    """Keeps one EasyAudioEncoder running; ``on_change(running)`` when that changes."""

    def __init__(self, binary, watch_dir, on_change=None, backoff=(1.0, 30.0)):
        self.binary = binary
        self.watch_dir = watch_dir
        self.on_change = on_change or (lambda running: None)
        self.backoff = backoff
        self.proc = None
        self.restarts = 0
        self._task = None
        self._stopping = False

    @property
    def running(self):
        return self.proc is not None and self.proc.returncode is None

    def start(self):
        os.makedirs(self.watch_dir, mode=0o750, exist_ok=True)
        self._task = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self):
        delay = self.backoff[0]
        while not self._stopping:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    self.binary, cwd=self.watch_dir, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    preexec_fn=_die_with_parent(os.getpid()))
            except OSError as e:
                logger.error("cannot start %s: %s", self.binary, e.strerror)
                self.proc = None
            else:
                logger.info("EasyAudioEncoder running (pid %d, watch folder %s)", self.proc.pid, self.watch_dir)
                self.on_change(True)
                started = asyncio.get_running_loop().time()
                rc = await self.proc.wait()
                if self._stopping:
                    return
                self.on_change(False)
                logger.warning("EasyAudioEncoder exited (%s); restarting", rc)
                self.restarts += 1
                if asyncio.get_running_loop().time() - started > 60:
                    delay = self.backoff[0]
            await asyncio.sleep(delay)          # restart backoff
            delay = min(self.backoff[1], delay * 2)

    async def stop(self):
        self._stopping = True
        if self.running:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 2.0)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._task is not None:
            self._task.cancel()
