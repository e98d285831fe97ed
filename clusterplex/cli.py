"""clusterplex: the command line for people (``status`` for now)."""

import argparse
import json
import sys
import urllib.error
import urllib.request

from . import cache, config

EX_UNAVAILABLE = 69


def _orchestrator_url(opts):
    if opts.orchestrator:
        return opts.orchestrator.rstrip("/")
    try:
        cfg = config.load("pms", opts.config, missing_ok=True)
    except config.ConfigError:
        return "http://127.0.0.1:3500"
    if cfg.orchestrator == "auto":
        found = cache.read(cfg.discovery.cache_file)
        return found["url"] if found else "http://127.0.0.1:3500"
    return cfg.orchestrator


def _get(base, path, timeout):
    with urllib.request.urlopen(base + path, timeout=timeout) as resp:
        return json.load(resp)


def _table(rows, columns):
    if not rows:
        return "  (none)"
    widths = [max(len(c), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  " + "  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def cmd_status(opts):
    base = _orchestrator_url(opts)
    try:
        workers = _get(base, "/api/v1/workers", opts.timeout)
        jobs = _get(base, "/api/v1/jobs", opts.timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        print(f"clusterplex: cannot reach the orchestrator at {base}: {reason}\n"
              f"  Is clusterplex-orchestrator running there? (systemctl status clusterplex-orchestrator; "
              f"use --orchestrator URL for another host)", file=sys.stderr)
        return EX_UNAVAILABLE
    if opts.json:
        print(json.dumps({"workers": workers, "jobs": jobs}, indent=2))
        return 0
    ready = sum(1 for w in workers if w["state"] == "ready")
    print(f"Orchestrator {base}: {ready} of {len(workers)} workers ready")
    print(_table([(w["name"], w["address"], w["state"], f"{w['running_jobs']}/{w['max_jobs']}",
                   f"{w['load']['cpu']}%", w.get("reason") or "") for w in sorted(workers, key=lambda w: w["name"])],
                 ("worker", "address", "state", "jobs", "cpu", "reason")))
    running = [j for j in jobs if j["state"] in ("pending", "assigned", "running")]
    print(f"\nRunning jobs: {len(running)}")
    print(_table([(j["id"][:8], j["session"] or "-", j["worker"] or "-", j["state"],
                   f"{j['running_seconds'] or 0:.0f}s") for j in running],
                 ("job", "session", "worker", "state", "time")))
    return 0


def main(argv=None):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=config.default_path("pms"),
                        help="pms.yaml to read the orchestrator URL from (default: %(default)s)")
    common.add_argument("--orchestrator", help="orchestrator URL (default: from the config, else "
                                               "http://127.0.0.1:3500)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the orchestrator")
    parser = argparse.ArgumentParser(prog="clusterplex", description="ClusterPlex for bare metal")
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", parents=[common], help="workers and running jobs")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)
    opts = parser.parse_args(argv)
    return opts.func(opts)


if __name__ == "__main__":
    raise SystemExit(main())
