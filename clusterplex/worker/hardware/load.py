"""GPU load, read cheaply and often: per GPU utilisation, encoder/decoder utilisation, encoder sessions
and the session limit, for the worker's ``load`` message (see docs/hardware.md, "GPU load").

Sources: NVIDIA ``nvidia-smi --query-gpu`` through the detection runner (at most every
``NVIDIA_INTERVAL`` seconds, with a short timeout: it takes tens to hundreds of milliseconds);
AMD ``device/gpu_busy_percent`` in sysfs; Intel (i915/xe) has no busy counter in sysfs, only
the GPU clock: ``rps_act_freq_mhz`` over ``rps_max_freq_mhz`` (``gt_*`` on older kernels) is
reported as utilisation, a rough stand-in. Real engine busy needs the i915 PMU (perf_event_open,
CAP_PERFMON or ``perf_event_paranoid`` <= 0), which a worker running unprivileged does not have.
Parsers are pure; readers take ``sysfs_root`` and ``run`` so tests use tests/data/hardware.
"""

import csv
import os
import re

from .parse import normalize_pci_slot

NVIDIA_LOAD_QUERY = ["nvidia-smi", "--query-gpu=index,pci.bus_id,name,utilization.gpu,utilization.encoder,"
                     "utilization.decoder,encoder.stats.sessionCount", "--format=csv,noheader,nounits"]
NVIDIA_INTERVAL = 5.0     # seconds between nvidia-smi runs (the sysfs files are read every time)
NVIDIA_TIMEOUT = 2.0
MAX_GPUS = 16

# NVIDIA's driver caps concurrent NVENC sessions on consumer (GeForce, TITAN) cards: 8 since driver
# 550 (2024; 5 before, 3 before that). Quadro/RTX professional and data-centre cards have no cap.
GEFORCE_NVENC_SESSIONS = 8
_CONSUMER = re.compile(r"\b(geforce|titan)\b", re.I)


def nvenc_session_limit(name):
    """The driver's NVENC session cap for a card named ``name`` (0: none known)."""
    return GEFORCE_NVENC_SESSIONS if _CONSUMER.search(name or "") else 0


def _pct(text):
    text = (text or "").strip()
    try:
        value = float(text)
    except ValueError:
        return None
    return min(100.0, max(0.0, value)) if value == value else None


def _count(text):
    text = (text or "").strip()
    return int(text) if text.isdigit() and len(text) < 7 else None


def parse_nvidia_load(text):
    """Rows of ``NVIDIA_LOAD_QUERY`` -> ``[{"index", "pci_bus_id", "name", "util", "encoder", "decoder",
    "sessions"}]``; ``[N/A]``/``[Not Supported]`` fields are None; other lines (errors) are skipped."""
    gpus = []
    for row in csv.reader((text or "").splitlines(), skipinitialspace=True):
        if len(row) != 7 or not row[0].strip().isdigit():
            continue
        index, bus, name, util, enc, dec, sessions = row
        gpus.append({"index": int(index), "pci_bus_id": normalize_pci_slot(bus), "name": name.strip(),
                     "util": _pct(util), "encoder": _pct(enc), "decoder": _pct(dec), "sessions": _count(sessions)})
    return gpus


def _read(path):
    try:
        with open(path, "r", encoding="ascii", errors="replace") as f:
            return f.read(64).strip()
    except (OSError, ValueError):
        return None


def amd_busy(device_dir):
    """amdgpu's ``gpu_busy_percent`` (0-100) or None."""
    return _pct(_read(os.path.join(device_dir, "gpu_busy_percent")) or "")


def intel_busy(device_dir):
    """The GPU clock as a percentage of its maximum, from the first ``drm/card*`` of an i915/xe device."""
    try:
        cards = sorted(n for n in os.listdir(os.path.join(device_dir, "drm")) if re.fullmatch(r"card\d+", n))
    except OSError:
        return None
    for card in cards:
        base = os.path.join(device_dir, "drm", card)
        for act, top in (("gt/gt0/rps_act_freq_mhz", "gt/gt0/rps_max_freq_mhz"),
                         ("gt_act_freq_mhz", "gt_max_freq_mhz"),
                         ("device/tile0/gt0/freq0/act_freq", "device/tile0/gt0/freq0/max_freq")):   # xe
            a, m = _count(_read(os.path.join(base, act)) or ""), _count(_read(os.path.join(base, top)) or "")
            if a is not None and m:
                return round(min(100.0, 100.0 * a / m), 1)
    return None


def gpu_id(gpu):
    return gpu.get("render_node") or f"nvidia{gpu.get('index', 0)}"


class GpuLoad:
    """Samples the GPUs found by :func:`detect` (pass ``drm`` = :func:`scan_drm`'s list).

    ``sample(now)`` returns the per-GPU list for the load message; nvidia-smi runs only when
    ``NVIDIA_INTERVAL`` has passed since the last run (its last answer is reused meanwhile).
    ``session_limit`` > 0 overrides the detected NVENC cap (``gpu_session_limit`` in worker.yaml). A
    failing nvidia-smi is not asked again (``failure`` says why) until a new sampler is made (reload).
    """

    def __init__(self, drm, run, nvidia=False, session_limit=0, interval=NVIDIA_INTERVAL):
        self.drm = [g for g in drm if g.get("driver") in ("i915", "xe", "amdgpu", "nvidia")][:MAX_GPUS]
        self.run = run
        self.nvidia = nvidia
        self.session_limit = session_limit
        self.interval = interval
        self.failure = ""
        self._smi_at = None
        self._smi = []

    def _nvidia_rows(self, now):
        if self.nvidia and (self._smi_at is None or now - self._smi_at >= self.interval):
            self._smi_at = now
            rc, out = self.run(NVIDIA_LOAD_QUERY)
            self._smi = parse_nvidia_load(out) if rc == 0 else []
            if rc != 0:                    # missing, no GPU, or a driver without these fields: stop asking
                self.nvidia = False
                self.failure = f"nvidia-smi exit status {rc}: {(out or '').strip()[:200]}"
        return self._smi

    def sample(self, now, sysfs_root="/sys"):
        gpus = []
        rows = self._nvidia_rows(now)
        by_slot = {r["pci_bus_id"]: r for r in rows if r["pci_bus_id"]}
        used = set()
        for g in self.drm:
            node = g["render_node"]
            dev = os.path.join(sysfs_root, "class", "drm", os.path.basename(node), "device")
            if g["driver"] == "nvidia":
                r = by_slot.get(g.get("pci_slot"))
                if r is None:
                    continue
                used.add(r["index"])
                gpus.append(self._nvidia_entry(r, node))
            elif g["driver"] == "amdgpu":
                gpus.append(_entry(node, "amd", amd_busy(dev)))
            else:
                gpus.append(_entry(node, "intel", intel_busy(dev)))
        for r in rows:
            if r["index"] not in used and len(gpus) < MAX_GPUS:
                gpus.append(self._nvidia_entry(r, None))
        return gpus

    def _nvidia_entry(self, r, node):
        limit = self.session_limit or nvenc_session_limit(r["name"])
        return {"id": node or f"nvidia{r['index']}", "vendor": "nvidia", "util": r["util"], "encoder": r["encoder"],
                "decoder": r["decoder"], "sessions": r["sessions"], "session_limit": limit}


def _entry(node, vendor, busy):
    return {"id": node, "vendor": vendor, "util": busy, "encoder": None, "decoder": None, "sessions": None,
            "session_limit": 0}
