"""clusterplex.core.resume: where a new transcoder picks up a dead worker's segmented job."""
import copy

import pytest

from clusterplex.core import args, resume
from testbed.fixtures import load_argv


def dash(rep, numbers, suffix=""):
    return [f"chunk-stream{rep}-{n:05d}.m4s{suffix}" for n in numbers]


def media(numbers):
    return [f"media-{n:05d}.ts" for n in numbers]


def value_positions(argv, opt):
    """Positions of the values of every exact ``opt`` in argv."""
    return [i + 1 for i, a in enumerate(argv[:-1]) if a == opt]


def expected(argv, *, ss=None, start_opt=None, start=None, start_pos=None, insert_ss=None):
    """The original argv with exactly the documented edits, built independently of resume.py."""
    out = list(argv)
    for i in value_positions(argv, "-ss"):
        out[i] = ss
    if start_pos is not None:
        out[start_pos] = str(start)
    if insert_ss is not None:       # before every -i, as PMS seeks every input (from the end: positions stay valid)
        for i in reversed([i for i, a in enumerate(argv) if a == "-i"]):
            out[i:i] = ["-ss", insert_ss]
    return out


F1_INIT = ["init-stream0.m4s", "init-stream1.m4s"]

# (fixture, listing, segment, seconds, ss string, reason fragment)
RESUMED = [
    # DASH F1: -seg_duration 3, -skip_to_segment 1, no -ss: -ss = (N - 1) * 3, inserted before -i
    ("F1", F1_INIT + dash(0, range(1, 15)) + dash(1, range(1, 15)), 15, 42.0, "42",
     "resume DASH at segment 15 (-ss 42): chunk-stream0-00014.m4s was the last segment complete in all 2 streams"),
    # audio (stream 1) two segments behind video: the lower one decides
    ("F1", F1_INIT + dash(0, range(1, 15)) + dash(1, range(1, 13)), 13, 36.0, "36", "chunk-stream0-00012.m4s"),
    # in-progress .tmp files never count, even when the other stream has that number complete
    ("F1", F1_INIT + dash(0, range(1, 9)) + dash(1, range(1, 8)) + dash(1, [8], ".tmp") + dash(0, [9], ".tmp"),
     8, 21.0, "21", "segment 8 (-ss 21)"),
    # a representation that only shows its init segment (or a .tmp) has no complete segment
    ("F1", ["init-stream0.m4s"] + dash(0, range(1, 4)) + dash(1, [1], ".tmp"), 1, 0.0, None, None),
    # unrelated files are ignored
    ("F1", ["header", "init-stream0.m4s", "chunk-stream0-00003.mp4", "chunk-stream0-3.m4s.bak"]
     + dash(0, range(1, 4)) + dash(1, range(1, 4)), 4, 9.0, "9", "segment 4"),
    # HLS F2: -segment_time 8, start 28, -ss 224 on both inputs: rewrite the highest (maybe cut) segment
    ("F2", ["header", "temp-0.srt"] + media(range(28, 32)), 31, 248.0, "248",
     "resume HLS at segment 31 (-ss 248): media-00031.ts is the last segment written and may be incomplete"),
    ("F2", media([28, 29]), 29, 232.0, "232", "segment 29 (-ss 232)"),
    # DASH F3: -seg_duration 5; the subtitle side output keeps its own options
    ("F3", F1_INIT + dash(0, range(1, 8)) + dash(1, range(1, 8)) + ["sub-header", "sub-chunk-00000"],
     8, 35.0, "35", "side output -f segment 'sub-chunk-%05d' left unchanged"),
]


@pytest.mark.parametrize("name,names,segment,seconds,ss,fragment", RESUMED)
def test_resume(name, names, segment, seconds, ss, fragment):
    argv = load_argv(name)
    before = copy.deepcopy(argv)
    names_before = list(names)
    p = resume.plan(argv, names)
    assert argv == before and names == names_before          # inputs never mutated
    assert p.segment == segment
    assert p.seconds == seconds
    if fragment is None:                                      # nothing to skip: original arguments
        assert p.argv == argv and p.argv is not argv
        assert "arguments unchanged" in p.reason
        return
    assert fragment in p.reason
    if name == "F2":
        want = expected(argv, ss=ss, start=segment,
                        start_pos=value_positions(argv, "-segment_start_number")[0])
    else:
        want = expected(argv, start=segment, start_pos=value_positions(argv, "-skip_to_segment")[0],
                        insert_ss=ss)
    assert len(p.argv) == len(want)
    for i, (got, exp) in enumerate(zip(p.argv, want)):
        assert got == exp, f"argv[{i}]: {got!r} != {exp!r}"


def test_f2_edits_exactly_three_values_and_both_inputs():
    argv = load_argv("F2")
    p = resume.plan(argv, media(range(28, 32)))
    changed = [(i, a, b) for i, (a, b) in enumerate(zip(argv, p.argv)) if a != b]
    assert len(p.argv) == len(argv)
    assert changed == [(5, "224", "248"), (13, "224", "248"), (77, "28", "31")]
    assert argv[4] == argv[12] == "-ss" and argv[76] == "-segment_start_number"
    # the sidecar subtitle input (second -i) is seeked like the main input
    assert p.argv[12:14] == ["-ss", "248"] and p.argv[18] == "-i" and p.argv[19].endswith("/temp-0.srt")


def test_f1_inserts_ss_before_first_input_only():
    argv = load_argv("F1")
    p = resume.plan(argv, dash(0, range(1, 15)) + dash(1, range(1, 15)))
    i = argv.index("-i")
    assert p.argv[:i] == argv[:i]
    assert p.argv[i:i + 2] == ["-ss", "42"]
    assert p.argv[i + 2:] == resume_expected_tail(argv, i)
    # global options after the output name keep their relative position
    assert p.argv[p.argv.index("dash", p.argv.index("-f") + 2) + 1:] == argv[argv.index("dash", argv.index("-f") + 2) + 1:]


def resume_expected_tail(argv, i):
    tail = argv[i:]
    k = tail.index("-skip_to_segment") + 1
    return tail[:k] + ["15"] + tail[k + 1:]


def test_f3_subtitle_side_output_untouched_and_sidecar_seeked_like_the_video():
    argv = load_argv("F3")
    p = resume.plan(argv, dash(0, range(1, 8)) + dash(1, range(1, 8)))
    side = argv.index("dash", argv.index("-manifest_name")) + 1
    assert p.argv[side + 4:] == argv[side:]                   # sub-chunk output options, shifted by two -ss pairs
    inputs = [i for i, a in enumerate(p.argv) if a == "-i"]
    assert [p.argv[i + 1] for i in inputs] == [argv[i + 1] for i, a in enumerate(argv) if a == "-i"]
    assert inputs[1] and p.argv[inputs[1] + 1].endswith("/temp-0.srt")
    for i in inputs:                                           # PMS seeks every input: the sidecar too (F2 shows it)
        assert p.argv[i - 2:i] == ["-ss", "35"]
    assert p.argv[p.argv.index("-segment_start_number") + 1] == "0"
    assert "restarts at 0" in p.reason and "all 2 inputs seeked" in p.reason


def test_an_input_without_a_seek_is_seeked_by_the_skipped_time():
    """Mixed: the video had -ss 224 (shifted), a sidecar had none (it gets the skipped span, not 0)."""
    argv = load_argv("F2")
    k = [i for i, a in enumerate(argv) if a == "-ss"][1]
    mixed = argv[:k] + argv[k + 2:]                            # drop the sidecar's -ss 224
    p = resume.plan(mixed, media(range(28, 32)))
    inputs = [i for i, a in enumerate(p.argv) if a == "-i"]
    assert p.argv[inputs[1] - 2:inputs[1]] == ["-ss", "24"]     # (31 - 28) * 8
    assert p.argv[p.argv.index("-ss") + 1] == "248" and p.seconds == 248.0


@pytest.mark.parametrize("name,start,seconds", [("F1", 1, 0.0), ("F2", 28, 224.0), ("F3", 1, 0.0)])
@pytest.mark.parametrize("names", [[], ["header", "init-stream0.m4s", "temp-0.srt"],
                                   dash(0, [1], ".tmp"), media([1, 2, 27])])
def test_no_segments_yet_keeps_argv(name, start, seconds, names):
    argv = load_argv(name)
    # media-00027.ts etc.: leftovers below F2's -segment_start_number 28 do not move the start
    p = resume.plan(argv, names)
    assert p.argv == argv and p.argv is not argv
    assert (p.segment, p.seconds) == (start, seconds)
    assert "from the beginning" in p.reason and "arguments unchanged" in p.reason


def test_hls_at_start_number_rewrites_it_without_change():
    argv = load_argv("F2")
    p = resume.plan(argv, media([28]))
    assert p.argv == argv and p.segment == 28 and p.seconds == 224.0
    assert "media-00028.ts" in p.reason


def test_dash_leftovers_below_skip_to_segment_are_ignored():
    argv = load_argv("F1")
    argv[argv.index("-skip_to_segment") + 1] = "20"
    i = argv.index("-i")
    argv[i:i] = ["-ss", "57"]                                 # 57 = (20 - 1) * 3, as PMS writes a seek
    p = resume.plan(argv, dash(0, range(1, 10)) + dash(1, range(1, 10)))
    assert p.argv == argv and p.segment == 20 and p.seconds == 57.0
    p = resume.plan(argv, dash(0, range(1, 26)) + dash(1, range(1, 24)))
    assert (p.segment, p.seconds) == (24, 69.0)               # 57 + (24 - 20) * 3
    assert p.argv[i:i + 2] == ["-ss", "69"]
    assert p.argv[p.argv.index("-skip_to_segment") + 1] == "24"
    assert len(p.argv) == len(argv)


@pytest.mark.parametrize("t0,seg,n,want", [
    ("224", "8", 31, "248"),
    ("224.5", "8", 31, "248.5"),
    ("0.1", "2.5", 30, "5.1"),                                # exact decimal, no float noise
    ("00:03:44", "8", 30, "240"),                             # ffmpeg's HH:MM:SS syntax is read too
    ("224", "0.2", 29, "224.2"),
])
def test_seek_arithmetic_is_exact(t0, seg, n, want):
    argv = load_argv("F2")
    for i in value_positions(argv, "-ss"):
        argv[i] = t0
    argv[argv.index("-segment_time") + 1] = seg
    p = resume.plan(argv, media(range(28, n + 1)))
    assert [p.argv[i] for i in value_positions(argv, "-ss")] == [want, want]
    assert p.seconds == float(want)


@pytest.mark.parametrize("name", ["F4", "F5"])
def test_not_segmented(name):
    argv = load_argv(name)
    p = resume.plan(argv, ["Example.mp4.17581", "chunk-stream0-00001.m4s", "media-00001.ts"])
    assert p.argv is None and p.segment is None and p.seconds is None
    assert p.reason == "not a segmented stream: cannot resume, start again"


def test_network_input_is_not_resumed():
    p = resume.plan(load_argv("F6"), media(range(0, 5)))
    assert p.argv is None and "network stream" in p.reason


def test_global_options_position_independent():
    """2023 order (globals after the output) and 2026 order (before it) give the same edits."""
    argv = load_argv("F1")
    tail = argv[argv.index("-start_at_zero"):]
    i = argv.index("-i") + 2
    reordered = argv[:i] + tail + argv[i:argv.index("-start_at_zero")]
    names = dash(0, range(1, 15)) + dash(1, range(1, 15))
    a, b = resume.plan(argv, names), resume.plan(reordered, names)
    assert (a.segment, a.seconds) == (b.segment, b.seconds) == (15, 42.0)
    j = argv.index("-i")
    assert b.argv == reordered[:j] + ["-ss", "42"] + resume_expected_tail(reordered, j)


def test_missing_start_option_is_added_to_the_main_output():
    argv = load_argv("F1")
    k = argv.index("-skip_to_segment")
    del argv[k:k + 2]
    p = resume.plan(argv, dash(0, range(1, 4)) + dash(1, range(1, 4)))
    out = p.argv.index("dash", p.argv.index("-f") + 2)
    assert p.argv[out - 2:out + 1] == ["-skip_to_segment", "4", "dash"]
    assert (p.segment, p.seconds) == (4, 9.0)


def test_format_seconds():
    assert [resume.format_seconds(v) for v in ("42", "42.000", "7.50", "1E+3", "0")] == ["42", "42", "7.5", "1000", "0"]


@pytest.mark.parametrize("name,names,segment,seconds,ss,fragment", RESUMED)
def test_a_parsed_argv_is_planned_like_the_list(name, names, segment, seconds, ss, fragment):
    argv = load_argv(name)
    assert resume.plan(args.parse(argv), names) == resume.plan(argv, names)
