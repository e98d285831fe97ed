import pytest

from clusterplex.core import args, capabilities
from testbed.fixtures import load_argv as fixture


@pytest.mark.parametrize("name,decode,encode,hw,heavy,eae,size", [
    ("F1", {"h264"}, {"h264"}, set(), False, False, (720, 404)),
    ("F2", {"h264"}, {"h264"}, set(), False, False, (480, 240)),
    ("F3", set(), set(), set(), False, False, (0, 0)),         # a remux: the HEVC hint is copied, not decoded
    ("F4", {"av1"}, {"hevc"}, {"av1:vaapi:decode", "hevc:vaapi:encode"}, True, True, (1280, 720)),
    ("F5", set(), set(), set(), False, False, (0, 0)),
    ("F6", set(), set(), set(), False, False, (0, 0)),
])
def test_needs_of_each_fixture(name, decode, encode, hw, heavy, eae, size):
    n = capabilities.needs(fixture(name))
    assert n.decode == decode and n.encode == encode and n.hw_required == hw
    assert n.heavy is heavy and n.eae is eae and (n.width, n.height) == size


def test_4k_h264_is_heavy_and_cuvid_decoder_needs_nvdec():
    n = capabilities.needs(["-codec:0", "h264_cuvid", "-i", "x", "-vf", "scale=3840:2160", "-codec:0", "h264_nvenc",
                            "o.ts"])
    assert n.heavy and n.hw_required == {"h264:nvdec:decode", "h264:nvenc:encode"}


def test_fit_and_missing():
    n = capabilities.needs(fixture("F4"))     # VAAPI and an EAE audio decoder
    assert capabilities.missing(n, ["av1:vaapi:decode"]) == ["eae", "hevc:vaapi:encode"]
    assert capabilities.missing(n, ["av1:vaapi:decode", "hevc:vaapi:encode", "eae"]) == []
    assert capabilities.hardware_fit(n, ["av1:vaapi:decode"], True) == (0, "av1 decode in hardware (vaapi)")
    assert capabilities.hardware_fit(capabilities.needs(fixture("F1")), [], True)[0] == 1


@pytest.mark.parametrize("name", ["F1", "F2", "F3", "F4", "F5", "F6"])
def test_needs_reads_a_parsed_argv_like_the_list(name):
    a, b = capabilities.needs(fixture(name)), capabilities.needs(args.parse(fixture(name)))
    assert (a.decode, a.encode, a.hw_required, a.eae, a.width, a.height) == \
        (b.decode, b.encode, b.hw_required, b.eae, b.width, b.height)


def test_decoder_hints_are_read_before_the_first_input_only():
    n = capabilities.needs(["-hwaccel", "cuda", "-codec:0", "hevc", "-i", "a.mkv", "-codec:0", "h264", "-i", "b.mkv",
                            "-codec:0", "libx264", "o.ts"])
    assert n.decode == {"hevc"} and n.hw_required == {"hevc:nvdec:decode"}
    assert n.encode == {"h264"}               # after the first input, a codec option names an encoder


@pytest.mark.parametrize("hint,codec,hw", [
    ("libdav1d", "av1", None), ("av1", "av1", None), ("libaom-av1", "av1", None), ("h264", "h264", None),
    ("hevc", "hevc", None), ("vp9", "vp9", None), ("libvpx-vp9", "vp9", None), ("libvpx", "vp8", None),
    ("mpeg2video", "mpeg2video", None), ("mpeg4", "mpeg4", None), ("vc1", "vc1", None),
    ("msmpeg4v3", "msmpeg4v3", None), ("wmv3", "wmv3", None), ("h264_cuvid", "h264", "h264:nvdec:decode"),
    ("av1_cuvid", "av1", "av1:nvdec:decode"), ("mpeg2_cuvid", "mpeg2video", "mpeg2video:nvdec:decode"),
    ("vc1_qsv", "vc1", "vc1:qsv:decode"), ("hevc_qsv", "hevc", "hevc:qsv:decode"),
])
@pytest.mark.parametrize("opt", ["-codec:0", "-codec:v"])
def test_every_decoder_name_plex_writes_maps_to_its_codec(hint, codec, hw, opt):
    n = capabilities.needs([opt, hint, "-i", "/m/x.mkv", "-codec:0", "libx264", "o.ts"])
    assert n.decode == {codec} and n.hw_required == ({hw} if hw else set())
    assert n.heavy == (codec in ("hevc", "av1"))


def test_software_av1_decode_is_heavy_and_prefers_a_hardware_av1_decoder():
    n = capabilities.needs(["-codec:0", "libdav1d", "-i", "/m/x.mkv", "-codec:0", "libx264", "o.ts"])
    assert n.heavy and not n.hw_required
    assert capabilities.hardware_fit(n, ["av1:vaapi:decode"], True) == (0, "av1 decode in hardware (vaapi)")
    assert capabilities.hardware_fit(n, ["hevc:vaapi:decode"], True)[0] == 1


@pytest.mark.parametrize("tail", [["-map", "0:0", "-codec:0", "copy", "o.ts"],
                                  ["-map", "0:v:0", "-codec:v", "copy", "o.ts"]])
def test_a_remux_decodes_nothing(tail):
    n = capabilities.needs(["-codec:0", "hevc", "-hwaccel:0", "vaapi", "-i", "/m/x.mkv"] + tail)
    assert not n.heavy and not n.decode and n.copied == {"hevc"} and not n.hw_required
    # the same input transcoded is heavy again
    n = capabilities.needs(["-codec:0", "hevc", "-i", "/m/x.mkv", "-map", "0:0", "-codec:0", "libx264", "o.ts"])
    assert n.heavy and n.decode == {"hevc"}


@pytest.mark.parametrize("graph,what", [
    ("[0:0]subtitles=/t/s.srt[0]", "burn_in"), ("[0:0]inlineass=font_scale=1.0[0];[0]scale=w=1280:h=720[1]", "burn_in"),
    ("[0:0]tonemap_vaapi=format=nv12[0]", "tonemap"), ("[0:0]zscale=t=linear:npl=100,format=gbrpf32le,"
                                                     "tonemap=hable,zscale=p=bt709:t=bt709:m=bt709[0]", "tonemap"),
    ("[0:0]hwmap=derive_device=opencl[1];[1]tonemap_opencl=tonemap=hable[2]", "tonemap"),
])
def test_burn_in_and_tone_mapping_are_heavy(graph, what):
    n = capabilities.needs(["-codec:0", "h264", "-i", "/m/x.mkv", "-filter_complex", graph, "-map", "[0]",
                            "-codec:0", "libx264", "o.ts"])
    assert getattr(n, what) and n.heavy
    light = capabilities.needs(["-codec:0", "h264", "-i", "/m/x.mkv", "-filter_complex", "[0:0]zscale=w=1280:h=720[0]",
                                "-map", "[0]", "-codec:0", "libx264", "o.ts"])
    assert not light.heavy and not light.tonemap and not light.burn_in
