"""Every message after the handshake, declared once: its type, who sends it to whom, its fields.

One JSON object per WebSocket text frame, each with a ``type`` (the handshake's
``hello``/``auth``/``welcome`` are in ``protocol``). The builders below are the
only place a message dict is written; each daemon dispatches what it receives
through a table keyed by these types, and ``ACCEPTS`` says which types each
side takes from each peer (anything else is logged once and ignored).

    shim -> orchestrator     submit {job, mode}   attach {job_id}   cancel {}
    doctor -> orchestrator   probe {probe}                (authenticated as a shim)
    orchestrator -> shim     assigned {worker, address, reason}   started {worker, pid}
                             attached {worker}   failover {reason}   out {fd, data}
                             exit {code, signal}
                             failed {reason, started, fallback, resume?}
                             probe_results {workers, clock, error?}
    orchestrator -> worker   start {job}   cancel {job_id}   attach {job_id}
                             exit_ack {job_id}   drain {}   resume {}
                             probe {probe_id, probe}
    worker -> orchestrator   status {...}   load {cpu, running}
                             refused {job_id, reason}   started {job_id, pid, t}
                             out {job_id, fd, data}   exit {job_id, code, signal}
                             unknown {job_id}   probe_result {probe_id, result}
    any server -> client     refused {reason}             (instead of a handshake)

``out.data`` is the raw bytes decoded as latin-1, so any byte survives JSON.

Imported by the shim on every play: standard library only, nothing heavy.
"""

# shim (and doctor) -> orchestrator
SUBMIT = "submit"
ATTACH = "attach"
CANCEL = "cancel"
PROBE = "probe"
# orchestrator -> shim
ASSIGNED = "assigned"
STARTED = "started"
ATTACHED = "attached"
FAILOVER = "failover"
OUT = "out"
EXIT = "exit"
FAILED = "failed"
PROBE_RESULTS = "probe_results"
# orchestrator -> worker (also CANCEL, ATTACH, PROBE)
START = "start"
EXIT_ACK = "exit_ack"
DRAIN = "drain"
RESUME = "resume"
# worker -> orchestrator (also STARTED, OUT, EXIT)
STATUS = "status"
LOAD = "load"
REFUSED = "refused"
UNKNOWN = "unknown"
PROBE_RESULT = "probe_result"

SHIM, ORCHESTRATOR, WORKER = "shim", "orchestrator", "worker"

# (receiver, sender) -> the types the receiver acts on
ACCEPTS = {
    (ORCHESTRATOR, SHIM): frozenset((SUBMIT, ATTACH, CANCEL, PROBE)),
    (SHIM, ORCHESTRATOR): frozenset((ASSIGNED, STARTED, ATTACHED, FAILOVER, OUT, EXIT, FAILED, PROBE_RESULTS,
                                     REFUSED)),
    (WORKER, ORCHESTRATOR): frozenset((START, CANCEL, ATTACH, EXIT_ACK, DRAIN, RESUME, PROBE)),
    (ORCHESTRATOR, WORKER): frozenset((STATUS, LOAD, REFUSED, STARTED, OUT, EXIT, UNKNOWN, PROBE_RESULT)),
}


# --- shim -> orchestrator ----------------------------------------------------------

def submit(job, mode):
    return {"type": SUBMIT, "job": job, "mode": mode}


def attach(job_id):
    """shim -> orchestrator (its job, after the orchestrator restarted) and orchestrator -> worker."""
    return {"type": ATTACH, "job_id": job_id}


def cancel(job_id=None):
    """orchestrator -> worker with ``job_id``; shim -> orchestrator without (its own job)."""
    return {"type": CANCEL} if job_id is None else {"type": CANCEL, "job_id": job_id}


def probe(body, probe_id=None):
    """doctor -> orchestrator ``probe {probe}``; orchestrator -> worker with a ``probe_id``."""
    msg = {"type": PROBE, "probe": body}
    if probe_id is not None:
        msg["probe_id"] = probe_id
    return msg


# --- orchestrator -> shim ----------------------------------------------------------

def assigned(worker, address, reason):
    return {"type": ASSIGNED, "worker": worker, "address": address, "reason": reason}


def started(worker, pid):
    return {"type": STARTED, "worker": worker, "pid": pid}


def attached(worker):
    return {"type": ATTACHED, "worker": worker}


def failover(reason):
    return {"type": FAILOVER, "reason": reason}


def out(fd, data, job_id=None):
    """orchestrator -> shim; worker -> orchestrator with ``job_id``. ``data``: bytes as latin-1 text."""
    msg = {"type": OUT, "fd": fd, "data": data}
    if job_id is not None:
        msg["job_id"] = job_id
    return msg


def exit(code, signal, job_id=None):
    """orchestrator -> shim; worker -> orchestrator with ``job_id``."""
    msg = {"type": EXIT, "code": code, "signal": signal}
    if job_id is not None:
        msg["job_id"] = job_id
    return msg


def failed(reason, started, fallback, resume=None):
    """The job did not run to its end on a worker. ``started``: output already reached PMS;
    ``fallback``: the shim may run Plex's own transcoder; ``resume``: from the last segment."""
    msg = {"type": FAILED, "reason": reason, "started": started, "fallback": fallback}
    if resume is not None:
        msg["resume"] = resume
    return msg


def probe_results(workers, clock, error=None):
    msg = {"type": PROBE_RESULTS, "workers": workers, "clock": clock}
    if error is not None:
        msg["error"] = error
    return msg


# --- orchestrator -> worker --------------------------------------------------------

def start(job):
    return {"type": START, "job": job}


def exit_ack(job_id):
    return {"type": EXIT_ACK, "job_id": job_id}


def drain():
    return {"type": DRAIN}


def resume():
    return {"type": RESUME}


def worker_action(action):
    """``drain`` or ``resume``, by name (the API's URL says which)."""
    if action not in (DRAIN, RESUME):
        raise ValueError(f"not a worker action: {action!r}")
    return {"type": action}


# --- worker -> orchestrator --------------------------------------------------------

def status(**fields):
    """The worker's whole state (see ``WorkerServer.status``); the orchestrator's registry reads it."""
    return {"type": STATUS, **fields}


def load(cpu, running, gpus=None):
    """``gpus``: per GPU ``{"id", "vendor", "util", "encoder", "decoder", "sessions", "session_limit"}``
    (percentages, None where unknown; session_limit 0: none); left out when the worker has none."""
    msg = {"type": LOAD, "cpu": cpu, "running": running}
    if gpus:
        msg["gpus"] = gpus
    return msg


def refused(reason, job_id=None):
    """worker -> orchestrator for one job; any server -> client instead of a handshake."""
    return {"type": REFUSED, "reason": reason} if job_id is None else {"type": REFUSED, "job_id": job_id,
                                                                       "reason": reason}


def job_started(job_id, pid, t):
    return {"type": STARTED, "job_id": job_id, "pid": pid, "t": t}


def unknown(job_id):
    return {"type": UNKNOWN, "job_id": job_id}


def probe_result(probe_id, result):
    return {"type": PROBE_RESULT, "probe_id": probe_id, "result": result}
