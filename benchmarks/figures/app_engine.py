"""Instrumenting an app's engine: the app's own inserts on the test's database against plain.

A real pytest run (:func:`suites.app_engine_suite`): an "app" makes its own SQLAlchemy async
engine from the test database's URL, which the plugin instruments while the test runs, and
another from a database the plugin does not know; both do the same single-row inserts of a
thread and its message, in short chunks that alternate between the two sides. The ratio is
instrumented / plain rate, the median over adjacent chunk pairs; the goal is that the
instrumentation costs the app at most a tenth of its speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib import Goal, Row, RowSpec, median, short_reason
from harness import BACKEND_NAMES, Context, log
from suites import app_engine_suite

__all__ = ["ENGINE_GOAL", "measure"]

ENGINE_GOAL = Goal("min_ratio", 0.90, "≥ 0.90× plain")
#: Transactions (thread + message) per side and round: about half a second each.
INSERTS = {"sqlite": 500, "postgresql": 300}
WARMUP = 50
#: Transactions per side before switching to the other: short, so drift hits both alike.
CHUNK = 10
TIMEOUT_S = 300.0
SIDES = ("instrumented", "plain")


def rounds(ctx: Context) -> int:
    """Rounds per side: 4 in a quick run, 2 per repeat otherwise."""
    return max(4, 2 * ctx.repeats)


def _spec(backend: str) -> RowSpec:
    return RowSpec(
        key=f"engine.{backend}",
        group="engine",
        figure=f"App's own engine, {BACKEND_NAMES[backend]}: inserts on the test database vs plain",
        unit="creates/s",
        goal=ENGINE_GOAL,
        ratio_label="× plain",
    )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _problem(data: dict[str, Any] | None, fallback: str) -> str | None:
    """Why a run's JSON cannot be used (None: it can)."""
    if data is None:
        return fallback
    if data.get("exception"):
        return short_reason(str(data["exception"]).strip().splitlines()[-1])
    expected = data.get("expected_rows")
    for side in SIDES:
        if not data.get("rates", {}).get(side):
            return f"benchmark error: no rates for the {side} side"
        if data.get("rows", {}).get(side) != [expected, expected]:
            found = data.get("rows", {}).get(side)
            return (
                f"benchmark error: the {side} side holds {found} threads/messages, "
                f"expected {expected} of each"
            )
    return None


def measure(ctx: Context) -> list[Row]:
    """Instrumented against plain inserts of an app's own engine, per backend."""
    directory = ctx.workspace.suite("app-engine", app_engine_suite())
    rows: list[Row] = []
    for backend, db, reason in ctx.targets():
        spec = _spec(backend)
        if reason is not None:
            rows.append(spec.missing(reason))
            continue
        out = ctx.workspace.root / f"app-engine-{backend}.json"
        env = {
            "BENCH_INSERTS": str(INSERTS[backend]),
            "BENCH_ROUNDS": str(rounds(ctx)),
            "BENCH_WARMUP": str(WARMUP),
            "BENCH_CHUNK": str(CHUNK),
            "BENCH_OUT": str(out),
        }
        run = ctx.workspace.run(directory, [f"--threadcreator-db={db}"], env=env, timeout=TIMEOUT_S)
        data = _read(out)
        problem = _problem(data, short_reason(run.reason()))
        if problem is None and not run.ok(1):
            problem = short_reason(run.reason())
        if problem is not None or data is None:
            log(f"engine {backend}: FAILED {problem}")
            rows.append(spec.missing(problem or "no result"))
            continue
        instrumented = [float(x) for x in data["rates"]["instrumented"]]
        plain = [float(x) for x in data["rates"]["plain"]]
        ratios = [a / b for a, b in zip(instrumented, plain, strict=True)]
        # Chunk k of one side ran right next to chunk k of the other: the median over those
        # pairs shrugs off the bursts a shared machine puts into a round.
        pairs = [
            float(p) / float(i)
            for i, p in zip(data["chunk_s"]["instrumented"], data["chunk_s"]["plain"], strict=True)
        ]
        log(
            f"engine {backend}: instrumented {median(instrumented):,.0f}/s, "
            f"plain {median(plain):,.0f}/s, {median(pairs):.2f}× ({run.wall_s:.1f} s)"
        )
        rows.append(
            spec.measured(
                median(instrumented),
                baseline=median(plain),
                baseline_label="plain engine, unknown database",
                ratio=median(pairs),
                samples={"instrumented": instrumented, "plain": plain},
                extra={
                    "inserts_per_round": data["inserts"],
                    "chunk": data["chunk"],
                    "rounds": data["rounds"],
                    "ratio_per_round": ratios,
                    "chunk_pairs": len(pairs),
                    "pytest_wall_s": run.wall_s,
                    "wal_bytes": data.get("wal_bytes"),
                },
            )
        )
    return rows
