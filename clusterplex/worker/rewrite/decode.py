"""What this worker's hardware offers a job, and hardware decode (docs/rewrite.md, ``hwaccel``).

``hw`` is the worker's detected hardware (``gpus[].vendor`` / ``render_node``,
``hw_codecs`` as ``"<codec>:<api>:<encode|decode>"``).
"""

import re

from ...core import args as plexargs
from ...core.capabilities import DECODER_CODEC, VA_DRIVER_VENDOR

# Capability names that stand for decoding with each API (hw_codecs "<codec>:<name>:decode").
# QSV jobs decode through VAAPI on the same Intel GPU: with Plex's decoder hints
# (native decoders) `-hwaccel qsv` decodes nothing in hardware, and ffmpeg 5.1
# even defaults its output to GPU surfaces, which Plex's software graphs cannot take.
DECODE_CAPS = {"vaapi": ("vaapi",), "nvenc": ("nvdec", "cuda"), "qsv": ("vaapi", "qsv")}
DECODE_FLAGS = {"vaapi": ("-hwaccel", "vaapi", "-hwaccel_device", "{node}"), "nvenc": ("-hwaccel", "cuda"),
                "qsv": ("-hwaccel", "vaapi", "-hwaccel_device", "{node}")}

VIDEO_CODECS = frozenset("""
    h264 hevc av1 vp8 vp9 mpeg1video mpeg2video mpeg4 msmpeg4v1 msmpeg4v2 msmpeg4v3 h263 vc1 wmv1 wmv2 wmv3
    mjpeg prores theora flv1 rv30 rv40 dvvideo vvc
    """.split())
CODEC_ALIASES = {"h265": "hevc", "avc": "h264", "mpeg2": "mpeg2video", "mpeg1": "mpeg1video", "cuda": "nvdec"}


def norm_codec(name):
    """A codec name as ``hw_codecs`` spells it (``h265`` -> ``hevc``)."""
    name = (name or "").strip().lower()
    return CODEC_ALIASES.get(name, name)


def hw_caps(hw):
    """The worker's ``hw_codecs`` as ``(codec, api, direction)`` tuples, names normalised."""
    caps = set()
    for entry in (hw or {}).get("hw_codecs") or ():
        parts = [norm_codec(p) for p in str(entry).split(":")]
        if len(parts) == 3:
            caps.add(tuple(parts))
    return caps


def render_node(cfg, hw, api):
    """The DRM render node for ``api``: the configured one, else the first Intel (qsv) or Intel/AMD GPU's."""
    if cfg.render_node:
        return cfg.render_node
    vendors = ("intel",) if api == "qsv" else ("intel", "amd")
    for gpu in (hw or {}).get("gpus") or ():
        if str(gpu.get("vendor", "")).lower() in vendors and gpu.get("render_node"):
            return gpu["render_node"]
    return None


def can_encode(caps, codec, api):
    return (codec, api, "encode") in caps


def device_ok(cfg, hw, api):
    """VAAPI needs a render node; the others need nothing more."""
    return api != "vaapi" or render_node(cfg, hw, api) is not None


def add_decode(parsed, caps, api, node, edits):
    """Hardware decode of the first local input with ``api`` (its flags go into ``edits``); the note, or None."""
    if any(t.kind == "option" and t.name.startswith("hwaccel") for t in parsed.tokens):
        return None   # Plex already chose how to decode
    first = next((t for t in parsed.tokens if t.kind == "input" and t.value and not plexargs.is_url(t.value)
                  and t.value != "-"), None)
    if first is None:
        return None
    group = parsed.groups[first.group]
    # a decoder name (Plex's software AV1 decode is `-codec:0 libdav1d`) by its codec
    video = [h for h in (DECODER_CODEC.get(norm_codec(t.value), norm_codec(t.value)) for t in group.codecs)
             if h in VIDEO_CODECS]
    inp = f"input {group.ordinal}"
    if not video:
        return f"no hardware decode for {inp}: no video decoder hint"
    missing = [h for h in video if not any((h, name, "decode") in caps for name in DECODE_CAPS[api])]
    if missing:
        return f"no hardware decode for {inp}: this worker cannot decode {missing[0]} with {DECODE_CAPS[api][0]}"
    flags = [f.format(node=node) for f in DECODE_FLAGS[api]]
    if not node and "-hwaccel_device" in flags:      # qsv on an unlisted GPU: libva's default
        flags = flags[:flags.index("-hwaccel_device")]
    edits.before[first.index] += flags
    return f"hardware decode of {inp} ({', '.join(video)}): {' '.join(flags)}"


# Plex's own VAAPI set-up pins a DRM node (`-init_hw_device vaapi=vaapi:/dev/dri/renderD128,driver=iHD`,
# `-vaapi_device`, `-hwaccel_device`): the node of the Plex host, not necessarily this worker's.
PINNED_DEVICE_OPTIONS = ("init_hw_device", "vaapi_device", "hwaccel_device")
_DRM_NODE = re.compile(r"/dev/dri/(?:renderD|card)\d+")
_DRIVER = re.compile(r",driver=([\w.-]+)")


def pinned_node(cfg, hw, driver=""):
    """This worker's render node for a job pinned to VA ``driver`` (``iHD``: an Intel GPU's), or None."""
    if cfg.render_node:
        return cfg.render_node
    vendor = VA_DRIVER_VENDOR.get((driver or "").lower())
    vendors = (vendor,) if vendor else ("intel", "amd")
    for gpu in (hw or {}).get("gpus") or ():
        if str(gpu.get("vendor", "")).lower() in vendors and gpu.get("render_node"):
            return gpu["render_node"]
    return None


def repin_devices(parsed, cfg, hw):
    """``(argv, notes)``: every DRM node Plex pinned replaced by this worker's own (of the pinned driver's vendor)."""
    argv, notes = list(parsed.argv), []
    for t in parsed.tokens:
        if t.kind != "option" or t.name not in PINNED_DEVICE_OPTIONS or not t.value:
            continue
        m = _DRM_NODE.search(t.value)
        if not m or (t.name == "init_hw_device" and not t.value.startswith(("vaapi", "qsv"))):
            continue
        driver = _DRIVER.search(t.value)
        node = pinned_node(cfg, hw, driver.group(1) if driver else "")
        if node and node != m.group(0):
            argv[t.index + 1] = t.value[:m.start()] + node + t.value[m.end():]
            notes.append(f"-{t.name}: {m.group(0)} -> {node} (this worker's render node)")
    return argv, notes
