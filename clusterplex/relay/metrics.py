"""The relay's Prometheus metrics (callbacks relayed, refusals, plays the shim ran locally)."""

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..common.metrics import CONTENT_TYPE, Histogram, build_info, counter_family, histogram_family  # noqa: F401
from ..core.outcomes import SHIM_EVENTS

RELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0)
RELAY_REFUSALS = (          # clusterplex_relay_refused_total{reason}: reason text -> label
    ("read the metrics", "metrics_peer"),
    ("CONNECT", "method"),
    ("not joined", "not_joined"),
    ("not a known worker", "peer"),
    ("capability", "capability"),
    ("request targets", "target"),
    ("path", "path"),
)




def relay_refusal_label(reason):
    for needle, label in RELAY_REFUSALS:
        if needle in reason:
            return label
    return "other"



class RelayMetrics:
    """The relay's metrics. ``relay`` provides ``secret`` and ``worker_ips``, read at scrape time."""

    def __init__(self, relay):
        self.relay = relay
        self.requests = {}           # status class ("2xx", ..., "error") -> count
        self.refused = {}            # refusal label -> count
        self.latency = Histogram(RELAY_BUCKETS)
        self.local = {(o, why): 0 for o, whys in SHIM_EVENTS.items() for why in whys}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def forwarded(self, status, seconds=None):
        """A request relayed to PMS; ``status``: PMS's HTTP status, or None when PMS was unreachable
        or the stream broke; ``seconds``: until PMS's response headers."""
        key = f"{status // 100}xx" if isinstance(status, int) else "error"
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            self.latency.observe(seconds)

    def refusal(self, reason):
        label = relay_refusal_label(reason)
        self.refused[label] = self.refused.get(label, 0) + 1

    def shim_event(self, data):
        """A datagram from the shim (``b"forced_local detection"``); False if it is not one."""
        try:
            outcome, why = data.decode("ascii").split(" ")
        except (UnicodeDecodeError, ValueError):
            return False
        if why not in SHIM_EVENTS.get(outcome, ()):
            return False
        self.local[(outcome, why)] += 1
        return True

    def exposition(self):
        return generate_latest(self.registry)

    def collect(self):
        yield counter_family("clusterplex_relay_requests", "Callbacks relayed to PMS, by PMS's status class "
                              "(error: PMS unreachable or the stream broke)", self.requests, "code")
        yield counter_family("clusterplex_relay_refused", "Requests the relay refused, by reason",
                              self.refused, "reason")
        fam = CounterMetricFamily("clusterplex_jobs", "Plays the shim on this host ran with Plex's own "
                                  "transcoder without the orchestrator knowing", labels=["outcome", "why"])
        for (outcome, why), n in sorted(self.local.items()):
            fam.add_metric([outcome, why], n)
        yield fam
        yield histogram_family("clusterplex_relay_latency_seconds",
                                "Time from a callback's arrival to PMS's response headers", {(): self.latency})
        yield GaugeMetricFamily("clusterplex_relay_joined", "1 when the relay has the cluster secret",
                                value=1 if self.relay.secret is not None else 0)
        yield GaugeMetricFamily("clusterplex_relay_workers_known",
                                "Worker addresses the relay answers (learnt from the orchestrator)",
                                value=len(self.relay.worker_ips))
        yield build_info("relay")


