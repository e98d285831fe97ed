"""Job state on the orchestrator (pure: events and the time in, state out).

    pending --assign--> assigned --started--> running --exit--> exited
       ^                   |                     |
       +----refused--------+                     +--lost/cancel--> failed / cancelled

A refusal before the transcoder started sends the job back to pending with
the worker excluded, so the orchestrator tries another one; the reasons are
kept for the shim's error message. A transition from the wrong state raises
``IllegalTransition`` (``control`` logs and ignores the event). Finished jobs
stay in a short history for the API.
"""

import collections

PENDING = "pending"
ASSIGNED = "assigned"
RUNNING = "running"
EXITED = "exited"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL = (EXITED, FAILED, CANCELLED)


class IllegalTransition(Exception):
    """An event that the job's (or the table's) state does not allow."""


class Job:
    def __init__(self, spec, now):
        self.id = spec["id"]
        self.spec = spec
        self.session = spec.get("session", "")
        self.state = PENDING
        self.worker = None          # worker key
        self.worker_name = ""
        self.pid = None
        self.tried = []             # [(worker name, reason)], for messages
        self.tried_keys = []        # [(worker key, reason)], for exclusion
        self.created = now
        self.assigned_at = None
        self.started_at = None
        self.ended_at = None
        self.exit_code = None
        self.signal = None
        self.reason = ""
        self.needs = None           # capabilities.Needs
        self.decision = ""          # why the current worker was chosen
        self.restarts = 0           # times moved to another worker after losing one
        self.adopted = False        # learnt from a worker after an orchestrator restart
        self.progress = None        # percent, as the transcoder last told PMS (through the relay)

    @property
    def final(self):
        return self.state in FINAL

    @property
    def excluded(self):
        return {w for w, _ in self.tried_keys}

    def _expect(self, event, *states):
        if self.state not in states:
            raise IllegalTransition(f"job {self.id[:8]}: {event} while {self.state}")

    def assign(self, worker_key, worker_name, now):
        self._expect("assign", PENDING)
        self.state = ASSIGNED
        self.worker, self.worker_name = worker_key, worker_name
        self.assigned_at = now

    def refused(self, reason):
        """The worker would not start it: back to pending, that worker excluded."""
        self._expect("refused", ASSIGNED)
        self.tried_keys.append((self.worker, reason))
        self.tried.append((self.worker_name, reason))
        self.state = PENDING
        self.worker, self.worker_name = None, ""

    def lost(self, reason):
        """Its worker died while running it: back to pending, to run again elsewhere."""
        self._expect("lost", RUNNING)
        self.tried_keys.append((self.worker, reason))
        self.tried.append((self.worker_name, reason))
        self.restarts += 1
        self.state = PENDING
        self.worker, self.worker_name, self.pid = None, "", None

    def started(self, pid, now):
        self._expect("started", ASSIGNED)
        self.state = RUNNING
        self.pid = pid
        self.started_at = now

    def exited(self, code, signal, now):
        self._expect("exit", ASSIGNED, RUNNING)
        self.state = EXITED
        self.exit_code, self.signal = code, signal
        self.ended_at = now

    def fail(self, reason, now):
        self._expect("fail", PENDING, ASSIGNED, RUNNING)
        self.state = FAILED
        self.reason = reason
        self.ended_at = now

    def cancel(self, now):
        self._expect("cancel", PENDING, ASSIGNED, RUNNING)
        self.state = CANCELLED
        self.ended_at = now

    def refusal_summary(self):
        return "; ".join(f"{w}: {r}" for w, r in self.tried)

    def view(self, now):
        end = self.ended_at if self.ended_at is not None else now
        return {
            "id": self.id,
            "session": self.session,
            "state": self.state,
            "worker": self.worker_name,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "decision": self.decision,
            "needs": self.needs.describe() if self.needs is not None else "",
            "restarts": self.restarts,
            "progress": self.progress,
            "age_seconds": round(end - self.created, 3),
            "running_seconds": round(end - self.started_at, 3) if self.started_at is not None else None,
        }

    def __repr__(self):
        return f"<Job {self.id[:8]} {self.state} on {self.worker_name or '-'}>"


class JobTable:
    def __init__(self, history=200):
        self._active = {}
        self._history = collections.deque(maxlen=history)

    def add(self, job):
        if job.id in self._active:
            raise IllegalTransition(f"job {job.id} already exists")
        self._active[job.id] = job

    def get(self, job_id):
        return self._active.get(job_id)

    def finish(self, job):
        if self._active.pop(job.id, None) is not None:
            self._history.append(job)

    def active(self):
        return list(self._active.values())

    def finished(self, job_id):
        """A job that ended recently (for a shim re-attaching after its end), or None."""
        for job in reversed(self._history):
            if job.id == job_id:
                return job
        return None

    def history(self):
        return list(self._history)

    def on_worker(self, worker_key):
        return [j for j in self._active.values() if j.worker == worker_key]
