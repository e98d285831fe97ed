"""Resume a segmented Plex transcode where a dead worker stopped (pure functions).

When a worker dies mid-transcode, the job's session directory (the job's
cwd, shared by every worker) already holds the segments it finished.  A new
transcoder must carry on from there, the way PMS itself restarts a
transcoder after a seek (PROTOCOL.md §5 "Seek"):

* DASH (``-f dash``): segment files ``chunk-stream<K>-<NNNNN>.m4s`` (from the
  ``-media_seg_name`` template), written as ``….m4s.tmp`` and renamed when
  complete.  A number is complete when every representation ``K`` seen in the
  directory has it.  The new run starts at ``N`` = highest complete number + 1
  with ``-skip_to_segment N``.
* HLS (``-f ssegment``/``-f segment`` with ``-segment_format mpegts|matroska``):
  files ``media-<NNNNN>.ts`` written in place, so the highest one may be cut
  short; the new run starts *at* it: ``N`` = highest number present, with
  ``-segment_start_number N``.

In both cases ``N`` is never below the original start ``S0``, and every input
that had ``-ss T0`` gets ``-ss T0 + (N - S0) * D`` (``D`` = ``-seg_duration`` or
``-segment_time``); an input without one gets ``-ss (N - S0) * D`` inserted just
before its ``-i``: PMS seeks every input alike (F2: the video and its subtitle
sidecar ``temp-0.srt`` both get ``-ss 224``), so a resumed sidecar does not start
at 0.  Nothing else in the argument list changes (values are replaced in place, so
global options keep their positions).  Other segmented outputs
(the subtitle side output ``sub-chunk-%05d`` of a DASH job) are left exactly as
they are, which ``Plan.reason`` says.

Use::

    p = plan(argv, os.listdir(cwd))
    run(p.argv if p.argv is not None else argv)

Standard library only, no I/O; the input list is never mutated.
"""

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import List, Optional

from . import args

NOT_SEGMENTED = "not a segmented stream: cannot resume, start again"

# ffmpeg's dashenc default when -media_seg_name is absent ($ext$ is m4s/webm).
DASH_DEFAULT_TEMPLATE = "chunk-stream$RepresentationID$-$Number%05d$.$ext$"
DASH_DEFAULT_INIT = "init-stream$RepresentationID$.$ext$"
HLS_FORMATS = ("mpegts", "matroska")


@dataclass(frozen=True)
class Plan:
    """What to run instead of the original argument list.

    ``argv`` is the rewritten list (a new list; equal to the original when
    there is nothing to skip) or ``None`` when resuming is impossible or
    pointless (run the original).  ``segment`` is the number the new
    transcoder writes first and ``seconds`` its input offset (``None`` with
    ``argv=None``).  ``reason`` is one human sentence for the log.
    """
    argv: Optional[List[str]]
    segment: Optional[int]
    seconds: Optional[float]
    reason: str


def _last(group, name):
    """(value, index) of the last ``-name`` in the group (ffmpeg: last one wins)."""
    t = group.last(name)
    return (t.value, t.index) if t is not None else (None, None)


def _decimal(text):
    """Seconds as a Decimal from ffmpeg's time syntax ``[-][[HH:]MM:]SS[.m…]``; None if unparseable."""
    if text is None:
        return None
    t = text.strip()
    sign = 1
    if t.startswith("-"):
        sign, t = -1, t[1:]
    parts = t.split(":")
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d*)?|\.\d+", p) for p in parts[-1:]) \
            or not all(re.fullmatch(r"\d+", p) for p in parts[:-1]):
        return None
    try:
        total = Decimal(0)
        for p in parts:
            total = total * 60 + Decimal(p)
    except InvalidOperation:
        return None
    return sign * total


def format_seconds(value):
    """Plain decimal like Plex writes it: ``224``, ``42``, ``7.5`` (no exponent, no trailing zeros)."""
    d = Decimal(value)
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def _int(text):
    return int(text) if text is not None and re.fullmatch(r"\s*-?\d+\s*", text) else None


def _dash_regex(template, need_number=True):
    """Regex with groups ``rep`` and ``num`` for a dashenc file-name template, or None.

    ``None`` when the template has no ``$Number$`` (and ``need_number``) or
    uses ``$Time$`` (time-based names cannot be mapped to segment numbers).
    """
    if "$Time" in template or (need_number and "$Number" not in template):
        return None
    out, i, seen = "", 0, set()
    for m in re.finditer(r"\$\$|\$(RepresentationID|Number|Bandwidth|ext)(%0?\d*d)?\$", template):
        out += re.escape(template[i:m.start()])
        i = m.end()
        ident = m.group(1)
        if m.group(0) == "$$":
            out += re.escape("$")
        elif ident == "RepresentationID" and "rep" not in seen:
            out += r"(?P<rep>\d+)"
            seen.add("rep")
        elif ident == "Number" and "num" not in seen:
            out += r"(?P<num>\d+)"
            seen.add("num")
        elif ident == "ext":
            out += r"[A-Za-z0-9]+"
        else:
            out += r"\d+"
    out += re.escape(template[i:])
    return re.compile(out)


def _printf_regex(pattern):
    """Regex with group ``num`` for a segment-muxer output name like ``media-%05d.ts``, or None."""
    m = list(re.finditer(r"%0?\d*d", pattern.replace("%%", "\0")))
    if len(m) != 1:
        return None
    p = pattern.replace("%%", "\0")
    rx = re.escape(p[:m[0].start()]) + r"(?P<num>\d+)" + re.escape(p[m[0].end():])
    return re.compile(rx.replace("\0", "%"))


def _main_output(outputs):
    """(kind, group) of the first resumable output, and the list of other outputs."""
    main, others = None, []
    for g in outputs:
        fmt = g.muxer
        if main is None and fmt == "dash":
            main = ("DASH", g)
            continue
        if main is None and fmt in ("ssegment", "segment", "stream_segment"):
            seg_fmt, _ = _last(g, "segment_format")
            if seg_fmt in HLS_FORMATS or (seg_fmt is None and (g.value or "").endswith(".ts")):
                main = ("HLS", g)
                continue
        others.append(g)
    return main, others


def plan(argv, names):
    """Plan the resumption of ``argv`` (a list or an ``args.Parsed``) given the file ``names`` in its
    session directory."""
    job = args.parse(argv)
    argv = list(job.argv)
    names = [n.rsplit("/", 1)[-1] for n in names if isinstance(n, str)]
    main, others = _main_output(job.outputs)
    if main is None:
        return Plan(None, None, None, NOT_SEGMENTED)
    kind, out = main
    inputs = job.inputs
    if not inputs:
        return Plan(None, None, None, "no input (-i): cannot resume, start again")
    if inputs[0].value is None or args.is_url(inputs[0].value):
        return Plan(None, None, None,
                    f"{kind} input is a network stream ({inputs[0].value}): cannot seek into it, start again")

    if kind == "DASH":
        dur_text, _ = _last(out, "seg_duration")
        start_opt, default_start = "skip_to_segment", 1
    else:
        dur_text, _ = _last(out, "segment_time")
        start_opt, default_start = "segment_start_number", 0
    duration = _decimal(dur_text)
    if duration is None or duration <= 0:
        opt = "-seg_duration" if kind == "DASH" else "-segment_time"
        return Plan(None, None, None, f"{kind} output without a usable {opt} ({dur_text!r}): cannot resume, start again")
    start_text, start_index = _last(out, start_opt)
    s0 = default_start if start_text is None else _int(start_text)
    if s0 is None:
        return Plan(None, None, None, f"unreadable -{start_opt} {start_text!r}: cannot resume, start again")

    seeks = []   # (index of the value, original seconds) for every input with -ss
    for seek in job.seeks:
        t0 = _decimal(seek.value)
        if t0 is None:
            return Plan(None, None, None, f"unreadable input -ss {seek.value!r}: cannot resume, start again")
        seeks.append((seek.index + 1, t0))
    unseeked = [g.index for g in inputs if g.seek is None and g.value is not None]   # their -i positions
    first_seek = inputs[0].seek
    base = _decimal(first_seek.value) if first_seek is not None else Decimal(0)

    if kind == "DASH":
        template, _ = _last(out, "media_seg_name")
        rx = _dash_regex(template or DASH_DEFAULT_TEMPLATE)
        if rx is None:
            return Plan(None, None, None, f"DASH segment names {template!r} carry no $Number$: cannot resume, start again")
        init_template, _ = _last(out, "init_seg_name")
        init_rx = _dash_regex(init_template or DASH_DEFAULT_INIT, need_number=False)
        done, reps = {}, set()
        for name in names:
            tmp = name.endswith(".tmp")
            m = rx.fullmatch(name[:-4] if tmp else name)
            if m:
                rep = str(int(m.groupdict().get("rep") or 0))
                reps.add(rep)
                if not tmp:
                    done.setdefault(rep, set()).add(int(m.group("num")))
            elif init_rx is not None and "rep" in init_rx.groupindex:
                # an init segment proves the representation exists, even before its first chunk
                mi = init_rx.fullmatch(name)
                if mi:
                    reps.add(str(int(mi.group("rep"))))
        complete = set.intersection(*(done.get(r, set()) for r in reps)) if reps else set()
        last = max(complete) if complete else None
        n = max(s0, last + 1) if last is not None else s0
        stream_word = f"{len(reps)} stream{'s' if len(reps) != 1 else ''}"
        if last is None:
            why = "no complete segment yet"
        elif last + 1 <= s0:
            why = f"no complete segment after the start number {s0} yet"
        else:
            why = f"{_dash_name(template, last, min(reps, key=int))} was the last segment complete in all {stream_word}"
    else:
        rx = _printf_regex(out.value or "")
        if rx is None:
            return Plan(None, None, None, f"segment output name {out.value!r} has no %d: cannot resume, start again")
        present = sorted(int(m.group("num")) for m in (rx.fullmatch(nm) for nm in names) if m)
        last = present[-1] if present else None
        n = max(s0, last) if last is not None else s0
        if last is None:
            why = "no segment yet"
        elif last < s0:
            why = f"no segment from the start number {s0} on yet"
        else:
            why = f"{_printf_name(out.value, last)} is the last segment written and may be incomplete, so it is rewritten"

    seconds = base + (n - s0) * duration
    side_note = "".join(_side_note(g) for g in others)
    if n == s0:
        # Nothing to skip: the original arguments are already right.
        return Plan(argv, n, float(seconds),
                    f"{why}: start {kind} from the beginning at segment {n} (arguments unchanged){side_note}")

    delta = (n - s0) * duration
    new = list(argv)
    for value_index, t0 in seeks:
        new[value_index] = format_seconds(t0 + delta)
    inserts = []   # (position, tokens), applied from the end so positions stay valid
    if start_index is not None:
        new[start_index + 1] = str(n)
    else:
        inserts.append((out.index, [f"-{start_opt}", str(n)]))
    for position in unseeked:
        inserts.append((position, ["-ss", format_seconds(delta)]))
    for position, tokens in sorted(inserts, key=lambda x: x[0], reverse=True):
        new[position:position] = tokens
    if len(inputs) > 1:
        side_note = f"; all {len(inputs)} inputs seeked" + side_note
    return Plan(new, n, float(seconds),
                f"resume {kind} at segment {n} (-ss {format_seconds(seconds)}): {why}{side_note}")


def _side_note(group):
    fmt = group.muxer
    start, _ = _last(group, "segment_start_number")
    what = f"-f {fmt} " if fmt else ""
    if start is not None:
        return f"; side output {what}{group.value!r} left unchanged (its numbering restarts at {start})"
    return f"; side output {what}{group.value!r} left unchanged"


def _dash_name(template, number, rep):
    t = template or DASH_DEFAULT_TEMPLATE
    t = re.sub(r"\$Number(%0?(\d*)d)?\$", lambda m: str(number).zfill(int(m.group(2) or 0)), t)
    return t.replace("$RepresentationID$", str(rep)).replace("$ext$", "*").replace("$$", "$")


def _printf_name(pattern, number):
    return re.sub(r"%0?(\d*)d", lambda m: str(number).zfill(int(m.group(1) or 0)), pattern, count=1)
