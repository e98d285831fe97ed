"""Codec rules: which capability strings (``"<codec>:<api>:<direction>"``) a machine's VA-API
profiles and NVIDIA GPUs give, and which Plex codec build a machine gets. Pure (plex_arch's
defaults name this machine). What in the rules is inferred rather than measured: the comments
here and docs/hardware.md.
"""

import platform
import re
import struct

CODECS = ("h264", "hevc", "vp9", "av1")      # order used in summaries
APIS = ("vaapi", "qsv", "nvdec", "nvenc")
DIRECTIONS = ("decode", "encode")

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
# Plex's codec architecture
# --------------------------------------------------------------------------------------------

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
