"""Worker-side rewrites (clusterplex/worker/rewrite/, docs/rewrite.md) over the captured Plex argv.

Pure-function tests, table-driven over tests/data/plex-argv, plus real checks
against Debian's stock ffmpeg 5.1 that the option names the rewrite emits
exist and are consumed by the encoders they are meant for.
"""
import copy
import re
import subprocess
from types import SimpleNamespace

import pytest

from clusterplex.core import args as plexargs
from clusterplex.worker import rewrite as rw
from testbed.fixtures import FIXTURE_DIR as FIXTURES, load_argv as fixture

FFMPEG = "/usr/bin/ffmpeg"
NODE = "/dev/dri/renderD128"
CWD = "/transcode/Transcode/Sessions/plex-transcode-sesskey1-00000000-0000-4000-8000-000000000001"
LIBS = "/var/lib/plexmediaserver/Library/Application\\ Support/Plex\\ Media\\ Server/Codecs/8217c1c-4578-linux-x86_64/"
ENV = {"X_PLEX_TOKEN": "local-0000", "EAE_ROOT": "/transcode/pms-0000/EasyAudioEncoder",
       "FFMPEG_EXTERNAL_LIBS": LIBS, "TMPDIR": "/transcode"}


def caps(*entries):
    return list(entries)


ALL_CAPS = [f"{c}:{a}:{d}" for c in ("h264", "hevc") for a in ("vaapi", "qsv") for d in ("encode", "decode")] + \
    ["h264:nvenc:encode", "hevc:nvenc:encode", "h264:nvdec:decode", "hevc:nvdec:decode", "av1:vaapi:decode"]


def hardware(codecs=ALL_CAPS, gpus=None, arch="x86_64"):
    if gpus is None:
        gpus = [{"vendor": "intel", "driver": "i915", "render_node": NODE},
                {"vendor": "nvidia", "driver": "nvidia", "render_node": "/dev/dri/renderD129"}]
    return {"cpu": {"arch": arch, "model": "test"}, "gpus": gpus, "hw_codecs": list(codecs),
            "transcoder": {"plex_arch": f"linux-{arch}-standard"}}


def job(argv, cwd=CWD, env=None):
    return {"argv": argv, "cwd": cwd, "env": dict(ENV if env is None else env)}


def run(argv, hw=None, cwd=CWD, job_env=None, **settings):
    return rw.rewrite(job(argv, cwd, job_env), settings, hardware() if hw is None else hw)


def output_options(argv, out_index):
    """{option as written: value} of the ``out_index``-th output file (global options included)."""
    groups, cur = [], []
    for kind, _name, value, i in plexargs.tokenize(argv):
        if kind == "output":
            groups.append(cur)
            cur = []
        elif kind == "input":
            cur = []
        else:
            cur.append((argv[i], value))
    return groups[out_index]


def stream_opts(argv, out_index, n):
    """{name: value} of the options with ``:n`` in that output (``-codec:0`` -> ``codec``)."""
    out = {}
    for opt, value in output_options(argv, out_index):
        name, _, spec = opt[1:].partition(":")
        if spec == str(n):
            out[name] = value
    return out


def values(argv, opt):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == opt]


def graphs(argv):
    return values(argv, "-filter_complex")


# ============================================================ path_map ====

PATH_CASES = [
    # fixture, path_map, {original element: expected element}
    ("F1", [{"from": "/media", "to": "/mnt/nas/media"}],
     {"/media/movies/Example (2020)/Example.mkv": "/mnt/nas/media/movies/Example (2020)/Example.mkv"}),
    ("F2", [{"from": "/media", "to": "/mnt/m"}, {"from": "/media/tv", "to": "/srv/tv"},
            {"from": "/transcode", "to": "/mnt/transcode"}],
     {"/media/tv/Example/Season 01/Example S01E01.mkv": "/srv/tv/Example/Season 01/Example S01E01.mkv",
      "/transcode/Transcode/Sessions/plex-transcode-sesskey2-com-plexapp-android-"
      "00000000-0000-4000-8000-000000000002/temp-0.srt":
      "/mnt/transcode/Transcode/Sessions/plex-transcode-sesskey2-com-plexapp-android-"
      "00000000-0000-4000-8000-000000000002/temp-0.srt"}),
    ("F3", [{"from": "/transcode/", "to": "/x/"}],      # trailing slashes are ignored
     {"/transcode/Transcode/Sessions/plex-transcode-sesskey3-00000000-0000-4000-8000-000000000003/temp-0.srt":
      "/x/Transcode/Sessions/plex-transcode-sesskey3-00000000-0000-4000-8000-000000000003/temp-0.srt"}),
    ("F4", [{"from": "/media/movies", "to": "/mnt/movies"}, {"from": "/media/mov", "to": "/WRONG"}],
     {"/media/movies/Example (2020)/Example.mkv": "/mnt/movies/Example (2020)/Example.mkv",
      "/media/movies/Plex Versions/Optimized for Mobile/.inProgress/Example.mp4.17581":
      "/mnt/movies/Plex Versions/Optimized for Mobile/.inProgress/Example.mp4.17581"}),
    ("F5", [{"from": "/transcode/Transcode", "to": "/t"}, {"from": "/media/tv/Example", "to": "/tv/Ex"}],
     {"/media/tv/Example/Season 01/Example S01E01.mkv": "/tv/Ex/Season 01/Example S01E01.mkv",
      "/transcode/Transcode/Detection/00000000-0000-4000-8000-000000000005":
      "/t/Detection/00000000-0000-4000-8000-000000000005"}),
    ("F6", [{"from": "/live", "to": "/WRONG"}, {"from": "/video", "to": "/WRONG"}], {}),   # URLs only
]


@pytest.mark.parametrize("name,path_map,expected", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_path_map_on_fixtures(name, path_map, expected):
    argv = fixture(name)
    res = run(argv, path_map=path_map)
    assert len(res.argv) == len(argv)
    changed = {a: b for a, b in zip(argv, res.argv) if a != b}
    assert changed == expected
    for a, b in zip(argv, res.argv):
        if plexargs.is_url(a):
            assert a == b                                   # URLs are never rewritten
    assert not any("WRONG" in a for a in res.argv)
    for src in {m["from"].rstrip("/") for m in path_map}:
        dst = next(m["to"].rstrip("/") for m in path_map if m["from"].rstrip("/") == src)
        if any(v.startswith(dst) for v in changed.values()):
            assert any(n.startswith(f"path {src} -> {dst} (") for n in res.notes), res.notes


def test_path_map_boundaries_filters_and_urls():
    graph = ("[0:0]scale=w=1280:h=720[0];[0]inlineass=font_scale=1.0:font_path=/data/media/fonts"
             ":fontconfig_file=/data/media/fonts/fonts.conf:shaping=complex[1]")
    argv = ["-i", "/data/media2/x.mkv", "-i", "/data/media/x.mkv", "-i", "/data/media",
            "-i", "file:/data/media/y.mkv", "-i", "http://nas/data/media/z.mkv", "-i", "/x/data/media/a.mkv",
            "-map_inlineass", "/data/media/sub.mkv:0:s:0", "-filter_complex", graph,
            "-metadata", "comment=see http://host/data/media/w.mkv", "-map", "[1]", "/data/mediax/out.mp4"]
    res = run(argv, path_map=[{"from": "/data/media", "to": "/mnt/nas/media"},
                              {"from": "/data/media/fonts", "to": "/usr/share/plexfonts"}])
    assert res.argv == [
        "-i", "/data/media2/x.mkv", "-i", "/mnt/nas/media/x.mkv", "-i", "/mnt/nas/media",
        "-i", "file:/mnt/nas/media/y.mkv", "-i", "http://nas/data/media/z.mkv", "-i", "/x/data/media/a.mkv",
        "-map_inlineass", "/mnt/nas/media/sub.mkv:0:s:0",
        "-filter_complex", "[0:0]scale=w=1280:h=720[0];[0]inlineass=font_scale=1.0:font_path=/usr/share/plexfonts"
                           ":fontconfig_file=/usr/share/plexfonts/fonts.conf:shaping=complex[1]",
        "-metadata", "comment=see http://host/data/media/w.mkv", "-map", "[1]", "/data/mediax/out.mp4"]
    assert "path /data/media -> /mnt/nas/media (argv[3], argv[5], argv[7], argv[13])" in res.notes
    assert "path /data/media/fonts -> /usr/share/plexfonts (argv[15])" in res.notes


def test_path_map_is_one_pass_and_order_independent():
    argv = ["-i", "/a/x.mkv", "-i", "/b/y.mkv", "-i", "/a/b/z.mkv", "out.mkv"]
    one = run(argv, path_map=[{"from": "/a", "to": "/b"}, {"from": "/b", "to": "/c"}, {"from": "/a/b", "to": "/ab"}])
    two = run(argv, path_map=[{"from": "/a/b", "to": "/ab"}, {"from": "/b", "to": "/c"}, {"from": "/a", "to": "/b"}])
    assert one.argv == two.argv == ["-i", "/b/x.mkv", "-i", "/c/y.mkv", "-i", "/ab/z.mkv", "out.mkv"]


def test_path_map_target_needing_graph_escapes_is_refused_in_graphs_only():
    argv = ["-i", "/data/m.mkv", "-filter_complex", "[0:0]inlineass=font_path=/data/fonts[v]", "-map", "[v]", "o.mkv"]
    res = run(argv, path_map=[{"from": "/data", "to": "/mnt/a:b"}])
    assert res.argv[1] == "/mnt/a:b/m.mkv"
    assert res.argv[3] == argv[3]
    assert any("not applied in argv[3]" in n and "escaping" in n for n in res.notes)


def test_path_map_cwd_and_env_with_escaped_spaces_round_trip():
    pms = "/var/lib/plexmediaserver/Library/Application Support/Plex Media Server"
    res = run(fixture("F1"), path_map=[{"from": pms, "to": "/srv/plex data/pms"},
                                       {"from": "/transcode", "to": "/mnt/transcode"}])
    assert res.cwd == "/mnt" + CWD
    assert res.env["EAE_ROOT"] == "/mnt/transcode/pms-0000/EasyAudioEncoder"
    assert res.env["FFMPEG_EXTERNAL_LIBS"] == "/srv/plex\\ data/pms/Codecs/8217c1c-4578-linux-x86_64/"
    assert rw.unescape_spaces(res.env["FFMPEG_EXTERNAL_LIBS"]) == "/srv/plex data/pms/Codecs/8217c1c-4578-linux-x86_64/"
    assert res.env["TMPDIR"] == "/transcode"              # only EAE_ROOT and FFMPEG_EXTERNAL_LIBS are paths
    assert res.env["X_PLEX_TOKEN"] == ENV["X_PLEX_TOKEN"]
    # escaping round trip: a value no rule matches stays byte for byte
    res = run(fixture("F1"), path_map=[{"from": "/elsewhere", "to": "/x"}])
    assert res.env["FFMPEG_EXTERNAL_LIBS"] == LIBS
    assert rw.escape_spaces(rw.unescape_spaces(LIBS)) == LIBS


def test_map_path_helper():
    pm = [{"from": "/data/media", "to": "/mnt/m"}]
    assert rw.map_path("/data/media/a b.mkv", pm) == "/mnt/m/a b.mkv"
    assert rw.map_path("/data/media2/a.mkv", pm) == "/data/media2/a.mkv"
    assert rw.map_path("/data/media", pm) == "/mnt/m"


@pytest.mark.parametrize("settings,message", [
    ({"path_map": [{"from": "data", "to": "/x"}]}, "path_map[0].from: must be an absolute path"),
    ({"path_map": [{"from": "/", "to": "/x"}]}, "path_map[0].from: must not be /"),
    ({"path_map": [{"from": "/a", "to": "/x"}, {"from": "/a/", "to": "/y"}]}, "path_map: /a is mapped twice"),
    ({"hwaccel": "cuda"}, "hwaccel: must be one of none, auto, vaapi, qsv, nvenc"),
    ({"encoder_swaps": {"aac": "aac_at"}}, "encoder_swaps.aac: only libx264, libx265 can be swapped"),
    ({"encoder_swaps": {"libx264": "hevc_nvenc"}}, "encoder_swaps.libx264: must be one of"),
    ({"env": {"A": 1}}, "env: must be a mapping"),
    ({"codecs_dir": "codecs"}, "codecs_dir: must be an absolute path"),
    ({"render_node": "renderD128"}, "render_node: must be a device path"),
])
def test_bad_settings_are_refused_with_their_key(settings, message):
    with pytest.raises(rw.SettingsError) as e:
        rw.check_settings(settings)
    assert str(e.value).startswith(message)


def test_settings_as_namespace_dict_or_settings():
    ns = SimpleNamespace(path_map=[SimpleNamespace(**{"from": "/media", "to": "/m"})], hwaccel="vaapi",
                         encoder_swaps={}, env={})                     # no codecs_dir/render_node attributes
    as_dict = {"path_map": [("/media", "/m")], "hwaccel": "vaapi"}
    a = rw.rewrite(job(fixture("F1")), ns, hardware())
    b = rw.rewrite(job(fixture("F1")), as_dict, hardware())
    c = rw.rewrite(job(fixture("F1")), rw.check_settings(as_dict), hardware())
    assert a == b == c
    assert a.api == "vaapi"


@pytest.mark.parametrize("settings", [{}, {"path_map": [("/media", "/m")]}, {"hwaccel": "vaapi"},
                                      {"path_map": [("/media", "/m")], "hwaccel": "nvenc"}])
@pytest.mark.parametrize("name", ["F1", "F2", "F3", "F4"])
def test_the_callers_parsed_argv_is_read_and_the_result_comes_parsed(name, settings):
    argv = fixture(name)
    parsed = plexargs.parse(argv)
    res = rw.rewrite(job(argv), settings, hardware(), parsed)
    assert res == rw.rewrite(job(argv), settings, hardware())
    assert res.parsed == plexargs.parse(res.argv)
    if res.argv == argv:
        assert res.parsed is parsed                          # nothing changed: not parsed again


# ============================================================ hwaccel: none ====

@pytest.mark.parametrize("name", ["F1", "F2", "F3", "F4", "F5", "F6"])
def test_no_settings_no_hardware_is_identity(name):
    argv = fixture(name)
    res = rw.rewrite(job(argv), {}, {})
    assert (res.argv, res.cwd, res.env, res.notes, res.api) == (argv, CWD, ENV, [], None)
    res = rw.rewrite(job(argv), {"hwaccel": "none", "encoder_swaps": {"libx264": "h264_nvenc"}}, hardware())
    assert res.argv == argv and res.cwd == CWD
    assert res.notes == ["env PLEX_ARCH=x86_64", "env PLEX_MEDIA_SERVER_INFO_MODEL=x86_64"]


# ============================================================ encoder swaps ====

SWAP_CASES = [
    # fixture, mode, stream 0 expected, stream 0 options that must be gone, decode flags, global flags, graph suffix
    ("F1", "vaapi", {"codec": "h264_vaapi", "qp": "21", "maxrate": "1724k", "bufsize": "3448k",
                     "force_key_frames": "expr:gte(t,n_forced*3)"},
     ("crf", "preset", "x264opts"), ["-hwaccel", "vaapi", "-hwaccel_device", NODE], ["-vaapi_device", NODE],
     ",format=nv12,hwupload[1]"),
    ("F1", "nvenc", {"codec": "h264_nvenc", "cq": "21", "preset": "p2", "forced-idr": "1", "maxrate": "1724k"},
     ("crf", "x264opts"), ["-hwaccel", "cuda"], [], None),
    ("F1", "qsv", {"codec": "h264_qsv", "global_quality": "21", "preset": "veryfast", "forced_idr": "1",
                   "maxrate": "1724k"},
     ("crf", "x264opts"), ["-hwaccel", "vaapi", "-hwaccel_device", NODE],
     ["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"],
     ",format=nv12,hwupload=extra_hw_frames=64[1]"),
    ("F2", "vaapi", {"codec": "h264_vaapi", "qp": "22", "maxrate": "541k", "r": "23.975999999999999"},
     ("crf", "preset", "x264opts"), ["-hwaccel", "vaapi", "-hwaccel_device", NODE], ["-vaapi_device", NODE],
     ",format=nv12,hwupload[1]"),
    ("F2", "nvenc", {"codec": "h264_nvenc", "cq": "22", "preset": "p2", "forced-idr": "1"},
     ("crf", "x264opts"), ["-hwaccel", "cuda"], [], None),
    ("F2", "qsv", {"codec": "h264_qsv", "global_quality": "22", "preset": "veryfast", "forced_idr": "1"},
     ("crf", "x264opts"), ["-hwaccel", "vaapi", "-hwaccel_device", NODE],
     ["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"],
     ",format=nv12,hwupload=extra_hw_frames=64[1]"),
]


@pytest.mark.parametrize("name,mode,expect,gone,decode,glob,suffix", SWAP_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in SWAP_CASES])
def test_swap_on_fixtures(name, mode, expect, gone, decode, glob, suffix):
    argv = fixture(name)
    res = run(argv, hwaccel=mode)
    assert res.api == mode
    s0 = stream_opts(res.argv, 0, 0)
    for k, v in expect.items():
        assert s0.get(k) == v, (k, s0)
    for k in gone:
        assert k not in s0
    # audio (stream 1) and, in F2, the subtitle stream 2 and attachments: untouched
    for n in (1, 2):
        assert stream_opts(res.argv, 0, n) == stream_opts(argv, 0, n)
    assert values(res.argv, "-codec:t") == values(argv, "-codec:t")
    # the video graph is amended, the audio graph is not
    g_old, g_new = graphs(argv), graphs(res.argv)
    assert g_new[1] == g_old[1]
    if suffix:
        assert g_new[0] == g_old[0][:-len("[1]")] + suffix
    else:
        assert g_new[0] == g_old[0]
    # hardware decode right before the first -i, once; no -hwaccel_output_format anywhere
    first = res.argv.index("-i")
    assert res.argv[first - len(decode):first] == decode
    assert res.argv.count("-hwaccel") == 1
    assert not any(a.startswith("-hwaccel_output_format") for a in res.argv)
    # global device setup once
    if glob:
        assert res.argv[:len(glob)] == glob
    for opt in ("-vaapi_device", "-init_hw_device", "-filter_hw_device"):
        assert res.argv.count(opt) == glob.count(opt)
    # nothing else moved: removing what was added gives back what was there, minus what was dropped
    assert plexargs.inputs(res.argv) == plexargs.inputs(argv)
    assert plexargs.outputs(res.argv) == plexargs.outputs(argv)
    assert [a for a in res.argv if plexargs.is_url(a)] == [a for a in argv if plexargs.is_url(a)]


def test_swap_notes_describe_each_change():
    res = run(fixture("F1"), hwaccel="vaapi")
    assert res.notes[:7] == [
        f"stream 0: libx264 -> h264_vaapi on {NODE}",
        "stream 0: -crf 21 -> -qp 21",
        "stream 0: dropped -preset veryfast, -x264opts (no h264_vaapi equivalent)",
        "filter graph output [1]: appended format=nv12,hwupload",
        f"added -vaapi_device {NODE}",
        f"hardware decode of input 0 (h264): -hwaccel vaapi -hwaccel_device {NODE}",
        "env PLEX_ARCH=x86_64",
    ]
    res = run(fixture("F2"), hwaccel="nvenc")
    assert "stream 0: libx264 -> h264_nvenc" in res.notes
    assert "stream 0: -crf 22 -> -cq 22; -preset veryfast -> p2; " \
           "added -forced-idr 1 (forced key frames become IDR frames)" in res.notes
    assert "stream 0: dropped -x264opts (no h264_nvenc equivalent)" in res.notes
    assert "hardware decode of input 0 (h264): -hwaccel cuda" in res.notes


@pytest.mark.parametrize("mode", ["auto", "vaapi", "nvenc", "qsv"])
@pytest.mark.parametrize("name", ["F3", "F4", "F5", "F6"])
def test_jobs_without_software_video_encode_are_untouched(name, mode):
    # F3: video is `copy`; F4: Plex already chose VAAPI (hevc_vaapi, -hwaccel:0); F5: audio only; F6: copy + ac3
    argv = fixture(name)
    res = run(argv, hwaccel=mode)
    assert res.argv == argv
    assert res.api is None
    assert [n for n in res.notes if not n.startswith("env ")] == []


def test_existing_hardware_encoder_or_devices_block_swaps():
    # a second, software-encoded output in a job that already uses a hardware encoder
    argv = fixture("F4") + ["-map", "0:0", "-codec:0", "libx264", "-crf:0", "20", "/tmp/o.mkv"]
    res = run(argv, hwaccel="auto")
    assert res.argv == argv
    assert "encoders left as Plex wrote them: the job already uses hevc_vaapi" in res.notes
    argv = ["-init_hw_device", "vaapi=va:/dev/dri/renderD128", "-codec:0", "h264", "-i", "/m/a.mkv",
            "-map", "0:0", "-codec:0", "libx264", "o.mkv"]
    res = run(argv, hwaccel="vaapi")
    assert res.argv == argv
    assert "encoders left as Plex wrote them: the job sets up hardware itself (-init_hw_device)" in res.notes


def test_plex_chose_hardware_decode_only_encoder_is_swapped_decode_left_alone():
    argv = ["-codec:0", "h264", "-hwaccel", "cuda", "-i", "/m/a.mkv", "-map", "0:0", "-codec:0", "libx264",
            "-crf:0", "20", "-force_key_frames:0", "expr:gte(t,n_forced*3)", "o.mkv"]
    res = run(argv, hwaccel="nvenc")
    assert res.argv == ["-codec:0", "h264", "-hwaccel", "cuda", "-i", "/m/a.mkv", "-map", "0:0",
                        "-codec:0", "h264_nvenc", "-forced-idr:0", "1", "-cq:0", "20",
                        "-force_key_frames:0", "expr:gte(t,n_forced*3)", "o.mkv"]
    assert not any(n.startswith("hardware decode") for n in res.notes)


def test_rate_control_per_output_file_and_stream_index():
    # Two outputs, both with a stream 0: only the libx264 one (output 1) changes.
    argv = ["-codec:0", "hevc", "-i", "/m/a.mkv",
            "-map", "0:0", "-codec:0", "copy", "-crf:0", "99", "-f", "matroska", "copy.mkv",
            "-filter_complex", "[0:0]scale=w=640:h=-2[v]", "-map", "[v]", "-codec:0", "libx264", "-crf:0", "23.4",
            "-preset:0", "superfast", "-tune:0", "zerolatency", "-profile:0", "baseline", "-level:0", "4.1",
            "-pix_fmt:0", "yuv420p", "-map", "0:1", "-codec:1", "aac", "-crf:1", "7", "-preset:1", "x", "small.mp4"]
    hw = hardware(caps("h264:vaapi:encode", "hevc:vaapi:decode"))
    res = run(argv, hw=hw, hwaccel="vaapi")
    assert stream_opts(res.argv, 0, 0) == stream_opts(argv, 0, 0)
    assert stream_opts(res.argv, 1, 0) == {"codec": "h264_vaapi", "qp": "23", "profile": "constrained_baseline",
                                           "level": "41"}
    assert stream_opts(res.argv, 1, 1) == {"codec": "aac", "crf": "7", "preset": "x"}
    assert graphs(res.argv) == ["[0:0]scale=w=640:h=-2,format=nv12,hwupload[v]"]
    assert res.argv[res.argv.index("-i") - 4:res.argv.index("-i")] == ["-hwaccel", "vaapi", "-hwaccel_device", NODE]
    assert "output 1 stream 0: libx264 -> h264_vaapi on /dev/dri/renderD128" in res.notes
    assert "output 1 stream 0: -crf 23.4 -> -qp 23; -profile baseline -> constrained_baseline; " \
           "-level 4.1 -> 41" in res.notes
    assert "output 1 stream 0: dropped -preset superfast, -tune, -pix_fmt yuv420p (no h264_vaapi equivalent)" \
        in res.notes

    res = run(argv, hw=hardware(caps("h264:nvenc:encode")), hwaccel="nvenc")
    assert stream_opts(res.argv, 1, 0) == {"codec": "h264_nvenc", "cq": "23.4", "preset": "p1",
                                           "profile": "baseline", "level": "41", "pix_fmt": "yuv420p"}
    assert graphs(res.argv) == graphs(argv)
    assert "no hardware decode for input 0: this worker cannot decode hevc with nvdec" in res.notes

    res = run(argv, hw=hardware(caps("h264:qsv:encode")), hwaccel="qsv")
    assert stream_opts(res.argv, 1, 0) == {"codec": "h264_qsv", "global_quality": "23", "preset": "veryfast",
                                           "profile": "baseline", "level": "41"}


@pytest.mark.parametrize("x265,nvenc", [("ultrafast", "p1"), ("veryfast", "p2"), ("medium", "p4"),
                                        ("slow", "p5"), ("veryslow", "p7"), ("p6", "p6")])
def test_nvenc_preset_mapping_hevc(x265, nvenc):
    argv = ["-i", "/m/a.mkv", "-map", "0:0", "-codec:0", "libx265", "-crf:0", "28", "-preset:0", x265,
            "-x265-params:0", "log-level=error", "-profile:0", "main10", "-level:0", "4.1", "o.mkv"]
    res = run(argv, hwaccel="auto", hw=hardware(caps("hevc:nvenc:encode", "hevc:vaapi:encode")))
    assert stream_opts(res.argv, 0, 0) == {"codec": "hevc_nvenc", "cq": "28", "preset": nvenc,
                                           "profile": "main10", "level": "123"}


def test_direct_map_gets_a_stream_filter():
    argv = ["-i", "/m/a.mkv", "-map", "0:0", "-codec:0", "libx264", "-crf:0", "20", "-map", "0:1", "-codec:1", "aac",
            "o.mkv"]
    res = run(argv, hwaccel="vaapi")
    assert res.argv == ["-vaapi_device", NODE, "-i", "/m/a.mkv", "-map", "0:0",
                        "-filter:0", "format=nv12,hwupload", "-codec:0", "h264_vaapi", "-qp:0", "20",
                        "-map", "0:1", "-codec:1", "aac", "o.mkv"]
    assert "no hardware decode for input 0: no video decoder hint" in res.notes
    # an existing filter for that stream is extended
    argv2 = argv[:4] + ["-filter:0", "yadif"] + argv[4:]
    res = run(argv2, hwaccel="qsv")
    assert values(res.argv, "-filter:0") == ["yadif,format=nv12,hwupload=extra_hw_frames=64"]
    # one that may apply to other streams too: refused
    argv3 = argv[:4] + ["-vf", "yadif"] + argv[4:]
    res = run(argv3, hwaccel="vaapi")
    assert res.argv == argv3
    assert "stream 0: libx264 -> h264_vaapi skipped: its output file has filters this rewrite cannot amend " \
           "safely" in res.notes


def test_graph_output_of_a_split_is_renamed_not_broken():
    graph = "[0:0]scale=w=640:h=-2,split[a][b]"
    argv = ["-i", "/m/a.mkv", "-filter_complex", graph, "-map", "[a]", "-codec:0", "libx264", "o1.mkv",
            "-map", "[b]", "-codec:0", "libx264", "o2.mkv"]
    res = run(argv, hwaccel="vaapi")
    assert graphs(res.argv) == ["[0:0]scale=w=640:h=-2,split[cphwa][cphwb];[cphwa]format=nv12,hwupload[a]"
                                ";[cphwb]format=nv12,hwupload[b]"]
    assert res.argv.count("-vaapi_device") == 1
    assert values(res.argv, "-codec:0") == ["h264_vaapi", "h264_vaapi"]


def test_stream_that_cannot_be_located_is_left_alone():
    argv = ["-i", "/m/a.mkv", "-map", "0:v", "-map", "0:a", "-codec:0", "libx264", "o.mkv"]
    res = run(argv, hwaccel="vaapi")
    assert res.argv == argv
    assert res.api is None
    assert "stream 0: libx264 -> h264_vaapi skipped: cannot tell which -map feeds stream 0" in res.notes
    res = run(argv, hwaccel="nvenc")                       # NVENC needs no upload: fine
    assert values(res.argv, "-codec:0") == ["h264_nvenc"]


# ============================================================ auto, explicit swaps ====

AUTO_CASES = [
    # caps, gpus (None: intel + nvidia), expected encoder for F1's libx264, expected decode flags
    (ALL_CAPS, None, "h264_nvenc", ["-hwaccel", "cuda"]),
    (caps("h264:vaapi:encode", "h264:vaapi:decode", "h264:qsv:encode"), None, "h264_vaapi",
     ["-hwaccel", "vaapi", "-hwaccel_device", NODE]),
    (caps("h264:vaapi:encode", "h264:qsv:encode", "h264:qsv:decode"),
     [{"vendor": "nvidia", "render_node": "/dev/dri/renderD129"}], "h264_qsv", ["-hwaccel", "vaapi"]),
    (caps("h264:vaapi:encode"), [{"vendor": "amd", "driver": "amdgpu", "render_node": "/dev/dri/renderD130"}],
     "h264_vaapi", []),                                       # no h264 decode capability: software decode
    (caps("hevc:nvenc:encode", "hevc:vaapi:encode", "h264:nvdec:decode"), None, "libx264", []),
    (caps(), None, "libx264", []),
]


@pytest.mark.parametrize("codecs,gpus,encoder,decode", AUTO_CASES)
def test_auto_picks_by_capability(codecs, gpus, encoder, decode):
    argv = fixture("F1")
    res = run(argv, hw=hardware(codecs, gpus), hwaccel="auto")
    assert stream_opts(res.argv, 0, 0)["codec"] == encoder
    first = res.argv.index("-i")
    assert res.argv[first - len(decode):first] == decode
    assert res.argv.count("-hwaccel") == (1 if decode else 0)
    if encoder == "libx264":
        assert res.argv == argv
        assert "stream 0: libx264 kept: no hardware h264 encoder on this worker" in res.notes
    if encoder == "h264_vaapi" and gpus:
        assert values(res.argv, "-vaapi_device") == [gpus[0]["render_node"]]


def test_render_node_setting_and_qsv_on_a_second_gpu():
    res = run(fixture("F1"), hwaccel="vaapi", render_node="/dev/dri/renderD131")
    assert values(res.argv, "-vaapi_device") == ["/dev/dri/renderD131"]
    assert values(res.argv, "-hwaccel_device") == ["/dev/dri/renderD131"]
    res = run(fixture("F1"), hwaccel="qsv", hw=hardware(gpus=[{"vendor": "amd", "render_node": NODE},
                                                              {"vendor": "intel", "render_node": "/dev/dri/renderD129"}]))
    assert res.argv[:6] == ["-init_hw_device", "vaapi=va:/dev/dri/renderD129", "-init_hw_device", "qsv=hw@va",
                            "-filter_hw_device", "hw"]


def test_vaapi_without_a_render_node_is_refused():
    argv = fixture("F1")
    res = run(argv, hwaccel="vaapi", hw=hardware(gpus=[{"vendor": "nvidia"}]))
    assert res.argv == argv
    assert "stream 0: libx264 kept: no VAAPI render node on this worker" in res.notes


EXPLICIT_CASES = [
    # mode, swaps, caps, expected encoder, note fragment
    ("auto", {"libx264": "h264_qsv"}, ALL_CAPS, "h264_qsv", "stream 0: libx264 -> h264_qsv on /dev/dri/renderD128"),
    ("vaapi", {"libx264": "h264_nvenc"}, ALL_CAPS, "h264_nvenc", "stream 0: libx264 -> h264_nvenc"),
    ("auto", {"libx264": "h264_nvenc"}, caps("h264:vaapi:encode", "h264:qsv:encode"), "libx264",
     "stream 0: libx264 -> h264_nvenc refused: this worker has no h264 nvenc encoder"),
    ("nvenc", {"libx264": "h264_vaapi"}, caps("h264:vaapi:encode"), "h264_vaapi", "-> h264_vaapi on"),
    ("auto", {"libx264": "libx264"}, ALL_CAPS, "libx264", None),              # pinned to software
    ("auto", {"libx265": "hevc_vaapi"}, caps("h264:vaapi:encode"), "h264_vaapi", "-> h264_vaapi on"),
]


@pytest.mark.parametrize("mode,swaps,codecs,encoder,note", EXPLICIT_CASES)
def test_explicit_encoder_swaps(mode, swaps, codecs, encoder, note):
    argv = fixture("F1")
    res = run(argv, hw=hardware(codecs), hwaccel=mode, encoder_swaps=swaps)
    assert stream_opts(res.argv, 0, 0)["codec"] == encoder
    if encoder == "libx264":
        assert res.argv == argv
    if note:
        assert any(note in n for n in res.notes), res.notes
    else:
        assert [n for n in res.notes if not n.startswith("env ")] == []


def test_one_api_per_job():
    argv = ["-i", "/m/a.mkv", "-map", "0:0", "-codec:0", "libx264", "a.mkv", "-map", "0:0", "-codec:0", "libx265",
            "b.mkv"]
    res = run(argv, hw=hardware(caps("h264:nvenc:encode", "hevc:vaapi:encode")), hwaccel="auto")
    assert values(res.argv, "-codec:0") == ["h264_nvenc", "libx265"]
    assert "output 1 stream 0: libx265 -> hevc_vaapi skipped: this job already uses nvenc" in res.notes


# ============================================================ position, purity ====

def test_globals_before_outputs_2026_layout_gives_the_same_rewrite():
    old = fixture("F1")
    tail = old[old.index("-start_at_zero"):]
    first_graph = old.index("-filter_complex")
    new = old[:first_graph] + tail + old[first_graph:old.index("-start_at_zero")]
    for mode in ("vaapi", "nvenc", "qsv"):
        a, b = run(old, hwaccel=mode), run(new, hwaccel=mode)
        assert stream_opts(a.argv, 0, 0) == stream_opts(b.argv, 0, 0)
        assert graphs(a.argv) == graphs(b.argv)
        assert a.notes == b.notes
        assert sorted(a.argv) == sorted(b.argv)


@pytest.mark.parametrize("mode", ["none", "auto", "vaapi", "nvenc", "qsv"])
def test_inputs_are_never_mutated(mode):
    for f in sorted(FIXTURES.glob("*.json")):
        the_job = job(fixture(f.stem))
        settings = {"hwaccel": mode, "path_map": [{"from": "/media", "to": "/m"}], "env": {"TMPDIR": None, "A": "1"},
                    "encoder_swaps": {"libx264": "h264_vaapi"}, "codecs_dir": "/opt/codecs"}
        hw = hardware()
        before = copy.deepcopy((the_job, settings, hw))
        res = rw.rewrite(the_job, settings, hw)
        assert (the_job, settings, hw) == before, f.name
        assert res.argv is not the_job["argv"] and res.env is not the_job["env"]


# ============================================================ environment ====

def test_env_arch_codecs_dir_and_overrides():
    res = run(fixture("F1"), hw=hardware(arch="aarch64"),
              codecs_dir="/var/lib/clusterplex/codecs/8217c1c-4578 linux aarch64",
              env={"LIBVA_DRIVER_NAME": "iHD", "TMPDIR": None, "PLEX_MEDIA_SERVER_INFO_MODEL": "custom"})
    assert res.env["PLEX_ARCH"] == "aarch64"
    assert res.env["PLEX_MEDIA_SERVER_INFO_MODEL"] == "custom"          # overrides are applied last
    assert res.env["FFMPEG_EXTERNAL_LIBS"] == "/var/lib/clusterplex/codecs/8217c1c-4578\\ linux\\ aarch64/"
    assert res.env["LIBVA_DRIVER_NAME"] == "iHD"
    assert "TMPDIR" not in res.env
    assert res.env["EAE_ROOT"] == ENV["EAE_ROOT"] and res.env["X_PLEX_TOKEN"] == ENV["X_PLEX_TOKEN"]
    assert res.notes == [
        "env PLEX_ARCH=aarch64", "env PLEX_MEDIA_SERVER_INFO_MODEL=aarch64",
        "env FFMPEG_EXTERNAL_LIBS=/var/lib/clusterplex/codecs/8217c1c-4578\\ linux\\ aarch64/",
        "env LIBVA_DRIVER_NAME set (worker override)", "env TMPDIR removed (worker override)",
        "env PLEX_MEDIA_SERVER_INFO_MODEL set (worker override)"]
    # codecs_dir with its trailing slash already there; unknown arch: nothing set
    res = rw.rewrite(job(fixture("F1"), env={}), {"codecs_dir": "/c/"}, {"cpu": {}})
    assert res.env == {"FFMPEG_EXTERNAL_LIBS": "/c/"}


# ============================================================ Debian's ffmpeg 5.1 ====

def ffmpeg(*argv, timeout=60):
    return subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *argv], capture_output=True, text=True,
                          timeout=timeout)


def option_lines(text):
    """{option: line} of an ``ffmpeg -h`` listing (``  -qp  <int> ...``)."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\s+-?([A-Za-z0-9_-]+)\s+.*$", text, re.M)}


ENCODER_OPTIONS = {
    # encoder: (options this module emits for it, named values it emits)
    "h264_vaapi": (("qp", "profile", "level"), {"profile": ("constrained_baseline", "main", "high")}),
    "hevc_vaapi": (("qp", "profile", "level"), {"profile": ("main", "main10")}),
    "h264_nvenc": (("cq", "preset", "forced-idr", "profile", "level"),
                   {"preset": tuple(f"p{i}" for i in range(1, 8)), "profile": ("baseline", "main", "high", "high444p")}),
    "hevc_nvenc": (("cq", "preset", "forced-idr", "profile", "level"),
                   {"preset": tuple(f"p{i}" for i in range(1, 8)), "profile": ("main", "main10", "rext")}),
    "h264_qsv": (("preset", "forced_idr", "profile"),
                 {"preset": ("veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"),
                  "profile": ("baseline", "main", "high")}),
    "hevc_qsv": (("preset", "forced_idr", "profile"),
                 {"preset": ("veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"),
                  "profile": ("main", "main10", "mainsp", "rext")}),
}


def test_debian_ffmpeg_has_every_encoder_and_option_emitted():
    # Debian 12's ffmpeg 5.1 is built with all six encoders (checked: `ffmpeg -encoders`); if one
    # were missing this test would say which, rather than skip.
    encoders = ffmpeg("-encoders").stdout
    missing = [e for e in ENCODER_OPTIONS if not re.search(rf"^\s*V\S*\s+{e}\s", encoders, re.M)]
    assert missing == [], f"Debian's ffmpeg lacks {missing}"
    for enc, (opts, named) in ENCODER_OPTIONS.items():
        p = ffmpeg("-h", f"encoder={enc}")
        assert p.returncode == 0, p.stderr
        listed = option_lines(p.stdout)
        for opt in opts:
            assert opt in listed, f"{enc} has no -{opt}"
        for opt, names in named.items():
            block = p.stdout.split(f"  -{opt} ", 1)[1].split("\n  -", 1)[0]
            for name in names:
                assert re.search(rf"^\s+{re.escape(name)}\s", block, re.M), f"{enc} -{opt} has no {name}"
    # the rate-control mapping table and the module agree with what was checked above
    assert set(rw.NVENC_PRESETS.values()) <= set(ENCODER_OPTIONS["h264_nvenc"][1]["preset"])
    assert set(rw.QSV_PRESETS.values()) <= set(ENCODER_OPTIONS["h264_qsv"][1]["preset"])
    for (api, codec), table in rw.PROFILES.items():
        assert set(table.values()) <= set(ENCODER_OPTIONS[f"{codec}_{api}"][1]["profile"]), (api, codec)
    # generic options (AVCodecContext / fftools / AVFilter), filters and hwaccels
    full = ffmpeg("-h", "full").stdout
    assert re.search(r"^\s+-global_quality\s+<int>", full, re.M)
    for opt in ("vaapi_device", "init_hw_device", "filter_hw_device", "hwaccel", "hwaccel_device"):
        assert re.search(rf"^-{opt}\s", full, re.M), opt
    assert re.search(r"^\s+extra_hw_frames\s+<int>\s+\.\.F", full, re.M)       # filter option (hwupload=extra_...)
    assert ffmpeg("-h", "filter=hwupload").returncode == 0
    hwaccels = ffmpeg("-hwaccels").stdout.split()
    assert {"vaapi", "cuda", "qsv"} <= set(hwaccels)


PARSE_ERRORS = ("Unrecognized option", "Option not found", "Error parsing", "has not been used for any stream",
                "Invalid argument", "Error setting option", "No such filter", "Undefined constant",
                "Unable to parse")


@pytest.mark.parametrize("name", ["F1", "F2"])
@pytest.mark.parametrize("mode", ["vaapi", "nvenc", "qsv"])
def test_debian_ffmpeg_parses_the_rewritten_fixture(tmp_path, name, mode):
    """The whole rewritten argv (less Plex-only options, via the stand-in transcoder's translation) gets
    through ffmpeg's option parsing, filter-graph parsing and encoder-option checks; it then fails only
    for want of hardware. The global device options of vaapi/qsv (-vaapi_device, -init_hw_device) open
    the device while options are parsed, so they are left out here (checked by -h above)."""
    from testbed import fixtures as fx
    from tests.fakes import plex_transcoder as pt

    clip = fx.make_clip(tmp_path / "media" / "clip.mkv", seconds=1)
    session = tmp_path / "session"
    session.mkdir()
    fx.make_srt(session / "temp-0.srt", seconds=3)
    argv = fx.instantiate(fx.load_argv(name), input_path=str(clip), session_dir=str(session))
    res = run(argv, hwaccel=mode, cwd=str(session))
    assert res.api == mode
    ff = pt.translate(res.argv, workdir=str(session / ".plexfake")).ffargs
    (session / ".plexfake").mkdir()
    for opt in ("-vaapi_device", "-init_hw_device", "-filter_hw_device"):
        while opt in ff:
            i = ff.index(opt)
            del ff[i:i + 2]
    p = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *ff], cwd=session, capture_output=True, text=True,
                       timeout=60)
    # what may fail is opening the hardware: "Device creation/setup failed", "No device available ..."
    bad = [line for line in p.stderr.splitlines() if any(e in line for e in PARSE_ERRORS)
           and "device" not in line.lower()]
    assert bad == [], p.stderr
    assert "Stream mapping:" in p.stderr, p.stderr        # parsing done, outputs set up
    assert f"(h264_{mode})" in p.stderr

    # control: the same check catches an option the encoder does not take
    leftover = ff[:ff.index("-codec:0") + 2] + ["-x264opts:0", "me=hex"] + ff[ff.index("-codec:0") + 2:]
    p = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *leftover], cwd=session, capture_output=True,
                       text=True, timeout=60)
    assert "has not been used for any stream" in p.stderr


# --- Plex's own pinned VAAPI device ------------------------------------------------------------

PINNED = "vaapi=vaapi:/dev/dri/renderD128,driver=iHD"


@pytest.mark.parametrize("mode", ["none", "auto", "vaapi"])
def test_plexs_pinned_device_becomes_this_workers_render_node(mode):
    argv = fixture("F4")
    gpus = [{"vendor": "amd", "driver": "amdgpu", "render_node": "/dev/dri/renderD128"},
            {"vendor": "intel", "driver": "i915", "render_node": "/dev/dri/renderD129"}]
    r = run(argv, hardware(gpus=gpus), hwaccel=mode)
    assert PINNED in argv                                    # the job itself is untouched
    assert r.argv[argv.index(PINNED)] == "vaapi=vaapi:/dev/dri/renderD129,driver=iHD"   # the Intel GPU's, for iHD
    assert "-init_hw_device: /dev/dri/renderD128 -> /dev/dri/renderD129 (this worker's render node)" in r.notes
    r = run(argv, hardware(gpus=gpus), hwaccel=mode, render_node="/dev/dri/renderD131")
    assert r.argv[argv.index(PINNED)] == "vaapi=vaapi:/dev/dri/renderD131,driver=iHD"   # the configured node wins


def test_a_pinned_device_stays_when_the_worker_has_no_gpu_of_that_driver():
    argv = fixture("F4")
    amd = [{"vendor": "amd", "driver": "amdgpu", "render_node": "/dev/dri/renderD129"}]
    r = run(argv, hardware(gpus=amd), hwaccel="none")
    assert r.argv == argv and not any("render node" in n for n in r.notes)


def test_a_plex_vaapi_device_without_a_driver_goes_to_the_first_intel_or_amd_gpu():
    argv = ["-codec:0", "h264", "-hwaccel:0", "vaapi", "-i", "/m/x.mkv", "-codec:0", "copy", "-f", "matroska", "-",
            "-vaapi_device", "/dev/dri/renderD128", "-hwaccel_device:0", "vaapi"]
    amd = [{"vendor": "amd", "driver": "amdgpu", "render_node": "/dev/dri/renderD130"}]
    r = run(argv, hardware(gpus=amd), hwaccel="none")
    assert r.argv == argv[:-3] + ["/dev/dri/renderD130", "-hwaccel_device:0", "vaapi"]
