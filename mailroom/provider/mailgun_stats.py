"""Optional: poll Mailgun's per-domain stats and export them as Prometheus counters.

Endpoint and payload (Mailgun API reference, "Totals for entire domain",
https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/stats/get-v3--domain--stats-total,
and the ``Stats`` struct of mailgun/mailgun-go's stats.go):

    GET {api_base}/v3/{domain}/stats/total?event=accepted&event=delivered&event=failed
        &resolution=day&duration=2d            (HTTP basic auth, user "api", password the API key)
    {"start": ..., "end": ..., "resolution": "day",
     "stats": [{"time": "Mon, 01 Jan 2024 00:00:00 UTC",
                "accepted": {"incoming": 0, "outgoing": 10, "total": 10},
                "delivered": {"smtp": 9, "http": 0, "total": 9},
                "failed": {"temporary": {"espblock": 1},
                           "permanent": {"bounce": 1, "delayed-bounce": 0, "suppress-bounce": 0,
                                         "suppress-unsubscribe": 0, "suppress-complaint": 0,
                                         "total": 1}}}]}

Each poll asks for today and yesterday (yesterday's numbers still change for a while after midnight)
and keeps the latest figure per day; a counter is the sum over every day seen since the process started,
so it only grows, as a Prometheus counter must. Exported, in the style of the common Mailgun exporters:

    mailgun_accepted_total{domain, direction}          incoming | outgoing
    mailgun_delivered_total{domain, method}            smtp | http
    mailgun_failed_permanent_total{domain, reason}     bounce | delayed_bounce | suppress_bounce | ...
    mailgun_failed_temporary_total{domain, reason}     espblock
    mailgun_up                                         1 if the last poll of every domain succeeded
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("mailroom.provider.mailgun_stats")

# (metric, label name, path into a stats entry)
FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("mailgun_accepted", "direction", ("accepted",), "Messages Mailgun accepted for delivery"),
    ("mailgun_delivered", "method", ("delivered",), "Messages the recipient's server accepted"),
    ("mailgun_failed_permanent", "reason", ("failed", "permanent"), "Messages that failed permanently"),
    ("mailgun_failed_temporary", "reason", ("failed", "temporary"), "Temporary delivery failures"),
)
KEEP_DAYS = 3  # days kept individually; older ones are folded into a running base

Counts = dict[tuple[str, str], float]  # (metric, label value) -> count


def stats_url(api_base: str, domain: str) -> str:
    query = "event=accepted&event=delivered&event=failed&resolution=day&duration=2d"
    return f"{api_base.rstrip('/')}/v3/{urllib.parse.quote(domain, safe='')}/stats/total?{query}"


def parse(payload: Any) -> dict[str, Counts]:
    """Day ("time") -> counts, from one stats/total answer. Unknown fields are ignored; pure."""
    days: dict[str, Counts] = {}
    if not isinstance(payload, dict) or not isinstance(payload.get("stats"), list):
        raise ValueError("not a Mailgun stats answer: no stats list")
    for entry in payload["stats"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("time"), str):
            continue
        counts: Counts = {}
        for metric, _, path, _ in FAMILIES:
            node: Any = entry
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                continue
            for name, value in node.items():
                if name != "total" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    counts[(metric, name.replace("-", "_"))] = float(value)
        days[entry["time"]] = counts
    return days


class MailgunStats(Collector):
    def __init__(self, api_base: str, api_key: str, domains: tuple[str, ...], timeout: float = 10.0) -> None:
        if not api_base.startswith(("http://", "https://")):
            raise ValueError("api_base must be an http(s):// URL")
        self.api_base = api_base
        self.domains = domains
        self.timeout = timeout
        self._auth = "Basic " + base64.b64encode(f"api:{api_key}".encode()).decode("ascii")
        self._days: dict[str, dict[str, Counts]] = defaultdict(dict)
        self._base: dict[str, Counts] = defaultdict(lambda: defaultdict(float))
        self._up = 0.0
        self._lock = threading.Lock()

    def fetch(self, domain: str) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in __init__
            stats_url(self.api_base, domain), headers={"Authorization": self._auth}
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
            return json.load(response)

    def poll_once(self) -> bool:
        """Fetch every domain once; True if all answered."""
        ok = True
        for domain in self.domains:
            try:
                days = parse(self.fetch(domain))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                # URLError's text never contains the Authorization header.
                log.warning("mailgun_stats_failed", domain=domain, error=f"{type(exc).__name__}: {exc}")
                ok = False
                continue
            with self._lock:
                known = self._days[domain]
                known.update(days)
                for old in sorted(known, key=_day_order)[:-KEEP_DAYS]:
                    for key, value in known.pop(old).items():
                        self._base[domain][key] += value
        self._up = 1.0 if ok else 0.0
        return ok

    def run(self, stop: threading.Event, interval: float) -> None:
        while not stop.is_set():
            self.poll_once()
            stop.wait(interval)

    def totals(self, domain: str) -> Counts:
        with self._lock:
            total: Counts = defaultdict(float, self._base.get(domain, {}))
            for counts in self._days.get(domain, {}).values():
                for key, value in counts.items():
                    total[key] += value
        return dict(total)

    def collect(self) -> Iterator[Metric]:
        families = {
            metric: CounterMetricFamily(metric, help_text, labels=["domain", label])
            for metric, label, _, help_text in FAMILIES
        }
        for domain in self.domains:
            for (metric, value_label), value in sorted(self.totals(domain).items()):
                families[metric].add_metric([domain, value_label], value)
        yield from families.values()
        yield GaugeMetricFamily(
            "mailgun_up", "1 if the last poll of Mailgun's stats succeeded", value=self._up
        )


def _day_order(day: str) -> float:
    try:
        return parsedate_to_datetime(day).timestamp()
    except (TypeError, ValueError):
        return 0.0
