"""The benchmark's pieces on tiny sizes: every scenario runs for both contenders and counts match.

No timing assertions: figures are printed (pytest -s) and judged by people, not by the test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from bench import scenarios
from bench.run import Plan, run, table
from devstack import Dovecot, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = Plan(
    rounds=1,
    drain=(60,),
    idle_count=4,
    idle_interval=0.05,
    big_size=1024 * 1024,
    scaling_done=(50,),
    scaling_new=30,
    worker_jobs=8,
    rq_jobs=4,
    end_to_end=20,
    worker_processes=(1,),
    hostile_size=16 * 1024,
    only=("drain", "idle", "big", "scaling", "workers", "e2e", "hostile"),
)


@pytest.mark.timeout(120)
def test_every_scenario_runs_and_counts_match() -> None:
    # Its own servers in a plain temp dir, as `python -m bench.run` has: the benchmark adds IMAP users while
    # Dovecot runs, and a concurrent pytest may make /tmp/pytest-of-root untraversable for Dovecot meanwhile.
    with tempfile.TemporaryDirectory(prefix="mailroom-bench-smoke-") as tmp:
        root = Path(tmp)
        with (
            RedisServer(root / "redis") as redis_server,
            Dovecot(root / "dovecot", users={"bench": "b"}) as dovecot,
        ):
            stack = scenarios.Stack(dovecot, redis_server, root)
            results: dict[str, Any] = run(TINY, stack, say=lambda line: None)

    expected = {"drain_60", "idle", "big", "scaling_50", "workers", "e2e", "hostile"}
    assert set(results) == expected
    hostile = results.pop("hostile")["rows"]
    assert len(hostile) > 10 and all(set(r["seconds"]) == {"watcher", "parse", "worker"} for r in hostile)
    for name, data in results.items():
        assert set(data) == {"runs", "summary", "ratios"}, name
        for contender, runs in data["runs"].items():
            assert len(runs) == TINY.rounds, (name, contender)
            for result in runs:
                assert result["jobs"] == result.get("n", 1), (name, contender, result)
    for contender in ("mailroom", "raw"):
        assert results["idle"]["runs"][contender][0]["missed_wakeups"] == 0
        assert results["big"]["runs"][contender][0]["size"] >= TINY.big_size
        assert results["scaling_50"]["runs"][contender][0]["done"] == 50
    assert set(results["workers"]["runs"]) == {
        "floor",
        "log_1",
        "log_2",
        "webhook_slow",
        "webhook_instant",
        "rq_worker",
        "rq_simple",
    }
    assert "marked_per_s" in results["drain_60"]["ratios"]
    print(table(results, TINY))


@pytest.mark.timeout(180)
def test_many_mailboxes_and_soak_run_and_count_every_message() -> None:
    plan = Plan(
        many_mailboxes=3, many_idle_seconds=2, many_load_seconds=2, soak_minutes=0.2, only=("many", "soak")
    )
    with tempfile.TemporaryDirectory(prefix="mailroom-bench-smoke-") as tmp:
        root = Path(tmp)
        with RedisServer(root / "redis") as redis_server, Dovecot(root / "dovecot", users={}) as dovecot:
            results: dict[str, Any] = run(plan, scenarios.Stack(dovecot, redis_server, root), lambda _: None)
    many = results["many"]["runs"]["mailroom"][0]
    assert many["mailboxes"] == 3 and many["threads"] >= 3
    assert many["queued"] == many["appended"] == 20 and many["lost"] == 0
    soak = results["soak"]["runs"]["mailroom"][0]
    assert soak["sent"] == soak["handled"] == 24 and soak["lost"] == soak["twice"] == 0
    assert "watch_slope_mb_h" in soak and "worker_slope_mb_h" in soak
    print(table(results, plan))
