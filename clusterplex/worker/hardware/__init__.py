"""Hardware detection for a worker: CPU, memory, GPUs, hardware codecs, Plex's codec version.

The worker announces what it finds (over mDNS and in its ``status``), so the orchestrator can
route jobs by capability. Pure modules: :mod:`.parse` (cpuinfo, meminfo, nvidia-smi, vainfo),
:mod:`.rules` (capability strings, Plex arch), :mod:`.txt` (the mDNS TXT summary). I/O:
:mod:`.detection` (sysfs, tools, the transcoder binary, :func:`detect`), :mod:`.benchmark`
(the CPU benchmark and its cache). :func:`detect` blocks (tools, a ~0.2 s benchmark): call it
from a thread in async code. Details in docs/hardware.md.
"""

from .benchmark import BENCHMARK_REFERENCE_MBPS, BENCHMARK_VERSION, benchmark_key, cached_benchmark, cpu_benchmark
from .detection import (VAAPI_DRIVERS, codec_version, cpu_arch, detect, memory_bytes, pci_device, query_nvidia,
                        query_vainfo, run_command, scan_drm)
from .parse import (ARM_PARTS, DRIVER_VENDORS, NVIDIA_SMI_FALLBACK_QUERY, NVIDIA_SMI_QUERY, PCI_VENDORS,
                    mesa_device_name, normalize_pci_slot, parse_cpuinfo, parse_meminfo, parse_nvidia_smi_csv,
                    parse_vainfo, vainfo_argv, vendor_name)
from .rules import (APIS, CODECS, DIRECTIONS, NO_NVENC_COMPUTE_CAPS, NO_NVENC_NAME_RE, NVIDIA_NAME_CC, NVIDIA_RULES,
                    VAAPI_ENTRYPOINTS, VAAPI_PROFILES, hw_codecs, nvidia_capabilities, nvidia_compute_capability,
                    nvidia_has_nvenc, plex_arch, vaapi_capabilities)
from .txt import TXT_GPU_MAX, TXT_VALUE_MAX, encode_hw_summary, parse_hw_summary, summary, txt_record_size

__all__ = [
    "parse_cpuinfo", "parse_meminfo", "cpu_arch", "memory_bytes", "scan_drm", "pci_device",
    "normalize_pci_slot", "vendor_name", "parse_nvidia_smi_csv", "query_nvidia", "parse_vainfo",
    "query_vainfo", "vainfo_argv", "mesa_device_name", "vaapi_capabilities", "nvidia_capabilities",
    "nvidia_compute_capability", "nvidia_has_nvenc", "hw_codecs", "codec_version", "plex_arch", "cpu_benchmark",
    "benchmark_key", "cached_benchmark", "run_command", "detect", "summary",
    "encode_hw_summary", "parse_hw_summary", "txt_record_size",
    "CODECS", "APIS", "DIRECTIONS", "ARM_PARTS", "DRIVER_VENDORS", "PCI_VENDORS", "VAAPI_DRIVERS",
    "NVIDIA_SMI_QUERY", "NVIDIA_SMI_FALLBACK_QUERY", "VAAPI_PROFILES", "VAAPI_ENTRYPOINTS", "NVIDIA_RULES",
    "NO_NVENC_COMPUTE_CAPS", "NO_NVENC_NAME_RE", "NVIDIA_NAME_CC", "BENCHMARK_VERSION", "BENCHMARK_REFERENCE_MBPS",
    "TXT_VALUE_MAX", "TXT_GPU_MAX",
]
