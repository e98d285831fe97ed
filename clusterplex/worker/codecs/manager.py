"""CodecManager: keeps ``<root>/<version>-<arch>/`` filled with Plex's codec libraries (concurrent
downloads with retries, ELF verification, atomic commit, pruning of old versions).
Behaviour and failure handling in docs/codecs.md.
"""

import asyncio
import errno
import fcntl
import logging
import os
import secrets
import shutil
import time

import aiohttp

from ... import __version__
from . import files
from .elf import check_elf
from .libs import (COMPONENT_RE, DOWNLOADING, ERROR, NAME_RE, READY, CodecState, backoff_delay, lib_url,
                   prune_plan, short_error, version_dir)

logger = logging.getLogger("clusterplex.worker.codecs")

MAX_LIB_BYTES = 512 << 20        # a Plex codec library is well under 50 MB
LOCK_NAME = ".lock"


class _Failure(Exception):
    """One library failed. ``transient``: worth retrying; ``fatal``: ends the whole round
    (disk full, cannot write, server unreachable)."""

    def __init__(self, reason, *, transient=False, fatal=False, kind="other"):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.fatal = fatal
        self.kind = kind


class CodecManager:
    """Keeps ``<root>/<version>-<arch>/`` filled with the libraries in ``libs``.

    ``version`` None (transcoder not found, no version in it) or ``arch`` None (a machine Plex
    has no codecs for) make every :meth:`ensure` an error with that reason. ``on_progress`` is
    called (synchronously, with a copy of the state) whenever ``state``, ``present`` or
    ``reason`` changes; its exceptions are logged, never raised.

    A directory shared by several workers is fine: downloads are atomic, and a flock on
    ``<dir>/.lock`` keeps one process from removing another's temp files. Old versions are
    pruned by their mtime, which :meth:`ensure` refreshes on the current one each time it is ready.
    """

    def __init__(self, root, server, version, arch, libs, *, concurrency=4, retries=4,
                 backoff=(0.5, 30.0), timeout=60, grace=7 * 86400, on_progress=None):
        for label, value in (("version", version), ("arch", arch)):
            if value is not None and not COMPONENT_RE.fullmatch(value):
                raise ValueError(f"bad codec {label} {value!r}")
        libs = list(dict.fromkeys(libs))
        for name in libs:
            if not NAME_RE.fullmatch(name):
                raise ValueError(f"bad library name {name!r}")
        self.root = os.fspath(root)
        self.server = server.rstrip("/")
        self.version = version
        self.arch = arch
        self.libs = libs
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.timeout = timeout
        self.grace = grace
        self.on_progress = on_progress
        self.path = os.path.join(self.root, version_dir(version, arch)) if version and arch else None
        self._state = CodecState(total=len(libs), version=version, arch=arch, path=self.path)
        self._present = set()
        self._lock = None               # asyncio.Lock, made in the loop
        self._abort = None              # reason that ends the current round
        self._logged_decile = -1

    # --- state ---------------------------------------------------------------

    @property
    def state(self):
        """A copy of the current :class:`CodecState`."""
        return self._state.copy()

    def _update(self, **changes):
        s = self._state
        before = (s.state, s.present, s.reason)
        for k, v in changes.items():
            setattr(s, k, v)
        if (s.state, s.present, s.reason) != before:
            self._log_progress(before)
            if self.on_progress is not None:
                try:
                    self.on_progress(s.copy())
                except Exception:
                    logger.exception("codecs: progress callback failed")

    def _log_progress(self, before):
        s = self._state
        if s.state == DOWNLOADING and s.total:
            decile = s.present * 10 // s.total
            if decile > self._logged_decile:
                self._logged_decile = decile
                if before[0] == DOWNLOADING:
                    logger.info("codecs %d/%d (%d%%)", s.present, s.total, decile * 10)

    def _set_present(self, name):
        self._present.add(name)
        self._update(present=len(self._present))

    # --- one round -----------------------------------------------------------

    async def ensure(self):
        """Make every library present and valid; returns the final state (a copy).

        Never raises for download, server or disk problems (they end in state "error" with the
        reason); CancelledError propagates after removing this round's temp files."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._ensure()
        return self.state

    async def _ensure(self):
        if not self.version:
            self._update(state=ERROR, failed={},
                         reason="no codec version: the transcoder was not found or has no codec version in it")
            return
        if not self.arch:
            self._update(state=ERROR, failed={},
                         reason="no Plex codec build for this machine's architecture")
            return
        self._abort = None
        try:
            lock_fd = await asyncio.to_thread(self._prepare_dir)
        except OSError as e:
            self._update(state=ERROR, failed={},
                         reason=f"cannot create codec directory {self.path}: {e.strerror or e}")
            return
        try:
            present = await asyncio.to_thread(self._scan)
            self._present = set(present)
            missing = [n for n in self.libs if n not in self._present]
            if not missing:
                self._finish_ready()
                return
            logger.info("codecs: %d of %d libraries for %s missing; downloading from %s into %s",
                        len(missing), len(self.libs), version_dir(self.version, self.arch), self.server,
                        self.path)
            self._logged_decile = len(self._present) * 10 // max(1, len(self.libs))
            self._update(state=DOWNLOADING, present=len(self._present), reason="", failed={})
            failed = await self._download_all(missing)
            if not failed:
                await asyncio.to_thread(files.fsync_dir, self.path)
                self._finish_ready()
                return
            reason = self._round_reason(failed)
            logger.warning("codecs %d/%d for %s: %s", len(self._present), len(self.libs),
                           version_dir(self.version, self.arch), reason)
            self._update(state=ERROR, failed=failed, reason=reason)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)        # releases the flock

    def _finish_ready(self):
        try:
            os.utime(self.path)          # "in use": pruning on a shared root goes by mtime
        except OSError:
            pass
        if self._state.state != READY:
            logger.info("codecs ready: %d libraries for %s in %s", len(self.libs),
                        version_dir(self.version, self.arch), self.path)
        self._update(state=READY, present=len(self._present), reason="", failed={})

    def _prepare_dir(self):
        """Create the version dir; take its lock and, holding it, remove leftover temp files.
        Returns the lock's fd (None when another process holds it: its temp files are left)."""
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        fd = None
        try:
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if fd is not None:
                os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                logger.info("codecs: %s is in use by another process; leaving its temp files", self.path)
            else:
                logger.warning("codecs: cannot lock %s: %s", self.path, e.strerror or e)
            return None
        try:
            with os.scandir(self.path) as entries:
                leftovers = [e for e in entries
                             if e.name.endswith(files.TMP_SUFFIX) and e.is_file(follow_symlinks=False)]
        except OSError as e:
            logger.warning("codecs: cannot list %s: %s", self.path, e.strerror or e)
            leftovers = []
        for entry in leftovers:
            try:
                os.unlink(entry.path)
                logger.info("codecs: removed %s left by an interrupted download", entry.name)
            except OSError as e:
                logger.warning("codecs: cannot remove %s: %s", entry.path, e.strerror or e)
        return fd

    def _scan(self):
        """Names of valid libraries on disk; invalid ones are removed (they will be downloaded)."""
        present = []
        for name in self.libs:
            path = os.path.join(self.path, f"{name}.so")
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    head = f.read(64)
            except FileNotFoundError:
                continue
            except OSError as e:
                logger.warning("codecs: cannot read %s: %s; downloading it again", path, e.strerror or e)
                self._remove(path)
                continue
            why = check_elf(head, self.arch, size=size)
            if why is None:
                present.append(name)
            else:
                logger.warning("codecs: bad library %s.so on disk (%s); downloading it again", name, why)
                self._remove(path)
        return present

    @staticmethod
    def _remove(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("codecs: cannot remove %s: %s", path, e.strerror or e)

    def _round_reason(self, failed):
        if self._abort:
            return self._abort
        v = self.version
        names = list(failed)
        missing = [n for n in names if failed[n].startswith("404 ")]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            return (f"404 for {missing[0]}.so{more} of version {v} for {self.arch} "
                    "(this transcoder version is not on the server?)")
        first = failed[names[0]]
        return first + (f" (and {len(names) - 1} more failed)" if len(names) > 1 else "")

    async def _download_all(self, missing):
        sem = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        failed = {}
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=True,
                                         headers={"User-Agent": f"clusterplex/{__version__}"}) as session:

            async def one(name):
                async with sem:
                    if self._abort:
                        return
                    reason = await self._fetch_with_retries(session, name)
                if reason is not None:
                    failed[name] = reason
                else:
                    self._set_present(name)

            tasks = [asyncio.ensure_future(one(n)) for n in missing]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return {n: failed[n] for n in missing if n in failed}

    async def _fetch_with_retries(self, session, name):
        """None when the library is in place, else the reason it is not."""
        base, cap = self.backoff
        for attempt in range(self.retries + 1):
            try:
                await self._fetch(session, name)
                return None
            except _Failure as f:
                failure = f
            except asyncio.CancelledError:
                raise
            except Exception as e:       # a bug must not take the worker down
                logger.exception("codecs: unexpected error downloading %s", name)
                return f"unexpected error downloading {name}.so: {e!r}"
            if failure.fatal:
                self._abort = self._abort or failure.reason
                return failure.reason
            if not failure.transient:
                return failure.reason
            if attempt < self.retries:
                delay = backoff_delay(attempt, base, cap)
                logger.debug("codecs: %s (attempt %d/%d); retrying in %.2f s", failure.reason, attempt + 1,
                             self.retries + 1, delay)
                await asyncio.sleep(delay)
                if self._abort:
                    return self._abort
        if failure.kind == "unreachable":
            self._abort = self._abort or failure.reason
        return failure.reason

    async def _fetch(self, session, name):
        url = lib_url(self.server, self.version, self.arch, name)
        final = os.path.join(self.path, f"{name}.so")
        tmp = os.path.join(self.path, f".{name}.so.{os.getpid()}.{secrets.token_hex(4)}{files.TMP_SUFFIX}")
        answered = False
        try:
            async with session.get(url) as resp:
                answered = True
                if resp.status == 404:
                    raise _Failure(f"404 for {name}.so of version {self.version} ({url})", kind="404")
                if resp.status >= 500 or resp.status in (408, 429):
                    raise _Failure(f"codec server {self.server} answered HTTP {resp.status} for {name}.so",
                                   transient=True, kind="http")
                if resp.status != 200:
                    raise _Failure(f"codec server {self.server} answered HTTP {resp.status} for {name}.so",
                                   kind="http")
                await self._write(resp, name, tmp, final)
        except _Failure:
            raise
        except aiohttp.ClientConnectorError as e:
            raise _Failure(f"codec server {self.server} unreachable: {short_error(e)}", transient=True,
                           kind="unreachable") from None
        except asyncio.TimeoutError:
            if answered:
                raise _Failure(f"download of {name}.so from {self.server} stalled (nothing for {self.timeout} s)",
                               transient=True, kind="connection") from None
            raise _Failure(f"codec server {self.server} unreachable: no answer for {name}.so within "
                           f"{self.timeout} s", transient=True, kind="unreachable") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise _Failure(f"download of {name}.so from {self.server} failed: {short_error(e)}",
                           transient=True, kind="connection") from None
        except aiohttp.ClientError as e:
            raise _Failure(f"download of {name}.so from {self.server} failed: {short_error(e)}",
                           transient=True, kind="connection") from None
        finally:
            self._remove_quiet(tmp)

    async def _write(self, resp, name, tmp, final):
        try:
            f = files.open_tmp(tmp)
        except OSError as e:
            raise self._disk_failure(e, tmp) from None
        committing = False
        try:
            head = b""
            size = 0
            async for chunk in resp.content.iter_chunked(files.CHUNK):
                size += len(chunk)
                if size > MAX_LIB_BYTES:
                    raise _Failure(f"bad library {name}.so: larger than {MAX_LIB_BYTES >> 20} MiB")
                if len(head) < 64:
                    head += chunk[:64 - len(head)]
                try:
                    f.write(chunk)
                except OSError as e:
                    raise self._disk_failure(e, final) from None
            why = check_elf(head, self.arch, size=size)
            if why is not None:
                raise _Failure(f"bad library {name}.so: {why}", kind="bad")
            committing = True            # from here the thread owns f (even if we are cancelled)
            commit = asyncio.ensure_future(asyncio.to_thread(files.commit, f, tmp, final))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                # A cancel must not cancel the commit before its thread starts: f would never be
                # closed. Let it finish (fsync and rename of a verified library), then stop.
                await asyncio.wait([commit])
                commit.exception()       # retrieved: a failed commit leaves only tmp, removed by our caller
                raise
            except OSError as e:
                raise self._disk_failure(e, final) from None
        finally:
            if not committing:
                f.close()

    @staticmethod
    def _disk_failure(e, path):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "disk full" if e.errno == errno.ENOSPC else "disk quota exceeded"
            return _Failure(f"{what} writing {path}", fatal=True, kind="disk")
        return _Failure(f"cannot write {path}: {e.strerror or e}", fatal=True, kind="disk")

    @staticmethod
    def _remove_quiet(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    # --- the loop ------------------------------------------------------------

    async def run(self, retry_interval=30):
        """:meth:`ensure` until ready, sleeping ``retry_interval`` (doubling, up to 10× or 10 min,
        with jitter) between failed rounds; then prune old version dirs. Returns the ready state;
        returns the error at once when the version or arch is unknown (a new manager is needed).
        Cancellable."""
        rounds = 0
        while True:
            state = await self.ensure()
            if state.state == READY:
                await self.prune()
                return self.state
            if not self.version or not self.arch:
                return state
            cap = max(retry_interval, min(600.0, retry_interval * 10))
            delay = backoff_delay(rounds, retry_interval, cap)
            rounds += 1
            logger.info("codecs: retrying in %.0f s (%s)", delay, state.reason)
            await asyncio.sleep(delay)

    async def prune(self, now=None):
        """Delete the version dirs :func:`prune_plan` picks; returns their names."""
        if not self.path:
            return []
        now = time.time() if now is None else now
        return await asyncio.to_thread(self._prune, now)

    def _prune(self, now):
        dirs = []
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        except OSError as e:
            logger.warning("codecs: cannot list %s: %s", self.root, e.strerror or e)
            return []
        done = []
        for name in prune_plan(dirs, os.path.basename(self.path), now, self.grace):
            try:
                shutil.rmtree(os.path.join(self.root, name))
            except OSError as e:
                logger.warning("codecs: cannot remove old codec dir %s: %s", name, e.strerror or e)
                continue
            logger.info("codecs: removed %s (an older version, unused for over %.0f days)", name,
                        self.grace / 86400)
            done.append(name)
        return done
