"""What every daemon shares: command line, logging, systemd notification,
watchdog, signals, ordered start and stop, exit codes.

A daemon object provides::

    async start()            bind, start tasks; raise StartupError to exit
    listen_address           "host:port" actually bound (port 0 allowed)
    status_line()            one line for systemd's STATUS=
    async reload()           SIGHUP (optional)
    async shutdown()         stop listening, finish or cancel work, close
"""

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time

from ..core import config

logger = logging.getLogger(__name__)

EX_OK = 0
EX_FAILURE = 1


class StartupError(Exception):
    """The daemon cannot start; ``exit_code`` says how it should exit."""

    def __init__(self, message, exit_code=EX_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


class Notifier:
    """sd_notify, watchdog, and nothing of it leaks into children.

    ``NOTIFY_SOCKET`` and the watchdog variables are taken out of the
    environment at once, so transcoders we spawn never inherit them.
    """

    def __init__(self):
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify
            self._notifier = sdnotify.SystemdNotifier()
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        self.watchdog_interval = None
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            os.environ.pop(var, None)
        self._last_status = None

    def notify(self, *fields):
        if self._notifier is not None:
            self._notifier.notify("\n".join(fields))

    def status(self, text):
        if text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    async def watchdog(self):
        """Ping from the event loop itself: a hung loop stops the pings."""
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)


class LogOnce:
    """Log a repeated peer problem loudly once per key, then at debug level."""

    def __init__(self, log, window=3600.0):
        self._log = log
        self._seen = {}
        self._window = window

    def warning(self, key, msg, *args):
        now = time.monotonic()
        last = self._seen.get(key)
        if last is None or now - last > self._window:
            if len(self._seen) > 4096:
                self._seen.clear()
            self._seen[key] = now
            self._log.warning(msg, *args)
        else:
            self._log.debug(msg, *args)


class _QuietBadRequests(logging.Filter):
    """aiohttp 3.8 logs every malformed HTTP request at ERROR with a traceback: anyone on the LAN
    could flood the journal. Make it one line at debug level."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions"):
            record.msg, record.args, record.exc_info, record.exc_text = "bad HTTP request: %s", (exc,), None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def setup_logging(level):
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr, force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())


def bind_socket(host, port, what):
    """A listening TCP socket, or a StartupError that says what went wrong."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=512, reuse_port=False)
    except OSError as e:
        where = config.format_hostport(host, port)
        if e.errno == 98:
            raise StartupError(f"cannot listen on {where} for {what}: address already in use "
                               f"(another instance running?)") from None
        if e.errno == 99:
            raise StartupError(f"cannot listen on {where} for {what}: address not available on this host",
                               config.EX_CONFIG) from None
        raise StartupError(f"cannot listen on {where} for {what}: {e.strerror}") from None


async def serve(app, host, port, what, **limits):
    """Start an aiohttp app on an already-bound socket; return (runner, "host:port").

    Connections go through ``listener.Listener`` (caps, header timeout, a pause after accept
    errors; ``limits`` are its keyword arguments); idle keep-alive connections close after
    ``listener.KEEPALIVE_TIMEOUT``."""
    import inspect
    from aiohttp import web
    from . import listener
    sock = bind_socket(host, port, what)
    site = None

    @web.middleware
    async def request_seen(request, handler):
        if site is not None and site.guard is not None:
            site.guard.request_started(request.protocol)
        return await handler(request)

    app.middlewares.insert(0, request_seen)
    kwargs = {"access_log": None, "handle_signals": False, "keepalive_timeout": listener.KEEPALIVE_TIMEOUT}
    site_kwargs = {}
    if "shutdown_timeout" in inspect.signature(web.BaseRunner.__init__).parameters:     # aiohttp >= 3.9
        kwargs["shutdown_timeout"] = 1.0
    else:
        site_kwargs["shutdown_timeout"] = 1.0
    runner = web.AppRunner(app, **kwargs)
    await runner.setup()
    site = listener.GuardedSite(runner, sock, what, limits, **site_kwargs)
    await site.start()
    bound = sock.getsockname()
    return runner, config.format_hostport(bound[0], bound[1])


def main(prog, kind, factory, argv=None):
    """Entry point of a daemon: parse args, load config, run, return the exit code."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", default=config.default_path(kind),
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    opts = parser.parse_args(argv)
    try:
        cfg = config.load(kind, opts.config)
    except config.ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return config.EX_CONFIG
    if opts.check_config:
        print(f"{opts.config}: OK")
        return EX_OK
    setup_logging(cfg.log_level)
    notifier = Notifier()
    try:
        instance = factory(cfg, opts.config, notifier)
    except config.ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return config.EX_CONFIG
    try:
        return asyncio.run(_run(prog, instance, notifier))
    except KeyboardInterrupt:
        return EX_OK


def _quiet_closing_pings(loop, context):
    """aiohttp 3.8's heartbeat ping task fails with "Cannot write to closing transport" when a peer
    vanishes between two pings, and asyncio logs that at ERROR with a traceback ("Task exception was
    never retrieved"): routine for a shim killed by PMS. One debug line instead."""
    exc = context.get("exception")
    if isinstance(exc, ConnectionResetError) and "closing transport" in str(exc):
        logger.debug("ping to a peer that went away: %s", exc)
        return
    loop.default_exception_handler(context)


async def _run(prog, daemon, notifier):
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_closing_pings)
    stop = asyncio.Event()
    tasks = set()

    def on_stop(signame):
        if stop.is_set():
            logger.warning("second %s: exiting now", signame)
            os._exit(EX_FAILURE)
        logger.info("%s received, shutting down", signame)
        stop.set()

    def on_hup():
        task = loop.create_task(_reload(daemon, notifier))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    try:
        await daemon.start()
    except StartupError as e:
        logger.error("%s", e)
        notifier.notify(f"STATUS=failed: {e}")
        await daemon.shutdown()
        return e.exit_code
    except config.ConfigError as e:
        logger.error("configuration error: %s", e)
        notifier.notify(f"STATUS=configuration error: {e}")
        await daemon.shutdown()
        return config.EX_CONFIG
    logger.info("%s ready, listening on %s", prog, daemon.listen_address)
    notifier.notify("READY=1", f"STATUS={daemon.status_line()}",
                    f"X_CLUSTERPLEX_LISTEN={daemon.listen_address}")
    if notifier.watchdog_interval:
        wd = loop.create_task(notifier.watchdog())
        tasks.add(wd)
    await stop.wait()
    notifier.notify("STOPPING=1", "STATUS=stopping")
    await daemon.shutdown()
    for t in list(tasks):
        t.cancel()
    logger.info("%s stopped", prog)
    return EX_OK


async def _reload(daemon, notifier):
    reload = getattr(daemon, "reload", None)
    if reload is None:
        logger.info("SIGHUP: nothing to reload")
        return
    notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    try:
        await reload()
    except config.ConfigError as e:
        logger.error("reload failed, keeping the running configuration: %s", e)
    except Exception:
        logger.exception("reload failed")
    notifier.notify("READY=1", f"STATUS={daemon.status_line()}")
