"""What ``control`` asks its shell to do: plain values, carried out in order.

Each ``control.Control`` event returns a list of these. The shell (``server``)
sends the messages, writes the log records with the ``clusterplex.orchestrator``
logger, records the notes and metric events, starts and stops worker links,
runs doctor probes and refreshes the status; nothing here does any of it.
"""

from typing import NamedTuple

from . import feed

DEBUG, INFO, WARNING = 10, 20, 30         # logging's levels


class ToWorker(NamedTuple):
    """Send ``msg`` to the worker ``key``. If its link is already down the message is dropped:
    the ``worker_lost`` event that follows puts things right."""
    key: str
    msg: dict


class ToShim(NamedTuple):
    """Send ``msg`` to a shim connection (the shell's handle)."""
    shim: object
    msg: dict


class Note(NamedTuple):
    """An entry for the web page's recent list (``feed.Recent``), as the job stood then."""
    kind: str
    job: str
    session: str
    worker: str
    reason: str


class Metric(NamedTuple):
    """A call on ``metrics.OrchestratorMetrics``: ``name(*args)``."""
    name: str
    args: tuple


class Log(NamedTuple):
    """A log record; with ``once`` (a key), loud once per key and then at debug level."""
    level: int
    text: str
    args: tuple
    once: object = None


class Changed(NamedTuple):
    """Something the web page shows changed; ``status``: the status line too (sd_notify)."""
    status: bool = False


class Link(NamedTuple):
    """Keep a connection to the worker ``key`` (``up``), or stop it."""
    key: str
    up: bool


class Probe(NamedTuple):
    """`clusterplex doctor` on a shim connection: ask the workers, answer, then ``probe_done``."""
    shim: object
    body: object


class ProbeResult(NamedTuple):
    """A worker's answer to a doctor probe (``probe_result`` message)."""
    key: str
    msg: dict


class Outbox:
    """Collects effects while an event is handled; ``flush`` hands them over."""

    def __init__(self):
        self._out = []

    def flush(self):
        out, self._out = self._out, []
        return out

    def log(self, level, text, *args, once=None):
        self._out.append(Log(level, text, args, once))

    def to_worker(self, key, msg):
        self._out.append(ToWorker(key, msg))

    def to_shim(self, shim, msg):
        if shim is not None:
            self._out.append(ToShim(shim, msg))

    def note(self, kind, job, reason):
        self._out.append(Note(kind, job.id, job.session, feed.worker_of(job), reason))

    def metric(self, name, *args):
        self._out.append(Metric(name, args))

    def changed(self, status=False):
        self._out.append(Changed(status))

    def add(self, effect):
        self._out.append(effect)
