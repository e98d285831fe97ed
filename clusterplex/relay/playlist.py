"""Keep every URI an HLS playlist names under the job's relay capability prefix (pure).

PMS serves Live TV to the transcoder as HLS (``/livetv/sessions/<id>/<session>/index.m3u8``).
A relative segment URI resolves under the relay's ``/_cp/<job id>/<mac>/...`` prefix by itself;
a root-relative one (``/livetv/...``) or an absolute one to PMS's own address would drop it and be
refused. ``rewrite`` prefixes those; URIs anywhere else are left alone (the relay refuses them if
they are asked for through it).
"""

import re
from urllib.parse import urlsplit

MAX_PLAYLIST = 1 << 20      # a playlist is small; anything bigger is passed through unchanged
PLAYLIST_TYPES = frozenset(("application/vnd.apple.mpegurl", "application/x-mpegurl", "audio/mpegurl",
                            "audio/x-mpegurl"))
_URI_ATTR = re.compile(r'(URI=")([^"]*)(")')


def is_playlist(content_type, path):
    """Whether a response is an HLS playlist, by its Content-Type or a ``.m3u8`` path."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    return ctype in PLAYLIST_TYPES or path.lower().endswith(".m3u8")


def _same_origin(a, b):
    def origin(u):
        port = u.port or {"http": 80, "https": 443}.get(u.scheme)
        return u.scheme.lower(), (u.hostname or "").lower(), port
    try:
        return origin(a) == origin(b)
    except ValueError:      # a bad port: not PMS
        return False


def rewrite_uri(uri, prefix, plex_url):
    """One URI: root-relative and PMS-absolute ones get ``prefix``; the rest stay as they are."""
    if uri.startswith("//"):            # scheme-relative: another host
        return uri
    if uri.startswith("/"):
        return uri if uri.startswith(prefix + "/") else prefix + uri
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):
        try:
            u = urlsplit(uri)
        except ValueError:
            return uri
        if _same_origin(u, urlsplit(plex_url)):
            rest = (u.path or "/") + ("?" + u.query if u.query else "")
            return prefix + rest
        return uri
    return uri                          # relative: resolves under the prefix already


def rewrite(text, prefix, plex_url):
    """A whole playlist (str): URI lines and ``URI="..."`` attributes of tags (EXT-X-MAP, -KEY,
    -MEDIA, -I-FRAME-STREAM-INF, ...). Line endings are kept."""
    out = []
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        stripped = body.strip()
        if stripped.startswith("#"):
            if "URI=" in body:
                body = _URI_ATTR.sub(lambda m: m.group(1) + rewrite_uri(m.group(2), prefix, plex_url) + m.group(3),
                                     body)
        elif stripped:
            lead = body[:len(body) - len(body.lstrip())]
            body = lead + rewrite_uri(stripped, prefix, plex_url)
        out.append(body + end)
    return "".join(out)


def rewrite_body(data, prefix, plex_url):
    """Bytes in, bytes out; None if the body is not UTF-8 text (then it goes through unchanged)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return rewrite(text, prefix, plex_url).encode("utf-8")
