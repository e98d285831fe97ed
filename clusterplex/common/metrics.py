"""Prometheus plumbing shared by the orchestrator's and the relay's metrics.

Each daemon object owns its own ``CollectorRegistry`` (never the library's
global one), so several daemons or tests in one process do not clash.
Counters and histograms are plain numbers updated by the daemons' event
handlers; gauges are read from the daemon's state when Prometheus scrapes.
The daemons' own metrics are in ``orchestrator.metrics`` and
``relay.metrics``; docs/operators.md lists them all.
"""

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from .. import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Bucket counts and a sum (pure); ``buckets()`` in the exposition's cumulative form."""

    def __init__(self, bounds):
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value):
        value = max(0.0, float(value))
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                break
        else:
            i = len(self.bounds)
        self.counts[i] += 1
        self.sum += value
        self.count += 1

    def buckets(self):
        out, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            out.append((floatToGoString(bound), total))
        return out


def histogram_family(name, doc, hists, labelnames=()):
    fam = HistogramMetricFamily(name, doc, labels=list(labelnames))
    for labels, h in sorted(hists.items()):
        fam.add_metric(list(labels), h.buckets(), h.sum)
    return fam


def counter_family(name, doc, counts, labelname):
    fam = CounterMetricFamily(name, doc, labels=[labelname])
    for label, n in sorted(counts.items()):
        fam.add_metric([label], n)
    return fam


def build_info(daemon):
    fam = GaugeMetricFamily("clusterplex_build_info", "Version of this daemon (always 1)", labels=["daemon", "version"])
    fam.add_metric([daemon, __version__], 1)
    return fam


def number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
