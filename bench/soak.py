"""Soak: mixed jobs for N minutes with random worker kills and orchestrator restarts (loopback).

    bash bench/run.sh soak --minutes 30        (not part of CI)

Prints the counts: jobs, exact exit codes, jobs moved after a worker kill, shims re-attached after an
orchestrator restart, failures, transcoders left behind.
"""

import argparse
import faulthandler
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import cluster as cl  # noqa: E402
from testbed import fixtures  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--job-timeout", type=float, default=180,
                    help="a shim still running after this many seconds counts as hung and is killed")
    opts = ap.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)     # kill -USR1 <pid>: where is it stuck?
    rng = random.Random(opts.seed)
    counts = dict(jobs=0, exact=0, wrong=0, moved=0, reattached=0, failed=0, worker_kills=0,
                  orchestrator_restarts=0, hung=0, left_behind=0)
    with tempfile.TemporaryDirectory(prefix="clusterplex-soak-") as tmp:
        tmp = Path(tmp)
        media = tmp / "clip.mkv"
        fixtures.make_clip(str(media), seconds=2)
        with cl.Cluster(tmp / "c", workers=3, max_jobs=3,
                        orchestrator_overrides={"queue_timeout": 30, "log_level": "info"},
                        worker_overrides={i: {"log_level": "info"} for i in range(3)}) as c:
            cfg = c.pms_config("soak", mode="remote")
            running = []
            reasons = set()
            end = time.monotonic() + opts.minutes * 60
            next_chaos = time.monotonic() + 10
            next_report = time.monotonic() + 60
            while time.monotonic() < end or running:
                while time.monotonic() < end and len(running) < opts.concurrency:
                    key, uid = f"soak{counts['jobs']}", str(uuid.uuid4())
                    sdir = c.session_dir(key, uid)
                    code = rng.choice([0, 0, 0, 1, 187])
                    hold = rng.choice(["0", "0.5", "2"])
                    argv = ["-x_test_pidfile", str(sdir / "pid.json"), "-x_test_hold", hold, "-x_test_exit", str(code),
                            "-i", str(media), "-progressurl",
                            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "o.ts"]
                    # stderr to a file: a pipe read only at the end would block a chatty shim forever
                    with open(sdir / "shim.err", "wb") as errf:
                        p = c.shim(argv, sdir, config=cfg, stdout=subprocess.DEVNULL, stderr=errf)
                    running.append((p, code, sdir, time.monotonic() + opts.job_timeout))
                    counts["jobs"] += 1
                for item in list(running):
                    p, code, sdir, deadline = item
                    if p.poll() is None:
                        if time.monotonic() < deadline:
                            continue
                        p.kill()
                        p.wait()
                        counts["hung"] += 1
                        reasons.add(f"hung > {opts.job_timeout:.0f} s: {sdir.name}")
                    running.remove(item)
                    err = (sdir / "shim.err").read_bytes()
                    counts["moved"] += err.count(b"restarting it on another worker")
                    if p.returncode == -signal.SIGKILL:
                        pass                                 # hung, killed above
                    elif p.returncode == code:
                        counts["exact"] += 1
                    elif b"remote transcode failed" in err:
                        counts["failed"] += 1
                        reasons.add(err.decode(errors="replace").strip().splitlines()[-1][:160])
                    else:
                        counts["wrong"] += 1
                    if (sdir / "pid.json").exists():      # checked now: pids get reused over a long soak
                        pid = json.loads((sdir / "pid.json").read_text())["pid"]
                        counts["left_behind"] += 0 if cl.wait_pid_gone(pid, 5) else 1
                if time.monotonic() > next_chaos and time.monotonic() < end:
                    next_chaos = time.monotonic() + rng.uniform(10, 30)
                    if rng.random() < 0.5:
                        i = rng.randrange(3)
                        listen = c.workers[i].listen
                        c.workers[i].kill()
                        c.daemons.remove(c.workers[i])
                        c.workers[i] = c.start_worker(i, listen=listen)   # as systemd would: same address
                        counts["worker_kills"] += 1
                    else:
                        c.restart_orchestrator(kill=rng.random() < 0.5)
                        counts["orchestrator_restarts"] += 1
                time.sleep(0.05)       # pacing of the load generator (not synchronization)
                if time.monotonic() > next_report:
                    next_report = time.monotonic() + 60
                    print(f"  {time.strftime('%H:%M:%S')} running {len(running)}: "
                          + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)
            counts["reattached"] = c.orchestrator.log().count("shim re-attached")    # one log, appended
            print("  load done, stopping the cluster", flush=True)
    print(f"soak {opts.minutes} min: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for r in sorted(reasons):
        print(f"  failed: {r}")
    return 0 if counts["wrong"] == counts["hung"] == counts["left_behind"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
