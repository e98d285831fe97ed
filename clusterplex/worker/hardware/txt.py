"""The short strings a worker puts in its mDNS TXT record: :func:`summary` of detect()'s dict,
the compact ``hw`` capability value and its parser (the value comes off the network). Pure.
"""

import logging
import re

from .rules import APIS, CODECS, DIRECTIONS

logger = logging.getLogger("clusterplex.worker.hardware")

TXT_VALUE_MAX = 200       # bytes per value (DNS-SD allows 255 per key=value string)
TXT_GPU_MAX = 100         # keeps the whole record < 400 bytes in the worst case
_DIR_LETTER = {"decode": "d", "encode": "e"}
_LETTER_DIR = {v: k for k, v in _DIR_LETTER.items()}
_TOKEN_RE = re.compile(r"[a-z0-9_]{1,16}")


def _order(seq, known):
    return sorted(seq, key=lambda x: (known.index(x) if x in known else len(known), x))


def encode_hw_summary(capabilities, limit=TXT_VALUE_MAX):
    """Capability strings -> the compact ``hw`` TXT value.

    Format: groups ``<api>:<codec>.<dirs>,<codec>.<dirs>`` joined by ``;``, where dirs is
    ``d`` (decode), ``e`` (encode) or ``de``; apis in the order vaapi, qsv, nvdec, nvenc,
    codecs h264, hevc, vp9, av1 (others after, alphabetically). Example::

        vaapi:h264.de,hevc.de,av1.d;qsv:h264.de,hevc.de,av1.d;nvdec:h264.d,hevc.d;nvenc:h264.e

    Everything present fits in ~140 bytes; past ``limit`` whole codec entries are dropped
    from the end (with a warning). "" = no hardware codecs.
    """
    table = {}
    for cap in capabilities or ():
        parts = cap.split(":")
        if len(parts) != 3 or parts[2] not in _DIR_LETTER:
            continue
        codec, api, direction = parts
        table.setdefault(api, {}).setdefault(codec, set()).add(direction)
    entries = []
    for api in _order(table, APIS):
        items = [f"{codec}.{''.join(_DIR_LETTER[d] for d in DIRECTIONS if d in table[api][codec])}"
                 for codec in _order(table[api], CODECS)]
        entries.append((api, items))

    def render(groups):
        return ";".join(f"{api}:{','.join(items)}" for api, items in groups if items)

    text = render(entries)
    if len(text.encode()) > limit:
        logger.warning("hw summary over %d bytes (%r): dropping entries from the end", limit, text)
    while len(text.encode()) > limit:
        api, items = entries[-1]
        if len(items) > 1:
            entries[-1] = (api, items[:-1])
        else:
            entries.pop()
        text = render(entries)
    return text


def parse_hw_summary(text):
    """The inverse of encode_hw_summary: ``"vaapi:h264.de"`` -> ``["h264:vaapi:decode",
    "h264:vaapi:encode"]`` (sorted). Raises ValueError on anything malformed (the value comes
    off the network)."""
    caps = set()
    if not text:
        return []
    for group in text.split(";"):
        api, sep, items = group.partition(":")
        if not sep or not _TOKEN_RE.fullmatch(api) or not items:
            raise ValueError(f"bad hw summary group {group!r}")
        for item in items.split(","):
            codec, sep, dirs = item.partition(".")
            if not sep or not _TOKEN_RE.fullmatch(codec) or dirs not in ("d", "e", "de"):
                raise ValueError(f"bad hw summary entry {item!r} in {group!r}")
            caps.update(f"{codec}:{api}:{_LETTER_DIR[letter]}" for letter in dirs)
    return sorted(caps)


def _gpu_summary(gpus, limit=TXT_GPU_MAX):
    counts = {}
    for g in gpus or ():
        tag = f"{g.get('vendor') or 'other'}:{g.get('driver') or 'unknown'}"
        counts[tag] = counts.get(tag, 0) + 1
    out = ""
    for tag, n in counts.items():
        item = tag if n == 1 else f"{tag}*{n}"
        candidate = f"{out},{item}" if out else item
        if len(candidate.encode()) > limit:
            break
        out = candidate
    return out


def _mem_gib(memory):
    gib = (memory or 0) / (1 << 30)
    return str(round(gib)) if gib >= 10 else f"{gib:.1f}"


def summary(hw):
    """detect()'s dict -> short strings for an mDNS TXT record::

        {"cpus": "16", "arch": "x86_64", "bench": "15230", "mem": "62",
         "gpu": "intel:i915,nvidia:nvidia", "hw": "vaapi:h264.de,...;nvenc:h264.e"}

    cpus: logical CPUs; bench: machine score (cpu_benchmark); mem: GiB (one decimal under
    10); gpu: ``vendor:driver`` per GPU, ``*N`` for N identical ones, at most 100 bytes; hw:
    encode_hw_summary(). Every value <= 200 bytes, the whole record < 400 bytes
    (txt_record_size).
    """
    cpu = hw.get("cpu", {})
    out = {
        "cpus": str(int(cpu.get("threads") or 0)),
        "arch": str(cpu.get("arch") or "unknown")[:32],
        "bench": str(int(cpu.get("benchmark") or 0)),
        "mem": _mem_gib(hw.get("memory")),
        "gpu": _gpu_summary(hw.get("gpus")),
        "hw": encode_hw_summary(hw.get("hw_codecs")),
    }
    return out


def txt_record_size(props):
    """Bytes the dict takes as DNS-SD TXT strings (one length byte + ``key=value`` each)."""
    return sum(1 + len(f"{k}={v}".encode()) for k, v in props.items())
