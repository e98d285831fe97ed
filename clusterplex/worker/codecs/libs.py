"""Plex's codec libraries, the pure parts: the default list and ``codecs.list`` files (load_list
reads the one file it is given), names, URLs and directories, the prune plan, retry backoff, the
state a manager reports, and the errors. See docs/codecs.md.
"""

import dataclasses
import random
import re

DEFAULT_SERVER = "https://downloads.plex.tv/codecs"

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
COMPONENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# "<codec version>-<plex arch>": old 8217c1c-4578 and new c75335c-a7cfb6836f3ed63280a7eb83 forms.
_VERSION_DIR_RE = re.compile(r"(?P<version>[0-9a-f]{7}-[0-9a-f]{4,64})-(?P<arch>linux-[A-Za-z0-9_.-]+)")

IDLE, DOWNLOADING, READY, ERROR = "idle", "downloading", "ready", "error"


class CodecError(Exception):
    """A codec list, library or EasyAudioEncoder problem, with a message for humans."""


class CodecListError(CodecError, ValueError):
    """A bad ``codecs.list`` file."""


class EAEError(CodecError):
    """EasyAudioEncoder could not be fetched."""


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


def short_error(e):
    """An exception as at most 300 characters, for a reason or a log line."""
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
