import pytest

from clusterplex.core import args
from testbed.fixtures import FIXTURE_DIR as FIXTURES, load_argv as fixture


@pytest.mark.parametrize("name,inputs,outputs", [
    ("F1", ["/media/movies/Example (2020)/Example.mkv"], ["dash"]),
    ("F2", ["/media/tv/Example/Season 01/Example S01E01.mkv",
            "/transcode/Transcode/Sessions/plex-transcode-sesskey2-com-plexapp-android-"
            "00000000-0000-4000-8000-000000000002/temp-0.srt"], ["media-%05d.ts"]),
    ("F3", ["/media/movies/Example (2020)/Example.mkv",
            "/transcode/Transcode/Sessions/plex-transcode-sesskey3-00000000-0000-4000-8000-000000000003/temp-0.srt"],
     ["dash", "sub-chunk-%05d"]),
    ("F4", ["/media/movies/Example (2020)/Example.mkv"],
     ["/media/movies/Plex Versions/Optimized for Mobile/.inProgress/Example.mp4.17581"]),
    ("F5", ["/media/tv/Example/Season 01/Example S01E01.mkv"],
     ["/transcode/Transcode/Detection/00000000-0000-4000-8000-000000000005"]),
    ("F6", ["http://iptv.example:8000/live/user/pass/1234.ts"], ["media-%05d.ts"]),
])
def test_inputs_and_outputs_of_every_fixture(name, inputs, outputs):
    argv = fixture(name)
    assert args.inputs(argv) == inputs
    assert args.outputs(argv) == outputs


def test_value_that_looks_like_an_option_is_a_value():
    # "-sei:0 -a53_cc" in VAAPI captures: -a53_cc is sei's value, not an option
    argv = ["-i", "in.mkv", "-sei:0", "-a53_cc", "-y", "out.mp4"]
    assert args.outputs(argv) == ["out.mp4"]
    assert args.option_values(argv, "sei") == ["-a53_cc"]


def test_local_paths_resolves_relative_and_drops_urls():
    assert args.local_paths(["a.srt", "/m/x.mkv", "http://h/x", "file:/m/y.mkv", "-"], "/t/s") == [
        "/t/s/a.srt", "/m/x.mkv", "/m/y.mkv"]


def test_rewrite_every_pms_url_in_every_fixture():
    target = "http://plexhost:32499/_cp/job/mac"
    for f in FIXTURES.glob("*.json"):
        argv = fixture(f.stem)
        out = args.rewrite_urls(argv, "http://127.0.0.1:32400", target)
        assert not any("127.0.0.1:32400" in a for a in out), f.name
        assert len(out) == len(argv)
        changed = [(a, b) for a, b in zip(argv, out) if a != b]
        assert changed, f.name
        for a, b in changed:
            assert b == a.replace("http://127.0.0.1:32400", target)


def test_rewrite_only_whole_authorities():
    out = args.rewrite_urls(["http://127.0.0.1:324001/x", "http://127.0.0.1:32400", "http://localhost:32400/a?b",
                             "-x", "http://[::1]:32400/video"], "http://127.0.0.1:32400", "http://r:1/p")
    assert out == ["http://127.0.0.1:324001/x", "http://r:1/p", "http://r:1/p/a?b", "-x", "http://r:1/p/video"]


def test_rewrite_configured_plex_url():
    out = args.rewrite_urls(["-progressurl", "http://10.9.9.9:32400/video/:/transcode/session/a/b/progress"],
                            "http://10.9.9.9:32400", "http://relay:32499/_cp/j/m")
    assert out[1] == "http://relay:32499/_cp/j/m/video/:/transcode/session/a/b/progress"


def test_session_of():
    assert args.session_of(fixture("F1")) == ("sesskey1", "00000000-0000-4000-8000-000000000001")
    assert args.session_of(fixture("F2")) == ("sesskey2-com-plexapp-android", "00000000-0000-4000-8000-000000000002")
    assert args.session_of(fixture("F6")) == ("sesskey6", "")
    assert args.session_of(["-i", "x"]) == ("", "")


def test_parse_groups_each_option_with_the_file_it_precedes():
    p = args.parse(fixture("F2"))             # HLS: video + sidecar subtitle input, both seeked to 224
    assert [g.kind for g in p.groups] == ["input", "input", "output", "tail"]
    first, srt = p.inputs
    assert [(t.spec, t.value) for t in first.codecs] == [("0", "h264"), ("1", "ac3")]     # decoder hints
    assert srt.codecs == () and srt.value.endswith("/temp-0.srt") and srt.ordinal == 1
    assert [(s.value, s.group) for s in p.seeks] == [("224", 0), ("224", 1)]
    assert p.argv[p.seeks[1].index:p.seeks[1].index + 2] == ("-ss", "224")
    (out,) = p.outputs
    assert out.value == "media-%05d.ts" and out.muxer == "ssegment" and out.last("segment_start_number").value == "28"
    assert [t.value for t in p.encoders] == ["libx264", "libopus", "ass", "copy"] == [t.value for t in out.codecs]
    assert p.decoder_hints == first.codecs and p.hwaccel is None
    assert [t.name for t in p.groups[-1].options] == ["loglevel", "loglevel_plex", "progressurl"]
    assert p.session == args.session_of(fixture("F2"))
    assert p.option_values("ss") == ["224", "224"] and len(p.options("map")) == 4


def test_parse_keeps_tokenize_and_its_flags_table():
    argv = ["-hwaccel", "vaapi", "-codec:0", "hevc", "-i", "in.mkv", "-sei:0", "-a53_cc", "-y", "-codec:v", "libx265",
            "-f", "mp4", "out.mp4", "-nostats", "-loglevel"]
    p = args.parse(argv)
    assert [(t.kind, t.name, t.value, t.index) for t in p.tokens] == list(args.tokenize(argv))
    assert [t.spec for t in p.tokens] == [None, "0", None, "0", None, "v", None, None, None, None]
    assert p.hwaccel == "vaapi" and [t.value for t in p.decoder_hints] == ["hevc"]
    assert [t.value for t in p.encoders] == ["libx265"] and p.outputs[0].muxer == "mp4"
    assert p.option_values("loglevel") == [None]                 # a last option without its value
    assert p.input_values == ("in.mkv",) and p.output_values == ("out.mp4",)


def test_global_options_before_or_after_the_output_read_the_same():
    """2023 order (globals after the output) and 2026 order (before it) give the same inputs, outputs and codecs."""
    argv = fixture("F1")
    tail = argv[argv.index("-start_at_zero"):]
    i = argv.index("-i") + 2
    a, b = args.parse(argv), args.parse(argv[:i] + tail + argv[i:argv.index("-start_at_zero")])
    assert (a.input_values, a.output_values, a.session) == (b.input_values, b.output_values, b.session)
    assert [t.value for t in a.decoder_hints + a.encoders] == [t.value for t in b.decoder_hints + b.encoders]
    assert a.outputs[0].muxer == b.outputs[0].muxer == "dash"


def test_parsed_is_immutable_and_a_value():
    argv = fixture("F1")
    p = args.parse(argv)
    for obj, name in ((p, "argv"), (p.outputs[0], "muxer"), (p.tokens[0], "value")):
        with pytest.raises(AttributeError):
            setattr(obj, name, "x")
    assert isinstance(p.argv, tuple) and isinstance(p.groups[0].tokens, tuple)
    assert p == args.parse(list(argv)) and hash(p) == hash(args.parse(argv)) and p != args.parse(argv[:-1])
    assert args.parse(p) is p                                    # parsing a Parsed is free
    argv[0] = "-changed"
    assert p.argv[0] == "-codec:0"                               # the list it came from may change; it does not
