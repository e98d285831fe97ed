"""Filter graphs: appending the hardware upload to the chain that feeds a swapped stream."""

import re

from ...core.args import split_unquoted

TRAILING_LABELS = re.compile(r"(\s*(?:\[[^\[\]]*\]\s*)+)$")


def amend_graph(graph, label, filters, taken=()):
    """``graph`` with ``filters`` appended to the chain whose output is ``[label]``, or None.

    A chain with that one output gets ``,<filters>`` before the label; a chain
    with several outputs has the label renamed and a new chain
    ``[renamed]<filters>[label]`` appended. ``taken``: labels in use elsewhere.
    """
    pad = f"[{label}]"
    if graph.count(pad) != 1:      # absent, or consumed inside the graph (not an output)
        return None
    chains = split_unquoted(graph, ";")
    for k, chain in enumerate(chains):
        m = TRAILING_LABELS.search(chain)
        if not m or pad not in m.group(1):
            continue
        body, tail = chain[:m.start()], m.group(1)
        if not re.sub(r"^\s*(?:\[[^\[\]]*\]\s*)*", "", body).strip():
            return None          # no filter in this chain
        if re.findall(r"\[([^\[\]]*)\]", tail) == [label]:
            chains[k] = body.rstrip() + "," + filters + tail
            return ";".join(chains)
        new = f"cphw{label}"
        n = 0
        while f"[{new}]" in graph or new in taken:
            n += 1
            new = f"cphw{label}_{n}"
        chains[k] = body + tail.replace(pad, f"[{new}]")
        return ";".join(chains) + f";[{new}]{filters}{pad}"
    return None


def single_stream_map(value):
    """True if a ``-map`` value names one stream (``[label]`` or ``0:v:0``)."""
    return bool(re.fullmatch(r"\[[^\[\]]+\]|\d+:(?:[vasdt]:)?\d+", value or ""))
