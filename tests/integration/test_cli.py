"""`clusterplex status|workers|jobs`, `worker drain --wait`, `worker codecs --refresh` and the errors,
run as a person runs them (a real process) against real daemons on loopback (testbed/cluster.py)."""

import json
import socket
import subprocess
import uuid

import pytest

from clusterplex.worker import hardware
from testbed import cluster as cl
from tests.fakes.codec_server import FakeCodecServer, elf_library

WORKER_KEYS = {"name", "address", "source", "state", "busy", "reason", "running_jobs", "max_jobs", "load_cpu",
               "gpu_load", "weight", "priority", "cpus", "arch", "memory", "gpus", "hw_codecs", "plex_codecs", "eae", "version"}
JOB_KEYS = {"id", "session", "worker", "state", "pid", "exit_code", "reason", "decision", "needs", "restarts",
            "age_seconds", "running_seconds", "progress"}


def clusterplex(*args, timeout=60):
    return subprocess.run(cl.command("clusterplex") + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def start_clusterplex(*args):
    return subprocess.Popen(cl.command("clusterplex") + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def closed_port():
    """A loopback port nothing listens on (bound, never listening, so nobody else gets it meanwhile)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("cli"), workers=2) as c:
        yield c


def held_job(c):
    """A shim whose remote stand-in transcoder holds until killed; returns (shim, session)."""
    media = c.media / "held.mkv"
    media.write_bytes(b"not played: the stand-in only holds")
    key, uid = "h" + uuid.uuid4().hex[:8], str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    argv = ["-x_test_stderr", "transcoder-up", "-x_test_hold", "120", "-i", str(media), "-progressurl",
            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
    shim = c.shim(argv, sdir, mode="remote")
    cl.read_until(shim.stderr, "transcoder-up", 30)
    return shim, f"{key}/{uid}"


def end(shim):
    shim.kill()
    shim.communicate(timeout=10)


def test_workers_table_and_json(cluster):
    r = clusterplex("workers", "--orchestrator", cluster.orchestrator.url)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["WORKER", "ADDRESS", "STATE", "JOBS", "LOAD", "HARDWARE", "CODECS"]
    for i, w in enumerate(cluster.workers):
        row = lines[1 + i]
        assert row.split()[:4] == [f"worker{i}", w.listen, "ready", "0/2"] and " CPU " in row
    r = clusterplex("workers", "--json", "--orchestrator", cluster.orchestrator.url)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == 1 and doc["orchestrator"] == cluster.orchestrator.url
    assert [w["name"] for w in doc["workers"]] == ["worker0", "worker1"]
    assert all(set(w) == WORKER_KEYS and w["state"] == "ready" and w["busy"] is False for w in doc["workers"])


def test_status_and_jobs_show_a_running_job(cluster):
    shim, session = held_job(cluster)
    try:
        r = clusterplex("jobs", "--json", "--orchestrator", cluster.orchestrator.url)
        assert r.returncode == 0, r.stderr
        [job] = [j for j in json.loads(r.stdout)["jobs"] if j["session"] == session]
        assert set(job) == JOB_KEYS and job["state"] == "running" and job["worker"] in ("worker0", "worker1")
        r = clusterplex("jobs", "--orchestrator", cluster.orchestrator.url)
        assert r.returncode == 0, r.stderr
        header, *rows = r.stdout.splitlines()
        assert header.split() == ["JOB", "SESSION", "WORKER", "STATE", "ELAPSED", "PROGRESS", "REASON"]
        [row] = [x for x in rows if session in x]
        assert row.split()[:4] == [job["id"][:8], session, job["worker"], "running"]
        r = clusterplex("status", "--orchestrator", cluster.orchestrator.url)
        assert r.returncode == 0, r.stderr
        assert "2 of 2 workers ready, 1 job running" in r.stdout and session in r.stdout
        r = clusterplex("status", "--json", "--orchestrator", cluster.orchestrator.url)
        doc = json.loads(r.stdout)
        assert doc["schema"] == 1 and doc["orchestrator"]["workers_ready"] == 2
        assert doc["orchestrator"]["jobs_active"] == 1 and [j["session"] for j in doc["jobs"]] == [session]
        assert {w["name"]: w["running_jobs"] for w in doc["workers"]}[job["worker"]] == 1
    finally:
        end(shim)


def test_status_shows_recent_failures_and_fallbacks_to_local(cluster):
    key, uid = "e" + uuid.uuid4().hex[:8], str(uuid.uuid4())
    sdir = cluster.session_dir(key, uid)
    media = cluster.media / "eae.mkv"
    media.write_bytes(b"x")
    # EasyAudioEncoder, which no worker here runs: no worker can take it, the shim (mode both) runs it locally
    argv = ["-codec:1", "eac3_eae", "-x_test_exit", "0", "-i", str(media), "-progressurl",
            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
    shim = cluster.shim(argv, sdir, mode="both")
    out, err = shim.communicate(timeout=60)
    assert shim.returncode == 0 and b"running locally" in err, err
    r = clusterplex("status", "--orchestrator", cluster.orchestrator.url)
    assert r.returncode == 0, r.stderr
    recent = r.stdout.split("Recent failures and fallbacks to local:\n", 1)[1].splitlines()
    assert recent[0].split() == ["TIME", "WHAT", "JOB", "SESSION", "WORKER", "REASON"]
    mine = [line for line in recent if f"{key}/{uid}" in line]
    assert any(" ran locally " in line and "Plex's own transcoder" in line for line in mine), recent
    assert any(" no worker " in line for line in mine), recent
    doc = json.loads(clusterplex("status", "--json", "--orchestrator", cluster.orchestrator.url).stdout)
    kinds = {e["kind"] for e in doc["recent"] if e["session"] == f"{key}/{uid}"}
    assert kinds == {"no_worker", "fell_back_local"}


def test_drain_wait_shows_the_jobs_left_until_the_worker_is_idle(tmp_path):
    with cl.Cluster(tmp_path, workers=2) as c:
        shim, session = held_job(c)
        try:
            [job] = [j for j in c.api("/api/v1/jobs") if j["session"] == session]
            drain = start_clusterplex("worker", "drain", job["worker"], "--wait", "--timeout", "60",
                                      "--orchestrator", c.orchestrator.url)
            seen = cl.read_until(drain.stdout, f"{job['worker']}: 1 job left: {job['id'][:8]} ({session}, ", 30)
            assert f"{job['worker']}: draining: no new jobs, running ones finish".encode() in seen
            assert drain.poll() is None                              # still waiting: the job runs
        finally:
            end(shim)                                                 # PMS stops the transcode
        out, err = drain.communicate(timeout=30)
        assert drain.returncode == 0, err
        assert out.decode().rstrip().endswith(f"{job['worker']}: drained, no jobs left")
        assert [w["state"] for w in c.api("/api/v1/workers") if w["name"] == job["worker"]] == ["draining"]
        r = clusterplex("worker", "resume", job["worker"], "--orchestrator", c.orchestrator.url)
        assert r.returncode == 0 and f"{job['worker']}: taking jobs again" in r.stdout, r.stderr
        c.orchestrator.wait_status(r"^2 of 2 workers ready", 10)


def test_drain_wait_times_out_with_the_jobs_left(cluster):
    shim, session = held_job(cluster)
    try:
        [job] = [j for j in cluster.api("/api/v1/jobs") if j["session"] == session]
        r = clusterplex("worker", "drain", job["worker"], "--wait", "--timeout", "1", "--json",
                        "--orchestrator", cluster.orchestrator.url)
        assert r.returncode == 75, r.stderr
        doc = json.loads(r.stdout)
        assert doc["schema"] == 1 and doc["action"] == "drain" and doc["idle"] is False
        assert [j["id"] for j in doc["jobs_left"]] == [job["id"]]
        assert f"{job['worker']} still runs 1 job after 1s" in r.stderr
    finally:
        end(shim)
        r = clusterplex("worker", "resume", job["worker"], "--orchestrator", cluster.orchestrator.url)
        assert r.returncode == 0, r.stderr
        cluster.orchestrator.wait_status(r"^2 of 2 workers ready", 10)


def test_drain_an_unknown_worker_is_refused(cluster):
    r = clusterplex("worker", "drain", "nope", "--orchestrator", cluster.orchestrator.url)
    assert r.returncode == 1 and "drain nope: no worker named 'nope'" in r.stderr
    r = clusterplex("worker", "drain", "nope", "--json", "--orchestrator", cluster.orchestrator.url)
    err = json.loads(r.stdout)["error"]
    assert r.returncode == 1 and err["kind"] == "refused" and err["http_status"] == 404


# --- when the orchestrator or the worker cannot be reached -------------------------------------

@pytest.mark.parametrize("command", [["status"], ["workers"], ["jobs"], ["worker", "drain", "w1"]])
def test_unreachable_orchestrator_says_which_url_from_where_and_what_to_check(tmp_path, command):
    sock, port = closed_port()
    with sock:
        pms = tmp_path / "pms.yaml"
        pms.write_text(f"orchestrator: http://127.0.0.1:{port}\n")
        r = clusterplex(*command, "--config", str(pms))
        assert r.returncode == 69 and r.stdout == ""
        assert r.stderr.startswith(f"clusterplex: cannot reach the orchestrator at http://127.0.0.1:{port}: "
                                   f"connection refused")
        assert f"that URL came from the orchestrator key in {pms}" in r.stderr
        assert "systemctl status clusterplex-orchestrator" in r.stderr and f"port {port}/tcp" in r.stderr
        assert "--orchestrator" in r.stderr
        r = clusterplex(*command, "--json", "--orchestrator", f"http://127.0.0.1:{port}")
        assert r.returncode == 69 and "cannot reach the orchestrator" in r.stderr
        doc = json.loads(r.stdout)
        assert doc["schema"] == 1 and doc["error"]["exit_code"] == 69 and doc["error"]["kind"] == "unreachable"
        assert doc["error"]["url"] == f"http://127.0.0.1:{port}"
        assert doc["error"]["url_source"] == "the --orchestrator option"


def test_unreachable_orchestrator_from_the_discovery_cache(tmp_path):
    sock, port = closed_port()
    with sock:
        cache = tmp_path / "orchestrator.json"
        cache.write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "name": "orch"}))
        pms = tmp_path / "pms.yaml"
        pms.write_text(f"orchestrator: auto\ndiscovery:\n  cache_file: {cache}\n")
        r = clusterplex("status", "--config", str(pms))
        assert r.returncode == 69
        assert f"that URL came from the discovery cache {cache} (orchestrator: auto in {pms}" in r.stderr
        assert "systemctl status clusterplex-relay" in r.stderr


def test_something_else_on_the_port_is_not_the_orchestrator(cluster):
    r = clusterplex("workers", "--orchestrator", cluster.pms.url)       # the (fake) PMS answers 404 in XML/text
    assert r.returncode == 1 and f"the orchestrator at {cluster.pms.url} answered HTTP 404 Not Found to " \
                                 f"/api/v1/workers: is this the orchestrator's address?" in r.stderr


def test_unreachable_worker(tmp_path):
    sock, port = closed_port()
    with sock:
        wcfg = tmp_path / "worker.yaml"
        wcfg.write_text(f"listen: 0.0.0.0:{port}\n")
        r = clusterplex("worker", "codecs", "--worker-config", str(wcfg))
        assert r.returncode == 69 and r.stdout == ""
        assert f"cannot reach the worker at http://127.0.0.1:{port}: connection refused" in r.stderr
        assert f"that URL came from listen in {wcfg}" in r.stderr and "systemctl status clusterplex-worker" in r.stderr
        r = clusterplex("worker", "codecs", "--json", "--worker", f"http://127.0.0.1:{port}")
        assert r.returncode == 69 and json.loads(r.stdout)["error"]["url_source"] == "the --worker option"


# --- codec downloads show their progress -------------------------------------------------------

VERSION = "1a2b3c4-5678"
LIBS = ["libh264_decoder", "libaac_decoder", "libaac_encoder"]


def test_codecs_refresh_shows_the_download_progress(tmp_path):
    arch = hardware.plex_arch()
    transcoder = tmp_path / "Plex Transcoder"
    transcoder.write_text(f"#!/bin/sh\n# Plex codec version: {VERSION}\nexit 0\n")
    transcoder.chmod(0o755)
    (tmp_path / "codecs.txt").write_text("\n".join(LIBS) + "\n")
    with FakeCodecServer() as srv:
        for lib in LIBS:
            srv.put(VERSION, arch, lib, elf_library(arch))
        over = {0: {"transcoder": str(transcoder), "codecs": {
            "enabled": True, "dir": str(tmp_path / "codecs"), "server": srv.codecs_url,
            "list": str(tmp_path / "codecs.txt")}}}
        with cl.Cluster(tmp_path / "c", workers=1, worker_overrides=over) as c:
            url = c.workers[0].url
            (tmp_path / "codecs" / f"{VERSION}-{arch}" / f"{LIBS[1]}.so").unlink()    # one library lost
            srv.stall(LIBS[1])                                        # its download hangs until released
            refresh = start_clusterplex("worker", "codecs", "--refresh", "--timeout", "60", "--worker", url)
            try:
                cl.read_until(refresh.stdout, "Codecs: downloading 2/3\n", 30)
                srv.wait_stalled(10)
                assert refresh.poll() is None
            finally:
                srv.release()
            out, err = refresh.communicate(timeout=30)
            assert refresh.returncode == 0, err
            assert f"codec version {VERSION}" in out.decode() and "Codecs: ready, 3/3" in out.decode()

            # bounded: a download that does not finish in --timeout leaves exit 75 and the state
            (tmp_path / "codecs" / f"{VERSION}-{arch}" / f"{LIBS[2]}.so").unlink()
            srv.stall(LIBS[2])
            try:
                r = clusterplex("worker", "codecs", "--refresh", "--json", "--timeout", "1", "--worker", url)
                assert r.returncode == 75, r.stderr
                assert "codecs still downloading 2/3 after 1s" in r.stderr
                assert json.loads(r.stdout)["codecs"]["state"] == "downloading"
            finally:
                srv.release()
