"""Encoder swaps: Plex's software encoder replaced by this worker's VAAPI, NVENC or QSV one.

Per swapped stream the rate control and per-stream options are translated,
the upload filter is added to the graph that feeds it, and the job's device
set-up and hardware decode follow (docs/rewrite.md, ``hwaccel``). Edits are
keyed by the original argv positions (:class:`Edits`), so none shifts another.
"""

import re

from . import decode
from .decode import can_encode, device_ok, render_node
from .graph import amend_graph, single_stream_map
from .settings import AUTO_ORDER, SOFTWARE_ENCODERS

# An output codec ending like this means Plex already chose hardware.
HW_ENCODER_SUFFIXES = ("_vaapi", "_nvenc", "_qsv", "_v4l2m2m", "_videotoolbox", "_amf", "_omx", "_mf",
                       "_mediacodec", "_rkmpp", "_vulkan", "_cuvid")
# Options by which a job sets up hardware itself: no encoder swap then.
HW_DEVICE_OPTIONS = frozenset(("init_hw_device", "filter_hw_device", "vaapi_device", "qsv_device",
                               "hwaccel_output_format"))
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


class Edits:
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


class Swaps:
    """The encoder swaps of one job: :meth:`run` fills ``edits`` and ``notes``; ``api`` says which was used."""

    def __init__(self, parsed, cfg, hw, edits):
        self.parsed, self.cfg, self.hw, self.edits = parsed, cfg, hw, edits
        self.caps = decode.hw_caps(hw)
        self.notes = []
        self.api = None
        self.node = None

    # -- helpers
    def where(self, group, spec):
        return f"stream {spec}" if group.ordinal == 0 else f"output {group.ordinal} stream {spec}"

    def graph_tokens(self):
        return [t for t in self.parsed.tokens if t.kind == "option" and t.name in ("filter_complex", "lavfi")
                and t.value is not None]

    def choose(self, enc, codec, where):
        """``(api, target)``, or None (with a note when something was refused)."""
        cfg = self.cfg
        explicit = cfg.encoder_swaps.get(enc)
        if explicit == enc:
            return None
        if explicit:
            api = explicit.rsplit("_", 1)[1]
            if not can_encode(self.caps, codec, api):
                self.notes.append(f"{where}: {enc} -> {explicit} refused: this worker has no {codec} {api} encoder")
                return None
            if not device_ok(cfg, self.hw, api):
                self.notes.append(f"{where}: {enc} -> {explicit} refused: no VAAPI render node on this worker")
                return None
            return api, explicit
        if cfg.hwaccel == "auto":
            for api in AUTO_ORDER:
                if can_encode(self.caps, codec, api) and device_ok(cfg, self.hw, api):
                    return api, f"{codec}_{api}"
            self.notes.append(f"{where}: {enc} kept: no hardware {codec} encoder on this worker")
            return None
        api = cfg.hwaccel
        if not can_encode(self.caps, codec, api):
            self.notes.append(f"{where}: {enc} kept: this worker has no {codec} {api} encoder")
            return None
        if not device_ok(cfg, self.hw, api):
            self.notes.append(f"{where}: {enc} kept: no VAAPI render node on this worker")
            return None
        return api, f"{codec}_{api}"

    def upload_plan(self, group, ctok, api, where):
        """A function applying the hwupload for this stream, and its note; or (None, reason)."""
        spec = ctok.spec
        filters = UPLOAD_FILTERS[api]
        n = int(spec)
        maps = [t for t in group.tokens if t.kind == "option" and t.name == "map" and t.index < ctok.index]
        if len(maps) != n + 1 or not all(single_stream_map(m.value) for m in maps):
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
        for g in self.parsed.outputs:
            for t in g.codecs:
                if t.value in SOFTWARE_ENCODERS:
                    cands.append((g, t))
                elif t.value.endswith(HW_ENCODER_SUFFIXES):
                    hw_encoders.append(t.value)
        if not cands:
            return
        if hw_encoders:
            self.notes.append(f"encoders left as Plex wrote them: the job already uses {hw_encoders[0]}")
            return
        device_opts = sorted({t.name for t in self.parsed.tokens
                              if t.kind == "option" and t.name in HW_DEVICE_OPTIONS})
        if device_opts:
            self.notes.append(f"encoders left as Plex wrote them: the job sets up hardware itself (-{device_opts[0]})")
            return
        for g, ctok in cands:
            enc = ctok.value
            codec = SOFTWARE_ENCODERS[enc]
            where = self.where(g, ctok.spec)
            if ctok.name not in ("codec", "c") or not (ctok.spec or "").isdigit():
                self.notes.append(f"{where}: {enc} kept: stream specifier {self.parsed.argv[ctok.index]!r} "
                                  "is not a plain stream index")
                continue
            choice = self.choose(enc, codec, where)
            if choice is None:
                continue
            api, target = choice
            if self.api and api != self.api:
                self.notes.append(f"{where}: {enc} -> {target} skipped: this job already uses {self.api}")
                continue
            node = render_node(self.cfg, self.hw, api) if api in ("vaapi", "qsv") else None
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
            note = decode.add_decode(self.parsed, self.caps, self.api, self.node, self.edits)
            if note:
                self.notes.append(note)

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
