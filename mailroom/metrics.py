"""Prometheus metrics, in one place so their names can be read at a glance.

Names follow Prometheus conventions: ``mailroom_<what>_total`` for counters, ``_seconds`` for durations.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

MESSAGES_FETCHED = Counter("mailroom_messages_fetched_total", "Messages downloaded from IMAP", ["mailbox"])
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
IMAP_RECONNECTS = Counter(
    "mailroom_imap_reconnects_total", "Connection or enqueue failures retried", ["mailbox"]
)
IDLE_WAKEUPS = Counter(
    "mailroom_idle_wakeups_total", "IDLE cycles ended by a new-mail notification", ["mailbox"]
)
ENQUEUE_SECONDS = Histogram(
    "mailroom_enqueue_seconds",
    "Time to write one batch to Redis",
    ["mailbox"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
