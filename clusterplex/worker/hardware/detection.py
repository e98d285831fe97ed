"""Hardware detection, the I/O half: sysfs render nodes, ``nvidia-smi`` and ``vainfo`` through a
runner, the transcoder's codec version, and :func:`detect`, which puts it all together.

Roots and runners are parameters, so tests point them at recorded data (tests/data/hardware).
A missing tool means "no codecs from it", never an error. Nothing here executes Plex's
transcoder. See docs/hardware.md.
"""

import logging
import os
import platform
import re
import shutil
import subprocess

import psutil

from .benchmark import benchmark_key, cached_benchmark, cpu_benchmark
from .parse import (NVIDIA_SMI_FALLBACK_QUERY, NVIDIA_SMI_QUERY, mesa_device_name, normalize_pci_slot,
                    parse_cpuinfo, parse_meminfo, parse_nvidia_smi_csv, parse_vainfo, vainfo_argv, vendor_name)
from .rules import hw_codecs, plex_arch

logger = logging.getLogger("clusterplex.worker.hardware")

# Kernel drivers whose render nodes may have a VA-API driver worth asking vainfo about
# (iHD/i965 for Intel, radeonsi/r600 for AMD). NVIDIA is served by nvdec/nvenc, not VA-API.
VAAPI_DRIVERS = frozenset({"i915", "xe", "amdgpu", "radeon"})

# --------------------------------------------------------------------------------------------
# CPU and memory
# --------------------------------------------------------------------------------------------

def cpu_arch():
    """The kernel's machine name (``x86_64``, ``aarch64``, ``armv7l``)."""
    return platform.machine() or "unknown"


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
# Tools
# --------------------------------------------------------------------------------------------

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


def query_vainfo(run, render_node):
    """vainfo for one render node; None if it fails or lists no profiles."""
    rc, out = run(vainfo_argv(render_node))
    info = parse_vainfo(out)
    if rc != 0 or not info["profiles"]:
        if rc != 127:
            logger.warning("vainfo on %s failed (exit %s): no VA-API codecs from it", render_node, rc)
        return None
    return info


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


# --------------------------------------------------------------------------------------------
# Plex's transcoder: codec version
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


# --------------------------------------------------------------------------------------------
# Putting it together
# --------------------------------------------------------------------------------------------

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
