"""YAML configuration: schemas for each daemon, strict validation, clear errors.

Every key has a type and a default; unknown keys and bad values are rejected
with the key's path (``/relay/listen``) and the daemons exit with code 78
(EX_CONFIG, which the systemd units list in ``RestartPreventExitStatus``).

The shim imports this module on every play, so it stays light: no
dataclasses, PyYAML imported only when a file is actually read.
"""

import os
import re
from types import SimpleNamespace

EX_CONFIG = 78
DEFAULT_DIR = "/etc/clusterplex"
PLEX_TRANSCODER = "/usr/lib/plexmediaserver/Plex Transcoder"
DIVERTED_TRANSCODER = PLEX_TRANSCODER + ".distrib"
MIN_SECRET_LEN = 32


class ConfigError(Exception):
    """A configuration problem; str() names the file and the key path."""

    exit_code = EX_CONFIG


class _Invalid(Exception):
    def __init__(self, path, message):
        super().__init__(message)
        self.path = path
        self.message = message


# --- field types -------------------------------------------------------------

class Field:
    def __init__(self, default=None, doc=""):
        self.default = default
        self.doc = doc

    def check(self, value, path):  # pragma: no cover - overridden
        raise NotImplementedError

    def default_value(self):
        return self.default


class Str(Field):
    def __init__(self, default="", choices=None, pattern=None, **kw):
        super().__init__(default, **kw)
        self.choices = choices
        self.pattern = pattern

    def check(self, value, path):
        if not isinstance(value, str):
            raise _Invalid(path, f"expected a string, got {_kind(value)}")
        if self.choices is not None and value not in self.choices:
            raise _Invalid(path, f"must be one of {', '.join(self.choices)}; got {value!r}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Invalid(path, f"invalid value {value!r}")
        return value


class Path(Field):
    """An absolute filesystem path (existence is checked by the daemons)."""

    def __init__(self, default="", allow_empty=False, **kw):
        super().__init__(default, **kw)
        self.allow_empty = allow_empty

    def check(self, value, path):
        if not isinstance(value, str):
            raise _Invalid(path, f"expected a path, got {_kind(value)}")
        if value == "" and self.allow_empty:
            return value
        if not value.startswith("/"):
            raise _Invalid(path, f"must be an absolute path; got {value!r}")
        return value


class Bool(Field):
    def check(self, value, path):
        if not isinstance(value, bool):
            raise _Invalid(path, f"expected true or false, got {_kind(value)}")
        return value


class Number(Field):
    def __init__(self, default=0, minimum=None, maximum=None, integer=False, **kw):
        super().__init__(default, **kw)
        self.minimum = minimum
        self.maximum = maximum
        self.integer = integer

    def check(self, value, path):
        ok = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            raise _Invalid(path, f"expected {'an integer' if self.integer else 'a number'}, got {_kind(value)}")
        if self.minimum is not None and value < self.minimum:
            raise _Invalid(path, f"must be >= {self.minimum}; got {value}")
        if self.maximum is not None and value > self.maximum:
            raise _Invalid(path, f"must be <= {self.maximum}; got {value}")
        return value


class IntOrAuto(Number):
    def __init__(self, default="auto", minimum=1, **kw):
        super().__init__(default, minimum=minimum, integer=True, **kw)

    def check(self, value, path):
        if value == "auto":
            return value
        try:
            return super().check(value, path)
        except _Invalid as e:
            raise _Invalid(path, e.message + " (or 'auto')") from None


class HostPort(Field):
    """``host:port`` (IPv6 as ``[::1]:3500``); port 0 picks a free port."""

    def check(self, value, path):
        if not isinstance(value, str):
            raise _Invalid(path, f"expected host:port, got {_kind(value)}")
        try:
            return parse_hostport(value)
        except ValueError as e:
            raise _Invalid(path, str(e)) from None


class Url(Field):
    def __init__(self, default="", schemes=("http", "https"), allow_empty=False, **kw):
        super().__init__(default, **kw)
        self.schemes = schemes
        self.allow_empty = allow_empty

    def check(self, value, path):
        if not isinstance(value, str):
            raise _Invalid(path, f"expected a URL, got {_kind(value)}")
        if value == "" and self.allow_empty:
            return value
        m = re.fullmatch(r"([a-z][a-z0-9+.-]*)://([^/?#\s]+)(/[^\s?#]*)?", value)
        if not m or m.group(1) not in self.schemes:
            raise _Invalid(path, f"expected a URL like {self.schemes[0]}://host:port; got {value!r}")
        return value.rstrip("/")


class UrlOrAuto(Url):
    """A URL, or ``auto``: found over mDNS (by a daemon, cached on disk)."""

    def check(self, value, path):
        if value == "auto":
            return value
        try:
            return super().check(value, path)
        except _Invalid as e:
            raise _Invalid(path, e.message + " or 'auto'") from None


class List(Field):
    def __init__(self, item, default=(), **kw):
        super().__init__(list(default), **kw)
        self.item = item

    def check(self, value, path):
        if value is None:
            return []
        if not isinstance(value, list):
            raise _Invalid(path, f"expected a list, got {_kind(value)}")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def default_value(self):
        return list(self.default)


class StrMap(Field):
    """A mapping of string keys to string values (e.g. environment overrides)."""

    def __init__(self, key_pattern=None, **kw):
        super().__init__({}, **kw)
        self.key_pattern = key_pattern

    def check(self, value, path):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Invalid(path, f"expected a mapping, got {_kind(value)}")
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or (self.key_pattern and not re.fullmatch(self.key_pattern, k)):
                raise _Invalid(f"{path}/{k}", "invalid key")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise _Invalid(f"{path}/{k}", f"expected a string, got {_kind(v)}")
            out[k] = str(v)
        return out

    def default_value(self):
        return {}


class Section(Field):
    def __init__(self, fields, **kw):
        super().__init__(None, **kw)
        self.fields = fields

    def check(self, value, path):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise _Invalid(path or "/", f"expected a mapping, got {_kind(value)}")
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            known = ", ".join(sorted(self.fields))
            raise _Invalid(f"{path}/{unknown[0]}", f"unknown key (known keys here: {known})")
        out = {}
        for name, field in self.fields.items():
            if name in value:
                out[name] = field.check(value[name], f"{path}/{name}")
            else:
                out[name] = field.default_value()
        return SimpleNamespace(**out)

    def default_value(self):
        return self.check({}, "")


def _kind(value):
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: f"string {value!r}", bool: f"{value}"}.get(
        type(value), f"{type(value).__name__} {value!r}")


def parse_hostport(value):
    """``"0.0.0.0:3500"`` -> ``("0.0.0.0", 3500)``; ``"[::1]:80"`` -> ``("::1", 80)``."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^\s:\[\]/]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f"expected host:port (e.g. 0.0.0.0:3500); got {value!r}")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if port > 65535:
        raise ValueError(f"port out of range in {value!r}")
    return (host, port)


def format_hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- schemas -------------------------------------------------------------------

LOG_LEVEL = Str("info", choices=("debug", "info", "warning", "error"))
SECRET_FILE = Path(f"{DEFAULT_DIR}/secret")


def _discovery(**extra):
    return Section({
        "enabled": Bool(True),
        "interfaces": List(Str(pattern=r"[0-9a-fA-F:.]+")),
        **extra,
    })


ORCHESTRATOR = Section({
    "listen": HostPort(("0.0.0.0", 3500)),
    "secret_file": SECRET_FILE,
    "strategy": Str("LOAD_RANK", choices=("RR", "LOAD_CPU", "LOAD_TASKS", "LOAD_RANK")),
    "workers": List(HostPort()),
    "discovery": _discovery(),
    "heartbeat_interval": Number(1.0, minimum=0.1, maximum=30),
    "queue_timeout": Number(3.0, minimum=0, maximum=60),
    "log_level": LOG_LEVEL,
})

WORKER = Section({
    "name": Str(""),
    "listen": HostPort(("0.0.0.0", 3501)),
    "secret_file": SECRET_FILE,
    "transcoder": Path(PLEX_TRANSCODER),
    "transcode_root": Path("/transcode"),
    "output_roots": List(Path()),
    "media_roots": List(Path()),
    "max_jobs": IntOrAuto(),
    "weight": Number(1.0, minimum=0.01, maximum=1000),
    "priority": Number(0, minimum=-1000, maximum=1000, integer=True),
    "state_dir": Path("/var/lib/clusterplex"),
    "hwaccel": Str("none", choices=("none", "auto", "vaapi", "qsv", "nvenc")),
    "encoder_swaps": StrMap(key_pattern=r"[A-Za-z0-9_-]+"),
    "render_node": Path("", allow_empty=True),
    "gpu_session_limit": Number(0, minimum=0, maximum=4096, integer=True),
    "path_map": List(Section({"from": Path(), "to": Path()})),
    "codecs": Section({
        "enabled": Bool(True),
        "dir": Path("/var/lib/clusterplex/codecs"),
        "server": Url("https://downloads.plex.tv/codecs"),
        "list": Path("", allow_empty=True),
    }),
    "eae": Section({
        "enabled": Bool(False),
        "api": Url("https://plex.tv/api/codecs/easyaudioencoder"),
        "dir": Path("/var/lib/clusterplex/eae"),
    }),
    "env": StrMap(key_pattern=r"[A-Za-z_][A-Za-z0-9_]*"),
    "kill_grace": Number(0.5, minimum=0, maximum=30),
    "drain_timeout": Number(60, minimum=0, maximum=86400),
    "detached_grace": Number(15, minimum=0, maximum=3600),
    "discovery": _discovery(),
    "log_level": LOG_LEVEL,
})

_RULE = Section({
    "cwd_contains": Str(""),
    "argv_contains": Str(""),
    "output_contains": Str(""),
})

PMS = Section({
    "orchestrator": UrlOrAuto("http://127.0.0.1:3500", schemes=("http",)),
    "secret_file": SECRET_FILE,
    "mode": Str("both", choices=("local", "remote", "both")),
    "original_transcoder": Path(DIVERTED_TRANSCODER),
    "plex_url": Url("http://127.0.0.1:32400"),
    "connect_timeout": Number(2.0, minimum=0.05, maximum=60),
    "reattach_timeout": Number(15.0, minimum=0, maximum=300),
    "local_rules": List(_RULE),
    "local_thumbnails": Bool(True),
    "env_allow": List(Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*\*?")),
    "relay": Section({
        "listen": HostPort(("0.0.0.0", 32499)),
        "advertise": Url("", allow_empty=True),
        "restrict_to_workers": Bool(True),
        "allow": List(Str(pattern=r"[0-9a-fA-F:./]+")),
        "metrics_allow": List(Str(pattern=r"[0-9a-fA-F:./]+")),
        "events_socket": Path("/run/clusterplex/shim-events.sock", allow_empty=True),
        "enabled": Bool(True),
        "direct_url": Url("", allow_empty=True),
    }),
    "discovery": _discovery(cache_file=Path("/run/clusterplex/orchestrator.json")),
    "log_level": LOG_LEVEL,
})

SCHEMAS = {"orchestrator": ORCHESTRATOR, "worker": WORKER, "pms": PMS}

_LOOPBACK_HOST = re.compile(r"(localhost|127(\.\d{1,3}){3}|\[::1\]|\[::ffff:127(\.\d{1,3}){3}\])(:\d+)?", re.I)


def _check_pms(cfg):
    """Rules across keys of pms.yaml (one key's own checks are in the schema)."""
    direct = cfg.relay.direct_url
    if direct:
        hostport = direct.split("://", 1)[1].split("/", 1)[0]
        if _LOOPBACK_HOST.fullmatch(hostport):
            raise _Invalid("/relay/direct_url", f"{direct} is a loopback address: each worker would call itself; "
                                                f"give PMS's LAN address, e.g. http://192.168.1.10:32400")
    if not cfg.relay.enabled and not direct:
        raise _Invalid("/relay/direct_url", "required when /relay/enabled is false: PMS's URL as the workers "
                                            "reach it, e.g. http://192.168.1.10:32400 or https://plex.lan:32400")


_CROSS_CHECKS = {"pms": _check_pms}


def default_path(kind):
    return f"{DEFAULT_DIR}/{kind}.yaml"


def load(kind, path=None, *, missing_ok=False):
    """Load and validate ``path`` against the schema of ``kind``.

    A missing file is an error unless ``missing_ok`` (then defaults apply).
    """
    schema = SCHEMAS[kind]
    path = path or default_path(kind)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        if missing_ok:
            return schema.default_value()
        raise ConfigError(f"{path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse(kind, text, path)


def parse(kind, text, path="<config>"):
    import yaml
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    try:
        cfg = SCHEMAS[kind].check(data, "")
        if kind in _CROSS_CHECKS:
            _CROSS_CHECKS[kind](cfg)
        return cfg
    except _Invalid as e:
        raise ConfigError(f"{path}: {e.path or '/'}: {e.message}") from None


def load_secret(path):
    """Read the cluster secret: one line of at least 32 characters."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        raise ConfigError(f"secret file {path} not found (create it with `clusterplex token` "
                          f"on the orchestrator host, `clusterplex join` on workers)") from None
    except PermissionError:
        raise ConfigError(f"secret file {path} is not readable by uid {os.getuid()}") from None
    except OSError as e:
        raise ConfigError(f"secret file {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"secret file {path}: not UTF-8 text") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise ConfigError(f"secret file {path}: expected exactly one line, found {len(lines)}")
    if len(lines[0]) < MIN_SECRET_LEN:
        raise ConfigError(f"secret file {path}: secret is {len(lines[0])} characters; "
                          f"at least {MIN_SECRET_LEN} are required")
    return lines[0].encode("utf-8")
