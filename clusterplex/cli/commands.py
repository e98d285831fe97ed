"""clusterplex: the command line for people; its arguments, and ``main`` with its exit status.

``status``, ``workers``, ``jobs`` (tables, or ``--json`` for scripts), ``worker drain|resume NAME``
(``--wait``: until the worker is idle), ``worker codecs [--refresh]`` (download progress),
``token``, ``join``, ``doctor``.

``--json`` output is versioned (``"schema": 1``) and documented in docs/operators.md; fields are
only ever added. On an error, stdout holds ``{"schema": 1, "error": {...}}`` with ``--json`` (and
nothing without it), the explanation goes to stderr, and the exit status is non-zero: 69
(EX_UNAVAILABLE) when the orchestrator or worker cannot be reached, 1 when it refused the request,
75 (EX_TEMPFAIL) when ``--wait``/``--refresh`` ran out of time.
"""

import argparse

from ..core import config
from .api import DEFAULT_ORCHESTRATOR, DEFAULT_WORKER_PORT
from .doctor import command as doctor_command
from .join import cmd_join, cmd_token
from .status import cmd_jobs, cmd_status, cmd_workers
from .worker_commands import WAIT_TIMEOUT, cmd_worker_codecs, cmd_worker_drain


def orchestrator_options(parser, timeout_help="seconds to wait for the orchestrator's answer (default 5)"):
    """--config, --orchestrator, --timeout and --json: every command that talks to the orchestrator."""
    parser.add_argument("--config", default=config.default_path("pms"),
                        help="pms.yaml to read the orchestrator URL from (default: %(default)s)")
    parser.add_argument("--orchestrator", metavar="URL",
                        help=f"orchestrator URL (default: the orchestrator key of --config; for auto the relay's "
                             f"discovery cache; else {DEFAULT_ORCHESTRATOR})")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help=timeout_help)
    parser.add_argument("--json", action="store_true",
                        help="machine-readable output (schema in docs/operators.md; errors: see EXIT STATUS)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="clusterplex", description="ClusterPlex for bare metal",
        epilog="Exit status: 0 ok; 1 refused or not ready; 2 bad token; 69 orchestrator/worker unreachable; "
               "75 --wait/--refresh ran out of time; 78 configuration error.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    st = sub.add_parser("status", help="the orchestrator, its workers, running jobs and recent failures")
    orchestrator_options(st)
    st.set_defaults(func=cmd_status)
    wl = sub.add_parser("workers", help="the workers: state, jobs, load, hardware, Plex codecs")
    orchestrator_options(wl)
    wl.set_defaults(func=cmd_workers)
    jb = sub.add_parser("jobs", help="running jobs: session, worker, state, elapsed time, reason")
    orchestrator_options(jb)
    jb.add_argument("--all", action="store_true", help="also the recently finished jobs (the last 50)")
    jb.set_defaults(func=cmd_jobs)

    wk = sub.add_parser("worker", help="one worker: drain, resume, codecs")
    wsub = wk.add_subparsers(dest="worker_command", required=True, metavar="ACTION")
    wc = wsub.add_parser("codecs", help="Plex codec libraries and EasyAudioEncoder on this worker")
    wc.add_argument("--refresh", action="store_true",
                    help="check and download again, showing the progress until ready or failed")
    wc.add_argument("--json", action="store_true", help="machine-readable output (the worker's /api/v1/codecs)")
    wc.add_argument("--worker", metavar="URL",
                    help=f"worker URL (default: http://127.0.0.1:<port of listen in --worker-config>, "
                         f"else port {DEFAULT_WORKER_PORT})")
    wc.add_argument("--worker-config", default=config.default_path("worker"), help="default: %(default)s")
    wc.add_argument("--timeout", type=float, metavar="SECONDS",
                    help=f"seconds to wait for the worker (default 10); with --refresh for the whole download "
                         f"(default {WAIT_TIMEOUT:g})")
    wc.set_defaults(func=cmd_worker_codecs)
    for action, text in (("drain", "take no new jobs on worker NAME; its running jobs finish"),
                         ("resume", "let worker NAME take jobs again")):
        wd = wsub.add_parser(action, help=text + " (on the orchestrator host)")
        wd.add_argument("name", metavar="NAME", help="worker name (as `clusterplex workers` shows it) or address")
        if action == "drain":
            wd.add_argument("--wait", action="store_true",
                            help="wait until the worker runs no job, showing the jobs left")
            orchestrator_options(wd, f"seconds to wait for the orchestrator (default 5); with --wait for the "
                                     f"whole drain (default {WAIT_TIMEOUT:g})")
        else:
            orchestrator_options(wd)
        wd.set_defaults(func=cmd_worker_drain, action=action, wait=False)

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

    dr = sub.add_parser("doctor", help="check this host and the cluster, and say how to fix what is wrong",
                        description="On the Plex host: the shim's diversion, Plex's transcode directory, the "
                                    "orchestrator, and every worker (media, transcode root, relay, codecs, uid, "
                                    "clock). On a worker: that worker. Exit 0: nothing failed; 1: something "
                                    "failed; 2: nothing to check here.")
    doctor_command.add_arguments(dr)
    return parser, sub


def main(argv=None):
    parser, _ = build_parser()
    opts = parser.parse_args(argv)
    try:
        return opts.func(opts)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:       # `clusterplex jobs | head`
        return 0

