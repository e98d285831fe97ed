"""A real one-machine cluster for tests, benchmarks and the demo.

Every piece is a real process: fake PMS (aiohttp), orchestrator, workers,
relay, and shims run like PMS runs its transcoder. Daemons bind port 0 on
127.0.0.1 and report the bound address with READY=1 on their NOTIFY_SOCKET
(``X_CLUSTERPLEX_LISTEN=``), so there is no port race and no sleeping: the
harness waits on those notifications (and on STATUS= lines) with timeouts.
"""

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAKES = REPO / "tests" / "fakes"
STANDIN = FAKES / "plex_transcoder.py"
FAKE_PMS = FAKES / "fake_pms.py"
PLEX_TOKEN = "local-00000000-0000-4000-8000-00000000cafe"
SECRET = "s3cr3t-" + "0123456789abcdef" * 3


def command(name):
    """Console script ``name`` of the running environment, or ``python -m``."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return [str(path)]
    module = {"clusterplex": "cli"}.get(name, name.replace("clusterplex-", ""))
    return [sys.executable, "-m", f"clusterplex.{module}"]


class Daemon:
    """A subprocess that reports READY=1 (and STATUS=) on its own notify socket."""

    def __init__(self, name, cmd, workdir, env=None):
        self.name = name
        self.cmd = cmd
        self.workdir = Path(workdir)
        self.env = env
        self.proc = None
        self.listen = None
        self.messages = []
        self._cond = threading.Condition()
        self.log_path = self.workdir / f"{name}.log"
        self._sock = None
        self._reader = None

    def start(self, timeout=30):
        sock_path = self.workdir / f"{self.name}.notify"
        sock_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        env = dict(os.environ if self.env is None else self.env)
        env["NOTIFY_SOCKET"] = str(sock_path)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir)
        self._reader = threading.Thread(target=self._read, name=f"notify-{self.name}", daemon=True)
        self._reader.start()
        fields = self.wait_for(lambda f: f.get("READY") == "1", timeout, what="READY=1")
        self.listen = fields.get("X_CLUSTERPLEX_LISTEN")
        return self

    def _read(self):
        while True:
            r, _, _ = select.select([self._sock], [], [], 0.2)
            if r:
                data = self._sock.recv(65536).decode("utf-8", "replace")
                fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
                with self._cond:
                    self.messages.append(fields)
                    self._cond.notify_all()
            elif self.proc.poll() is not None:
                with self._cond:
                    self._cond.notify_all()
                if not select.select([self._sock], [], [], 0)[0]:
                    return

    def mark(self):
        """A point in the notification stream: pass it as ``since`` to wait only for later ones."""
        with self._cond:
            return len(self.messages)

    def wait_for(self, predicate, timeout, what="notification", since=0):
        """Wait for a notification (after ``since``) matching ``predicate``; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        seen = since
        with self._cond:
            while True:
                for fields in self.messages[seen:]:
                    if predicate(fields):
                        return fields
                seen = len(self.messages)
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before {what}:\n"
                                       f"{self.log_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no {what} within {timeout}s:\n{self.log_tail()}")
                self._cond.wait(left)

    def wait_status(self, pattern, timeout=20, since=0):
        rx = re.compile(pattern)
        return self.wait_for(lambda f: "STATUS" in f and rx.search(f["STATUS"]), timeout,
                             what=f"STATUS matching {pattern!r}", since=since)["STATUS"]

    def log_tail(self, n=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log(self):
        return self.log_path.read_text(errors="replace")

    def log_size(self):
        """A point in the log: pass it as ``since`` to ``wait_log``."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def wait_log(self, needle, timeout=10, since=0):
        """Wait until ``needle`` is logged (after byte offset ``since``); the log text after it."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode(errors="replace")
            if needle in text:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {needle!r} within {timeout}s; its log since:\n"
                                     f"{text[-3000:]}")
            time.sleep(0.02)          # poll interval of the log file

    def stop(self, timeout=15):
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise
            return self.proc.returncode
        finally:
            self._close()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def _close(self):
        if self._reader is not None:
            self._reader.join(5)
        if self._sock is not None:
            self._sock.close()

    @property
    def url(self):
        return f"http://{self.listen}"


def write_yaml(path, data):
    # JSON is valid YAML; keeps the harness free of a YAML writer.
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    return path


def wait_pid_gone(pid, timeout):
    """Wait until process ``pid`` (not necessarily our child) has exited; True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def read_until(stream, needle, timeout):
    """Read a pipe until ``needle`` (str) shows up; bounded, event-driven. Returns what was read."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    while needle.encode() not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"{needle!r} not seen; got {buf!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise EOFError(f"{needle!r} not seen before EOF; got {buf!r}")
        buf += chunk
    return buf


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Cluster:
    """fake PMS + relay + orchestrator + N workers on loopback, all real processes."""

    def __init__(self, root, workers=2, strategy="LOAD_TASKS", max_jobs=2, worker_overrides=None,
                 secret=SECRET, worker_secret=None, wait_ready=True, orchestrator_overrides=None):
        self.root = Path(root)
        self.n_workers = workers
        self.strategy = strategy
        self.max_jobs = max_jobs
        self.worker_overrides = worker_overrides or {}
        self.secret = secret
        self.worker_secret = worker_secret
        self.wait_ready = wait_ready
        self.orchestrator_overrides = orchestrator_overrides or {}
        self.transcode_root = self.root / "transcode"
        self.sessions = self.transcode_root / "Transcode" / "Sessions"
        self.media = self.root / "media"
        self.pms = None
        self.relay = None
        self.orchestrator = None
        self.workers = []
        self.daemons = []

    # --- start/stop ---------------------------------------------------------------

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.sessions.mkdir(parents=True, exist_ok=True)
        self.media.mkdir(parents=True, exist_ok=True)
        self.secret_file = self.root / "secret"
        self.secret_file.write_text(self.secret + "\n")
        self.secret_file.chmod(0o600)
        try:
            self.pms = self._start(Daemon("fake-pms", self.wrap("pms", [sys.executable, str(FAKE_PMS), "--listen",
                                                                       "127.0.0.1:0", "--token", PLEX_TOKEN]),
                                          self.root))
            for i in range(self.n_workers):
                self.workers.append(self.start_worker(i))
            self.orchestrator = self._start(Daemon(
                "orchestrator", self.wrap("orchestrator", command("clusterplex-orchestrator") +
                                          ["--config", str(self.orchestrator_config())]), self.root))
            self.relay = self._start(Daemon("relay", self.wrap("relay", command("clusterplex-relay") +
                                                               ["--config", str(self.pms_config("relay"))]),
                                            self.root))
            if self.wait_ready:
                self.wait_workers_ready(self.n_workers)
        except BaseException:
            self.stop()
            raise
        return self

    def wrap(self, role, cmd):
        """Hook: how ``role``'s command runs (a subclass puts it in a network namespace)."""
        return cmd

    def _start(self, daemon):
        self.daemons.append(daemon)
        return daemon.start()

    def worker_config(self, i, **over):
        secret_file = self.secret_file
        if self.worker_secret is not None:
            secret_file = self.root / f"secret-worker{i}"
            secret_file.write_text(self.worker_secret + "\n")
        cfg = {"name": f"worker{i}", "listen": "127.0.0.1:0", "secret_file": str(secret_file),
               "transcoder": str(STANDIN), "transcode_root": str(self.transcode_root),
               "max_jobs": self.max_jobs, "state_dir": str(self.root / "state"), "kill_grace": 0.5,
               "drain_timeout": 0, "detached_grace": 5,
               "codecs": {"enabled": False},   # never Plex's codec server from a test
               "discovery": {"enabled": False}, "log_level": "debug"}
        cfg.update(self.worker_overrides.get(i, {}))
        cfg.update(over)
        return write_yaml(self.root / f"worker{i}.yaml", cfg)

    def start_worker(self, i, **over):
        return self._start(Daemon(f"worker{i}", self.wrap(f"worker{i}", command("clusterplex-worker") +
                                                          ["--config", str(self.worker_config(i, **over))]),
                                  self.root))

    def restart_orchestrator(self, kill=False):
        """Stop (SIGTERM, or SIGKILL: a crash) and start a new orchestrator on the same address."""
        listen = self.orchestrator.listen
        if kill:
            self.orchestrator.kill()
        self.orchestrator.stop()
        self.daemons.remove(self.orchestrator)
        cfg = self.orchestrator_config(listen=listen)
        self.orchestrator = self._start(Daemon("orchestrator", self.wrap("orchestrator", command(
            "clusterplex-orchestrator") + ["--config", str(cfg)]), self.root))
        return self.orchestrator

    def restart_relay(self):
        """Restart the relay on the same address (the shims' advertise URL stays valid)."""
        listen = self.relay.listen
        self.relay.stop()
        self.daemons.remove(self.relay)
        cfg = self.pms_config("relay", relay={"listen": listen})
        self.relay = self._start(Daemon("relay", self.wrap("relay", command("clusterplex-relay") +
                                                           ["--config", str(cfg)]), self.root))
        return self.relay

    def orchestrator_config(self, listen="127.0.0.1:0"):
        return write_yaml(self.root / "orchestrator.yaml", {
            "listen": listen, "secret_file": str(self.secret_file), "strategy": self.strategy,
            "workers": [w.listen for w in self.workers], "discovery": {"enabled": False},
            "heartbeat_interval": 1.0, "log_level": "debug", **self.orchestrator_overrides})

    def pms_config(self, name, mode="both", **over):
        cfg = {"secret_file": str(self.secret_file), "mode": mode, "original_transcoder": str(STANDIN),
               "plex_url": self.pms.url, "relay": {"listen": "127.0.0.1:0"}, "log_level": "debug"}
        if self.orchestrator is not None:
            cfg["orchestrator"] = self.orchestrator.url
        if self.relay is not None:
            cfg["relay"]["advertise"] = self.relay.url
        cfg.update(over)
        # this cluster's own socket for the shim's local-run events (never the system's /run/clusterplex)
        cfg["relay"] = {"events_socket": str(self.root / "shim-events.sock"), **cfg["relay"]}
        return write_yaml(self.root / f"pms-{name}.yaml", cfg)

    def wait_workers_ready(self, n, timeout=20):
        return self.orchestrator.wait_status(rf"^{n} of \d+ workers ready", timeout)

    def stop(self):
        errors = []
        for d in reversed(self.daemons):
            try:
                d.stop()
            except Exception as e:  # keep stopping the others
                errors.append(f"{d.name}: {e}")
        self.daemons.clear()
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- jobs ----------------------------------------------------------------------

    def session_dir(self, key, uuid):
        d = self.sessions / f"plex-transcode-{key}-{uuid}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def shim(self, argv, cwd, mode="both", env=None, config=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
             **cfg_over):
        """Start the shim as PMS would (argv, cwd, env with the Plex token). Output goes to pipes unless
        ``stdout``/``stderr`` say otherwise (files for long runs that only read it at the end)."""
        cfg = config or self.pms_config(f"shim-{mode}", mode=mode, **cfg_over)
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "X_PLEX_TOKEN": PLEX_TOKEN,
             "CLUSTERPLEX_CONFIG": str(cfg), "LD_PRELOAD": "", "PYTHONPATH": "/nonexistent",
             "PLEX_MEDIA_SERVER_INFO_MODEL": "x86_64"}
        e.update(env or {})
        return subprocess.Popen(self.wrap("shim", command("clusterplex-shim") + list(argv)), cwd=cwd, env=e,
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)

    def api(self, path):
        with urllib.request.urlopen(self.orchestrator.url + path, timeout=5) as r:
            return json.load(r)

    def pms_requests(self):
        with urllib.request.urlopen(self.pms.url + "/_fake/requests", timeout=5) as r:
            return json.load(r)

    def pms_wait(self, path_contains, count=1, timeout=20):
        url = (f"{self.pms.url}/_fake/wait?path_contains={urllib.parse.quote(path_contains)}"
               f"&count={count}&timeout={timeout}")
        with urllib.request.urlopen(url, timeout=timeout + 5) as r:
            return json.load(r)


