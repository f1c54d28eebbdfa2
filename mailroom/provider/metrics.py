"""The provider side's Prometheus metrics (names at a glance, like mailroom.metrics)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

WEBHOOK_EVENTS = Counter(
    "mailroom_provider_webhook_events_total",
    "Verified provider webhook events, by event type, severity and sending domain",
    ["event", "severity", "domain"],
)
WEBHOOK_REJECTED = Counter(
    "mailroom_provider_webhook_rejected_total",
    "Webhook calls answered 404 without processing, by reason",
    ["reason"],
)
SUPPRESSIONS_ADDED = Counter(
    "mailroom_provider_suppressions_added_total", "Addresses put on the suppression list", ["reason"]
)
REJECTIONS_SENT = Counter(
    "mailroom_provider_rejections_sent_total", "Rejection replies sent by SMTP", ["reason"]
)
REJECTIONS_SKIPPED = Counter(
    "mailroom_provider_rejections_skipped_total",
    "Rejection replies not sent (auto-reply, suppressed, already sent today, ...)",
    ["why"],
)


class SuppressionListSize(Collector):
    """``mailroom_provider_suppressions``: the list's size, read from Redis at scrape time."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("mailroom_provider_suppressions", "Addresses on the suppression list")
        try:
            gauge.add_metric([], self._count())
        except (redis.RedisError, OSError):  # a scrape must not fail because Redis is away
            return
        yield gauge


def register_suppression_size(count: Callable[[], int], registry: CollectorRegistry = REGISTRY) -> None:
    registry.register(SuppressionListSize(count))
