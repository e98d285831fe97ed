"""A short CPU benchmark (zlib, single thread) and its cache file, so a worker measures once per
CPU, Python and benchmark version.
"""

import json
import logging
import os
import platform
import random
import tempfile
import time
import zlib

logger = logging.getLogger("clusterplex.worker.hardware")

BENCHMARK_VERSION = 1
# zlib level-6 compression of text-like data, single thread. 60 MB/s = 1000 points per thread:
# roughly a current server core (the development VM, an AMD EPYC vCPU, measured ~67 MB/s with
# Python 3.11); fast desktop cores score higher, a Raspberry Pi 4 core far lower (not measured
# here). Entropy coding and branchy integer work resemble a software encoder more than SHA-256
# (4x faster with SHA extensions) would.
BENCHMARK_REFERENCE_MBPS = 60.0
_bench_data = None


def _benchmark_data():
    global _bench_data
    if _bench_data is None:
        rnd = random.Random(20240601)
        words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
                 for _ in range(512)]
        _bench_data = b" ".join(rnd.choice(words) for _ in range(12000))[:65536]
    return _bench_data


def cpu_benchmark(seconds=0.2, threads=None):
    """A short single-thread CPU score: ``{"per_thread": int, "score": int, "threads": int}``.

    Compresses 64 KiB with zlib for ``seconds`` in 5 rounds and keeps the best round (less
    disturbed by other load). per_thread is normalised so that a typical modern core scores
    ~1000; score = per_thread x threads (logical CPUs; SMT siblings count fully, so it
    overstates SMT machines a little)."""
    threads = threads or os.cpu_count() or 1
    data = _benchmark_data()
    zlib.compress(data, 6)                      # warm up
    rounds = 5
    best = 0.0
    for _ in range(rounds):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + max(seconds, 0.005) / rounds
        while True:
            zlib.compress(data, 6)
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n * len(data) / (now - t0) / 1e6)
    per_thread = max(1, round(best / BENCHMARK_REFERENCE_MBPS * 1000))
    return {"per_thread": per_thread, "score": per_thread * threads, "threads": threads}


def benchmark_key(model, threads):
    """Cache key: the benchmark is redone when the CPU, its thread count, Python or the
    benchmark itself changes."""
    return f"{model}|{threads}|py{platform.python_version()}|v{BENCHMARK_VERSION}"


def _valid_result(r):
    return isinstance(r, dict) and all(isinstance(r.get(k), int) and r[k] > 0
                                       for k in ("per_thread", "score", "threads"))


def cached_benchmark(cache_path, key, bench=None):
    """The benchmark result stored under ``key`` in the JSON file ``cache_path``, or a fresh
    ``bench()`` (default: cpu_benchmark()) stored there for next time.

    The file is replaced atomically (temporary file + rename in the same directory) and keeps
    only the current key. No cache_path, a missing or unwritable directory, or a corrupt file
    just mean "not cached": never an error."""
    bench = bench or cpu_benchmark
    if cache_path:
        try:
            with open(cache_path, "r", encoding="utf-8") as f:
                stored = json.load(f)
            result = stored.get("entries", {}).get(key) if isinstance(stored, dict) else None
            if _valid_result(result):
                return result
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            logger.debug("benchmark cache %s unreadable (%s): measuring again", cache_path, e)
    result = bench()
    if cache_path:
        directory = os.path.dirname(os.path.abspath(cache_path))
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": BENCHMARK_VERSION, "entries": {key: result}}, f)
            os.replace(tmp, cache_path)
            tmp = None
        except OSError as e:
            logger.debug("benchmark cache %s not written: %s", cache_path, e)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    return result
