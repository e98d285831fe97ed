"""core/messages: every message declared once; each daemon's dispatch table takes exactly what it accepts."""

import inspect

import pytest

from clusterplex import shim
from clusterplex.core import messages as m
from clusterplex.core import protocol
from clusterplex.orchestrator import control
from clusterplex.worker import server as worker

TYPES = {v for k, v in vars(m).items() if k.isupper() and isinstance(v, str) and k not in ("SHIM", "ORCHESTRATOR",
                                                                                          "WORKER")}


def test_every_type_is_accepted_somewhere_and_every_accepted_type_is_declared():
    accepted = set().union(*m.ACCEPTS.values())
    assert accepted == TYPES


@pytest.mark.parametrize("table, direction, less", [
    (shim.Remote._HANDLERS, (m.SHIM, m.ORCHESTRATOR), {m.PROBE_RESULTS}),   # the doctor reads probe_results
    (worker.Worker._HANDLERS, (m.WORKER, m.ORCHESTRATOR), set()),
    (control.Control._SHIM_HANDLERS, (m.ORCHESTRATOR, m.SHIM), set()),
    (control.Control._WORKER_HANDLERS, (m.ORCHESTRATOR, m.WORKER), set()),
], ids=["shim", "worker", "orchestrator-from-shims", "orchestrator-from-workers"])
def test_dispatch_tables_match_what_each_side_accepts(table, direction, less):
    assert set(table) == m.ACCEPTS[direction] - less


BUILT = [
    (m.submit({"id": "j"}, "both"), {"job": {"id": "j"}, "mode": "both"}),
    (m.attach("j"), {"job_id": "j"}),
    (m.cancel(), {}),
    (m.cancel("j"), {"job_id": "j"}),
    (m.probe({"p": 1}), {"probe": {"p": 1}}),
    (m.probe({"p": 1}, "abcdefgh"), {"probe": {"p": 1}, "probe_id": "abcdefgh"}),
    (m.assigned("w1", "10.0.0.1:1", "why"), {"worker": "w1", "address": "10.0.0.1:1", "reason": "why"}),
    (m.started("w1", 42), {"worker": "w1", "pid": 42}),
    (m.attached("w1"), {"worker": "w1"}),
    (m.failover("lost"), {"reason": "lost"}),
    (m.out(2, "x"), {"fd": 2, "data": "x"}),
    (m.out(1, "x", "j"), {"fd": 1, "data": "x", "job_id": "j"}),
    (m.exit(0, None), {"code": 0, "signal": None}),
    (m.exit(1, 9, "j"), {"code": 1, "signal": 9, "job_id": "j"}),
    (m.failed("r", True, False), {"reason": "r", "started": True, "fallback": False}),
    (m.failed("r", True, True, resume=True), {"reason": "r", "started": True, "fallback": True, "resume": True}),
    (m.probe_results([], 1.0), {"workers": [], "clock": 1.0}),
    (m.probe_results([], 1.0, "bad"), {"workers": [], "clock": 1.0, "error": "bad"}),
    (m.start({"id": "j"}), {"job": {"id": "j"}}),
    (m.exit_ack("j"), {"job_id": "j"}),
    (m.drain(), {}),
    (m.resume(), {}),
    (m.worker_action("drain"), {}),
    (m.status(id="w", state="ready"), {"id": "w", "state": "ready"}),
    (m.load(12.5, ["j"]), {"cpu": 12.5, "running": ["j"]}),
    (m.load(12.5, ["j"], [{"id": "nvidia0"}]), {"cpu": 12.5, "running": ["j"], "gpus": [{"id": "nvidia0"}]}),
    (m.refused("no"), {"reason": "no"}),
    (m.refused("no", "j"), {"job_id": "j", "reason": "no"}),
    (m.job_started("j", 42, 1.0), {"job_id": "j", "pid": 42, "t": 1.0}),
    (m.unknown("j"), {"job_id": "j"}),
    (m.probe_result("abcdefgh", {}), {"probe_id": "abcdefgh", "result": {}}),
]


@pytest.mark.parametrize("msg, fields", BUILT, ids=[f"{b[0]['type']}-{i}" for i, b in enumerate(BUILT)])
def test_builders_write_the_declared_shape_and_survive_the_wire(msg, fields):
    assert msg["type"] in TYPES
    assert {k: v for k, v in msg.items() if k != "type"} == fields
    assert protocol.decode(protocol.encode(msg)) == msg


def test_every_builder_is_exercised():
    builders = {name for name, fn in inspect.getmembers(m, inspect.isfunction) if fn.__module__ == m.__name__}
    used = {"submit", "attach", "cancel", "probe", "assigned", "started", "attached", "failover", "out", "exit",
            "failed", "probe_results", "start", "exit_ack", "drain", "resume", "worker_action", "status", "load",
            "refused", "job_started", "unknown", "probe_result"}
    assert builders == used


def test_worker_action_refuses_anything_but_drain_and_resume():
    assert m.worker_action("resume") == {"type": m.RESUME}
    with pytest.raises(ValueError, match="not a worker action"):
        m.worker_action("start")
