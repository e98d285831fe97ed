"""Live TV through a worker, end to end on loopback: a PMS-shaped client transcode (corpus C05) whose input
is PMS's live HLS playlist. shim -> orchestrator -> worker -> stand-in transcoder (real ffmpeg reads the HLS
itself) -> relay -> fake PMS serving a sliding window of real MPEG-TS segments, with root-relative segment
URIs (as PMS writes them), relative ones, and absolute ones to PMS's own address."""

import json
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from clusterplex.core import protocol
from clusterplex.relay import playlist
from testbed import cluster as cl
from testbed import fixtures

pytestmark = pytest.mark.system

CORPUS = Path(__file__).resolve().parents[1] / "data" / "plex-argv-corpus" / "C05-2022-livetv-hls-input.json"
SEGMENTS = 6        # one second each


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    """A tuner's recording: real MPEG-TS (h264 + aac), one keyframe-aligned second per segment."""
    d = tmp_path_factory.mktemp("tuner")
    clip = fixtures.make_clip(str(d / "clip.mkv"), seconds=SEGMENTS)
    out = d / "segments"
    out.mkdir()
    subprocess.run([fixtures.FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(clip),
                    "-map", "0", "-c", "copy", "-f", "segment", "-segment_time", "1", "-segment_format", "mpegts",
                    str(out / "%05d.ts")], check=True, capture_output=True, timeout=60)
    assert len(list(out.glob("*.ts"))) == SEGMENTS
    return out


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    with cl.Cluster(tmp_path_factory.mktemp("cluster"), workers=1) as c:
        yield c


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def relay_counts(c):
    """(requests relayed, requests refused) from the relay's /metrics."""
    with urllib.request.urlopen(c.relay.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    def total(name):
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))
    return total("clusterplex_relay_requests_total"), total("clusterplex_relay_refused_total")


def ffprobe(path):
    """(stream kinds, seconds) of a file."""
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type:format=duration", "-of", "json",
                        str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    return [s["codec_type"] for s in info["streams"]], float(info["format"]["duration"])


@pytest.mark.parametrize("style", ["root", "relative", "absolute"])
def test_live_tv_through_a_worker(c, segments, style):
    post(c.pms.url + "/_fake/config", {"livetv": {"dir": str(segments), "style": style, "window": 3, "target": 1}})
    key, uid = f"s{uuid.uuid4().hex[:12]}", str(uuid.uuid4())
    live = str(uuid.uuid4())
    sdir = c.session_dir(key, uid)
    url = (f"{c.pms.url}/livetv/sessions/{live}/{key}/index.m3u8"
           f"?offset=0.000000&X-Plex-Incomplete-Segments=1&X-Plex-Token={cl.PLEX_TOKEN}")
    argv = fixtures.instantiate(json.loads(CORPUS.read_text())["argv"], input_path=url, session_dir=str(sdir),
                                plex_url=c.pms.url, session_key=key, job_uuid=uid)
    argv = fixtures.set_option(argv, "-loglevel", "error")
    # A tuner's MPEG-2 is transcoded by PMS; stock ffmpeg 5.1's dash muxer also cannot copy h264 out of TS
    # (its mp4 muxer refuses the TS codec tag), which Plex's own transcoder can.
    argv = fixtures.set_option(argv, "-codec:0", "libx264")
    before, seen = relay_counts(c), max((r["seq"] for r in c.pms_requests()), default=0)
    proc = c.shim(argv, cwd=sdir)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]

    during = [r for r in c.pms_requests() if r["seq"] > seen]
    live_reqs = [r for r in during if r["path"].startswith(f"/livetv/sessions/{live}/{key}/")]
    ts = sorted(r["path"].rsplit("/", 1)[1] for r in live_reqs if r["path"].endswith(".ts"))
    assert ts == [f"{i:05d}.ts" for i in range(SEGMENTS)], live_reqs
    assert all(r["status"] == 200 and r["query"].get("X-Plex-Token") == cl.PLEX_TOKEN for r in live_reqs)
    assert any(r["path"].endswith("/media.m3u8") for r in live_reqs)
    relayed, refused = (a - b for a, b in zip(relay_counts(c), before))
    assert refused == 0
    assert relayed == len(during)       # every request PMS saw came through the relay (none straight from ffmpeg)

    for stream, kind in ((0, "video"), (1, "audio")):     # the whole recording came out, both streams
        chunks = sorted(sdir.glob(f"chunk-stream{stream}-*.m4s"))
        assert chunks, sorted(p.name for p in sdir.iterdir())
        joined = sdir / f"probe-{stream}.mp4"
        joined.write_bytes(b"".join(p.read_bytes() for p in [sdir / f"init-stream{stream}.m4s", *chunks]))
        kinds, duration = ffprobe(joined)
        assert kinds == [kind] and duration >= SEGMENTS - 1, (kinds, duration)


def test_playlists_as_the_transcoder_sees_them_through_the_relay(c, segments):
    """What the relay hands the transcoder: every URI under the job's prefix, Content-Length of the rewrite."""
    post(c.pms.url + "/_fake/config", {"livetv": {"dir": str(segments), "style": "root", "window": 3, "target": 1}})
    prefix = protocol.relay_prefix(cl.SECRET.encode(), uuid.uuid4().hex)
    base = f"{c.relay.url}{prefix}/livetv/sessions/{uuid.uuid4()}/s{uuid.uuid4().hex[:12]}"
    for name in ("index.m3u8", "media.m3u8"):
        with urllib.request.urlopen(f"{base}/{name}?X-Plex-Token={cl.PLEX_TOKEN}", timeout=5) as r:
            body = r.read()
            assert int(r.headers["Content-Length"]) == len(body)
        uris = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
        assert uris and all(u.startswith(prefix + "/livetv/sessions/") for u in uris), body
        assert all(u.endswith(f"?X-Plex-Token={cl.PLEX_TOKEN}") for u in uris)
    with urllib.request.urlopen(c.relay.url + uris[0], timeout=5) as r:       # a segment: untouched
        assert r.read() == (segments / "00000.ts").read_bytes()


def test_an_oversized_playlist_passes_through_unchanged(c, segments):
    post(c.pms.url + "/_fake/config", {"livetv": {"dir": str(segments), "style": "root", "pad": playlist.MAX_PLAYLIST}})
    prefix = protocol.relay_prefix(cl.SECRET.encode(), uuid.uuid4().hex)
    path = f"/livetv/sessions/{uuid.uuid4()}/s{uuid.uuid4().hex[:12]}"
    with urllib.request.urlopen(f"{c.relay.url}{prefix}{path}/media.m3u8?X-Plex-Token={cl.PLEX_TOKEN}",
                                timeout=10) as r:
        body = r.read()
    assert len(body) > playlist.MAX_PLAYLIST
    assert f"\n{path}/00000.ts?" in body.decode() and prefix not in body.decode()
