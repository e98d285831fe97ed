"""Scheduler decision time with 200 simulated workers and 1000 running jobs.

    bash bench/run.sh scheduler      (or: python bench/bench_scheduler.py [--decisions N])

Target: p99 <= 1 ms per decision. Pure code: no sockets, no processes.
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clusterplex.core import capabilities
from clusterplex.orchestrator import registry, scheduler

HW = [[], [], ["h264:vaapi:decode", "hevc:vaapi:decode", "h264:vaapi:encode", "hevc:vaapi:encode"],
      ["h264:nvdec:decode", "hevc:nvdec:decode", "av1:nvdec:decode", "h264:nvenc:encode", "hevc:nvenc:encode"]]
JOBS = [
    ["-codec:0", "h264", "-i", "/m/a.mkv", "-filter_complex", "[0:0]scale=w=720:h=404[0]", "-map", "[0]",
     "-codec:0", "libx264", "o.ts"],
    ["-codec:0", "hevc", "-i", "/m/b.mkv", "-filter_complex", "[0:0]scale=w=3840:h=2160[0]", "-map", "[0]",
     "-codec:0", "libx264", "o.ts"],
    ["-codec:0", "av1", "-hwaccel:0", "vaapi", "-i", "/m/c.mkv", "-codec:0", "hevc_vaapi", "o.mp4"],
]


def build(n_workers, n_jobs, rng):
    reg = registry.WorkerRegistry()
    for i in range(n_workers):
        key = f"mdns:worker{i:03d}"
        reg.add(key, (f"198.51.100.{i % 250 + 1}", 3501), "mdns")
        reg.update_status(key, {"name": f"worker{i:03d}", "state": "ready", "max_jobs": 8, "cpus": rng.choice([4, 8, 16]),
                                "benchmark": rng.uniform(2000, 20000), "priority": rng.choice([0, 0, 0, 1]),
                                "weight": rng.choice([1.0, 1.0, 2.0]),
                                "hardware": {"hw_codecs": rng.choice(HW), "gpus": []}}, 0.0)
        reg.get(key).cpu_load = rng.uniform(0, 90)
    keys = [w.key for w in reg]
    for j in range(n_jobs):
        reg.assign(rng.choice(keys), f"running{j}", rng.uniform(-10, 0))
    return reg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--decisions", type=int, default=5000)
    opts = ap.parse_args()
    rng = random.Random(1)
    reg = build(opts.workers, opts.jobs, rng)
    needs = [capabilities.needs(a) for a in JOBS]
    print(f"scheduler: {opts.workers} workers, {opts.jobs} running jobs, {opts.decisions} decisions per strategy")
    for strategy in scheduler.STRATEGIES:
        state = scheduler.SchedulerState()
        times = []
        for i in range(opts.decisions):
            n = needs[i % len(needs)]
            t0 = time.perf_counter()
            d = scheduler.choose(strategy, reg, state, 1.0, needs=n, prefer=None)
            times.append((time.perf_counter() - t0) * 1e6)
            if d.worker is None and not d.waitable and i % len(needs) != 2:
                raise SystemExit(f"unexpected refusal: {d.reason}")
        times.sort()
        p99 = times[int(0.99 * (len(times) - 1))]
        print(f"  {strategy:<10} median {statistics.median(times):7.1f} us   p99 {p99:7.1f} us   max {times[-1]:7.1f} us"
              f"   target p99 <= 1000 us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
