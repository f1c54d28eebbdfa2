"""Pure bits of the operators' tools: --since parsing, Sentinel URLs, the worker's liveness bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailroom.failed import parse_since
from mailroom.redis_client import connect

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("2026-11-25T08:00:00", datetime(2026, 11, 25, 8, tzinfo=UTC)),
        ("2026-11-25T08:00:00+02:00", datetime(2026, 11, 25, 6, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2x", "", "-1h"])
def test_parse_since_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, now=NOW)


def test_sentinel_url_builds_a_master_client_without_connecting() -> None:
    client = connect("redis+sentinel://:s3cret@sentinel-a:26379,sentinel-b:26380/mymaster/2")
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]


def test_sentinel_url_needs_a_service() -> None:
    with pytest.raises(ValueError, match="mymaster"):
        connect("redis+sentinel://sentinel-a:26379")
