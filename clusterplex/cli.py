"""clusterplex: the command line for people: ``status``, ``worker codecs``, ``token``, ``join``."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

from . import cache, config, protocol, token

EX_UNAVAILABLE = 69
EX_BAD_TOKEN = 2
SYSTEMCTL_TIMEOUT = 120


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


# --- join tokens -------------------------------------------------------------------

_RUNNING = ("active", "reloading", "activating", "refreshing")


def _secret_path(opts, kind):
    """--secret-file, else ``secret_file`` from the daemon's YAML if readable, else the default."""
    if opts.secret_file:
        return opts.secret_file
    try:
        return config.load(kind, opts.config, missing_ok=True).secret_file
    except config.ConfigError:
        return config.SECRET_FILE.default


def _read_secret(path):
    """The secret in ``path``, or (None, message) with what to do about it."""
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return None, (f"no cluster secret here ({path} not found): is clusterplex-orchestrator installed? "
                      f"(or pass --secret-file)")
    except PermissionError:
        return None, f"cannot read {path}: permission denied (run as root: sudo clusterplex token)"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror}"
    try:
        return config.load_secret(path), ""
    except config.ConfigError as e:
        return None, str(e)


def _systemd(actions):
    """Run ``systemctl VERB UNIT`` for each (verb, unit, what-it-did) whose unit is running.

    Units that are absent or stopped, and machines without systemd, are skipped
    quietly. Returns (["clusterplex-worker reloaded", ...], all_ok).
    """
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return [], True
    done, ok = [], True
    for verb, unit, what in actions:
        try:
            state = subprocess.run([systemctl, "is-active", f"{unit}.service"], capture_output=True, text=True,
                                   stdin=subprocess.DEVNULL, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if state not in _RUNNING:
            continue
        try:
            r = subprocess.run([systemctl, verb, f"{unit}.service"], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=SYSTEMCTL_TIMEOUT)
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] if r.returncode else None
        except subprocess.TimeoutExpired:
            why = [f"no answer within {SYSTEMCTL_TIMEOUT}s"]
        except OSError as e:
            why = [e.strerror]
        if why is None:
            done.append(f"{unit} {what}")
        else:
            ok = False
            done.append(f"`systemctl {verb} {unit}` failed: {why[0] if why else 'exit status ' + str(r.returncode)}"
                        f" (journalctl -u {unit})")
    return done, ok


def cmd_token(opts):
    def info(msg):
        if not opts.quiet:
            print(msg, file=sys.stderr)

    path = _secret_path(opts, "orchestrator")
    if opts.rotate:
        secret = token.generate_secret()
        try:
            token.write_secret(path, secret)
        except token.SecretFileError as e:
            hint = "" if os.path.isdir(os.path.dirname(os.path.abspath(path))) else \
                " (is clusterplex-orchestrator installed?)"
            print(f"clusterplex token: {e}{hint}", file=sys.stderr)
            return 1
    else:
        secret, problem = _read_secret(path)
        if secret is None:
            print(f"clusterplex token: {problem}", file=sys.stderr)
            return 1
    try:
        tok = token.make_token(secret)
    except token.TokenError as e:
        print(f"clusterplex token: {path}: {e}", file=sys.stderr)
        return 1
    print(tok, flush=True)
    fp = protocol.secret_fingerprint(secret)
    if not opts.rotate:
        info(f"run on each worker: clusterplex join <token>  (cluster {fp}; the token is the cluster secret: "
             f"keep it private)")
        return 0
    ok = True
    if opts.no_restart:
        info(f"new cluster secret {fp} written to {path}; daemons not restarted (--no-restart): restart "
             f"clusterplex-orchestrator and clusterplex-relay to use it")
    else:
        done, ok = _systemd([("try-restart", "clusterplex-orchestrator", "restarted"),
                             ("try-restart", "clusterplex-relay", "restarted"),
                             ("try-reload-or-restart", "clusterplex-worker", "reloaded")])
        msg = f"new cluster secret {fp} written to {path}; " + ("; ".join(done) if done else
                                                                "no clusterplex daemon running here under systemd")
        if ok:
            info(msg)
        else:
            print(f"clusterplex token: {msg}", file=sys.stderr)
    info("every worker must re-join: run on each worker: clusterplex join <token>  (the token is the cluster "
         "secret: keep it private)")
    return 0 if ok else 1


def cmd_join(opts):
    text = sys.stdin.read() if opts.token == "-" else opts.token
    try:
        secret = token.parse_token(text)
    except token.TokenError as e:
        print(f"clusterplex join: {e}", file=sys.stderr)
        return EX_BAD_TOKEN
    path = _secret_path(opts, "worker")
    try:
        changed = token.write_secret(path, secret)
    except token.SecretFileError as e:
        print(f"clusterplex join: {e}", file=sys.stderr)
        return 1
    fp = protocol.secret_fingerprint(secret)
    if not changed:
        print(f"already joined to cluster {fp} ({path} unchanged)")
        return 0
    if opts.no_reload:
        print(f"joined cluster {fp}; secret written to {path}; not reloading (--no-reload): a worker that was "
              f"not joined picks it up within 2 s, otherwise `systemctl reload clusterplex-worker`")
        return 0
    done, ok = _systemd([("try-reload-or-restart", "clusterplex-worker", "reloaded"),
                         ("try-restart", "clusterplex-relay", "restarted")])
    if done:
        print(f"joined cluster {fp}; " + "; ".join(done), file=sys.stdout if ok else sys.stderr)
    else:
        print(f"joined cluster {fp}; secret written to {path}; no clusterplex-worker running here under systemd "
              f"(a worker that was not joined picks it up within 2 s; a joined one needs a reload: SIGHUP)")
    return 0 if ok else 1


def cmd_worker_drain(opts):
    base = _orchestrator_url(opts)
    req = urllib.request.Request(f"{base}/api/v1/workers/{urllib.parse.quote(opts.name, safe='')}/{opts.action}",
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=opts.timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            reason = json.load(e).get("error", e.reason)
        except ValueError:
            reason = e.reason
        print(f"clusterplex: {opts.action} {opts.name}: {reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"clusterplex: cannot reach the orchestrator at {base}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return EX_UNAVAILABLE
    done = "draining: no new jobs, running ones finish" if opts.action == "drain" else "taking jobs again"
    print(f"{', '.join(body['workers'])}: {done}")
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
    wk = sub.add_parser("worker", help="this machine's worker")
    wsub = wk.add_subparsers(dest="worker_command", required=True)
    wc = wsub.add_parser("codecs", help="Plex codec libraries and EasyAudioEncoder on this worker")
    wc.add_argument("--refresh", action="store_true", help="check and download again")
    wc.add_argument("--json", action="store_true", help="machine-readable output")
    wc.add_argument("--worker", help="worker URL (default: http://127.0.0.1:<port from worker.yaml>)")
    wc.add_argument("--worker-config", default=config.default_path("worker"), help="default: %(default)s")
    wc.add_argument("--timeout", type=float, default=10.0)
    wc.set_defaults(func=cmd_worker_codecs)
    for action, text in (("drain", "take no new jobs on worker NAME; its running jobs finish"),
                         ("resume", "let worker NAME take jobs again")):
        wd = wsub.add_parser(action, parents=[common], help=text + " (on the orchestrator host)")
        wd.add_argument("name", help="worker name (as `clusterplex status` shows it) or address")
        wd.set_defaults(func=cmd_worker_drain, action=action)
    tk = sub.add_parser("token", help="print the join token for workers (on the orchestrator host)",
                        description="Print the join token that carries the cluster secret (stdout) with a "
                                    "hint (stderr). The token is the secret: keep it private.")
    tk.add_argument("--rotate", action="store_true",
                    help="generate a new secret, write it, restart the local daemons; workers must re-join")
    tk.add_argument("--no-restart", action="store_true", help="with --rotate: do not restart the daemons")
    tk.add_argument("--secret-file", help="default: secret_file from --config, else /etc/clusterplex/secret")
    tk.add_argument("--config", default=config.default_path("orchestrator"), help="default: %(default)s")
    tk.add_argument("--quiet", "-q", action="store_true", help="only the token")
    tk.set_defaults(func=cmd_token)
    jn = sub.add_parser("join", help="join this worker to a cluster with a token from `clusterplex token`",
                        description="Write the cluster secret carried by TOKEN (0600, owner plex) and "
                                    "reload the local worker. Exit 0: joined; 2: bad token; 1: cannot write.")
    jn.add_argument("token", metavar="TOKEN", help="the join token; - reads it from stdin "
                                                    "(keeps it out of the shell history)")
    jn.add_argument("--secret-file", help="default: secret_file from --config, else /etc/clusterplex/secret")
    jn.add_argument("--config", default=config.default_path("worker"), help="default: %(default)s")
    jn.add_argument("--no-reload", action="store_true", help="do not reload clusterplex-worker / restart "
                                                              "clusterplex-relay")
    jn.set_defaults(func=cmd_join)
    opts = parser.parse_args(argv)
    return opts.func(opts)


if __name__ == "__main__":
    raise SystemExit(main())
