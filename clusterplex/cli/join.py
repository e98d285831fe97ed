"""``clusterplex token`` (on the orchestrator host: the join token, ``--rotate`` a new secret) and
``clusterplex join TOKEN`` (on a worker: write the secret), each restarting or reloading the local daemons."""

import os
import shutil
import subprocess
import sys

from ..common import token
from ..core import config, protocol

EX_BAD_TOKEN = 2
SYSTEMCTL_TIMEOUT = 120
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
        return None, f"cannot read {path}: permission denied (run as root)"
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

