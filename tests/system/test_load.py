"""Bounded load on loopback: 200 concurrent short jobs through shim -> orchestrator -> 3 workers."""

import json
import random
import uuid

import pytest

from testbed import cluster as cl
from testbed import fixtures

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

JOBS = 200


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_200_concurrent_jobs_exact_exit_codes_none_lost_none_twice_none_left(tmp_path):
    media = tmp_path / "clip.mkv"
    fixtures.make_clip(str(media), seconds=1)
    rng = random.Random(7)
    with cl.Cluster(tmp_path / "c", workers=3, max_jobs=4, strategy="LOAD_TASKS",
                    orchestrator_overrides={"queue_timeout": 60, "log_level": "info"}) as c:
        baseline = rss_kb(c.orchestrator.proc.pid)
        cfg = c.pms_config("load", mode="remote")
        jobs = []
        for i in range(JOBS):
            key, uid = f"load{i}", str(uuid.uuid4())
            sdir = c.session_dir(key, uid)
            code = rng.choice([0, 0, 0, 1, 2, 69, 187, 255])
            argv = ["-x_test_startfile", str(sdir / "start.json"), "-x_test_exit", str(code), "-i", str(media),
                    "-progressurl", f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress",
                    "o.ts"]
            jobs.append((c.shim(argv, sdir, config=cfg), code, sdir, f"{key}/{uid}"))
        results = [(p.communicate(timeout=240), p.returncode, code, sdir, session) for p, code, sdir, session in jobs]
        wrong = [(session, rc, code, err[-300:]) for (out, err), rc, code, sdir, session in results if rc != code]
        assert not wrong, wrong[:5]
        pids = [json.loads((sdir / "start.json").read_text())["pid"] for _, _, _, sdir, _ in results]
        assert len(set(pids)) == JOBS                            # every job ran, each once
        assert all(cl.wait_pid_gone(pid, 5) for pid in pids)     # no transcoder left behind
        history = {j["session"]: j for j in c.api("/api/v1/jobs")}
        done = [history[s] for *_, s in results if s in history]
        assert all(j["state"] == "exited" and j["restarts"] == 0 for j in done)
        started = sum(w.log().count(" started: pid ") for w in c.workers)
        assert started == JOBS
        c.orchestrator.wait_status(r"3 of 3 workers ready, 0 jobs running$", 10)
        grown = rss_kb(c.orchestrator.proc.pid) - baseline
        print(f"orchestrator RSS {baseline} kB before, +{grown} kB after {JOBS} jobs")
        assert grown < 12 * 1024
