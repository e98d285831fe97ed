"""Running one transcoder on a worker: checks before start, the process, its end.

The transcoder runs in its own process group (a new session) so a cancel
reaches everything it started, and with PR_SET_PDEATHSIG so it dies with
the worker even when the worker is SIGKILLed. A cancel is SIGTERM to the
group, then SIGKILL after a short grace.
"""

import asyncio
import ctypes
import os
import signal

from ..core import args as plexargs
from ..core import config, policy, shape

PR_SET_PDEATHSIG = 1
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 65536

_libc = None


def _die_with_parent(parent_pid):
    """Runs in the child between fork and exec."""
    def setup():
        global _libc
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the worker died before prctl took effect
            os._exit(1)
    return setup


def is_shim(path):
    """True if ``path`` is ClusterPlex's own shim (running it as the transcoder would loop back to us)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"clusterplex" in head


def resolve_transcoder(path):
    """(usable path or None, reason). A shim at Plex's path means: use Plex's diverted binary."""
    if is_shim(path):
        distrib = path + ".distrib"
        if os.path.exists(distrib) and not is_shim(distrib):
            return distrib, ""
        return None, (f"transcoder {path} is the ClusterPlex shim, not Plex's transcoder; "
                      f"point `transcoder` at Plex's real binary ({config.DIVERTED_TRANSCODER} on a Plex host)")
    if not os.path.exists(path):
        return None, f"transcoder {path} not found (install Plex Media Server here or set `transcoder`)"
    if not os.access(path, os.X_OK) or os.path.isdir(path):
        return None, f"transcoder {path} is not executable"
    return path, ""


def under(path, root):
    """True if ``path`` (resolved) lies inside ``root`` (resolved)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


# Options whose value names a file the transcoder writes (besides the bare outputs): core/shape's table.
WRITE_OPTIONS = frozenset(n for n, kind in shape.OPTIONS.items() if kind == shape.WRITE) | shape.FILE_OR_CALLBACK
OUTPUT_SCHEMES = ("http://", "https://", "pipe:")
# Never read by a job when media_roots is empty (with it, only media_roots and the session dir are).
PRIVATE_PATHS = ("/etc/clusterplex", "/etc/ssh", "/etc/ssl/private", "/etc/shadow", "/etc/gshadow", "/proc", "/sys",
                 "/dev", "/run", "/root", "/boot", "/var/lib/clusterplex")


def output_problem(argv, cwd, output_roots):
    """Why a file this job would write lies outside its session dir and ``output_roots``, or None.

    ``argv``: a list or an ``args.Parsed``. Plex writes segments into the session dir (cwd) and calls
    PMS back over HTTP; optimize jobs write into a library's "Plex Versions" folder, which must be
    listed in ``output_roots``. Files named by options (segments, headers, ``-vstats_file``...) stay
    in the session dir.
    """
    job = plexargs.parse(argv)
    targets = [(t, True) for t in job.output_values]
    targets += [(t.value, False) for t in job.tokens
                if t.kind == "option" and t.name in WRITE_OPTIONS and t.value is not None]
    for target, bare in targets:
        if target == "-" or target.startswith(OUTPUT_SCHEMES):
            continue
        if plexargs.is_url(target) and not target.startswith("file:"):
            return f"refusing output {target}: only files, HTTP callbacks and pipes are allowed"
        path = target[5:] if target.startswith("file:") else target
        full = path if path.startswith("/") else os.path.join(cwd, path)
        allowed = [cwd] + (list(output_roots) if bare else [])
        if ".." in path.split("/") or not any(under(os.path.dirname(full) or "/", root) for root in allowed):
            if not bare:
                return f"refusing output {path}: files named by options stay in the session dir {cwd}"
            return (f"refusing output {path}: outside the session dir {cwd}"
                    + (f" and output_roots ({', '.join(output_roots)})" if output_roots else
                       " (optimize jobs writing to a library need its folder in output_roots)"))
    return None


def input_problem(parsed, cwd, media_roots, private=()):
    """Why a file this job reads lies outside ``media_roots`` and its session dir, or None.

    Without ``media_roots`` any path is read except :data:`PRIVATE_PATHS` and ``private`` (the
    worker's secret and state). Symbolic links are resolved first.
    """
    for path in shape.reads(parsed, cwd):
        real = os.path.realpath(path)
        if media_roots:
            if not any(under(real, root) for root in [cwd, *media_roots]):
                return (f"refused: -i {path} (outside media_roots ({', '.join(media_roots)}) "
                        f"and the session dir)")
        elif any(under(real, p) for p in (*PRIVATE_PATHS, *private)):
            return f"refused: -i {path} (the worker's private files are never a job's input; set media_roots)"
    return None


def preflight(job, transcode_root, worker_name, output_roots=(), parsed=None, media_roots=(), capability=None,
              private=()):
    """Why this job cannot start here (a sentence for the admin), or None.

    ``parsed``: ``job["argv"]`` as an ``args.Parsed``, when the caller has it already; ``capability``
    checks a relay capability in the job's callbacks (core/shape); ``private``: paths no job reads.
    """
    parsed = plexargs.parse(job["argv"] if parsed is None else parsed)
    cwd = job["cwd"]
    if not under(cwd, transcode_root):
        return (f"refusing cwd {cwd}: it is outside transcode_root {transcode_root} on worker {worker_name} "
                f"(is transcode_root the same path as Plex's transcoder temporary directory?)")
    problem = shape.check(parsed, cwd, job.get("id", ""), capability) or input_problem(parsed, cwd, media_roots,
                                                                                        private)
    if problem:
        return f"{problem} (worker {worker_name})"
    if not os.path.isdir(cwd):
        return (f"session directory {cwd} does not exist on worker {worker_name} "
                f"(transcode directory not shared, or mounted at a different path? shares not mounted?)")
    problem = output_problem(parsed, cwd, output_roots)
    if problem:
        return f"{problem} (worker {worker_name})"
    for path in plexargs.local_paths(parsed.input_values, cwd):
        if not os.path.exists(path):
            return (f"input {path} not found on worker {worker_name} "
                    f"(media share not mounted, or mounted at a different path? shares not mounted?)")
    return None


def job_env(job, overrides):
    """The transcoder's environment: allow-listed job env + the worker's own overrides."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    env.update(policy.filter_env(job.get("env", {})))
    env.update(overrides)
    env["CLUSTERPLEX_JOB_ID"] = job["id"]   # a shim that sees this must not forward again
    return env


class Transcode:
    """One running transcoder. ``on_output(fd, bytes)`` is called as output arrives."""

    def __init__(self, job, transcoder, env, on_output, kill_grace):
        self.job = job
        self.transcoder = transcoder
        self.env = env
        self.on_output = on_output
        self.kill_grace = kill_grace
        self.proc = None
        self._pumps = []
        self.cancelled = False

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    async def start(self):
        self.proc = await asyncio.create_subprocess_exec(
            self.transcoder, *self.job["argv"],
            cwd=self.job["cwd"], env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
        )
        loop = asyncio.get_running_loop()
        self._pumps = [loop.create_task(self._pump(self.proc.stdout, 1)),
                       loop.create_task(self._pump(self.proc.stderr, 2))]
        return self.proc.pid

    async def _pump(self, stream, fd):
        while True:
            data = await stream.read(READ_CHUNK)
            if not data:
                return
            self.on_output(fd, data)

    async def wait(self):
        """Wait for the end; return (exit code, signal number or None)."""
        rc = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._killpg(signal.SIGKILL)   # nothing it started outlives it
        if rc < 0:
            return 128 - rc, -rc
        return rc, None

    def _killpg(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def terminate(self):
        """SIGTERM the process group, SIGKILL after the grace period."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.cancelled = True
        self._killpg(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), self.kill_grace)
        except asyncio.TimeoutError:
            self._killpg(signal.SIGKILL)
