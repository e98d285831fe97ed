"""The daemons' HTTP APIs as the CLI uses them, and what it says when one cannot be used.

A ``Target`` is an API base URL with where that URL came from; its errors say what was tried,
where the URL came from and what to check (``Unreachable``, exit 69), or what the daemon
answered (``Refused``, exit 1). ``fail`` reports either; ``emit_json`` prints a ``--json`` answer.
"""

import json
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

from ..core import cache, config

EX_UNAVAILABLE = 69
JSON_SCHEMA = 1
DEFAULT_ORCHESTRATOR = "http://127.0.0.1:3500"
DEFAULT_WORKER_PORT = 3501


# --- errors -------------------------------------------------------------------------------

class Unreachable(Exception):
    """A daemon's API cannot be used: what was tried, where its URL came from, what to check."""

    exit_code = EX_UNAVAILABLE

    def __init__(self, what, url, source, reason, hints):
        super().__init__(f"cannot reach the {what} at {url}: {reason}")
        self.what, self.url, self.source, self.reason, self.hints = what, url, source, reason, hints

    def explain(self):
        lines = [str(self), f"  that URL came from {self.source}", "  check:"]
        lines += [f"    - {h}" for h in self.hints]
        return "\n".join(lines)


class Refused(Exception):
    """The daemon answered with an error (unknown worker, not from this host...)."""

    exit_code = 1

    def __init__(self, what, url, status, message):
        super().__init__(message)
        self.what, self.url, self.status, self.message = what, url, status, message

    def explain(self):
        return self.message


class Target:
    """A daemon's API base URL and where it came from (for the error messages)."""

    def __init__(self, what, url, source, hints):
        self.what = what            # "orchestrator" or "worker"
        self.url = url.rstrip("/")
        self.source = source
        self.hints = hints          # what to check when it cannot be reached

    def _call(self, req, timeout):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as e:
            try:
                body = json.load(e)
                message = body.get("error") if isinstance(body, dict) else None
            except ValueError:
                message = None
            if not message:    # not one of ours: something else answers at that address
                message = (f"the {self.what} at {self.url} answered HTTP {e.code} {e.reason} to "
                           f"{urllib.parse.urlsplit(e.url or '').path or '/'}: is this the {self.what}'s address? "
                           f"(that URL came from {self.source})")
            raise Refused(self.what, self.url, e.code, message) from None
        except (urllib.error.URLError, OSError) as e:
            raise Unreachable(self.what, self.url, self.source, _reason(e, timeout), self.hints) from None
        except ValueError:
            raise Unreachable(self.what, self.url, self.source,
                              f"it answered, but not with JSON: is this the {self.what}'s address?",
                              self.hints) from None

    def get(self, path, timeout):
        return self._call(self.url + path, timeout)

    def post(self, path, timeout):
        return self._call(urllib.request.Request(self.url + path, method="POST"), timeout)


def _reason(e, timeout):
    r = getattr(e, "reason", e)
    if isinstance(r, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(r, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(r, socket.gaierror):
        return f"unknown host name ({r.strerror})"
    if isinstance(r, OSError) and r.strerror:
        return r.strerror[0].lower() + r.strerror[1:]
    return str(r)


def _hostport(url):
    hp = url.partition("://")[2].split("/", 1)[0]
    host, _, port = hp.rpartition(":") if not hp.endswith("]") else (hp, "", "")
    return (host or hp), (port or "80")


def orchestrator_target(opts):
    """The orchestrator's Target: --orchestrator, else pms.yaml's ``orchestrator`` (for ``auto``
    the relay's discovery cache), else http://127.0.0.1:3500."""
    path = opts.config
    if opts.orchestrator:
        url, source = opts.orchestrator, "the --orchestrator option"
    else:
        try:
            cfg = config.load("pms", path)
        except config.ConfigError as e:
            cfg, why = None, (f"no {path} here" if "file not found" in str(e) else f"{path} not usable: {e}")
        if cfg is None:
            url, source = DEFAULT_ORCHESTRATOR, f"the default ({why})"
        elif cfg.orchestrator != "auto":
            url, source = cfg.orchestrator, f"the orchestrator key in {path}"
        else:
            found = cache.read(cfg.discovery.cache_file)
            if found:
                url = found["url"]
                source = (f"the discovery cache {cfg.discovery.cache_file} (orchestrator: auto in {path}; "
                          f"clusterplex-relay keeps it current)")
            else:
                url = DEFAULT_ORCHESTRATOR
                source = (f"the default: orchestrator is auto in {path} but {cfg.discovery.cache_file} has "
                          f"none yet (clusterplex-relay writes it when it finds the orchestrator over mDNS)")
    url = url if "://" in url else f"http://{url}"
    host, port = _hostport(url)
    hints = [f"is clusterplex-orchestrator running on {host}? (systemctl status clusterplex-orchestrator; "
             f"journalctl -u clusterplex-orchestrator)",
             f"a firewall between here and {host} port {port}/tcp?",
             "another address: --orchestrator http://HOST:3500 (or the orchestrator key in pms.yaml)"]
    if "discovery cache" in source or "auto" in source:
        hints.insert(1, "is clusterplex-relay running here? (systemctl status clusterplex-relay): it finds "
                        "the orchestrator over mDNS")
    return Target("orchestrator", url, source, hints)


def worker_target(opts):
    """This machine's worker: --worker, else the ``listen`` of worker.yaml, else port 3501."""
    path = opts.worker_config
    if opts.worker:
        url, source = opts.worker, "the --worker option"
    else:
        try:
            host, port = config.load("worker", path).listen
            source = f"listen in {path}"
        except config.ConfigError as e:
            host, port = "127.0.0.1", DEFAULT_WORKER_PORT
            source = f"the default ({f'no {path} here' if 'file not found' in str(e) else f'{path} not usable: {e}'})"
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        url = f"http://{config.format_hostport(host, port)}"
    url = url if "://" in url else f"http://{url}"
    host, port = _hostport(url)
    hints = [f"is clusterplex-worker running on {host}? (systemctl status clusterplex-worker; "
             f"journalctl -u clusterplex-worker)",
             f"a firewall between here and {host} port {port}/tcp?",
             "another address: --worker http://HOST:3501"]
    return Target("worker", url, source, hints)


def fail(opts, e):
    """Report an Unreachable/Refused: the explanation on stderr, a JSON object on stdout with --json."""
    prog = "clusterplex"
    print(f"{prog}: {e.explain()}", file=sys.stderr)
    if getattr(opts, "json", False):
        err = {"exit_code": e.exit_code, "message": str(e), "what": e.what, "url": e.url}
        if isinstance(e, Unreachable):
            err.update(kind="unreachable", url_source=e.source, reason=e.reason, check=e.hints)
        else:
            err.update(kind="refused", http_status=e.status)
        print(json.dumps({"schema": JSON_SCHEMA, "error": err}, indent=2))
    return e.exit_code


def emit_json(obj):
    print(json.dumps({"schema": JSON_SCHEMA, **obj}, indent=2), flush=True)

