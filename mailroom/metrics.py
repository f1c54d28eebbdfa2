"""Prometheus metrics, in one place so their names can be read at a glance.

Names follow Prometheus conventions: ``mailroom_<what>_total`` for counters, ``_seconds`` for durations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import redis
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError
from rq import Queue

MESSAGES_FETCHED = Counter(
    "mailroom_messages_fetched_total", "Messages downloaded from the mailbox (any source)", ["mailbox"]
)
MESSAGES_ENQUEUED = Counter("mailroom_messages_enqueued_total", "New jobs written to Redis", ["mailbox"])
MESSAGES_DUPLICATE = Counter(
    "mailroom_messages_duplicate_total",
    "Messages already queued earlier (redelivery, other replica)",
    ["mailbox"],
)
MESSAGES_MARKED = Counter("mailroom_messages_marked_total", "Messages marked done on the server", ["mailbox"])
PARSE_ERRORS = Counter("mailroom_parse_errors_total", "Messages queued with a parse_error flag", ["mailbox"])
AUTO_REPLIES = Counter("mailroom_auto_replies_total", "Messages flagged auto_reply or bounce", ["mailbox"])
OVERSIZE = Counter("mailroom_messages_oversize_total", "Messages over max_message_size, parked", ["mailbox"])
UNREADABLE = Counter(
    "mailroom_messages_unreadable_total",
    "Messages the server would not hand over (max_failures FETCHes failed): recorded failed, left unmarked",
    ["mailbox"],
)
FETCH_FAILURES = Counter(
    "mailroom_fetch_failures_total", "FETCHes the server refused (NO) or ended with BYE", ["mailbox"]
)
SOURCE_RETRIES = Counter(
    "mailroom_source_retries_total",
    "Connection, fetch or enqueue failures a watcher retried, by mailbox and source kind (imap, graph)",
    ["mailbox", "source"],
)
# The same count under its name from before Graph, for IMAP mailboxes only, so existing dashboards and
# alerts keep working; prefer mailroom_source_retries_total (docs/operations.md).
IMAP_RECONNECTS = Counter(
    "mailroom_imap_reconnects_total", "IMAP connection or enqueue failures retried", ["mailbox"]
)
LEGACY_RETRIES = {"imap": IMAP_RECONNECTS}
IDLE_WAKEUPS = Counter(
    "mailroom_idle_wakeups_total", "IDLE cycles ended by a new-mail notification", ["mailbox"]
)
ENQUEUE_SECONDS = Histogram(
    "mailroom_enqueue_seconds",
    "Time to write one batch to Redis",
    ["mailbox"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ARRIVAL_TO_ENQUEUE_SECONDS = Histogram(
    "mailroom_arrival_to_enqueue_seconds",
    "From the message's arrival on the IMAP server (INTERNALDATE, 1 s resolution) to its job in Redis",
    ["mailbox"],
    buckets=(1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600),
)
MAILBOXES_WATCHED = Gauge(
    "mailroom_mailboxes_watched", "Mailboxes this process watches now (with leases: the ones it holds)"
)

# Worker side. The RQ worker forks a work horse per job, so these are counted in the parent process,
# from the job's status once the horse has exited (mailroom.rqworker).
JOBS = Counter(
    "mailroom_jobs_total",
    "Jobs run by this worker, by outcome: succeeded, failed (to the failed registry), retried",
    ["queue", "outcome"],
)
JOB_SECONDS = Histogram(
    "mailroom_job_seconds",
    "Time to run one job (handler and work-horse overhead)",
    ["queue"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class QueueCollector:
    """Queue depth and failed-registry size per queue, read from Redis at scrape time.

    ``mailroom_redis_up`` is 0 (and the queue gauges are absent) when Redis does not answer.
    """

    def __init__(self, connection: redis.Redis, queues: Sequence[str]) -> None:
        self.connection = connection
        self.queues = list(queues)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: the metrics depend on Redis at scrape time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mailroom_redis_up", "1 when Redis answered the scrape's queries")
        depth = GaugeMetricFamily("mailroom_queue_depth", "Jobs waiting in the queue", labels=["queue"])
        failed = GaugeMetricFamily(
            "mailroom_failed_jobs", "Jobs in the queue's failed registry", labels=["queue"]
        )
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                for name in self.queues:
                    queue = Queue(name, connection=self.connection)
                    pipe.llen(queue.key)
                    pipe.zcard(queue.failed_job_registry.key)
                counts = pipe.execute()
        except RedisError:
            up.add_metric([], 0)
            yield up
            return
        for i, name in enumerate(self.queues):
            depth.add_metric([name], counts[2 * i])
            failed.add_metric([name], counts[2 * i + 1])
        up.add_metric([], 1)
        yield up
        yield depth
        yield failed


class MailboxCollector:
    """``mailroom_mailbox_watching{mailbox}`` for every configured mailbox, at scrape time: 1 when this
    process watches it and is logged in, else 0. With leases only the holder can say 1, so
    ``max by (mailbox)`` over the replicas is 0 both when nobody holds a mailbox and when its holder
    cannot log in (the alert "mailbox not watched")."""

    def __init__(self, mailboxes: Sequence[str], connected: Callable[[], Mapping[str, bool]]) -> None:
        self.mailboxes = list(mailboxes)
        self.connected = connected

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector, like QueueCollector

    def collect(self) -> Iterator[Metric]:
        watching = GaugeMetricFamily(
            "mailroom_mailbox_watching",
            "1 when this process watches the mailbox and is logged in (with leases: only its holder)",
            labels=["mailbox"],
        )
        connected = self.connected()
        for name in self.mailboxes:
            watching.add_metric([name], 1 if connected.get(name) else 0)
        yield watching
