"""What a job needs from a worker, read from its arguments (pure).

Hardware capabilities are strings ``"<codec>:<api>:<direction>"`` such as
``"hevc:vaapi:decode"`` or ``"h264:nvenc:encode"`` (``worker/hardware/rules.py`` makes them, docs/hardware.md).
"""

import re

from . import args as plexargs

VIDEO_CODECS = ("h264", "hevc", "av1", "vp9", "vp8", "mpeg1video", "mpeg2video", "mpeg4", "vc1", "msmpeg4v1",
                "msmpeg4v2", "msmpeg4v3", "wmv1", "wmv2", "wmv3", "h263", "mjpeg", "prores", "theora", "flv1", "rv30",
                "rv40", "dvvideo", "vvc")
HEAVY_CODECS = ("hevc", "av1")
# Every decoder Plex's transcoder can be told to use (``-codec:0 libdav1d``), by the codec it decodes.
DECODER_CODEC = dict({c: c for c in VIDEO_CODECS}, **{
    "libdav1d": "av1", "libaom-av1": "av1", "av1": "av1", "libvpx-vp9": "vp9", "libvpx": "vp8", "h265": "hevc",
    "mpeg2": "mpeg2video", "mpeg1": "mpeg1video", "wmv3image": "wmv3", "vc1image": "vc1", "libopenh264": "h264"})
HW_APIS = ("vaapi", "qsv", "nvenc", "nvdec", "cuda")
_ENCODER_CODEC = {
    "libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libaom-av1": "av1", "librav1e": "av1",
    "libvpx-vp9": "vp9", "mpeg2video": "mpeg2video", "mpeg4": "mpeg4",
}
_HW_ENCODER = re.compile(r"^(h264|hevc|av1|vp9|mpeg2)_(vaapi|qsv|nvenc)$")
_HW_DECODER = re.compile(r"^(h264|hevc|av1|vp8|vp9|mpeg1|mpeg2|mpeg4|vc1|mjpeg|vvc)_(cuvid|qsv)$")
_HW_DECODER_CODEC = {"mpeg1": "mpeg1video", "mpeg2": "mpeg2video"}
# Heavy filter work: subtitles burned in, HDR tone mapping (zscale converting transfer/primaries, as PMS writes it).
_BURN_IN = re.compile(r"(?:^|[\];,])\s*(?:inlineass|subtitles|ass)\b")
_TONEMAP = re.compile(r"\btonemap(?:_opencl|_vaapi|_cuda|_vulkan)?\b|\bzscale=[^;,\[]*\b(?:t|transfer|p|primaries)=")
_STREAM = re.compile(r"^\d+:(\d+)$")
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
        self.copied = set()         # hinted video codecs that are only copied (a remux: nothing decoded)
        self.burn_in = False        # subtitles burned into the picture (inlineass/subtitles filters)
        self.tonemap = False        # HDR tone mapping (tonemap*, zscale transfer/primaries conversion)
        self.va_driver = ""         # the VA driver Plex pinned (-init_hw_device vaapi=...,driver=iHD)

    @property
    def heavy(self):
        """HEVC/AV1 decode or encode, 4K, burned-in subtitles or tone mapping: worth a hardware decoder/encoder."""
        return bool((self.decode | self.encode) & set(HEAVY_CODECS)) or self.width >= 3000 or self.height >= 2000 \
            or self.burn_in or self.tonemap

    def describe(self):
        parts = []
        if self.decode:
            parts.append("decode " + "+".join(sorted(self.decode)))
        if self.encode:
            parts.append("encode " + "+".join(sorted(self.encode)))
        if self.copied:
            parts.append("copy " + "+".join(sorted(self.copied)))
        if self.width and self.height:
            parts.append(f"{self.width}x{self.height}")
        if self.burn_in:
            parts.append("burn-in")
        if self.tonemap:
            parts.append("tonemap")
        if self.va_driver:
            parts.append("va driver " + self.va_driver)
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
    hinted = {}    # input stream (spec) -> video codec
    for t in job.decoder_hints:
        hint = t.value
        base = hint[:-4] if hint.endswith("_eae") else hint
        if hint.endswith("_eae"):
            n.eae = True
        m = _HW_DECODER.match(hint)
        if m:
            codec = _HW_DECODER_CODEC.get(m.group(1), m.group(1))
            n.decode.add(codec)
            hinted[t.spec] = codec
            n.hw_required.add(f"{codec}:{'nvdec' if m.group(2) == 'cuvid' else 'qsv'}:decode")
        elif base in DECODER_CODEC:
            codec = DECODER_CODEC[base]
            n.decode.add(codec)
            hinted[t.spec] = codec
            if hwaccel:
                n.hw_required.add(f"{codec}:{hwaccel}:decode")
    video_encoders = 0
    for value in (t.value for t in job.encoders):
        if value.endswith("_eae"):
            n.eae = True
        m = _HW_ENCODER.match(value)
        if m:
            n.encode.add(m.group(1))
            n.hw_required.add(f"{m.group(1)}:{m.group(2)}:encode")
            video_encoders += 1
        elif value in _ENCODER_CODEC:
            n.encode.add(_ENCODER_CODEC[value])
            video_encoders += 1
    filtered = False     # a video filter graph needs decoded frames
    for t in job.tokens:
        if t.kind != "option" or t.value is None:
            continue
        if t.name in ("filter_complex", "vf", "filter", "filter:v", "lavfi"):
            for w, h in _SCALE.findall(t.value):
                n.width, n.height = max(n.width, int(w)), max(n.height, int(h))
            n.burn_in = n.burn_in or bool(_BURN_IN.search(t.value))
            n.tonemap = n.tonemap or bool(_TONEMAP.search(t.value))
            filtered = filtered or t.name != "filter_complex" or not t.value.lstrip().startswith("[0:") \
                or any(f"[0:{spec}]" in t.value for spec in hinted if spec is not None)
        elif t.name.startswith("eae_prefix"):
            n.eae = True
        elif t.name == "map_inlineass":
            n.burn_in = True
        elif t.name == "init_hw_device" and t.value.startswith("vaapi"):
            m = re.search(r",driver=([\w.-]+)", t.value)
            n.va_driver = m.group(1) if m else n.va_driver
    copied = _copied_streams(job, hinted)
    if copied and not video_encoders and not filtered:
        # a remux: the hinted video is copied, nothing is decoded (and no hardware decode is needed)
        n.copied = {hinted[s] for s in copied}
        n.decode -= n.copied
        n.hw_required = {c for c in n.hw_required if not c.endswith(":decode") or c.split(":")[0] not in n.copied}
    return n


def _copied_streams(job, hinted):
    """The hinted input video streams (their specs) that an output copies (``-map 0:0 ... -codec:0 copy``)."""
    copied = set()
    for g in job.outputs:
        maps = [t.value for t in g.options if t.name == "map" and t.value]
        for t in g.codecs:
            if t.value != "copy":
                continue
            if t.spec in ("v", "v:0") and hinted:
                copied.update(s for s in hinted if s is not None and s.isdigit())
            elif t.spec is not None and t.spec.isdigit() and int(t.spec) < len(maps):
                m = _STREAM.match(maps[int(t.spec)])
                if m and m.group(1) in hinted:
                    copied.add(m.group(1))
                elif maps[int(t.spec)].startswith("0:v") and hinted:
                    copied.update(s for s in hinted if s is not None and s.isdigit())
    return copied


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


# The GPU vendor of each VA driver Plex's transcoder can be pinned to (-init_hw_device vaapi=...,driver=iHD).
VA_DRIVER_VENDOR = {"ihd": "intel", "i965": "intel", "radeonsi": "amd", "r600": "amd", "nouveau": "nvidia",
                    "nvidia": "nvidia"}


def missing(needs, hw_codecs, gpu_vendors=None):
    """Hard requirements this worker lacks (a sorted list; empty means it can run the job).

    With ``gpu_vendors`` (the vendors of the worker's GPUs), a job whose argv pins a VA driver
    (``driver=iHD``) also needs a GPU of that driver's vendor.
    """
    required = needs.hw_required | ({EAE} if needs.eae else set())
    lack = required - set(hw_codecs)
    vendor = VA_DRIVER_VENDOR.get(needs.va_driver.lower())
    if vendor and gpu_vendors is not None and vendor not in gpu_vendors:
        lack.add(f"va-driver:{needs.va_driver} ({vendor} GPU)")
    return sorted(lack)
