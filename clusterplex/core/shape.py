"""What a Plex transcode may contain: the allow-list a job's argv must pass before anything runs (pure).

A job from the wire is untrusted: whoever can put one there gets Plex's
ffmpeg with an argv of their choosing. :func:`check` accepts only what
Plex's transcoder is seen to be given (tests/data/plex-argv-corpus/):

- every option from :data:`OPTIONS`, with the arity the tokeniser in
  ``args`` gives it (a flag can never swallow the path that follows it),
  any stream specifier (``-codec:0``, ``-b:v``, ``-codec:#0x01``);
- muxers, demuxers, protocols and filters by name; filter options that name
  a file only where Plex uses them (``inlineass`` fonts);
- files that options write (segments, headers, ``-vstats_file``...) only as
  names inside the session dir, never with ``..``;
- network outputs only as Plex callbacks (``/video/:/transcode/``,
  ``/livetv/``, ``/log``) on one endpoint, through the relay with this job's
  capability when they carry one.

Which paths a job reads (:func:`reads`) and where its outputs land are
checked against the worker's directories by ``worker/runner`` (they need
the file system). A refusal is one line naming the option and why.
Standard library only.
"""

import posixpath
import re

from . import args as plexargs

FLAG, VALUE, CODEC, FORMAT, GRAPH, WRITE, CALLBACK, DEVICE, INLINEASS, FORMAT_OPTS = (
    "flag", "value", "codec", "format", "graph", "write", "callback", "device", "inlineass", "format_opts")

_O = {}
for _kind, _names in (
    (FLAG, "y nostats stats noaccurate_seek accurate_seek start_at_zero copyts xioerror xerror re shortest "
           "hide_banner vn an sn dn ignore_unknown copy_unknown nostdin noautorotate "
           "fix_sub_duration vstats"),
    (VALUE, "ss t to itsoffset analyzeduration probesize fpsprobesize fflags flags hwaccel hwaccel_output_format "
            "threads skip_frame eae_prefix thread_queue_size drc_scale sub_charenc canvas_size strict err_detect "
            "max_muxing_queue_size map map_metadata map_chapters metadata disposition tag crf maxrate minrate "
            "bufsize b r preset tune profile level x264opts x264-params x265-params force_key_frames qp q qscale "
            "sei g keyint_min sc_threshold bf pix_fmt rc rc-lookahead look_ahead global_quality quality qmin "
            "qmax cq ar ac channel_layout rematrix_maxval aac_coder vbr frames vframes aframes aspect s "
            "strict_ts vsync fps_mode async loglevel v loglevel_plex avoid_negative_ts max_delay movflags "
            "mov_res brand frag_duration min_frag_duration seg_duration dash_segment_type window_size "
            "extra_window_size delete_removed skip_to_segment time_delta use_template use_timeline "
            "single_file adaptation_sets remove_at_exit streaming ldash target_latency break_non_keyframes "
            "individual_header_trailer write_header_trailer segment_time segment_start_number segment_copyts "
            "segment_time_delta segment_list_type segment_list_size segment_list_separate_stream_times "
            "segment_list_unfinished segment_list_flags min_seg_duration reset_timestamps increment_tc "
            "initial_offset hls_time hls_list_size hls_segment_type hls_flags hls_playlist_type start_number "
            "filter_hw_device filter_threads filter_complex_threads max_error_rate muxdelay muxpreload "
            "output_ts_offset mpegts_flags mpegts_copyts bsf apad copytb forced-idr forced_idr"),
    (CODEC, "codec c vcodec acodec scodec"),
    (FORMAT, "f segment_format"),
    (GRAPH, "filter_complex lavfi filter vf af"),
    (WRITE, "init_seg_name media_seg_name segment_header_filename single_file_name hls_segment_filename "
            "hls_fmp4_init_filename master_pl_name hls_master_name vstats_file passlogfile"),
    (CALLBACK, "progressurl manifest_name segment_list progress"),
    (DEVICE, "init_hw_device hwaccel_device vaapi_device qsv_device"),
    (INLINEASS, "map_inlineass"),
    (FORMAT_OPTS, "segment_format_options"),
):
    _O.update(dict.fromkeys(_names.split(), _kind))
OPTIONS = _O
# Options named here are refused with this reason (anything not in OPTIONS is refused too).
REFUSED_OPTIONS = {
    "report": "writes a report file wherever FFREPORT says, and is a flag: it would hide the path after it",
    "dump_attachment": "writes attachments under names taken from the media",
    "attach": "copies any file into the output",
    "filter_script": "reads a filter graph from a file", "filter_complex_script": "reads a filter graph from a file",
    "sdp_file": "writes a file", "stats_file": "writes a file", "hls_key_info_file": "reads a key file",
    "protocol_whitelist": "changes which protocols may open", "protocol_blacklist": "changes which protocols may open",
    "safe": "lets the concat demuxer open any path", "follow": "tails a file",
    "cert_file": "names a file", "key_file": "names a file", "ca_file": "names a file",
    "dump": "not part of a Plex transcode", "hex": "not part of a Plex transcode",
}
# The stand-in transcoder's test hooks (tests/fakes/plex_transcoder.py), one value each. Plex's
# transcoder, like ffmpeg, rejects an unknown option while parsing its arguments, before it opens
# anything, so they are harmless to a real transcode.
TEST_HOOK_PREFIX = "x_test_"
# A callback option, or a write option, that may name a file: only inside the session dir.
FILE_OR_CALLBACK = frozenset(("manifest_name", "segment_list", "progress"))
MUXERS = frozenset("""dash segment ssegment stream_segment hls mp4 mov ipod matroska webm mpegts flac mp3 adts ass
    srt webvtt image2 image2pipe mjpeg null ogg opus wav ac3 eac3 spdif""".split())
DEMUXERS = frozenset("""mpegts matroska mov mp4 hls srt ass webvtt flac mp3 aac ac3 eac3 dts truehd h264 hevc
    mpeg mpegvideo avi wav ogg""".split())
SEGMENT_FORMATS = MUXERS - {"dash", "segment", "ssegment", "stream_segment", "hls", "image2", "image2pipe"}
FORMAT_OPTION_KEYS = frozenset(("output_ts_offset", "ignore_readorder", "movflags", "mpegts_flags",
                                "mpegts_copyts", "frag_duration", "flush_packets", "cluster_time_limit"))
FILTERS = frozenset("""scale format aresample hwupload hwdownload hwmap hwupload_cuda scale_vaapi scale_cuda scale_npp
    scale_qsv vpp_qsv tonemap tonemap_opencl tonemap_vaapi tonemap_cuda zscale colorspace overlay overlay_vaapi
    overlay_cuda overlay_qsv overlay_opencl inlineass yadif bwdif yadif_cuda bwdif_cuda deinterlace_vaapi
    deinterlace_qsv fps setsar setdar setpts asetpts pad crop transpose transpose_vaapi hflip vflip null anull copy
    split asplit volume loudnorm dynaudnorm aformat pan amix atempo trim atrim fade afade select thumbnail
    framedrop""".split())
DANGEROUS_FILTERS = {
    "ladspa": "loads a library", "lv2": "loads a library", "frei0r": "loads a library",
    "frei0r_src": "loads a library", "movie": "opens a file or URL", "amovie": "opens a file or URL",
    "sendcmd": "reads commands from a file", "asendcmd": "reads commands from a file",
    "zmq": "takes commands from a socket", "azmq": "takes commands from a socket",
    "metadata": "writes a file with file=", "ametadata": "writes a file with file=",
    "drawtext": "reads files (textfile=, fontfile=)", "subtitles": "reads a file", "ass": "reads a file",
    "vmaf": "reads a model and writes a log", "libvmaf": "reads a model and writes a log",
    "psnr": "writes a file with stats_file=", "ssim": "writes a file with stats_file=",
    "dnn_processing": "loads a model", "sr": "loads a model", "arnndn": "loads a model",
}
# Filter options whose value names a file: refused, except those Plex itself passes (reads only).
FILE_KEYS = frozenset(("file", "filename", "f", "textfile", "fontfile", "font_path", "fontconfig_file",
                       "stats_file", "log_path", "model", "commands", "source", "sub_file"))
READ_KEYS = {"inlineass": frozenset(("font_path", "fontconfig_file"))}
CALLBACK_PATHS = ("video/:/transcode/", "livetv/", "log")
URL_SCHEMES = ("http", "https")
_PROTO = re.compile(r"([A-Za-z][A-Za-z0-9+.,_-]*):")
_NAME = re.compile(r"[A-Za-z0-9_.#-]+$")
_SPEC = re.compile(r"[A-Za-z0-9:#?_.-]*$")
_CP = re.compile(r"/_cp/([^/]+)/([^/]+)/(.*)$", re.S)


def _show(value, limit=60):
    value = "" if value is None else str(value)
    return value if len(value) <= limit else value[:limit - 3] + "..."


def _refuse(token, why, value=None):
    shown = token if value is None else f"{token} {_show(value)}"
    return f"refused: {shown} ({why})"


def protocol_of(value):
    """The ffmpeg protocol a string names (``http``, ``concat``, ``file``...), or None for a plain path."""
    if value.startswith("/"):
        return None
    m = _PROTO.match(value)
    return m.group(1).lower() if m else None


def check(argv, cwd, job_id="", capability=None):
    """Why this argv is not a Plex transcode (one line: ``refused: -opt value (why)``), or None.

    ``argv``: a list or an ``args.Parsed``; ``cwd``: the session dir; ``capability(job_id, mac)``:
    whether a relay capability in a callback URL is this job's (None: not checked).
    """
    job = plexargs.parse(argv)
    origin = []                      # the one callback endpoint: -progressurl's, else the first callback's
    for value in job.option_values("progressurl"):
        m = re.match(r"(https?)://([^/?#]*)", value or "", re.I)
        if m:
            origin[:] = [f"{m.group(1).lower()}://{m.group(2).lower()}"]
    for tok in job.tokens:
        raw = job.argv[tok.index]
        if tok.kind == "output":
            problem = _check_output(tok.value, cwd, job_id, capability, origin)
        elif tok.kind == "input":
            problem = _check_input(raw, tok.value, job_id, capability, origin)
        else:
            problem = _check_option(job, tok, raw, cwd, job_id, capability, origin)
        if problem:
            return problem
    if not job.inputs:
        return "refused: no input (-i) (not a Plex transcode)"
    return None


def _check_option(job, tok, raw, cwd, job_id, capability, origin):
    name, value = tok.name, tok.value
    if name in REFUSED_OPTIONS:
        return _refuse(raw, REFUSED_OPTIONS[name])
    kind = OPTIONS.get(name)
    if kind is None and name.startswith(TEST_HOOK_PREFIX):
        kind = VALUE
    if kind is None:
        return _refuse(raw, "not an option Plex's transcoder is given")
    if tok.spec is not None and not _SPEC.match(tok.spec):
        return _refuse(raw, "malformed stream specifier")
    if kind == FLAG:
        return None
    if value is None:
        return _refuse(raw, "missing its value")
    if kind == CODEC or (kind == VALUE and name in ("hwaccel", "hwaccel_output_format", "filter_hw_device")):
        return None if _NAME.match(value) else _refuse(raw, "not a codec or device name", value)
    if kind == FORMAT:
        group = job.groups[tok.group]
        allowed = (DEMUXERS if group.kind == "input" else SEGMENT_FORMATS if name == "segment_format" else MUXERS)
        what = "demuxer" if group.kind == "input" else "muxer"
        return None if value in allowed else _refuse(raw, f"{what} {value} is not one Plex uses", value)
    if kind == GRAPH:
        problem = graph_problem(value, cwd)
        return _refuse(raw, problem, value) if problem else None
    if kind == WRITE:
        return _session_name(raw, value, cwd)
    if kind == CALLBACK:
        if name == "progress" and value in ("-", "pipe:1", "pipe:2"):
            return None
        if protocol_of(value) is None and name in FILE_OR_CALLBACK:
            return _session_name(raw, value, cwd)
        return _callback(raw, value, job_id, capability, origin)
    if kind == DEVICE:
        return _device(raw, value)
    if kind == INLINEASS:
        path = value.rpartition(":")[0] if ":" in value else value
        if path[:1].isdigit() or path.startswith("/") and ".." not in path.split("/"):
            return None
        return _refuse(raw, "names its subtitle file other than by input index or absolute path", value)
    if kind == FORMAT_OPTS:
        for pair in value.split(":"):
            key = pair.split("=", 1)[0]
            if key not in FORMAT_OPTION_KEYS:
                return _refuse(raw, f"format option {key} is not one Plex uses", value)
    return None


def _session_name(raw, value, cwd):
    """A file an option writes: a name in the session dir (relative, or absolute inside it), no ``..``."""
    if protocol_of(value) not in (None, "file"):
        return _refuse(raw, f"protocol {protocol_of(value)} is not allowed for a file it writes", value)
    path = value[5:] if value.startswith("file:") else value
    if ".." in path.split("/"):
        return _refuse(raw, "climbs out of the session dir with ..", value)
    if path.startswith("/") and not _inside(path, cwd):
        return _refuse(raw, "writes outside the session dir", value)
    return None


def _inside(path, root):
    path, root = posixpath.normpath(path), posixpath.normpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _device(raw, value):
    for part in re.split(r"[=:,@]", value):
        if "/" in part and not (part.startswith("/dev/dri/") and ".." not in part.split("/")):
            return _refuse(raw, "names a device outside /dev/dri", value)
    return None


def _callback(raw, value, job_id, capability, origin):
    """A network output: a Plex callback on this job's one endpoint, with its capability if it carries one."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(/[^?#]*)?", value)
    if not m or m.group(1).lower() not in URL_SCHEMES:
        return _refuse(raw, "only HTTP callbacks to Plex may be written to the network", value)
    where, path = f"{m.group(1).lower()}://{m.group(2).lower()}", m.group(3) or "/"
    if "@" in m.group(2):
        return _refuse(raw, "user info in a callback URL", value)
    if origin and origin[0] != where:
        return _refuse(raw, f"a second callback endpoint (the first was {origin[0]})", value)
    cp = _CP.match(path)
    if cp:
        if cp.group(1) != job_id or (capability is not None and not capability(cp.group(1), cp.group(2))):
            return _refuse(raw, "the relay capability is not this job's", value)
        path = "/" + cp.group(3)
    elif "/_cp/" in path:
        return _refuse(raw, "a relay capability in the wrong place", value)
    if not path[1:].startswith(CALLBACK_PATHS) or ".." in path.split("/"):
        return _refuse(raw, "not a Plex callback path (/video/:/transcode/, /livetv/, /log)", value)
    origin[:] = [where]
    return None


def _check_output(value, cwd, job_id, capability, origin):
    if value == "-":
        return None
    proto = protocol_of(value)
    if proto in URL_SCHEMES:
        return _callback(value, value, job_id, capability, origin)
    if proto == "pipe":
        return None if value in ("pipe:", "pipe:1") else _refuse(value, "only stdout may be a pipe")
    if proto not in (None, "file"):
        return _refuse(value, f"protocol {proto} is not allowed for an output")
    if ".." in value.split("/"):
        return _refuse(value, "climbs out of the session dir with ..")
    return None        # where it lands: runner.output_problem (session dir or output_roots)


def _check_input(raw, value, job_id, capability, origin):
    if value is None:
        return _refuse(raw, "missing its value")
    if value == "-":
        return _refuse(raw, "Plex's transcoder never reads its stdin", value)
    proto = protocol_of(value)
    if proto in URL_SCHEMES:
        m = re.match(r"[A-Za-z]+://([^/?#]*)(/[^?#]*)?", value)
        if m and "@" in m.group(1):
            return _refuse(raw, "user info in an input URL", value)
        path = (m.group(2) if m else "") or "/"
        if "/_cp/" in path:
            cp = _CP.match(path)
            if not cp or cp.group(1) != job_id or (capability is not None and not capability(cp.group(1), cp.group(2))):
                return _refuse(raw, "the relay capability is not this job's", value)
        return None    # PMS through the relay, a tuner, an IPTV source: Plex reads them over HTTP
    if proto not in (None, "file"):
        return _refuse(raw, f"protocol {proto} is not allowed for an input", value)
    return None        # which paths: runner.preflight (media_roots, the session dir)


def reads(argv, cwd):
    """The local files this job reads (inputs, ``-map_inlineass`` files), absolute and normalised."""
    job = plexargs.parse(argv)
    values = list(job.input_values)
    values += [v.rpartition(":")[0] for v in job.option_values("map_inlineass") if v and v.startswith("/")]
    return [posixpath.normpath(p) for p in plexargs.local_paths(values, cwd)]


# --- filter graphs -------------------------------------------------------------

def split_graph(graph):
    """The filters of a graph as ``(name, args)``: split at ``;`` and ``,`` outside quotes, labels dropped."""
    parts = plexargs.split_unquoted(graph, ",;")
    out = []
    for part in parts:
        part = re.sub(r"^\s*(\[[^\]]*\]\s*)*", "", part)
        part = re.sub(r"(\s*\[[^\]]*\])*\s*$", "", part)
        if not part:
            continue
        m = re.match(r"([A-Za-z0-9_]+)(?:@[A-Za-z0-9_]+)?(?:=(.*))?$", part, re.S)
        out.append((m.group(1), m.group(2) or "") if m else (part, None))
    return out


def _filter_options(text):
    """``key=value`` pairs of a filter's arguments (split at ``:`` outside quotes); positional ones keyed ''."""
    pairs, cur, quote, i = [], [], False, 0
    while i <= len(text):
        ch = text[i] if i < len(text) else ":"
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if ch == "'":
            quote = not quote
        elif ch == ":" and not quote:
            item = "".join(cur)
            key, eq, val = item.partition("=")
            pairs.append((key.strip(), val) if eq else ("", item))
            cur = []
        else:
            cur.append(ch)
        i += 1
    return pairs


def graph_problem(graph, cwd=""):
    """Why a filter graph is not one Plex builds (filter by name, no file options), or None."""
    for name, text in split_graph(graph):
        if text is None:
            return f"malformed filter {_show(name, 30)}"
        if name in DANGEROUS_FILTERS:
            return f"filter {name} {DANGEROUS_FILTERS[name]}"
        if name not in FILTERS:
            return f"filter {name} is not one Plex uses"
        for key, val in _filter_options(text):
            if key in FILE_KEYS and key not in READ_KEYS.get(name, ()):
                return f"filter {name} option {key} names a file"
            if key in FILE_KEYS and ".." in val.split("/"):
                return f"filter {name} option {key} climbs with .."
    return None
