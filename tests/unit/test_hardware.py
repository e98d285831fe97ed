"""clusterplex.worker.hardware: parsers, codec rules, codec version scan, benchmark cache, TXT summary,
and detect() on recorded machines (tests/data/hardware, see its README) and on this machine."""

import json
import os
import platform
import random
from pathlib import Path

import psutil
import pytest

from clusterplex.worker import hardware as hw

DATA = Path(__file__).resolve().parent.parent / "data" / "hardware"
MACHINES = DATA / "machines"
TOOLS = DATA / "tools"
RECORDINGS = json.loads((TOOLS / "recordings.json").read_text())


def tool_output(name):
    return (TOOLS / RECORDINGS[name]["stdout"]).read_text()


class FakeRun:
    """run(argv) answering from the recordings whose argv matches exactly; (127, "") otherwise."""

    def __init__(self, *names):
        self.names = names
        self.calls = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        for name in self.names:
            if RECORDINGS[name]["argv"] == list(argv):
                return RECORDINGS[name]["rc"], tool_output(name)
        return 127, ""


def all_tools(name):
    return "/usr/bin/" + name


def no_tools(name):
    return None


def fake_bench(threads):
    return {"per_thread": 1000, "score": 1000 * threads, "threads": threads}


def caps(*specs):
    """caps("h264 hevc:vaapi:de") -> {"h264:vaapi:decode", "h264:vaapi:encode", ...}"""
    out = set()
    for spec in specs:
        codecs, api, dirs = spec.split(":")
        for c in codecs.split():
            for d in dirs:
                out.add(f"{c}:{api}:{'decode' if d == 'd' else 'encode'}")
    return out


INTEL_IHD = caps("h264 hevc vp9 av1:vaapi:de", "h264 hevc vp9 av1:qsv:de")
AMD_RX6600 = caps("h264 hevc:vaapi:de", "vp9 av1:vaapi:d")
RTX4070 = caps("h264 hevc vp9 av1:nvdec:d", "h264 hevc av1:nvenc:e")
GTX1660 = caps("h264 hevc vp9:nvdec:d", "h264 hevc:nvenc:e")
H100 = caps("h264 hevc vp9 av1:nvdec:d")

# --- /proc/cpuinfo, /proc/meminfo ---------------------------------------------------------------


@pytest.mark.parametrize("path, model, threads, flag", [
    ("machines/intel-igpu/proc/cpuinfo", "Intel(R) Core(TM) Ultra 7 155H", 22, "avx2"),
    ("machines/amd-gpu/proc/cpuinfo", "AMD Ryzen 5 5600X 6-Core Processor", 12, "sha_ni"),
    ("machines/nvidia-gpu/proc/cpuinfo", "AMD Ryzen 7 7700X 8-Core Processor", 16, "avx512f"),
    ("machines/nvidia-h100/proc/cpuinfo", "Intel(R) Xeon(R) Platinum 8480+", 32, "amx_tile"),
    ("machines/none/proc/cpuinfo", "Intel Xeon Processor (Cascadelake)", 4, "hypervisor"),
    ("cpuinfo/rpi4-aarch64.txt", "Raspberry Pi 4 Model B Rev 1.4", 4, "asimd"),
    ("cpuinfo/rpi3-armv7.txt", "Raspberry Pi 3 Model B Plus Rev 1.3", 4, "neon"),
    ("cpuinfo/ampere-altra-aarch64.txt", "Neoverse-N1", 4, "atomics"),
    ("cpuinfo/rk3588-aarch64.txt", "Cortex-A55 + Cortex-A76", 8, "asimddp"),
])
def test_parse_cpuinfo(path, model, threads, flag):
    info = hw.parse_cpuinfo((DATA / path).read_text())
    assert (info["model"], info["threads"]) == (model, threads)
    assert flag in info["flags"] and info["flags"] == sorted(set(info["flags"]))


@pytest.mark.parametrize("text, model, threads", [
    ("", "unknown", 0),
    ("processor\t: 0\nHardware\t: Allwinner sun50i\n", "Allwinner sun50i", 1),
    ("processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\n", "ARMv7 Processor rev 5 (v7l)", 1),
    ("processor\t: 0\nCPU implementer\t: 0x61\nCPU part\t: 0x22\n", "ARM implementer 0x61 part 0x22", 1),
    ("processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\n", "POWER9 (architected), altivec supported", 1),
])
def test_parse_cpuinfo_fallbacks(text, model, threads):
    info = hw.parse_cpuinfo(text)
    assert (info["model"], info["threads"]) == (model, threads)


def test_meminfo_and_memory():
    assert hw.parse_meminfo("MemTotal:       32471016 kB\nMemFree: 1 kB\n") == 32471016 * 1024
    assert hw.parse_meminfo("nothing") is None
    assert hw.memory_bytes(str(MACHINES / "amd-gpu" / "proc")) == 32801204 * 1024
    assert hw.memory_bytes() == psutil.virtual_memory().total
    assert hw.cpu_arch() == platform.machine()


# --- sysfs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("machine, expected", [
    ("intel-igpu", [("/dev/dri/renderD128", "intel", "i915", "8086:7d55", "0000:00:02.0", None)]),
    ("amd-gpu", [("/dev/dri/renderD128", "amd", "amdgpu", "1002:73ff", "0000:03:00.0", 8176)]),
    ("nvidia-gpu", [("/dev/dri/renderD128", "nvidia", "nvidia", "10de:2786", "0000:01:00.0", None)]),
    ("intel-nvidia", [("/dev/dri/renderD128", "intel", "i915", "8086:7d55", "0000:00:02.0", None),
                      ("/dev/dri/renderD129", "nvidia", "nvidia", "10de:2184", "0000:01:00.0", None)]),
    ("none", []),
    ("nvidia-h100", []),
])
def test_scan_drm_recorded_trees(machine, expected):
    gpus = hw.scan_drm(str(MACHINES / machine / "sys"))
    assert [(g["render_node"], g["vendor"], g["driver"], g["pci_id"], g["pci_slot"], g["memory_mib"])
            for g in gpus] == expected
    assert all(g["name"] is None for g in gpus)


def test_scan_drm_tolerates_missing_files_and_orders_numerically(tmp_path):
    assert hw.scan_drm(str(tmp_path)) == []
    drm = tmp_path / "class" / "drm"
    # renderD129: only a uevent naming the driver; renderD130: no device at all;
    # renderD1000: a platform (non-PCI) GPU with a dangling driver link
    (drm / "renderD129" / "device").mkdir(parents=True)
    (drm / "renderD129" / "device" / "uevent").write_text("DRIVER=xe\nPCI_SLOT_NAME=0000:00:02.0\n")
    (drm / "renderD129" / "device" / "vendor").write_text("0x8086\n")
    (drm / "renderD130").mkdir()
    dev = tmp_path / "devices" / "platform" / "fb000000.gpu"
    (dev / "drm" / "renderD1000").mkdir(parents=True)
    (dev / "drm" / "renderD1000" / "device").symlink_to("../..")
    (dev / "driver").symlink_to("../../../bus/platform/drivers/panfrost")      # dangling: fine
    (drm / "renderD1000").symlink_to("../../devices/platform/fb000000.gpu/drm/renderD1000")
    (drm / "card0").mkdir()
    gpus = hw.scan_drm(str(tmp_path))
    assert [(g["render_node"], g["vendor"], g["driver"], g["pci_id"], g["pci_slot"]) for g in gpus] == [
        ("/dev/dri/renderD129", "intel", "xe", None, None),
        ("/dev/dri/renderD130", "other", None, None, None),
        ("/dev/dri/renderD1000", "other", "panfrost", None, None),
    ]


@pytest.mark.parametrize("driver, pci_vendor, vendor", [
    ("i915", None, "intel"), ("xe", 0x8086, "intel"), ("amdgpu", None, "amd"), ("radeon", None, "amd"),
    ("nvidia", None, "nvidia"), ("nouveau", None, "nvidia"), ("virtio_gpu", 0x1af4, "other"),
    (None, 0x10de, "nvidia"), (None, 0x1002, "amd"), ("vfio-pci", 0x8086, "intel"), (None, None, "other"),
])
def test_vendor_name(driver, pci_vendor, vendor):
    assert hw.vendor_name(driver, pci_vendor) == vendor


@pytest.mark.parametrize("text, slot", [
    ("00000000:2A:00.0", "0000:2a:00.0"), ("0000:01:00.0", "0000:01:00.0"), ("00000001:c1:00.1", "0001:c1:00.1"),
    ("fb000000.gpu", None), ("", None), (None, None),
])
def test_normalize_pci_slot(text, slot):
    assert hw.normalize_pci_slot(text) == slot


# --- nvidia-smi -----------------------------------------------------------------------------------

@pytest.mark.parametrize("recording, rows", [
    ("nvidia-smi-rtx4070", [(0, "NVIDIA GeForce RTX 4070", "550.54.14", 12282, "8.9", "0000:01:00.0")]),
    ("nvidia-smi-gtx1660", [(0, "NVIDIA GeForce GTX 1660", "535.183.01", 6144, "7.5", "0000:01:00.0")]),
    ("nvidia-smi-h100", [(0, "NVIDIA H100 80GB HBM3", "550.54.15", 81559, "9.0", "0000:18:00.0"),
                         (1, "NVIDIA H100 80GB HBM3", "550.54.15", 81559, "9.0", "0000:2a:00.0")]),
    ("nvidia-smi-470-fallback", [(0, "NVIDIA GeForce GTX 1050 Ti", "470.256.02", 4040, None, "0000:01:00.0")]),
    ("nvidia-smi-470-compute-cap", []),
])
def test_parse_nvidia_smi_recordings(recording, rows):
    gpus = hw.parse_nvidia_smi_csv(tool_output(recording))
    assert [(g["index"], g["name"], g["driver"], g["memory_mib"], g["compute_cap"], g["pci_bus_id"])
            for g in gpus] == rows


@pytest.mark.parametrize("text, rows", [
    ("0, NVIDIA GH200 480GB, 550.54.15, [N/A], 9.0, 00000009:01:00.0\n",
     [(0, "NVIDIA GH200 480GB", None, "9.0", "0009:01:00.0")]),
    ("0, Tesla K80, 470.82.01, 11441 MiB, [Not Supported], [N/A]\n", [(0, "Tesla K80", 11441, None, None)]),
    ("No devices were found\n", []),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", []),
    ("", []),
])
def test_parse_nvidia_smi_odd_values(text, rows):
    assert [(g["index"], g["name"], g["memory_mib"], g["compute_cap"], g["pci_bus_id"])
            for g in hw.parse_nvidia_smi_csv(text)] == rows


def test_query_nvidia_falls_back_without_compute_cap_on_old_drivers():
    run = FakeRun("nvidia-smi-470-compute-cap", "nvidia-smi-470-fallback")
    gpus = hw.query_nvidia(run)
    assert [g["name"] for g in gpus] == ["NVIDIA GeForce GTX 1050 Ti"]
    assert run.calls == [hw.NVIDIA_SMI_QUERY, hw.NVIDIA_SMI_FALLBACK_QUERY]
    assert "compute_cap" not in " ".join(hw.NVIDIA_SMI_FALLBACK_QUERY)


@pytest.mark.parametrize("names, calls, count", [
    (("nvidia-smi-h100",), 1, 2),
    ((), 1, 0),                                   # not installed: 127, not asked twice
    (("nvidia-smi-470-compute-cap",), 2, 0),      # fallback unanswered too
])
def test_query_nvidia_failures(names, calls, count):
    run = FakeRun(*names)
    assert len(hw.query_nvidia(run)) == count
    assert len(run.calls) == calls


# --- vainfo ---------------------------------------------------------------------------------------

def test_parse_vainfo_intel_ihd():
    info = hw.parse_vainfo(tool_output("vainfo-intel-ihd"))
    assert info["driver"] == "Intel iHD driver for Intel(R) Gen Graphics - 24.1.0 ()"
    assert info["profiles"]["VAProfileH264Main"] == ["VAEntrypointVLD", "VAEntrypointEncSliceLP"]
    assert info["profiles"]["VAProfileHEVCMain10"] == ["VAEntrypointVLD", "VAEntrypointEncSliceLP"]
    assert info["profiles"]["VAProfileAV1Profile0"] == ["VAEntrypointVLD", "VAEntrypointEncSliceLP"]
    assert info["profiles"]["VAProfileNone"] == ["VAEntrypointVideoProc", "VAEntrypointStats"]
    assert set(info) == {"driver", "profiles"}


def test_parse_vainfo_amd_mesa():
    info = hw.parse_vainfo(tool_output("vainfo-amd-radeonsi"))
    assert info["driver"].startswith("Mesa Gallium driver 22.3.6 for AMD Radeon RX 6600 XT")
    # the 32-character profile name leaves no space before the colon
    assert info["profiles"]["VAProfileH264ConstrainedBaseline"] == ["VAEntrypointVLD", "VAEntrypointEncSlice"]
    assert info["profiles"]["VAProfileAV1Profile0"] == ["VAEntrypointVLD"]
    assert hw.mesa_device_name(info["driver"]) == "AMD Radeon RX 6600 XT"
    assert hw.mesa_device_name("Intel iHD driver for Intel(R) Gen Graphics - 24.1.0 ()") is None


def test_parse_vainfo_plain_invocation_with_noise_and_failure():
    text = ("Trying display: wayland\nerror: XDG_RUNTIME_DIR is invalid or not set in the environment.\n"
            "Trying display: x11\nerror: can't connect to X server!\nTrying display: drm\n"
            "libva info: VA-API version 1.22.0\n"
            "vainfo: VA-API version: 1.22 (libva 2.22.0)\n"
            "vainfo: Driver version: Intel i965 driver for Intel(R) Skylake - 2.4.1\n"
            "vainfo: Supported profile and entrypoints\n"
            "      VAProfileH264Main               : VAEntrypointVLD\n"
            "      VAProfileH264Main               :\tVAEntrypointEncSlice\n")
    assert hw.parse_vainfo(text) == {"driver": "Intel i965 driver for Intel(R) Skylake - 2.4.1",
                                     "profiles": {"VAProfileH264Main": ["VAEntrypointVLD", "VAEntrypointEncSlice"]}}
    assert hw.parse_vainfo(tool_output("vainfo-fail")) == {"driver": "", "profiles": {}}
    assert hw.parse_vainfo("") == {"driver": "", "profiles": {}}


def test_query_vainfo_runs_on_the_node_and_drops_failures():
    run = FakeRun("vainfo-fail")
    assert hw.query_vainfo(run, "/dev/dri/renderD128") is None
    assert run.calls == [["vainfo", "--display", "drm", "--device", "/dev/dri/renderD128"]]
    assert hw.query_vainfo(FakeRun(), "/dev/dri/renderD128") is None


# --- codec rules ----------------------------------------------------------------------------------

def _vaapi(recording):
    return hw.parse_vainfo(tool_output(recording))


def _smi(name, cc):
    return {"index": 0, "name": name, "driver": "550.54.14", "memory_mib": 1, "compute_cap": cc, "pci_bus_id": None}


INTEL_GPU = {"vendor": "intel", "driver": "i915", "render_node": "/dev/dri/renderD128"}
XE_GPU = {"vendor": "intel", "driver": "xe", "render_node": "/dev/dri/renderD128"}
AMD_GPU = {"vendor": "amd", "driver": "amdgpu", "render_node": "/dev/dri/renderD128"}
I965 = {"driver": "Intel i965 driver for Intel(R) Skylake - 2.4.1",
        "profiles": {"VAProfileH264Main": ["VAEntrypointVLD", "VAEntrypointEncSlice"]}}


@pytest.mark.parametrize("case, gpus, vaapi, nvidia, expected", [
    ("intel i915: vaapi + the same via qsv", [INTEL_GPU], {"/dev/dri/renderD128": "vainfo-intel-ihd"}, [], INTEL_IHD),
    ("intel xe: vaapi + qsv", [XE_GPU], {"/dev/dri/renderD128": "vainfo-intel-ihd"}, [], INTEL_IHD),
    ("intel, node unknown to sysfs: vendor from the VA driver", [], {"/dev/dri/renderD128": "vainfo-intel-ihd"}, [],
     INTEL_IHD),
    ("intel on legacy i965: vaapi only", [INTEL_GPU], {"/dev/dri/renderD128": I965}, [], caps("h264:vaapi:de")),
    ("amd: vaapi only", [AMD_GPU], {"/dev/dri/renderD128": "vainfo-amd-radeonsi"}, [], AMD_RX6600),
    ("amd node answering as iHD (forced driver): still no qsv", [AMD_GPU],
     {"/dev/dri/renderD128": "vainfo-intel-ihd"}, [], caps("h264 hevc vp9 av1:vaapi:de")),
    ("RTX 4070 (8.9): av1 encode", [], {}, [_smi("NVIDIA GeForce RTX 4070", "8.9")], RTX4070),
    ("RTX 3080 (8.6): av1 decode, no av1 encode", [], {}, [_smi("NVIDIA GeForce RTX 3080", "8.6")],
     caps("h264 hevc vp9 av1:nvdec:d", "h264 hevc:nvenc:e")),
    ("GTX 1660 (7.5)", [], {}, [_smi("NVIDIA GeForce GTX 1660", "7.5")], GTX1660),
    ("H100 (9.0): decode, no encode", [], {}, [_smi("NVIDIA H100 80GB HBM3", "9.0")], H100),
    ("H200 (9.0)", [], {}, [_smi("NVIDIA H200", "9.0")], H100),
    ("GH200 (9.0)", [], {}, [_smi("NVIDIA GH200 480GB", "9.0")], H100),
    ("A100 (8.0): decode without av1, no encode", [], {}, [_smi("NVIDIA A100-SXM4-80GB", "8.0")],
     caps("h264 hevc vp9:nvdec:d")),
    ("A30 (8.0)", [], {}, [_smi("NVIDIA A30", "8.0")], caps("h264 hevc vp9:nvdec:d")),
    ("B200 (10.0): decode only", [], {}, [_smi("NVIDIA B200", "10.0")], H100),
    ("H100 named, compute_cap missing", [], {}, [_smi("NVIDIA H100 PCIe", None)], H100),
    ("RTX 5090 (12.0)", [], {}, [_smi("NVIDIA GeForce RTX 5090", "12.0")], RTX4070),
    ("L4 (8.9)", [], {}, [_smi("NVIDIA L4", "8.9")], RTX4070),
    ("A10 (8.6) has NVENC", [], {}, [_smi("NVIDIA A10", "8.6")], caps("h264 hevc vp9 av1:nvdec:d", "h264 hevc:nvenc:e")),
    ("GT 1030: no NVENC", [], {}, [_smi("NVIDIA GeForce GT 1030", "6.1")], caps("h264 hevc vp9:nvdec:d")),
    ("old driver, GTX 1050 Ti: cc inferred 6.1", [], {}, [_smi("NVIDIA GeForce GTX 1050 Ti", None)],
     caps("h264 hevc vp9:nvdec:d", "h264 hevc:nvenc:e")),
    ("GTX 750 (5.0): h264 only", [], {}, [_smi("GeForce GTX 750 Ti", "5.0")], caps("h264:nvdec:d", "h264:nvenc:e")),
    ("unknown GPU, no cc: h264 only", [], {}, [_smi("NVIDIA Graphics Device", None)],
     caps("h264:nvdec:d", "h264:nvenc:e")),
    ("intel + nvidia", [INTEL_GPU], {"/dev/dri/renderD128": "vainfo-intel-ihd"},
     [_smi("NVIDIA GeForce GTX 1660", "7.5")], INTEL_IHD | GTX1660),
    ("no tools: nothing", [INTEL_GPU, AMD_GPU], {}, [], set()),
    ("nothing at all", [], {}, [], set()),
])
def test_hw_codecs_rules(case, gpus, vaapi, nvidia, expected):
    vaapi = {node: _vaapi(v) if isinstance(v, str) else v for node, v in vaapi.items()}
    got = hw.hw_codecs(gpus, vaapi, nvidia)
    assert got == sorted(got)
    assert set(got) == expected, case


def test_vaapi_rules_need_main_profiles_and_codec_entrypoints():
    profiles = {"VAProfileHEVCMain10": ["VAEntrypointVLD", "VAEntrypointEncSlice"],   # no HEVC Main: no hevc
                "VAProfileJPEGBaseline": ["VAEntrypointVLD", "VAEntrypointEncPicture"],
                "VAProfileH264High": ["VAEntrypointFEI", "VAEntrypointStats", "VAEntrypointEncSliceLP"],
                "VAProfileVP9Profile0": ["VAEntrypointVLD"]}
    assert hw.vaapi_capabilities(profiles) == {("h264", "encode"), ("vp9", "decode")}


def test_nvenc_table():
    assert not hw.nvidia_has_nvenc(_smi("NVIDIA H100 80GB HBM3", "9.0"))
    assert not hw.nvidia_has_nvenc(_smi("NVIDIA A100-PCIE-40GB", "8.0"))
    assert not hw.nvidia_has_nvenc(_smi("NVIDIA GeForce MX450", "7.5"))
    assert hw.nvidia_has_nvenc(_smi("Tesla T4", "7.5"))
    assert hw.nvidia_has_nvenc(_smi("NVIDIA A40", "8.6"))
    assert hw.nvidia_compute_capability(_smi("Tesla V100-SXM2-16GB", None)) == (7, 0)
    assert hw.nvidia_compute_capability(_smi("whatever", "8.9")) == (8, 9)


# --- Plex's codec version -------------------------------------------------------------------------

def _binary(tmp_path, *parts, name="Plex Transcoder"):
    rnd = random.Random(7)

    def junk(n):        # binary noise with embedded strings, none of which look like a version
        return bytes(rnd.randrange(256) for _ in range(n)) + b"\x00GLIBC_2.17\x00libavcodec.so\x00" + \
            bytes(rnd.randrange(0x7f, 0x100) for _ in range(n // 4))

    data = b"\x7fELF\x02\x01\x01" + junk(3000)
    for p in parts:
        data += b"\x00" + p + b"\x00" + junk(2000)
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("parts, expected", [
    ([b"8217c1c-4578"], "8217c1c-4578"),
    ([b"c75335c-a7cfb6836f3ed63280a7eb83"], "c75335c-a7cfb6836f3ed63280a7eb83"),
    # a match at the end of a longer string counts, but a whole-string one later wins
    ([b"Codecs: 1234567-abcd", b"8217c1c-4578"], "8217c1c-4578"),
    ([b"built from 1234567-abcd"], "1234567-abcd"),
    # not the end of its string, longer hex run before it, upper case, too short: no version
    ([b"8217c1c-4578/linux", b"deadbeef8217c1c-4578", b"8217C1C-4578", b"8217c1c-457", b"x8217c1c"], None),
    ([], None),
])
def test_codec_version(tmp_path, parts, expected):
    path = _binary(tmp_path, *parts)
    assert hw.codec_version(str(path)) == expected
    assert hw.codec_version(str(path), chunk_size=997) == expected


def test_codec_version_across_chunk_boundaries(tmp_path):
    version = b"c75335c-a7cfb6836f3ed63280a7eb83"
    for pad in range(0, 70, 3):
        path = tmp_path / f"t{pad}"
        path.write_bytes(b"\x01" * pad + b"\x00tail " + b"1234567-abcd" + b"\x00" + version + b"\x00\x02")
        for chunk in (16, 31, 64):
            assert hw.codec_version(str(path), chunk_size=chunk) == version.decode(), (pad, chunk)
    (tmp_path / "end").write_bytes(b"\x00\xff8217c1c-4578")           # at the very end of the file
    assert hw.codec_version(str(tmp_path / "end"), chunk_size=5) == "8217c1c-4578"
    (tmp_path / "only").write_bytes(b"8217c1c-4578")
    assert hw.codec_version(str(tmp_path / "only")) == "8217c1c-4578"


def test_codec_version_unreadable(tmp_path):
    assert hw.codec_version(str(tmp_path / "missing")) is None
    assert hw.codec_version(str(tmp_path)) is None                     # a directory


@pytest.mark.parametrize("machine, bits, arch", [
    ("x86_64", 64, "linux-x86_64-standard"), ("AMD64", 64, "linux-x86_64-standard"),
    ("aarch64", 64, "linux-aarch64-standard"), ("arm64", 64, "linux-aarch64-standard"),
    ("aarch64", 32, "linux-armv7neon-standard"), ("armv7l", 32, "linux-armv7neon-standard"),
    ("armv8l", 32, "linux-armv7neon-standard"), ("armv6l", 32, None), ("riscv64", 64, None), ("i686", 32, None),
])
def test_plex_arch(machine, bits, arch):
    assert hw.plex_arch(machine, bits) == arch


def test_plex_arch_here():
    assert hw.plex_arch() == hw.plex_arch(platform.machine())


# --- benchmark ------------------------------------------------------------------------------------

def test_cpu_benchmark_scores():
    r = hw.cpu_benchmark(seconds=0.02, threads=3)
    assert r["threads"] == 3 and r["per_thread"] > 0 and r["score"] == 3 * r["per_thread"]
    assert 20 < r["per_thread"] < 20000


def test_cached_benchmark_writes_once_and_reuses(tmp_path):
    calls = []

    def bench():
        calls.append(1)
        return {"per_thread": 900 + len(calls), "score": 1800 + len(calls), "threads": 2}

    cache = tmp_path / "bench.json"
    key = hw.benchmark_key("AMD Ryzen 5 5600X 6-Core Processor", 12)
    assert platform.python_version() in key
    first = hw.cached_benchmark(str(cache), key, bench)
    mtime = cache.stat().st_mtime_ns
    assert hw.cached_benchmark(str(cache), key, bench) == first
    assert len(calls) == 1 and cache.stat().st_mtime_ns == mtime
    assert json.loads(cache.read_text())["entries"] == {key: first}
    other = hw.benchmark_key("AMD Ryzen 5 5600X 6-Core Processor", 6)   # thread count changed
    assert hw.cached_benchmark(str(cache), other, bench) != first and len(calls) == 2
    assert list(json.loads(cache.read_text())["entries"]) == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]     # no temporary files left


@pytest.mark.parametrize("setup", ["missing dir", "corrupt", "wrong shape", "no cache"])
def test_cached_benchmark_failures_mean_not_cached(tmp_path, setup):
    calls = []

    def bench():
        calls.append(1)
        return {"per_thread": 1000, "score": 2000, "threads": 2}

    cache = tmp_path / "bench.json"
    if setup == "missing dir":
        cache = tmp_path / "nope" / "bench.json"
    elif setup == "corrupt":
        cache.write_text("{not json")
    elif setup == "wrong shape":
        cache.write_text(json.dumps({"entries": {"k": {"score": "fast"}}}))
    path = None if setup == "no cache" else str(cache)
    assert hw.cached_benchmark(path, "k", bench) == bench()
    assert hw.cached_benchmark(path, "k", bench)["score"] == 2000
    if setup in ("corrupt", "wrong shape"):
        assert len(calls) == 2                     # rewritten by the first call, reused by the second
    else:
        assert len(calls) == 3
        assert not cache.exists()


def test_cached_benchmark_unwritable_dir(tmp_path):
    (tmp_path / "file").write_text("")
    bench = lambda: {"per_thread": 1, "score": 1, "threads": 1}      # noqa: E731
    assert hw.cached_benchmark(str(tmp_path / "file" / "b.json"), "k", bench)["score"] == 1   # parent not a dir
    if os.geteuid() != 0:                                               # root writes anywhere
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o500)
        try:
            assert hw.cached_benchmark(str(d / "b.json"), "k", bench)["score"] == 1
            assert list(d.iterdir()) == []
        finally:
            d.chmod(0o700)


# --- detect() on the recorded machines ----------------------------------------------------------

MACHINE_CASES = {
    # machine: (recordings answering run, model, threads, memory kB,
    #           [(vendor, driver, name, render_node, pci_id, memory_mib)], codecs, vaapi nodes, calls)
    "intel-igpu": (("vainfo-intel-ihd",), "Intel(R) Core(TM) Ultra 7 155H", 22, 32471016,
                   [("intel", "i915", None, "/dev/dri/renderD128", "8086:7d55", None)],
                   INTEL_IHD, ["/dev/dri/renderD128"], ["vainfo"]),
    "amd-gpu": (("vainfo-amd-radeonsi",), "AMD Ryzen 5 5600X 6-Core Processor", 12, 32801204,
                [("amd", "amdgpu", "AMD Radeon RX 6600 XT", "/dev/dri/renderD128", "1002:73ff", 8176)],
                AMD_RX6600, ["/dev/dri/renderD128"], ["vainfo"]),
    "nvidia-gpu": (("nvidia-smi-rtx4070",), "AMD Ryzen 7 7700X 8-Core Processor", 16, 65008456,
                   [("nvidia", "nvidia", "NVIDIA GeForce RTX 4070", "/dev/dri/renderD128", "10de:2786", 12282)],
                   RTX4070, [], ["nvidia-smi"]),
    "intel-nvidia": (("vainfo-intel-ihd", "nvidia-smi-gtx1660"), "Intel(R) Core(TM) Ultra 7 155H", 22, 65500104,
                     [("intel", "i915", None, "/dev/dri/renderD128", "8086:7d55", None),
                      ("nvidia", "nvidia", "NVIDIA GeForce GTX 1660", "/dev/dri/renderD129", "10de:2184", 6144)],
                     INTEL_IHD | GTX1660, ["/dev/dri/renderD128"], ["nvidia-smi", "vainfo"]),
    "none": ((), "Intel Xeon Processor (Cascadelake)", 4, 8131236, [], set(), [], []),
    "nvidia-h100": (("nvidia-smi-h100",), "Intel(R) Xeon(R) Platinum 8480+", 32, 263761028,
                    [("nvidia", "nvidia", "NVIDIA H100 80GB HBM3", None, "10de:2330", 81559)] * 2,
                    H100, [], ["nvidia-smi"]),
}


def check_shape(result):
    assert set(result) == {"cpu", "memory", "gpus", "hw_codecs", "vaapi", "transcoder"}
    assert set(result["cpu"]) == {"model", "threads", "arch", "benchmark", "benchmark_per_thread"}
    for g in result["gpus"]:
        assert set(g) == {"vendor", "driver", "name", "render_node", "pci_id", "memory_mib"}
    for node, info in result["vaapi"].items():
        assert node.startswith("/dev/dri/renderD") and set(info) == {"driver", "profiles"}
    assert set(result["transcoder"]) == {"path", "codec_version", "plex_arch"}
    assert json.loads(json.dumps(result)) == result


def detect_recorded(machine, run, **kw):
    root = MACHINES / machine
    return hw.detect(sysfs_root=str(root / "sys"), proc_root=str(root / "proc"), run=run,
                     which=kw.pop("which", all_tools), benchmark=fake_bench, **kw)


@pytest.mark.parametrize("machine", sorted(MACHINE_CASES))
def test_detect_recorded_machines(machine):
    names, model, threads, mem_kb, gpus, codecs, vaapi_nodes, tools = MACHINE_CASES[machine]
    run = FakeRun(*names)
    result = detect_recorded(machine, run)
    check_shape(result)
    assert result["cpu"] == {"model": model, "threads": threads, "arch": platform.machine(),
                             "benchmark": 1000 * threads, "benchmark_per_thread": 1000}
    assert result["memory"] == mem_kb * 1024
    assert [(g["vendor"], g["driver"], g["name"], g["render_node"], g["pci_id"], g["memory_mib"])
            for g in result["gpus"]] == gpus
    assert set(result["hw_codecs"]) == codecs and result["hw_codecs"] == sorted(codecs)
    assert sorted(result["vaapi"]) == vaapi_nodes
    assert sorted({argv[0] for argv in run.calls}) == tools           # only the relevant tools ran
    assert all(argv == hw.NVIDIA_SMI_QUERY or argv == hw.vainfo_argv("/dev/dri/renderD128") for argv in run.calls)
    assert result["transcoder"] == {"path": None, "codec_version": None, "plex_arch": hw.plex_arch()}
    s = hw.summary(result)
    assert hw.parse_hw_summary(s["hw"]) == result["hw_codecs"]
    assert s["cpus"] == str(threads) and s["bench"] == str(1000 * threads)


@pytest.mark.parametrize("machine", sorted(MACHINE_CASES))
def test_detect_without_tools_finds_gpus_but_no_codecs(machine):
    run = FakeRun(*MACHINE_CASES[machine][0])
    result = detect_recorded(machine, run, which=no_tools)
    check_shape(result)
    assert result["hw_codecs"] == [] and result["vaapi"] == {} and run.calls == []
    drm_nodes = [g[3] for g in MACHINE_CASES[machine][4] if g[3]]
    assert [g["render_node"] for g in result["gpus"]] == drm_nodes


def test_detect_failing_vainfo_and_old_nvidia_driver():
    run = FakeRun("vainfo-fail", "nvidia-smi-470-compute-cap", "nvidia-smi-470-fallback")
    result = detect_recorded("intel-nvidia", run)
    check_shape(result)
    assert result["vaapi"] == {}
    assert set(result["hw_codecs"]) == caps("h264 hevc vp9:nvdec:d", "h264 hevc:nvenc:e")
    assert [g["name"] for g in result["gpus"]] == [None, "NVIDIA GeForce GTX 1050 Ti"]


def test_detect_with_transcoder_and_cache(tmp_path):
    binary = _binary(tmp_path, b"8217c1c-4578")
    cache = tmp_path / "bench.json"
    result = detect_recorded("none", FakeRun(), transcoder=str(binary), cache_path=str(cache))
    assert result["transcoder"] == {"path": str(binary), "codec_version": "8217c1c-4578",
                                    "plex_arch": hw.plex_arch()}
    key = hw.benchmark_key("Intel Xeon Processor (Cascadelake)", 4)
    assert json.loads(cache.read_text())["entries"][key]["score"] == 4000


# --- TXT summary ----------------------------------------------------------------------------------

ALL_CAPS = sorted(f"{c}:{a}:{d}" for c in hw.CODECS for a in hw.APIS for d in hw.DIRECTIONS)


def test_summary_format_and_round_trip():
    result = detect_recorded("intel-nvidia", FakeRun("vainfo-intel-ihd", "nvidia-smi-gtx1660"))
    s = hw.summary(result)
    assert s == {"cpus": "22", "arch": platform.machine(), "bench": "22000", "mem": "62",
                 "gpu": "intel:i915,nvidia:nvidia",
                 "hw": "vaapi:h264.de,hevc.de,vp9.de,av1.de;qsv:h264.de,hevc.de,vp9.de,av1.de;"
                       "nvdec:h264.d,hevc.d,vp9.d;nvenc:h264.e,hevc.e"}
    assert hw.parse_hw_summary(s["hw"]) == result["hw_codecs"]
    assert all(isinstance(v, str) and len(v.encode()) <= 200 for v in s.values())
    assert hw.txt_record_size(s) < 400


def test_summary_worst_case_stays_within_limits():
    many = {"cpu": {"threads": 512, "arch": "x86_64", "benchmark": 10 ** 9},
            "memory": 4 << 40, "hw_codecs": ALL_CAPS + ["h264:someapi:decode"],
            "gpus": [{"vendor": "nvidia", "driver": "nvidia"}] * 8 + [{"vendor": "intel", "driver": "i915"}]
            + [{"vendor": f"v{i}", "driver": f"driver-number-{i}"} for i in range(20)]}
    s = hw.summary(many)
    assert s["gpu"].startswith("nvidia:nvidia*8,intel:i915,v0:driver-number-0")
    assert len(s["gpu"].encode()) <= 100
    assert s["mem"] == "4096"
    assert all(len(v.encode()) <= 200 for v in s.values())
    assert hw.txt_record_size(s) < 400
    assert set(ALL_CAPS) <= set(hw.parse_hw_summary(s["hw"]))


def test_hw_summary_truncates_past_the_limit():
    text = hw.encode_hw_summary(ALL_CAPS, limit=40)
    assert len(text) <= 40 and text.startswith("vaapi:h264.de")
    assert set(hw.parse_hw_summary(text)) < set(ALL_CAPS)


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("vaapi:h264.de", ["h264:vaapi:decode", "h264:vaapi:encode"]),
    ("nvdec:av1.d;nvenc:av1.e", ["av1:nvdec:decode", "av1:nvenc:encode"]),
])
def test_parse_hw_summary(text, expected):
    assert hw.parse_hw_summary(text) == expected


@pytest.mark.parametrize("text", ["vaapi", "vaapi:", "vaapi:h264", "vaapi:h264.x", "vaapi:h264.ed", ":h264.d",
                                  "VAAPI:h264.d", "vaapi:h264.d;", "vaapi:h264.d,,hevc.d", "vaapi:h 264.d"])
def test_parse_hw_summary_rejects_malformed(text):
    with pytest.raises(ValueError):
        hw.parse_hw_summary(text)


@pytest.mark.parametrize("memory, text", [(0, "0.0"), (3_900_000_000, "3.6"), (64 << 30, "64"),
                                          (62.7 * (1 << 30), "63")])
def test_summary_memory(memory, text):
    assert hw.summary({"cpu": {}, "memory": memory})["mem"] == text


# --- this machine ---------------------------------------------------------------------------------

def test_run_command():
    assert hw.run_command(["clusterplex-no-such-tool-xyz"]) == (127, "")
    assert hw.run_command(["sh", "-c", "echo hi; echo err >&2; exit 3"]) == (3, "hi\n")
    assert hw.run_command(["sleep", "5"], timeout=0.1) == (124, "")


def test_detect_on_this_machine(tmp_path):
    cache = tmp_path / "bench.json"
    result = hw.detect(cache_path=str(cache))
    check_shape(result)
    cpu = result["cpu"]
    assert cpu["threads"] >= 1 and cpu["model"] and cpu["arch"] == platform.machine()
    assert cpu["benchmark"] == cpu["benchmark_per_thread"] * cpu["threads"] > 0
    assert result["memory"] == psutil.virtual_memory().total > 64 << 20
    for g in result["gpus"]:
        assert g["vendor"] in ("intel", "amd", "nvidia", "other")
        assert g["render_node"] is None or g["render_node"].startswith("/dev/dri/renderD")
    assert all(c.count(":") == 2 for c in result["hw_codecs"])
    assert cache.exists()
    s = hw.summary(result)
    assert hw.txt_record_size(s) < 400 and hw.parse_hw_summary(s["hw"]) == result["hw_codecs"]
