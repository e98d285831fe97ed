import pytest

from clusterplex.core import args, capabilities
from testbed.fixtures import load_argv as fixture


@pytest.mark.parametrize("name,decode,encode,hw,heavy,eae,size", [
    ("F1", {"h264"}, {"h264"}, set(), False, False, (720, 404)),
    ("F2", {"h264"}, {"h264"}, set(), False, False, (480, 240)),
    ("F3", {"hevc"}, set(), set(), True, False, (0, 0)),
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
