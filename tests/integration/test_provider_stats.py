"""The Mailgun stats collector against a local HTTP server answering a recorded stats/total payload
(shape from Mailgun's API reference, "Totals for entire domain")."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mailroom.provider.mailgun_stats import MailgunStats, parse
from tests.provider_servers import json_server

pytestmark = pytest.mark.integration

RECORDED = json.loads((Path(__file__).parents[1] / "data" / "mailgun_stats_total.json").read_text())
PATH = "/v3/mg.example.com/stats/total"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_parse_recorded_payload() -> None:
    days = parse(RECORDED)
    first = days["Tue, 24 Nov 2026 00:00:00 UTC"]
    assert first[("mailgun_accepted", "outgoing")] == 120
    assert first[("mailgun_failed_permanent", "delayed_bounce")] == 1
    assert ("mailgun_failed_permanent", "total") not in first
    with pytest.raises(ValueError):
        parse({"message": "Invalid private key"})


def test_collector_exports_counters_that_only_grow() -> None:
    answers = {PATH: RECORDED}
    with json_server(answers) as server:
        stats = MailgunStats(server.url, "key-secret", ("mg.example.com",))
        registry = CollectorRegistry()
        registry.register(stats)
        assert stats.poll_once()

        path, headers = server.requests[0]
        assert path.startswith(PATH + "?event=accepted&event=delivered&event=failed")
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"api:key-secret").decode()
        d = {"domain": "mg.example.com"}
        assert value(registry, "mailgun_accepted_total", direction="outgoing", **d) == 150
        assert value(registry, "mailgun_delivered_total", method="smtp", **d) == 138
        assert value(registry, "mailgun_failed_permanent_total", reason="bounce", **d) == 7
        assert value(registry, "mailgun_failed_temporary_total", reason="espblock", **d) == 4
        assert value(registry, "mailgun_up") == 1

        # Later the same day: today's figures grew; the counters follow, yesterday is not counted twice.
        later = copy.deepcopy(RECORDED)
        later["stats"][1]["accepted"]["outgoing"] = 45
        answers[PATH] = later
        assert stats.poll_once()
        assert value(registry, "mailgun_accepted_total", direction="outgoing", **d) == 165

        # The API fails: the last figures stay, mailgun_up says so.
        answers.pop(PATH)
        assert not stats.poll_once()
        assert value(registry, "mailgun_up") == 0
        assert value(registry, "mailgun_accepted_total", direction="outgoing", **d) == 165
        text = generate_latest(registry).decode()
        assert "# TYPE mailgun_accepted_total counter" in text
        assert "key-secret" not in text
