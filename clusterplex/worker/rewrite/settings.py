"""The worker's rewrite settings: validated once (at start and on reload), then a frozen ``Settings``.

What each key means is in docs/rewrite.md.
"""

from dataclasses import dataclass, field

HWACCEL_MODES = ("none", "auto", "vaapi", "qsv", "nvenc")
AUTO_ORDER = ("nvenc", "vaapi", "qsv")
APIS = ("vaapi", "nvenc", "qsv")

# Software encoders a worker may replace, and the codec they produce.
SOFTWARE_ENCODERS = {"libx264": "h264", "libx265": "hevc"}


class SettingsError(ValueError):
    """A bad rewrite setting; the message starts with the key's path."""


@dataclass(frozen=True)
class Settings:
    path_map: tuple = ()          # ((from, to), ...), normalised
    hwaccel: str = "none"
    encoder_swaps: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    codecs_dir: str = None
    render_node: str = None


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        value = obj.get(key, default)
    else:
        value = getattr(obj, key, default)
    return default if value is None and default is not None else value


def _norm_abs(path, where):
    if not isinstance(path, str) or not path.startswith("/"):
        raise SettingsError(f"{where}: must be an absolute path; got {path!r}")
    stripped = path.rstrip("/")
    if not stripped:
        raise SettingsError(f"{where}: must not be /")
    return stripped


def check_settings(settings):
    """Validate and normalise ``settings``; a :class:`Settings`, or :class:`SettingsError`."""
    if isinstance(settings, Settings):
        return settings
    pm = []
    for i, entry in enumerate(_get(settings, "path_map", []) or []):
        if isinstance(entry, (list, tuple)) and len(entry) == 2:
            src, dst = entry
        else:
            src, dst = _get(entry, "from"), _get(entry, "to")
        pm.append((_norm_abs(src, f"path_map[{i}].from"), _norm_abs(dst, f"path_map[{i}].to")))
    froms = [s for s, _ in pm]
    for s in froms:
        if froms.count(s) > 1:
            raise SettingsError(f"path_map: {s} is mapped twice")

    mode = _get(settings, "hwaccel", "none") or "none"
    if mode not in HWACCEL_MODES:
        raise SettingsError(f"hwaccel: must be one of {', '.join(HWACCEL_MODES)}; got {mode!r}")

    swaps = {}
    raw = _get(settings, "encoder_swaps", {}) or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"encoder_swaps: must be a mapping; got {type(raw).__name__}")
    for src, dst in raw.items():
        if src not in SOFTWARE_ENCODERS:
            raise SettingsError(f"encoder_swaps.{src}: only {', '.join(SOFTWARE_ENCODERS)} can be swapped")
        codec = SOFTWARE_ENCODERS[src]
        allowed = [src] + [f"{codec}_{api}" for api in APIS]
        if dst not in allowed:
            raise SettingsError(f"encoder_swaps.{src}: must be one of {', '.join(allowed)}; got {dst!r}")
        swaps[src] = dst

    env = _get(settings, "env", {}) or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                            for k, v in env.items()):
        raise SettingsError("env: must be a mapping of names to strings (or null to remove)")

    codecs_dir = _get(settings, "codecs_dir")
    if codecs_dir is not None:
        if not isinstance(codecs_dir, str) or not codecs_dir.startswith("/"):
            raise SettingsError(f"codecs_dir: must be an absolute path; got {codecs_dir!r}")
    render_node = _get(settings, "render_node")
    if render_node is not None and (not isinstance(render_node, str) or not render_node.startswith("/dev/")):
        raise SettingsError(f"render_node: must be a device path such as /dev/dri/renderD128; got {render_node!r}")
    return Settings(tuple(pm), mode, swaps, dict(env), codecs_dir, render_node)
