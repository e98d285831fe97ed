"""Worker-side rewrites of a Plex transcoder job (pure functions): paths, hardware, environment.

:func:`rewrite` maps the job's paths to this machine (``path_map``), swaps
Plex's software encoders for this worker's hardware ones with hardware
decode (``hwaccel``, ``encoder_swaps``) and sets its codecs, architecture
and environment overrides. Its settings and every rule are specified in
docs/rewrite.md. No I/O, no logging, standard library only.
"""

from dataclasses import dataclass

from ...core import args as plexargs
from .decode import CODEC_ALIASES, DECODE_CAPS, DECODE_FLAGS, VIDEO_CODECS, repin_devices
from .encoders import (DROP_ALWAYS, HW_DEVICE_OPTIONS, HW_ENCODER_SUFFIXES, LEVEL_FACTOR, NVENC_NATIVE_PRESETS,
                       NVENC_PRESETS, PROFILES, QSV_PRESETS, UPLOAD_FILTERS, Edits, Swaps)
from .graph import TRAILING_LABELS, amend_graph
from .paths import GRAPH_OPTIONS, GRAPH_SPECIAL, URL_IN_TEXT, escape_spaces, map_job, map_path, unescape_spaces
from .settings import (APIS, AUTO_ORDER, HWACCEL_MODES, SOFTWARE_ENCODERS, Settings, SettingsError,
                       check_settings)

__all__ = [
    "rewrite", "Result", "Settings", "SettingsError", "check_settings", "map_path", "escape_spaces",
    "unescape_spaces", "amend_graph", "HWACCEL_MODES", "AUTO_ORDER", "APIS", "SOFTWARE_ENCODERS",
    "HW_ENCODER_SUFFIXES", "HW_DEVICE_OPTIONS", "DECODE_CAPS", "DECODE_FLAGS", "UPLOAD_FILTERS", "NVENC_PRESETS",
    "NVENC_NATIVE_PRESETS", "QSV_PRESETS", "PROFILES", "LEVEL_FACTOR", "DROP_ALWAYS", "VIDEO_CODECS",
    "CODEC_ALIASES", "GRAPH_OPTIONS", "GRAPH_SPECIAL", "URL_IN_TEXT", "TRAILING_LABELS",
]


@dataclass(frozen=True)
class Result:
    argv: list
    cwd: str
    env: dict
    notes: list
    api: str = None               # "vaapi" | "nvenc" | "qsv" when a stream was swapped, else None
    parsed: plexargs.Parsed = None   # ``argv`` parsed


def _current(parsed, argv):
    """``parsed`` while it is still ``argv``'s, else ``argv`` parsed again."""
    return parsed if parsed is not None and parsed.argv == tuple(argv) else plexargs.parse(argv)


def rewrite(job, settings, hw, parsed=None):
    """Apply the worker's rewrites to ``job``; a :class:`Result` (inputs untouched).

    ``job``: ``{"argv": [...], "cwd": str, "env": {...}}``. ``settings``: see
    docs/rewrite.md (:class:`SettingsError` when invalid). ``hw``: the
    worker's detected hardware (``cpu.arch``, ``gpus[].vendor`` /
    ``render_node``, ``hw_codecs`` as ``"<codec>:<api>:<encode|decode>"``).
    ``parsed``: ``job["argv"]`` as an ``args.Parsed``, when the caller has it.
    """
    cfg = check_settings(settings)
    hw = hw or {}
    argv = list(job.get("argv") or [])
    cwd = job.get("cwd") or ""
    env = dict(job.get("env") or {})
    notes = []

    # 1. paths
    if cfg.path_map:
        parsed = _current(parsed, argv)
        argv, cwd, env, mapped = map_job(parsed, cwd, env, cfg.path_map)
        notes += mapped

    # 2. Plex's own VAAPI device (a node of the Plex host): this worker's, whatever hwaccel says
    parsed = _current(parsed, argv)
    argv, repinned = repin_devices(parsed, cfg, hw)
    notes += repinned

    # 3. codecs and hardware
    api = None
    if cfg.hwaccel != "none":
        parsed = _current(parsed, argv)
        edits = Edits(argv)
        swaps = Swaps(parsed, cfg, hw, edits)
        swaps.run()
        argv = edits.result()
        notes += swaps.notes
        api = swaps.api

    # 4. environment
    def setenv(name, value, show=True):
        if env.get(name) != value:
            env[name] = value
            notes.append(f"env {name}={value}" if show else f"env {name} set (worker override)")

    arch = ((hw.get("cpu") or {}).get("arch") or "").strip()
    if arch:
        setenv("PLEX_ARCH", arch)
        setenv("PLEX_MEDIA_SERVER_INFO_MODEL", arch)
    if cfg.codecs_dir:
        setenv("FFMPEG_EXTERNAL_LIBS", escape_spaces(cfg.codecs_dir.rstrip("/") + "/"))
    for name, value in cfg.env.items():
        if value is None:
            if name in env:
                del env[name]
                notes.append(f"env {name} removed (worker override)")
        else:
            setenv(name, value, show=False)
    return Result(argv, cwd, env, notes, api, _current(parsed, argv))
