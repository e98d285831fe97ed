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


def _worker_url(opts):
    if opts.worker:
        return opts.worker.rstrip("/")
    try:
        cfg = config.load("worker", opts.worker_config, missing_ok=True)
        port = cfg.listen[1]
    except config.ConfigError:
        port = 3501
    return f"http://127.0.0.1:{port}"


def cmd_worker_codecs(opts):
    base = _worker_url(opts)
    try:
        if opts.refresh:
            req = urllib.request.Request(base + "/api/v1/codecs/refresh", method="POST")
            with urllib.request.urlopen(req, timeout=opts.timeout) as resp:
                info = json.load(resp)
        else:
            info = _get(base, "/api/v1/codecs", opts.timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"clusterplex: cannot reach the worker at {base}: {getattr(e, 'reason', e)}\n"
              f"  Is clusterplex-worker running? (systemctl status clusterplex-worker)", file=sys.stderr)
        return EX_UNAVAILABLE
    if opts.json:
        print(json.dumps(info, indent=2))
        return 0
    t = info.get("transcoder") or {}
    print(f"Transcoder {t.get('path') or '?'}: codec version {t.get('codec_version') or 'unknown'}, "
          f"arch {t.get('plex_arch') or 'unknown'}")
    st = info.get("codecs")
    if not info.get("enabled"):
        print("Codecs: not managed (codecs.enabled is false)")
    elif st is None:
        print("Codecs: not needed (no Plex codec version in the transcoder)")
    else:
        print(f"Codecs: {st['state']}, {st['present']}/{st['total']} in {st['path']}")
        if st.get("reason"):
            print(f"  {st['reason']}")
        for lib, why in sorted((st.get("failed") or {}).items()):
            print(f"  {lib}: {why}")
    eae = info.get("eae") or {}
    if eae.get("enabled"):
        print(f"EasyAudioEncoder: {'running' if eae.get('running') else 'not running'}"
              + (f" ({eae['problem']})" if eae.get("problem") else ""))
    ready = st is None or st.get("state") == "ready" or not info.get("enabled")
    return 0 if ready else 1


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
    wk = sub.add_parser("worker", help="this machine's worker")
    wsub = wk.add_subparsers(dest="worker_command", required=True)
    wc = wsub.add_parser("codecs", help="Plex codec libraries and EasyAudioEncoder on this worker")
    wc.add_argument("--refresh", action="store_true", help="check and download again")
    wc.add_argument("--json", action="store_true", help="machine-readable output")
    wc.add_argument("--worker", help="worker URL (default: http://127.0.0.1:<port from worker.yaml>)")
    wc.add_argument("--worker-config", default=config.default_path("worker"), help="default: %(default)s")
    wc.add_argument("--timeout", type=float, default=10.0)
    wc.set_defaults(func=cmd_worker_codecs)
    opts = parser.parse_args(argv)
    return opts.func(opts)


if __name__ == "__main__":
    raise SystemExit(main())
