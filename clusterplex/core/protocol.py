"""The wire protocol: transport, handshake, capabilities, limits and validation.

Transport: WebSocket text frames, one JSON object per frame, each with a
``type``. Used between shim -> orchestrator (``SHIM_PATH``) and
orchestrator -> worker (``CONTROL_PATH``). The relay authenticates requests
by a per-job capability in the URL path (``relay_prefix``).

Authentication (mutual, the secret never crosses the wire)::

    server -> client  {"type": "hello", "proto": 1, "role": R_s, "nonce": N_s}
    client -> server  {"type": "auth", "proto": 1, "role": R_c, "nonce": N_c,
                       "mac": HMAC(secret, "cp1|client|R_c|R_s|N_s|N_c")}
    server -> client  {"type": "welcome", "mac": HMAC(secret, "cp1|server|R_c|R_s|N_s|N_c"),
                       "info": {...}}

N_s is fresh for every connection, so a recorded ``auth`` cannot be replayed.
Roles are bound into the MAC, so a proof cannot be reflected to another role.

Messages after the handshake are declared in ``messages`` (types, builders, who accepts
what); ``job`` objects are checked by ``check_job``.

``clusterplex doctor`` (authenticated as a shim, checked by ``check_probe`` and
``check_probe_result``)::

    doctor -> orchestrator   probe {probe}
    orchestrator -> doctor   probe_results {workers: [{name, address, state, reason,
                                                       result?, error?, received?}], clock}
    orchestrator -> worker   probe {probe_id, probe}
    worker -> orchestrator   probe_result {probe_id, result}

The relay answers ``GET RELAY_PING`` (``{"service": "clusterplex-relay", "cluster":
<fingerprint>}``) to the peers it relays for; it forwards nothing.

This module is imported by the shim on every play: standard library only,
no dataclasses, nothing heavy.
"""

import hashlib
import hmac
import json
import os

PROTO_VERSION = 1
SHIM_PATH = "/api/v1/shim"
CONTROL_PATH = "/api/v1/control"
RELAY_PREFIX = "/_cp"
RELAY_PING = RELAY_PREFIX + "/ping"

MAX_MESSAGE = 1 << 20           # bytes in one frame
MAX_ARGV = 4096                 # arguments in one job
MAX_ARG_LEN = 64 * 1024         # bytes in one argument
MAX_ENV = 256                   # environment variables in one job
MAX_ENV_LEN = 32 * 1024
MAX_PROBE_RESULT = 64 * 1024    # bytes of one worker's probe result
PROBE_TIMEOUT_MAX = 60.0        # seconds the orchestrator waits for probe results, at most

ROLE_SHIM = "shim"
ROLE_ORCHESTRATOR = "orchestrator"
ROLE_WORKER = "worker"

# WebSocket close codes (4000-4999 are free for applications).
CLOSE_AUTH_FAILED = 4401
CLOSE_PROTOCOL_ERROR = 4400


class ProtocolError(Exception):
    """The peer sent something malformed or not allowed."""


class AuthError(ProtocolError):
    """The peer could not prove it knows the cluster secret."""


def new_nonce():
    return os.urandom(16).hex()


def new_job_id():
    return os.urandom(16).hex()


def _mac(secret, *parts):
    return hmac.new(secret, "|".join(("cp1",) + parts).encode(), hashlib.sha256).hexdigest()


def encode(msg):
    return json.dumps(msg, separators=(",", ":"))


def decode(text):
    """Parse one frame; raise ProtocolError for anything that is not an object with a type."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("frame is not UTF-8") from None
    if len(text) > MAX_MESSAGE:
        raise ProtocolError("message too large")
    try:
        msg = json.loads(text)
    except ValueError as e:
        raise ProtocolError(f"invalid JSON: {e}") from None
    except RecursionError:
        raise ProtocolError("JSON nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("message is not an object with a 'type'")
    return msg


# --- handshake -------------------------------------------------------------------

class ServerHandshake:
    """Server side: send ``hello()``, then feed the client's reply to ``check``."""

    def __init__(self, secret, role, accept_roles):
        self.secret = secret
        self.role = role
        self.accept_roles = tuple(accept_roles)
        self.nonce = new_nonce()

    def hello(self):
        return {"type": "hello", "proto": PROTO_VERSION, "role": self.role, "nonce": self.nonce}

    def check(self, msg, info=None):
        """Verify ``auth``; return (peer_role, welcome message) or raise AuthError."""
        if msg.get("type") != "auth":
            raise AuthError(f"expected auth, got {msg.get('type')!r}")
        if msg.get("proto") != PROTO_VERSION:
            raise AuthError(f"protocol version {msg.get('proto')!r} not supported (want {PROTO_VERSION})")
        role, nonce, mac = msg.get("role"), msg.get("nonce"), msg.get("mac")
        if role not in self.accept_roles:
            raise AuthError(f"role {role!r} not accepted here")
        if not (isinstance(nonce, str) and 16 <= len(nonce) <= 128 and isinstance(mac, str)):
            raise AuthError("malformed auth message")
        expected = _mac(self.secret, "client", role, self.role, self.nonce, nonce)
        if not hmac.compare_digest(expected, mac):
            raise AuthError("wrong cluster secret")
        proof = _mac(self.secret, "server", role, self.role, self.nonce, nonce)
        return role, {"type": "welcome", "mac": proof, "info": info or {}}


class ClientHandshake:
    """Client side: ``auth = on_hello(hello)``; then ``info = on_welcome(welcome)``."""

    def __init__(self, secret, role, expect_role):
        self.secret = secret
        self.role = role
        self.expect_role = expect_role
        self.nonce = new_nonce()
        self._server_nonce = None

    def on_hello(self, msg):
        if msg.get("type") != "hello":
            raise AuthError(f"expected hello, got {msg.get('type')!r}")
        if msg.get("proto") != PROTO_VERSION:
            raise AuthError(f"peer speaks protocol {msg.get('proto')!r}, we speak {PROTO_VERSION}")
        if msg.get("role") != self.expect_role:
            raise AuthError(f"peer is a {msg.get('role')!r}, expected a {self.expect_role!r}")
        nonce = msg.get("nonce")
        if not (isinstance(nonce, str) and 16 <= len(nonce) <= 128):
            raise AuthError("malformed hello")
        self._server_nonce = nonce
        mac = _mac(self.secret, "client", self.role, self.expect_role, nonce, self.nonce)
        return {"type": "auth", "proto": PROTO_VERSION, "role": self.role, "nonce": self.nonce, "mac": mac}

    def on_welcome(self, msg):
        if msg.get("type") != "welcome":
            raise AuthError(f"authentication refused ({msg.get('reason') or msg.get('type')})")
        expected = _mac(self.secret, "server", self.role, self.expect_role, self._server_nonce, self.nonce)
        mac = msg.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(expected, mac):
            raise AuthError("peer does not know the cluster secret")
        info = msg.get("info")
        return info if isinstance(info, dict) else {}


# --- relay capability ---------------------------------------------------------------

def relay_mac(secret, job_id):
    return hmac.new(secret, f"cp1|relay|{job_id}".encode(), hashlib.sha256).hexdigest()[:32]


def relay_prefix(secret, job_id):
    """Path prefix that lets a job's transcoder through the relay."""
    return f"{RELAY_PREFIX}/{job_id}/{relay_mac(secret, job_id)}"


def check_relay_capability(secret, job_id, mac):
    return (isinstance(job_id, str) and 8 <= len(job_id) <= 64 and job_id.isalnum()
            and hmac.compare_digest(relay_mac(secret, job_id), mac))


def secret_fingerprint(secret):
    """Short public fingerprint (for mDNS TXT, logs): says which cluster, reveals nothing."""
    return hashlib.sha256(b"cp1|fingerprint|" + secret).hexdigest()[:12]


# --- job validation (hostile input) -----------------------------------------------

def _str_list(value, what, max_items, max_len):
    if not isinstance(value, list) or len(value) > max_items:
        raise ProtocolError(f"{what} must be a list of at most {max_items} strings")
    for v in value:
        if not isinstance(v, str) or len(v) > max_len or "\x00" in v:
            raise ProtocolError(f"{what} contains an invalid item")
    return value


def check_job(job):
    """Validate a job object from the wire; return a clean copy or raise ProtocolError."""
    if not isinstance(job, dict):
        raise ProtocolError("job must be an object")
    job_id = job.get("id")
    if not (isinstance(job_id, str) and 8 <= len(job_id) <= 64 and job_id.isalnum()):
        raise ProtocolError("job id must be 8-64 alphanumeric characters")
    argv = _str_list(job.get("argv"), "argv", MAX_ARGV, MAX_ARG_LEN)
    cwd = job.get("cwd")
    if not (isinstance(cwd, str) and cwd.startswith("/") and "\x00" not in cwd and len(cwd) < 4096):
        raise ProtocolError("cwd must be an absolute path")
    env = job.get("env", {})
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise ProtocolError(f"env must be an object of at most {MAX_ENV} variables")
    for k, v in env.items():
        if not (isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                and "\x00" not in k + v and len(v) <= MAX_ENV_LEN):
            raise ProtocolError("env contains an invalid variable")
    session = job.get("session", "")
    if not isinstance(session, str) or len(session) > 256:
        raise ProtocolError("session must be a short string")
    resume = job.get("resume", False)
    if not isinstance(resume, bool):
        raise ProtocolError("resume must be true or false")
    return {"id": job_id, "argv": list(argv), "cwd": cwd, "env": dict(env), "session": session, "resume": resume}


# --- doctor probe (hostile input both ways) ------------------------------------------

def _short_str(value, what, max_len=4096, *, path=False, url=False):
    if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
        raise ProtocolError(f"{what} must be a string of at most {max_len} characters")
    if value and path and not value.startswith("/"):
        raise ProtocolError(f"{what} must be an absolute path")
    if value and url and not (value.startswith(("http://", "https://")) and value.isprintable()
                              and " " not in value):
        raise ProtocolError(f"{what} must be an http(s) URL")
    return value


def check_probe(probe):
    """Validate what a worker is asked to check; return a clean copy or raise ProtocolError.

    ``sample``: a media path as Plex sees it ("" for none); ``transcode_dir``: Plex's transcode
    directory ("" when unknown); ``relay_url``: what the worker should reach ("" for none),
    ``relay_kind``: "relay" (our relay's ping) or "plex" (PMS directly, relay disabled);
    ``plex_user``: whose uid to report; ``timeout``: seconds for the whole probe.
    """
    if not isinstance(probe, dict):
        raise ProtocolError("probe must be an object")
    out = {"sample": _short_str(probe.get("sample", ""), "probe sample", path=True),
           "transcode_dir": _short_str(probe.get("transcode_dir", ""), "probe transcode_dir", path=True),
           "relay_url": _short_str(probe.get("relay_url", ""), "probe relay_url", 2048, url=True),
           "relay_kind": probe.get("relay_kind", "relay"),
           "plex_user": _short_str(probe.get("plex_user", "plex"), "probe plex_user", 64),
           "timeout": probe.get("timeout", 10.0)}
    if out["relay_kind"] not in ("relay", "plex"):
        raise ProtocolError("probe relay_kind must be 'relay' or 'plex'")
    if not out["plex_user"] or not all(c.isalnum() or c in "._-" for c in out["plex_user"]):
        raise ProtocolError("probe plex_user must be a user name")
    t = out["timeout"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.5 <= t <= PROBE_TIMEOUT_MAX:
        raise ProtocolError(f"probe timeout must be a number of seconds from 0.5 to {PROBE_TIMEOUT_MAX:g}")
    return out


# key -> type(s) of the value; a nested dict is a section; None allowed where listed
_PROBE_STR = (str,)
_PROBE_RESULT = {
    "name": _PROBE_STR, "version": _PROBE_STR, "state": _PROBE_STR, "reason": _PROBE_STR,
    "clock": (int, float), "uid": (int,), "plex_user": _PROBE_STR, "plex_uid": (int, type(None)),
    "transcoder": {"path": _PROBE_STR, "ok": (bool,), "problem": _PROBE_STR},
    "sample": {"path": _PROBE_STR, "mapped": _PROBE_STR, "ok": (bool,), "problem": _PROBE_STR},
    "transcode": {"root": _PROBE_STR, "ok": (bool,), "problem": _PROBE_STR, "plex_dir": _PROBE_STR,
                  "mapped": _PROBE_STR},
    "codecs": {"enabled": (bool,), "version": (str, type(None)), "arch": (str, type(None)),
               "state": (str, type(None)), "present": (int,), "total": (int,), "reason": _PROBE_STR},
    "relay": {"url": _PROBE_STR, "kind": _PROBE_STR, "ok": (bool,), "problem": _PROBE_STR,
              "status": (int, type(None))},
}
_PROBE_OPTIONAL = frozenset(("sample", "relay"))


def _check_section(value, schema, where):
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be an object")
    out = {}
    for key, kind in schema.items():
        if key not in value:
            if isinstance(kind, dict) and key in _PROBE_OPTIONAL:
                continue
            raise ProtocolError(f"{where}.{key} missing")
        v = value[key]
        if isinstance(kind, dict):
            if v is None and key in _PROBE_OPTIONAL:
                continue
            out[key] = _check_section(v, kind, f"{where}.{key}")
        elif not isinstance(v, kind) or (isinstance(v, bool) and bool not in kind):
            raise ProtocolError(f"{where}.{key} has the wrong type")
        else:
            out[key] = v
    return out


def check_probe_result(result):
    """Validate a worker's probe result; return a clean copy (known keys only) or raise ProtocolError."""
    if len(encode(result)) > MAX_PROBE_RESULT:
        raise ProtocolError("probe result too large")
    return _check_section(result, _PROBE_RESULT, "result")
