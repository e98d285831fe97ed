"""Plex transcoder argument lists: parsed once, inspected, rewritten (pure functions).

Plex's transcoder takes ffmpeg-style arguments. Global options may appear
before or after the outputs depending on the PMS version, so nothing here
depends on position: :func:`parse` tokenises the list once into options
(with or without a value), inputs (``-i``) and outputs (bare arguments), and
groups them as ffmpeg reads them: the options before an input or an output
belong to it, the options after the last one are the tail. The result, a
:class:`Parsed`, is immutable; capabilities, policy, resume and the worker's
rewrite and runner all read it instead of tokenising again.

Imported by the shim on every play: standard library only, cheap to import.
"""

import re
from operator import itemgetter

# Options that take no value (ffmpeg OPT_BOOL/flags, plus Plex's own).
# Anything else that starts with "-" consumes the next argument as its value,
# which is how ffmpeg treats AVOptions such as "-sei:0 -a53_cc".
FLAGS = frozenset("""
    y n nostats stats noaccurate_seek accurate_seek start_at_zero copyts xioerror xerror
    re shortest hide_banner vn an sn dn ignore_unknown copy_unknown benchmark benchmark_all
    dump hex stdin nostdin debug_ts noautorotate autorotate autoscale noautoscale
    fix_sub_duration deinterlace psnr vstats qphist stats_enc_pre stats_enc_post
    """.split())
# Options naming a stream's codec: before an input a decoder hint, before an output an encoder.
CODEC_OPTIONS = frozenset(("codec", "c", "vcodec"))

PLEX_PORT_HOSTS = ("127.0.0.1", "localhost", "[::1]")
SESSION_RE = re.compile(r"/video/:/transcode/session/([^/?#]+)(?:/([0-9a-fA-F-]{8,}))?/")


def tokenize(argv):
    """Yield ``(kind, name, value, index)``; kind is "option", "flag", "input" or "output".

    ``name`` is the option without its leading dash and stream specifier
    (``codec`` for ``-codec:0``); ``index`` is the position of the option
    (or of the bare output argument) in ``argv``.
    """
    i, n = 0, len(argv)
    while i < n:
        arg = argv[i]
        if len(arg) > 1 and arg[0] == "-":
            name = arg[1:].split(":", 1)[0]
            if name in FLAGS:
                yield ("flag", name, None, i)
                i += 1
                continue
            value = argv[i + 1] if i + 1 < n else None
            yield ("input" if name == "i" else "option", name, value, i)
            i += 2
        else:
            yield ("output", None, arg, i)
            i += 1


class Token(tuple):
    """One token of a parsed argv (immutable).

    ``kind``, ``name``, ``value`` and ``index`` as in :func:`tokenize`;
    ``spec`` is the stream specifier after the first ``:`` (``0`` for
    ``-codec:0``; None without one, and for outputs); ``group`` is the
    position of the token's :class:`Group` in ``Parsed.groups``.
    """
    __slots__ = ()
    kind = property(itemgetter(0))
    name = property(itemgetter(1))
    spec = property(itemgetter(2))
    value = property(itemgetter(3))
    index = property(itemgetter(4))
    group = property(itemgetter(5))

    def __new__(cls, kind, name, spec, value, index, group):
        return tuple.__new__(cls, (kind, name, spec, value, index, group))

    def __repr__(self):
        return f"Token{tuple(self)!r}"


class _Frozen:
    __slots__ = ()

    def _init(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    __delattr__ = __setattr__


class Group(_Frozen):
    """The tokens of one input or output, its options first (ffmpeg: options apply to the next file).

    ``kind`` is "input", "output" or "tail" (options after the last input or
    output); ``ordinal`` counts the inputs and the outputs separately from 0;
    ``token`` is the ``-i`` or the output name (None for the tail), ``value``
    and ``index`` its value and position. ``options`` are the option tokens
    (no flags), ``codecs`` those naming a codec (decoder hints before an
    input, encoders before an output), ``seek`` the last ``-ss`` and
    ``muxer`` the value of the last ``-f``.
    """
    __slots__ = ("kind", "ordinal", "tokens", "token", "value", "index", "options", "codecs", "seek", "muxer")

    def __init__(self, kind, ordinal, tokens):
        token = tokens[-1] if kind != "tail" else None
        options = tuple(t for t in tokens if t.kind == "option")
        muxer = _last(options, "f")
        self._init(kind=kind, ordinal=ordinal, tokens=tokens, token=token,
                   value=token.value if token else None, index=token.index if token else None,
                   options=options, codecs=tuple(t for t in options if t.name in CODEC_OPTIONS and t.value),
                   seek=_last(options, "ss"), muxer=muxer.value if muxer else None)

    def last(self, name):
        """The last ``-name`` option of the group (ffmpeg: the last one wins), or None."""
        return _last(self.options, name)

    def __repr__(self):
        return f"<Group {self.kind} {self.ordinal} {self.value!r}: {len(self.options)} options>"


def _last(options, name):
    for t in reversed(options):
        if t.name == name:
            return t
    return None


class Parsed(_Frozen):
    """An argv parsed once (immutable); what capabilities, policy, resume, rewrite and runner read.

    ``argv`` (a tuple), every ``token`` in order, the ``groups`` in order and
    among them the ``inputs`` and ``outputs``; ``input_values`` (every ``-i``
    that has a value) and ``output_values``; ``seeks``: each input's last
    ``-ss`` token; ``decoder_hints``: the codec options before the first input
    (Plex names the decoders there), ``encoders``: those after it, and
    ``hwaccel``: the last ``-hwaccel`` value before it; ``session``: Plex's
    ``(session key, job uuid)`` from the callback URLs, or ``("", "")``.
    """
    __slots__ = ("argv", "tokens", "groups", "inputs", "outputs", "input_values", "output_values", "seeks",
                 "decoder_hints", "encoders", "hwaccel", "session")

    def __init__(self, argv):
        argv = tuple(argv)
        tokens, groups, pending = [], [], []
        counts = {"input": 0, "output": 0}
        for kind, name, value, index in tokenize(argv):
            spec = None
            if kind != "output":
                head = argv[index][1:]
                spec = head.split(":", 1)[1] if ":" in head else None
            tok = Token(kind, name, spec, value, index, len(groups))
            tokens.append(tok)
            pending.append(tok)
            if kind in ("input", "output"):
                groups.append(Group(kind, counts[kind], tuple(pending)))
                counts[kind] += 1
                pending = []
        if pending:
            groups.append(Group("tail", 0, tuple(pending)))
        inputs = tuple(g for g in groups if g.kind == "input")
        first = next((g.index for g in inputs if g.value is not None), None)
        codecs = [t for t in tokens if t.kind == "option" and t.name in CODEC_OPTIONS and t.value is not None]
        hwaccel = [t.value for t in tokens if t.kind == "option" and t.name == "hwaccel" and t.value is not None
                   and first is not None and t.index < first]
        self._init(argv=argv, tokens=tuple(tokens), groups=tuple(groups), inputs=inputs,
                   outputs=tuple(g for g in groups if g.kind == "output"),
                   input_values=tuple(g.value for g in inputs if g.value is not None),
                   output_values=tuple(t.value for t in tokens if t.kind == "output"),
                   seeks=tuple(g.seek for g in inputs if g.seek is not None),
                   decoder_hints=tuple(t for t in codecs if first is not None and t.index < first),
                   encoders=tuple(t for t in codecs if first is not None and t.index > first),
                   hwaccel=hwaccel[-1] if hwaccel else None, session=session_of(argv))

    def options(self, name):
        """Every ``-name`` option token (any stream specifier, any group), in order."""
        return tuple(t for t in self.tokens if t.kind == "option" and t.name == name)

    def option_values(self, name):
        """The values of every ``-name`` (None for one that ends the list without a value)."""
        return [t.value for t in self.tokens if t.kind == "option" and t.name == name]

    def __eq__(self, other):
        return self.argv == other.argv if isinstance(other, Parsed) else NotImplemented

    def __hash__(self):
        return hash(self.argv)

    def __repr__(self):
        return f"<Parsed {len(self.argv)} arguments: {len(self.inputs)} inputs, {len(self.outputs)} outputs>"


def parse(argv):
    """``argv`` (a list, a tuple, or already a :class:`Parsed`) as a :class:`Parsed`."""
    return argv if isinstance(argv, Parsed) else Parsed(argv)


def inputs(argv):
    """Values of every ``-i`` (files, URLs)."""
    return list(parse(argv).input_values)


def outputs(argv):
    """Bare output arguments (``dash``, ``media-%05d.ts``, ``/path/file.mp4``)."""
    return list(parse(argv).output_values)


def option_values(argv, name):
    return parse(argv).option_values(name)


def split_unquoted(text, seps):
    """``text`` split at any character of ``seps`` outside ``'`` quotes and ``\\`` escapes (both kept):
    how ffmpeg reads a filter graph's chains (``;``) and filters (``,``)."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if ch == "'":
            quoted = not quoted
        if ch in seps and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def is_url(value):
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value) is not None or value.startswith(("pipe:", "tcp:", "udp:"))


def local_paths(values, cwd):
    """Filesystem paths among ``values`` (URLs dropped), made absolute against ``cwd``."""
    import posixpath
    out = []
    for v in values:
        if not v or is_url(v) or v == "-":
            continue
        if v.startswith("file:"):
            v = v[5:]
        out.append(v if v.startswith("/") else posixpath.normpath(posixpath.join(cwd, v)))
    return out


def plex_url_variants(plex_url):
    """Every spelling of PMS's own address that may appear in argv."""
    m = re.match(r"(https?)://([^/]+)", plex_url)
    variants = {plex_url.rstrip("/")}
    if m:
        host, _, port = m.group(2).rpartition(":")
        if host in PLEX_PORT_HOSTS and port:
            variants.update(f"{m.group(1)}://{h}:{port}" for h in PLEX_PORT_HOSTS)
    variants.update(f"http://{h}:32400" for h in PLEX_PORT_HOSTS)
    return sorted(variants, key=len, reverse=True)


def rewrite_urls(argv, plex_url, target):
    """Replace every PMS base URL in ``argv`` with ``target`` (the relay + job prefix); a new list.

    A base URL matches only when followed by ``/``, ``?``, ``#`` or the end,
    so ``:32400`` never matches ``:324001``. URLs are whole arguments or parts
    of one, so this needs no tokens: ``argv`` may be a list or a :class:`Parsed`.
    """
    target = target.rstrip("/")
    pattern = re.compile("(?:" + "|".join(re.escape(v) for v in plex_url_variants(plex_url)) + r")(?=[/?#]|$)")
    return [pattern.sub(lambda _m: target, a) if "://" in a else a for a in getattr(argv, "argv", argv)]


def session_of(argv):
    """``(session_key, job_uuid)`` from the progress/manifest URLs, or ``("", "")``."""
    if isinstance(argv, Parsed):
        return argv.session
    for a in argv:
        if "/video/:/transcode/session/" in a:
            m = SESSION_RE.search(a)
            if m:
                return m.group(1), m.group(2) or ""
    return "", ""
