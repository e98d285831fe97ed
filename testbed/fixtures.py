"""Helpers around the captured Plex Transcoder argument lists (stdlib only).

The JSON files in tests/data/plex-argv/ are verbatim copies of the
anonymised captures (F1 DASH, F2 HLS matroska + seek + sidecar SRT, F3 DASH
remux + subtitle side output, F4 optimize VAAPI/EAE, F5 audio detection,
F6 legacy http input).  ``instantiate`` turns one into an argv that can run
against a real clip in a test session directory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "plex-argv"
FFMPEG = os.environ.get("PLEXFAKE_FFMPEG", "/usr/bin/ffmpeg")
DEFAULT_PLEX_URL = "http://127.0.0.1:32400"

_SESSION_DIR_RE = re.compile(r"^(?P<head>.*?)/Transcode/Sessions/plex-transcode-[^/]+(?:/(?P<rest>.*))?$")
_URL_KEY_RE = re.compile(r"/transcode/session/(?P<key>[^/?]+)/(?:(?P<uuid>[^/?]+)/)?(?:progress|manifest)\b")
# Absolute placeholder paths of outputs in the captures (F4 library path,
# F5 Detection dir) that cannot exist on a test machine.
_PLACEHOLDER_PREFIXES = ("/media/", "/transcode/")


def fixture_names() -> list[str]:
    return sorted(p.stem for p in FIXTURE_DIR.glob("*.json"))


def fixture_path(name: str) -> Path:
    """``name`` is "F1" (case-insensitive) or a full stem like "F1-dash-libx264"."""
    exact = FIXTURE_DIR / (name if name.endswith(".json") else name + ".json")
    if exact.is_file():
        return exact
    matches = sorted(FIXTURE_DIR.glob(f"{name.upper()}-*.json"))
    if len(matches) != 1:
        raise FileNotFoundError(f"no unique Plex argv fixture named {name!r} in {FIXTURE_DIR}")
    return matches[0]


def load_argv(name: str) -> list[str]:
    with open(fixture_path(name), encoding="utf-8") as f:
        argv = json.load(f)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def session_dir_name(session_key: str, job_uuid: str) -> str:
    """Directory name PMS gives a job under <tmp>/Transcode/Sessions/."""
    return f"plex-transcode-{session_key}-{job_uuid}"


def fixture_ids(argv: list[str]) -> tuple[str | None, str | None]:
    """(session key, job UUID) as they appear in the fixture's URLs."""
    for a in argv:
        m = _URL_KEY_RE.search(a)
        if m:
            return m.group("key"), m.group("uuid")
    return None, None


def instantiate(argv: list[str], *, input_path, session_dir, plex_url: str = DEFAULT_PLEX_URL,
                session_key: str | None = None, job_uuid: str | None = None) -> list[str]:
    """Return a runnable copy of a fixture argv.

    * the first ``-i`` value (the /media/... file, or F6's http URL) becomes
      ``input_path``;
    * any path under ``.../Transcode/Sessions/plex-transcode-<key>-<uuid>/`` (the
      sidecar ``temp-0.srt``) is re-rooted into ``session_dir`` keeping the rest;
    * other absolute placeholder paths (``/media/...``, ``/transcode/...``:
      F4's library output, F5's Detection output) are re-rooted into
      ``session_dir`` keeping the file name;
    * ``http://127.0.0.1:32400`` becomes ``plex_url`` in every element;
    * the fixture's session key / job UUID inside URLs (and F4's
      ``-eae_prefix`` value ``<key>_``) are replaced when given.
    """
    argv = list(argv)
    session_dir = str(session_dir)
    plex_url = plex_url.rstrip("/")
    old_key, old_uuid = fixture_ids(argv)
    out: list[str] = []
    first_input_done = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-i" and i + 1 < len(argv):
            val = argv[i + 1]
            if not first_input_done:
                val = str(input_path)
                first_input_done = True
            else:
                val = _reroot(val, session_dir)
            out += [a, _urls(val, plex_url, old_key, old_uuid, session_key, job_uuid)]
            i += 2
            continue
        if a.startswith("-eae_prefix") and i + 1 < len(argv):
            val = argv[i + 1]
            if session_key is not None and old_key is not None and val == f"{old_key}_":
                val = f"{session_key}_"
            out += [a, val]
            i += 2
            continue
        out.append(_urls(_reroot(a, session_dir), plex_url, old_key, old_uuid, session_key, job_uuid))
        i += 1
    return out


def _reroot(a: str, session_dir: str) -> str:
    m = _SESSION_DIR_RE.match(a)
    if m and not a.startswith("http"):
        rest = m.group("rest")
        return os.path.join(session_dir, rest) if rest else session_dir
    if a.startswith(_PLACEHOLDER_PREFIXES) and len(a) > 1 and not a.endswith("/"):
        return os.path.join(session_dir, os.path.basename(a))
    return a


def _urls(a: str, plex_url: str, old_key, old_uuid, key, uuid) -> str:
    if "://" not in a:
        return a
    a = a.replace(DEFAULT_PLEX_URL, plex_url)
    if (key is None and uuid is None) or old_key is None:
        return a

    def sub(m: re.Match) -> str:
        k = key if key is not None else m.group("key")
        if m.group("uuid") is not None:
            u = uuid if uuid is not None else m.group("uuid")
            return m.group(0).replace(f"/{m.group('key')}/{m.group('uuid')}/", f"/{k}/{u}/", 1)
        return m.group(0).replace(f"/{m.group('key')}/", f"/{k}/", 1)
    return _URL_KEY_RE.sub(sub, a)


# ------------------------------------------------------------ argv edits ----

def option_values(argv: list[str], opt: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == opt]


def set_option(argv: list[str], opt: str, value: str, *, count: int | None = None) -> list[str]:
    """Copy of argv with the value of every (or the first ``count``) ``opt`` replaced."""
    out = list(argv)
    n = 0
    for i in range(len(out) - 1):
        if out[i] == opt and (count is None or n < count):
            out[i + 1] = str(value)
            n += 1
    if n == 0:
        raise KeyError(f"{opt} not in argv")
    return out


def remove_option(argv: list[str], opt: str, *, has_value: bool = True) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == opt:
            i += 2 if has_value else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def insert_before_first_input(argv: list[str], *tokens: str) -> list[str]:
    i = argv.index("-i")
    return argv[:i] + list(tokens) + argv[i:]


# ------------------------------------------------------------------ media ----

def make_clip(path, seconds: float = 6, width: int = 320, height: int = 180) -> Path:
    """Real h264/aac .mkv: testsrc2 yuv420p 24 fps, keyframe every 24 frames,
    440 Hz sine, stereo 48 kHz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=24:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
           "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
           "-g", "24", "-keyint_min", "24", "-sc_threshold", "0",
           "-c:a", "aac", "-ac", "2", "-ar", "48000", "-b:a", "96k",
           "-shortest", "-f", "matroska", str(path)]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return path


def make_srt(path, seconds: float = 6) -> Path:
    """Tiny valid SubRip file, one cue per second-and-a-half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def ts(t: float) -> str:
        ms = int(round(t * 1000))
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
    cues, t, n = [], 0.25, 1
    while t + 1.0 <= seconds:
        cues.append(f"{n}\n{ts(t)} --> {ts(t + 1.0)}\nLine {n}\n")
        t += 1.5
        n += 1
    path.write_text("\n".join(cues) + "\n", encoding="utf-8")
    return path
