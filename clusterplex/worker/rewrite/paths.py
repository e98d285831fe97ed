"""``path_map``: the media and transcode shares as this worker mounts them (docs/rewrite.md, Settings).

Rewrites the local paths in a job's argv (whole arguments and paths inside
filter graphs and option strings), its cwd and the path-valued env entries.
"""

import re

from ...core import args as plexargs
from .settings import check_settings

# Options whose value is a filter graph: a path inside one is replaced only where no escaping is needed.
GRAPH_OPTIONS = frozenset(("filter_complex", "lavfi", "vf", "af", "filter"))
GRAPH_SPECIAL = frozenset("\\':,;[]")
URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"|;,\]]*")


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
    return PathMapper(pm).whole_path(path, "") if pm and path else path


class PathMapper:
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


def map_job(parsed, cwd, env, path_map):
    """``(argv, cwd, env, notes)``: the job with ``path_map`` applied (``env`` a new dict)."""
    mapper = PathMapper(path_map)
    graph_values = {t.index + 1 for t in parsed.tokens if t.kind == "option" and t.name in GRAPH_OPTIONS
                    and t.value is not None}
    argv = [mapper.text(a, f"argv[{i}]", graph=i in graph_values) for i, a in enumerate(parsed.argv)]
    cwd = mapper.whole_path(cwd, "cwd")
    env = dict(env)
    if env.get("EAE_ROOT"):
        env["EAE_ROOT"] = mapper.whole_path(env["EAE_ROOT"], "EAE_ROOT")
    libs = env.get("FFMPEG_EXTERNAL_LIBS")
    if libs:
        plain = unescape_spaces(libs)
        mapped = mapper.whole_path(plain, "FFMPEG_EXTERNAL_LIBS")
        if mapped != plain:
            env["FFMPEG_EXTERNAL_LIBS"] = escape_spaces(mapped)
    return argv, cwd, env, mapper.notes()
