"""The composition root: IMAP session -> parse -> guarded enqueue, one watcher thread per mailbox; the
``watch`` and ``webhooks`` processes (``run_watch``, ``run_webhooks``; the worker's is mailroom.worker)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from types import FrameType
from typing import Any, TypeAlias, cast

from prometheus_client.registry import Collector

from mailroom import logs, metrics
from mailroom.config import AuthMethod, GraphMailbox, MailboxConfig, OAuth2Config, ProviderConfig, Settings
from mailroom.health import MARGIN_SECONDS, Check, WatchedMailbox, WatcherProbe
from mailroom.imap.session import ImapSession
from mailroom.imap.watcher import WatchLimits, imap_watcher
from mailroom.keys import AddressTemplate
from mailroom.lease import Coordinator
from mailroom.malloc import limit_arenas
from mailroom.metrics import MailboxCollector, QueueCollector
from mailroom.poison import FailureLedger
from mailroom.queue import Enqueued, MailQueue
from mailroom.redis_client import connect
from mailroom.schema import JobPayload
from mailroom.source import Sink, SourceMessage, Watcher
from mailroom.stopping import StopEvent
from mailroom.web import HealthServer

AnyWatcher: TypeAlias = Watcher[Any]


def make_sink(mailbox: MailboxConfig, queue: MailQueue) -> Sink:
    """The watcher's sink for one mailbox: parse, enqueue (raises EnqueueError), log one line each."""
    template = AddressTemplate.parse(mailbox.address)
    context = {"mailbox": mailbox.name}

    def sink(batch: Sequence[SourceMessage[Any]]) -> None:
        payloads = [JobPayload.from_message(mailbox.name, message, template) for message in batch]
        started = time.perf_counter()
        results = queue.enqueue_batch(mailbox, payloads)
        metrics.ENQUEUE_SECONDS.labels(mailbox.name).observe(time.perf_counter() - started)
        _observe_arrival(mailbox.name, batch, results)
        logs.info_many(context, [_enqueue_event(result) for result in results])
        _count(mailbox.name, results)

    return sink


def make_unreadable_recorder(
    mailbox: MailboxConfig, queue: MailQueue
) -> Callable[[SourceMessage[Any], str], None]:
    """The failed record of a message the server would not hand over (mailroom.poison): what could be
    read of it (size, the header if the server gave it) and the server's words."""
    template = AddressTemplate.parse(mailbox.address)

    def record(message: SourceMessage[Any], words: str) -> None:
        payload = JobPayload.from_message(mailbox.name, message, template)
        words = words.encode("utf-8", "replace").decode("utf-8")
        payload = replace(payload, parse_error=f"the server would not hand it over: {words}")
        queue.record_unreadable(mailbox, payload, words)

    return record


def _enqueue_event(result: Enqueued) -> tuple[str, dict[str, Any]]:
    payload = result.payload
    return "message_enqueued" if result.new else "message_already_queued", {
        "uidvalidity": payload.uidvalidity,
        "uid": payload.uid,
        "message_id": payload.message_id,
        "reply_key": payload.key,
        "key_header": payload.key_header,
        "job_id": result.job_id,
        "auto_reply": payload.auto_reply,
        "parse_error": payload.parse_error,
    }


def _observe_arrival(mailbox: str, batch: Sequence[SourceMessage[Any]], results: Sequence[Enqueued]) -> None:
    """Arrival (INTERNALDATE) to enqueue, for the messages that got a new job and have an INTERNALDATE."""
    arrived = {m.ref: m.received_at for m in batch if m.received_at is not None}
    now = datetime.now(UTC)
    histogram = metrics.ARRIVAL_TO_ENQUEUE_SECONDS.labels(mailbox)
    for result in results:
        when = arrived.get(result.payload.uid) if result.new else None
        if when is not None:
            when = when if when.tzinfo else when.replace(tzinfo=UTC)
            histogram.observe(max(0.0, (now - when).total_seconds()))


def _count(mailbox: str, results: Sequence[Enqueued]) -> None:
    """The batch's messages by outcome, one increment per counter."""
    new = [r.payload for r in results if r.new]
    for counter, n in (
        (metrics.MESSAGES_DUPLICATE, len(results) - len(new)),
        (metrics.MESSAGES_ENQUEUED, len(new)),
        (metrics.PARSE_ERRORS, sum(1 for p in new if p.parse_error)),
        (metrics.AUTO_REPLIES, sum(1 for p in new if p.auto_reply or p.bounce)),
        (metrics.OVERSIZE, sum(1 for p in new if p.truncated)),
    ):
        if n:
            counter.labels(mailbox).inc(n)


@dataclass
class Watchers:
    """The running watcher threads of one process."""

    watchers: list[AnyWatcher]
    threads: list[threading.Thread]
    coordinator: Coordinator | None = None  # with lease_ttl: the watchers come and go with the leases

    def current(self) -> list[AnyWatcher]:
        """The watchers running now (with leases: those of the mailboxes this replica holds)."""
        if self.coordinator is not None:
            return cast(list[AnyWatcher], self.coordinator.handles())  # handles are what make() built
        return list(self.watchers)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


def start_watchers(settings: Settings, stop: threading.Event, limits: WatchLimits | None = None) -> Watchers:
    queue = MailQueue(connect(settings.redis_url), settings)

    def make(mailbox: MailboxConfig, stop: threading.Event) -> AnyWatcher:
        if isinstance(mailbox, GraphMailbox):
            return _graph_watcher(mailbox, queue, stop)
        open_session = ImapSession.open
        if mailbox.auth is AuthMethod.OAUTH2 and mailbox.oauth2 is not None:
            from mailroom.oauth2 import token_source_for

            # one token source per mailbox, kept across reconnects so its cached token is reused
            tokens = token_source_for(mailbox.name, mailbox.oauth2, timeout=mailbox.timeout)
            open_session = partial(ImapSession.open, tokens=tokens)
        return imap_watcher(
            mailbox,
            make_sink(mailbox, queue),
            stop,
            open_session,
            limits=limits,
            ledger=FailureLedger(queue.connection, mailbox.name),
            record_unreadable=make_unreadable_recorder(mailbox, queue),
        )

    if settings.lease_ttl is not None:
        return _start_leased(settings, queue, make, stop)
    watchers = [make(mailbox, stop) for mailbox in settings.mailboxes]
    threads = [threading.Thread(target=w.run, name=f"watch-{w.config.name}", daemon=True) for w in watchers]
    for thread in threads:
        thread.start()
    return Watchers(watchers, threads)


def _graph_watcher(mailbox: GraphMailbox, queue: MailQueue, stop: threading.Event) -> Watcher[str]:
    """A Microsoft Graph mailbox: client-credentials tokens, delta link in Redis."""
    # Imported here: HTTP and OAuth2 libraries cost an IMAP-only watcher ~20 MB of RSS for nothing.
    from mailroom.graph.client import GraphClient
    from mailroom.graph.state import RedisDeltaStore
    from mailroom.graph.watcher import graph_watcher
    from mailroom.oauth2 import token_source_for

    graph = mailbox.graph
    tokens = token_source_for(
        mailbox.name, OAuth2Config(client_credentials=graph.client_credentials()), timeout=mailbox.timeout
    )
    client = GraphClient(mailbox, tokens, stop.wait)
    return graph_watcher(
        mailbox, make_sink(mailbox, queue), stop, client, RedisDeltaStore(queue.connection, mailbox)
    )


def _start_leased(
    settings: Settings,
    queue: MailQueue,
    make: Callable[[MailboxConfig, threading.Event], AnyWatcher],
    stop: threading.Event,
) -> Watchers:
    """Several replicas: watch only the mailboxes whose Redis lease this process holds (mailroom.lease)."""
    assert settings.lease_ttl is not None

    def start(name: str, mailbox_stop: threading.Event) -> tuple[object, threading.Thread]:
        watcher = make(settings.mailbox(name), mailbox_stop)
        thread = threading.Thread(target=watcher.run, name=f"watch-{name}", daemon=True)
        thread.start()
        return watcher, thread

    names = [m.name for m in settings.mailboxes]
    coordinator = Coordinator(queue.connection, names, settings.lease_ttl, start, stop)
    thread = threading.Thread(target=coordinator.run, name="leases", daemon=True)
    thread.start()
    return Watchers([], [thread], coordinator)


def serve_watcher_health(settings: Settings, watchers: Watchers, port: int | None = None) -> HealthServer:
    """The watch process's /healthz, /readyz and /metrics on ``port`` (default: http_port)."""
    connection = connect(settings.redis_url)

    def watched() -> list[WatchedMailbox]:
        return [WatchedMailbox(w.config, w.status) for w in watchers.current()]

    def leases() -> list[Check]:
        coordinator = watchers.coordinator
        if coordinator is None:
            return []
        age = time.monotonic() - coordinator.last_turn
        bound = coordinator.interval * 2 + MARGIN_SECONDS
        return [Check("leases", age <= bound, f"last round {age:.0f} s ago (bound {bound:.0f} s)")]

    probe = WatcherProbe(watched, connection, leases)
    collectors: list[Collector] = [
        QueueCollector(connection, settings.queues()),
        MailboxCollector(
            [m.name for m in settings.mailboxes],
            lambda: {w.config.name: w.status.connected for w in watchers.current()},
        ),
    ]
    return HealthServer(port if port is not None else settings.http_port or 0, probe, collectors).start()


SHUTDOWN_GRACE_SECONDS = 8.0  # a watcher finishing its batch after SIGTERM; the pod's grace period is longer


def run_watch(settings: Settings) -> int:
    """The ``watch`` process: every mailbox watched (with leases when configured), the health server on
    ``http_port``, until SIGTERM or SIGINT. Returns the exit code: 0 when every watcher stopped in time."""
    from mailroom import sentry

    limit_arenas()  # before any watcher thread allocates
    sentry.init(settings, "watcher")
    stop = StopEvent()  # watchers in IDLE wait on its descriptor, not in one-second slices
    _stop_on_signals(stop)
    watchers = start_watchers(settings, stop)
    server = serve_watcher_health(settings, watchers) if settings.http_port is not None else None
    stop.wait()
    if server is not None:
        server.stop()
    return 0 if watchers.join(SHUTDOWN_GRACE_SECONDS) else 1


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_webhooks(settings: Settings, provider: ProviderConfig, host: str | None, port: int | None) -> None:
    """The ``webhooks`` process: the provider's signed webhook receiver (uvicorn) on ``host:port``
    (default provider.webhook_host and webhook_port), with its metrics on provider.metrics_port.

    Imported here, not at the top: the watcher never loads the web server and the provider's modules.
    """
    from prometheus_client import REGISTRY, start_http_server

    from mailroom.provider.mailgun_stats import MailgunStats
    from mailroom.provider.metrics import register_suppression_size
    from mailroom.provider.server import serve
    from mailroom.provider.suppression import SuppressionList
    from mailroom.provider.webhooks import create_app, signing_key_source

    connection = connect(settings.redis_url)
    if provider.metrics_port is not None:
        register_suppression_size(SuppressionList(connection).count)
        api_key = provider.read_api_key()
        if api_key and provider.stats_domains:
            stats = MailgunStats(provider.api_base, api_key, provider.stats_domains)
            REGISTRY.register(stats)
            threading.Thread(
                target=stats.run, args=(threading.Event(), provider.stats_interval), daemon=True
            ).start()
        start_http_server(provider.metrics_port)
    app = create_app(provider, connection, signing_key_source(provider))
    serve(
        app,
        host or provider.webhook_host,
        provider.webhook_port if port is None else port,
        settings.log_level,
    )
