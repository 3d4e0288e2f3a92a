"""10,000 concurrent creates in one test through ``run_concurrently``.

The generated test records the report, the counts, orphans and ``ru_maxrss`` into a JSON file
and asserts nothing, so errors and orphans are counted rather than failing the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchlib import Goal, Row, RowSpec, median, short_reason
from harness import BACKEND_NAMES, Context, log
from suites import concurrent_suite

__all__ = ["CREATES", "ZERO_GOAL", "measure"]

CREATES = 10_000
TIMEOUT_S = 120.0
ZERO_GOAL = Goal("zero", 0.0, "= 0")
#: every backend has the goal of zero errors and orphans
KINDS = ("sqlite", "postgresql", "mysql")

#: (row key, title suffix, unit, goal) of each backend's rows, in table order.
ROWS = (
    ("throughput", "throughput", "creates/s", None),
    ("p99", "p99 latency", "ms", None),
    ("peak_rss", "peak RSS", "MB", None),
    ("errors_orphans", "errors + orphans", "count", ZERO_GOAL),
)


def _specs(backend: str) -> dict[str, RowSpec]:
    prefix = f"{CREATES // 1000}k concurrent creates, {BACKEND_NAMES[backend]}"
    return {
        key: RowSpec(f"concurrent.{backend}.{key}", "concurrent", f"{prefix}: {title}", unit, goal)
        for key, title, unit, goal in ROWS
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _runs(ctx: Context, directory: Path, backend: str, db: str) -> tuple[list[dict[str, Any]], str]:
    """Each repeat's figures, stopping at the first failed run (then also why it failed)."""
    results: list[dict[str, Any]] = []
    for rep in range(ctx.repeats):
        out = ctx.workspace.root / f"concurrent-{backend}-{rep}.json"
        run = ctx.workspace.run(
            directory,
            [f"--threadcreator-db={db}"],
            env={"BENCH_N": str(CREATES), "BENCH_TIMEOUT": str(TIMEOUT_S), "BENCH_OUT": str(out)},
            timeout=TIMEOUT_S + 180,
        )
        data = _read_json(out)
        if data is None or "exception" in data or "throughput" not in data:
            exception = (data or {}).get("exception", "").strip()
            problem = short_reason(exception.splitlines()[-1] if exception else run.reason())
            log(f"concurrent {backend}: FAILED {problem}")
            return results, problem
        data["wall_s"] = run.wall_s
        data["pytest_returncode"] = run.returncode
        results.append(data)
        log(
            f"concurrent {backend}: {data['throughput']:,.0f}/s, p99 {data['p99_ms']:.0f} ms, "
            f"{data['failed']} failed, {data['orphan_threads']} orphans"
        )
    return results, ""


def measure(ctx: Context) -> list[Row]:
    """Throughput, p99 latency, peak RSS and errors + orphans of 10,000 creates at once."""
    directory = ctx.workspace.suite("concurrent-10k", concurrent_suite())
    rows: list[Row] = []
    for backend, db, reason in ctx.targets(KINDS):
        specs = _specs(backend)
        results: list[dict[str, Any]] = []
        problem = reason
        if problem is None:
            results, problem = _runs(ctx, directory, backend, db)
            problem = problem or None
        if problem is not None or not results:
            rows += [spec.missing(problem or "no result") for spec in specs.values()]
            continue
        bad = [
            int(r["failed"]) + int(r["orphan_threads"]) + int(r["messages_without_thread"])
            for r in results
        ]
        values = {
            "throughput": median([float(r["throughput"]) for r in results]),
            "p99": median([float(r["p99_ms"]) for r in results]),
            "peak_rss": median([float(r["peak_rss_mb"]) for r in results]),
            "errors_orphans": float(max(bad)),
        }
        for key, spec in specs.items():
            detailed = key == "errors_orphans"
            rows.append(
                spec.measured(
                    values[key],
                    samples={"runs": [float(b) for b in bad]} if detailed else {},
                    extra={"runs": results} if detailed else {},
                )
            )
    return rows
