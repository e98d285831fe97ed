import pytest

from clusterplex.orchestrator import jobs


def spec():
    return {"id": "a" * 32, "argv": [], "cwd": "/t", "env": {}, "session": "s/u"}


def test_refusal_sends_job_back_to_pending_with_worker_excluded():
    j = jobs.Job(spec(), 0.0)
    j.assign("k1", "w1", 0.1)
    j.refused("share not mounted")
    assert j.state == jobs.PENDING and j.excluded == {"k1"}
    j.assign("k2", "w2", 0.2)
    j.started(42, 0.3)
    j.exited(187, None, 1.0)
    assert j.final and j.exit_code == 187
    assert j.refusal_summary() == "w1: share not mounted"
    assert j.view(5.0)["running_seconds"] == 0.7


def test_a_lost_job_goes_back_to_pending_counting_the_move():
    j = jobs.Job(spec(), 0.0)
    j.assign("k1", "w1", 0.1)
    j.started(42, 0.2)
    j.lost("worker w1 lost")
    assert (j.state, j.worker, j.pid, j.restarts, j.excluded) == (jobs.PENDING, None, None, 1, {"k1"})


def _in(state):
    """A job brought to ``state`` by legal transitions."""
    j = jobs.Job(spec(), 0.0)
    steps = {jobs.PENDING: [], jobs.ASSIGNED: ["assign"], jobs.RUNNING: ["assign", "start"],
             jobs.EXITED: ["assign", "start", "exit"], jobs.FAILED: ["fail"], jobs.CANCELLED: ["cancel"]}[state]
    for step in steps:
        EVENTS[step](j)
    assert j.state == state
    return j


EVENTS = {
    "assign": lambda j: j.assign("k", "w", 1.0),
    "refused": lambda j: j.refused("no"),
    "lost": lambda j: j.lost("gone"),
    "start": lambda j: j.started(7, 1.0),
    "exit": lambda j: j.exited(0, None, 2.0),
    "fail": lambda j: j.fail("why", 2.0),
    "cancel": lambda j: j.cancel(2.0),
}
LEGAL = {
    jobs.PENDING: {"assign", "fail", "cancel"},
    jobs.ASSIGNED: {"refused", "start", "exit", "fail", "cancel"},
    jobs.RUNNING: {"lost", "exit", "fail", "cancel"},
    jobs.EXITED: set(), jobs.FAILED: set(), jobs.CANCELLED: set(),
}


@pytest.mark.parametrize("state", list(LEGAL))
@pytest.mark.parametrize("event", list(EVENTS))
def test_transitions_from_the_wrong_state_are_refused_not_asserted(state, event):
    j = _in(state)
    if event in LEGAL[state]:
        EVENTS[event](j)
        assert j.state != state
    else:
        with pytest.raises(jobs.IllegalTransition, match=f"{event if event != 'start' else 'started'} while {state}"):
            EVENTS[event](j)
        assert j.state == state


def test_table_rejects_duplicates_and_keeps_history():
    t = jobs.JobTable(history=2)
    j = jobs.Job(spec(), 0.0)
    t.add(j)
    with pytest.raises(jobs.IllegalTransition, match="already exists"):
        t.add(jobs.Job(spec(), 0.0))
    t.finish(j)
    assert t.active() == [] and t.history() == [j] and t.finished(j.id) is j
