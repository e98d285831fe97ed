"""Plex's codec libraries and EasyAudioEncoder on a worker.

Plex's transcoder loads most decoders and encoders as ``<name>.so`` files from the directory in
``FFMPEG_EXTERNAL_LIBS``; Plex downloads them per codec version and architecture from
``https://downloads.plex.tv/codecs/<version>/<arch>/<name>.so`` (../shared/plex/PROTOCOL.md §4).
A worker that is not a running Plex server has none, so :class:`CodecManager` fetches them into
``<root>/<version>-<arch>/``:

- missing libraries are downloaded concurrently (a semaphore bounds it), each to a ``*.tmp`` name
  in the same directory, fsync'd and renamed into place, so a killed worker leaves no half library
  (only ``*.tmp`` files, removed at the next start);
- every file, new or already there, is checked: non-empty, an ELF shared object for the Plex
  arch's machine, not cut short (:func:`check_elf`); a bad one is replaced;
- transient errors (connection refused/reset, timeouts, 5xx) are retried per file with
  exponential backoff and jitter; a 404 is not (this transcoder version is not on the server);
  a full disk or an unreachable server ends the round at once with that reason;
- :meth:`CodecManager.run` repeats rounds with backoff until everything is there, then prunes
  directories of older versions (same arch) unused for ``grace`` seconds (:func:`prune_plan`).

Progress goes to ``on_progress(state)`` (the worker's STATUS and API: ``state.summary()`` is
"codecs 120/310") and to the log at INFO at most every 10 %.

:func:`fetch_eae` gets EasyAudioEncoder through Plex's codec API (XML with a ``Codec url=``
attribute pointing at a zip and a license written to ``eae-license.txt``).

Nothing downloaded here is ever executed; the codec version and the arch come from the caller
(:func:`clusterplex.hardware.codec_version`, :func:`clusterplex.hardware.plex_arch`).
"""

import asyncio
import dataclasses
import errno
import fcntl
import io
import logging
import os
import random
import re
import secrets
import shutil
import struct
import time
import urllib.parse
import xml.etree.ElementTree as ET
import zipfile

import aiohttp

from .. import __version__

logger = logging.getLogger(__name__)

DEFAULT_SERVER = "https://downloads.plex.tv/codecs"
DEFAULT_EAE_API = "https://plex.tv/api/codecs/easyaudioencoder"

# The libraries ClusterPlex's worker downloads (pabloromeo/clusterplex, worker/codecs.txt at
# bdb6d3a, the list its start.sh reads as /app/codecs.txt): what Plex's transcoder loads from
# FFMPEG_EXTERNAL_LIBS for common and less common formats. Formats Plex builds into the
# transcoder itself (e.g. FLAC, Opus, E-AC-3, TrueHD) have no library here; a name the server
# does not have for a version answers 404 and keeps the worker not ready, so only names known
# to exist are listed. Override with `codecs.list` (see load_list).
DEFAULT_LIBS = tuple("""
libaac_decoder libaac_encoder libaac_latm_decoder libaac_lc_decoder libaasc_decoder
libac3_decoder libac3_encoder libadpcm_4xm_decoder libadpcm_adx_decoder libadpcm_afc_decoder
libadpcm_aica_decoder libadpcm_ct_decoder libadpcm_dtk_decoder libadpcm_ea_decoder
libadpcm_ea_maxis_xa_decoder libadpcm_ea_r1_decoder libadpcm_ea_r2_decoder libadpcm_ea_r3_decoder
libadpcm_ea_xas_decoder libadpcm_g722_decoder libadpcm_g726_decoder libadpcm_g726le_decoder
libadpcm_ima_amv_decoder libadpcm_ima_apc_decoder libadpcm_ima_dat4_decoder
libadpcm_ima_dk3_decoder libadpcm_ima_dk4_decoder libadpcm_ima_ea_eacs_decoder
libadpcm_ima_ea_sead_decoder libadpcm_ima_iss_decoder libadpcm_ima_oki_decoder
libadpcm_ima_qt_decoder libadpcm_ima_rad_decoder libadpcm_ima_smjpeg_decoder
libadpcm_ima_wav_decoder libadpcm_ima_ws_decoder libadpcm_ms_decoder libadpcm_psx_decoder
libadpcm_sbpro_2_decoder libadpcm_sbpro_3_decoder libadpcm_sbpro_4_decoder libadpcm_swf_decoder
libadpcm_thp_decoder libadpcm_thp_le_decoder libadpcm_vima_decoder libadpcm_xa_decoder
libadpcm_yamaha_decoder libaic_decoder libalias_pix_decoder libals_decoder libamrnb_decoder
libamrwb_decoder libamv_decoder libanm_decoder libape_decoder libasv1_decoder libasv2_decoder
libatrac1_decoder libatrac3_decoder libatrac3p_decoder libaura2_decoder libaura_decoder
libavrn_decoder libavrp_decoder libavs_decoder libavui_decoder libbethsoftvid_decoder
libbfi_decoder libbinkaudio_dct_decoder libbinkaudio_rdft_decoder libbink_decoder
libbintext_decoder libbmv_audio_decoder libbmv_video_decoder libbrender_pix_decoder
libc93_decoder libcavs_decoder libcdgraphics_decoder libcdxl_decoder libcfhd_decoder
libcinepak_decoder libcljr_decoder libcllc_decoder libcomfortnoise_decoder libcook_decoder
libcpia_decoder libcscd_decoder libcyuv_decoder libdca_decoder libdds_decoder libdfa_decoder
libdnxhd_decoder libdpx_decoder libdsd_lsbf_decoder libdsd_lsbf_planar_decoder
libdsd_msbf_decoder libdsd_msbf_planar_decoder libdsicinaudio_decoder libdsicinvideo_decoder
libdss_sp_decoder libdvaudio_decoder libdvvideo_decoder libdxa_decoder libdxtory_decoder
libdxv_decoder libeacmv_decoder libeamad_decoder libeatgq_decoder libeatgv_decoder
libeatqi_decoder libeightbps_decoder libeightsvx_exp_decoder libescape124_decoder
libescape130_decoder libevrc_decoder libexr_decoder libffwavesynth_decoder libfic_decoder
libflashsv2_decoder libflashsv_decoder libflic_decoder libflv_decoder libfourxm_decoder
libfraps_decoder libfrwu_decoder libg2m_decoder libg723_1_decoder libg729_decoder libgsm_decoder
libgsm_ms_decoder libh261_decoder libh263_decoder libh263i_decoder libh263p_decoder
libh264_decoder libhap_decoder libhevc_decoder libhnm4_video_decoder libhq_hqa_decoder
libhqx_decoder libiac_decoder libidcin_decoder libidf_decoder libiff_ilbm_decoder libimc_decoder
libindeo2_decoder libindeo3_decoder libindeo4_decoder libindeo5_decoder libinterplay_acm_decoder
libinterplay_dpcm_decoder libinterplay_video_decoder libjpeg2000_decoder libjpegls_decoder
libjv_decoder libkgv1_decoder libkmvc_decoder liblagarith_decoder liblibmp3lame_encoder
liblibx264_encoder libloco_decoder libmace3_decoder libmace6_decoder libmdec_decoder
libmetasound_decoder libmimic_decoder libmjpegb_decoder libmmvideo_decoder
libmotionpixels_decoder libmp1_decoder libmp2_decoder libmp3adu_decoder libmp3_decoder
libmp3on4_decoder libmpc7_decoder libmpc8_decoder libmpeg1video_decoder libmpeg2video_decoder
libmpeg4_decoder libmsa1_decoder libmsmpeg4v1_decoder libmsmpeg4v2_decoder libmsmpeg4v3_decoder
libmsrle_decoder libmss1_decoder libmss2_decoder libmsvideo1_decoder libmszh_decoder
libmts2_decoder libmvc1_decoder libmvc2_decoder libmxpeg_decoder libnellymoser_decoder
libnuv_decoder libon2avc_decoder libpaf_audio_decoder libpaf_video_decoder libpam_decoder
libpbm_decoder libpcm_bluray_decoder libpcm_dvd_decoder libpcx_decoder libpgm_decoder
libpgmyuv_decoder libpictor_decoder libppm_decoder libprores_decoder libptx_decoder
libqcelp_decoder libqdm2_decoder libqdraw_decoder libqpeg_decoder libqtrle_decoder
libr10k_decoder libra_144_decoder libra_288_decoder libralf_decoder librl2_decoder libroq_decoder
libroq_dpcm_decoder librpza_decoder librscc_decoder librv10_decoder librv20_decoder
librv30_decoder librv40_decoder libs302m_decoder libsanm_decoder libscreenpresso_decoder
libsdx2_dpcm_decoder libsgi_decoder libsgirle_decoder libshorten_decoder libsipr_decoder
libsmackaud_decoder libsmacker_decoder libsmc_decoder libsmvjpeg_decoder libsnow_decoder
libsol_dpcm_decoder libsonic_decoder libsp5x_decoder libsubviewer1_decoder libsunrast_decoder
libsvq1_decoder libsvq3_decoder libtak_decoder libtarga_decoder libtarga_y216_decoder
libtdsc_decoder libtheora_decoder libtiertexseqvideo_decoder libtiff_decoder libtmv_decoder
libtruemotion1_decoder libtruemotion2_decoder libtruemotion2rt_decoder libtruespeech_decoder
libtscc2_decoder libtscc_decoder libtta_decoder libtwinvq_decoder libtxd_decoder libulti_decoder
libutvideo_decoder libvb_decoder libvble_decoder libvc1_decoder libvc1image_decoder
libvcr1_decoder libvmdaudio_decoder libvmdvideo_decoder libvmnc_decoder libvp3_decoder
libvp5_decoder libvp6a_decoder libvp6_decoder libvp6f_decoder libvp7_decoder libvp8_decoder
libvp9_decoder libvqa_decoder libwavpack_decoder libwebp_decoder libwmalossless_decoder
libwmapro_decoder libwmav1_decoder libwmav2_decoder libwmavoice_decoder libwmv1_decoder
libwmv2_decoder libwmv3_decoder libwmv3image_decoder libwnv1_decoder libws_snd1_decoder
libxan_dpcm_decoder libxan_wc3_decoder libxan_wc4_decoder libxbin_decoder libxbm_decoder
libxface_decoder libxl_decoder libxma1_decoder libxma2_decoder libxwd_decoder libyop_decoder
libzerocodec_decoder libzlib_decoder libzmbv_decoder
""".split())

NAME_RE = re.compile(r"[A-Za-z0-9_+-]+")
# Version and arch become one path component: no separators, no "." or "..".
_COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# "<codec version>-<plex arch>": old 8217c1c-4578 and new c75335c-a7cfb6836f3ed63280a7eb83 forms.
_VERSION_DIR_RE = re.compile(r"(?P<version>[0-9a-f]{7}-[0-9a-f]{4,64})-(?P<arch>linux-[A-Za-z0-9_.-]+)")

MAX_LIB_BYTES = 512 << 20        # a Plex codec library is well under 50 MB
MAX_EAE_ZIP_BYTES = 256 << 20
MAX_XML_BYTES = 1 << 20
CHUNK = 256 << 10
TMP_SUFFIX = ".tmp"
LOCK_NAME = ".lock"
EAE_BINARY = "EasyAudioEncoder"
EAE_LICENSE = "eae-license.txt"

IDLE, DOWNLOADING, READY, ERROR = "idle", "downloading", "ready", "error"


class CodecError(Exception):
    """A codec list, library or EasyAudioEncoder problem, with a message for humans."""


class CodecListError(CodecError, ValueError):
    """A bad ``codecs.list`` file."""


class EAEError(CodecError):
    """EasyAudioEncoder could not be fetched."""


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------

def load_list(path):
    """Library names from a file: one per line, ``#`` starts a comment, blank lines ignored,
    a trailing ``.so`` tolerated, duplicates dropped (first wins). Raises CodecListError with
    the file and line for a name outside ``[A-Za-z0-9_+-]+``, an unreadable or empty file."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CodecListError(f"cannot read codec list {path}: {why}") from None
    names = []
    for lineno, line in enumerate(text.splitlines(), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name.endswith(".so"):
            name = name[:-3]
        if not NAME_RE.fullmatch(name):
            raise CodecListError(f"{path}:{lineno}: bad library name {name!r} "
                                 "(one name per line, letters, digits, '_', '+', '-'; e.g. libh264_decoder)")
        if name not in names:
            names.append(name)
    if not names:
        raise CodecListError(f"codec list {path} names no library")
    return names


def version_dir(version, arch):
    """The directory name of one codec version for one arch: ``8217c1c-4578-linux-x86_64-standard``."""
    return f"{version}-{arch}"


def lib_url(server, version, arch, name):
    """``<server>/<version>/<arch>/<name>.so``."""
    return f"{server.rstrip('/')}/{version}/{arch}/{name}.so"


EM_ARM, EM_X86_64, EM_AARCH64 = 40, 62, 183
ET_EXEC, ET_DYN = 2, 3
_MACHINE_NAMES = {3: "i386", EM_ARM: "ARM", EM_X86_64: "x86-64", EM_AARCH64: "aarch64", 8: "MIPS",
                  20: "PowerPC", 21: "PowerPC64", 243: "RISC-V"}
_TYPE_NAMES = {1: "relocatable object", ET_EXEC: "executable", ET_DYN: "shared object", 4: "core dump"}


def elf_target(arch):
    """``(ELF class, e_machine)`` a Plex arch's binaries have: ``linux-x86_64*`` (and the old
    ``linux-ubuntu-x86_64``) → (64-bit, EM_X86_64), ``linux-aarch64*`` → (64-bit, EM_AARCH64),
    ``linux-armv7*`` → (32-bit, EM_ARM); None for anything else."""
    arch = arch or ""
    if not arch.startswith("linux-"):
        return None
    if "x86_64" in arch:
        return 2, EM_X86_64
    if "aarch64" in arch:
        return 2, EM_AARCH64
    if "armv7" in arch:
        return 1, EM_ARM
    return None


def elf_plex_arch(head):
    """The Plex arch name for an ELF binary's header (the transcoder's, say: a 32-bit Plex on a
    64-bit ARM kernel is armv7), or None if it is not an ELF file for a Plex arch."""
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] != 1:
        return None
    machine = struct.unpack_from("<H", head, 18)[0]
    return {(2, EM_X86_64): "linux-x86_64-standard", (2, EM_AARCH64): "linux-aarch64-standard",
            (1, EM_ARM): "linux-armv7neon-standard"}.get((head[4], machine))


def _article(noun):
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _describe_machine(elf_class, machine):
    return f"{64 if elf_class == 2 else 32}-bit {_MACHINE_NAMES.get(machine, 'machine')} (e_machine {machine})"


def check_elf(data, arch, *, size=None, types=(ET_DYN,)):
    """Why ``data`` (a whole file or its first 64+ bytes) is not a library for Plex arch ``arch``;
    None if it is one.

    Checks: non-empty; not an HTML/XML page (what proxies and error pages send); ELF magic;
    ELF class, byte order and e_machine of the arch (:func:`elf_target`); e_type in ``types``
    (shared objects by default). With ``size`` (the whole file's length), also that the program
    and section header tables the header points at fit in the file (a download cut short).
    """
    if not data:
        return "empty file"
    head = bytes(data[:64])
    if head[:4] != b"\x7fELF":
        sniff = head.lstrip().lower()
        if sniff.startswith(b"<"):
            return "HTML/XML page instead of a library (an error page from the server or a proxy?)"
        if sniff.startswith((b"{", b"[")):
            return "JSON text instead of a library (an error answer from the server?)"
        return f"not an ELF file (starts with {head[:8].hex()})"
    target = elf_target(arch)
    if target is None:
        return f"unknown Plex architecture {arch!r}"
    want_class, want_machine = target
    if len(head) < 20:
        return f"truncated ELF header ({len(head)} bytes)"
    elf_class, byte_order = head[4], head[5]
    if elf_class not in (1, 2):
        return f"bad ELF class {elf_class}"
    if byte_order != 1:
        return f"big-endian ELF file, {arch} is little-endian"
    machine = struct.unpack_from("<H", head, 18)[0]
    if elf_class != want_class or machine != want_machine:
        return (f"not an ELF file for {arch}: built for {_describe_machine(elf_class, machine)}, "
                f"{arch} needs {_describe_machine(want_class, want_machine)}")
    etype = struct.unpack_from("<H", head, 16)[0]
    if etype not in types:
        want = " or ".join(_article(_TYPE_NAMES.get(t, f"type {t}")) for t in types)
        return f"ELF {_TYPE_NAMES.get(etype, f'type {etype}')}, not {want}"
    need = 64 if elf_class == 2 else 52
    if len(head) < need:
        return f"truncated ELF header ({len(head)} bytes)"
    if size is not None:
        if elf_class == 2:
            phoff, shoff = struct.unpack_from("<QQ", head, 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x36)
        else:
            phoff, shoff = struct.unpack_from("<II", head, 0x1C)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", head, 0x2A)
        end = max(phoff + phentsize * phnum if phnum else 0, shoff + shentsize * shnum if shnum else 0, need)
        if end > size:
            return f"truncated: {size} bytes, its ELF headers reach byte {end} (download cut short?)"
    return None


def prune_plan(dirs, keep, now, grace):
    """Which version directories to delete: ``dirs`` is ``[(name, mtime), ...]`` of ``root``'s
    subdirectories, ``keep`` the current version dir name (or several). Only names of the form
    ``<codec version>-<arch>`` with the arch of (one of) ``keep`` qualify (another arch's directory
    belongs to another machine sharing the root), never a kept one, and only when unused (not
    modified) for more than ``grace`` seconds. Sorted names."""
    keep = {keep} if isinstance(keep, str) else set(keep)
    arches = set()
    for k in keep:
        m = _VERSION_DIR_RE.fullmatch(k)
        if m:
            arches.add(m.group("arch"))
    out = []
    for name, mtime in dirs:
        if name in keep:
            continue
        m = _VERSION_DIR_RE.fullmatch(name)
        if not m or m.group("arch") not in arches:
            continue
        if now - mtime > grace:
            out.append(name)
    return sorted(out)


def backoff_delay(attempt, base, cap, rand=random.random):
    """Exponential backoff with jitter: ``min(cap, base * 2**attempt)`` scaled by 0.5..1."""
    return min(cap, base * (2 ** attempt)) * (0.5 + 0.5 * rand())


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class CodecState:
    """Where the codecs of one version stand.

    ``state``: "idle" (not checked yet), "downloading", "ready", "error"; ``present``/``total``:
    valid libraries on disk / libraries wanted; ``reason``: why not ready (human, "" otherwise);
    ``failed``: ``{library: reason}`` of the last round; ``version``, ``arch``, ``path``."""
    state: str = IDLE
    present: int = 0
    total: int = 0
    reason: str = ""
    failed: dict = dataclasses.field(default_factory=dict)
    version: str = None
    arch: str = None
    path: str = None

    @property
    def ready(self):
        return self.state == READY

    def summary(self):
        """``codecs 120/310``; with the reason when in error."""
        s = f"codecs {self.present}/{self.total}"
        return f"{s}: {self.reason}" if self.state == ERROR and self.reason else s

    def as_dict(self):
        return dataclasses.asdict(self)

    def copy(self):
        return dataclasses.replace(self, failed=dict(self.failed))


class _Failure(Exception):
    """One library failed. ``transient``: worth retrying; ``fatal``: ends the whole round
    (disk full, cannot write, server unreachable)."""

    def __init__(self, reason, *, transient=False, fatal=False, kind="other"):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient
        self.fatal = fatal
        self.kind = kind


# --------------------------------------------------------------------------------------------
# Manager
# --------------------------------------------------------------------------------------------

class CodecManager:
    """Keeps ``<root>/<version>-<arch>/`` filled with the libraries in ``libs``.

    ``version`` None (transcoder not found, no version in it) or ``arch`` None (a machine Plex
    has no codecs for) make every :meth:`ensure` an error with that reason. ``on_progress`` is
    called (synchronously, with a copy of the state) whenever ``state``, ``present`` or
    ``reason`` changes; its exceptions are logged, never raised.

    A directory shared by several workers is fine: downloads are atomic, and a flock on
    ``<dir>/.lock`` keeps one process from removing another's temp files. Old versions are
    pruned by their mtime, which :meth:`ensure` refreshes on the current one each time it is ready.
    """

    def __init__(self, root, server, version, arch, libs, *, concurrency=4, retries=4,
                 backoff=(0.5, 30.0), timeout=60, grace=7 * 86400, on_progress=None):
        for label, value in (("version", version), ("arch", arch)):
            if value is not None and not _COMPONENT_RE.fullmatch(value):
                raise ValueError(f"bad codec {label} {value!r}")
        libs = list(dict.fromkeys(libs))
        for name in libs:
            if not NAME_RE.fullmatch(name):
                raise ValueError(f"bad library name {name!r}")
        self.root = os.fspath(root)
        self.server = server.rstrip("/")
        self.version = version
        self.arch = arch
        self.libs = libs
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.timeout = timeout
        self.grace = grace
        self.on_progress = on_progress
        self.path = os.path.join(self.root, version_dir(version, arch)) if version and arch else None
        self._state = CodecState(total=len(libs), version=version, arch=arch, path=self.path)
        self._present = set()
        self._lock = None               # asyncio.Lock, made in the loop
        self._abort = None              # reason that ends the current round
        self._logged_decile = -1

    # --- state ---------------------------------------------------------------

    @property
    def state(self):
        """A copy of the current :class:`CodecState`."""
        return self._state.copy()

    def _update(self, **changes):
        s = self._state
        before = (s.state, s.present, s.reason)
        for k, v in changes.items():
            setattr(s, k, v)
        if (s.state, s.present, s.reason) != before:
            self._log_progress(before)
            if self.on_progress is not None:
                try:
                    self.on_progress(s.copy())
                except Exception:
                    logger.exception("codecs: progress callback failed")

    def _log_progress(self, before):
        s = self._state
        if s.state == DOWNLOADING and s.total:
            decile = s.present * 10 // s.total
            if decile > self._logged_decile:
                self._logged_decile = decile
                if before[0] == DOWNLOADING:
                    logger.info("codecs %d/%d (%d%%)", s.present, s.total, decile * 10)

    def _set_present(self, name):
        self._present.add(name)
        self._update(present=len(self._present))

    # --- one round -----------------------------------------------------------

    async def ensure(self):
        """Make every library present and valid; returns the final state (a copy).

        Never raises for download, server or disk problems (they end in state "error" with the
        reason); CancelledError propagates after removing this round's temp files."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await self._ensure()
        return self.state

    async def _ensure(self):
        if not self.version:
            self._update(state=ERROR, failed={},
                         reason="no codec version: the transcoder was not found or has no codec version in it")
            return
        if not self.arch:
            self._update(state=ERROR, failed={},
                         reason="no Plex codec build for this machine's architecture")
            return
        self._abort = None
        try:
            lock_fd = await asyncio.to_thread(self._prepare_dir)
        except OSError as e:
            self._update(state=ERROR, failed={},
                         reason=f"cannot create codec directory {self.path}: {e.strerror or e}")
            return
        try:
            present = await asyncio.to_thread(self._scan)
            self._present = set(present)
            missing = [n for n in self.libs if n not in self._present]
            if not missing:
                self._finish_ready()
                return
            logger.info("codecs: %d of %d libraries for %s missing; downloading from %s into %s",
                        len(missing), len(self.libs), version_dir(self.version, self.arch), self.server,
                        self.path)
            self._logged_decile = len(self._present) * 10 // max(1, len(self.libs))
            self._update(state=DOWNLOADING, present=len(self._present), reason="", failed={})
            failed = await self._download_all(missing)
            if not failed:
                await asyncio.to_thread(_fsync_dir, self.path)
                self._finish_ready()
                return
            reason = self._round_reason(failed)
            logger.warning("codecs %d/%d for %s: %s", len(self._present), len(self.libs),
                           version_dir(self.version, self.arch), reason)
            self._update(state=ERROR, failed=failed, reason=reason)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)        # releases the flock

    def _finish_ready(self):
        try:
            os.utime(self.path)          # "in use": pruning on a shared root goes by mtime
        except OSError:
            pass
        if self._state.state != READY:
            logger.info("codecs ready: %d libraries for %s in %s", len(self.libs),
                        version_dir(self.version, self.arch), self.path)
        self._update(state=READY, present=len(self._present), reason="", failed={})

    def _prepare_dir(self):
        """Create the version dir; take its lock and, holding it, remove leftover temp files.
        Returns the lock's fd (None when another process holds it: its temp files are left)."""
        os.makedirs(self.path, mode=0o755, exist_ok=True)
        fd = None
        try:
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if fd is not None:
                os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                logger.info("codecs: %s is in use by another process; leaving its temp files", self.path)
            else:
                logger.warning("codecs: cannot lock %s: %s", self.path, e.strerror or e)
            return None
        try:
            with os.scandir(self.path) as entries:
                leftovers = [e for e in entries if e.name.endswith(TMP_SUFFIX) and e.is_file(follow_symlinks=False)]
        except OSError as e:
            logger.warning("codecs: cannot list %s: %s", self.path, e.strerror or e)
            leftovers = []
        for entry in leftovers:
            try:
                os.unlink(entry.path)
                logger.info("codecs: removed %s left by an interrupted download", entry.name)
            except OSError as e:
                logger.warning("codecs: cannot remove %s: %s", entry.path, e.strerror or e)
        return fd

    def _scan(self):
        """Names of valid libraries on disk; invalid ones are removed (they will be downloaded)."""
        present = []
        for name in self.libs:
            path = os.path.join(self.path, f"{name}.so")
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    head = f.read(64)
            except FileNotFoundError:
                continue
            except OSError as e:
                logger.warning("codecs: cannot read %s: %s; downloading it again", path, e.strerror or e)
                self._remove(path)
                continue
            why = check_elf(head, self.arch, size=size)
            if why is None:
                present.append(name)
            else:
                logger.warning("codecs: bad library %s.so on disk (%s); downloading it again", name, why)
                self._remove(path)
        return present

    @staticmethod
    def _remove(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("codecs: cannot remove %s: %s", path, e.strerror or e)

    def _round_reason(self, failed):
        if self._abort:
            return self._abort
        v = self.version
        names = list(failed)
        missing = [n for n in names if failed[n].startswith("404 ")]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            return (f"404 for {missing[0]}.so{more} of version {v} for {self.arch} "
                    "(this transcoder version is not on the server?)")
        first = failed[names[0]]
        return first + (f" (and {len(names) - 1} more failed)" if len(names) > 1 else "")

    async def _download_all(self, missing):
        sem = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        failed = {}
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=True,
                                         headers={"User-Agent": f"clusterplex/{__version__}"}) as session:

            async def one(name):
                async with sem:
                    if self._abort:
                        return
                    reason = await self._fetch_with_retries(session, name)
                if reason is not None:
                    failed[name] = reason
                else:
                    self._set_present(name)

            tasks = [asyncio.ensure_future(one(n)) for n in missing]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return {n: failed[n] for n in missing if n in failed}

    async def _fetch_with_retries(self, session, name):
        """None when the library is in place, else the reason it is not."""
        base, cap = self.backoff
        for attempt in range(self.retries + 1):
            try:
                await self._fetch(session, name)
                return None
            except _Failure as f:
                failure = f
            except asyncio.CancelledError:
                raise
            except Exception as e:       # a bug must not take the worker down
                logger.exception("codecs: unexpected error downloading %s", name)
                return f"unexpected error downloading {name}.so: {e!r}"
            if failure.fatal:
                self._abort = self._abort or failure.reason
                return failure.reason
            if not failure.transient:
                return failure.reason
            if attempt < self.retries:
                delay = backoff_delay(attempt, base, cap)
                logger.debug("codecs: %s (attempt %d/%d); retrying in %.2f s", failure.reason, attempt + 1,
                             self.retries + 1, delay)
                await asyncio.sleep(delay)
                if self._abort:
                    return self._abort
        if failure.kind == "unreachable":
            self._abort = self._abort or failure.reason
        return failure.reason

    async def _fetch(self, session, name):
        url = lib_url(self.server, self.version, self.arch, name)
        final = os.path.join(self.path, f"{name}.so")
        tmp = os.path.join(self.path, f".{name}.so.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        answered = False
        try:
            async with session.get(url) as resp:
                answered = True
                if resp.status == 404:
                    raise _Failure(f"404 for {name}.so of version {self.version} ({url})", kind="404")
                if resp.status >= 500 or resp.status in (408, 429):
                    raise _Failure(f"codec server {self.server} answered HTTP {resp.status} for {name}.so",
                                   transient=True, kind="http")
                if resp.status != 200:
                    raise _Failure(f"codec server {self.server} answered HTTP {resp.status} for {name}.so",
                                   kind="http")
                await self._write(resp, name, tmp, final)
        except _Failure:
            raise
        except aiohttp.ClientConnectorError as e:
            raise _Failure(f"codec server {self.server} unreachable: {_short(e)}", transient=True,
                           kind="unreachable") from None
        except asyncio.TimeoutError:
            if answered:
                raise _Failure(f"download of {name}.so from {self.server} stalled (nothing for {self.timeout} s)",
                               transient=True, kind="connection") from None
            raise _Failure(f"codec server {self.server} unreachable: no answer for {name}.so within "
                           f"{self.timeout} s", transient=True, kind="unreachable") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise _Failure(f"download of {name}.so from {self.server} failed: {_short(e)}",
                           transient=True, kind="connection") from None
        except aiohttp.ClientError as e:
            raise _Failure(f"download of {name}.so from {self.server} failed: {_short(e)}",
                           transient=True, kind="connection") from None
        finally:
            self._remove_quiet(tmp)

    async def _write(self, resp, name, tmp, final):
        try:
            f = _open_tmp(tmp)
        except OSError as e:
            raise self._disk_failure(e, tmp) from None
        committing = False
        try:
            head = b""
            size = 0
            async for chunk in resp.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > MAX_LIB_BYTES:
                    raise _Failure(f"bad library {name}.so: larger than {MAX_LIB_BYTES >> 20} MiB")
                if len(head) < 64:
                    head += chunk[:64 - len(head)]
                try:
                    f.write(chunk)
                except OSError as e:
                    raise self._disk_failure(e, final) from None
            why = check_elf(head, self.arch, size=size)
            if why is not None:
                raise _Failure(f"bad library {name}.so: {why}", kind="bad")
            committing = True            # from here the thread owns f (even if we are cancelled)
            commit = asyncio.ensure_future(asyncio.to_thread(_commit, f, tmp, final))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                # A cancel must not cancel the commit before its thread starts: f would never be
                # closed. Let it finish (fsync and rename of a verified library), then stop.
                await asyncio.wait([commit])
                commit.exception()       # retrieved: a failed commit leaves only tmp, removed by our caller
                raise
            except OSError as e:
                raise self._disk_failure(e, final) from None
        finally:
            if not committing:
                f.close()

    @staticmethod
    def _disk_failure(e, path):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = "disk full" if e.errno == errno.ENOSPC else "disk quota exceeded"
            return _Failure(f"{what} writing {path}", fatal=True, kind="disk")
        return _Failure(f"cannot write {path}: {e.strerror or e}", fatal=True, kind="disk")

    @staticmethod
    def _remove_quiet(path):
        try:
            os.unlink(path)
        except OSError:
            pass

    # --- the loop ------------------------------------------------------------

    async def run(self, retry_interval=30):
        """:meth:`ensure` until ready, sleeping ``retry_interval`` (doubling, up to 10× or 10 min,
        with jitter) between failed rounds; then prune old version dirs. Returns the ready state;
        returns the error at once when the version or arch is unknown (a new manager is needed).
        Cancellable."""
        rounds = 0
        while True:
            state = await self.ensure()
            if state.state == READY:
                await self.prune()
                return self.state
            if not self.version or not self.arch:
                return state
            cap = max(retry_interval, min(600.0, retry_interval * 10))
            delay = backoff_delay(rounds, retry_interval, cap)
            rounds += 1
            logger.info("codecs: retrying in %.0f s (%s)", delay, state.reason)
            await asyncio.sleep(delay)

    async def prune(self, now=None):
        """Delete the version dirs :func:`prune_plan` picks; returns their names."""
        if not self.path:
            return []
        now = time.time() if now is None else now
        return await asyncio.to_thread(self._prune, now)

    def _prune(self, now):
        dirs = []
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        dirs.append((entry.name, entry.stat(follow_symlinks=False).st_mtime))
        except OSError as e:
            logger.warning("codecs: cannot list %s: %s", self.root, e.strerror or e)
            return []
        done = []
        for name in prune_plan(dirs, os.path.basename(self.path), now, self.grace):
            try:
                shutil.rmtree(os.path.join(self.root, name))
            except OSError as e:
                logger.warning("codecs: cannot remove old codec dir %s: %s", name, e.strerror or e)
                continue
            logger.info("codecs: removed %s (an older version, unused for over %.0f days)", name,
                        self.grace / 86400)
            done.append(name)
        return done


def _open_tmp(path):
    """A new file at ``path`` (which must not exist), open for binary writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    return os.fdopen(fd, "wb")


def _commit(f, tmp, final):
    with f:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _short(e):
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------------------------
# EasyAudioEncoder
# --------------------------------------------------------------------------------------------

def eae_query(arch, device_id, version=None, oldest_previous_version=None):
    """The codec API's query, in ClusterPlex's order; None values left out."""
    q = [("build", arch), ("deviceId", device_id), ("oldestPreviousVersion", oldest_previous_version),
         ("version", version)]
    return [(k, str(v)) for k, v in q if v is not None]


def parse_eae_answer(text, base_url=None):
    """``(zip url, license)`` from the codec API's XML: the first ``Codec`` element's ``url``
    (resolved against ``base_url``; http/https only) and its ``license`` attribute or child
    element's text. Raises EAEError for bad XML, no Codec, no url, no license."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise EAEError(f"EasyAudioEncoder API answer is not XML ({e}): {text[:120]!r}") from None
    codec = root if _local(root.tag) == "Codec" else next((el for el in root.iter() if _local(el.tag) == "Codec"),
                                                          None)
    if codec is None:
        raise EAEError(f"EasyAudioEncoder API answer has no Codec element: {text[:200]!r}")
    url = (codec.get("url") or "").strip()
    if not url:
        raise EAEError("EasyAudioEncoder API answer has no Codec url (no build for this arch or version?)")
    if base_url:
        url = urllib.parse.urljoin(base_url, url)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise EAEError(f"EasyAudioEncoder API answer has a bad Codec url {url!r}")
    license_ = codec.get("license")
    if license_ is None:
        child = next((el for el in codec if _local(el.tag).lower() == "license"), None)
        license_ = (child.text or "") if child is not None else None
    license_ = (license_ or "").strip()
    if not license_:
        raise EAEError("EasyAudioEncoder API answer has no license")
    return url, license_


def _local(tag):
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


async def _read_limited(resp, limit, what):
    data = bytearray()
    async for chunk in resp.content.iter_chunked(CHUNK):
        data += chunk
        if len(data) > limit:
            raise EAEError(f"{what} is larger than {limit >> 20} MiB")
    return bytes(data)


async def fetch_eae(session, api_url, arch, dest_dir, *, device_id, version=None, oldest_previous_version=None,
                    timeout=60):
    """Fetch EasyAudioEncoder for ``arch`` through Plex's codec API into ``dest_dir``.

    GET ``api_url?build=<arch>&deviceId=<id>&oldestPreviousVersion=<..>&version=<..>`` (the last two
    only when given), download the zip its ``Codec url`` names, and install the ``EasyAudioEncoder``
    executable found in it (at any depth) as ``<dest_dir>/EasyAudioEncoder`` (mode 0755, atomic
    rename) and the license as ``<dest_dir>/eae-license.txt``. The binary must be an ELF executable
    for ``arch``; nothing is run. ``session`` may be None (one is made and closed). Returns the
    binary's path; raises EAEError with the reason."""
    if session is None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                                                       sock_read=timeout),
                                         trust_env=True,
                                         headers={"User-Agent": f"clusterplex/{__version__}"}) as own:
            return await _fetch_eae(own, api_url, arch, dest_dir, device_id, version, oldest_previous_version)
    return await _fetch_eae(session, api_url, arch, dest_dir, device_id, version, oldest_previous_version)


async def _fetch_eae(session, api_url, arch, dest_dir, device_id, version, oldest_previous_version):
    if elf_target(arch) is None:
        raise EAEError(f"unknown Plex architecture {arch!r} for EasyAudioEncoder")
    params = eae_query(arch, device_id, version, oldest_previous_version)
    try:
        async with session.get(api_url, params=params) as resp:
            if resp.status != 200:
                raise EAEError(f"EasyAudioEncoder API {api_url} answered HTTP {resp.status}")
            raw = await _read_limited(resp, MAX_XML_BYTES, "EasyAudioEncoder API answer")
            base = str(resp.url)
        zip_url, license_ = parse_eae_answer(raw.decode("utf-8", "replace"), base)
        logger.info("EasyAudioEncoder: downloading %s", zip_url)
        async with session.get(zip_url) as resp:
            if resp.status != 200:
                raise EAEError(f"EasyAudioEncoder download {zip_url} answered HTTP {resp.status}")
            data = await _read_limited(resp, MAX_EAE_ZIP_BYTES, f"EasyAudioEncoder zip {zip_url}")
    except aiohttp.ClientConnectorError as e:
        raise EAEError(f"EasyAudioEncoder: {_short(e)}") from None
    except asyncio.TimeoutError:
        raise EAEError(f"EasyAudioEncoder: no answer from {api_url} in time") from None
    except aiohttp.ClientError as e:
        raise EAEError(f"EasyAudioEncoder download failed: {_short(e)}") from None
    try:
        return await asyncio.to_thread(_install_eae, data, zip_url, license_, arch, dest_dir)
    except OSError as e:
        raise EAEError(f"cannot install EasyAudioEncoder into {dest_dir}: {e.strerror or e}") from None


def _install_eae(data, zip_url, license_, arch, dest_dir):
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise EAEError(f"EasyAudioEncoder download {zip_url} is not a zip file ({e})") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir() and i.filename.replace("\\", "/").rsplit("/", 1)[-1]
                   == EAE_BINARY]
        if not members:
            names = ", ".join(i.filename for i in zf.infolist()[:10])
            raise EAEError(f"no {EAE_BINARY} in the zip {zip_url} (it holds: {names or 'nothing'})")
        member = min(members, key=lambda i: i.filename.count("/"))
        if member.file_size > MAX_EAE_ZIP_BYTES:
            raise EAEError(f"{EAE_BINARY} in {zip_url} is too large ({member.file_size} bytes)")
        try:
            binary = zf.read(member)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, ValueError, OSError) as e:
            raise EAEError(f"cannot extract {member.filename} from {zip_url}: {e}") from None
    why = check_elf(binary, arch, size=len(binary), types=(ET_EXEC, ET_DYN))
    if why is not None:
        raise EAEError(f"{EAE_BINARY} from {zip_url} is not a program for {arch}: {why}")
    os.makedirs(dest_dir, mode=0o755, exist_ok=True)
    path = os.path.join(dest_dir, EAE_BINARY)
    _atomic_write(path, binary, 0o755)
    _atomic_write(os.path.join(dest_dir, EAE_LICENSE), (license_ + "\n").encode(), 0o644)
    _fsync_dir(dest_dir)
    logger.info("EasyAudioEncoder installed in %s", dest_dir)
    return path


def _atomic_write(path, data, mode):
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


__all__ = [
    "DEFAULT_SERVER", "DEFAULT_EAE_API", "DEFAULT_LIBS", "CodecError", "CodecListError", "EAEError",
    "load_list", "version_dir", "lib_url", "elf_target", "elf_plex_arch", "check_elf", "prune_plan",
    "backoff_delay", "CodecState", "CodecManager", "eae_query", "parse_eae_answer", "fetch_eae",
]
