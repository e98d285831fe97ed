"""clusterplex-shim: stands at Plex's transcoder path and hands jobs to the cluster.

PMS runs it with the transcoder's arguments, cwd and environment. It
rewrites PMS's URL to the relay (or to ``relay.direct_url`` when the relay is
off), keeps an allow-listed environment, submits
the job to the orchestrator and then mirrors the remote transcoder: its
output on our stdout/stderr, its exit code as ours. PMS stops a transcode by
SIGKILLing us; the orchestrator sees our connection drop and cancels the
remote job at once.

Policy (``mode`` in pms.yaml): ``local`` execs Plex's original transcoder in
place (same pid); ``both`` does so when no worker can take the job or it
fails before the transcoder started; ``remote`` never runs locally. Jobs
matching a local rule (detection passes, configured rules) always run here.

Runs on every play and seek: standard library only (plus PyYAML to read the
config), no asyncio, no aiohttp.
"""

import os
import socket
import sys

from .core import args as plexargs
from .core import cache, config, messages, policy, protocol
from .core.miniws import WebSocket, WebSocketError

EX_REMOTE_FAILED = 1
RECV_TIMEOUT = 10.0      # the orchestrator pings every few seconds; silence this long = gone


def say(msg):
    try:
        os.write(2, f"clusterplex: {msg}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def exec_local(original, argv, why):
    """Replace this process with Plex's own transcoder (PMS's SIGKILL then reaches it)."""
    if why:
        say(f"running locally: {why}")
    try:
        os.execv(original, [original] + argv)
    except OSError as e:
        say(f"cannot run Plex's transcoder {original}: {e.strerror}")
        return 127


class Remote:
    """One remote run: connect, authenticate, submit, follow events."""

    def __init__(self, cfg, secret, argv, cwd, environ):
        self.cfg = cfg
        self.secret = secret
        self.job_id = protocol.new_job_id()
        parsed = plexargs.parse(argv)
        self.argv = plexargs.rewrite_urls(parsed.argv, cfg.plex_url, callback_base(cfg, secret, self.job_id))
        key, uuid = parsed.session
        self.job = {"id": self.job_id, "argv": self.argv, "cwd": cwd,
                    "env": policy.filter_env(environ, cfg.env_allow),
                    "session": f"{key}/{uuid}" if uuid else key}
        self.started = False
        self.submitted = False
        self.ws = None
        self.url = cfg.orchestrator
        self.reattach_deadline = None

    def connect(self, first=True):
        """Connect and authenticate; then submit the job (first time) or re-attach to it."""
        host, port = split_url(self.url)
        self.ws = WebSocket.connect(host, port, protocol.SHIM_PATH, self.cfg.connect_timeout)
        hs = protocol.ClientHandshake(self.secret, protocol.ROLE_SHIM, protocol.ROLE_ORCHESTRATOR)
        self.ws.send_text(protocol.encode(hs.on_hello(self._recv())))
        hs.on_welcome(self._recv())
        self.ws.settimeout(RECV_TIMEOUT)
        if first:
            # mode: the orchestrator counts the runs that fall back to Plex's transcoder here
            self.ws.send_text(protocol.encode(messages.submit(self.job, self.cfg.mode)))
            self.submitted = True
        else:
            self.ws.send_text(protocol.encode(messages.attach(self.job_id)))

    def reattach(self, why, first=False):
        """The orchestrator went away mid-job (restart, upgrade, crash): our transcode keeps running
        on its worker, so come back for it, for up to ``reattach_timeout`` seconds. ``first``: it
        was not there to take the job at all (mode remote: submit once it is back)."""
        import time
        if self.reattach_deadline is None:      # one bound per outage, not per connection attempt
            self.reattach_deadline = time.monotonic() + self.cfg.reattach_timeout
        deadline = self.reattach_deadline
        delay = 0.05
        while time.monotonic() < deadline:
            self.close()
            if self.cfg.orchestrator == "auto":
                found = cache.read(self.cfg.discovery.cache_file)
                self.url = found["url"] if found else self.url
            try:
                self.connect(first=first)
                return True
            except (OSError, WebSocketError, protocol.ProtocolError):
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))   # retry backoff
                delay = min(1.0, delay * 2)
        if not first:
            say(f"orchestrator {self.url} gone ({why}) and not back within {self.cfg.reattach_timeout}s")
        return False

    def close(self):
        if self.ws is not None:
            try:
                self.ws.sock.close()
            except OSError:
                pass

    def _recv(self):
        text = self.ws.recv_text()
        if text is None:
            raise ConnectionResetError(f"orchestrator closed the connection (code {self.ws.close_code})")
        return protocol.decode(text)

    def follow(self):
        """Mirror the job; return ("exit", code, signal) or ("failed", reason, fallback_ok)."""
        while True:
            msg = self._recv()
            handler = self._HANDLERS.get(msg["type"])
            result = handler(self, msg) if handler is not None else None
            if result is not None:
                return result

    def _on_out(self, msg):
        data = msg.get("data")
        if isinstance(data, str):
            try:
                os.write(2 if msg.get("fd") == 2 else 1, data.encode("latin-1", "replace"))
            except OSError:
                pass

    def _on_assigned(self, msg):
        pass                # a worker was chosen; the job is ours once it has started

    def _on_started(self, msg):
        self.started = True

    def _on_failover(self, msg):
        say(f"{msg.get('reason')}; restarting it on another worker")

    def _on_attached(self, msg):
        self.started = True
        self.reattach_deadline = None

    def _on_exit(self, msg):
        code = msg.get("code")
        sig = msg.get("signal")
        return ("exit", code if isinstance(code, int) and 0 <= code <= 255 else 1,
                sig if isinstance(sig, int) and 0 < sig < 65 else None)

    def _on_failed(self, msg):
        if msg.get("resume") is True and msg.get("fallback"):
            return ("failed", str(msg.get("reason") or "remote job failed"), "resume")
        return ("failed", str(msg.get("reason") or "remote job failed"),
                bool(msg.get("fallback")) and not msg.get("started") and not self.started)

    def _on_refused(self, msg):
        raise protocol.AuthError(str(msg.get("reason")))

    # what the orchestrator may send a shim (messages.ACCEPTS); anything else is ignored
    _HANDLERS = {messages.ASSIGNED: _on_assigned, messages.OUT: _on_out, messages.STARTED: _on_started,
                 messages.FAILOVER: _on_failover, messages.ATTACHED: _on_attached, messages.EXIT: _on_exit,
                 messages.FAILED: _on_failed, messages.REFUSED: _on_refused}

def callback_base(cfg, secret, job_id):
    """Where the job's transcoder calls PMS back: the relay with this job's capability, or, with
    ``relay.enabled: false``, PMS itself at ``relay.direct_url`` (its allowed-without-auth networks
    must then list the workers)."""
    if not cfg.relay.enabled:
        return cfg.relay.direct_url
    advertise = cfg.relay.advertise or f"http://{socket.gethostname()}:{cfg.relay.listen[1]}"
    return advertise + protocol.relay_prefix(secret, job_id)


def split_url(url):
    """``http://host:port/...`` -> (host, port)."""
    hostport = url.partition("://")[2].split("/", 1)[0]
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]")
        port = port[1:]
    elif ":" in hostport:
        host, _, port = hostport.rpartition(":")
    else:
        host, port = hostport, ""
    return host, int(port) if port else 80


def run(argv, environ=None, cwd=None):
    """The shim's logic; returns an exit code (or never returns: exec)."""
    environ = os.environ if environ is None else environ
    cfg_path = environ.get("CLUSTERPLEX_CONFIG") or config.default_path("pms")
    try:
        cfg = config.load("pms", cfg_path)
    except config.ConfigError as e:
        say(f"configuration error: {e}")
        if os.path.exists(config.DIVERTED_TRANSCODER):
            return exec_local(config.DIVERTED_TRANSCODER, argv, "falling back to Plex's transcoder")
        return config.EX_CONFIG
    original = cfg.original_transcoder
    if environ.get("CLUSTERPLEX_JOB_ID"):
        # A worker ran us as its transcoder: forwarding again would loop.
        return exec_local(original, argv, "started by a ClusterPlex worker; not forwarding again")
    if cfg.mode == "local":
        tell_relay(cfg, "forced_local mode_local")
        return exec_local(original, argv, None)
    cwd = cwd or os.getcwd()
    job = plexargs.parse(argv)      # tokenised once: the local rules, the session and a resume read it
    why = policy.must_run_local(job, cwd, cfg.local_rules, cfg.local_thumbnails)
    if why:
        local_rule = why.startswith(("local_rules[", "local_thumbnails"))
        tell_relay(cfg, "forced_local " + ("local_rules" if local_rule else "detection"))
        return exec_local(original, argv, why)
    try:
        secret = config.load_secret(cfg.secret_file)
    except config.ConfigError as e:
        return fail_or_fallback(cfg, argv, f"cannot use the cluster: {e}", True)
    remote = Remote(cfg, secret, job, cwd, environ)
    if cfg.orchestrator == "auto":
        found = cache.read(cfg.discovery.cache_file)
        if found is None:
            return fail_or_fallback(cfg, argv, f"orchestrator not discovered yet (no {cfg.discovery.cache_file}; "
                                               f"clusterplex-relay finds it over mDNS: is it running?)", True)
        remote.url = found["url"]
    try:
        remote.connect()
    except protocol.AuthError as e:
        return fail_or_fallback(cfg, argv, f"orchestrator {remote.url} refused us: {e}", True)
    except (OSError, WebSocketError, protocol.ProtocolError) as e:
        if cfg.mode != "remote":
            return fail_or_fallback(cfg, argv, f"orchestrator {remote.url} unreachable: {e}", True)
        # Nowhere else to run it: wait out an orchestrator restart rather than fail the play.
        say(f"orchestrator {remote.url} unreachable ({e}); trying again for up to {cfg.reattach_timeout:g}s")
        if not remote.reattach(e, first=True):
            return fail_or_fallback(cfg, argv, f"orchestrator {remote.url} unreachable: {e}", True)
    while True:
        try:
            outcome = remote.follow()
            break
        except protocol.AuthError as e:
            return fail_or_fallback(cfg, argv, f"orchestrator {remote.url} refused us: {e}", not remote.started)
        except (OSError, WebSocketError, protocol.ProtocolError) as e:
            if not remote.reattach(e):
                return fail_or_fallback(cfg, argv, f"orchestrator {remote.url} connection lost: {e}",
                                        not remote.started)
    if outcome[0] == "exit":
        _, code, sig = outcome
        if sig:
            import signal
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        return code
    _, reason, fallback_ok = outcome
    # The orchestrator told us why: it counted this run already.
    if fallback_ok == "resume":
        return fail_or_fallback(cfg, resumed(job, cwd), reason + "; continuing from the last segment", True,
                                counted=True)
    return fail_or_fallback(cfg, argv, reason, fallback_ok, counted=True)


def resumed(job, cwd):
    """The arguments that continue this transcode (an ``args.Parsed``) after its last complete segment
    (or as they were), as a list."""
    from .core import resume
    try:
        plan = resume.plan(job, os.listdir(cwd))
    except OSError:
        return list(job.argv)
    return plan.argv if plan.argv is not None else list(job.argv)


def tell_relay(cfg, event):
    """Let clusterplex-relay count a play that runs here without the orchestrator knowing (its
    metrics): one datagram to a local socket, never waiting; nobody listening is fine."""
    if not cfg.relay.events_socket:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)
            s.sendto(event.encode(), cfg.relay.events_socket)
    except OSError:
        pass


def fail_or_fallback(cfg, argv, reason, fallback_ok, counted=False):
    if cfg.mode == "both" and fallback_ok:
        if not counted:
            tell_relay(cfg, "fell_back_local cluster_unreachable")
        return exec_local(cfg.original_transcoder, argv, reason)
    say(f"remote transcode failed: {reason}")
    return EX_REMOTE_FAILED


def main():
    try:
        return run(sys.argv[1:])
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
