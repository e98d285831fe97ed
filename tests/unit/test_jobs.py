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


def test_table_rejects_duplicates_and_keeps_history():
    t = jobs.JobTable(history=2)
    j = jobs.Job(spec(), 0.0)
    t.add(j)
    try:
        t.add(jobs.Job(spec(), 0.0))
        raise AssertionError("duplicate accepted")
    except KeyError:
        pass
    t.finish(j)
    assert t.active() == [] and t.history() == [j]
