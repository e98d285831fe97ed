"""Benchmarks of the core transcode path on loopback (real processes).

    bash bench/run.sh transcode [--runs N]

Scenarios (the same as the ClusterPlex baseline in issue 2):
  dispatch      shim launch -> stand-in transcoder starts on a worker
  round trip    shim launch -> shim exits, zero-length job (transcoder exits 0 at once)
  kill -> gone  SIGKILL of the shim (what PMS does) -> remote transcoder has exited
  local mode    shim launch -> transcoder starts, mode local (exec in place)
  first segment time to the first manifest POST at PMS: through the cluster vs the
                stand-in transcoder run directly
  RSS           orchestrator, idle worker, waiting shim
Times use CLOCK_MONOTONIC, which all processes of the machine share.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import cluster as cl  # noqa: E402
from testbed import fixtures  # noqa: E402


def summary(name, values, unit="ms", target=""):
    v = sorted(values)
    p95 = v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]
    print(f"  {name:<34} min {v[0]:7.1f}  median {statistics.median(v):7.1f}  p95 {p95:7.1f}  "
          f"max {v[-1]:7.1f} {unit}   (n={len(v)}) {target}")
    return statistics.median(v)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def job_argv(c, sdir, key, uid, media, *hooks):
    return [*hooks, "-i", str(media), "-progressurl",
            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]


def new_session(c):
    key, uid = "b" + uuid.uuid4().hex[:12], str(uuid.uuid4())
    return key, uid, c.session_dir(key, uid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    opts = ap.parse_args()
    n = opts.runs
    tmp = Path(tempfile.mkdtemp(prefix="clusterplex-bench-"))
    media = tmp / "clip.mkv"
    fixtures.make_clip(str(media), seconds=6)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {sys.prefix}")
    import aiohttp
    print(f"aiohttp {aiohttp.__version__}; {n} runs per scenario; cluster: 2 workers on loopback\n")
    with cl.Cluster(tmp / "cluster", workers=2, max_jobs=4) as c:
        cfg_remote = c.pms_config("bench-remote", mode="remote")
        cfg_local = c.pms_config("bench-local", mode="local")

        # dispatch and round trip (zero-length job)
        dispatch, roundtrip = [], []
        for _ in range(n):
            key, uid, sdir = new_session(c)
            start = sdir / "start.json"
            argv = job_argv(c, sdir, key, uid, media, "-x_test_startfile", str(start), "-x_test_exit", "0")
            t0 = time.monotonic()
            p = c.shim(argv, sdir, config=cfg_remote)
            p.communicate(timeout=30)
            t1 = time.monotonic()
            assert p.returncode == 0
            dispatch.append((json.loads(start.read_text())["t_mono"] - t0) * 1000)
            roundtrip.append((t1 - t0) * 1000)
        summary("dispatch (launch -> transcoder)", dispatch, target="target median <= 100, p95 <= 150")
        summary("zero-length round trip", roundtrip, target="target <= 150")

        # SIGKILL of the shim -> remote transcoder gone
        gone = []
        shim_rss = []
        for i in range(n):
            key, uid, sdir = new_session(c)
            pidfile = sdir / "pids.json"
            argv = job_argv(c, sdir, key, uid, media, "-x_test_pidfile", str(pidfile), "-x_test_stderr", "up",
                            "-x_test_hold", "60")
            p = c.shim(argv, sdir, config=cfg_remote)
            cl.read_until(p.stderr, "up", 20)
            pid = json.loads(pidfile.read_text())["pid"]
            if i < 5:
                shim_rss.append(rss_mb(p.pid))
            t0 = time.monotonic()
            p.kill()
            if not cl.wait_pid_gone(pid, 5):
                raise RuntimeError("transcoder survived")
            gone.append((time.monotonic() - t0) * 1000)
            p.communicate()
        summary("SIGKILL of shim -> transcoder gone", gone, target="target median <= 50")

        # local mode
        local = []
        for _ in range(n):
            key, uid, sdir = new_session(c)
            start = sdir / "start.json"
            argv = job_argv(c, sdir, key, uid, media, "-x_test_startfile", str(start), "-x_test_exit", "0")
            t0 = time.monotonic()
            p = c.shim(argv, sdir, config=cfg_local)
            p.communicate(timeout=30)
            local.append((json.loads(start.read_text())["t_mono"] - t0) * 1000)
        direct = []
        for _ in range(n):
            key, uid, sdir = new_session(c)
            start = sdir / "start.json"
            argv = job_argv(c, sdir, key, uid, media, "-x_test_startfile", str(start), "-x_test_exit", "0")
            t0 = time.monotonic()
            subprocess.run([str(cl.STANDIN)] + argv, cwd=sdir, check=True, capture_output=True)
            direct.append((json.loads(start.read_text())["t_mono"] - t0) * 1000)
        summary("local mode (launch -> transcoder)", local)
        summary("  same transcoder started directly", direct)
        print(f"  {'local-mode overhead (median)':<34} {statistics.median(local) - statistics.median(direct):7.1f} ms"
              "   target <= 70")

        # time to the first segment (first manifest POST at PMS)
        runs = max(3, n // 6)
        via, raw = [], []
        for mode in ("cluster", "direct"):
            for _ in range(runs):
                key, uid, sdir = new_session(c)
                argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(media), session_dir=str(sdir),
                                            session_key=key, job_uuid=uid)
                t0 = time.monotonic()
                if mode == "cluster":
                    p = c.shim(argv, sdir, config=cfg_remote)
                else:
                    direct_argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(media),
                                                       session_dir=str(sdir), plex_url=c.pms.url,
                                                       session_key=key, job_uuid=uid)
                    env = {"PATH": os.environ["PATH"], "X_PLEX_TOKEN": cl.PLEX_TOKEN}
                    p = subprocess.Popen([str(cl.STANDIN)] + direct_argv, cwd=sdir, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                first = c.pms_wait(f"/session/{key}/{uid}/manifest", count=1, timeout=60)[0]
                (via if mode == "cluster" else raw).append((first["t"] - t0) * 1000)
                p.communicate(timeout=120)
        m1 = summary("first segment, through the cluster", via)
        m2 = summary("first segment, transcoder run directly", raw)
        print(f"  {'cluster overhead to first segment':<34} {m1 - m2:7.1f} ms   target <= 150")

        # memory
        print()
        print(f"  RSS orchestrator     {rss_mb(c.orchestrator.proc.pid):6.1f} MB   target <= 50")
        print(f"  RSS idle worker      {rss_mb(c.workers[0].proc.pid):6.1f} MB   target <= 45")
        print(f"  RSS relay            {rss_mb(c.relay.proc.pid):6.1f} MB")
        print(f"  RSS waiting shim     {statistics.median(shim_rss):6.1f} MB   target <= 20")
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
