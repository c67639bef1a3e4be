"""Prometheus metrics of one PlayGate process, on a registry of its own (no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Decision latency runs from well under a millisecond to seconds under overload.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The counters, gauges and histograms PlayGate exports at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._children: dict[tuple[Counter | Histogram, tuple[str, ...]], Any] = {}
        self.decisions = Counter(
            "playgate_decisions",
            "Play requests decided, by outcome and reason.",
            ["status", "reason"],
            registry=r,
        )
        self.shadow_denials = Counter(
            "playgate_shadow_denials",
            "Requests the shadow policy would have denied, by the rule that would have denied them.",
            ["rule"],
            registry=r,
        )
        self.decision_latency = Histogram(
            "playgate_decision_latency_seconds",
            "Time from a request accepted by the API to its decision published.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "playgate_worker_batch_size",
            "Requests decided per ledger transaction.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.requests_accepted = Counter("playgate_requests_accepted", "Play requests queued.", registry=r)
        self.queue_depth = Gauge("playgate_queue_depth", "Play requests queued or in hand.", registry=r)
        self.queue_lag = Gauge(
            "playgate_queue_lag_seconds",
            "How long the oldest request of the last batch waited in the queue before a worker took it.",
            registry=r,
        )
        self.queue_pending = Gauge(
            "playgate_queue_pending",
            "Requests delivered to a worker and not yet acknowledged (where the queue tracks them).",
            registry=r,
        )
        self.dead_lettered = Counter(
            "playgate_requests_dead_lettered",
            "Requests given up on after max_attempts deliveries: answered denied/error and set aside.",
            registry=r,
        )
        self.queue_dead_letters = Gauge(
            "playgate_queue_dead_letters",
            "Entries in the dead-letter stream (where the queue has one).",
            registry=r,
        )
        self.ready = Gauge("playgate_ready", "1 when the last readiness check passed, else 0.", registry=r)
        self.logins_throttled = Counter(
            "playgate_logins_throttled",
            "Login attempts refused with 429, by the limit that refused them.",
            ["limit"],
            registry=r,
        )
        self.active_streams = Gauge("playgate_active_streams", "Streams whose lease has not run out.", registry=r)
        self.streams_ended = Counter(
            "playgate_streams_ended",
            "Streams ended without their device asking, by reason.",
            ["reason"],
            registry=r,
        )
        self.sockets = Gauge("playgate_sockets_connected", "Socket.IO connections of this process.", registry=r)
        self.ledger_errors = Counter(
            "playgate_ledger_errors", "Worker batches that failed on the ledger and were retried.", registry=r
        )
        self.outage_mode = Gauge(
            "playgate_outage_mode",
            "The ledger store's state as this process sees it: 0 normal, 1 outage within the grace (playing streams "
            "honoured, new plays by PLAYGATE_OUTAGE_POLICY), 2 outage past the grace.",
            registry=r,
        )
        self.outage_honoured = Counter(
            "playgate_outage_honoured",
            "Heartbeats and media requests of playing streams answered from the lease cache while the store was down.",
            registry=r,
        )
        self.outage_decisions = Counter(
            "playgate_outage_decisions",
            "New plays decided by the outage policy `allow` while the store was down, by outcome.",
            ["status"],
            registry=r,
        )
        self.outage_reconciled = Counter(
            "playgate_outage_reconciled",
            "What was written back to the store after an outage: streams restored, decisions kept, stops applied.",
            ["kind"],
            registry=r,
        )
        self.http_requests = Counter(
            "playgate_http_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "playgate_http_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def labelled(self, metric: Counter | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, found once per metric and label values (which must be few: route templates,
        statuses, reasons). Each play counts two HTTP answers and a decision, and labels() on each cost about as
        much as the counting itself."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
