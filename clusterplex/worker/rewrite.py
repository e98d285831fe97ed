"""Worker-side rewrites of a Plex transcoder job (pure functions).

A job arrives as ``{"argv": [...], "cwd": str, "env": {...}}``, written by PMS
for the Plex host. Before running it, a worker may have to

* map paths: the media or transcode share is mounted elsewhere on this
  machine (``path_map``);
* use its own hardware: swap Plex's software encoder (``libx264``,
  ``libx265``) for a VAAPI, NVENC or QSV one, translate the rate control, add
  hardware decode (``hwaccel``, ``encoder_swaps``);
* point the transcoder at this machine's codecs and architecture
  (``codecs_dir``, ``PLEX_ARCH``) and apply local environment overrides
  (``env``).

:func:`rewrite` does all of it and returns a :class:`Result` with the new
argv, cwd and env plus ``notes``: one short sentence per change (or per
change it refused), for the worker's log. Inputs are never mutated. No I/O,
no logging, standard library only.

Settings (the worker's rewrite configuration; a dict, a namespace or a
:class:`Settings`; every key optional)
------------------------------------------------------------------------

``path_map`` (list of ``{"from": str, "to": str}``, default ``[]``)
    Path prefixes to rewrite, both absolute, neither ``/`` (trailing slashes
    are ignored). Applied to every argv element that is or contains a local
    path (inputs, outputs, ``-map_inlineass`` values, ``temp-0.srt``
    sidecars, ``font_path=``/``fontconfig_file=`` inside filter graphs,
    ``file:`` paths), to ``cwd`` and to the env values ``EAE_ROOT`` and
    ``FFMPEG_EXTERNAL_LIBS`` (whose spaces Plex backslash-escapes; they are
    unescaped, mapped and escaped again). A prefix matches on path-component
    boundaries only (``/data/media`` matches ``/data/media`` and
    ``/data/media/x``, never ``/data/media2``); inside an element it must
    start the element or follow one of ``= ' " , ; | [`` or ``file:`` and be
    followed by ``/``, the end, or one of ``' " , ; | ] :``. The longest
    ``from`` wins; each path is mapped once (no chaining). URLs
    (``scheme://...``, also inside an element) are never rewritten. Inside
    filter graphs a ``to`` containing graph syntax (``\\ ' : , ; [ ]``) is
    not substituted (a note says so): it would need escaping.

``hwaccel`` ("none" | "auto" | "vaapi" | "qsv" | "nvenc", default "none")
    "none": codecs and hardware flags are left exactly as Plex wrote them
    (``encoder_swaps`` is ignored too). "auto": per software-encoded video
    stream, the first of nvenc, vaapi, qsv that the worker can encode the
    stream's codec with (``hw["hw_codecs"]`` has ``<codec>:<api>:encode``;
    vaapi also needs a render node); nothing if there is none. "vaapi" /
    "qsv" / "nvenc": that API only, when the worker has the encoder.
    Only ``-codec:N libx264`` (h264) and ``-codec:N libx265`` (hevc) with a
    plain numeric stream index are swapped; ``copy`` and audio/subtitle
    streams are never touched; nothing is swapped when the job already uses
    a hardware encoder or sets up hardware devices itself (Plex chose
    hardware, fixture F4). One API per job. When a stream is swapped:

    * decode: when the argv has no ``-hwaccel*`` option, the decode flags
      of the API (vaapi: ``-hwaccel vaapi -hwaccel_device <node>``; nvenc:
      ``-hwaccel cuda``; qsv: ``-hwaccel vaapi -hwaccel_device <node>`` too,
      see :data:`DECODE_CAPS`) go right before the first ``-i`` of a local
      file, provided that input's video decoder hints (``-codec:N <c>``
      before the ``-i``) are all in the worker's decode capabilities
      (``<c>:vaapi:decode``; ``<c>:nvdec:decode`` or ``<c>:cuda:decode``;
      for qsv ``<c>:vaapi:decode`` or ``<c>:qsv:decode``). No hint, no
      hardware decode. Frames come back to system memory (no
      ``-hwaccel_output_format``), so Plex's software filter graphs keep
      working. Decode is only added together with an encoder swap.
    * encoder and per-stream options (only those with the same ``:N``, in
      the same output file): see :data:`NVENC_PRESETS` / :data:`QSV_PRESETS`
      and :func:`rewrite`'s notes. vaapi: ``-crf`` -> ``-qp``; ``-preset``,
      ``-tune``, ``-x264opts``, ``-x264-params``, ``-x265-params``,
      ``-pix_fmt`` dropped; ``-vaapi_device <node>`` added once (global);
      ``,format=nv12,hwupload`` appended to the filter graph output that
      feeds the stream (or ``-filter:N format=nv12,hwupload`` when the
      stream is mapped straight from an input; not ``-vf:N``, which ffmpeg
      5.1 applies to every video stream of the file). nvenc: ``-crf`` -> ``-cq``,
      ``-preset`` -> p1..p7, ``-tune``/``-x264opts``/... dropped,
      ``-forced-idr:N 1`` added when ``-force_key_frames:N`` is present
      (otherwise NVENC makes forced key frames plain intra frames and the
      segmenters cannot cut there). qsv: ``-crf`` -> ``-global_quality``,
      ``-preset`` clamped to veryfast..veryslow, ``-x264opts``/... and
      ``-pix_fmt`` dropped, ``-forced_idr:N 1`` with forced key frames,
      ``-init_hw_device qsv=hw -filter_hw_device hw`` (global; with a render
      node other than renderD128: ``-init_hw_device vaapi=va:<node>
      -init_hw_device qsv=hw@va``) and ``,format=nv12,hwupload=extra_hw_frames=64``
      on the graph. All: ``-profile:N`` mapped to the target's names
      (baseline -> constrained_baseline on VAAPI, high444 -> high444p on
      NVENC) or dropped; ``-level:N 4.1`` -> ``-level:N 41`` (level_idc;
      hevc: 123), which all three accept.

``encoder_swaps`` (mapping str -> str, default ``{}``)
    Explicit choice per software encoder, overriding the ``hwaccel`` choice
    (only consulted when ``hwaccel`` is not "none"), e.g.
    ``{"libx264": "h264_nvenc"}``. Keys: ``libx264``, ``libx265``. Values:
    ``<codec>_<vaapi|nvenc|qsv>`` of the same codec, or the key itself to
    keep that encoder in software. A swap to an encoder the worker cannot
    run is refused with a note and the stream is left unchanged.

``render_node`` (str or None, default None)
    DRM render node for vaapi/qsv, e.g. ``/dev/dri/renderD129``. None: the
    first Intel/AMD GPU in ``hw["gpus"]`` that has a ``render_node`` (qsv:
    the first Intel one).

``codecs_dir`` (str or None, default None)
    This worker's Plex codec directory. When set, ``FFMPEG_EXTERNAL_LIBS``
    becomes this directory with spaces backslash-escaped and a trailing
    slash, as PMS writes it.

``env`` (mapping str -> str or None, default ``{}``)
    Environment overrides, applied last; None removes the variable.
    ``PLEX_ARCH`` and ``PLEX_MEDIA_SERVER_INFO_MODEL`` are always set from
    ``hw["cpu"]["arch"]`` (when known) before these.
"""

import re
from dataclasses import dataclass, field

from ..core import args as plexargs

HWACCEL_MODES = ("none", "auto", "vaapi", "qsv", "nvenc")
AUTO_ORDER = ("nvenc", "vaapi", "qsv")
APIS = ("vaapi", "nvenc", "qsv")

# Software encoders a worker may replace, and the codec they produce.
SOFTWARE_ENCODERS = {"libx264": "h264", "libx265": "hevc"}
# An output codec ending like this means Plex already chose hardware.
HW_ENCODER_SUFFIXES = ("_vaapi", "_nvenc", "_qsv", "_v4l2m2m", "_videotoolbox", "_amf", "_omx", "_mf",
                       "_mediacodec", "_rkmpp", "_vulkan", "_cuvid")
# Options by which a job sets up hardware itself: no encoder swap then.
HW_DEVICE_OPTIONS = frozenset(("init_hw_device", "filter_hw_device", "vaapi_device", "qsv_device",
                               "hwaccel_output_format"))
# Capability names that stand for decoding with each API (hw_codecs "<codec>:<name>:decode").
# QSV jobs decode through VAAPI on the same Intel GPU: with Plex's decoder hints
# (native decoders) `-hwaccel qsv` decodes nothing in hardware, and ffmpeg 5.1
# even defaults its output to GPU surfaces, which Plex's software graphs cannot take.
DECODE_CAPS = {"vaapi": ("vaapi",), "nvenc": ("nvdec", "cuda"), "qsv": ("vaapi", "qsv")}
DECODE_FLAGS = {"vaapi": ("-hwaccel", "vaapi", "-hwaccel_device", "{node}"), "nvenc": ("-hwaccel", "cuda"),
                "qsv": ("-hwaccel", "vaapi", "-hwaccel_device", "{node}")}
UPLOAD_FILTERS = {"vaapi": "format=nv12,hwupload", "qsv": "format=nv12,hwupload=extra_hw_frames=64"}

# x264/x265 presets -> NVENC p1 (fastest) .. p7 (slowest, best): the ten
# x264 speeds spread over seven, medium = p4 (both encoders' default). Plex
# streams with "veryfast" -> p2.
NVENC_PRESETS = {"ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p3",
                 "medium": "p4", "slow": "p5", "slower": "p6", "veryslow": "p7", "placebo": "p7"}
NVENC_NATIVE_PRESETS = frozenset(f"p{i}" for i in range(1, 8)) | {"default", "slow", "medium", "fast", "hp", "hq",
                                                                   "bd", "ll", "llhq", "llhp"}
# QSV knows veryfast..veryslow by the same names; the extremes are clamped.
QSV_PRESETS = {"ultrafast": "veryfast", "superfast": "veryfast", "veryfast": "veryfast", "faster": "faster",
               "fast": "fast", "medium": "medium", "slow": "slow", "slower": "slower", "veryslow": "veryslow",
               "placebo": "veryslow"}
# x264/x265 profile names -> the target encoder's (Debian ffmpeg 5.1 `-h encoder=...`).
PROFILES = {
    ("vaapi", "h264"): {"baseline": "constrained_baseline", "constrained_baseline": "constrained_baseline",
                        "main": "main", "high": "high"},
    ("vaapi", "hevc"): {"main": "main", "main10": "main10"},
    ("nvenc", "h264"): {"baseline": "baseline", "main": "main", "high": "high", "high444": "high444p",
                        "high444p": "high444p"},
    ("nvenc", "hevc"): {"main": "main", "main10": "main10", "rext": "rext"},
    ("qsv", "h264"): {"baseline": "baseline", "main": "main", "high": "high"},
    ("qsv", "hevc"): {"main": "main", "main10": "main10", "mainsp": "mainsp", "rext": "rext"},
}
# level_idc = level * factor (H.264: 4.1 -> 41; HEVC: 4.1 -> 123).
LEVEL_FACTOR = {"h264": 10, "hevc": 30}
# Per-stream options of the software encoders that have no hardware meaning.
DROP_ALWAYS = frozenset(("tune", "x264opts", "x264-params", "x265-params"))

VIDEO_CODECS = frozenset("""
    h264 hevc av1 vp8 vp9 mpeg1video mpeg2video mpeg4 msmpeg4v1 msmpeg4v2 msmpeg4v3 h263 vc1 wmv1 wmv2 wmv3
    mjpeg prores theora flv1 rv30 rv40 dvvideo vvc
    """.split())
CODEC_ALIASES = {"h265": "hevc", "avc": "h264", "mpeg2": "mpeg2video", "mpeg1": "mpeg1video", "cuda": "nvdec"}

GRAPH_OPTIONS = frozenset(("filter_complex", "lavfi", "vf", "af", "filter"))
GRAPH_SPECIAL = frozenset("\\':,;[]")
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"|;,\]]*")


class SettingsError(ValueError):
    """A bad rewrite setting; the message starts with the key's path."""


@dataclass(frozen=True)
class Settings:
    path_map: tuple = ()          # ((from, to), ...), normalised
    hwaccel: str = "none"
    encoder_swaps: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    codecs_dir: str = None
    render_node: str = None


@dataclass(frozen=True)
class Result:
    argv: list
    cwd: str
    env: dict
    notes: list
    api: str = None               # "vaapi" | "nvenc" | "qsv" when a stream was swapped, else None


# --------------------------------------------------------------------------- settings

def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        value = obj.get(key, default)
    else:
        value = getattr(obj, key, default)
    return default if value is None and default is not None else value


def _norm_abs(path, where):
    if not isinstance(path, str) or not path.startswith("/"):
        raise SettingsError(f"{where}: must be an absolute path; got {path!r}")
    stripped = path.rstrip("/")
    if not stripped:
        raise SettingsError(f"{where}: must not be /")
    return stripped


def check_settings(settings):
    """Validate and normalise ``settings``; a :class:`Settings`, or :class:`SettingsError`."""
    if isinstance(settings, Settings):
        return settings
    pm = []
    for i, entry in enumerate(_get(settings, "path_map", []) or []):
        if isinstance(entry, (list, tuple)) and len(entry) == 2:
            src, dst = entry
        else:
            src, dst = _get(entry, "from"), _get(entry, "to")
        pm.append((_norm_abs(src, f"path_map[{i}].from"), _norm_abs(dst, f"path_map[{i}].to")))
    froms = [s for s, _ in pm]
    for s in froms:
        if froms.count(s) > 1:
            raise SettingsError(f"path_map: {s} is mapped twice")

    mode = _get(settings, "hwaccel", "none") or "none"
    if mode not in HWACCEL_MODES:
        raise SettingsError(f"hwaccel: must be one of {', '.join(HWACCEL_MODES)}; got {mode!r}")

    swaps = {}
    raw = _get(settings, "encoder_swaps", {}) or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"encoder_swaps: must be a mapping; got {type(raw).__name__}")
    for src, dst in raw.items():
        if src not in SOFTWARE_ENCODERS:
            raise SettingsError(f"encoder_swaps.{src}: only {', '.join(SOFTWARE_ENCODERS)} can be swapped")
        codec = SOFTWARE_ENCODERS[src]
        allowed = [src] + [f"{codec}_{api}" for api in APIS]
        if dst not in allowed:
            raise SettingsError(f"encoder_swaps.{src}: must be one of {', '.join(allowed)}; got {dst!r}")
        swaps[src] = dst

    env = _get(settings, "env", {}) or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                            for k, v in env.items()):
        raise SettingsError("env: must be a mapping of names to strings (or null to remove)")

    codecs_dir = _get(settings, "codecs_dir")
    if codecs_dir is not None:
        if not isinstance(codecs_dir, str) or not codecs_dir.startswith("/"):
            raise SettingsError(f"codecs_dir: must be an absolute path; got {codecs_dir!r}")
    render_node = _get(settings, "render_node")
    if render_node is not None and (not isinstance(render_node, str) or not render_node.startswith("/dev/")):
        raise SettingsError(f"render_node: must be a device path such as /dev/dri/renderD128; got {render_node!r}")
    return Settings(tuple(pm), mode, swaps, dict(env), codecs_dir, render_node)


# --------------------------------------------------------------------------- paths

def escape_spaces(path):
    """``FFMPEG_EXTERNAL_LIBS`` spelling: spaces backslash-escaped (PROTOCOL.md §3)."""
    return path.replace(" ", "\\ ")


def unescape_spaces(value):
    return value.replace("\\ ", " ")


def _alternation(path_map):
    ordered = sorted(path_map, key=lambda p: len(p[0]), reverse=True)
    return "|".join(re.escape(src) for src, _ in ordered), dict(path_map)


def map_path(path, path_map):
    """``path`` (one whole path) with its longest matching ``from`` prefix replaced.

    ``path_map`` as in the settings; for the worker's own messages (where is
    this input on this machine?).
    """
    pm = check_settings({"path_map": path_map}).path_map
    return _PathMapper(pm).whole_path(path, "") if pm and path else path


class _PathMapper:
    def __init__(self, path_map):
        self.table = dict(path_map)
        alt, _ = _alternation(path_map) if path_map else ("", None)
        self.whole = re.compile(f"({alt})(?=/|$)") if path_map else None
        self.inner = re.compile(r"(?:^|(?<=[='\",;|\[])|(?<=file:))(" + alt + r")(?=/|$|['\",;|\]:])") \
            if path_map else None
        self.used = {}       # from -> [where, ...]
        self.refused = []

    def _use(self, src, where):
        places = self.used.setdefault(src, [])
        if where not in places:
            places.append(where)

    def whole_path(self, path, where):
        if not self.whole or not path:
            return path
        m = self.whole.match(path)
        if not m:
            return path
        self._use(m.group(1), where)
        return self.table[m.group(1)] + path[m.end():]

    def text(self, text, where, graph=False):
        if not self.inner or not text or plexargs.is_url(text):
            return text
        urls = [m.span() for m in URL_IN_TEXT.finditer(text)]

        def sub(m):
            if any(a <= m.start() < b for a, b in urls):
                return m.group(0)
            src = m.group(1)
            dst = self.table[src]
            if graph and GRAPH_SPECIAL.intersection(dst):
                self.refused.append(f"path {src} -> {dst} not applied in {where}: "
                                    "the target needs filter-graph escaping")
                return m.group(0)
            self._use(src, where)
            return dst
        return self.inner.sub(sub, text)

    def notes(self):
        out = [f"path {src} -> {self.table[src]} ({', '.join(places)})" for src, places in self.used.items()]
        return out + self.refused


# --------------------------------------------------------------------------- argv structure

@dataclass
class _Tok:
    kind: str        # option | flag | input | output
    name: str
    spec: str        # stream specifier after the first ":" (None without)
    value: str
    index: int
    group: int


@dataclass
class _Group:
    kind: str        # input | output | tail
    tokens: list
    ordinal: int     # n-th input / n-th output


def _parse(argv):
    toks, groups, pending = [], [], []
    counts = {"input": 0, "output": 0}
    for kind, name, value, index in plexargs.tokenize(argv):
        spec = None
        if kind != "output":
            head = argv[index][1:]
            spec = head.split(":", 1)[1] if ":" in head else None
        tok = _Tok(kind, name, spec, value, index, len(groups))
        toks.append(tok)
        pending.append(tok)
        if kind in ("input", "output"):
            groups.append(_Group(kind, pending, counts[kind]))
            counts[kind] += 1
            pending = []
    if pending:
        groups.append(_Group("tail", pending, 0))
    return toks, groups


class _Edits:
    """Edits keyed by original argv positions, so positions never shift."""

    def __init__(self, argv):
        self.cells = [[a] for a in argv]
        self.before = [[] for _ in argv]
        self.after = [[] for _ in argv]
        self.head = []

    def set(self, i, value):
        self.cells[i] = [value]

    def get(self, i):
        return self.cells[i][0]

    def drop(self, tok):
        self.cells[tok.index] = []
        if tok.value is not None and tok.index + 1 < len(self.cells):
            self.cells[tok.index + 1] = []

    def result(self):
        out = list(self.head)
        for b, c, a in zip(self.before, self.cells, self.after):
            out += b + c + a
        return out


# --------------------------------------------------------------------------- hardware

def _norm_codec(name):
    name = (name or "").strip().lower()
    return CODEC_ALIASES.get(name, name)


def _caps(hw):
    caps = set()
    for entry in (hw or {}).get("hw_codecs") or ():
        parts = [_norm_codec(p) for p in str(entry).split(":")]
        if len(parts) == 3:
            caps.add(tuple(parts))
    return caps


def _render_node(cfg, hw, api):
    if cfg.render_node:
        return cfg.render_node
    vendors = ("intel",) if api == "qsv" else ("intel", "amd")
    for gpu in (hw or {}).get("gpus") or ():
        if str(gpu.get("vendor", "")).lower() in vendors and gpu.get("render_node"):
            return gpu["render_node"]
    return None


def _can_encode(caps, codec, api):
    return (codec, api, "encode") in caps


def _device_ok(cfg, hw, api):
    return api != "vaapi" or _render_node(cfg, hw, api) is not None


def _split_top(text, sep):
    """Split a filter graph on ``sep`` outside quotes and escapes."""
    parts, buf, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 2
            continue
        if c == "'":
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append("".join(buf))
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    parts.append("".join(buf))
    return parts


TRAILING_LABELS = re.compile(r"(\s*(?:\[[^\[\]]*\]\s*)+)$")


def amend_graph(graph, label, filters, taken=()):
    """``graph`` with ``filters`` appended to the chain whose output is ``[label]``, or None.

    A chain with that one output gets ``,<filters>`` before the label; a chain
    with several outputs has the label renamed and a new chain
    ``[renamed]<filters>[label]`` appended. ``taken``: labels in use elsewhere.
    """
    pad = f"[{label}]"
    if graph.count(pad) != 1:      # absent, or consumed inside the graph (not an output)
        return None
    chains = _split_top(graph, ";")
    for k, chain in enumerate(chains):
        m = TRAILING_LABELS.search(chain)
        if not m or pad not in m.group(1):
            continue
        body, tail = chain[:m.start()], m.group(1)
        if not re.sub(r"^\s*(?:\[[^\[\]]*\]\s*)*", "", body).strip():
            return None          # no filter in this chain
        if re.findall(r"\[([^\[\]]*)\]", tail) == [label]:
            chains[k] = body.rstrip() + "," + filters + tail
            return ";".join(chains)
        new = f"cphw{label}"
        n = 0
        while f"[{new}]" in graph or new in taken:
            n += 1
            new = f"cphw{label}_{n}"
        chains[k] = body + tail.replace(pad, f"[{new}]")
        return ";".join(chains) + f";[{new}]{filters}{pad}"
    return None


def _single_stream_map(value):
    return bool(re.fullmatch(r"\[[^\[\]]+\]|\d+:(?:[vasdt]:)?\d+", value or ""))


def _fmt_number(value, as_int):
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if as_int:
        return str(int(round(f)))
    return str(int(f)) if f == int(f) else value


def _level_idc(value, codec):
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if f <= 0:
        return None
    return str(int(round(f * LEVEL_FACTOR[codec]))) if f < 10 else str(int(f))


class _Codecs:
    def __init__(self, argv, toks, groups, cfg, hw, edits):
        self.argv, self.toks, self.groups, self.cfg, self.hw, self.edits = argv, toks, groups, cfg, hw, edits
        self.caps = _caps(hw)
        self.notes = []
        self.api = None
        self.node = None

    # -- helpers
    def where(self, group, spec):
        return f"stream {spec}" if group.ordinal == 0 else f"output {group.ordinal} stream {spec}"

    def graph_tokens(self):
        return [t for t in self.toks if t.kind == "option" and t.name in ("filter_complex", "lavfi")
                and t.value is not None]

    def choose(self, enc, codec, where):
        """``(api, target)``, or None (with a note when something was refused)."""
        cfg = self.cfg
        explicit = cfg.encoder_swaps.get(enc)
        if explicit == enc:
            return None
        if explicit:
            api = explicit.rsplit("_", 1)[1]
            if not _can_encode(self.caps, codec, api):
                self.notes.append(f"{where}: {enc} -> {explicit} refused: this worker has no {codec} {api} encoder")
                return None
            if not _device_ok(cfg, self.hw, api):
                self.notes.append(f"{where}: {enc} -> {explicit} refused: no VAAPI render node on this worker")
                return None
            return api, explicit
        if cfg.hwaccel == "auto":
            for api in AUTO_ORDER:
                if _can_encode(self.caps, codec, api) and _device_ok(cfg, self.hw, api):
                    return api, f"{codec}_{api}"
            self.notes.append(f"{where}: {enc} kept: no hardware {codec} encoder on this worker")
            return None
        api = cfg.hwaccel
        if not _can_encode(self.caps, codec, api):
            self.notes.append(f"{where}: {enc} kept: this worker has no {codec} {api} encoder")
            return None
        if not _device_ok(cfg, self.hw, api):
            self.notes.append(f"{where}: {enc} kept: no VAAPI render node on this worker")
            return None
        return api, f"{codec}_{api}"

    def upload_plan(self, group, ctok, api, where):
        """A function applying the hwupload for this stream, and its note; or (None, reason)."""
        spec = ctok.spec
        filters = UPLOAD_FILTERS[api]
        n = int(spec)
        maps = [t for t in group.tokens if t.kind == "option" and t.name == "map" and t.index < ctok.index]
        if len(maps) != n + 1 or not all(_single_stream_map(m.value) for m in maps):
            return None, f"cannot tell which -map feeds stream {spec}"
        mapped = maps[-1].value
        if mapped.startswith("["):
            label = mapped[1:-1]
            graphs = self.graph_tokens()
            taken = set()
            for g in graphs:
                taken.update(re.findall(r"\[([^\[\]]*)\]", self.edits.get(g.index + 1)))
            for g in graphs:
                current = self.edits.get(g.index + 1)
                amended = amend_graph(current, label, filters, taken)
                if amended is not None:
                    def apply(i=g.index + 1, text=amended):
                        self.edits.set(i, text)
                    return apply, f"filter graph output [{label}]: appended {filters}"
            return None, f"no filter graph has output [{label}]"
        # mapped straight from an input: a per-stream filter
        filt = [t for t in group.tokens if t.kind == "option" and t.name in ("vf", "filter", "filter_script")]
        exact = [t for t in filt if t.name == "filter" and t.spec == spec]
        if len(filt) != len(exact) or len(exact) > 1:
            return None, "its output file has filters this rewrite cannot amend safely"
        if exact:
            tok = exact[0]

            def apply(i=tok.index + 1):
                self.edits.set(i, self.edits.get(i) + "," + filters)
            return apply, f"{where}: appended {filters} to -filter:{spec}"

        def apply():
            self.edits.before[ctok.index] += [f"-filter:{spec}", filters]
        return apply, f"{where}: added -filter:{spec} {filters}"

    def translate(self, group, ctok, api, codec, target, where):
        spec, edits = ctok.spec, self.edits
        dropped, changed = [], []
        forced = False
        for t in group.tokens:
            if t.kind != "option" or t.spec != spec or t is ctok:
                continue
            opt = f"-{t.name}"
            if t.name == "crf":
                new = {"vaapi": "qp", "nvenc": "cq", "qsv": "global_quality"}[api]
                val = _fmt_number(t.value, as_int=api != "nvenc")
                if val is None:
                    edits.drop(t)
                    dropped.append(f"{opt} {t.value}")
                    continue
                edits.set(t.index, f"-{new}:{spec}")
                edits.set(t.index + 1, val)
                changed.append(f"-crf {t.value} -> -{new} {val}")
            elif t.name == "preset":
                table = {"nvenc": NVENC_PRESETS, "qsv": QSV_PRESETS}.get(api)
                val = (t.value or "").lower()
                if api == "nvenc" and val in NVENC_NATIVE_PRESETS and val not in NVENC_PRESETS:
                    continue
                if table and val in table:
                    if table[val] != t.value:
                        edits.set(t.index + 1, table[val])
                        changed.append(f"-preset {t.value} -> {table[val]}")
                else:
                    edits.drop(t)
                    dropped.append(f"{opt} {t.value}")
            elif t.name in DROP_ALWAYS:
                edits.drop(t)
                dropped.append(opt)
            elif t.name == "pix_fmt" and api in ("vaapi", "qsv"):
                edits.drop(t)
                dropped.append(f"{opt} {t.value}")
            elif t.name == "profile":
                mapped = PROFILES[(api, codec)].get((t.value or "").lower())
                if mapped is None:
                    edits.drop(t)
                    dropped.append(f"{opt} {t.value}")
                elif mapped != t.value:
                    edits.set(t.index + 1, mapped)
                    changed.append(f"-profile {t.value} -> {mapped}")
            elif t.name == "level":
                idc = _level_idc(t.value, codec)
                if idc is None:
                    edits.drop(t)
                    dropped.append(f"{opt} {t.value}")
                elif idc != t.value:
                    edits.set(t.index + 1, idc)
                    changed.append(f"-level {t.value} -> {idc}")
            elif t.name == "force_key_frames":
                forced = True
        if forced and api in ("nvenc", "qsv"):
            name = "forced-idr" if api == "nvenc" else "forced_idr"
            edits.after[ctok.index + 1] += [f"-{name}:{spec}", "1"]
            changed.append(f"added -{name} 1 (forced key frames become IDR frames)")
        notes = []
        if changed:
            notes.append(f"{where}: " + "; ".join(changed))
        if dropped:
            notes.append(f"{where}: dropped {', '.join(dropped)} (no {target} equivalent)")
        return notes

    # -- main
    def run(self):
        cands = []
        hw_encoders = []
        for g in self.groups:
            if g.kind != "output":
                continue
            for t in g.tokens:
                if t.kind == "option" and t.name in ("codec", "c", "vcodec") and t.value:
                    if t.value in SOFTWARE_ENCODERS:
                        cands.append((g, t))
                    elif t.value.endswith(HW_ENCODER_SUFFIXES):
                        hw_encoders.append(t.value)
        if not cands:
            return
        if hw_encoders:
            self.notes.append(f"encoders left as Plex wrote them: the job already uses {hw_encoders[0]}")
            return
        device_opts = sorted({t.name for t in self.toks if t.kind == "option" and t.name in HW_DEVICE_OPTIONS})
        if device_opts:
            self.notes.append(f"encoders left as Plex wrote them: the job sets up hardware itself (-{device_opts[0]})")
            return
        for g, ctok in cands:
            enc = ctok.value
            codec = SOFTWARE_ENCODERS[enc]
            where = self.where(g, ctok.spec)
            if ctok.name not in ("codec", "c") or not (ctok.spec or "").isdigit():
                self.notes.append(f"{where}: {enc} kept: stream specifier {self.argv[ctok.index]!r} "
                                  "is not a plain stream index")
                continue
            choice = self.choose(enc, codec, where)
            if choice is None:
                continue
            api, target = choice
            if self.api and api != self.api:
                self.notes.append(f"{where}: {enc} -> {target} skipped: this job already uses {self.api}")
                continue
            node = _render_node(self.cfg, self.hw, api) if api in ("vaapi", "qsv") else None
            upload = None
            if api in UPLOAD_FILTERS:
                upload, info = self.upload_plan(g, ctok, api, where)
                if upload is None:
                    self.notes.append(f"{where}: {enc} -> {target} skipped: {info}")
                    continue
            # commit
            self.edits.set(ctok.index + 1, target)
            self.notes.append(f"{where}: {enc} -> {target}" + (f" on {node}" if node else ""))
            self.notes += self.translate(g, ctok, api, codec, target, where)
            if upload:
                upload()
                self.notes.append(info)
            self.api, self.node = api, node
        if self.api:
            self.add_device()
            self.add_decode()

    def add_device(self):
        api, node = self.api, self.node
        if api == "vaapi":
            self.edits.head += ["-vaapi_device", node]
            self.notes.append(f"added -vaapi_device {node}")
        elif api == "qsv":
            if node and node != "/dev/dri/renderD128":
                flags = ["-init_hw_device", f"vaapi=va:{node}", "-init_hw_device", "qsv=hw@va",
                         "-filter_hw_device", "hw"]
            else:
                flags = ["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"]
            self.edits.head += flags
            self.notes.append("added " + " ".join(flags))

    def add_decode(self):
        if any(t.kind == "option" and t.name.startswith("hwaccel") for t in self.toks):
            return   # Plex already chose how to decode
        first = next((t for t in self.toks if t.kind == "input" and t.value and not plexargs.is_url(t.value)
                      and t.value != "-"), None)
        if first is None:
            return
        group = self.groups[first.group]
        hints = [_norm_codec(t.value) for t in group.tokens
                 if t.kind == "option" and t.name in ("codec", "c", "vcodec") and t.value]
        video = [h for h in hints if h in VIDEO_CODECS]
        inp = f"input {group.ordinal}"
        if not video:
            self.notes.append(f"no hardware decode for {inp}: no video decoder hint")
            return
        missing = [h for h in video if not any((h, name, "decode") in self.caps for name in DECODE_CAPS[self.api])]
        if missing:
            self.notes.append(f"no hardware decode for {inp}: this worker cannot decode {missing[0]} "
                              f"with {DECODE_CAPS[self.api][0]}")
            return
        flags = [f.format(node=self.node) for f in DECODE_FLAGS[self.api]]
        if not self.node and "-hwaccel_device" in flags:      # qsv on an unlisted GPU: libva's default
            flags = flags[:flags.index("-hwaccel_device")]
        self.edits.before[first.index] += flags
        self.notes.append(f"hardware decode of {inp} ({', '.join(video)}): {' '.join(flags)}")


# --------------------------------------------------------------------------- entry point

def rewrite(job, settings, hw):
    """Apply the worker's rewrites to ``job``; a :class:`Result` (inputs untouched).

    ``job``: ``{"argv": [...], "cwd": str, "env": {...}}``. ``settings``: see
    the module documentation (:class:`SettingsError` when invalid). ``hw``:
    the worker's detected hardware (``cpu.arch``, ``gpus[].vendor`` /
    ``render_node``, ``hw_codecs`` as ``"<codec>:<api>:<encode|decode>"``).
    """
    cfg = check_settings(settings)
    hw = hw or {}
    argv = list(job.get("argv") or [])
    cwd = job.get("cwd") or ""
    env = dict(job.get("env") or {})
    notes = []

    # 1. paths
    mapper = _PathMapper(cfg.path_map)
    if cfg.path_map:
        toks, _ = _parse(argv)
        graph_values = {t.index + 1 for t in toks if t.kind == "option" and t.name in GRAPH_OPTIONS
                        and t.value is not None}
        argv = [mapper.text(a, f"argv[{i}]", graph=i in graph_values) for i, a in enumerate(argv)]
        cwd = mapper.whole_path(cwd, "cwd")
        if env.get("EAE_ROOT"):
            env["EAE_ROOT"] = mapper.whole_path(env["EAE_ROOT"], "EAE_ROOT")
        libs = env.get("FFMPEG_EXTERNAL_LIBS")
        if libs:
            plain = unescape_spaces(libs)
            mapped = mapper.whole_path(plain, "FFMPEG_EXTERNAL_LIBS")
            if mapped != plain:
                env["FFMPEG_EXTERNAL_LIBS"] = escape_spaces(mapped)
        notes += mapper.notes()

    # 2. codecs and hardware
    api = None
    if cfg.hwaccel != "none":
        toks, groups = _parse(argv)
        edits = _Edits(argv)
        codecs = _Codecs(argv, toks, groups, cfg, hw, edits)
        codecs.run()
        argv = edits.result()
        notes += codecs.notes
        api = codecs.api

    # 3. environment
    def setenv(name, value, show=True):
        if env.get(name) != value:
            env[name] = value
            notes.append(f"env {name}={value}" if show else f"env {name} set (worker override)")

    arch = ((hw.get("cpu") or {}).get("arch") or "").strip()
    if arch:
        setenv("PLEX_ARCH", arch)
        setenv("PLEX_MEDIA_SERVER_INFO_MODEL", arch)
    if cfg.codecs_dir:
        setenv("FFMPEG_EXTERNAL_LIBS", escape_spaces(cfg.codecs_dir.rstrip("/") + "/"))
    for name, value in cfg.env.items():
        if value is None:
            if name in env:
                del env[name]
                notes.append(f"env {name} removed (worker override)")
        else:
            setenv(name, value, show=False)
    return Result(argv, cwd, env, notes, api)
