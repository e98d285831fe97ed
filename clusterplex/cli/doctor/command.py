"""``clusterplex doctor``: its options, which roles this host has, and the report (text or ``--json``)."""

import json
import os
import socket
import sys

from ...core import config, protocol
from .checks import exit_code, format_text, summary
from .plexhost import PLEX_DB, PLEX_DIR, PREFERENCES, run_pms
from .workerhost import run_worker

EX_USAGE = 2


def add_arguments(p):
    p.add_argument("--role", choices=("pms", "worker"), action="append",
                   help="what this host is (default: from which configs exist); may be given twice")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--config", default=config.default_path("pms"), help="pms.yaml (default: %(default)s)")
    p.add_argument("--worker-config", default=config.default_path("worker"), help="default: %(default)s")
    p.add_argument("--orchestrator", help="orchestrator URL (default: from pms.yaml)")
    p.add_argument("--sample", help="a media file of the Plex library (as Plex sees it) that every worker must "
                                    "see (default: one from Plex's library database, if readable)")
    p.add_argument("--transcode-root", help="the shared transcode directory Plex must use (default: the "
                                            "workers' transcode_root)")
    p.add_argument("--plex-dir", default=PLEX_DIR, help="where Plex is installed (default: %(default)s)")
    p.add_argument("--plex-preferences", default=PREFERENCES, help="Plex's Preferences.xml")
    p.add_argument("--plex-db", default=PLEX_DB, help="Plex's library database (for a sample media file)")
    p.add_argument("--plex-user", default="plex", help="the user Plex runs as (default: %(default)s)")
    p.add_argument("--service-user", default="plex", help="the user clusterplex-worker runs as (default: "
                                                          "%(default)s)")
    p.add_argument("--dpkg-admindir", help="dpkg's database (default: dpkg's own)")
    p.add_argument("--worker", help="this worker's URL (default: http://127.0.0.1:<port from worker.yaml>)")
    p.add_argument("--relay", help="with --role worker: the relay URL to try from here")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for each network check (default: "
                                                               "%(default)s)")
    p.set_defaults(func=cmd_doctor, divert_query=None)


def cmd_doctor(opts):
    roles = opts.role or [r for r, path in (("pms", opts.config), ("worker", opts.worker_config))
                          if os.path.exists(path)]
    if not roles:
        print(f"clusterplex doctor: neither {opts.config} nor {opts.worker_config} exists: is ClusterPlex installed "
              f"here? (or pass --role pms|worker and the config paths)", file=sys.stderr)
        return EX_USAGE
    if not 0.5 <= opts.timeout <= protocol.PROBE_TIMEOUT_MAX:
        print(f"clusterplex doctor: --timeout must be 0.5 to {protocol.PROBE_TIMEOUT_MAX:g} seconds", file=sys.stderr)
        return EX_USAGE
    findings = []
    for role in dict.fromkeys(roles):
        part = run_pms(opts) if role == "pms" else run_worker(opts)
        for f in part:
            f["role"] = role
        findings += part
    if opts.json:
        print(json.dumps({"ok": exit_code(findings) == 0, "roles": list(dict.fromkeys(roles)),
                          "summary": summary(findings), "findings": findings}, indent=2))
    else:
        name = socket.gethostname()
        what = " and ".join({"pms": "Plex host", "worker": "worker"}[r] for r in dict.fromkeys(roles))
        print(format_text(findings, f"clusterplex doctor on {name} ({what})"))
    return exit_code(findings)
