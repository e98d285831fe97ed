"""The orchestrator's decisions driven directly: events in, effects out, the clock advanced by hand.

Real registry, scheduler and jobs objects; no processes, sockets or sleeping. What each failure
does is in docs/failure.md; these tests pin every transition of ``control``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from clusterplex.core import outcomes as m
from clusterplex.core import messages
from clusterplex.orchestrator import control, feed, jobs
from clusterplex.orchestrator.effects import Changed, Link, Log, Metric, Note, Probe, ProbeResult, ToShim, ToWorker

VAAPI = ["-i", "/m/a.mkv", "-codec:0", "h264_vaapi", "-f", "dash", "x.mpd"]      # needs h264:vaapi:encode
LOST = "connected, then lost (close code 1006)"


class Conn:
    """A shim connection's handle, as the shell passes it (control only compares it)."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<shim {self.name}>"


class World:
    """A control, its workers (``w0``, ``w1``...: ready, 1 job each) and a clock moved by hand."""

    def __init__(self, workers=("w0", "w1"), max_jobs=1, strategy="RR", queue_timeout=3.0, **status):
        self.c = control.Control(strategy, queue_timeout)
        self.now = 1000.0
        self.last = []
        self.n = 0
        for name in workers:
            self.add_worker(name, max_jobs=max_jobs, **status)

    def take(self, effects):
        self.last = effects
        return effects

    def later(self, seconds):
        self.now += seconds
        return self

    def add_worker(self, name, hw=(), **status):
        key = f"static:{name}"
        self.take(self.c.worker_added(key, (f"10.0.0.{len(self.c.registry) + 1}", 3501), "static", self.now))
        return self.status(name, hardware={"hw_codecs": list(hw)}, **status)

    def status(self, name, state="ready", max_jobs=1, jobs=(), **fields):
        running = [j["id"] for j in jobs if j.get("state") == "running"]
        return self.worker(name, messages.status(name=name, state=state, max_jobs=max_jobs, cpus=4, benchmark=100.0,
                                                 running=running, jobs=list(jobs), **fields))

    def worker(self, name, msg):
        return self.take(self.c.worker_message(f"static:{name}", msg, self.now))

    def started(self, name, job_id, pid=42):
        return self.worker(name, messages.job_started(job_id, pid, 0.0))

    def exit(self, name, job_id, code=0, signal=None):
        return self.worker(name, messages.exit(code, signal, job_id))

    def lost(self, name, reason=LOST):
        return self.take(self.c.worker_lost(f"static:{name}", reason, self.now))

    def shim(self):
        self.n += 1
        conn = Conn(f"10.0.9.{self.n}")
        self.take(self.c.shim_opened(conn, conn.name))
        return conn

    def submit(self, mode="both", session="", argv=(), job_id=None, conn=None):
        conn = conn or self.shim()
        job_id = job_id or f"job{self.n:05d}"
        raw = {"id": job_id, "argv": list(argv), "cwd": "/t", "env": {}, "session": session}
        self.take(self.c.submit(conn, raw, mode, self.now))
        return conn, job_id

    def run(self, name="w0", **kw):
        """A job submitted and started (on ``name``, which must be the scheduler's pick)."""
        conn, job_id = self.submit(**kw)
        assert self.job(job_id).worker == f"static:{name}", self.job(job_id)
        self.started(name, job_id)
        return conn, job_id

    def job(self, job_id):
        return self.c.jobs.get(job_id) or self.c.jobs.finished(job_id)

    def tick(self):
        return self.take(self.c.tick(self.now))


def status(w, ignored=0):
    return feed.status_line(list(w.c.registry), w.c.jobs.active(), len(w.c.queue), ignored)


def to_worker(effects, name=None):
    return [(e.key.split(":", 1)[1], e.msg) if name is None else e.msg for e in effects
            if isinstance(e, ToWorker) and (name is None or e.key == f"static:{name}")]


def to_shim(effects, conn):
    return [e.msg for e in effects if isinstance(e, ToShim) and e.shim is conn]


def types(msgs):
    return [msg["type"] for msg in msgs]


def metrics_of(effects):
    return [(e.name, *e.args) for e in effects if isinstance(e, Metric)]


def notes_of(effects):
    return [(e.kind, e.reason) for e in effects if isinstance(e, Note)]


def logs_of(effects, level=None):
    return [e.text % e.args for e in effects if isinstance(e, Log) and (level is None or e.level == level)]


# --- the tables -----------------------------------------------------------------------

def test_message_tables_cover_exactly_what_the_protocol_accepts():
    assert set(control.Control._WORKER_HANDLERS) == messages.ACCEPTS[(messages.ORCHESTRATOR, messages.WORKER)]
    assert set(control.Control._SHIM_HANDLERS) == messages.ACCEPTS[(messages.ORCHESTRATOR, messages.SHIM)]


def test_control_loads_no_io_library():
    code = ("import sys, clusterplex.orchestrator.control; "
            "print(sorted(m for m in ('asyncio', 'aiohttp', 'zeroconf', 'psutil') if m in sys.modules))")
    repo = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=repo).stdout == "[]\n"


# --- submission and dispatch -------------------------------------------------------------

def test_submit_dispatches_to_the_best_worker_and_started_is_mirrored():
    w = World()
    conn, job_id = w.submit(session="5/u1")
    job = w.job(job_id)
    assert to_worker(w.last) == [("w0", messages.start(job.spec))]
    assert to_shim(w.last, conn) == [messages.assigned("w0", "10.0.0.1:3501", job.decision)]
    assert metrics_of(w.last) == [("posted",)]
    assert f"job {job_id[:8]} submitted (session 5/u1; no video)" in logs_of(w.last)
    assert (job.state, job.decision) == (jobs.ASSIGNED, "w0: light job, no GPU needed, 1/1 jobs, cpu 0%")
    w.later(0.25).started("w0", job_id, pid=77)
    assert to_shim(w.last, conn) == [messages.started("w0", 77)]
    assert metrics_of(w.last) == [("dispatched", 0.25)]
    assert f"job {job_id[:8]} running on w0 (pid 77), dispatch 250.0 ms" in logs_of(w.last)
    assert Changed(status=True) in w.last and job.state == jobs.RUNNING
    assert status(w) == "2 of 2 workers ready, 1 job running"


@pytest.mark.parametrize("setup, argv, reason", [
    ((), [], "no workers configured or discovered"),
    (("w0",), VAAPI, "no worker available: w0 lacks h264:vaapi:encode"),
])
@pytest.mark.parametrize("mode", ["both", "remote"])
def test_no_capable_worker_fails_the_job_with_fallback(setup, argv, reason, mode):
    w = World(workers=setup)
    conn, job_id = w.submit(mode=mode, argv=argv)
    assert to_shim(w.last, conn) == [messages.failed(reason, False, True, resume=False)]
    assert w.job(job_id).state == jobs.FAILED and w.c.jobs.active() == []
    local = [("outcome", m.FELL_BACK_LOCAL)] if mode == "both" else []
    assert metrics_of(w.last) == [("posted",), ("outcome", m.NO_WORKER)] + local
    assert [k for k, _ in notes_of(w.last)] == [feed.NO_WORKER] + ([feed.FELL_BACK_LOCAL] if local else [])


def test_a_not_ready_worker_is_not_capable():
    w = World(workers=("w0",), state="not_ready", reason="transcoder missing")
    conn, _ = w.submit()
    assert to_shim(w.last, conn)[0]["reason"] == "no worker available: w0 not_ready (transcoder missing)"


def test_full_workers_make_jobs_wait_first_in_first_out_and_nobody_jumps_the_queue():
    w = World(workers=())
    w.add_worker("w0", hw=["h264:vaapi:encode"])
    w.add_worker("w1")
    _, a = w.run("w0")
    _, b = w.run("w1")
    conn_c, c = w.submit(argv=VAAPI)           # only w0 can run it
    assert f"job {c[:8]} waits up to 3.0s for a free worker: no worker available: w0 full (1/1); w1 lacks " \
           "h264:vaapi:encode" in logs_of(w.last)
    _, d = w.submit()
    assert list(w.c.queue) == [c, d] and w.c.next_deadline() == w.now + 3.0
    assert status(w) == "2 of 2 workers ready, 2 jobs running, 2 waiting for a worker"
    w.later(1).exit("w1", b)                    # w1 is free, but c (first) cannot use it: d waits behind it
    assert to_worker(w.last, "w1") == [messages.exit_ack(b)] and list(w.c.queue) == [c, d]
    w.later(1).exit("w0", a)
    assert types(to_worker(w.last, "w0")) == ["exit_ack", "start"] and types(to_worker(w.last, "w1")) == ["start"]
    assert w.job(c).worker == "static:w0" and w.job(d).worker == "static:w1" and w.c.queue == {}
    assert types(to_shim(w.last, conn_c)) == ["assigned"] and w.c.next_deadline() is None


def test_a_waiting_job_fails_at_queue_timeout():
    w = World(workers=("w0",))
    w.run("w0")
    conn, job_id = w.submit(mode="remote")
    assert w.later(2.9).tick() == [] and job_id in w.c.queue
    w.later(0.1).tick()
    reason = "no worker available: w0 full (1/1) (waited 3.0s)"
    assert to_shim(w.last, conn) == [messages.failed(reason, False, True, resume=False)]
    assert metrics_of(w.last) == [("outcome", m.NO_WORKER)] and w.c.queue == {} and w.c.next_deadline() is None


def test_without_queue_timeout_a_full_cluster_fails_at_once():
    w = World(workers=("w0",), queue_timeout=0)
    w.run("w0")
    conn, _ = w.submit()
    assert to_shim(w.last, conn)[0]["reason"] == "no worker available: w0 full (1/1)"


def test_refusals_move_the_job_on_then_fail_with_the_summary():
    w = World()
    conn, job_id = w.submit()
    w.worker("w0", messages.refused("share not mounted", job_id))
    assert to_worker(w.last) == [("w1", messages.start(w.job(job_id).spec))]
    assert metrics_of(w.last) == [("refused", "w0")]
    assert notes_of(w.last) == [(feed.REFUSED, "w0 refused it: share not mounted")]
    w.worker("w1", messages.refused("full", job_id))
    reason = "no worker could start the job: w0: share not mounted; w1: full"
    assert to_shim(w.last, conn) == [messages.failed(reason, False, True, resume=False)]
    assert w.job(job_id).state == jobs.FAILED


# --- the end of a job ------------------------------------------------------------------------

@pytest.mark.parametrize("code, signal, outcome, ended", [
    (0, None, m.REMOTE_OK, "exit code 0"),
    (187, None, m.REMOTE_FAILED, "exit code 187"),
    (1, 9, m.REMOTE_FAILED, "signal 9"),
])
def test_exit_reaches_the_shim_is_acknowledged_and_counted(code, signal, outcome, ended):
    w = World()
    conn, job_id = w.run("w0")
    w.later(10).exit("w0", job_id, code, signal)
    assert to_worker(w.last) == [("w0", messages.exit_ack(job_id))]
    assert to_shim(w.last, conn) == [messages.exit(code, signal)]
    assert metrics_of(w.last) == [("outcome", outcome, 10.0)]
    assert notes_of(w.last) == ([] if outcome == m.REMOTE_OK else [(feed.REMOTE_FAILED,
                                                                     f"transcoder on w0 ended with {ended}")])
    assert f"job {job_id[:8]} on w0 ended with {ended}" in logs_of(w.last)
    assert w.job(job_id).state == jobs.EXITED and w.c.registry.get("static:w0").active == 0


@pytest.mark.parametrize("how", ["shim cancel", "shim gone"])
def test_a_cancelled_job_stays_active_until_its_workers_exit(how):
    w = World()
    conn, job_id = w.run("w0")
    effects = w.c.cancel(conn, w.now) if how == "shim cancel" else w.c.shim_gone(conn, w.now)
    assert to_worker(effects) == [("w0", messages.cancel(job_id))] and metrics_of(effects) == []
    assert w.c.jobs.get(job_id).state == jobs.CANCELLED
    w.later(2).exit("w0", job_id, 0, 15)
    assert metrics_of(w.last) == [("outcome", m.CANCELLED, 2.0)] and w.c.jobs.active() == []
    assert types(to_shim(w.last, conn)) == (["exit"] if how == "shim cancel" else [])


def test_a_cancelled_job_on_a_lost_worker_is_finished_and_counted_cancelled():
    w = World()
    conn, job_id = w.run("w0")
    w.c.shim_gone(conn, w.now)
    w.lost("w0")
    assert metrics_of(w.last) == [("outcome", m.CANCELLED)] and w.c.jobs.active() == [] and to_worker(w.last) == []


def test_cancelling_a_waiting_job_ends_it_at_once():
    w = World(workers=("w0",))
    w.run("w0")
    conn, job_id = w.submit()
    effects = w.c.shim_gone(conn, w.now)
    assert metrics_of(effects) == [("outcome", m.CANCELLED)] and w.c.queue == {} and to_worker(effects) == []


def test_while_stopping_a_shim_going_away_cancels_nothing():
    w = World()
    conn, job_id = w.run("w0")
    w.c.stop()
    assert w.c.shim_gone(conn, w.now) == [] and w.job(job_id).state == jobs.RUNNING and w.c.shims == {}


# --- lost workers --------------------------------------------------------------------------

def test_an_assigned_job_on_a_lost_worker_is_dispatched_elsewhere():
    w = World()
    conn, job_id = w.submit()                   # the start may have gone into a dying link
    w.lost("w0")
    assert to_worker(w.last) == [("w1", messages.start(w.job(job_id).spec))]
    assert types(to_shim(w.last, conn)) == ["assigned"] and metrics_of(w.last) == []
    assert w.job(job_id).tried == [("w0", f"connection to worker lost before start ({LOST})")]


def test_a_running_job_fails_over_with_resume_at_most_twice():
    w = World(workers=("w0", "w1", "w2"))
    conn, job_id = w.run("w0")
    for old, new in (("w0", "w1"), ("w1", "w2")):
        w.later(5).lost(old)
        lost = f"worker {old} lost while running the job ({LOST})"
        job = w.job(job_id)
        assert to_shim(w.last, conn) == [messages.failover(lost),
                                         messages.assigned(new, w.c.registry.get(job.worker).address_str, job.decision)]
        assert to_worker(w.last) == [(new, messages.start(job.spec))] and job.spec["resume"] is True
        assert metrics_of(w.last) == [("outcome", m.RESUMED)]
        assert notes_of(w.last) == [(feed.RESUMED, lost + "; continuing from the last segment")]
        w.started(new, job_id)
        assert metrics_of(w.last) == []        # dispatch latency: the first start only
    w.later(5).lost("w2")
    assert to_shim(w.last, conn) == [messages.failed("worker w2 lost while running the job", True, False)]
    assert metrics_of(w.last) == [("outcome", m.REMOTE_FAILED, 5.0)]
    assert notes_of(w.last) == [(feed.REMOTE_FAILED, f"worker w2 lost while running the job ({LOST}), moved 2 "
                                                     "times already")]
    assert (w.job(job_id).state, w.job(job_id).restarts) == (jobs.FAILED, 2)
    assert status(w, ignored=1) == "0 of 3 workers ready, 3 offline, 1 ignored, 0 jobs running"


@pytest.mark.parametrize("mode", ["both", "remote"])
def test_a_lost_job_no_other_worker_can_take_falls_back_from_the_last_segment(mode):
    w = World(workers=("w0",))
    conn, job_id = w.run("w0", mode=mode)
    w.lost("w0")
    reason = f"no worker could start the job: w0: worker w0 lost while running the job ({LOST})"
    assert to_shim(w.last, conn) == [messages.failover(reason.split(": ", 2)[2]),
                                     messages.failed(reason, True, True, resume=True)]
    local = [("outcome", m.FELL_BACK_LOCAL)] if mode == "both" else []
    assert metrics_of(w.last) == [("outcome", m.RESUMED), ("outcome", m.NO_WORKER)] + local
    if mode == "both":
        assert notes_of(w.last)[-1] == (feed.FELL_BACK_LOCAL, "Plex's own transcoder on the Plex host runs it, "
                                                              f"from the last segment: {reason}")


def test_a_removed_worker_stops_its_link_and_its_jobs_move():
    w = World()
    conn, job_id = w.run("w0")
    effects = w.c.worker_removed("static:w0", "announced goodbye", w.now)
    assert effects[0] == Link("static:w0", False) and to_worker(effects)[0][0] == "w1"
    assert w.c.registry.get("static:w0") is None and Changed(status=True) in effects
    assert w.c.worker_added("static:w1", ("10.0.0.2", 3501), "static", w.now) == []     # known: no second link
    assert Link("static:w2", True) in w.c.worker_added("static:w2", ("10.0.0.3", 3501), "mdns", w.now)


# --- an orchestrator restart: adoption, fencing, re-attach ------------------------------------------

def test_adoption_takes_over_a_running_job_and_answers_the_waiting_shim():
    w = World(workers=())
    conn = w.shim()
    job_id = "a" * 32
    assert w.take(w.c.attach(conn, job_id, w.now)) == [] and w.c.next_deadline() == w.now + control.ATTACH_WAIT
    w.later(0.5).add_worker("w0", jobs=[{"id": job_id, "session": "5/u", "pid": 77, "state": "running"}])
    job = w.job(job_id)
    assert (job.state, job.worker, job.pid, job.adopted, job.session) == (jobs.RUNNING, "static:w0", 77, True, "5/u")
    assert to_worker(w.last) == [("w0", messages.attach(job_id))]
    assert to_shim(w.last, conn) == [messages.attached("w0")] and w.c.shims == {job_id: conn}
    assert any("adopted from worker w0" in t for t in logs_of(w.last)) and w.c.next_deadline() is None
    w.exit("w0", job_id, 187)
    assert to_shim(w.last, conn) == [messages.exit(187, None)]


@pytest.mark.parametrize("max_jobs, reported, ours, adopted", [
    (2, 2, 0, 2),            # what it may run: all adopted
    (2, 5, 0, 2),            # more than its max_jobs: the first two only
    (2, 3, 1, 2),            # ours (dispatched by us) come on top of what it may have adopted
    (0, 3, 0, 0),            # max_jobs 0: nothing
])
def test_a_worker_reporting_more_jobs_than_its_max_jobs_gets_no_more_adopted(max_jobs, reported, ours, adopted):
    w = World(workers=("w0",), max_jobs=max(1, max_jobs))
    mine = [w.run("w0")[1] for _ in range(ours)]
    listed = [{"id": f"{i:032x}", "pid": 100 + i, "state": "running"} for i in range(reported)]
    listed += [{"id": j, "pid": 42, "state": "running"} for j in mine]
    expected = [j["id"] for j in listed[:adopted]]
    for attached in (expected, []):             # the next status reports the same: nothing more adopted
        w.status("w0", max_jobs=max_jobs, jobs=listed)
        assert [j["id"] for j in listed[:reported] if w.c.jobs.get(j["id"]) is not None] == expected
        assert sorted(w.c.registry.get("static:w0").jobs) == sorted(expected + mine)
        assert to_worker(w.last) == [("w0", messages.attach(j)) for j in attached]
        refusals = [(e.once, e.args[1]) for e in w.last if isinstance(e, Log) and "more than its max_jobs" in e.text]
        assert refusals == ([(("adopt", "static:w0"), reported - adopted)] if reported > adopted else [])
    assert [job.id for job in w.c.jobs.active() if not job.adopted] == mine


@pytest.mark.parametrize("then", ["moved elsewhere", "ended"])
def test_a_cut_off_worker_reporting_a_stale_copy_is_fenced(then):
    w = World(workers=("w0", "w1") if then == "moved elsewhere" else ("w0",))
    conn, job_id = w.run("w0", mode="remote")
    w.lost("w0")
    assert w.job(job_id).worker != "static:w0"
    w.status("w0", jobs=[{"id": job_id, "pid": 42, "state": "running"}])
    assert to_worker(w.last) == [("w0", messages.cancel(job_id))]
    assert f"job {job_id[:8]} still runs on w0, which was cut off; stopping that copy" in logs_of(w.last)
    w.status("w0", jobs=[{"id": job_id, "pid": 42, "state": "exited"}])     # an exit it keeps for us: no fence
    assert to_worker(w.last) == []


def test_a_cancelled_job_its_own_worker_still_runs_is_not_fenced():
    w = World()
    conn, job_id = w.run("w0", session="5/a")
    w.submit(session="5/b")                     # supersedes it: cancel sent, its exit is coming
    w.status("w0", jobs=[{"id": job_id, "pid": 42, "state": "running"}])
    assert to_worker(w.last) == [] and w.c.jobs.get(job_id).state == jobs.CANCELLED


@pytest.mark.parametrize("case, answer", [
    ("known", messages.attached("w0")),
    ("exited", messages.exit(3, None)),
    ("failed", messages.failed("no worker reports this job (it was lost)", True, False)),
    ("not a string", messages.failed("no worker reports this job (it was lost)", False, True)),
])
def test_attach_to_a_known_or_finished_job_is_answered_at_once(case, answer):
    w = World()
    old, job_id = w.run("w0")
    if case == "exited":
        w.exit("w0", job_id, 3)
    elif case == "failed":
        w.c.worker_removed("static:w1", "gone", w.now)
        w.c.worker_removed("static:w0", "gone", w.now)
    conn = w.shim()
    assert to_shim(w.c.attach(conn, 7 if case == "not a string" else job_id, w.now), conn) == [answer]
    if case == "known":
        assert w.c.shims[job_id] is conn and w.c.shim_gone(old, w.now) == []     # the old one no longer cancels


def test_attach_to_a_job_no_worker_reports_fails_after_attach_wait():
    w = World()
    conn, gone = w.shim(), w.shim()
    w.c.attach(conn, "b" * 32, w.now)
    w.later(1).take(w.c.attach(gone, "c" * 32, w.now))
    w.c.shim_gone(gone, w.now)                  # went away while waiting: never answered
    assert w.later(control.ATTACH_WAIT - 1.01).tick() == []
    w.later(0.01).tick()
    assert w.last == [ToShim(conn, messages.failed("no worker reports this job (it was lost)", False, True))]
    assert w.c.next_deadline() is None and w.later(10).tick() == []


# --- Plex sessions ---------------------------------------------------------------------------

def test_a_new_job_of_the_same_plex_session_supersedes_the_older_one():
    w = World(max_jobs=2)
    old, first = w.run("w0", session="5/uuid-1")
    conn, second = w.submit(session="5/uuid-2")
    assert to_worker(w.last) == [("w0", messages.cancel(first)), ("w0", messages.start(w.job(second).spec))]
    assert f"job {first[:8]}: superseded by job {second[:8]} of the same Plex session" in logs_of(w.last)
    assert w.job(second).decision.startswith("w0: same session as before")
    w.exit("w0", first, 0, 15)
    assert to_shim(w.last, old) == [messages.exit(0, 15)] and metrics_of(w.last) == [("outcome", m.CANCELLED, 0.0)]


def test_a_seek_goes_back_to_the_worker_that_ran_the_session():
    w = World()
    w.run("w0")
    _, first = w.run("w1", session="7/a")
    w.exit("w1", first)
    w.exit("w0", w.c.jobs.active()[0].id)
    _, seek = w.submit(session="7/b")
    assert w.job(seek).worker == "static:w1" and w.job(seek).decision.startswith("w1: same session as before")


# --- refused: what the state does not allow -----------------------------------------------------

def test_a_worker_not_holding_the_job_cannot_start_end_or_refuse_it():
    w = World()
    conn, job_id = w.submit()
    for msg in (messages.job_started(job_id, 9, 0.0), messages.exit(0, None, job_id), messages.refused("x", job_id),
                messages.out(1, "x", job_id), messages.unknown(job_id)):
        effects = w.worker("w1", msg)
        assert to_shim(effects, conn) == [] and metrics_of(effects) == []
        assert to_worker(effects) == ([("w1", messages.exit_ack(job_id))] if msg["type"] == "exit" else [])
    assert (w.job(job_id).state, w.job(job_id).worker) == (jobs.ASSIGNED, "static:w0")


def test_refused_after_start_is_ignored_and_logged():
    w = World()
    conn, job_id = w.run("w0")
    w.worker("w0", messages.refused("duplicate job id", job_id))
    assert [e for e in w.last if not isinstance(e, Log)] == [] and w.job(job_id).state == jobs.RUNNING
    assert logs_of(w.last, control.WARNING) == [f"worker static:w0: ignoring refused: job {job_id[:8]} refused "
                                                "after it started"]


def test_started_twice_or_after_a_cancel_changes_nothing():
    w = World()
    conn, job_id = w.run("w0")
    assert [e for e in w.started("w0", job_id, pid=1) if not isinstance(e, Log)] == [] and w.job(job_id).pid == 42
    w.c.cancel(conn, w.now)
    assert to_shim(w.started("w0", job_id), conn) == [] and w.job(job_id).state == jobs.CANCELLED


@pytest.mark.parametrize("first, second", [
    ("submit", "submit"), ("submit", "attach"), ("submit", "probe"), ("attach", "submit"), ("attach", "attach"),
    ("probe", "probe"), ("probe", "attach"), (None, "cancel"), (None, "hello"),
])
def test_shim_messages_the_connection_state_does_not_allow_are_ignored_and_logged(first, second):
    w = World()
    conn = w.shim()
    make = {"submit": lambda: messages.submit({"id": "d" * 32, "argv": [], "cwd": "/t", "env": {}}, "both"),
            "attach": lambda: messages.attach("e" * 32), "probe": lambda: messages.probe({}),
            "cancel": messages.cancel, "hello": lambda: {"type": "hello"}}
    if first:
        w.c.shim_message(conn, make[first](), w.now)
    active = w.c.jobs.active()
    effects = w.c.shim_message(conn, make[second](), w.now)
    assert [e for e in effects if not isinstance(e, Log)] == [] and w.c.jobs.active() == active
    assert Log(control.WARNING, "unexpected %r from shim at %s", (second, conn.name), ("shimmsg", conn.name)) in effects


def test_a_malformed_or_duplicate_job_is_answered_failed():
    w = World()
    _, job_id = w.submit()
    bad = w.shim()
    [answer] = to_shim(w.c.submit(bad, {"id": "x"}, "both", w.now), bad)
    assert answer["reason"].startswith("malformed job: job id must") and (answer["started"], answer["fallback"]) == (
        False, True)
    dup = w.shim()
    effects = w.c.submit(dup, {"id": job_id, "argv": [], "cwd": "/t", "env": {}}, "both", w.now)
    assert effects == [ToShim(dup, messages.failed("duplicate job id", False, False))] and len(w.c.jobs.active()) == 1
    assert metrics_of(effects) == [] and w.c.shims[job_id] is not dup


def test_unknown_worker_messages_are_logged_once_and_ignored():
    w = World()
    effects = w.worker("w0", {"type": "bogus"})
    assert effects == [Log(control.WARNING, "ignoring unknown message %r from worker %s", ("bogus", "static:w0"),
                           ("type", "static:w0", "bogus"))]
    assert w.c.worker_message("static:gone", messages.load(5, []), w.now) == []    # removed meanwhile


# --- doctor probes (run by the shell) ------------------------------------------------------------

def test_a_probe_is_handed_to_the_shell_and_its_results_too():
    w = World()
    conn = w.shim()
    assert w.c.shim_message(conn, messages.probe({"timeout": 2}), w.now) == [Probe(conn, {"timeout": 2})]
    assert w.c.probe_done(conn) == [] and w.c.shim_message(conn, messages.probe({}), w.now) == [Probe(conn, {})]
    result = messages.probe_result("p" * 16, {})
    assert w.worker("w0", result) == [ProbeResult("static:w0", result)]


def test_load_updates_the_worker_and_the_web_page():
    w = World()
    assert w.worker("w0", messages.load(55.5, [])) == [Changed()]
    assert w.c.registry.get("static:w0").cpu_load == 55.5


def test_progress_applies_to_active_jobs_only():
    w = World()
    _, job_id = w.run("w0")
    assert w.c.set_progress(job_id, 140) and w.job(job_id).progress == 100.0
    w.exit("w0", job_id)
    assert not w.c.set_progress(job_id, 5) and not w.c.set_progress("nope", 5)
