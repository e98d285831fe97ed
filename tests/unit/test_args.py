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
