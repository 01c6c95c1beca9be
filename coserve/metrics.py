"""Prometheus metrics of one coserve process, on a registry of its own (no global state).

Names follow Prometheus conventions: ``_total`` counters, ``_seconds`` histograms, base units.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Metrics", "retention_text"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Every metric coserve exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("coserve_requests", "HTTP chat requests by outcome", ["status"], registry=r)
        self.decisions = Counter("coserve_decisions", "Routing decisions", ["expert", "category", "reason"], registry=r)
        self.fallbacks = Counter(
            "coserve_fallbacks", "Requests moved to an alternative expert", ["from_expert", "to_expert"], registry=r
        )
        self.route_seconds = Histogram(
            "coserve_route_seconds",
            "Time to route one request (embedding included)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.latency_seconds = Histogram(
            "coserve_request_seconds", "End-to-end request latency", ["expert"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.ttft_seconds = Histogram(
            "coserve_time_to_first_token_seconds",
            "Time to first streamed token",
            ["expert"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("coserve_tokens", "Tokens processed", ["expert", "kind"], registry=r)
        self.pool_loads = Counter("coserve_expert_loads", "Expert loads", ["expert"], registry=r)
        self.pool_load_failures = Counter("coserve_expert_load_failures", "Failed expert loads", ["expert"], registry=r)
        self.pool_evictions = Counter("coserve_expert_evictions", "Expert evictions", ["expert"], registry=r)
        self.pool_hits = Counter(
            "coserve_expert_hits", "Requests that found their expert loaded", ["expert"], registry=r
        )
        self.pool_misses = Counter(
            "coserve_expert_misses", "Requests that had to load their expert", ["expert"], registry=r
        )
        self.pool_load_seconds = Histogram(
            "coserve_expert_load_seconds", "Time to load an expert", ["expert"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.pool_prefetches = Counter(
            "coserve_expert_prefetches", "Experts brought DISK -> RAM ahead of need", ["expert"], registry=r
        )
        self.pool_preloads = Counter(
            "coserve_expert_preloads",
            "Experts made ACTIVE ahead of need, while another expert ran",
            ["expert"],
            registry=r,
        )
        self.pool_resident = Gauge(
            "coserve_expert_tier", "1 for the tier the expert is in (disk, ram, active)", ["expert", "tier"], registry=r
        )
        self.pool_bytes = Gauge(
            "coserve_pool_bytes", "Bytes per tier: weights in RAM, loaded footprints in ACTIVE", ["tier"], registry=r
        )
        self.bytes_moved = Gauge("coserve_bytes_moved", "Bytes moved between tiers since start", registry=r)
        self.switch_seconds = Histogram(
            "coserve_expert_switch_seconds",
            "Time to make an expert ACTIVE, by the tier it came from",
            ["from_tier"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("coserve_queue_depth", "Requests waiting per expert", ["expert"], registry=r)
        # Learning from traffic (router.online): the budget held, what the sliding window spent, the cost weight.
        self.budget_target = Gauge("coserve_budget_target", "Target average cost per request", ["axis"], registry=r)
        self.budget_realised = Gauge(
            "coserve_budget_realised", "Average cost per request over the sliding window", ["axis"], registry=r
        )
        self.cost_weight = Gauge("coserve_cost_weight", "The online router's cost weight (dual variable)", registry=r)
        self.map_version = Gauge("coserve_map_version", "Version of the online router's map in force", registry=r)

    def publish_pool(self, tiers: Mapping[str, str], active_bytes: int, ram_bytes: int, bytes_moved: int) -> None:
        """The expert pool's state: each expert's tier (of disk, ram, active) and the bytes per tier."""
        for expert, tier in tiers.items():
            for each in ("disk", "ram", "active"):
                self.pool_resident.labels(expert, each).set(1 if tier == each else 0)
        self.pool_bytes.labels("active").set(active_bytes)
        self.pool_bytes.labels("ram").set(ram_bytes)
        self.bytes_moved.set(bytes_moved)

    def text(self) -> str:
        """Every metric in Prometheus's text format."""
        return generate_latest(self.registry).decode()


class _Retention:
    """A collector of two numbers the decision log's writer keeps (read once per scrape)."""

    def __init__(self, pruned: int, kept: int) -> None:
        self.pruned, self.kept = pruned, kept

    def collect(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        return [
            CounterMetricFamily(
                "coserve_decision_log_pruned", "Decision-log rows deleted by retention since start", value=self.pruned
            ),
            GaugeMetricFamily("coserve_decision_log_rows", "Decision-log rows kept in the file", value=self.kept),
        ]


def retention_text(pruned: int, kept: int) -> str:
    """The decision log's retention figures in Prometheus's text format (appended to ``/metrics``)."""
    registry = CollectorRegistry()
    registry.register(_Retention(pruned, kept))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
