from clusterplex.common import discovery
from clusterplex.worker import hardware
from clusterplex.core import protocol

FULL_HW = {"cpu": {"model": "x" * 300, "threads": 64, "arch": "x86_64", "benchmark": 64000.0,
                   "benchmark_per_thread": 1000.0},
           "memory": 256 << 30,
           "gpus": [{"vendor": "intel", "driver": "i915"}, {"vendor": "nvidia", "driver": "nvidia"}] * 4,
           "hw_codecs": [f"{c}:{a}:{d}" for c in ("h264", "hevc", "av1", "vp9")
                         for a in ("vaapi", "qsv", "nvdec", "nvenc") for d in ("decode", "encode")],
           "vaapi": {}, "transcoder": {}}


def wire_size(props):
    return sum(1 + len(k.encode()) + 1 + len(v.encode()) for k, v in props.items())


def test_worker_txt_fits_dns_limits_and_never_carries_the_secret():
    secret = b"s" * 40
    status = {"id": "a1b2c3d4e5f6", "name": "n" * 400, "proto": 1, "state": "ready", "max_jobs": 8}
    txt = discovery.worker_txt(status, protocol.secret_fingerprint(secret), hardware.summary(FULL_HW))
    assert all(1 + len(k) + 1 + len(v.encode()) <= 256 for k, v in txt.items())
    assert wire_size(txt) <= discovery.MAX_TXT_TOTAL
    assert txt["v"] == discovery.TXT_SCHEMA and txt["fp"] == protocol.secret_fingerprint(secret)
    assert "s" * 12 not in "".join(txt.values())
    assert set(hardware.parse_hw_summary(txt["hw"])) <= set(FULL_HW["hw_codecs"])
    assert discovery.decode_txt({k.encode(): v.encode() for k, v in txt.items()}) == txt


def test_txt_truncation_keeps_utf8_valid():
    txt = discovery.encode_txt({"name": "é" * 300})
    assert len(txt["name"].encode()) <= 255 - len("name") - 1
    txt["name"].encode("utf-8")


def test_decode_txt_tolerates_garbage():
    assert discovery.decode_txt({b"ok": b"1", b"bad": b"\xff\xfe", b"none": None}) == {"ok": "1", "none": ""}


def test_instance_names():
    assert discovery.instance("worker1-abc._cplex-worker._tcp.local.") == "worker1-abc"
    assert discovery.service_label("my box/1") == "my box-1"
    assert len(discovery.WORKER_TYPE.split(".")[0]) - 1 <= 15     # RFC 6335 service name length
