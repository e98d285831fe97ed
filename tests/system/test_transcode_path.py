"""End to end on loopback: shim -> orchestrator -> worker -> stand-in transcoder
(real ffmpeg) -> relay -> fake PMS. Every piece is a real process."""

import json
import os
import platform
import signal
import urllib.error
import urllib.request
import shutil
import subprocess
import time
import uuid

import pytest

from testbed import cluster as cl
from testbed import fixtures

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    clip = d / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=6)
    return clip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("cluster"), workers=2) as c:
        yield c


def new_session(c):
    key, uid = f"s{uuid.uuid4().hex[:12]}", str(uuid.uuid4())
    return key, uid, c.session_dir(key, uid)


def plex_job(c, name, media, **kw):
    key, uid, sdir = new_session(c)
    argv = fixtures.instantiate(fixtures.load_argv(name), input_path=str(media), session_dir=str(sdir),
                                plex_url="http://127.0.0.1:32400", session_key=key, job_uuid=uid)
    return argv, sdir, key, uid


def held_job(c, media, *extra):
    """A job whose stand-in transcoder waits (so tests can act while it runs)."""
    key, uid, sdir = new_session(c)
    pidfile = sdir / "pids.json"
    argv = ["-x_test_pidfile", str(pidfile), "-x_test_stderr", "transcoder-up", "-x_test_hold", "60",
            *extra, "-i", str(media), "-progressurl",
            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
    return argv, sdir, pidfile


def finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def kill(proc):
    """SIGKILL, reap, close the pipes."""
    proc.kill()
    proc.communicate(timeout=10)


def ffprobe_ok(path):
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return [s["codec_type"] for s in json.loads(r.stdout)["streams"]]


def progress_calls(c, key):
    return [r for r in c.pms_requests() if f"/session/{key}/" in r["path"]]


# --- the transcode path ------------------------------------------------------------

def test_dash_through_the_cluster(cluster, media):
    argv, sdir, key, uid = plex_job(cluster, "F1", media)
    rc, out, err = finish(cluster.shim(argv, sdir, mode="remote"))
    assert rc == 0, err
    init = sdir / "init-stream0.m4s"
    chunks = sorted(sdir.glob("chunk-stream0-*.m4s"))
    assert init.exists() and chunks, sorted(p.name for p in sdir.iterdir())
    joined = sdir / "probe.mp4"
    joined.write_bytes(init.read_bytes() + chunks[0].read_bytes())
    assert "video" in ffprobe_ok(joined)
    calls = progress_calls(cluster, key)
    progress = [r for r in calls if r["method"] == "PUT" and r["path"].endswith("/progress")]
    assert progress and all(r["headers"].get("X-Plex-Token") == cl.PLEX_TOKEN for r in progress)
    assert all(r["remote"] == "127.0.0.1" for r in calls)
    assert all("/_cp/" not in r["path"] for r in calls)
    manifests = [r for r in calls if r["method"] == "POST" and r["path"].endswith("/manifest")]
    assert manifests and "<MPD" in manifests[-1]["body"]
    cluster.relay.wait_status(r": [1-9]\d* requests", 10)
    job = next(j for j in cluster.api("/api/v1/jobs") if j["session"] == f"{key}/{uid}")
    assert job["state"] == "exited" and job["exit_code"] == 0 and job["worker"] in ("worker0", "worker1")


def test_hls_with_seek_and_sidecar_subtitles(cluster, media):
    argv, sdir, key, uid = plex_job(cluster, "F2", media)
    argv = ["2" if prev == "-ss" else a for prev, a in zip([""] + argv, argv)]   # seek inside the short clip
    fixtures.make_srt(str(sdir / "temp-0.srt"))
    rc, out, err = finish(cluster.shim(argv, sdir, mode="remote"))
    assert rc == 0, err
    segments = sorted(sdir.glob("media-*.ts"))
    assert segments and segments[0].name == "media-00028.ts", sorted(p.name for p in sdir.iterdir())
    # matroska segments without their own header (-individual_header_trailer 0): PMS serves header + segment
    joined = sdir / "probe.mkv"
    joined.write_bytes((sdir / "header").read_bytes() + segments[0].read_bytes())
    assert "video" in ffprobe_ok(joined)
    manifests = [r for r in progress_calls(cluster, key) if r["method"] == "POST" and "/manifest" in r["path"]]
    assert manifests and "media-00028.ts" in manifests[-1]["body"]


@pytest.mark.parametrize("code", [0, 187])
def test_exit_code_comes_back_exactly(cluster, media, code):
    argv, sdir, _ = held_job(cluster, media)
    argv = [a for a in argv if a not in ("-x_test_hold", "60")] + ["-x_test_exit", str(code)]
    rc, out, err = finish(cluster.shim(argv, sdir, mode="remote"))
    assert rc == code, err
    assert "transcoder-up" in err


def test_transcoder_failure_exit_1_and_stderr(cluster, media):
    key, uid, sdir = new_session(cluster)
    garbage = sdir / "not-media.mkv"
    garbage.write_text("this is not a video\n")
    argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(garbage), session_dir=str(sdir),
                                session_key=key, job_uuid=uid)
    rc, out, err = finish(cluster.shim(argv, sdir, mode="remote"))
    assert rc == 1
    assert "not-media.mkv" in err


def test_stderr_is_streamed_while_the_job_runs(cluster, media):
    argv, sdir, pidfile = held_job(cluster, media)
    shim = cluster.shim(argv, sdir, mode="remote")
    try:
        cl.read_until(shim.stderr, "transcoder-up", 20)   # arrives while the transcoder still runs
        assert shim.poll() is None
    finally:
        kill(shim)


# --- nothing left running ------------------------------------------------------------

def test_sigkill_of_the_shim_kills_the_remote_transcoder(cluster, media):
    argv, sdir, pidfile = held_job(cluster, media)
    shim = cluster.shim(argv, sdir, mode="remote")
    cl.read_until(shim.stderr, "transcoder-up", 20)
    pid = json.loads(pidfile.read_text())["pid"]
    assert cl.pid_alive(pid)
    mark = cluster.orchestrator.mark()
    t0 = time.monotonic()
    kill(shim)
    assert cl.wait_pid_gone(pid, 2.0), "remote transcoder still running 2 s after the shim died"
    assert time.monotonic() - t0 < 2.0
    cluster.orchestrator.wait_status(r"0 jobs running", 10, since=mark)


def test_sigkill_of_the_shim_during_a_real_transcode_leaves_no_ffmpeg(cluster, tmp_path):
    long_clip = tmp_path / "long.mkv"
    fixtures.make_clip(str(long_clip), seconds=30)
    argv, sdir, key, uid = plex_job(cluster, "F1", long_clip)
    pidfile = sdir / "pids.json"
    argv = ["-x_test_pidfile", str(pidfile), "-re"] + argv      # -re: real time, so it is still running
    shim = cluster.shim(argv, sdir, mode="remote")
    cluster.pms_wait(f"/session/{key}/{uid}/progress", count=3, timeout=30)
    pids = json.loads(pidfile.read_text())
    assert pids.get("ffmpeg_pid") and cl.pid_alive(pids["ffmpeg_pid"])
    kill(shim)
    assert cl.wait_pid_gone(pids["pid"], 2.0)
    assert cl.wait_pid_gone(pids["ffmpeg_pid"], 2.0)


def test_sigkill_of_a_worker_leaves_no_transcoder(tmp_path, media):
    with cl.Cluster(tmp_path, workers=1) as c:
        argv, sdir, pidfile = held_job(c, media)
        shim = c.shim(argv, sdir, mode="remote")
        cl.read_until(shim.stderr, "transcoder-up", 20)
        pid = json.loads(pidfile.read_text())["pid"]
        mark = c.orchestrator.mark()
        c.workers[0].kill()
        assert cl.wait_pid_gone(pid, 2.0), "transcoder outlived its SIGKILLed worker"
        rc, out, err = finish(shim, 20)
        assert rc == 1 and "lost" in err
        c.orchestrator.wait_status(r"^0 of 1 workers ready, 1 offline", 10, since=mark)


# --- clear refusals ------------------------------------------------------------------

def test_missing_media_gives_a_clear_error(cluster, media):
    key, uid, sdir = new_session(cluster)
    argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path="/srv/not-mounted/movie.mkv",
                                session_dir=str(sdir), session_key=key, job_uuid=uid)
    rc, out, err = finish(cluster.shim(argv, sdir, mode="remote"))
    assert rc == 1
    assert "input /srv/not-mounted/movie.mkv not found on worker worker0" in err
    assert "worker1" in err and "shares not mounted?" in err


def test_cwd_outside_the_transcode_root_is_refused(cluster, media, tmp_path):
    argv, _, _ = held_job(cluster, media)
    rc, out, err = finish(cluster.shim(argv, tmp_path, mode="remote"))
    assert rc == 1
    assert f"refusing cwd {tmp_path}: it is outside transcode_root" in err


def test_outputs_outside_the_session_dir_are_refused(cluster, media, tmp_path):
    key, uid, sdir = new_session(cluster)
    argv = ["-i", str(media), "-codec:0", "copy", str(tmp_path / "stolen.mkv")]
    rc, out, err = finish(cluster.shim(argv, sdir, mode="remote"))
    assert rc == 1 and f"refusing output {tmp_path}/stolen.mkv: outside the session dir" in err
    assert not (tmp_path / "stolen.mkv").exists()


def test_wrong_secret_is_refused_and_logged(cluster, media, tmp_path):
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("w" * 40 + "\n")
    argv, sdir, _ = held_job(cluster, media)
    cfg = cluster.pms_config("wrong-secret", mode="remote", secret_file=str(wrong))
    rc, out, err = finish(cluster.shim(argv, sdir, config=cfg))
    assert rc == 1 and "refused" in err
    assert "refused unauthenticated connection from 127.0.0.1: wrong cluster secret" in cluster.orchestrator.log()


def test_worker_with_wrong_secret_is_never_used(tmp_path, media):
    with cl.Cluster(tmp_path, workers=1, worker_secret="x" * 40, wait_ready=False) as c:
        c.orchestrator.wait_status(r"1 offline", 10)
        [w] = c.api("/api/v1/workers")
        assert w["state"] == "offline" and "authentication failed" in w["reason"]
        argv, sdir, _ = held_job(c, media)
        rc, out, err = finish(c.shim(argv, sdir, mode="remote"))
        assert rc == 1 and "no worker available" in err
    assert "refused unauthenticated connection from 127.0.0.1: wrong cluster secret" in c.workers[0].log()


# --- modes ---------------------------------------------------------------------------

def test_mode_local_execs_the_original_transcoder_in_place(cluster, media):
    argv, sdir, _ = held_job(cluster, media)
    start = sdir / "start.json"
    argv = [a for a in argv if a not in ("-x_test_hold", "60")] + ["-x_test_startfile", str(start),
                                                                    "-x_test_exit", "0"]
    shim = cluster.shim(argv, sdir, mode="local")
    rc, out, err = finish(shim)
    assert rc == 0
    assert json.loads(start.read_text())["pid"] == shim.pid


def test_detection_jobs_run_locally_in_every_mode(cluster, media):
    argv, sdir, key, uid = plex_job(cluster, "F5", media)
    argv[-1] = str(cluster.transcode_root / "Transcode" / "Detection" / uid)   # as PMS writes it
    start = sdir / "start.json"
    argv += ["-x_test_startfile", str(start), "-x_test_exit", "0"]
    shim = cluster.shim(argv, sdir, mode="remote")
    rc, out, err = finish(shim)
    assert rc == 0 and json.loads(start.read_text())["pid"] == shim.pid
    assert "detection" in err


def test_mode_both_falls_back_when_the_job_cannot_start_remotely(cluster, media):
    key, uid, sdir = new_session(cluster)
    start = sdir / "start.json"
    argv = ["-x_test_startfile", str(start), "-x_test_exit", "0", "-i", "/srv/not-mounted/x.mkv", "o.ts"]
    shim = cluster.shim(argv, sdir, mode="both")
    rc, out, err = finish(shim)
    assert rc == 0 and json.loads(start.read_text())["pid"] == shim.pid
    assert "running locally" in err and "not found on worker" in err


def test_modes_when_the_orchestrator_is_unreachable(cluster, media):
    argv, sdir, _ = held_job(cluster, media)
    start = sdir / "start.json"
    argv = [a for a in argv if a not in ("-x_test_hold", "60")] + ["-x_test_startfile", str(start),
                                                                    "-x_test_exit", "0"]
    for mode in ("remote", "both"):
        cfg = cluster.pms_config(f"down-{mode}", mode=mode, orchestrator="http://127.0.0.1:9", reattach_timeout=0.5)
        shim = cluster.shim(argv, sdir, config=cfg)
        rc, out, err = finish(shim)
        if mode == "remote":   # it tried again for reattach_timeout (a restart?), then gave up, in two lines
            assert rc == 1 and err.strip().splitlines() == [
                "clusterplex: orchestrator http://127.0.0.1:9 unreachable ([Errno 111] Connection refused); "
                "trying again for up to 0.5s",
                "clusterplex: remote transcode failed: orchestrator http://127.0.0.1:9 unreachable: "
                "[Errno 111] Connection refused"], err
            assert not start.exists()
        else:
            assert rc == 0 and json.loads(start.read_text())["pid"] == shim.pid


# --- API and CLI ---------------------------------------------------------------------

def test_api_and_status(cluster):
    assert cluster.api("/health")["status"] == "ok"
    workers = cluster.api("/api/v1/workers")
    assert sorted(w["name"] for w in workers) == ["worker0", "worker1"]
    for w in workers:
        assert w["state"] == "ready" and w["address"].startswith("127.0.0.1:") and "running_jobs" in w
        hw = w["hardware"]
        assert hw["cpus"] == os.cpu_count() and hw["arch"] == platform.machine() and hw["benchmark"] > 0
        assert isinstance(hw["gpus"], list) and isinstance(hw["hw_codecs"], list) and hw["memory"] > 0
    r = subprocess.run(cl.command("clusterplex") + ["status", "--orchestrator", cluster.orchestrator.url],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "2 of 2 workers ready" in r.stdout and "worker0" in r.stdout and "worker1" in r.stdout
    r = subprocess.run(cl.command("clusterplex") + ["status", "--orchestrator", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 69 and "cannot reach the orchestrator" in r.stderr


def test_burst_spreads_over_workers_and_respects_max_jobs(tmp_path, media):
    with cl.Cluster(tmp_path, workers=3, max_jobs=2) as c:
        shims = []
        try:
            for _ in range(6):
                argv, sdir, _ = held_job(c, media)
                shims.append(c.shim(argv, sdir, mode="remote"))
            for s in shims:
                cl.read_until(s.stderr, "transcoder-up", 30)
            assert sorted(w["running_jobs"] for w in c.api("/api/v1/workers")) == [2, 2, 2]
            argv, sdir, _ = held_job(c, media)
            rc, out, err = finish(c.shim(argv, sdir, mode="remote"), 30)   # a 7th finds no room
            assert rc == 1 and "full (2/2)" in err and "waited 3.0s" in err
        finally:
            mark = c.orchestrator.mark()
            for s in shims:
                kill(s)
        c.orchestrator.wait_status(r"3 of 3 workers ready, 0 jobs running", 10, since=mark)


def test_worker_not_ready_until_its_transcode_root_is_mounted(tmp_path, media):
    root = tmp_path / "mnt" / "transcode"
    with cl.Cluster(tmp_path, workers=1, worker_overrides={0: {"transcode_root": str(root)}}, wait_ready=False) as c:
        c.orchestrator.wait_status(r"1 not_ready", 10)
        [w] = c.api("/api/v1/workers")
        assert f"transcode_root {root} does not exist (shared transcode directory not mounted?)" in w["reason"]
        root.mkdir(parents=True)       # the share gets mounted
        c.orchestrator.wait_status(r"^1 of 1 workers ready", 15)


def test_worker_not_ready_until_its_transcoder_exists(tmp_path, media):
    missing = tmp_path / "bin" / "transcoder"
    with cl.Cluster(tmp_path, workers=1, worker_overrides={0: {"transcoder": str(missing)}}, wait_ready=False) as c:
        c.orchestrator.wait_status(r"1 not_ready", 10)
        [w] = c.api("/api/v1/workers")
        assert w["state"] == "not_ready" and f"transcoder {missing} not found" in w["reason"]
        assert "not ready" in c.workers[0].log()
        argv, sdir, _ = held_job(c, media)
        rc, out, err = finish(c.shim(argv, sdir, mode="remote"))
        assert rc == 1 and "not found" in err
        missing.parent.mkdir()
        shutil.copy(cl.STANDIN, missing)
        c.orchestrator.wait_status(r"^1 of 1 workers ready", 15)


# --- queueing, sessions, failover ------------------------------------------------------

def held_session_job(c, media, key, uid):
    sdir = c.session_dir(key, uid)
    pidfile = sdir / f"pids-{uuid.uuid4().hex[:6]}.json"
    argv = ["-x_test_pidfile", str(pidfile), "-x_test_stderr", "transcoder-up", "-x_test_hold", "60",
            "-i", str(media), "-progressurl",
            f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
    return argv, sdir, pidfile


def test_a_job_waits_for_a_free_slot(tmp_path, media):
    with cl.Cluster(tmp_path, workers=1, max_jobs=1) as c:
        argv, sdir, _ = held_job(c, media)
        first = c.shim(argv, sdir, mode="remote")
        cl.read_until(first.stderr, "transcoder-up", 20)
        argv, sdir, _ = held_job(c, media)
        second = c.shim(argv, sdir, mode="remote")
        try:
            c.orchestrator.wait_status(r"1 job running, 1 waiting for a worker", 10)
            kill(first)                     # frees the slot while the second waits
            cl.read_until(second.stderr, "transcoder-up", 10)
        finally:
            kill(second)
        assert "waits up to 3.0s for a free worker" in c.orchestrator.log()


def test_a_seek_supersedes_the_old_transcoder_and_stays_on_its_worker(cluster, media):
    key, uid1, uid2 = "seek" + uuid.uuid4().hex[:8], str(uuid.uuid4()), str(uuid.uuid4())
    argv1, sdir1, pid1 = held_session_job(cluster, media, key, uid1)
    first = cluster.shim(argv1, sdir1, mode="remote")
    cl.read_until(first.stderr, "transcoder-up", 20)
    argv2, sdir2, pid2 = held_session_job(cluster, media, key, uid2)
    second = cluster.shim(argv2, sdir2, mode="remote")       # PMS left the first one running
    try:
        cl.read_until(second.stderr, "transcoder-up", 20)
        assert cl.wait_pid_gone(json.loads(pid1.read_text())["pid"], 3.0)
        rc, _, _ = finish(first, 10)
        assert rc != 0
        jobs = {j["session"]: j for j in cluster.api("/api/v1/jobs")}
        assert jobs[f"{key}/{uid2}"]["worker"] == jobs[f"{key}/{uid1}"]["worker"]
        assert "same session as before" in jobs[f"{key}/{uid2}"]["decision"]
    finally:
        kill(second)


def test_a_running_job_moves_to_another_worker_when_its_worker_dies(tmp_path, media):
    with cl.Cluster(tmp_path, workers=2) as c:
        argv, sdir, pidfile = held_job(c, media)
        shim = c.shim(argv, sdir, mode="remote")
        try:
            cl.read_until(shim.stderr, "transcoder-up", 20)
            [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
            victim = next(w for w in c.workers if w.name == job["worker"])
            victim.kill()
            out = cl.read_until(shim.stderr, "restarting it on another worker", 5)
            cl.read_until(shim.stderr, "transcoder-up", 10)
            [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
            assert job["worker"] != victim.name and job["restarts"] == 1
            assert b"lost while running" in out
        finally:
            kill(shim)


def test_path_map_lets_a_worker_mount_media_elsewhere(tmp_path, media):
    with cl.Cluster(tmp_path, workers=1, worker_overrides={0: {"path_map": [
            {"from": "/srv/plex-media", "to": str(media.parent)}]}}) as c:
        key, uid, sdir = new_session(c)
        argv = fixtures.instantiate(fixtures.load_argv("F1"), input_path="/srv/plex-media/" + media.name,
                                    session_dir=str(sdir), session_key=key, job_uuid=uid)
        rc, out, err = finish(c.shim(argv, sdir, mode="remote"))
        assert rc == 0, err
        assert sorted(sdir.glob("chunk-stream0-*.m4s"))
        assert f"/srv/plex-media -> {media.parent}" in c.workers[0].log()


# --- the orchestrator restarts while transcodes run ----------------------------------------

@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_transcodes_survive_an_orchestrator_restart_and_shims_reattach(tmp_path, media, crash):
    with cl.Cluster(tmp_path, workers=2) as c:
        key, uid, sdir = new_session(c)
        pidfile = sdir / "pids.json"
        argv = ["-x_test_pidfile", str(pidfile), "-x_test_stderr", "transcoder-up", "-x_test_hold", "4",
                "-x_test_exit", "187", "-i", str(media), "-progressurl",
                f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"]
        shim = c.shim(argv, sdir, mode="both")
        try:
            cl.read_until(shim.stderr, "transcoder-up", 20)
            pid = json.loads(pidfile.read_text())["pid"]
            c.restart_orchestrator(kill=crash)
            assert cl.pid_alive(pid) and shim.poll() is None        # nothing interrupted
            c.wait_workers_ready(2)
            rc, out, err = finish(shim, 30)
        finally:
            if shim.poll() is None:
                kill(shim)
        assert rc == 187, err                                      # the exact exit code, through the new one
        assert "running locally" not in err
        assert "adopted from worker" in c.orchestrator.log() and "shim re-attached" in c.orchestrator.log()
        [job] = [j for j in c.api("/api/v1/jobs") if j["session"] == f"{key}/{uid}"]
        assert job["state"] == "exited" and job["exit_code"] == 187


def test_mode_remote_waits_out_an_orchestrator_restart_for_a_new_play(tmp_path, media):
    """A play started while the orchestrator is down (being restarted) in mode remote (nowhere
    else to run it) is submitted once it is back, instead of failing."""
    with cl.Cluster(tmp_path, workers=1) as c:
        key, uid, sdir = new_session(c)
        c.orchestrator.kill()
        shim = c.shim(["-x_test_exit", "5", "-i", str(media), "-progressurl",
                       f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "out.ts"],
                      sdir, mode="remote")
        try:
            cl.read_until(shim.stderr, "trying again for up to 15s", 20)
            c.restart_orchestrator()
            rc, out, err = finish(shim, 30)
        finally:
            if shim.poll() is None:
                kill(shim)
        assert rc == 5, err                  # it ran on the worker and we have its exit code
        assert "remote transcode failed" not in err
        [job] = [j for j in c.api("/api/v1/jobs") if j["session"] == f"{key}/{uid}"]
        assert job["state"] == "exited" and job["exit_code"] == 5


# --- draining -----------------------------------------------------------------------------------

def post(url):
    req = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_drain_stops_new_assignments_and_running_jobs_finish(tmp_path, media):
    with cl.Cluster(tmp_path, workers=2, worker_overrides={0: {"drain_timeout": 20}}) as c:
        key, uid, sdir = new_session(c)
        argv = ["-x_test_stderr", "transcoder-up", "-x_test_hold", "3", "-x_test_exit", "0",
                "-i", str(media), "o.ts"]
        r = subprocess.run(cl.command("clusterplex") + ["worker", "drain", "worker1", "--orchestrator",
                                                        c.orchestrator.url], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "worker1: draining" in r.stdout, r.stderr
        c.orchestrator.wait_status(r"1 draining", 10)
        shim = c.shim(argv, sdir, mode="remote")          # goes to worker0: worker1 is draining
        cl.read_until(shim.stderr, "transcoder-up", 20)
        [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
        assert job["worker"] == "worker0"
        # systemctl stop: the worker drains (no new jobs at once), the running job finishes
        mark = c.orchestrator.mark()
        c.workers[0].proc.send_signal(signal.SIGTERM)
        c.orchestrator.wait_status(r"^0 of 2 workers ready, 2 draining", 10, since=mark)
        rc, out, err = finish(shim, 30)
        assert rc == 0, err
        assert c.workers[0].proc.wait(20) == 0
        assert "draining: waiting up to 20" in c.workers[0].log()
        status, body = post(f"{c.orchestrator.url}/api/v1/workers/worker1/resume")
        assert status == 200
        c.orchestrator.wait_status(r"^1 of 2 workers ready", 10)
        assert post(f"{c.orchestrator.url}/api/v1/workers/nope/drain")[0] == 404


def realtime_dash_job(c, clip):
    """Plex's DASH argv (F1) read at real time (-re), so it is still running when a test acts."""
    key, uid, sdir = new_session(c)
    argv = ["-re"] + fixtures.instantiate(fixtures.load_argv("F1"), input_path=str(clip), session_dir=str(sdir),
                                          session_key=key, job_uuid=uid)
    return argv, sdir, key, uid


def dash_segment_numbers(sdir):
    return sorted(int(p.name.split("-")[-1].split(".")[0]) for p in sdir.glob("chunk-stream0-*.m4s"))


def test_a_dash_transcode_resumes_from_its_last_segment_on_another_worker(tmp_path):
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=15)
    with cl.Cluster(tmp_path / "c", workers=2) as c:
        argv, sdir, key, uid = realtime_dash_job(c, clip)
        shim = c.shim(argv, sdir, mode="remote")
        try:
            c.pms_wait(f"/session/{key}/{uid}/manifest", count=2, timeout=30)   # a few segments are out
            [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "running"]
            victim = next(w for w in c.workers if w.name == job["worker"])
            survivor = next(w for w in c.workers if w is not victim)
            t0 = time.monotonic()
            victim.kill()
            cl.read_until(shim.stderr, "restarting it on another worker", 10)
            noticed = time.monotonic() - t0
            rc, out, err = finish(shim, 60)
        finally:
            if shim.poll() is None:
                kill(shim)
        assert rc == 0, err
        line = next(ln for ln in survivor.log().splitlines() if "resume DASH at segment" in ln)
        first = int(line.split("resume DASH at segment ")[1].split()[0])
        assert first > 1, line                                 # not from the beginning
        numbers = dash_segment_numbers(sdir)
        assert numbers == list(range(1, numbers[-1] + 1)), numbers    # no hole, no restart from 1 needed
        assert numbers[-1] >= 5
        joined = sdir / "probe.mp4"
        joined.write_bytes((sdir / "init-stream0.m4s").read_bytes() + (sdir / f"chunk-stream0-{first:05d}.m4s").read_bytes())
        assert "video" in ffprobe_ok(joined)
        print(f"failover: worker SIGKILLed -> job moved in {noticed * 1000:.0f} ms; resumed at segment {first}")


def test_when_no_worker_can_continue_mode_both_resumes_locally(tmp_path):
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=12)
    with cl.Cluster(tmp_path / "c", workers=1) as c:
        argv, sdir, key, uid = realtime_dash_job(c, clip)
        shim = c.shim(argv, sdir, mode="both")
        try:
            c.pms_wait(f"/session/{key}/{uid}/manifest", count=2, timeout=30)
            c.workers[0].kill()                      # the only worker
            rc, out, err = finish(shim, 60)
        finally:
            if shim.poll() is None:
                kill(shim)
        assert rc == 0, err
        assert "running locally" in err and "continuing from the last segment" in err
        numbers = dash_segment_numbers(sdir)
        assert numbers == list(range(1, numbers[-1] + 1)) and numbers[-1] >= 4, numbers


def test_a_relay_restart_does_not_kill_the_transcode(tmp_path):
    clip = tmp_path / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=8)
    with cl.Cluster(tmp_path / "c", workers=1) as c:
        argv, sdir, key, uid = realtime_dash_job(c, clip)
        shim = c.shim(argv, sdir, mode="remote", config=c.pms_config("relay-restart", mode="remote"))
        try:
            c.pms_wait(f"/session/{key}/{uid}/progress", count=3, timeout=30)
            c.restart_relay()
            before = len([r for r in c.pms_requests() if f"/session/{key}/" in r["path"]])
            rc, out, err = finish(shim, 60)
        finally:
            if shim.poll() is None:
                kill(shim)
        assert rc == 0, err
        after = [r for r in c.pms_requests() if f"/session/{key}/" in r["path"]]
        assert len(after) > before                                # callbacks flow again through the new relay
        assert any(r["method"] == "POST" and r["path"].endswith("/manifest") for r in after[before:])
