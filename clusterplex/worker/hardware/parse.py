"""Pure parsers of what the kernel and the tools print: /proc/cpuinfo, /proc/meminfo, PCI slots and
vendors, ``nvidia-smi`` CSV, ``vainfo`` tables. No I/O; :mod:`.detection` feeds them.
See docs/hardware.md.
"""

import csv
import re

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


def parse_meminfo(text):
    """MemTotal from /proc/meminfo, in bytes; None if absent."""
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", text or "", re.M)
    return int(m.group(1)) * 1024 if m else None


# --------------------------------------------------------------------------------------------
# PCI
# --------------------------------------------------------------------------------------------

DRIVER_VENDORS = {"i915": "intel", "xe": "intel", "amdgpu": "amd", "radeon": "amd",
                  "nvidia": "nvidia", "nouveau": "nvidia"}
PCI_VENDORS = {0x8086: "intel", 0x1002: "amd", 0x1022: "amd", 0x10de: "nvidia"}

_PCI_SLOT_RE = re.compile(r"^([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


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


def mesa_device_name(va_driver):
    """'Mesa Gallium driver 22.3.6 for AMD Radeon RX 6600 XT (navi23, ...)' -> 'AMD Radeon RX 6600 XT'."""
    m = re.search(r"Mesa Gallium driver \S+ for (.+?)(?: \(|$)", va_driver or "")
    return m.group(1).strip() if m else None
