"""Hardware detection for a worker: CPU, memory, GPUs, hardware codecs, Plex's codec version.

The worker announces what it finds (over mDNS and in its ``status``), so the orchestrator can
route jobs by capability. Layout of this module:

- pure parsers, no I/O: :func:`parse_cpuinfo`, :func:`parse_meminfo`,
  :func:`parse_nvidia_smi_csv`, :func:`parse_vainfo`, the codec rules (:func:`hw_codecs`,
  :func:`vaapi_capabilities`, :func:`nvidia_capabilities`), :func:`summary` /
  :func:`parse_hw_summary`;
- I/O that takes its roots and runners as parameters, so tests point it at recorded data:
  :func:`scan_drm` (``sysfs_root``), :func:`query_nvidia` / :func:`query_vainfo` (``run``),
  :func:`codec_version` (a path), :func:`cached_benchmark` (a cache path), and
  :func:`detect`, which puts everything together.

Nothing here executes Plex's transcoder. External tools (``nvidia-smi``, ``vainfo``) run only
when installed, with a short timeout; a missing tool means "no codecs from it", never an error.
:func:`detect` blocks (tools, a ~0.2 s benchmark): call it from a thread in async code.

Capability strings are ``"<codec>:<api>:<direction>"``: codec ``h264``/``hevc``/``vp9``/``av1``,
api ``vaapi``/``qsv``/``nvdec``/``nvenc``, direction ``decode``/``encode``
(e.g. ``"hevc:vaapi:encode"``). See ``VAAPI_PROFILES``, ``VAAPI_ENTRYPOINTS``, ``NVIDIA_RULES``
for the rules and what in them is inferred rather than measured.
"""

import csv
import json
import logging
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import tempfile
import time
import zlib

import psutil

logger = logging.getLogger(__name__)

CODECS = ("h264", "hevc", "vp9", "av1")      # order used in summaries
APIS = ("vaapi", "qsv", "nvdec", "nvenc")
DIRECTIONS = ("decode", "encode")

# --------------------------------------------------------------------------------------------
# CPU and memory
# --------------------------------------------------------------------------------------------

# ARM Ltd (implementer 0x41) "CPU part" numbers, for /proc/cpuinfo files without a model name.
ARM_PARTS = {
    0xc07: "Cortex-A7", 0xc08: "Cortex-A8", 0xc09: "Cortex-A9", 0xc0d: "Cortex-A12",
    0xc0e: "Cortex-A17", 0xc0f: "Cortex-A15", 0xd03: "Cortex-A53", 0xd04: "Cortex-A35",
    0xd05: "Cortex-A55", 0xd07: "Cortex-A57", 0xd08: "Cortex-A72", 0xd09: "Cortex-A73",
    0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77",
    0xd40: "Neoverse-V1", 0xd41: "Cortex-A78", 0xd44: "Cortex-X1", 0xd46: "Cortex-A510",
    0xd47: "Cortex-A710", 0xd48: "Cortex-X2", 0xd49: "Neoverse-N2", 0xd4b: "Cortex-A78C",
    0xd4d: "Cortex-A715", 0xd4e: "Cortex-X3", 0xd4f: "Neoverse-V2", 0xd80: "Cortex-A520",
    0xd81: "Cortex-A720", 0xd82: "Cortex-X4",
}


def _cpuinfo_blocks(text):
    """/proc/cpuinfo as a list of {key: value} blocks (blank-line separated)."""
    blocks, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            cur.setdefault(key.strip(), value.strip())
    if cur:
        blocks.append(cur)
    return blocks


def parse_cpuinfo(text):
    """Parse /proc/cpuinfo: ``{"model": str, "threads": int, "flags": sorted list}``.

    model: x86's ``model name``; on ARM the board/SoC (``Model``, e.g. "Raspberry Pi 4 Model B
    Rev 1.1", then ``Hardware``), then the core type from ``CPU implementer``/``CPU part``,
    then ARM's generic ``model name`` ("ARMv7 Processor rev 4 (v7l)"); "unknown" if none.
    threads: number of ``processor : N`` entries (0 if none: the caller falls back to
    os.cpu_count()). flags: x86 ``flags`` or ARM ``Features`` of the first processor.
    """
    blocks = _cpuinfo_blocks(text or "")
    merged = {}
    for b in blocks:
        for k, v in b.items():
            merged.setdefault(k, v)
    threads = sum(1 for b in blocks if b.get("processor", "").isdigit())
    model_name = merged.get("model name", "")
    model = ""
    if model_name and not model_name.startswith("ARMv"):
        model = model_name
    if not model:
        model = merged.get("Model", "") or merged.get("Hardware", "")
    if not model:
        parts = []
        for b in blocks:
            try:
                impl = int(b.get("CPU implementer", ""), 0)
                part = int(b.get("CPU part", ""), 0)
            except ValueError:
                continue
            name = ARM_PARTS.get(part) if impl == 0x41 else None
            name = name or f"ARM implementer {impl:#x} part {part:#x}"
            if name not in parts:
                parts.append(name)
        model = " + ".join(parts)
    if not model:
        model = model_name or merged.get("cpu model", "") or merged.get("cpu", "") or "unknown"
    flags_text = merged.get("flags", "") or merged.get("Features", "")
    return {"model": model, "threads": threads, "flags": sorted(set(flags_text.split()))}


def cpu_arch():
    """The kernel's machine name (``x86_64``, ``aarch64``, ``armv7l``)."""
    return platform.machine() or "unknown"


def parse_meminfo(text):
    """MemTotal from /proc/meminfo, in bytes; None if absent."""
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", text or "", re.M)
    return int(m.group(1)) * 1024 if m else None


def memory_bytes(proc_root="/proc"):
    """Total RAM in bytes: psutil for the live /proc, ``<proc_root>/meminfo`` for recorded data."""
    if os.path.normpath(proc_root) != "/proc":
        total = parse_meminfo(_read(os.path.join(proc_root, "meminfo")))
        if total is not None:
            return total
    return int(psutil.virtual_memory().total)


# --------------------------------------------------------------------------------------------
# GPUs from sysfs
# --------------------------------------------------------------------------------------------

DRIVER_VENDORS = {"i915": "intel", "xe": "intel", "amdgpu": "amd", "radeon": "amd",
                  "nvidia": "nvidia", "nouveau": "nvidia"}
PCI_VENDORS = {0x8086: "intel", 0x1002: "amd", 0x1022: "amd", 0x10de: "nvidia"}
# Kernel drivers whose render nodes may have a VA-API driver worth asking vainfo about
# (iHD/i965 for Intel, radeonsi/r600 for AMD). NVIDIA is served by nvdec/nvenc, not VA-API.
VAAPI_DRIVERS = frozenset({"i915", "xe", "amdgpu", "radeon"})

_PCI_SLOT_RE = re.compile(r"^([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


def _read(path, limit=65536):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except (OSError, ValueError):
        return None


def _hex_id(text):
    try:
        return int(text.strip(), 16)
    except (AttributeError, ValueError):
        return None


def normalize_pci_slot(text):
    """``00000000:01:00.0`` (nvidia-smi) or ``0000:01:00.0`` (sysfs) -> ``0000:01:00.0``."""
    m = _PCI_SLOT_RE.match((text or "").strip())
    if not m:
        return None
    dom, bus, dev, fn = m.groups()
    return f"{int(dom, 16):04x}:{bus.lower()}:{dev.lower()}.{fn}"


def vendor_name(driver=None, pci_vendor=None):
    """intel / amd / nvidia / other, from the kernel driver first, then the PCI vendor id."""
    if driver in DRIVER_VENDORS:
        return DRIVER_VENDORS[driver]
    return PCI_VENDORS.get(pci_vendor, "other")


def _pci_device_info(dev_dir):
    """Driver, ids, slot of a device directory in sysfs; every field may be None."""
    driver = None
    try:
        driver = os.path.basename(os.readlink(os.path.join(dev_dir, "driver"))) or None
    except OSError:
        pass
    if driver is None:
        m = re.search(r"^DRIVER=(\S+)", _read(os.path.join(dev_dir, "uevent")) or "", re.M)
        driver = m.group(1) if m else None
    vendor = _hex_id(_read(os.path.join(dev_dir, "vendor")))
    device = _hex_id(_read(os.path.join(dev_dir, "device")))
    pci_id = f"{vendor:04x}:{device:04x}" if vendor is not None and device is not None else None
    slot = normalize_pci_slot(os.path.basename(os.path.realpath(dev_dir)))
    return driver, vendor, pci_id, slot


def scan_drm(sysfs_root="/sys"):
    """GPUs with a render node: one dict per ``<sysfs_root>/class/drm/renderD*``, by node number.

    Keys: ``vendor`` (intel/amd/nvidia/other), ``driver`` (kernel driver: i915, xe, amdgpu,
    radeon, nvidia, nouveau, virtio_gpu... or None), ``name`` (None: sysfs has no marketing
    name; detect() fills it from nvidia-smi or Mesa), ``render_node`` (``/dev/dri/renderDNNN``),
    ``pci_id`` (``"8086:7d55"`` or None), ``memory_mib`` (amdgpu's VRAM, else None) and
    ``pci_slot`` (``"0000:00:02.0"`` or None, to match nvidia-smi's bus ids). Missing files and
    dangling links give None fields, never an error.
    """
    base = os.path.join(sysfs_root, "class", "drm")
    try:
        names = [n for n in os.listdir(base) if re.fullmatch(r"renderD\d+", n)]
    except OSError:
        return []
    gpus = []
    for name in sorted(names, key=lambda n: int(n[len("renderD"):])):
        dev_dir = os.path.join(base, name, "device")
        driver, vendor, pci_id, slot = _pci_device_info(dev_dir)
        memory_mib = None
        vram = _read(os.path.join(dev_dir, "mem_info_vram_total"))
        if vram and vram.strip().isdigit():
            memory_mib = int(vram.strip()) // (1024 * 1024)
        gpus.append({"vendor": vendor_name(driver, vendor), "driver": driver, "name": None,
                     "render_node": f"/dev/dri/{name}", "pci_id": pci_id,
                     "memory_mib": memory_mib, "pci_slot": slot})
    return gpus


def pci_device(sysfs_root, slot):
    """``(driver, pci_id)`` of ``<sysfs_root>/bus/pci/devices/<slot>``; Nones if unknown."""
    if not slot:
        return None, None
    driver, _vendor, pci_id, _slot = _pci_device_info(os.path.join(sysfs_root, "bus", "pci", "devices", slot))
    return driver, pci_id


# --------------------------------------------------------------------------------------------
# nvidia-smi
# --------------------------------------------------------------------------------------------

NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,compute_cap,pci.bus_id",
                    "--format=csv,noheader,nounits"]
# compute_cap is unknown to drivers before ~510 ('Field "compute_cap" is not a valid field to
# query.', exit status 2): ask again without it.
NVIDIA_SMI_FALLBACK_QUERY = ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,pci.bus_id",
                             "--format=csv,noheader,nounits"]


def _smi_value(text):
    text = (text or "").strip()
    if not text or (text.startswith("[") and text.endswith("]")) or text in ("N/A", "Not Supported"):
        return None
    return text


def parse_nvidia_smi_csv(text):
    """Rows of either query above -> ``[{"index", "name", "driver", "memory_mib", "compute_cap",
    "pci_bus_id"}]``. ``compute_cap`` is a string like ``"8.9"``; any field nvidia-smi reports as
    ``[N/A]``/``[Not Supported]`` (or that the fallback query lacks) is None. Lines that are not
    such rows (error messages, "No devices were found") are skipped."""
    gpus = []
    for row in csv.reader((text or "").splitlines(), skipinitialspace=True):
        if len(row) == 6:
            index, name, driver, mem, cc, bus = row
        elif len(row) == 5:
            index, name, driver, mem, bus = row
            cc = None
        else:
            continue
        if not index.strip().isdigit():
            continue
        mem = _smi_value(mem)
        m = re.match(r"(\d+)", mem or "")
        cc = _smi_value(cc)
        if cc is not None and not re.fullmatch(r"\d+\.\d+", cc):
            cc = None
        bus = _smi_value(bus)
        gpus.append({"index": int(index), "name": _smi_value(name), "driver": _smi_value(driver),
                     "memory_mib": int(m.group(1)) if m else None, "compute_cap": cc,
                     "pci_bus_id": normalize_pci_slot(bus) if bus else None})
    return gpus


def query_nvidia(run):
    """Run nvidia-smi through ``run(argv) -> (rc, stdout)``; [] if it is missing or fails."""
    rc, out = run(NVIDIA_SMI_QUERY)
    if rc == 0:
        gpus = parse_nvidia_smi_csv(out)
        if gpus:
            return gpus
    if rc == 127:
        return []
    logger.debug("nvidia-smi with compute_cap: exit %s (%s); trying without it", rc, (out or "").strip()[:200])
    rc, out = run(NVIDIA_SMI_FALLBACK_QUERY)
    if rc != 0:
        logger.warning("nvidia-smi failed (exit %s): %s; no NVIDIA codecs", rc, (out or "").strip()[:200])
        return []
    return parse_nvidia_smi_csv(out)


# --------------------------------------------------------------------------------------------
# vainfo
# --------------------------------------------------------------------------------------------

_VA_LINE_RE = re.compile(r"^\s*(VAProfile\w+)\s*:\s*(VAEntrypoint\w+)\s*$")


def parse_vainfo(text):
    """``vainfo`` output (plain or ``--display drm --device ...``, libva-utils 2.x) ->
    ``{"driver": "Intel iHD driver for Intel(R) Gen Graphics - 24.1.0 ()", "profiles":
    {"VAProfileH264Main": ["VAEntrypointVLD", "VAEntrypointEncSliceLP"], ...}}``.
    Noise lines (``Trying display``, ``libva info``, X errors) are ignored; output without
    the table (vaInitialize failed) gives ``{"driver": "", "profiles": {}}``."""
    driver = ""
    profiles = {}
    for line in (text or "").splitlines():
        m = _VA_LINE_RE.match(line)
        if m:
            entries = profiles.setdefault(m.group(1), [])
            if m.group(2) not in entries:
                entries.append(m.group(2))
            continue
        m = re.search(r"Driver version:\s*(.*?)\s*$", line)
        if m and not driver:
            driver = m.group(1)
    return {"driver": driver, "profiles": profiles}


def vainfo_argv(render_node):
    return ["vainfo", "--display", "drm", "--device", render_node]


def query_vainfo(run, render_node):
    """vainfo for one render node; None if it fails or lists no profiles."""
    rc, out = run(vainfo_argv(render_node))
    info = parse_vainfo(out)
    if rc != 0 or not info["profiles"]:
        if rc != 127:
            logger.warning("vainfo on %s failed (exit %s): no VA-API codecs from it", render_node, rc)
        return None
    return info


def mesa_device_name(va_driver):
    """'Mesa Gallium driver 22.3.6 for AMD Radeon RX 6600 XT (navi23, ...)' -> 'AMD Radeon RX 6600 XT'."""
    m = re.search(r"Mesa Gallium driver \S+ for (.+?)(?: \(|$)", va_driver or "")
    return m.group(1).strip() if m else None


# --------------------------------------------------------------------------------------------
# Codec rules
# --------------------------------------------------------------------------------------------

# VA-API: which profiles stand for a codec. Only the 8-bit baseline profile of each codec
# counts (a "hevc" capability means HEVC Main; Main10-only entrypoints do not make one), so a
# capability is something a common file can use.
VAAPI_PROFILES = {
    "VAProfileH264ConstrainedBaseline": "h264", "VAProfileH264Main": "h264", "VAProfileH264High": "h264",
    "VAProfileHEVCMain": "hevc",
    "VAProfileVP9Profile0": "vp9",
    "VAProfileAV1Profile0": "av1",
}
# VA-API entrypoints: VLD = bitstream decoding; EncSlice (shader/VME or full-function encoder)
# and EncSliceLP (low-power fixed-function VDEnc, the only encoder on Intel Arc/Gen12.5+) =
# encoding. EncPicture (JPEG), FEI, Stats and VideoProc are not codec capabilities.
VAAPI_ENTRYPOINTS = {"VAEntrypointVLD": "decode", "VAEntrypointEncSlice": "encode",
                     "VAEntrypointEncSliceLP": "encode"}

# NVIDIA: (codec, api, direction, minimum compute capability, needs an NVENC unit).
# Derived from NVIDIA's NVDEC/NVENC support matrix by GPU generation, keyed on compute
# capability because that is what nvidia-smi reports; this is an inference, not a probe:
#  - h264 decode/encode: every generation current drivers support (Kepler 3.x and newer).
#  - hevc and vp9 decode, hevc encode: claimed from Pascal (6.x). Maxwell GM206 (5.2) also has
#    them, other 5.x parts do not: not claimed (conservative).
#  - av1 decode: GA10x Ampere (8.6) and newer; GA100 (8.0) is not claimed. Jetson Orin (8.7)
#    passes the threshold; Jetsons have no nvidia-smi CSV anyway.
#  - av1 encode: Ada (8.9) and newer parts that have NVENC (RTX 40/50, L4, L40, RTX Ada/Blackwell).
# NVENC is missing on the data-center compute parts: A100/A30 (8.0), H100/H200/GH200 (9.0),
# B100/B200/GB200 (10.0), B300/GB300 (10.3) -- decode only -- and on some small GeForce chips
# (GT 1030, most MX laptop parts), recognised by name (NO_NVENC_NAME_RE).
NVIDIA_RULES = (
    ("h264", "nvdec", "decode", (3, 0), False),
    ("hevc", "nvdec", "decode", (6, 0), False),
    ("vp9", "nvdec", "decode", (6, 0), False),
    ("av1", "nvdec", "decode", (8, 6), False),
    ("h264", "nvenc", "encode", (3, 0), True),
    ("hevc", "nvenc", "encode", (6, 0), True),
    ("av1", "nvenc", "encode", (8, 9), True),
)
NO_NVENC_COMPUTE_CAPS = frozenset({(8, 0), (9, 0), (10, 0), (10, 3)})
NO_NVENC_NAME_RE = re.compile(
    r"\b(?:A100|A30|A800|H100|H200|H800|H20|GH200|B100|B200|B300|GB200|GB300|GT 1030|MX\s?\d{3})\b")
# Compute capability guessed from the product name when nvidia-smi cannot report it (drivers
# before ~510, which cannot run Ada or Blackwell anyway). First match wins. Inferred.
NVIDIA_NAME_CC = (
    (re.compile(r"\b(?:A100|A30|A800)\b"), (8, 0)),
    (re.compile(r"\b(?:H100|H200|H800|H20|GH200)\b"), (9, 0)),
    (re.compile(r"\b(?:B100|B200|GB200)\b"), (10, 0)),
    (re.compile(r"RTX 50\d\d"), (12, 0)),
    (re.compile(r"RTX 40\d\d|\bL4\b|\bL40S?\b|RTX \d000 Ada"), (8, 9)),
    (re.compile(r"RTX 30\d\d|RTX A\d{4}|\bA(?:2|10|16|40)\b"), (8, 6)),
    (re.compile(r"RTX 20\d\d|GTX 16\d\d|TITAN RTX|Quadro RTX|\bT4\b|\bT\d{3,4}\b"), (7, 5)),
    (re.compile(r"\bV100\b|TITAN V\b"), (7, 0)),
    (re.compile(r"\bP100\b"), (6, 0)),
    (re.compile(r"GTX 10\d\d|GT 1030|TITAN Xp|Quadro P\d+|Tesla P(?:4|40)\b|\bP(?:4|40)\b"), (6, 1)),
    (re.compile(r"GTX 9\d\d|GTX TITAN X\b"), (5, 2)),
    (re.compile(r"GTX 750"), (5, 0)),
)


def _cc_tuple(text):
    m = re.fullmatch(r"(\d+)\.(\d+)", (text or "").strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def nvidia_compute_capability(gpu):
    """(major, minor) from nvidia-smi, else guessed from the name, else None."""
    cc = _cc_tuple(gpu.get("compute_cap"))
    if cc is None:
        name = gpu.get("name") or ""
        for pattern, value in NVIDIA_NAME_CC:
            if pattern.search(name):
                return value
    return cc


def nvidia_has_nvenc(gpu):
    cc = nvidia_compute_capability(gpu)
    return cc not in NO_NVENC_COMPUTE_CAPS and not NO_NVENC_NAME_RE.search(gpu.get("name") or "")


def nvidia_capabilities(gpu):
    """Capability strings of one nvidia-smi GPU under NVIDIA_RULES. With no compute capability
    (none reported, name unknown) only h264 is claimed: decode, and encode unless the name is
    a known NVENC-less part."""
    cc = nvidia_compute_capability(gpu)
    nvenc = nvidia_has_nvenc(gpu)
    caps = set()
    for codec, api, direction, min_cc, needs_nvenc in NVIDIA_RULES:
        if needs_nvenc and not nvenc:
            continue
        if cc is None:
            if codec != "h264":
                continue
        elif cc < min_cc:
            continue
        caps.add(f"{codec}:{api}:{direction}")
    return caps


def vaapi_capabilities(profiles):
    """{(codec, direction)} from a vainfo profile table under VAAPI_PROFILES/VAAPI_ENTRYPOINTS."""
    found = set()
    for profile, entrypoints in (profiles or {}).items():
        codec = VAAPI_PROFILES.get(profile)
        if codec is None:
            continue
        for entry in entrypoints:
            direction = VAAPI_ENTRYPOINTS.get(entry)
            if direction:
                found.add((codec, direction))
    return found


def _qsv_capable(gpu, va_driver):
    """Intel QSV (oneVPL/Media SDK) runs on top of the iHD VA driver, so an Intel GPU whose
    iHD VA-API works gives the same codecs through qsv; the legacy i965 driver (pre-Gen9
    and forced setups) does not carry QSV. Inferred from the software stack, not probed."""
    if gpu and gpu.get("vendor") not in (None, "intel"):
        return False
    return "iHD driver" in va_driver


def hw_codecs(gpus, vaapi_by_node, nvidia):
    """Sorted capability strings ("h264:vaapi:decode", ...) of a machine.

    gpus: scan_drm()-style dicts (to know which render node is Intel); vaapi_by_node:
    {render_node: parse_vainfo() result} for the nodes where vainfo worked; nvidia:
    parse_nvidia_smi_csv() rows. Rules:

    ===========================  =====================================================
    source                       capabilities
    ===========================  =====================================================
    VA-API profile + VLD         <codec>:vaapi:decode
    VA-API + EncSlice/EncSliceLP <codec>:vaapi:encode
    Intel (i915/xe), iHD driver  the same set again as <codec>:qsv:<dir>
    AMD (amdgpu/radeon)          VA-API only
    NVIDIA, nvidia-smi row       NVIDIA_RULES by compute capability (nvdec/nvenc);
                                 A100/A30/H100/H200/GH200/B100/B200: nvdec only
    missing tool / failure       nothing
    ===========================  =====================================================
    """
    caps = set()
    by_node = {g.get("render_node"): g for g in gpus or () if g.get("render_node")}
    for node, info in (vaapi_by_node or {}).items():
        found = vaapi_capabilities((info or {}).get("profiles"))
        caps.update(f"{c}:vaapi:{d}" for c, d in found)
        if found and _qsv_capable(by_node.get(node), (info or {}).get("driver") or ""):
            caps.update(f"{c}:qsv:{d}" for c, d in found)
    for gpu in nvidia or ():
        caps.update(nvidia_capabilities(gpu))
    return sorted(caps)


# --------------------------------------------------------------------------------------------
# Plex's transcoder: codec version and architecture
# --------------------------------------------------------------------------------------------

# Plex's codec version as a printable string that ends where the string ends (what ClusterPlex
# gets from `strings "Plex Transcoder" | grep -Po '[0-9a-f]{7}-[0-9a-f]{4,}$'`): the old form
# 8217c1c-4578 and, from PMS 1.40.3, c75335c-a7cfb6836f3ed63280a7eb83. Not preceded by another
# hex digit (a longer hex run is something else), followed by a non-printable byte.
_PRINTABLE = b"\t" + bytes(range(0x20, 0x7f))
_CODEC_VERSION_RE = re.compile(rb"(?<![0-9a-f])[0-9a-f]{7}-[0-9a-f]{4,64}(?![\t\x20-\x7e])")
_OVERLAP = 256          # > longest match + 1, so a match split by a chunk boundary is seen whole


def codec_version(path, chunk_size=1 << 20):
    """Plex's codec version found in the transcoder binary at ``path``, without running it.

    Streams the file in ``chunk_size`` pieces (memory stays ~chunk_size). A match that is a
    whole printable string (as its own line in `strings` output) wins over one at the end of a
    longer string; the first of its kind in the file is returned. None if there is none or the
    file cannot be read.
    """
    suffix_match = None
    try:
        with open(path, "rb") as f:
            tail = b""
            offset = 0                          # file offset of buf[0]
            while True:
                chunk = f.read(chunk_size)
                eof = not chunk
                buf = tail + chunk
                for m in _CODEC_VERSION_RE.finditer(buf):
                    start, end = m.span()
                    if end < len(tail):         # terminator already seen in the previous round
                        continue
                    if end >= len(buf) and not eof:
                        continue                # cannot see what follows yet: next round
                    if start == 0 and offset > 0:
                        continue                # no context before it (cannot happen for real matches)
                    whole = start == 0 or buf[start - 1] not in _PRINTABLE
                    version = m.group().decode("ascii")
                    if whole:
                        return version
                    if suffix_match is None:
                        suffix_match = version
                if eof:
                    break
                tail = buf[-_OVERLAP:]
                offset += len(buf) - len(tail)
    except OSError as e:
        logger.debug("codec version: cannot read %s: %s", path, e)
        return None
    return suffix_match


def plex_arch(machine=None, pointer_bits=None):
    """Plex's codec architecture name for this machine (the download path's arch part):
    ``linux-x86_64-standard``, ``linux-aarch64-standard``, ``linux-armv7neon-standard``; a
    32-bit userland on a 64-bit ARM kernel counts as armv7. None for anything else."""
    machine = (machine if machine is not None else platform.machine()).lower()
    bits = pointer_bits if pointer_bits is not None else struct.calcsize("P") * 8
    if machine in ("x86_64", "amd64", "x64"):
        return "linux-x86_64-standard"
    if machine in ("aarch64", "arm64", "armv8l", "armv8b"):
        return "linux-aarch64-standard" if bits == 64 and machine in ("aarch64", "arm64") \
            else "linux-armv7neon-standard"
    if machine.startswith("armv7") or machine in ("armhf", "arm"):
        return "linux-armv7neon-standard"
    return None


# --------------------------------------------------------------------------------------------
# CPU benchmark
# --------------------------------------------------------------------------------------------

BENCHMARK_VERSION = 1
# zlib level-6 compression of text-like data, single thread. 60 MB/s = 1000 points per thread:
# roughly a current server core (the development VM, an AMD EPYC vCPU, measured ~67 MB/s with
# Python 3.11); fast desktop cores score higher, a Raspberry Pi 4 core far lower (not measured
# here). Entropy coding and branchy integer work resemble a software encoder more than SHA-256
# (4x faster with SHA extensions) would.
BENCHMARK_REFERENCE_MBPS = 60.0
_bench_data = None


def _benchmark_data():
    global _bench_data
    if _bench_data is None:
        rnd = random.Random(20240601)
        words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
                 for _ in range(512)]
        _bench_data = b" ".join(rnd.choice(words) for _ in range(12000))[:65536]
    return _bench_data


def cpu_benchmark(seconds=0.2, threads=None):
    """A short single-thread CPU score: ``{"per_thread": int, "score": int, "threads": int}``.

    Compresses 64 KiB with zlib for ``seconds`` in 5 rounds and keeps the best round (less
    disturbed by other load). per_thread is normalised so that a typical modern core scores
    ~1000; score = per_thread x threads (logical CPUs; SMT siblings count fully, so it
    overstates SMT machines a little)."""
    threads = threads or os.cpu_count() or 1
    data = _benchmark_data()
    zlib.compress(data, 6)                      # warm up
    rounds = 5
    best = 0.0
    for _ in range(rounds):
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + max(seconds, 0.005) / rounds
        while True:
            zlib.compress(data, 6)
            n += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, n * len(data) / (now - t0) / 1e6)
    per_thread = max(1, round(best / BENCHMARK_REFERENCE_MBPS * 1000))
    return {"per_thread": per_thread, "score": per_thread * threads, "threads": threads}


def benchmark_key(model, threads):
    """Cache key: the benchmark is redone when the CPU, its thread count, Python or the
    benchmark itself changes."""
    return f"{model}|{threads}|py{platform.python_version()}|v{BENCHMARK_VERSION}"


def _valid_result(r):
    return isinstance(r, dict) and all(isinstance(r.get(k), int) and r[k] > 0
                                       for k in ("per_thread", "score", "threads"))


def cached_benchmark(cache_path, key, bench=None):
    """The benchmark result stored under ``key`` in the JSON file ``cache_path``, or a fresh
    ``bench()`` (default: cpu_benchmark()) stored there for next time.

    The file is replaced atomically (temporary file + rename in the same directory) and keeps
    only the current key. No cache_path, a missing or unwritable directory, or a corrupt file
    just mean "not cached": never an error."""
    bench = bench or cpu_benchmark
    if cache_path:
        try:
            with open(cache_path, "r", encoding="utf-8") as f:
                stored = json.load(f)
            result = stored.get("entries", {}).get(key) if isinstance(stored, dict) else None
            if _valid_result(result):
                return result
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            logger.debug("benchmark cache %s unreadable (%s): measuring again", cache_path, e)
    result = bench()
    if cache_path:
        directory = os.path.dirname(os.path.abspath(cache_path))
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".bench-", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": BENCHMARK_VERSION, "entries": {key: result}}, f)
            os.replace(tmp, cache_path)
            tmp = None
        except OSError as e:
            logger.debug("benchmark cache %s not written: %s", cache_path, e)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    return result


# --------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------

def run_command(argv, timeout=5.0):
    """Default runner: ``(returncode, stdout)``; (127, "") if the tool is missing, (124, "") on
    timeout (the tool is killed), (126, "") if it cannot be started. stderr is dropped."""
    env = dict(os.environ, LC_ALL="C")
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, env=env, check=False)
    except FileNotFoundError:
        return 127, ""
    except subprocess.TimeoutExpired:
        logger.warning("%s timed out after %ss", argv[0], timeout)
        return 124, ""
    except OSError as e:
        logger.warning("cannot run %s: %s", argv[0], e)
        return 126, ""
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        logger.debug("%s exited %s: %s", argv[0], p.returncode, err[-1] if err else "")
    return p.returncode, p.stdout.decode("utf-8", "replace")


def _transcoder_info(transcoder):
    return {"path": transcoder, "codec_version": codec_version(transcoder) if transcoder else None,
            "plex_arch": plex_arch()}


def detect(sysfs_root="/sys", proc_root="/proc", run=None, transcoder=None, cache_path=None,
           *, which=shutil.which, benchmark=None):
    """Everything a worker announces, as a JSON-serialisable dict (every key always present)::

        {"cpu": {"model", "threads", "arch", "benchmark", "benchmark_per_thread"},
         "memory": bytes,
         "gpus": [{"vendor", "driver", "name", "render_node", "pci_id", "memory_mib"}],
         "hw_codecs": ["h264:vaapi:decode", ...],
         "vaapi": {render_node: {"driver": str, "profiles": {profile: [entrypoint, ...]}}},
         "transcoder": {"path", "codec_version", "plex_arch"}}

    run(argv) -> (rc, stdout) runs the tools (default run_command); which(name) says whether a
    tool is installed (default shutil.which). nvidia-smi runs only if installed and an NVIDIA
    driver is present (a render node driven by ``nvidia`` or ``<proc_root>/driver/nvidia``);
    vainfo runs once per Intel/AMD render node. benchmark(threads) -> cpu_benchmark()-style
    dict (default cpu_benchmark, ~0.2 s), cached in ``cache_path`` if given. GPUs that
    nvidia-smi lists without a render node (no nvidia-drm) have render_node None.
    """
    run = run or run_command
    cpu = parse_cpuinfo(_read(os.path.join(proc_root, "cpuinfo"), limit=1 << 22) or "")
    threads = cpu["threads"] or os.cpu_count() or 1

    def bench():
        return (benchmark or (lambda n: cpu_benchmark(threads=n)))(threads)

    result = cached_benchmark(cache_path, benchmark_key(cpu["model"], threads), bench)

    drm = scan_drm(sysfs_root)
    nvidia = []
    nvidia_present = any(g["driver"] == "nvidia" for g in drm) or \
        os.path.exists(os.path.join(proc_root, "driver", "nvidia"))
    if nvidia_present and which("nvidia-smi"):
        nvidia = query_nvidia(run)
    vaapi = {}
    if which("vainfo"):
        for g in drm:
            if g["driver"] in VAAPI_DRIVERS:
                info = query_vainfo(run, g["render_node"])
                if info is not None:
                    vaapi[g["render_node"]] = info

    gpus = []
    by_slot = {n["pci_bus_id"]: n for n in nvidia if n.get("pci_bus_id")}
    matched = set()
    for g in drm:
        name, memory = g["name"], g["memory_mib"]
        smi = by_slot.get(g["pci_slot"]) if g["driver"] == "nvidia" else None
        if smi is not None:
            matched.add(smi["index"])
            name, memory = smi["name"], smi["memory_mib"]
        elif g["render_node"] in vaapi:
            name = name or mesa_device_name(vaapi[g["render_node"]]["driver"])
        gpus.append({"vendor": g["vendor"], "driver": g["driver"], "name": name,
                     "render_node": g["render_node"], "pci_id": g["pci_id"], "memory_mib": memory})
    for n in nvidia:
        if n["index"] in matched:
            continue
        driver, pci_id = pci_device(sysfs_root, n.get("pci_bus_id"))
        gpus.append({"vendor": "nvidia", "driver": driver or "nvidia", "name": n["name"],
                     "render_node": None, "pci_id": pci_id, "memory_mib": n["memory_mib"]})

    return {
        "cpu": {"model": cpu["model"], "threads": threads, "arch": cpu_arch(),
                "benchmark": int(result["score"]), "benchmark_per_thread": int(result["per_thread"])},
        "memory": memory_bytes(proc_root),
        "gpus": gpus,
        "hw_codecs": hw_codecs(drm, vaapi, nvidia),
        "vaapi": vaapi,
        "transcoder": _transcoder_info(transcoder),
    }


# --------------------------------------------------------------------------------------------
# mDNS TXT summary
# --------------------------------------------------------------------------------------------

TXT_VALUE_MAX = 200       # bytes per value (DNS-SD allows 255 per key=value string)
TXT_GPU_MAX = 100         # keeps the whole record < 400 bytes in the worst case
_DIR_LETTER = {"decode": "d", "encode": "e"}
_LETTER_DIR = {v: k for k, v in _DIR_LETTER.items()}
_TOKEN_RE = re.compile(r"[a-z0-9_]{1,16}")


def _order(seq, known):
    return sorted(seq, key=lambda x: (known.index(x) if x in known else len(known), x))


def encode_hw_summary(capabilities, limit=TXT_VALUE_MAX):
    """Capability strings -> the compact ``hw`` TXT value.

    Format: groups ``<api>:<codec>.<dirs>,<codec>.<dirs>`` joined by ``;``, where dirs is
    ``d`` (decode), ``e`` (encode) or ``de``; apis in the order vaapi, qsv, nvdec, nvenc,
    codecs h264, hevc, vp9, av1 (others after, alphabetically). Example::

        vaapi:h264.de,hevc.de,av1.d;qsv:h264.de,hevc.de,av1.d;nvdec:h264.d,hevc.d;nvenc:h264.e

    Everything present fits in ~140 bytes; past ``limit`` whole codec entries are dropped
    from the end (with a warning). "" = no hardware codecs.
    """
    table = {}
    for cap in capabilities or ():
        parts = cap.split(":")
        if len(parts) != 3 or parts[2] not in _DIR_LETTER:
            continue
        codec, api, direction = parts
        table.setdefault(api, {}).setdefault(codec, set()).add(direction)
    entries = []
    for api in _order(table, APIS):
        items = [f"{codec}.{''.join(_DIR_LETTER[d] for d in DIRECTIONS if d in table[api][codec])}"
                 for codec in _order(table[api], CODECS)]
        entries.append((api, items))

    def render(groups):
        return ";".join(f"{api}:{','.join(items)}" for api, items in groups if items)

    text = render(entries)
    if len(text.encode()) > limit:
        logger.warning("hw summary over %d bytes (%r): dropping entries from the end", limit, text)
    while len(text.encode()) > limit:
        api, items = entries[-1]
        if len(items) > 1:
            entries[-1] = (api, items[:-1])
        else:
            entries.pop()
        text = render(entries)
    return text


def parse_hw_summary(text):
    """The inverse of encode_hw_summary: ``"vaapi:h264.de"`` -> ``["h264:vaapi:decode",
    "h264:vaapi:encode"]`` (sorted). Raises ValueError on anything malformed (the value comes
    off the network)."""
    caps = set()
    if not text:
        return []
    for group in text.split(";"):
        api, sep, items = group.partition(":")
        if not sep or not _TOKEN_RE.fullmatch(api) or not items:
            raise ValueError(f"bad hw summary group {group!r}")
        for item in items.split(","):
            codec, sep, dirs = item.partition(".")
            if not sep or not _TOKEN_RE.fullmatch(codec) or dirs not in ("d", "e", "de"):
                raise ValueError(f"bad hw summary entry {item!r} in {group!r}")
            caps.update(f"{codec}:{api}:{_LETTER_DIR[letter]}" for letter in dirs)
    return sorted(caps)


def _gpu_summary(gpus, limit=TXT_GPU_MAX):
    counts = {}
    for g in gpus or ():
        tag = f"{g.get('vendor') or 'other'}:{g.get('driver') or 'unknown'}"
        counts[tag] = counts.get(tag, 0) + 1
    out = ""
    for tag, n in counts.items():
        item = tag if n == 1 else f"{tag}*{n}"
        candidate = f"{out},{item}" if out else item
        if len(candidate.encode()) > limit:
            break
        out = candidate
    return out


def _mem_gib(memory):
    gib = (memory or 0) / (1 << 30)
    return str(round(gib)) if gib >= 10 else f"{gib:.1f}"


def summary(hw):
    """detect()'s dict -> short strings for an mDNS TXT record::

        {"cpus": "16", "arch": "x86_64", "bench": "15230", "mem": "62",
         "gpu": "intel:i915,nvidia:nvidia", "hw": "vaapi:h264.de,...;nvenc:h264.e"}

    cpus: logical CPUs; bench: machine score (cpu_benchmark); mem: GiB (one decimal under
    10); gpu: ``vendor:driver`` per GPU, ``*N`` for N identical ones, at most 100 bytes; hw:
    encode_hw_summary(). Every value <= 200 bytes, the whole record < 400 bytes
    (txt_record_size).
    """
    cpu = hw.get("cpu", {})
    out = {
        "cpus": str(int(cpu.get("threads") or 0)),
        "arch": str(cpu.get("arch") or "unknown")[:32],
        "bench": str(int(cpu.get("benchmark") or 0)),
        "mem": _mem_gib(hw.get("memory")),
        "gpu": _gpu_summary(hw.get("gpus")),
        "hw": encode_hw_summary(hw.get("hw_codecs")),
    }
    return out


def txt_record_size(props):
    """Bytes the dict takes as DNS-SD TXT strings (one length byte + ``key=value`` each)."""
    return sum(1 + len(f"{k}={v}".encode()) for k, v in props.items())


__all__ = [
    "parse_cpuinfo", "parse_meminfo", "cpu_arch", "memory_bytes", "scan_drm", "pci_device",
    "normalize_pci_slot", "vendor_name", "parse_nvidia_smi_csv", "query_nvidia", "parse_vainfo",
    "query_vainfo", "vaapi_capabilities", "nvidia_capabilities", "nvidia_compute_capability",
    "nvidia_has_nvenc", "hw_codecs", "codec_version", "plex_arch", "cpu_benchmark",
    "benchmark_key", "cached_benchmark", "run_command", "detect", "summary",
    "encode_hw_summary", "parse_hw_summary", "txt_record_size",
]
