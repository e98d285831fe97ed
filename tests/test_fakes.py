"""The test fakes are real and faithful.

* tests/fakes/plex_transcoder.py runs Plex-shaped argv (tests/data/plex-argv)
  on Debian's ffmpeg, writes real segments and calls PMS back like Plex's
  transcoder does;
* tests/fakes/fake_pms.py records those callbacks like PMS would see them.

Everything talks to 127.0.0.1 only.  No sleeping for synchronisation: the
fake PMS's LISTENING line / NOTIFY_SOCKET datagram, its /_fake/wait long-poll,
stderr lines and pidfds are waited on, with timeouts.
"""
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from testbed.cluster import pid_alive, wait_pid_gone
from testbed import fixtures as fx
from tests.fakes.fake_pms import FakePMS

FAKES = Path(__file__).resolve().parent / "fakes"
TRANSCODER = FAKES / "plex_transcoder.py"
FAKE_PMS = FAKES / "fake_pms.py"
FFPROBE = "/usr/bin/ffprobe"
TOKEN = "local-00000000-0000-4000-8000-0000000f4e35"


# ----------------------------------------------------------------- helpers ----

def read_line(fd, timeout):
    """One line from a pipe fd, waiting at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no line within {timeout}s (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise EOFError(f"pipe closed (got {buf!r})")
        buf += chunk
    return buf.decode()


def req(hostport, method, path, body=None, headers=None, timeout=15):
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        headers = headers or {}
        conn.request(method, path, body=body, headers=headers,
                     encode_chunked=headers.get("Transfer-Encoding") == "chunked")
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


class PMSProcess:
    def __init__(self, proc, hostport):
        self.proc = proc
        self.hostport = hostport
        self.url = f"http://{hostport}"

    def records(self, **filters):
        q = "&".join(f"{k}={v}" for k, v in filters.items())
        status, _, body = req(self.hostport, "GET", "/_fake/requests" + ("?" + q if q else ""))
        assert status == 200
        return json.loads(body)

    def wait(self, path_contains, count=1, timeout=20):
        status, _, body = req(self.hostport, "GET",
                               f"/_fake/wait?path_contains={path_contains}&count={count}&timeout={timeout}",
                               timeout=timeout + 10)
        assert status == 200, f"{count} x {path_contains!r} not seen within {timeout}s"
        return json.loads(body)


def start_fake_pms(log_path, *extra, env=None, timeout=30):
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen([sys.executable, str(FAKE_PMS), "--listen", "127.0.0.1:0", *extra],
                                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env)
    finally:
        log.close()
    try:
        line = read_line(proc.stdout.fileno(), timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise
    m = re.fullmatch(r"LISTENING (127\.0\.0\.1:\d+)\n", line)
    assert m, line
    return PMSProcess(proc, m.group(1))


def stop_fake_pms(pms):
    pms.proc.send_signal(signal.SIGTERM)
    try:
        rc = pms.proc.wait(15)
    finally:
        if pms.proc.poll() is None:
            pms.proc.kill()
            pms.proc.wait()
        pms.proc.stdout.close()
    return rc


def new_session(root, prefix):
    key = f"{prefix}{uuid.uuid4().hex[:12]}"
    job = str(uuid.uuid4())
    sd = Path(root) / "Transcode" / "Sessions" / fx.session_dir_name(key, job)
    sd.mkdir(parents=True)
    return sd, key, job


def run_transcoder(argv, cwd, token=TOKEN, timeout=90):
    env = dict(os.environ)
    env.pop("X_PLEX_TOKEN", None)
    if token is not None:
        env["X_PLEX_TOKEN"] = token
    return subprocess.run([str(TRANSCODER), *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def ffprobe_streams(path):
    r = subprocess.run([FFPROBE, "-v", "error", "-show_entries",
                        "stream=codec_type,codec_name,width,height", "-of", "json", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"ffprobe {path}: {r.stderr}"
    return json.loads(r.stdout)["streams"]


def concat(out, *parts):
    with open(out, "wb") as f:
        for p in parts:
            f.write(Path(p).read_bytes())
    return out


def numbers(files, rx):
    return sorted(int(re.fullmatch(rx, f.name).group(1)) for f in files)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- fixtures ----

@pytest.fixture(scope="module")
def pms(tmp_path_factory):
    log = tmp_path_factory.mktemp("pms") / "fake-pms.log"
    p = start_fake_pms(log, "--token", TOKEN)
    yield p
    assert stop_fake_pms(p) == 0, log.read_text()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return fx.make_clip(tmp_path_factory.mktemp("media") / "clip.mkv", seconds=6)


# ------------------------------------------------------------------- tests ----

def test_fixtures_are_verbatim_and_instantiate(tmp_path):
    names = fx.fixture_names()
    assert [n[:2] for n in names] == ["F1", "F2", "F3", "F4", "F5", "F6"]
    for n in names:
        assert fx.load_argv(n[:2]) == fx.load_argv(n)
        assert "-progressurl" in fx.load_argv(n)
    assert fx.session_dir_name("abc", "u-1") == "plex-transcode-abc-u-1"

    sd = tmp_path / fx.session_dir_name("newkey", "newuuid")
    argv = fx.instantiate(fx.load_argv("F2"), input_path="/tmp/x.mkv", session_dir=sd,
                          plex_url="http://127.0.0.1:41234/_cp/job1/mac", session_key="newkey",
                          job_uuid="newuuid")
    inputs = fx.option_values(argv, "-i")
    assert inputs == ["/tmp/x.mkv", str(sd / "temp-0.srt")]
    assert fx.option_values(argv, "-progressurl") == [
        "http://127.0.0.1:41234/_cp/job1/mac/video/:/transcode/session/newkey/newuuid/progress"]
    assert fx.option_values(argv, "-segment_list") == [
        "http://127.0.0.1:41234/_cp/job1/mac/video/:/transcode/session/newkey/newuuid/manifest"
        "?X-Plex-Http-Pipeline=infinite"]
    assert not any("32400" in a or "sesskey2" in a for a in argv)
    # the rest is untouched
    assert len(argv) == len(fx.load_argv("F2"))
    assert fx.option_values(argv, "-segment_start_number") == ["28"]
    # legacy URL form (no job UUID)
    f6 = fx.instantiate(fx.load_argv("F6"), input_path="/tmp/x.mkv", session_dir=sd, session_key="k6")
    assert fx.option_values(f6, "-progressurl") == ["http://127.0.0.1:32400/video/:/transcode/session/k6/progress"]


PLEX_ONLY = {"-progressurl", "-loglevel_plex", "-manifest_name", "-skip_to_segment", "-delete_removed",
             "-time_delta", "-segment_list_separate_stream_times", "-segment_list_unfinished",
             "-segment_copyts", "-strict_ts", "-xioerror", "-map_inlineass", "-mov_res", "-eae_prefix",
             "-min_seg_duration", "-progress"}


def test_translation_for_stock_ffmpeg_is_position_independent():
    from tests.fakes import plex_transcoder as pt
    for name in fx.fixture_names():
        plan = pt.translate(fx.load_argv(name))
        args = plan.ffargs
        assert not {a.split(":")[0] for a in args if a.startswith("-")} & PLEX_ONLY, name
        assert not any(a.endswith("_eae") for a in args), name
        assert "-loglevel" not in args  # the stand-in sets its own
        first_i = args.index("-i")
        assert not [a for a in args[:first_i] if a.split(":")[0] in ("-codec", "-c")], name  # decoder hints
        assert plan.progress_url.startswith("http://127.0.0.1:32400/") and plan.plex_level == 16
    # 2023 tail-after-output vs 2026 globals-after-inputs: same translation
    f1 = fx.load_argv("F1")
    cut = f1.index("-start_at_zero")
    after_i = f1.index("-i") + 2
    moved = f1[:after_i] + f1[cut:] + f1[after_i:cut]
    a, b = pt.translate(f1), pt.translate(moved)
    assert (a.progress_url, a.plex_level, a.copyts) == (b.progress_url, b.plex_level, b.copyts)
    assert [(d.manifest, d.skip, d.window) for d in a.dash] == [(d.manifest, d.skip, d.window) for d in b.dash]
    assert sorted(a.ffargs) == sorted(b.ffargs)
    # burn-in, EAE, framedrop, mov_res, xioerror
    plan = pt.translate(["-codec:1", "truehd_eae", "-eae_prefix:1", "k_", "-xioerror", "-i", "in.mkv",
                         "-map_inlineass", "0:s:0", "-filter_complex",
                         "[0:0]scale=w=1280:h=720[0];[0]inlineass=font_scale=1.0:font_path=/f[1]",
                         "-map", "[1]", "-codec:0", "libx264", "-bsf:0", "framedrop=count=3",
                         "-codec:1", "eac3_eae", "-mov_res", "1280x720", "-f", "mp4", "out.mp4",
                         "-loglevel_plex", "verbose"])
    assert plan.ffargs == ["-i", "in.mkv", "-filter_complex", "[0:0]scale=w=1280:h=720[0];[0]null[1]",
                           "-map", "[1]", "-codec:0", "libx264", "-codec:1", "eac3", "-f", "mp4", "out.mp4"]
    assert plan.plex_level == 40 and plan.progress_url is None


def test_dash_f1_segments_manifest_and_callbacks(pms, clip, tmp_path):
    sd, key, job = new_session(tmp_path, "dash")
    argv = fx.instantiate(fx.load_argv("F1"), input_path=clip, session_dir=sd, plex_url=pms.url,
                          session_key=key, job_uuid=job)
    argv = fx.set_option(argv, "-skip_to_segment", "3")
    r = run_transcoder(argv, sd)
    assert r.returncode == 0, r.stderr

    # real segments, numbered from -skip_to_segment, in the cwd
    v = sorted(sd.glob("chunk-stream0-*.m4s"))
    a = sorted(sd.glob("chunk-stream1-*.m4s"))
    vn = numbers(v, r"chunk-stream0-(\d{5})\.m4s")
    an = numbers(a, r"chunk-stream1-(\d{5})\.m4s")
    assert vn[0] == 3 and vn == list(range(3, 3 + len(vn))) and len(vn) >= 2, vn
    assert an[0] == 3 and an == list(range(3, 3 + len(an))), an
    assert not (sd / ".plexfake").exists()
    for init, chunks, want in (("init-stream0.m4s", v, "video"), ("init-stream1.m4s", a, "audio")):
        for c in chunks:
            streams = ffprobe_streams(concat(tmp_path / "probe.mp4", sd / init, c))
            assert [s["codec_type"] for s in streams] == [want]
            if want == "video":
                assert (streams[0]["codec_name"], streams[0]["width"], streams[0]["height"]) == ("h264", 720, 404)
            else:
                assert streams[0]["codec_name"] == "aac"

    recs = pms.records(path_contains=f"/session/{key}/{job}/")
    by_kind = {}
    for rec in recs:
        by_kind.setdefault(rec["kind"], []).append(rec)
    progress = by_kind["progress"]
    for rec in progress + by_kind["stream"] + by_kind["streamDetail"]:
        assert rec["method"] == "PUT"
        assert rec["headers"].get("X-Plex-Token") == TOKEN
        assert rec["headers"].get("X-Plex-Http-Pipeline") == "infinite"
        assert rec["remote"] == "127.0.0.1"
    assert {s["query"]["type"] for s in by_kind["stream"]} == {"video", "audio"}
    assert {s["query"]["type"] for s in by_kind["streamDetail"]} == {"video", "audio"}
    durations = [p for p in progress if "duration" in p["query"]]
    assert len(durations) == 1 and abs(float(durations[0]["query"]["duration"]) - 6.0) < 0.2
    sizes = [p for p in progress if "width" in p["query"]]
    assert [(p["query"]["width"], p["query"]["height"]) for p in sizes] == [("720", "404")]
    ticks = [p for p in progress if "progress" in p["query"]]
    assert ticks and all(p["status"] == 206 for p in ticks)
    assert {"size", "remaining", "speed"} <= set(ticks[0]["query"])
    assert float(ticks[-1]["query"]["progress"]) == 100.0
    # PMS order: streams, then duration, then output size, then progress
    assert by_kind["stream"][0]["seq"] < durations[0]["seq"] < sizes[0]["seq"] < ticks[0]["seq"]

    manifests = by_kind["manifest"]
    assert manifests
    for m in manifests:
        assert m["method"] == "POST" and m["status"] == 200
        assert m["headers"].get("Transfer-Encoding") == "chunked"
        assert m["headers"].get("Connection", "").lower() == "close"
        assert "X-Plex-Token" not in m["headers"]
        assert m["query"] == {"X-Plex-Http-Pipeline": "infinite"}
        assert "<MPD" in m["body"] and m["body_len"] == len(m["body"].encode())
    final = manifests[-1]["body"]
    assert 'type="static"' in final
    assert final.count('startNumber="3"') == 2
    assert final.count('media="chunk-stream$RepresentationID$-$Number%05d$.m4s"') == 2
    assert final.count('initialization="init-stream$RepresentationID$.m4s"') == 2
    assert "stage" not in final


def test_hls_f2_matroska_segments_and_csv_list(pms, clip, tmp_path):
    sd, key, job = new_session(tmp_path, "hls")
    fx.make_srt(sd / "temp-0.srt")
    argv = fx.instantiate(fx.load_argv("F2"), input_path=clip, session_dir=sd, plex_url=pms.url,
                          session_key=key, job_uuid=job)
    # a 6 s clip: seek 1 s (both inputs), 2 s segments
    argv = fx.set_option(argv, "-ss", "1")
    argv = fx.set_option(argv, "-segment_time", "2")
    argv = fx.set_option(argv, "-force_key_frames:0", "expr:gte(t,n_forced*2)")
    r = run_transcoder(argv, sd)
    assert r.returncode == 0, r.stderr

    segs = sorted(sd.glob("media-*.ts"))
    nums = numbers(segs, r"media-(\d{5})\.ts")
    assert nums[0] == 28 and nums == list(range(28, 28 + len(nums))) and len(nums) >= 2, nums
    assert (sd / "header").is_file()
    for s in segs:  # matroska segments without headers: probe header + segment
        streams = ffprobe_streams(concat(tmp_path / "probe.mkv", sd / "header", s))
        kinds = {st["codec_type"]: st for st in streams}
        assert kinds["video"]["codec_name"] == "h264" and kinds["video"]["width"] == 480
        assert kinds["audio"]["codec_name"] == "opus"
        assert kinds["subtitle"]["codec_name"] == "ass"

    recs = pms.records(path_contains=f"/session/{key}/{job}/")
    ticks = [p for p in recs if p["kind"] == "progress" and "progress" in p["query"]]
    assert ticks and all(p["headers"].get("X-Plex-Token") == TOKEN for p in ticks)
    assert any("duration" in p["query"] for p in recs)
    manifests = [m for m in recs if m["kind"] == "manifest"]
    assert manifests and all(m["method"] == "POST" and m["headers"].get("Transfer-Encoding") == "chunked"
                             and "X-Plex-Token" not in m["headers"] for m in manifests)
    rows_seen = set()
    for m in manifests:
        for row in m["body"].splitlines():
            cols = row.split(",")
            assert len(cols) == 5, row  # -segment_list_separate_stream_times 1
            name = cols[0].lstrip("#")
            assert re.fullmatch(r"media-\d{5}\.ts", name), row
            start, end = float(cols[1]), float(cols[2])
            assert end >= start
            if not row.startswith("#"):
                rows_seen.add(name)
    final = [row.split(",")[0] for row in manifests[-1]["body"].splitlines()]
    # final list: no unfinished rows, the newest (list_size - 1) segments
    assert final == [s.name for s in segs][-4:]
    assert rows_seen == {s.name for s in segs}


def test_dash_f3_with_subtitle_side_output(pms, clip, tmp_path):
    sd, key, job = new_session(tmp_path, "subs")
    fx.make_srt(sd / "temp-0.srt")
    argv = fx.instantiate(fx.load_argv("F3"), input_path=clip, session_dir=sd, plex_url=pms.url,
                          session_key=key, job_uuid=job)
    r = run_transcoder(argv, sd)
    assert r.returncode == 0, r.stderr
    assert numbers(sd.glob("chunk-stream0-*.m4s"), r"chunk-stream0-(\d{5})\.m4s")[0] == 1
    assert (sd / "init-stream1.m4s").is_file() and (sd / "sub-header").is_file()
    subs = sorted(sd.glob("sub-chunk-*"))
    assert subs and subs[0].name == "sub-chunk-00000"
    assert "Dialogue:" in "".join(s.read_text() for s in subs)
    recs = pms.records(path_contains=f"/session/{key}/{job}/manifest")
    mpd = [m for m in recs if "stream=subtitles" not in m["query_string"]]
    sub = [m for m in recs if m["query"].get("stream") == "subtitles"]
    assert mpd and "<MPD" in mpd[-1]["body"]
    assert sub and sub[-1]["body"].splitlines()[0].startswith("sub-chunk-00000,")


def test_f6_legacy_url_and_f5_with_dead_pms(pms, clip, tmp_path):
    sd, key, _ = new_session(tmp_path, "legacy")
    argv = fx.instantiate(fx.load_argv("F6"), input_path=clip, session_dir=sd, plex_url=pms.url,
                          session_key=key)
    r = run_transcoder(argv, sd)
    assert r.returncode == 0, r.stderr
    streams = ffprobe_streams(sd / "media-00000.ts")
    assert sorted(s["codec_name"] for s in streams) == ["ac3", "h264"]
    recs = pms.records(path_contains=f"/session/{key}/progress")
    assert recs and all(rec["session_key"] == key and rec["job_uuid"] is None for rec in recs)
    assert any("progress" in rec["query"] for rec in recs)

    # A PMS that is gone: callbacks fail, the transcode does not.
    sd5, key5, job5 = new_session(tmp_path, "detect")
    argv = fx.instantiate(fx.load_argv("F5"), input_path=clip, session_dir=sd5,
                          plex_url=f"http://127.0.0.1:{closed_port()}", session_key=key5, job_uuid=job5)
    r = run_transcoder(argv, sd5)
    assert r.returncode == 0, r.stderr
    assert "callback" in r.stderr and "failed" in r.stderr
    out = sd5 / "00000000-0000-4000-8000-000000000005"
    assert [s["codec_name"] for s in ffprobe_streams(out)] == ["flac"]


def test_missing_input_is_a_readable_error(pms, tmp_path):
    sd, key, job = new_session(tmp_path, "missing")
    missing = tmp_path / "no such movie.mkv"
    argv = fx.instantiate(fx.load_argv("F1"), input_path=missing, session_dir=sd, plex_url=pms.url,
                          session_key=key, job_uuid=job)
    r = run_transcoder(argv, sd)
    assert r.returncode == 1
    assert f"{missing}: No such file or directory" in r.stderr
    assert sorted(p.name for p in sd.iterdir()) == []
    # forwarded to PMS too (-loglevel_plex error), as Plex level 0
    logs = pms.records(path_contains=f"/session/{key}/{job}/progress/log")
    assert any(rec["method"] == "POST" and rec["query"]["level"] == "0"
               and "No such file or directory" in rec["query"]["message"] for rec in logs), logs


def test_exit_hook_startfile_pidfile_and_stderr(tmp_path):
    start, pidf = tmp_path / "start.json", tmp_path / "pid.json"
    t0 = time.monotonic()
    p = subprocess.run([str(TRANSCODER), "-x_test_startfile", str(start), "-x_test_pidfile", str(pidf),
                        "-x_test_stderr", "first line", "-x_test_stderr", "second line",
                        "-x_test_exit", "187", *fx.load_argv("F1")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert p.returncode == 187
    assert p.stderr == "first line\nsecond line\n"
    info = json.loads(start.read_text())
    assert info["cwd"] == str(tmp_path) and t0 <= info["t_mono"] <= time.monotonic()
    assert json.loads(pidf.read_text()) == {"pid": info["pid"], "ffmpeg_pid": None}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["pid.json", "start.json"]


def test_sigterm_during_hold_exits_255(tmp_path):
    p = subprocess.Popen([str(TRANSCODER), "-x_test_hold", "60", "-x_test_stderr", "holding"],
                         cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert read_line(p.stderr.fileno(), 20) == "holding\n"
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 255
        assert time.monotonic() - t < 2
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stderr.close()


@pytest.mark.parametrize("sig,rc", [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, 255)])
def test_killing_the_transcoder_leaves_no_ffmpeg(pms, clip, tmp_path, sig, rc):
    sd, key, job = new_session(tmp_path, "kill")
    argv = fx.instantiate(fx.load_argv("F5"), input_path=clip, session_dir=sd, plex_url=pms.url,
                          session_key=key, job_uuid=job)
    argv = fx.insert_before_first_input(argv, "-re")  # real-time: ~6 s of work
    pidfile = sd / "pid.json"
    env = dict(os.environ, X_PLEX_TOKEN=TOKEN)
    p = subprocess.Popen([str(TRANSCODER), "-x_test_pidfile", str(pidfile), *argv], cwd=sd, env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # the first progress tick proves ffmpeg is running (pidfile is rewritten before it)
        pms.wait(f"/session/{key}/{job}/progress?progress=", timeout=30)
        ffmpeg_pid = json.loads(pidfile.read_text())["ffmpeg_pid"]
        assert ffmpeg_pid and pid_alive(ffmpeg_pid)
        assert os.getpgid(ffmpeg_pid) == os.getpgid(p.pid)
        t = time.monotonic()
        p.send_signal(sig)
        assert p.wait(10) == rc
        assert time.monotonic() - t < 3
        assert wait_pid_gone(ffmpeg_pid, 10), "ffmpeg outlived the transcoder"
        assert not pid_alive(ffmpeg_pid)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_fake_pms_routes_auth_and_wait():
    with FakePMS("sekrit", trust_loopback=False).start_in_thread() as pms:
        hp = f"{pms.host}:{pms.port}"
        base = "/video/:/transcode/session/k1/u1"
        assert req(hp, "PUT", base + "/progress?progress=1.0")[0] == 401
        st, _, body = req(hp, "PUT", base + "/progress?progress=2.0", headers={"X-Plex-Token": "sekrit"})
        assert st == 206 and b"<MediaContainer" in body and 200 < len(body) < 600
        assert req(hp, "PUT", base + "/progress?duration=6&X-Plex-Token=sekrit")[0] == 206
        tok = {"X-Plex-Token": "sekrit"}
        assert req(hp, "PUT", base + "/progress/stream?index=0", headers=tok)[0] == 200
        assert req(hp, "PUT", base + "/progress/streamDetail?index=0", headers=tok)[0] == 200
        assert req(hp, "POST", base + "/progress/log?level=0&message=x", headers=tok)[0] == 200
        assert req(hp, "POST", base + "/progress?progress=1", headers=tok)[0] == 404  # PUT only
        assert req(hp, "PUT", "/video/:/transcode/session/legacy/progress?progress=1", headers=tok)[0] == 206
        assert req(hp, "POST", base + "/manifest?X-Plex-Http-Pipeline=infinite",
                    body=iter([b"media-00001.ts,0.0,1.0\n", b"media-00002.ts,1.0,2.0\n"]),
                    headers={**tok, "Transfer-Encoding": "chunked"})[0] == 200
        assert req(hp, "GET", "/livetv/sessions/a/b/index.m3u8", headers=tok)[0] == 200
        assert req(hp, "GET", "/identity", headers=tok)[0] == 200
        assert req(hp, "GET", "/nowhere", headers=tok)[0] == 404

        recs = json.loads(req(hp, "GET", "/_fake/requests")[2])
        assert [r["status"] for r in recs] == [401, 206, 206, 200, 200, 200, 404, 206, 200, 200, 200, 404]
        assert [r["seq"] for r in recs] == list(range(1, 13))
        man = recs[8]
        assert man["kind"] == "manifest" and man["headers"]["Transfer-Encoding"] == "chunked"
        assert man["body"] == "media-00001.ts,0.0,1.0\nmedia-00002.ts,1.0,2.0\n" and man["body_len"] == 46
        assert recs[1]["query"] == {"progress": "2.0"} and recs[1]["query_string"] == "progress=2.0"
        assert recs[1]["remote"] == "127.0.0.1" and recs[0]["authorized"] is False
        assert (recs[7]["session_key"], recs[7]["job_uuid"]) == ("legacy", None)

        # long-poll: times out with 408, or returns once enough requests arrived
        st, _, body = req(hp, "GET", "/_fake/wait?path_contains=/manifest&count=2&timeout=0.2")
        assert st == 408 and len(json.loads(body)) == 1
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as ex:
            fut = ex.submit(req, hp, "GET", "/_fake/wait?path_contains=/manifest&count=2&timeout=20")
            assert pms.wait("/identity", 1, timeout=5)  # the server is idle and responsive
            req(hp, "POST", base + "/manifest", body=b"x", headers=tok)
            st, _, body = fut.result(30)
        assert st == 200 and [r["body"] for r in json.loads(body)][-1] == "x"
        assert json.loads(req(hp, "DELETE", "/_fake/requests")[2]) == {"cleared": 13}
        assert json.loads(req(hp, "GET", "/_fake/requests")[2]) == []

    with FakePMS("sekrit").start_in_thread() as pms:  # default: loopback is trusted
        assert req(f"{pms.host}:{pms.port}", "PUT", "/video/:/transcode/session/k/u/progress")[0] == 206


def test_fake_pms_notify_socket_and_sigterm(tmp_path):
    name = f"clusterplex-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ns:
        ns.bind("\0" + name)
        ns.settimeout(30)
        pms = start_fake_pms(tmp_path / "pms.log", env=dict(os.environ, NOTIFY_SOCKET="@" + name))
        try:
            msg = ns.recv(4096).decode()
            assert msg == f"READY=1\nX_CLUSTERPLEX_LISTEN={pms.hostport}"
            assert req(pms.hostport, "GET", "/identity")[0] == 200
        finally:
            assert stop_fake_pms(pms) == 0
