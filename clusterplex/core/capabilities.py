"""What a job needs from a worker, read from its arguments (pure).

Hardware capabilities are strings ``"<codec>:<api>:<direction>"`` such as
``"hevc:vaapi:decode"`` or ``"h264:nvenc:encode"`` (``worker/hardware/rules.py`` makes them, docs/hardware.md).
"""

import re

from . import args as plexargs

VIDEO_CODECS = ("h264", "hevc", "av1", "vp9", "mpeg2video", "mpeg4", "vc1")
HEAVY_CODECS = ("hevc", "av1")
HW_APIS = ("vaapi", "qsv", "nvenc", "nvdec", "cuda")
_ENCODER_CODEC = {
    "libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libaom-av1": "av1", "librav1e": "av1",
    "libvpx-vp9": "vp9", "mpeg2video": "mpeg2video", "mpeg4": "mpeg4",
}
_HW_ENCODER = re.compile(r"^(h264|hevc|av1|vp9|mpeg2)_(vaapi|qsv|nvenc)$")
_HW_DECODER = re.compile(r"^(h264|hevc|av1|vp9|mpeg2)_(cuvid|qsv)$")
_SCALE = re.compile(r"scale(?:_\w+)?=(?:w=)?(-?\d+):(?:h=)?(-?\d+)")
_HWACCEL_API = {"vaapi": "vaapi", "qsv": "qsv", "cuda": "nvdec", "nvdec": "nvdec", "cuvid": "nvdec"}


class Needs:
    """A job's requirements and weight, as the scheduler sees them."""

    def __init__(self):
        self.decode = set()         # input video codecs (from Plex's decoder hints)
        self.encode = set()         # output video codecs
        self.hw_required = set()    # capabilities the argv itself asks for (Plex chose hardware)
        self.eae = False            # EasyAudioEncoder codecs
        self.width = 0
        self.height = 0

    @property
    def heavy(self):
        """HEVC/AV1 or 4K: worth a hardware decoder/encoder."""
        return bool((self.decode | self.encode) & set(HEAVY_CODECS)) or self.width >= 3000 or self.height >= 2000

    def describe(self):
        parts = []
        if self.decode:
            parts.append("decode " + "+".join(sorted(self.decode)))
        if self.encode:
            parts.append("encode " + "+".join(sorted(self.encode)))
        if self.width and self.height:
            parts.append(f"{self.width}x{self.height}")
        if self.hw_required:
            parts.append("needs " + ",".join(sorted(self.hw_required)))
        if self.eae:
            parts.append("eae")
        return ", ".join(parts) or "no video"

    def __repr__(self):
        return f"<Needs {self.describe()}{' heavy' if self.heavy else ''}>"


def needs(argv):
    """Derive ``Needs`` from a Plex argv (a list or an ``args.Parsed``; position-independent)."""
    job = plexargs.parse(argv)
    n = Needs()
    hwaccel = _HWACCEL_API.get(job.hwaccel)
    for hint in (t.value for t in job.decoder_hints):
        base = hint[:-4] if hint.endswith("_eae") else hint
        if hint.endswith("_eae"):
            n.eae = True
        m = _HW_DECODER.match(hint)
        if m:
            n.decode.add(m.group(1))
            n.hw_required.add(f"{m.group(1)}:{'nvdec' if m.group(2) == 'cuvid' else 'qsv'}:decode")
        elif base in VIDEO_CODECS:
            n.decode.add(base)
            if hwaccel:
                n.hw_required.add(f"{base}:{hwaccel}:decode")
    for value in (t.value for t in job.encoders):
        if value.endswith("_eae"):
            n.eae = True
        m = _HW_ENCODER.match(value)
        if m:
            n.encode.add(m.group(1))
            n.hw_required.add(f"{m.group(1)}:{m.group(2)}:encode")
        elif value in _ENCODER_CODEC:
            n.encode.add(_ENCODER_CODEC[value])
    for t in job.tokens:
        if t.kind != "option" or t.value is None:
            continue
        if t.name in ("filter_complex", "vf", "filter"):
            for w, h in _SCALE.findall(t.value):
                n.width, n.height = max(n.width, int(w)), max(n.height, int(h))
        elif t.name.startswith("eae_prefix"):
            n.eae = True
    return n


def hardware_fit(needs, hw_codecs, has_gpu):
    """(tier, reason): how well a worker fits a job beyond its hard requirements (lower is better).

    Heavy jobs go first to a worker that decodes or encodes their codecs in
    hardware; light jobs are kept off GPU workers while others are free.
    """
    if needs.heavy:
        for codec in sorted(needs.decode & set(HEAVY_CODECS)) + sorted(needs.decode - set(HEAVY_CODECS)):
            api = _api_for(hw_codecs, codec, "decode")
            if api:
                return 0, f"{codec} decode in hardware ({api})"
        for codec in sorted(needs.encode):
            api = _api_for(hw_codecs, codec, "encode")
            if api:
                return 0, f"{codec} encode in hardware ({api})"
        return 1, "heavy job, no matching hardware codec"
    if has_gpu:
        return 1, "light job on a GPU worker"
    return 0, "light job, no GPU needed"


def _api_for(hw_codecs, codec, direction):
    for cap in sorted(hw_codecs):
        c, api, d = (cap.split(":") + ["", "", ""])[:3]
        if c == codec and d == direction:
            return api
    return None


EAE = "eae"      # the capability of a worker that runs EasyAudioEncoder


def missing(needs, hw_codecs):
    """Hard requirements this worker lacks (a sorted list; empty means it can run the job)."""
    required = needs.hw_required | ({EAE} if needs.eae else set())
    return sorted(required - set(hw_codecs))
