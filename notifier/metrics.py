"""Prometheus metrics, one registry per app (so several apps in one process, as in
tests, do not share counters). Served at ``/metrics`` in the text exposition format.

With ``--workers N`` each worker process has its own registry and a scrape sees the
worker that answered it; run one worker per container when exact totals matter.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    """Every metric notifier exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "notifier_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "notifier_http_request_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.render_seconds = Histogram(
            "notifier_render_seconds",
            "Time to render and compose one message",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.accepted = Counter(
            "notifier_messages_accepted",
            "Messages stored in the outbox (202 answers)",
            registry=r,
        )
        self.deliveries = Counter(
            "notifier_deliveries",
            "Delivery attempts by subscriber and outcome (delivered, failed, retried)",
            ["subscriber", "outcome"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "notifier_delivery_seconds",
            "Time one subscriber took for one message (subscriber=smtp: SMTP latency)",
            ["subscriber"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "notifier_outbox_backlog", "Deliveries queued or being sent", registry=r
        )
        self.oldest_age = Gauge(
            "notifier_outbox_oldest_age_seconds",
            "Age of the oldest message with a delivery still queued or being sent",
            registry=r,
        )
        # Labelled by the relay's address so that it is absent until the first check or
        # connection says something: a 0 before anyone looked would be a false alarm.
        self.relay_up = Gauge(
            "notifier_relay_up",
            "1 when the SMTP relay last accepted a connection and greeted (readiness check"
            " or delivery), 0 when it did not",
            ["relay"],
            registry=r,
        )

    def relay_state(self, relay: str, up: bool) -> None:
        """Record whether the relay at ``relay`` (``host:port``) just answered."""
        self.relay_up.labels(relay=relay).set(1 if up else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
