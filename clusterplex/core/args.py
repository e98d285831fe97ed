"""Plex transcoder argument lists: parse, inspect, rewrite (pure functions).

Plex's transcoder takes ffmpeg-style arguments. Global options may appear
before or after the outputs depending on the PMS version, so nothing here
depends on position: the list is tokenised once into options (with or
without a value), inputs (``-i``) and outputs (bare arguments).

Imported by the shim: standard library only.
"""

import re

# Options that take no value (ffmpeg OPT_BOOL/flags, plus Plex's own).
# Anything else that starts with "-" consumes the next argument as its value,
# which is how ffmpeg treats AVOptions such as "-sei:0 -a53_cc".
FLAGS = frozenset("""
    y n nostats stats noaccurate_seek accurate_seek start_at_zero copyts xioerror xerror
    re shortest hide_banner vn an sn dn ignore_unknown copy_unknown benchmark benchmark_all
    dump hex stdin nostdin debug_ts noautorotate autorotate autoscale noautoscale
    fix_sub_duration deinterlace psnr vstats qphist stats_enc_pre stats_enc_post
    """.split())

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


def inputs(argv):
    """Values of every ``-i`` (files, URLs)."""
    return [v for kind, _, v, _ in tokenize(argv) if kind == "input" and v is not None]


def outputs(argv):
    """Bare output arguments (``dash``, ``media-%05d.ts``, ``/path/file.mp4``)."""
    return [v for kind, _, v, _ in tokenize(argv) if kind == "output"]


def option_values(argv, name):
    return [v for kind, n, v, _ in tokenize(argv) if kind == "option" and n == name]


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
    """Replace every PMS base URL in ``argv`` with ``target`` (the relay + job prefix).

    A base URL matches only when followed by ``/``, ``?``, ``#`` or the end,
    so ``:32400`` never matches ``:324001``.
    """
    target = target.rstrip("/")
    pattern = re.compile("(?:" + "|".join(re.escape(v) for v in plex_url_variants(plex_url)) + r")(?=[/?#]|$)")
    return [pattern.sub(lambda _m: target, a) if "://" in a else a for a in argv]


def session_of(argv):
    """``(session_key, job_uuid)`` from the progress/manifest URLs, or ``("", "")``."""
    for a in argv:
        if "/video/:/transcode/session/" in a:
            m = SESSION_RE.search(a)
            if m:
                return m.group(1), m.group(2) or ""
    return "", ""
