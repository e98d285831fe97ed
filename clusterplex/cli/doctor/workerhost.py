"""The doctor on a worker host: its config, secret, transcoder, transcode root and the running worker;
with ``--orchestrator`` and ``--relay`` whether it reaches them."""

import asyncio
import json
import socket
import urllib.error
import urllib.request

from ...core import config, protocol
from ...worker import rewrite, runner
from ...worker.probe import ping, rw_test_as, sample_test
from .ask import Unreachable, ask_orchestrator
from .checks import FAIL, OK, SKIP, WARN, check_codecs, check_relay, check_sample, check_transcode_root, finding


def run_worker(opts):
    findings = []
    try:
        cfg = config.load("worker", opts.worker_config)
        findings.append(finding("config", OK, f"{opts.worker_config} is valid."))
    except config.ConfigError as e:
        return [finding("config", FAIL, f"{e}.", f"fix {opts.worker_config} (see etc/worker.yaml)")]
    host = cfg.name or socket.gethostname()
    secret = None
    try:
        secret = config.load_secret(cfg.secret_file)
        findings.append(finding("secret", OK, f"joined: cluster {protocol.secret_fingerprint(secret)}."))
    except config.ConfigError as e:
        findings.append(finding("secret", FAIL, f"{e}.", "run `clusterplex token` on the orchestrator host and "
                                                         "`clusterplex join TOKEN` here (as root)"))
    path, problem = runner.resolve_transcoder(cfg.transcoder)
    findings.append(finding("transcoder", OK, f"transcoder {path} present.") if path else
                    finding("transcoder", FAIL, f"{problem}.", "install Plex Media Server here (the worker runs "
                                                               "its transcoder) or set `transcoder` in worker.yaml"))
    problem, who = rw_test_as(cfg.transcode_root, opts.service_user)
    findings.append(check_transcode_root(host, {"root": cfg.transcode_root, "ok": not problem,
                                                "problem": f"{problem} (checked as {who})" if problem else ""},
                                         opts.service_user))
    if opts.sample:
        pm = [{"from": getattr(m, "from"), "to": m.to} for m in cfg.path_map]
        mapped = rewrite.map_path(opts.sample, pm)
        sp = sample_test(mapped)
        findings.append(check_sample(host, {"path": opts.sample, "mapped": mapped, "ok": not sp,
                                                     "problem": sp}))
    base = opts.worker.rstrip("/") if opts.worker else f"http://127.0.0.1:{cfg.listen[1]}"

    def get(p):
        with urllib.request.urlopen(base + p, timeout=opts.timeout) as resp:
            return json.load(resp)
    try:
        health, info = get("/health"), get("/api/v1/codecs")
    except (urllib.error.URLError, OSError, ValueError) as e:
        findings.append(finding("worker", FAIL, f"clusterplex-worker does not answer at {base}: "
                                                f"{getattr(e, 'reason', e)}.",
                                "start it: systemctl start clusterplex-worker; journalctl -u clusterplex-worker"))
        health = info = None
    if health is not None:
        if health.get("state") == "ready":
            findings.append(finding("worker", OK, f"clusterplex-worker {health.get('name')} is ready."))
        else:
            findings.append(finding("worker", FAIL if health.get("state") != "draining" else WARN,
                                    f"clusterplex-worker is {health.get('state')}: {health.get('reason')}.",
                                    "see the other checks; journalctl -u clusterplex-worker"))
        t = info.get("transcoder") or {}
        st = info.get("codecs") or {}
        findings.append(check_codecs(host, {"enabled": bool(info.get("enabled")), "version": t.get("codec_version"),
                                          "arch": t.get("plex_arch"), "state": st.get("state"),
                                          "present": st.get("present", 0), "total": st.get("total", 0),
                                          "reason": st.get("reason", "")}))
        n = health.get("orchestrators")
        if isinstance(n, int):
            findings.append(finding("orchestrator", OK, f"{n} orchestrator(s) connected to this worker.") if n else
                            finding("orchestrator", FAIL, "no orchestrator is connected to this worker: it gets no "
                                                          "jobs (the orchestrator connects to the worker, not the "
                                                          "other way round).",
                                    f"check that the orchestrator finds this worker (mDNS on the same LAN, or list "
                                    f"{socket.gethostname()}:{cfg.listen[1]} in its `workers`), that its port "
                                    f"{cfg.listen[1]} is open, and that both have the same secret"))
    if opts.orchestrator and secret is not None:
        try:
            ok, _ = asyncio.run(ask_orchestrator(opts.orchestrator.rstrip("/"), secret, None,
                                                 min(opts.timeout, 10.0)))
            findings.append(ok)
        except Unreachable as e:
            findings.append(e.finding)
    if opts.relay:
        fp = protocol.secret_fingerprint(secret) if secret else ""
        r = asyncio.run(ping(opts.relay, "relay", fp, min(opts.timeout, 10.0)))
        findings.append(check_relay(host, r))
    elif not opts.orchestrator:
        findings.append(finding("relay", SKIP, "the relay is checked from every worker by `clusterplex doctor` on "
                                               "the Plex host.", "or pass --relay URL (relay.advertise)"))
    return findings

