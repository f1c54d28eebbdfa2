"""The benchmark, one command: ``python -m bench.run [--quick]`` (or ``make bench``).

Starts a private Dovecot and Redis on loopback, runs every scenario for mailroom and for the raw lower bound
(bench/drain.py) in alternating order within each round, prints a table and writes JSON to
bench/results/<UTC time>.json; a full run also rewrites bench/LATEST.md and bench/LATEST.json.
Each figure is the median [min-max] over the rounds; ratios are taken pair by pair within a round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import hostile, many, scenarios, soak
from bench.drain import REPO
from devstack import Dovecot, RedisServer

BENCH_DIR = REPO / "bench"
MIB = 1024 * 1024
MB = 1_000_000


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    drain: tuple[int, ...] = (5_000, 10_000)
    idle_count: int = 300
    idle_interval: float = 0.05
    big_size: int = 25 * MIB
    scaling_done: tuple[int, ...] = (0, 10_000, 100_000)
    scaling_new: int = 1_000
    worker_jobs: int = 3_000
    rq_jobs: int = 300  # RQ's stock workers run some tens of jobs a second: fewer jobs for them
    worker_processes: tuple[int, ...] = (1, 2)
    webhook_delay: float = 0.02
    end_to_end: int = 10_000
    hostile_size: int = 2 * MIB
    many_mailboxes: int = 500  # one round: connecting 500 mailboxes and an idle minute take a while
    many_idle_seconds: float = 60.0
    many_load_seconds: float = 30.0
    soak_minutes: float = 3.0  # bench/soak.py alone runs an hour
    only: tuple[str, ...] = field(
        default=("drain", "idle", "big", "scaling", "workers", "e2e", "hostile", "many", "soak")
    )


FULL = Plan()
QUICK = Plan(
    rounds=1,
    drain=(1_000,),
    idle_count=60,
    big_size=5 * MIB,
    scaling_done=(0, 10_000),
    scaling_new=500,
    worker_jobs=600,
    rq_jobs=60,
    end_to_end=1_000,
    hostile_size=256 * 1024,
    many_mailboxes=50,
    many_idle_seconds=20.0,
    many_load_seconds=10.0,
    soak_minutes=1.0,
)
CONTENDERS = ("mailroom", "raw")


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    summary = {}
    for name, results in runs.items():
        numeric = [k for k, v in results[0].items() if isinstance(v, int | float)]
        summary[name] = {k: _stats([r[k] for r in results]) for k in numeric}
    return summary


def _paired(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str, op: str = "/") -> dict[str, float]:
    if op == "/":
        return _stats([x[key] / y[key] for x, y in zip(a, b, strict=True)])
    return _stats([x[key] - y[key] for x, y in zip(a, b, strict=True)])


def _alternate(round_index: int, names: tuple[str, ...]) -> tuple[str, ...]:
    return names if round_index % 2 == 0 else names[::-1]


def run(plan: Plan, stack: scenarios.Stack, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every scenario of ``plan``; returns {scenario: {runs, summary, ratios}}."""
    out: dict[str, Any] = {}

    def record(name: str, runs: dict[str, list[dict[str, Any]]], ratios: dict[str, Any]) -> None:
        out[name] = {"runs": runs, "summary": _summarize(runs), "ratios": ratios}

    if "drain" in plan.only:
        for n in plan.drain:
            runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
            for r in range(plan.rounds):
                for kind in _alternate(r, CONTENDERS):
                    say(f"drain {n}: round {r + 1}/{plan.rounds} {kind}")
                    runs[kind].append(scenarios.backlog(stack, kind, n))
            m, raw = runs["mailroom"], runs["raw"]
            ratios = {k: _paired(m, raw, k) for k in ("queued_per_s", "marked_per_s", "peak_rss")}
            record(f"drain_{n}", runs, ratios)

    if "idle" in plan.only:
        runs = {c: [] for c in CONTENDERS}
        for r in range(plan.rounds):
            for kind in _alternate(r, CONTENDERS):
                say(f"idle latency: round {r + 1}/{plan.rounds} {kind}")
                runs[kind].append(scenarios.idle_latency(stack, kind, plan.idle_count, plan.idle_interval))
        m, raw = runs["mailroom"], runs["raw"]
        ratios = {f"{k}_minus_raw": _paired(m, raw, k, "-") for k in ("p50_ms", "p99_ms", "max_ms")}
        record("idle", runs, ratios)

    if "big" in plan.only:
        runs = {c: [] for c in CONTENDERS}
        for r in range(plan.rounds):
            for kind in _alternate(r, CONTENDERS):
                say(f"big message: round {r + 1}/{plan.rounds} {kind}")
                runs[kind].append(scenarios.big_message(stack, kind, plan.big_size))
        record("big", runs, {"above_steady": _paired(runs["mailroom"], runs["raw"], "above_steady")})

    if "scaling" in plan.only:
        say(f"scaling: preparing mailboxes holding {', '.join(map(str, plan.scaling_done))} done messages")
        targets = {done: scenarios.prepare_scaling(stack, done) for done in plan.scaling_done}
        by_size: dict[int, dict[str, list[dict[str, Any]]]] = {
            d: {c: [] for c in CONTENDERS} for d in plan.scaling_done
        }
        for r in range(plan.rounds):
            for done, target in targets.items():
                for kind in _alternate(r, CONTENDERS):
                    say(f"scaling {done} done: round {r + 1}/{plan.rounds} {kind}")
                    result = scenarios.scaling(stack, kind, target, done, plan.scaling_new)
                    by_size[done][kind].append(result)
        base = by_size[plan.scaling_done[0]]
        for done, runs in by_size.items():
            ratios = {
                "per_msg_vs_raw": _paired(runs["mailroom"], runs["raw"], "marked_us_per_msg"),
                "mailroom_per_msg_vs_empty": _paired(runs["mailroom"], base["mailroom"], "marked_us_per_msg"),
                "raw_per_msg_vs_empty": _paired(runs["raw"], base["raw"], "marked_us_per_msg"),
            }
            record(f"scaling_{done}", runs, ratios)

    if "workers" in plan.only:
        kinds: dict[str, Callable[[], dict[str, Any]]] = {
            "floor": lambda: scenarios.floor(stack, plan.worker_jobs),
            "log_1": lambda: scenarios.workers(stack, "mailroom", 1, plan.worker_jobs),
            "log_2": lambda: scenarios.workers(stack, "mailroom", 2, plan.worker_jobs),
            "webhook_slow": lambda: scenarios.workers(
                stack, "mailroom", 1, plan.worker_jobs, "webhook", plan.webhook_delay
            ),
            "webhook_instant": lambda: scenarios.workers(
                stack, "mailroom", 1, plan.worker_jobs, "webhook", 0
            ),
            "rq_worker": lambda: scenarios.workers(stack, "rq_noop", 1, plan.rq_jobs),
            "rq_simple": lambda: scenarios.workers(stack, "rq_simple", 1, plan.rq_jobs),
        }
        runs = {k: [] for k in kinds}
        for r in range(plan.rounds):
            for kind in _alternate(r, tuple(kinds)):
                say(f"workers {kind}: round {r + 1}/{plan.rounds}")
                runs[kind].append(kinds[kind]())
        ratios = {k: _paired(runs[k], runs["floor"], "jobs_per_s") for k in kinds if k != "floor"}
        record("workers", runs, ratios)

    if "e2e" in plan.only:
        n = plan.end_to_end
        runs = {"watch_2_workers": [], "watch_only": []}
        for r in range(plan.rounds):
            for kind in _alternate(r, tuple(runs)):
                say(f"end to end {n}: round {r + 1}/{plan.rounds} {kind}")
                if kind == "watch_only":
                    runs[kind].append(scenarios.backlog(stack, "mailroom", n))
                else:
                    runs[kind].append(scenarios.end_to_end(stack, n))
        record("e2e", runs, {})

    if "hostile" in plan.only:  # no servers: parse times of hostile mail next to plain mail of its size
        out["hostile"] = {"rows": hostile.as_json(hostile.run(plan.hostile_size, plan.rounds, say))}

    if "many" in plan.only:
        say(f"many mailboxes: {plan.many_mailboxes} in one watcher")
        result = many.many(stack, plan.many_mailboxes, plan.many_idle_seconds, plan.many_load_seconds)
        out["many"] = {"runs": {"mailroom": [result]}}

    if "soak" in plan.only:
        say(f"soak: {plan.soak_minutes:g} minutes")
        out["soak"] = {"runs": {"mailroom": [soak.soak(stack, plan.soak_minutes, say=say)]}}
    return out


# ---- the machine -------------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return "unknown"
    return (result.stdout or result.stderr).strip().splitlines()[0] if result.stdout or result.stderr else "?"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dovecot": _first_line(["dovecot", "--version"]),
        "redis": _first_line(["redis-server", "--version"]),
        "commit": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "load_average_at_start": list(os.getloadavg()),
    }


# ---- the table ---------------------------------------------------------------------------------------


def _fmt(stats: dict[str, float] | None, scale: float = 1.0, digits: int = 0) -> str:
    if stats is None:
        return "-"
    m, lo, hi = (stats[k] / scale for k in ("median", "min", "max"))
    return f"{m:,.{digits}f} [{lo:,.{digits}f}-{hi:,.{digits}f}]"


def _rss_pair(summary: dict[str, dict[str, float]]) -> str:
    return f"{summary['steady_rss']['median'] / MB:.1f} / {summary['peak_rss']['median'] / MB:.1f}"


def table(results: dict[str, Any], plan: Plan) -> str:
    lines = [f"median [min-max] of {plan.rounds} round(s); ratios pair by pair within a round", ""]

    def row(label: str, *cells: str) -> None:
        lines.append(f"  {label:<26}" + "".join(f"{c:<28}" for c in cells).rstrip())

    def section(title: str, left: str = "mailroom", right: str = "raw", third: str = "mailroom/raw") -> None:
        lines.extend(["", title])
        row("", left, right, third)

    for name, data in results.items():
        if name == "hostile":
            lines.extend(["", "6. " + hostile.table([hostile.Row.from_json(r) for r in data["rows"]])])
            continue
        if name == "many":
            lines.extend(
                [
                    "",
                    "7. Many mailboxes in one watcher (one run)",
                    "  " + many.describe(data["runs"]["mailroom"][0]),
                ]
            )
            continue
        if name == "soak":
            lines.extend(
                ["", "8. Soak: watch + worker (one run)", "  " + soak.describe(data["runs"]["mailroom"][0])]
            )
            continue
        s, ratios = data["summary"], data["ratios"]
        m, raw = s.get("mailroom"), s.get("raw")
        if name.startswith("drain_"):
            section(f"1. Backlog drain, N = {name[6:]} messages of ~4 KB (from IMAP login)")
            for key, label in (
                ("queued_per_s", "msgs/s until all queued"),
                ("marked_per_s", "msgs/s until all marked"),
            ):
                row(label, _fmt(m[key]), _fmt(raw[key]), _fmt(ratios[key], digits=2))
            row(
                "peak RSS, MB",
                _fmt(m["peak_rss"], MB),
                _fmt(raw["peak_rss"], MB),
                _fmt(ratios["peak_rss"], digits=2),
            )
            row("steady RSS after, MB", _fmt(m["steady_rss"], MB), _fmt(raw["steady_rss"], MB))
        elif name == "idle":
            n = data["runs"]["mailroom"][0]["n"]
            section(
                f"2. IDLE latency, APPEND -> job in Redis, {n} messages 50 ms apart (ms)",
                third="mailroom-raw",
            )
            for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
                diff = ratios.get(f"{key}_minus_raw")
                row(key.replace("_ms", ""), _fmt(m[key]), _fmt(raw[key]), _fmt(diff) if diff else "")
            row("missed wake-ups (>1.5 s)", _fmt(m["missed_wakeups"]), _fmt(raw["missed_wakeups"]))
            row("steady / peak RSS, MB", _rss_pair(m), _rss_pair(raw))
        elif name == "big":
            size = data["runs"]["mailroom"][0]["size"]
            section(f"3. One {size / MIB:.0f} MiB message: RSS (MB)")
            row("steady before", _fmt(m["steady_rss"], MB, 1), _fmt(raw["steady_rss"], MB, 1))
            row("peak", _fmt(m["peak_rss"], MB, 1), _fmt(raw["peak_rss"], MB, 1))
            row("peak - steady", _fmt(m["above_steady"], MB, 1), _fmt(raw["above_steady"], MB, 1))
            row(
                "(peak - steady) / size",
                _fmt(m["above_steady_x_size"], digits=2),
                _fmt(raw["above_steady_x_size"], digits=2),
            )
        elif name.startswith("scaling_"):
            if name == next(k for k in results if k.startswith("scaling_")):
                n = data["runs"]["mailroom"][0]["n"]
                section(
                    f"4. Scaling: µs per message to drain {n} new into a mailbox of D done",
                    third="mailroom/raw",
                )
            row(f"D = {name[8:]}: until marked", _fmt(m["marked_us_per_msg"]), _fmt(raw["marked_us_per_msg"]),
                _fmt(ratios["per_msg_vs_raw"], digits=2))  # fmt: skip
            row("   vs D = 0", _fmt(ratios["mailroom_per_msg_vs_empty"], digits=2),
                _fmt(ratios["raw_per_msg_vs_empty"], digits=2))  # fmt: skip
        elif name == "e2e":
            n = data["runs"]["watch_2_workers"][0]["n"]
            section(f"6. End to end: {n} messages waiting -> all handled (log)", "msgs/s", "", "")
            row("watch + 2 workers", _fmt(s["watch_2_workers"]["handled_per_s"]))
            row("watch only, until queued", _fmt(s["watch_only"]["queued_per_s"]))
        elif name == "workers":
            n = data["runs"]["log_1"][0]["n"]
            section(
                f"5. Workers: jobs/s until {n} queued jobs are handled (burst; RQ's stock workers: "
                f"{data['runs']['rq_worker'][0]['n']} no-op jobs)",
                "jobs/s",
                "x floor",
                "peak RSS per process, MB",
            )
            lines[-1] = f"{lines[-1]:<{2 + 26 + 3 * 28}}CPU us/job (+ receiver)"  # a fourth column
            for key, label in (
                ("floor", "bare consumer (floor)"),
                ("log_1", "log, 1 process"),
                ("log_2", "log, 2 processes"),
                ("webhook_slow", "webhook 20 ms, 1 process"),
                ("webhook_instant", "webhook instant, 1 proc"),
                ("rq_worker", "RQ Worker (fork), no-op"),
                ("rq_simple", "RQ SimpleWorker, no-op"),
            ):
                rss = s[key].get("peak_rss")
                ratio = _fmt(ratios[key], digits=3) if key in ratios else ""
                cpu = s[key].get("cpu_us_per_job")  # the workers' from the first job taken, all processes
                receiver = s[key].get("receiver_cpu_us_per_job")
                cpu_cell = f"{cpu['median']:,.0f}" if cpu else ""
                cpu_cell += f" (+ {receiver['median']:,.0f})" if receiver else ""
                row(label, _fmt(s[key]["jobs_per_s"]), ratio, _fmt(rss, MB, 1) if rss else "", cpu_cell)
    return "\n".join(lines)


# ---- the command -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (about a minute)")
    parser.add_argument("--rounds", type=int, help="rounds per scenario (default 3, quick 1)")
    parser.add_argument(
        "--only", help="comma-separated: drain,idle,big,scaling,workers,e2e,hostile,many,soak"
    )
    parser.add_argument("--out", type=Path, help="JSON file (default bench/results/<UTC time>.json)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    if args.only:
        plan = Plan(**{**asdict(plan), "only": tuple(args.only.split(","))})
    info = machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailroom-bench-") as tmp:
        root = Path(tmp)
        with (
            RedisServer(root / "redis") as redis_server,
            Dovecot(root / "dovecot", users={"bench": "bench"}) as dovecot,
        ):
            stack = scenarios.Stack(dovecot, redis_server, root)
            results = run(plan, stack, lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    info["load_average_at_end"] = list(os.getloadavg())
    info["seconds"] = round(time.monotonic() - started)
    info["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    text = table(results, plan)
    print(text)
    report = {"machine": info, "plan": asdict(plan), "quick": args.quick, "results": results}
    out = args.out or BENCH_DIR / "results" / f"{info['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten {out}", file=sys.stderr)
    if not args.quick and not args.only and not args.rounds:
        (BENCH_DIR / "LATEST.json").write_text(json.dumps(report, indent=1))
        (BENCH_DIR / "LATEST.md").write_text(
            f"# Latest benchmark ({info['date']}, {info['seconds']} s)\n\nMachine: {_machine_line(info)}\n\n"
            f"```\n{text}\n```\n"
        )
    return 0


def _machine_line(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.1f}" for x in info["load_average_at_start"])
    return (
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; Linux {info['kernel']};"
        f" Python {info['python']}; Dovecot {info['dovecot']}; {info['redis']}; commit {info['commit']};"
        f" load average at start {load}"
    )


if __name__ == "__main__":
    sys.exit(main())
