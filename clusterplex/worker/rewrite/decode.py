"""What this worker's hardware offers a job, and hardware decode (docs/rewrite.md, ``hwaccel``).

``hw`` is the worker's detected hardware (``gpus[].vendor`` / ``render_node``,
``hw_codecs`` as ``"<codec>:<api>:<encode|decode>"``).
"""

from ...core import args as plexargs

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
    video = [h for h in (norm_codec(t.value) for t in group.codecs) if h in VIDEO_CODECS]
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
