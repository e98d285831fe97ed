"""Every real PMS command line (tests/data/plex-argv-corpus and the six captures of tests/data/plex-argv) through
what ClusterPlex does with a job: needs, the local rules, wire validation, the worker rewrite in every hwaccel mode,
and resume. Table-driven by each entry's `labels` (the six captures are labelled here: their files are bare argvs)."""

import json
import re
from pathlib import Path

import pytest

from clusterplex.core import capabilities, policy, protocol, resume, shape
from clusterplex.worker import rewrite as rw
from testbed import fixtures

CORPUS = Path(__file__).resolve().parent.parent / "data" / "plex-argv-corpus"
CWD = "/transcode/Transcode/Sessions/plex-transcode-sesskey1-00000000-0000-4000-8000-000000000001"
FIXTURE_LABELS = {
    "F1": ["h264", "decoder hint", "dash"],
    "F2": ["h264", "decoder hint", "seek", "subtitles", "sidecar", "hls"],
    "F3": ["hevc", "decoder hint", "remux", "subtitles", "sidecar", "dash"],
    "F4": ["av1", "decoder hint", "hardware", "vaapi", "va driver", "eae", "optimize"],
    "F5": ["audio", "detection"],
    "F6": ["live tv", "remux", "hls"],
}
LABELS = {"h264", "hevc", "av1", "decoder hint", "hardware", "vaapi", "nvdec", "va driver", "remux", "stdout", "eae",
          "seek", "dash", "hls", "live tv", "tuner", "thumbnail", "4k/hdr", "tonemap", "subtitles", "burn-in",
          "sidecar", "audio", "sync", "detection", "optimize"}
VIDEO = ("h264", "hevc", "av1")


def cases():
    out = [(p.stem[:3], json.loads(p.read_text())) for p in sorted(CORPUS.glob("*.json"))]
    for name in fixtures.fixture_names():
        out.append((name[:2], {"argv": fixtures.load_argv(name), "cwd": CWD, "labels": FIXTURE_LABELS[name[:2]]}))
    return out


CASES = cases()
IDS = [n for n, _ in CASES]


def labelled(*labels):
    return [(n, e) for n, e in CASES if set(labels) <= set(e["labels"])]


def test_every_entry_is_labelled_from_the_vocabulary():
    for name, e in CASES:
        assert e["labels"] and set(e["labels"]) <= LABELS, (name, set(e["labels"]) - LABELS)
    for word in ("remux", "thumbnail", "tonemap", "burn-in", "va driver", "seek", "sidecar", "eae", "live tv", "av1"):
        assert labelled(word), word


@pytest.mark.parametrize("name,entry", CASES, ids=IDS)
def test_needs_follow_the_labels(name, entry):
    labels, n = set(entry["labels"]), capabilities.needs(entry["argv"])
    for codec in VIDEO:
        assert (codec in n.decode | n.copied) == (codec in labels), (codec, n)
    if "remux" in labels:        # nothing is decoded: light, and no hardware decode asked for
        assert not n.decode and not n.heavy and not any(c.endswith(":decode") for c in n.hw_required), n
    if "av1" in labels:
        assert "av1" in n.decode and n.heavy
    assert n.tonemap == ("tonemap" in labels) and n.burn_in == ("burn-in" in labels)
    if labels & {"tonemap", "burn-in", "hevc", "av1", "4k/hdr"} - {"remux"} and "remux" not in labels:
        assert n.heavy, n
    assert n.eae == ("eae" in labels)
    assert bool(n.va_driver) == ("va driver" in labels)
    assert any(":nvdec:" in c for c in n.hw_required) == ("nvdec" in labels)


@pytest.mark.parametrize("name,entry", labelled("va driver"), ids=[n for n, _ in labelled("va driver")])
def test_a_pinned_va_driver_goes_only_to_a_gpu_of_its_vendor(name, entry):
    n = capabilities.needs(entry["argv"])
    have = sorted(n.hw_required) + ["eae"]
    assert capabilities.missing(n, have, frozenset({"intel"})) == []
    assert capabilities.missing(n, have, frozenset({"amd"})) == [f"va-driver:{n.va_driver} (intel GPU)"]
    assert capabilities.missing(n, have) == []           # no vendor report: only the codecs count


@pytest.mark.parametrize("name,entry", CASES, ids=IDS)
def test_local_rules_follow_the_labels(name, entry):
    why = policy.must_run_local(entry["argv"], entry["cwd"])
    if "detection" in entry["labels"]:
        assert "detection" in why
    elif "thumbnail" in entry["labels"]:
        assert why.startswith("local_thumbnails")
        assert policy.must_run_local(entry["argv"], entry["cwd"], thumbnails=False) is None
    else:
        assert why is None


@pytest.mark.parametrize("name,entry", CASES, ids=IDS)
def test_every_entry_passes_wire_validation(name, entry):
    job = protocol.check_job({"id": "0123456789abcdef", "argv": entry["argv"], "cwd": entry["cwd"], "env": {}})
    assert job["argv"] == entry["argv"]


def hardware(node="/dev/dri/renderD129", vendor="intel"):
    caps = [f"{c}:{a}:{d}" for c in ("h264", "hevc", "av1") for a in ("vaapi", "qsv") for d in ("encode", "decode")]
    caps += ["h264:nvenc:encode", "hevc:nvenc:encode", "h264:nvdec:decode", "hevc:nvdec:decode", "av1:nvdec:decode"]
    return {"cpu": {"arch": "x86_64", "model": "test"}, "hw_codecs": caps,
            "gpus": [{"vendor": vendor, "driver": "i915", "render_node": node},
                     {"vendor": "nvidia", "driver": "nvidia", "render_node": "/dev/dri/renderD130"}],
            "transcoder": {"plex_arch": "linux-x86_64-standard"}}


@pytest.mark.parametrize("mode", rw.HWACCEL_MODES)
@pytest.mark.parametrize("name,entry", CASES, ids=IDS)
def test_every_rewrite_stays_a_plex_shaped_job_on_this_workers_device(name, entry, mode):
    r = rw.rewrite({"argv": entry["argv"], "cwd": entry["cwd"], "env": {}}, {"hwaccel": mode}, hardware())
    assert shape.check(r.argv, r.cwd) is None
    nodes = set(re.findall(r"/dev/dri/renderD\d+", " ".join(r.argv)))
    assert nodes <= {"/dev/dri/renderD129", "/dev/dri/renderD130"}, nodes    # never the Plex host's renderD128
    if "va driver" in entry["labels"]:
        init = r.argv[r.argv.index("-init_hw_device") + 1]
        assert init.startswith("vaapi=vaapi:/dev/dri/renderD129,driver=")


@pytest.mark.parametrize("name,entry", labelled("decoder hint"), ids=[n for n, _ in labelled("decoder hint")])
def test_the_rewrite_adds_hardware_decode_for_every_hinted_decoder_name(name, entry):
    """The decoder name PMS writes for a software AV1 decode (libdav1d) gets AV1 hardware decode like hevc."""
    argv = ["libdav1d" if a in VIDEO and prev.startswith("-codec:") and i < entry["argv"].index("-i") else a
            for i, (prev, a) in enumerate(zip([""] + entry["argv"], entry["argv"]))]
    r = rw.rewrite({"argv": argv, "cwd": entry["cwd"], "env": {}}, {"hwaccel": "vaapi"}, hardware())
    assert capabilities.needs(argv).decode <= {"av1"}
    if any(n.startswith("stream") and "h264_vaapi" in n for n in r.notes) \
            and not any(a.startswith("-hwaccel") for a in entry["argv"]):     # swapped, and Plex chose no decode
        assert any(n.startswith("hardware decode of input 0 (av1)") for n in r.notes), r.notes


def listing():
    return ["init-stream0.m4s", "init-stream1.m4s"] + [f"chunk-stream{r}-{k:05d}.m4s" for r in (0, 1)
                                                       for k in range(1, 10)] + [f"media-{k:05d}.ts" for k in range(50)]


@pytest.mark.parametrize("name,entry", CASES, ids=IDS)
def test_resume_seeks_every_input_alike(name, entry):
    argv = entry["argv"]
    p = resume.plan(argv, listing())
    if "live tv" in entry["labels"]:
        assert p.argv is None and "network stream" in p.reason
        return
    if p.argv is None or p.argv == argv:
        assert not {"dash", "hls"} & set(entry["labels"]) or p.argv == argv, p.reason
        return
    inputs = [i for i, a in enumerate(p.argv) if a == "-i"]
    seeks = []
    for i in inputs:            # the input's own options run from the previous input (or the start) to its -i
        own = p.argv[(max([j for j in inputs if j < i], default=-2) + 2):i]
        assert "-ss" in own, (name, own)
        seeks.append(own[own.index("-ss") + 1])
    assert len(set(seeks)) == 1, seeks                       # PMS seeks every input to the same time
    assert float(seeks[0]) == p.seconds
