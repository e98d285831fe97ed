#!/usr/bin/python3
"""Stand-in for Plex's "Plex Transcoder" binary, for tests.

It accepts the argument lists PMS hands to its transcoder (see
tests/data/plex-argv/ and the project's Plex protocol notes), translates
them for Debian's stock ffmpeg 5.1 (/usr/bin/ffmpeg, override with
$PLEXFAKE_FFMPEG), runs ffmpeg in the current directory (the session
directory) and plays the PMS side of the protocol the way the real binary
does:

* PUT  <progressurl>/stream?...            per input audio/video stream
* PUT  <progressurl>/streamDetail?...      per input audio/video stream
* PUT  <progressurl>?duration=<sec>
* PUT  <progressurl>?width=W&height=H      per output video stream
* PUT  <progressurl>?progress=..&size=..&remaining=..&speed=..   every ~0.5 s
* POST <progressurl>/log?level=<0-4>&message=...   ffmpeg lines <= -loglevel_plex
* POST <-manifest_name URL>   full MPD, chunked, Connection: close (DASH)
* POST <-segment_list URL>    CSV segment list, chunked (segment/ssegment)

Progress-type callbacks carry ``X-Plex-Token: $X_PLEX_TOKEN`` and
``X-Plex-Http-Pipeline: infinite`` when X_PLEX_TOKEN is set and reuse one
keep-alive connection; manifest POSTs carry no token.  A failed callback is
reported on stderr and never stops the transcode.  URLs are only ever
appended to, so any host:port and path prefix (a relay) works.

DASH: stock 5.1's dash muxer has no start number.  ffmpeg writes media
segments into ``.plexfake/stage-<n>/`` (numbered from 1, written as .tmp
and renamed by ffmpeg, so a staged file is complete); this script renames
each one into the cwd under Plex's ``-media_seg_name`` template with the
number shifted by ``-skip_to_segment N`` - 1, and rewrites the MPD it POSTs
(templates restored, every ``startNumber`` shifted).  Init segments are
written straight into the cwd.  ``.plexfake/`` (local MPD and segment lists)
is removed after a successful run (set PLEXFAKE_KEEP=1 to keep it).

HLS/subtitles (-f segment/ssegment with a -segment_list URL): segments are
written by ffmpeg straight into the cwd (from -segment_start_number); ffmpeg
keeps a local CSV list in .plexfake/ and every change is POSTed as Plex's
segment.c would: ``name,start,end[,end_audio,end_video]`` (%f; the extra
columns with -segment_list_separate_stream_times 1, both = end), the newest
list_size - 1 rows, and with -segment_list_unfinished 1 an extra
``#name,start,start,...`` row once the next segment file appears.

Every other Plex-only option (-progressurl, -loglevel_plex, -map_inlineass,
-xioerror, -strict_ts[:s], -time_delta, -segment_copyts, -min_seg_duration,
-mov_res, -eae_prefix[:s]) is dropped wherever it sits; *_eae encoders become
the plain codec, input-side decoder hints (-codec:N before an -i) are dropped,
``inlineass=...`` filters become ``null``, ``framedrop`` bitstream filters go.
Plex's -loglevel is replaced by ``repeat+level+info`` (stderr is parsed);
ffmpeg's own -progress goes to a pipe, never to a URL.

Test hooks (removed before ffmpeg runs, all take one argument):
  -x_test_startfile PATH  first thing (after installing the SIGTERM/SIGINT
                          handlers): write {"pid","t_mono","cwd"} atomically
  -x_test_pidfile PATH    {"pid","ffmpeg_pid"} atomically; rewritten when
                          ffmpeg starts (ffmpeg_pid is null before)
  -x_test_stderr TEXT     (repeatable) print TEXT to stderr at start
  -x_test_hold SECONDS    then wait that long, or until SIGTERM/SIGINT (-> 255)
  -x_test_exit N          then exit N without running ffmpeg
Order: startfile, pidfile, stderr lines, hold, exit/transcode.

SIGTERM/SIGINT: ffmpeg gets SIGTERM, SIGKILL after 0.5 s, exit status 255.
ffmpeg is started with PR_SET_PDEATHSIG=SIGKILL in this process's group.
"""
import time as _time

_T_MONO = _time.monotonic()

import os  # noqa: E402  (builtin/frozen: cheap)
import sys  # noqa: E402

_PID = os.getpid()


def _json_str(s):
    if s is None:
        return "null"
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif o < 0x20 or 0xD800 <= o <= 0xDFFF:
            out.append("\\u%04x" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _atomic_write(path, text):
    tmp = "%s.tmp.%d" % (path, _PID)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _startfile_first():
    argv = sys.argv
    for i in range(1, len(argv) - 1):
        if argv[i] == "-x_test_startfile":
            try:
                cwd = os.getcwd()
            except OSError:
                cwd = None
            _atomic_write(argv[i + 1], '{"pid": %d, "t_mono": %r, "cwd": %s}\n'
                          % (_PID, _T_MONO, _json_str(cwd)))
            return


# Catch SIGTERM/SIGINT before announcing ourselves, so that a test reacting
# to the startfile always gets the documented exit status 255.
import _signal  # noqa: E402  (builtin; `signal` would pull in enum)

_SIGNALLED = []


def _on_signal(signum, frame):
    _SIGNALLED.append(signum)


if __name__ == "__main__":  # importable (for tests of translate()) without side effects
    _signal.signal(_signal.SIGTERM, _on_signal)
    _signal.signal(_signal.SIGINT, _on_signal)
    _startfile_first()


_HOOK_ARITY1 = ("-x_test_startfile", "-x_test_exit", "-x_test_stderr",
                "-x_test_hold", "-x_test_pidfile")


def _split_hooks(argv):
    hooks = {"stderr": []}
    rest = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-x_test_"):
            val = argv[i + 1] if i + 1 < len(argv) else ""
            if a == "-x_test_stderr":
                hooks["stderr"].append(val)
            elif a in _HOOK_ARITY1:
                hooks[a[len("-x_test_"):]] = val
            else:
                sys.stderr.write("plex_transcoder: ignoring unknown test hook %s\n" % a)
            i += 2
            continue
        rest.append(a)
        i += 1
    return hooks, rest


def _write_pidfile(path, ffmpeg_pid):
    _atomic_write(path, '{"pid": %d, "ffmpeg_pid": %s}\n'
                  % (_PID, "null" if ffmpeg_pid is None else int(ffmpeg_pid)))


def _exit_now(code):
    try:
        sys.stdout.flush()
    except Exception:
        pass
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


class _Wakeup:
    """Self-pipe fed by the signal module, so select() wakes on a signal."""

    def __init__(self):
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        _signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)

    def drain(self):
        try:
            while os.read(self.r, 512):
                pass
        except OSError:
            pass


def _hold(seconds, wake):
    import select
    deadline = _time.monotonic() + seconds
    while not _SIGNALLED:
        left = deadline - _time.monotonic()
        if left <= 0:
            return
        select.select([wake.r], [], [], left)
        wake.drain()


# ---------------------------------------------------------------- argv ----

# ffmpeg (5.1 + Plex fork) options that take no argument.
_FLAGS = frozenset("""
-y -n -nostats -stats -copyts -start_at_zero -noaccurate_seek -accurate_seek
-xerror -xioerror -nostdin -stdin -shortest -vn -an -sn -dn -hide_banner -re
-benchmark -benchmark_all -debug_ts -dump -hex -ignore_unknown -copy_unknown
-autorotate -noautorotate -autoscale -noautoscale -fix_sub_duration -report
-qphist -vstats -psnr -intra -deinterlace -stdin -nostdin -noautoscale
-find_stream_info -nofind_stream_info -bitexact -L -h -? -help -version
-buildconf -formats -muxers -demuxers -devices -codecs -decoders -encoders
-bsfs -protocols -filters -pix_fmts -layouts -sample_fmts -colors -hwaccels
""".split())

_CODEC_OPTS = ("-codec", "-c", "-vcodec", "-acodec", "-scodec", "-dcodec")
_FILTER_OPTS = ("-filter_complex", "-lavfi", "-filter", "-vf", "-af",
                "-filter_script", "-filter_complex_script")
# Plex-only options with one argument that are simply dropped.
_DROP1 = ("-map_inlineass", "-strict_ts", "-time_delta", "-segment_copyts",
          "-min_seg_duration", "-mov_res", "-eae_prefix", "-loglevel", "-v",
          "-progress", "-stats_period")
_DROP0 = ("-xioerror",)
# Muxer options handled per output (emulated, or replaced by local paths).
_PLEX_MUXER_ONLY = ("-manifest_name", "-skip_to_segment", "-delete_removed",
                    "-segment_list_separate_stream_times", "-segment_list_unfinished")
_PER_OUTPUT = _PLEX_MUXER_ONLY + ("-segment_list", "-segment_list_size", "-media_seg_name",
                                  "-init_seg_name", "-window_size")
_SEGMENT_FORMATS = ("segment", "ssegment", "stream_segment")
_LEVELS = {"quiet": -8, "panic": 0, "fatal": 8, "error": 16, "warning": 24,
           "info": 32, "verbose": 40, "debug": 48, "trace": 56}
_PLEX_LEVEL = {"panic": 0, "fatal": 0, "error": 0, "warning": 1, "info": 2,
               "verbose": 3, "debug": 4, "trace": 4}


def _base(opt):
    return opt.split(":", 1)[0]


def _parse_level(val, default):
    if val is None:
        return default
    v = val.strip().lower()
    for part in v.replace("+", " ").split():
        if part in _LEVELS:
            return _LEVELS[part]
        try:
            return int(part)
        except ValueError:
            continue
    return default


def _split_groups(args):
    """ffmpeg-style split: [(kind, [(opt, val)], target)], trailing opts."""
    groups = []
    cur = []
    i = 0
    n = len(args)
    while i < n:
        a = args[i]
        if a == "-i":
            groups.append(("input", cur, args[i + 1] if i + 1 < n else ""))
            cur = []
            i += 2
        elif len(a) > 1 and a[0] == "-":
            if _base(a) in _FLAGS:
                cur.append((a, None))
                i += 1
            else:
                cur.append((a, args[i + 1] if i + 1 < n else None))
                i += 2
        else:
            groups.append(("output", cur, a))
            cur = []
            i += 1
    return groups, cur


def _is_url(s):
    return s.startswith("http://") or s.startswith("https://")


class Plan:
    """Result of translating a Plex argv for stock ffmpeg."""

    def __init__(self):
        self.ffargs = []
        self.progress_url = None
        self.plex_level = _LEVELS["error"]
        self.dash = []        # DashOutput
        self.seglists = []    # SegmentList
        self.inputs = []      # input paths/URLs
        self.first_ss = 0.0
        self.copyts = False
        self.out_limit = None  # -t of an output, seconds
        self.notes = []


def _inlineass_to_null(graph):
    import re
    return re.sub(r"inlineass(=[^;,\[]*)?", "null", graph)


def _seconds(val):
    try:
        if ":" in val:
            s = 0.0
            for part in val.split(":"):
                s = s * 60 + float(part)
            return s
        return float(val)
    except (TypeError, ValueError):
        return None


def translate(args, workdir=".plexfake"):
    groups, trailing = _split_groups(args)
    plan = Plan()
    out = []
    n_out = 0

    def common(opt, val, kind, info):
        """Handle an option valid anywhere; returns list of tokens to emit."""
        b = _base(opt)
        if b == "-progressurl":
            plan.progress_url = val
            return []
        if b == "-loglevel_plex":
            plan.plex_level = _parse_level(val, plan.plex_level)
            return []
        if b in _DROP0:
            return []
        if b in _DROP1:
            return []
        if b == "-copyts":
            plan.copyts = True
        if b in _PER_OUTPUT:
            if kind == "output":
                info[b] = val
                return None  # decided per output format later
            if b in _PLEX_MUXER_ONLY:
                return []  # stray (e.g. after the last output): nothing to apply it to
        if b in _CODEC_OPTS:
            if kind == "input":
                return []  # decoder hints: the real media differs
            if val and val.endswith("_eae"):
                val = val[:-4]
            return [opt, val]
        if b == "-bsf" and val:
            kept = [f for f in val.split(",") if not f.strip().startswith("framedrop")]
            return [opt, ",".join(kept)] if kept else []
        if b in _FILTER_OPTS and val:
            return [opt, _inlineass_to_null(val)]
        if b == "-f" and kind == "output":
            info["-f"] = val
        if b == "-t" and kind == "output":
            plan.out_limit = _seconds(val)
        if b == "-ss" and kind == "input" and not plan.inputs:
            plan.first_ss = _seconds(val) or 0.0
        return [opt] if val is None else [opt, val]

    for kind, opts, target in groups:
        info = {}
        emitted = []  # list of (opt, val, tokens-or-None)
        for opt, val in opts:
            toks = common(opt, val, kind, info)
            emitted.append((opt, val, toks))
        if kind == "input":
            plan.inputs.append(target)
            for _o, _v, toks in emitted:
                out.extend(toks or [])
            out.extend(["-i", target])
            continue
        fmt = info.get("-f")
        extra = []
        if fmt == "dash":
            d = DashOutput(n_out, workdir, target, info)
            plan.dash.append(d)
            target = d.local_mpd
            extra = d.ffmpeg_opts()
        elif fmt in _SEGMENT_FORMATS and info.get("-segment_list") is not None:
            sl = SegmentList(n_out, workdir, target, info, opts)
            plan.seglists.append(sl)
            extra = sl.ffmpeg_opts()
        for opt, val, toks in emitted:
            if toks is None:
                b = _base(opt)
                if fmt == "dash" and b in ("-manifest_name", "-skip_to_segment", "-delete_removed",
                                           "-media_seg_name", "-init_seg_name", "-window_size"):
                    continue  # re-added by DashOutput.ffmpeg_opts()
                if fmt in _SEGMENT_FORMATS and b in ("-segment_list", "-segment_list_size") \
                        and info.get("-segment_list") is not None:
                    continue  # re-added by SegmentList.ffmpeg_opts()
                if b in _PLEX_MUXER_ONLY:
                    continue  # Plex-only, meaningless for this muxer
                out.extend([opt, val])
            else:
                out.extend(toks)
        out.extend(extra)
        out.append(target)
        n_out += 1
    for opt, val in trailing:
        toks = common(opt, val, "trailing", {})
        out.extend(toks or [])
    plan.ffargs = out
    return plan


def _fill_tmpl(tmpl, rep, number, ext):
    import re

    def sub(m):
        if m.group(0) == "$$":
            return "$"
        ident, fmt = m.group(1), m.group(2)
        if ident == "RepresentationID":
            return rep
        if ident == "Number":
            return (fmt or "%d") % number
        if ident == "ext":
            return ext
        return m.group(0)
    return re.sub(r"\$\$|\$(RepresentationID|Number|Bandwidth|Time|ext)(%0?\d*[dxX])?\$", sub, tmpl)


class DashOutput:
    DEFAULT_INIT = "init-stream$RepresentationID$.$ext$"
    DEFAULT_MEDIA = "chunk-stream$RepresentationID$-$Number%05d$.$ext$"

    def __init__(self, idx, workdir, target, info):
        self.idx = idx
        self.workdir = workdir
        self.target = target
        self.manifest = info.get("-manifest_name")
        self.skip = int(float(info.get("-skip_to_segment") or 1))
        self.offset = max(self.skip, 1) - 1
        dr = (info.get("-delete_removed") or "true").strip().lower()
        self.delete_removed = dr not in ("0", "false", "no", "off")
        self.window = int(float(info.get("-window_size") or 0))
        self.init_tmpl = info.get("-init_seg_name") or self.DEFAULT_INIT
        self.media_tmpl = info.get("-media_seg_name") or self.DEFAULT_MEDIA
        self.stage_rel = "stage-%d" % idx
        self.stage_dir = os.path.join(workdir, self.stage_rel)
        self.staged_media = self.stage_rel + "/r$RepresentationID$-n$Number$.$ext$"
        self.staged_init = "../" + self.init_tmpl
        base = os.path.basename(target.rstrip("/")) or "dash"
        if not base.endswith(".mpd"):
            base += ".mpd"
        self.local_mpd = os.path.join(workdir, base)
        self.mpd_sig = None
        self.last_posted = None
        self.produced = {}  # rep -> sorted list of (number, final name)
        self.bytes = 0

    def ffmpeg_opts(self):
        # extra_window_size: never let ffmpeg delete (we moved the files away).
        return ["-init_seg_name", self.staged_init, "-media_seg_name", self.staged_media,
                "-window_size", str(self.window), "-extra_window_size", "100000000"]

    def prepare(self):
        os.makedirs(self.stage_dir, exist_ok=True)

    def move_staged(self):
        import re
        try:
            names = os.listdir(self.stage_dir)
        except OSError:
            return
        moved = []
        for name in names:
            if name.endswith(".tmp"):
                continue
            m = re.match(r"^r(.+?)-n(\d+)\.(.*)$", name)
            if not m:
                continue
            rep, num, ext = m.group(1), int(m.group(2)), m.group(3)
            final = _fill_tmpl(self.media_tmpl, rep, num + self.offset, ext)
            src = os.path.join(self.stage_dir, name)
            try:
                self.bytes += os.stat(src).st_size
                os.replace(src, final)
            except OSError as e:
                sys.stderr.write("plex_transcoder: cannot move %s -> %s: %s\n" % (src, final, e))
                continue
            moved.append((rep, num + self.offset, final))
        for rep, num, final in sorted(moved):
            lst = self.produced.setdefault(rep, [])
            lst.append((num, final))
            if self.delete_removed and self.window > 0:
                keep = self.window + 5
                while len(lst) > keep:
                    _n, old = lst.pop(0)
                    try:
                        os.unlink(old)
                    except OSError:
                        pass

    def rewrite_mpd(self, text):
        import re
        # ffmpeg substitutes $ext$ in the templates it writes to the MPD.
        text = re.sub(r'media="%s/r\$RepresentationID\$-n\$Number\$\.([^"]*)"' % re.escape(self.stage_rel),
                      lambda m: 'media="%s"' % self.media_tmpl.replace("$ext$", m.group(1)), text)
        text = re.sub(r'initialization="\.\./([^"]*)"', r'initialization="\1"', text)
        if self.offset:
            text = re.sub(r'startNumber="(\d+)"',
                          lambda m: 'startNumber="%d"' % (int(m.group(1)) + self.offset), text)
        return text

    def poll(self, sender, final=False):
        """Move finished segments, then publish the MPD if it changed."""
        self.move_staged()
        try:
            st = os.stat(self.local_mpd)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return
        if sig == self.mpd_sig and not final:
            return
        self.mpd_sig = sig
        try:
            with open(self.local_mpd, "rb") as f:
                raw = f.read()
        except OSError:
            return
        # ffmpeg renames a segment before it rewrites the MPD naming it:
        # a second pass guarantees everything the MPD references is in place.
        self.move_staged()
        body = self.rewrite_mpd(raw.decode("utf-8", "replace")).encode("utf-8")
        if body == self.last_posted and not final:
            return
        self.last_posted = body
        self.publish(body, sender)

    def publish(self, body, sender):
        if self.manifest and _is_url(self.manifest):
            sender.manifest(self.manifest, body)
        else:
            dest = self.manifest or self.target
            try:
                tmp = dest + ".tmp"
                with open(tmp, "wb") as f:
                    f.write(body)
                os.replace(tmp, dest)
            except OSError as e:
                sys.stderr.write("plex_transcoder: cannot write manifest %s: %s\n" % (dest, e))


class SegmentList:
    """Stock ffmpeg writes a local CSV list; we POST Plex-shaped bodies."""

    def __init__(self, idx, workdir, target, info, opts):
        self.idx = idx
        self.url = info.get("-segment_list")
        self.local = os.path.join(workdir, "seglist-%d.csv" % idx)
        self.template = target
        self.start_number = 0
        for o, v in opts:
            if o == "-segment_start_number":
                try:
                    self.start_number = int(v)
                except (TypeError, ValueError):
                    pass
        try:
            self.list_size = int(info.get("-segment_list_size") or 0)
        except ValueError:
            self.list_size = 0

        def on(key):
            v = (info.get(key) or "0").strip().lower()
            return v not in ("0", "false", "no", "off", "")
        self.separate = on("-segment_list_separate_stream_times")
        self.unfinished = on("-segment_list_unfinished")
        self.sig = None
        self.rows = []          # (name, start, end)
        self.announced = set()  # names posted as unfinished
        self.last_body = None
        self.first_start = 0.0

    def ffmpeg_opts(self):
        # Keep every row locally; Plex's windowing is applied when posting.
        return ["-segment_list", self.local, "-segment_list_size", "1000000000"]

    def _fmt(self, name, start, end, unfinished):
        if any(c in name for c in '",\n\r'):
            name = '"' + name.replace('"', '""') + '"'
        row = ("#" if unfinished else "") + name
        if self.separate:
            return "%s,%f,%f,%f,%f\n" % (row, start, end, end, end)
        return "%s,%f,%f\n" % (row, start, end)

    def _body(self, pending=None):
        rows = [self._fmt(n, s, e, False) for n, s, e in self.rows]
        if pending:
            rows.append(self._fmt(pending[0], pending[1], pending[1], True))
        if self.list_size > 0:
            # PMS's segment.c keeps list_size - 1 entries (it drops the oldest
            # once the count reaches list_size).
            rows = rows[-max(self.list_size - 1, 1):]
        return "".join(rows).encode("utf-8")

    def _send(self, body, sender):
        if body == self.last_body:
            return
        self.last_body = body
        if _is_url(self.url):
            sender.manifest(self.url, body)
        else:
            try:
                with open(self.url, "wb") as f:
                    f.write(body)
            except OSError as e:
                sys.stderr.write("plex_transcoder: cannot write segment list %s: %s\n" % (self.url, e))

    def _segment_name(self, n):
        try:
            return self.template % n
        except (TypeError, ValueError):
            return None

    def poll(self, sender, final=False):
        try:
            st = os.stat(self.local)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig is not None and sig != self.sig:
            self.sig = sig
            rows = []
            try:
                with open(self.local, "r", encoding="utf-8", errors="replace") as f:
                    data = f.read()
            except OSError:
                data = ""
            for line in data.split("\n")[:-1]:  # complete lines only
                parts = line.rsplit(",", 2)
                if len(parts) != 3:
                    continue
                name = parts[0]
                if len(name) >= 2 and name[0] == '"' and name[-1] == '"':
                    name = name[1:-1].replace('""', '"')
                try:
                    rows.append((name, float(parts[1]), float(parts[2])))
                except ValueError:
                    continue
            if rows and rows[0][1] == 0.0 and self.first_start > 0 and rows[0][2] > self.first_start:
                # stock segment.c never sets the first entry's start time
                rows[0] = (rows[0][0], self.first_start, rows[0][2])
            if rows != self.rows:
                self.rows = rows
                self._send(self._body(), sender)
        if final:
            self._send(self._body(), sender)
            return
        if self.unfinished:
            nxt = self.start_number + len(self.rows)
            name = self._segment_name(nxt)
            if name and name not in self.announced and os.path.exists(name):
                self.announced.add(name)
                start = self.rows[-1][2] if self.rows else self.first_start
                self._send(self._body(pending=(os.path.basename(name), start)), sender)


# ----------------------------------------------------------- callbacks ----

class Sender:
    """Background thread delivering callbacks in order."""

    UA = "Lavf/59.27.100"

    def __init__(self, token):
        import collections
        import threading
        self.token = token
        self.q = collections.deque()
        self.cv = threading.Condition()
        self.closed = False
        self.conns = {}
        self.fail_count = 0
        self.last_fail_report = 0.0
        self.suppressed = 0
        self.thread = threading.Thread(target=self._run, name="plex-callbacks", daemon=True)

    def start(self):
        self.thread.start()

    def _put(self, item):
        with self.cv:
            self.q.append(item)
            self.cv.notify()

    def progress(self, url, method="PUT"):
        self._put((method, url, None))

    def manifest(self, url, body):
        self._put(("MANIFEST", url, body))

    def close(self, timeout):
        with self.cv:
            self.closed = True
            self.cv.notify()
        if timeout:
            self.thread.join(timeout)

    @staticmethod
    def _split(url):
        scheme, _, rest = url.partition("://")
        hostport, slash, path = rest.partition("/")
        path = "/" + path if slash else "/"
        host, port = hostport, None
        if hostport.startswith("["):
            h, _, p = hostport[1:].partition("]")
            host = h
            port = p[1:] if p.startswith(":") else None
        elif ":" in hostport:
            host, _, port = hostport.rpartition(":")
        port = int(port) if port else (443 if scheme == "https" else 80)
        return scheme, host, port, path

    def _conn(self, scheme, host, port, fresh=False):
        import http.client
        key = (scheme, host, port)
        c = self.conns.get(key)
        if c is not None and not fresh:
            return c
        if c is not None:
            c.close()
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        c = cls(host, port, timeout=10)
        self.conns[key] = c
        return c

    def _report(self, what, err):
        self.fail_count += 1
        now = _time.monotonic()
        if now - self.last_fail_report >= 1.0:
            more = (" (%d similar suppressed)" % self.suppressed) if self.suppressed else ""
            sys.stderr.write("plex_transcoder: callback %s failed: %s%s\n" % (what, err, more))
            sys.stderr.flush()
            self.last_fail_report = now
            self.suppressed = 0
        else:
            self.suppressed += 1

    def _do_progress(self, method, url):
        import http.client
        scheme, host, port, path = self._split(url)
        headers = {"User-Agent": self.UA, "Accept": "*/*", "Range": "bytes=0-",
                   "Icy-MetaData": "1"}
        if self.token is not None:
            headers["X-Plex-Token"] = self.token
            headers["X-Plex-Http-Pipeline"] = "infinite"
        for attempt in (0, 1):
            c = self._conn(scheme, host, port, fresh=attempt > 0)
            try:
                c.request(method, path, body=None, headers=headers)
                r = c.getresponse()
                data = r.read()
                if r.will_close:
                    c.close()
                if r.status >= 400:
                    self._report("%s %s" % (method, url), "HTTP %d" % r.status)
                return data
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, http.client.CannotSendRequest) as e:
                c.close()
                if attempt:
                    self._report("%s %s" % (method, url), repr(e))
            except (OSError, http.client.HTTPException) as e:
                c.close()
                self._report("%s %s" % (method, url), repr(e))
                return None
        return None

    def _do_manifest(self, url, body):
        import http.client
        scheme, host, port, path = self._split(url)
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        c = cls(host, port, timeout=10)
        try:
            chunks = [body[i:i + 32768] for i in range(0, len(body), 32768)] or [b""]
            c.request("POST", path, body=iter(chunks), encode_chunked=True,
                      headers={"User-Agent": self.UA, "Accept": "*/*", "Connection": "close",
                               "Transfer-Encoding": "chunked", "Icy-MetaData": "1"})
            r = c.getresponse()
            r.read()
            if r.status >= 400:
                self._report("POST %s" % url, "HTTP %d" % r.status)
        except (OSError, http.client.HTTPException) as e:
            self._report("POST %s" % url, repr(e))
        finally:
            c.close()

    def _run(self):
        while True:
            with self.cv:
                while not self.q and not self.closed:
                    self.cv.wait()
                if not self.q and self.closed:
                    break
                item = self.q.popleft()
            kind, url, body = item
            try:
                if kind == "MANIFEST":
                    self._do_manifest(url, body)
                else:
                    self._do_progress(kind, url)
            except Exception as e:  # never let a callback kill the thread
                self._report("%s %s" % (kind, url), repr(e))
        for c in self.conns.values():
            c.close()
        if self.suppressed:
            sys.stderr.write("plex_transcoder: %d more callback failures suppressed\n" % self.suppressed)


# ------------------------------------------------------------- ffmpeg log ----

def _split_top(s):
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur).strip())
    return parts


_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "3.0(back)": 3, "4.0": 4, "quad": 4,
             "quad(side)": 4, "3.1": 4, "5.0": 5, "5.0(side)": 5, "4.1": 5, "5.1": 6,
             "5.1(side)": 6, "6.0": 6, "6.0(front)": 6, "hexagonal": 6, "6.1": 7,
             "6.1(back)": 7, "6.1(front)": 7, "7.0": 7, "7.0(front)": 7, "7.1": 8,
             "7.1(wide)": 8, "7.1(wide-side)": 8, "octagonal": 8, "downmix": 2}


def parse_stream_line(line):
    """Parse an ffmpeg dump 'Stream #f:i...: Type: ...' line into a dict."""
    import re
    m = re.match(r"^\s*Stream #(\d+):(\d+)(?:\[(0x[0-9a-fA-F]+)\])?(?:\(([^)]*)\))?: "
                 r"(Video|Audio|Subtitle|Data|Attachment): (.*)$", line)
    if not m:
        return None
    d = {"file": int(m.group(1)), "index": int(m.group(2)),
         "type": m.group(5).lower(), "language": m.group(4)}
    d["id"] = int(m.group(3), 16) if m.group(3) else d["index"] + 1
    rest = m.group(6)
    d["default"] = "(default)" in rest
    rest = rest.replace(" (default)", "").replace(" (forced)", "")
    parts = _split_top(rest)
    head = parts[0] if parts else ""
    d["codec"] = head.split(" ", 1)[0]
    for prof in re.findall(r"\(([^()]*)\)", head):
        if "/" not in prof and "0x" not in prof:
            d["profile"] = prof
            break
    for p in parts[1:]:
        mm = re.match(r"^(\d+)x(\d+)(?: \[SAR (\d+:\d+) DAR \d+:\d+\])?", p)
        if mm and "width" not in d:
            d["width"], d["height"] = int(mm.group(1)), int(mm.group(2))
            if mm.group(3):
                d["sar"] = mm.group(3)
            continue
        mm = re.match(r"^([\d.]+)(k?) fps$", p)
        if mm:
            d["frameRate"] = float(mm.group(1)) * (1000 if mm.group(2) else 1)
            continue
        mm = re.match(r"^(\d+) kb/s", p)
        if mm:
            d["bitrate"] = int(mm.group(1))
            continue
        mm = re.match(r"^(\d+) Hz$", p)
        if mm:
            d["sampleRate"] = int(mm.group(1))
            continue
        if d["type"] == "video" and "pix_fmt" not in d and "width" not in d:
            d["pix_fmt"] = p
            d["interlaced"] = int("first" in p)
            continue
        if d["type"] == "audio":
            if "layout" not in d and (p in _CHANNELS or p.endswith(" channels")):
                d["layout"] = p
                d["channels"] = _CHANNELS.get(p) or int(p.split()[0])
                continue
            mm = re.match(r"^[su](\d+)p?(?: \((\d+) bit\))?$", p)
            if mm and "bitDepth" not in d:
                d["bitDepth"] = int(mm.group(2) or mm.group(1))
    return d


class Runner:
    def __init__(self, plan, sender):
        import re
        self.plan = plan
        self.sender = sender
        self.log_re = re.compile(r"^(?:\[([^\]]+) @ 0x[0-9a-fA-F]+\] )?"
                                 r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ?(.*)$")
        self.section = None  # ("in"|"out", n)
        self.in_streams = []
        self.inputs_flushed = False
        self.duration = None
        self.outputs_seen = False
        self.progress = {}
        self.last_tick = None
        self.pending_tick = None
        self.errbuf = b""
        self.progbuf = b""

    # -- callbacks ---------------------------------------------------------
    def _url(self, suffix, params):
        from urllib.parse import urlencode
        base = self.plan.progress_url
        return base + suffix + ("?" + urlencode(params) if params else "")

    def _cb(self, suffix, params, method="PUT"):
        if self.plan.progress_url:
            self.sender.progress(self._url(suffix, params), method)

    def _flush_inputs(self):
        for s in self.in_streams:
            if s["type"] not in ("video", "audio"):
                continue
            base = [("index", s["index"]), ("id", s["id"]), ("codec", s["codec"]),
                    ("type", s["type"])]
            if s.get("profile"):
                base.append(("profile", s["profile"].lower()))
            self._cb("/stream", base)
            det = list(base)
            for k in ("bitrate",):
                if s.get(k):
                    det.append((k, s[k]))
            if s.get("language") and s["language"] != "und":
                det.append(("language", s["language"]))
            if s["type"] == "video":
                for k in ("width", "height"):
                    if k in s:
                        det.append((k, s[k]))
                det.append(("interlaced", s.get("interlaced", 0)))
                if s.get("sar"):
                    det.append(("sar", s["sar"]))
                if s.get("frameRate"):
                    det.append(("frameRate", "%.3f" % s["frameRate"]))
                det.append(("closedCaptions", 0))
            else:
                for k in ("channels", "layout", "sampleRate", "bitDepth"):
                    if s.get(k):
                        det.append((k, s[k]))
            if s.get("default"):
                det.append(("disp_default", 1))
            self._cb("/streamDetail", det)
        self.in_streams = []

    def _send_duration(self):
        if self.inputs_flushed:
            return
        self._flush_inputs()
        self.inputs_flushed = True
        d = self.total_duration()
        self._cb("", [("duration", ("%.3f" % d) if d > 0 else "-1")])

    def total_duration(self):
        d = self.duration if self.duration is not None else -1.0
        if self.plan.out_limit and (d <= 0 or self.plan.out_limit < d - self.plan.first_ss):
            d = self.plan.first_ss + self.plan.out_limit
        return d

    # -- stderr ------------------------------------------------------------
    def on_stderr_line(self, raw):
        line = raw.decode("utf-8", "replace").rstrip("\r")
        m = self.log_re.match(line)
        if m:
            ctx, level, text = m.group(1), m.group(2), m.group(3)
        else:
            ctx, level, text = None, "warning", line
        lv = _LEVELS[level]
        if text.startswith("-vsync is deprecated"):
            return  # artefact of running Plex's argv on 5.1; Plex's fork is silent
        if lv <= _LEVELS["warning"] and text.strip():
            sys.stderr.write(("[%s] %s\n" % (ctx, text)) if ctx else text + "\n")
            sys.stderr.flush()
        if lv <= self.plan.plex_level and text.strip() and self.plan.progress_url:
            self._cb("/log", [("level", _PLEX_LEVEL[level]), ("message", text)], method="POST")
        if level != "info" or ctx is not None:
            return
        self._parse_dump(text)

    def _parse_dump(self, text):
        import re
        m = re.match(r"^(Input|Output) #(\d+), ", text)
        if m:
            if m.group(1) == "Input":
                self._flush_inputs()
                self.section = ("in", int(m.group(2)))
            else:
                self._send_duration()
                self.section = ("out", int(m.group(2)))
            return
        if text.startswith("Stream mapping:"):
            self._send_duration()
            self.section = None
            return
        if self.section is None:
            return
        if self.section[0] == "in" and self.section[1] == 0 and self.duration is None:
            m = re.match(r"^\s+Duration: ([0-9:.]+|N/A)", text)
            if m:
                self.duration = _seconds(m.group(1)) if m.group(1) != "N/A" else -1.0
                return
        s = parse_stream_line(text)
        if not s:
            return
        if self.section[0] == "in":
            self.in_streams.append(s)
        elif s["type"] == "video" and "width" in s:
            self.outputs_seen = True
            self._cb("", [("width", s["width"]), ("height", s["height"])])
        else:
            self.outputs_seen = True

    # -- progress ------------------------------------------------------------
    def on_progress_line(self, raw):
        line = raw.decode("utf-8", "replace").strip()
        k, sep, v = line.partition("=")
        if not sep:
            return
        self.progress[k] = v.strip()
        if k == "progress":
            self.pending_tick = dict(self.progress)
            self.progress = {}
            # PMS hears about the outputs (width/height) before any progress.
            if self.outputs_seen:
                self._send_tick(self.pending_tick)
                self.pending_tick = None

    def output_bytes(self):
        total = 0
        skip = set(os.path.abspath(p) for p in self.plan.inputs if not _is_url(p))
        try:
            with os.scandir(".") as it:
                for e in it:
                    try:
                        if e.is_file(follow_symlinks=False) and os.path.abspath(e.path) not in skip:
                            total += e.stat().st_size
                    except OSError:
                        pass
        except OSError:
            pass
        return total

    def _send_tick(self, p, final=False):
        try:
            t = int(p.get("out_time_us", "")) / 1e6
        except ValueError:
            t = None
        pos = None
        if t is not None and t >= 0:
            pos = t if self.plan.copyts else t + self.plan.first_ss
        dur = self.total_duration()
        sp = p.get("speed", "").rstrip("x").strip()
        try:
            speed = float(sp)
        except ValueError:
            speed = 0.0
        if final:
            pct = 100.0
            remaining = 0
        elif pos is not None and dur > 0:
            pct = min(pos / dur * 100.0, 100.0)
            remaining = int(max(dur - pos, 0) / speed) if speed > 0 else -1
        else:
            pct, remaining = -1.0, -1
        try:
            size = int(p.get("total_size", ""))
        except ValueError:
            size = -1
        size = max(size, self.output_bytes())
        self._cb("", [("progress", "%.1f" % pct), ("size", size), ("remaining", remaining),
                      ("speed", "%.1f" % speed)])
        self.last_tick = p

    def feed(self, which, data):
        if which == "err":
            buf = self.errbuf + data
            *lines, self.errbuf = buf.split(b"\n")
            for ln in lines:
                self.on_stderr_line(ln)
        else:
            buf = self.progbuf + data
            *lines, self.progbuf = buf.split(b"\n")
            for ln in lines:
                self.on_progress_line(ln)

    def finish(self, rc):
        if self.errbuf:
            self.on_stderr_line(self.errbuf)
            self.errbuf = b""
        self._send_duration()
        if self.pending_tick is not None:
            self._send_tick(self.pending_tick)
        if rc == 0:
            self._send_tick(self.last_tick or {}, final=True)


def _poll_outputs(plan, sender, final=False):
    for d in plan.dash:
        d.poll(sender, final)
    for s in plan.seglists:
        s.poll(sender, final)


def _run(args, hooks, wake):
    import select
    import subprocess

    ffmpeg = os.environ.get("PLEXFAKE_FFMPEG", "/usr/bin/ffmpeg")
    plan = translate(args)
    workdir = ".plexfake"
    if plan.dash or plan.seglists:
        os.makedirs(workdir, exist_ok=True)
    for d in plan.dash:
        d.prepare()
    loglevel = max(plan.plex_level, _LEVELS["info"])
    lvname = [k for k, v in _LEVELS.items() if v == loglevel][0]
    r_prog, w_prog = os.pipe()
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "repeat+level+" + lvname,
           "-progress", "pipe:%d" % w_prog, "-stats_period", "0.5"] + plan.ffargs
    if os.environ.get("PLEXFAKE_DEBUG"):
        sys.stderr.write("plex_transcoder: exec %r\n" % (cmd,))

    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def child_setup():
        prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != parent:
            os._exit(255)

    if _SIGNALLED:
        _exit_now(255)
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                pass_fds=(w_prog,), preexec_fn=child_setup)
    except OSError as e:
        sys.stderr.write("plex_transcoder: cannot run %s: %s\n" % (ffmpeg, e))
        _exit_now(127)
    os.close(w_prog)
    if hooks.get("pidfile"):
        _write_pidfile(hooks["pidfile"], proc.pid)
    for s in plan.seglists:
        s.first_start = plan.first_ss if plan.copyts else 0.0
    sender = Sender(os.environ.get("X_PLEX_TOKEN"))
    sender.start()
    runner = Runner(plan, sender)
    err_fd = proc.stderr.fileno()
    fds = {err_fd: "err", r_prog: "prog"}
    last_poll = 0.0

    def stop_ffmpeg():
        try:
            proc.send_signal(_signal.SIGTERM)
        except OSError:
            pass
        deadline = _time.monotonic() + 0.5
        while proc.poll() is None:
            left = deadline - _time.monotonic()
            if left <= 0:
                try:
                    proc.kill()
                except OSError:
                    pass
                proc.wait()
                break
            rl = list(fds) if fds else []
            try:
                ready, _, _ = select.select(rl, [], [], min(left, 0.05))
            except OSError:
                ready = []
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    fds.pop(fd, None)

    def on_signal_exit():
        stop_ffmpeg()
        for d in plan.dash:  # local only: leave finished segments where PMS looks
            d.move_staged()
        _exit_now(255)

    while fds:
        if _SIGNALLED:
            on_signal_exit()
        try:
            ready, _, _ = select.select(list(fds) + [wake.r], [], [], 0.1)
        except InterruptedError:
            ready = []
        for fd in ready:
            if fd == wake.r:
                wake.drain()
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                del fds[fd]
                continue
            runner.feed(fds[fd], data)
        now = _time.monotonic()
        if now - last_poll >= 0.1:
            last_poll = now
            _poll_outputs(plan, sender)
    while True:
        if _SIGNALLED:
            on_signal_exit()
        try:
            rc = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            continue
    os.close(r_prog)
    proc.stderr.close()
    runner.finish(rc)
    _poll_outputs(plan, sender, final=True)
    sender.close(timeout=0)
    deadline = _time.monotonic() + 15
    while sender.thread.is_alive() and _time.monotonic() < deadline:
        if _SIGNALLED:
            _exit_now(255)
        sender.thread.join(0.1)
    if rc < 0:
        rc = 128 - rc
    if rc == 0 and not os.environ.get("PLEXFAKE_KEEP") and os.path.isdir(workdir):
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        for d in [d.stage_dir for d in plan.dash] + [workdir]:
            try:
                os.rmdir(d)  # only if empty
            except OSError:
                pass
    if _SIGNALLED:
        _exit_now(255)
    return rc


def main():
    hooks, args = _split_hooks(sys.argv[1:])
    if hooks.get("pidfile"):
        _write_pidfile(hooks["pidfile"], None)
    if hooks["stderr"]:
        for line in hooks["stderr"]:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
    wake = None
    if hooks.get("hold"):
        wake = _Wakeup()
        _hold(float(hooks["hold"]), wake)
        if _SIGNALLED:
            _exit_now(255)
    if "exit" in hooks:
        if _SIGNALLED:
            _exit_now(255)
        _exit_now(int(hooks["exit"]))
    if _SIGNALLED:
        _exit_now(255)
    if wake is None:
        wake = _Wakeup()
    rc = _run(args, hooks, wake)
    _exit_now(rc)


if __name__ == "__main__":
    main()
