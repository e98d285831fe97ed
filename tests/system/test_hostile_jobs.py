"""Hostile argvs through the shim to a worker whose transcoder is Debian's real ffmpeg: each is refused
before anything runs (no transcoder started, nothing written outside the session dir, not even inside it,
no connection made); and command lines of the real-world corpus still run end to end (stand-in transcoder).

Against the worker of before core/shape, every one of these ran: ffmpeg copied the secret into the session
dir, wrote through tee, opened the listener, and so on."""

import json
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from testbed import cluster as cl
from testbed import fixtures

pytestmark = pytest.mark.system

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
CORPUS = Path(__file__).resolve().parent.parent / "data" / "plex-argv-corpus"


def hostile_argvs(c, clip, outside, port):
    """(what, argv) for every attack: ``outside`` is a directory no job may touch, ``port`` a loopback
    listener no job may reach."""
    secret, loot = str(c.secret_file), str(outside / "loot")
    progress = "http://127.0.0.1:32400/video/:/transcode/session/k/u/progress"
    media = ["-i", str(clip)]
    return [
        ("-f data copies any file", ["-f", "data", "-i", secret, "-map", "0", "-c", "copy", "-f", "data", "loot.bin"]),
        ("tee writes anywhere", media + ["-map", "0", "-c", "copy", "-f", "tee", f"[f=mpegts]{loot}-tee.ts"]),
        ("output to any host", media + ["-c", "copy", "-f", "mpegts", f"http://127.0.0.1:{port}/"]),
        ("ladspa loads a library", media + ["-af", f"ladspa=file={outside}/x.so", "-f", "mpegts", "o.ts"]),
        ("hls init file climbs out", media + ["-c", "copy", "-f", "hls", "-hls_segment_type", "fmp4",
                                              "-hls_fmp4_init_filename", "../../../../outside/loot-init.mp4",
                                              "x.m3u8"]),
        ("a flag hides the output path", media + ["-c", "copy", "-report", f"{loot}-report.ts"]),
        ("metadata filter writes a file", media + ["-vf", f"metadata=mode=print:file={loot}-meta.txt", "-f",
                                                   "mpegts", "o.ts"]),
        ("attachments named by the media", media + ["-dump_attachment:t", "", "-f", "mpegts", "o.ts"]),
        ("vstats written anywhere", media + ["-vstats_file", f"{loot}-vstats", "-f", "mpegts", "o.ts"]),
        ("concat protocol reads any file", ["-i", f"concat:{secret}|{secret}", "-c", "copy", "-f", "mpegts", "o.ts"]),
        ("progress to another host", media + ["-c", "copy", "-f", "mpegts", "-progress", f"http://127.0.0.1:{port}/",
                                              "o.ts"]),
        ("movie filter opens any file", media + ["-vf", f"movie={secret}[m];[in][m]overlay", "-f", "mpegts", "o.ts"]),
        ("input outside media_roots", ["-i", secret, "-c", "copy", "-f", "mpegts", "o.ts", "-progressurl", progress]),
    ]


@pytest.fixture(scope="module")
def hostile_cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    with cl.Cluster(root, workers=1, worker_overrides={0: {"transcoder": FFMPEG, "media_roots": [str(root / "media")]}}
                    ) as c:
        yield c


def test_hostile_jobs_are_refused_before_anything_runs(hostile_cluster, tmp_path):
    c = hostile_cluster
    clip = c.media / "clip.mkv"
    fixtures.make_clip(str(clip), seconds=1)
    outside = c.root / "outside"
    outside.mkdir()
    (outside / "canary").write_text("canary\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    worker = c.workers[0]
    try:
        for what, argv in hostile_argvs(c, clip, outside, port):
            mark = worker.log_size()
            sdir = c.session_dir("k" + uuid.uuid4().hex[:8], str(uuid.uuid4()))
            shim = c.shim(argv, sdir, mode="remote")
            out, err = shim.communicate(timeout=30)
            assert shim.returncode != 0, (what, err)
            log = worker.wait_log("refused: refused: ", 10, since=mark)    # the worker's log names the reason
            assert "started: pid" not in log, (what, log)                   # no transcoder ran
            assert b"refused: " in err, (what, err)                         # PMS's log gets the one-line reason
            assert list(sdir.iterdir()) == [], (what, list(sdir.iterdir()))
            assert sorted(p.name for p in outside.iterdir()) == ["canary"], what
        with pytest.raises(BlockingIOError):
            listener.accept()                                              # nothing ever connected
    finally:
        listener.close()
    assert not list(c.root.glob("ffmpeg-*.log")) and not list(c.sessions.rglob("ffmpeg-*.log"))  # no -report


@pytest.mark.parametrize("name", ["C07-2024-thumbnails", "C09-2026-burn-in-inlineass"])
def test_corpus_command_lines_run_end_to_end(tmp_path, name):
    """Two corpus shapes the six fixtures do not cover (image2 thumbnails; burned-in subtitles over HLS) run
    through the whole path to the stand-in transcoder on a worker with media_roots set."""
    entry = json.loads((CORPUS / f"{name}.json").read_text())
    root = tmp_path / "c"
    with cl.Cluster(root, workers=1, worker_overrides={0: {"media_roots": [str(root / "media")]}}) as c:
        clip = c.media / "clip.mkv"
        fixtures.make_clip(str(clip), seconds=6)
        key, uid = "k" + uuid.uuid4().hex[:8], str(uuid.uuid4())
        sdir = c.session_dir(key, uid)
        argv = fixtures.instantiate(entry["argv"], input_path=str(clip), session_dir=str(sdir), session_key=key,
                                    job_uuid=uid, plex_url=c.pms.url)
        shim = c.shim(argv, sdir, mode="remote", local_thumbnails=False)   # thumbnails stay local by default
        out, err = shim.communicate(timeout=60)
        assert shim.returncode == 0, err
        [job] = [j for j in c.api("/api/v1/jobs") if j["state"] == "exited"]
        assert job["worker"] == "worker0" and job["exit_code"] == 0
        made = sorted(p.name for p in sdir.iterdir() if not p.name.startswith("."))
        assert made and all(n.startswith(("img-", "media-", "header")) for n in made), made
