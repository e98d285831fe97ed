"""Discovery latency over real mDNS between network namespaces (needs root).

    bash bench/run.sh discovery [--rounds N]

  worker start -> schedulable   worker process started -> orchestrator counts it ready
  goodbye -> gone               SIGTERM to the worker -> orchestrator no longer counts it
  partition -> gone             worker's link cut -> orchestrator marks it offline
Targets: <= 2 s, <= 100 ms, <= 3 s (ClusterPlex: socket.io ping timeouts, up to ~45 s).
"""

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed import netns  # noqa: E402
from testbed.netcluster import NetCluster  # noqa: E402


def report(name, values, target):
    v = sorted(values)
    print(f"  {name:<30} min {v[0]:7.0f}  median {statistics.median(v):7.0f}  max {v[-1]:7.0f} ms"
          f"   (n={len(v)}) target {target}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    opts = ap.parse_args()
    why = netns.available()
    if why:
        raise SystemExit(why)
    import zeroconf
    print(f"discovery: python-zeroconf {zeroconf.__version__}, {opts.rounds} rounds, 2 workers on a namespace bridge")
    start, goodbye, partition = [], [], []
    with tempfile.TemporaryDirectory(prefix="clusterplex-bench-") as tmp, netns.Lan("b") as lan:
        with NetCluster(Path(tmp), lan, workers=2) as c:
            orch = c.orchestrator
            for _ in range(opts.rounds):
                w = c.workers[1]
                mark = orch.mark()
                t0 = time.monotonic()
                w.proc.send_signal(signal.SIGTERM)
                orch.wait_status(r"^1 of 1 workers ready", 10, since=mark)
                goodbye.append((time.monotonic() - t0) * 1000)
                w.stop()
                c.daemons.remove(w)
                mark = orch.mark()
                t0 = time.monotonic()
                c.workers[1] = c.start_worker(1)
                orch.wait_status(r"^2 of 2 workers ready", 10, since=mark)
                start.append((time.monotonic() - t0) * 1000)

                mark = orch.mark()
                t0 = time.monotonic()
                c.worker_hosts[0].cut()
                orch.wait_status(r"1 offline", 10, since=mark)
                partition.append((time.monotonic() - t0) * 1000)
                mark = orch.mark()
                c.worker_hosts[0].heal()
                orch.wait_status(r"^2 of 2 workers ready", 20, since=mark)
    report("worker start -> schedulable", start, "<= 2000")
    report("goodbye -> gone", goodbye, "<= 100")
    report("partition -> gone", partition, "<= 3000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
