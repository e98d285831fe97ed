"""Plex codecs and EasyAudioEncoder provisioned by real workers (fake codec server on loopback)."""

import json
import os
import subprocess
import urllib.request
import uuid

import pytest

from clusterplex.worker import hardware
from testbed import cluster as cl
from tests.fakes.codec_server import FakeCodecServer, elf_library

pytestmark = pytest.mark.system

VERSION = "1a2b3c4-5678"
ARCH = hardware.plex_arch()
LIBS = ["libh264_decoder", "libaac_decoder", "libaac_encoder"]

# A transcoder that carries a Plex codec version (as Plex's binary does) and shows its environment.
TRANSCODER = f"""#!/bin/sh
# Plex codec version: {VERSION}
echo "env FFMPEG_EXTERNAL_LIBS=$FFMPEG_EXTERNAL_LIBS EAE_ROOT=$EAE_ROOT" >&2
exit 0
"""
FAKE_EAE = "#!/bin/sh\nexec sleep 1000\n"


def worker_status(c, i):
    with urllib.request.urlopen(c.workers[i].url + "/api/v1/codecs", timeout=5) as r:
        return json.load(r)


def test_worker_downloads_codecs_before_it_is_ready_and_jobs_use_them(tmp_path):
    transcoder = tmp_path / "Plex Transcoder"
    transcoder.write_text(TRANSCODER)
    transcoder.chmod(0o755)
    (tmp_path / "codecs.txt").write_text("# test list\n" + "\n".join(LIBS) + "\n")
    eae_dir = tmp_path / "eae1"
    eae_dir.mkdir()
    (eae_dir / "EasyAudioEncoder").write_text(FAKE_EAE)
    (eae_dir / "EasyAudioEncoder").chmod(0o755)
    with FakeCodecServer() as srv:
        srv.stall(LIBS[0])                       # the first library hangs until we let it go
        codec_cfg = {"enabled": True, "dir": str(tmp_path / "codecs"), "server": srv.codecs_url,
                     "list": str(tmp_path / "codecs.txt")}
        for lib in LIBS:
            srv.put(VERSION, ARCH, lib, elf_library(ARCH))
        over = {0: {"transcoder": str(transcoder), "codecs": codec_cfg},
                1: {"transcoder": str(transcoder), "codecs": codec_cfg,
                    "eae": {"enabled": True, "dir": str(eae_dir), "api": srv.eae_api_url}}}
        with cl.Cluster(tmp_path / "c", workers=2, worker_overrides=over, wait_ready=False) as c:
            srv.wait_stalled(10)
            c.workers[0].wait_status(r"^not_ready: codecs \d/3", 10)
            srv.release()
            c.wait_workers_ready(2)
            codec_dir = tmp_path / "codecs" / f"{VERSION}-{ARCH}"
            assert sorted(p.name for p in codec_dir.iterdir() if p.suffix == ".so") == sorted(f"{x}.so" for x in LIBS)
            st = worker_status(c, 0)
            assert st["codecs"]["state"] == "ready" and st["codecs"]["present"] == 3
            [w0] = [w for w in c.api("/api/v1/workers") if w["name"] == "worker0"]
            assert w0["codecs"]["state"] == "ready" and w0["codecs"]["version"] == VERSION
            r = subprocess.run(cl.command("clusterplex") + ["worker", "codecs", "--worker", c.workers[0].url],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            assert f"codec version {VERSION}, arch {ARCH}" in r.stdout and "Codecs: ready, 3/3" in r.stdout
            assert not [p for p in codec_dir.iterdir() if p.name.endswith(".tmp")]

            # the job gets the worker's own codec dir, whatever the Plex host sent
            key, uid = "c" + uuid.uuid4().hex[:8], str(uuid.uuid4())
            sdir = c.session_dir(key, uid)
            argv = ["-i", str(transcoder), "-progressurl",
                    f"http://127.0.0.1:32400/video/:/transcode/session/{key}/{uid}/progress", "o.ts"]
            shim = c.shim(argv, sdir, mode="remote",
                          env={"FFMPEG_EXTERNAL_LIBS": "/var/lib/plexmediaserver/Codecs/x-linux/"})
            out, err = shim.communicate(timeout=30)
            assert shim.returncode == 0, err
            assert f"FFMPEG_EXTERNAL_LIBS={codec_dir}/ ".encode() in err

            # EAE: only the worker that runs it gets EAE jobs, with EAE_ROOT at its local watch folder
            st1 = worker_status(c, 1)
            assert st1["eae"]["running"], st1
            eae_argv = ["-codec:1", "eac3_eae", "-eae_prefix:1", f"{key}_"] + argv
            for _ in range(2):
                shim = c.shim(eae_argv, sdir, mode="remote", env={"EAE_ROOT": "/tmp/pms-x/EasyAudioEncoder"})
                out, err = shim.communicate(timeout=30)
                assert shim.returncode == 0, err
                assert f"EAE_ROOT={eae_dir}/watch".encode() in err
            eae_jobs = [j for j in c.api("/api/v1/jobs") if "eae" in j["needs"].split(", ")]
            assert len(eae_jobs) == 2 and {j["worker"] for j in eae_jobs} == {"worker1"}

            # EasyAudioEncoder dies: the worker restarts it
            log = c.workers[1].log()
            pid = int(log.split("EasyAudioEncoder running (pid ")[1].split(",")[0])
            mark = c.workers[1].mark()
            os.kill(pid, 9)
            c.workers[1].wait_status(r"EAE not running", 10, since=mark)
            c.workers[1].wait_status(r"EAE running", 10, since=mark)
            assert c.workers[1].log().count("EasyAudioEncoder running (pid") == 2
    # the worker stopped: its EasyAudioEncoder is gone
    pid = int(c.workers[1].log().rsplit("EasyAudioEncoder running (pid ", 1)[1].split(",")[0])
    assert cl.wait_pid_gone(pid, 5)


def test_codec_server_down_keeps_the_worker_not_ready_then_it_recovers(tmp_path):
    transcoder = tmp_path / "Plex Transcoder"
    transcoder.write_text(TRANSCODER)
    transcoder.chmod(0o755)
    (tmp_path / "codecs.txt").write_text("libh264_decoder\n")
    with FakeCodecServer() as srv:
        srv.put(VERSION, ARCH, "libh264_decoder", elf_library(ARCH))
        srv.not_found.add("libh264_decoder")
        over = {0: {"transcoder": str(transcoder), "codecs": {
            "enabled": True, "dir": str(tmp_path / "codecs"), "server": srv.codecs_url,
            "list": str(tmp_path / "codecs.txt")}}}
        with cl.Cluster(tmp_path / "c", workers=1, worker_overrides=over, wait_ready=False) as c:
            status = c.workers[0].wait_status(r"404", 15)
            assert "libh264_decoder" in status
            r = subprocess.run(cl.command("clusterplex") + ["worker", "codecs", "--worker", c.workers[0].url],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 1 and "Codecs: error, 0/1" in r.stdout and "404" in r.stdout
            assert c.workers[0].proc.poll() is None          # no crash, no restart loop
            srv.not_found.discard("libh264_decoder")
            mark = c.workers[0].mark()
            urllib.request.urlopen(urllib.request.Request(c.workers[0].url + "/api/v1/codecs/refresh",
                                                          method="POST"), timeout=5).read()
            c.workers[0].wait_status(r"^ready", 15, since=mark)
        r = subprocess.run(cl.command("clusterplex") + ["worker", "codecs", "--worker", "http://127.0.0.1:9"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 69 and "cannot reach the worker" in r.stderr
