"""What the plugin tells the user: the terminal summary and the JSON or HTML report."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .concurrency import ConcurrencyReport
from .html_report import render_html, run_data
from .runtime import Runtime

__all__ = ["report_data", "summary_lines", "write_report"]


def report_data(
    runtime: Runtime | None,
    runs: Sequence[tuple[str, ConcurrencyReport[Any]]],
    *,
    settings: str,
) -> dict[str, Any]:
    """Everything ``--threadcreator-report`` writes, as plain JSON-able data."""
    costs = runtime.setup_costs if runtime is not None else []
    return {
        "settings": settings,
        "backends": [b.describe() for b in runtime.backends.values()] if runtime else [],
        "databases_created": runtime.databases_created if runtime else 0,
        "setup": [
            {
                "test": c.nodeid,
                "backend": c.backend,
                "isolation": c.isolation,
                "ms": round(c.seconds * 1000, 3),
            }
            for c in costs
        ],
        "concurrency_runs": [run_data(nodeid, r) for nodeid, r in runs],
        "kept_databases": list(runtime.kept) if runtime else [],
    }


def write_report(path: str, data: dict[str, Any]) -> Path:
    """Write the report, an HTML page if ``path`` ends in .html or .htm, else JSON; return it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in (".html", ".htm"):
        target.write_text(render_html(data), encoding="utf-8")
    else:
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target


def summary_lines(
    runtime: Runtime | None,
    runs: Sequence[tuple[str, ConcurrencyReport[Any]]],
    *,
    retries: int,
    verbose: bool,
    shaken: Sequence[tuple[str, int, int | None]] = (),
) -> list[str]:
    """Lines for the terminal summary (empty when no test used the plugin)."""
    if runtime is None or not runtime.setup_costs:
        return []
    ms = [c.seconds * 1000 for c in runtime.setup_costs]
    lines = [
        f"{len(ms)} test database(s) handed out, {runtime.databases_created} created; "
        f"setup mean {statistics.fmean(ms):.2f} ms, max {max(ms):.2f} ms"
    ]
    if runs:
        ops = sum(len(r.results) for _, r in runs)
        failed = sum(r.failed for _, r in runs)
        best = max(r.throughput for _, r in runs)
        p99 = max(r.latency_ms.p99 for _, r in runs)
        lines.append(
            f"{len(runs)} concurrency run(s): {ops} calls, {failed} failed; "
            f"best {best:,.0f} ops/s, worst p99 {p99:.1f} ms"
        )
        if verbose:
            lines += [f"  {nodeid}: {r.summary()}" for nodeid, r in runs]
    if shaken:
        seeds_failed = [(nodeid, seed) for nodeid, _, seed in shaken if seed is not None]
        lines.append(
            f"shake: {len(shaken)} test(s), {sum(n for _, n, _ in shaken)} repetition(s), "
            f"{len(seeds_failed)} failed"
        )
        lines += [f"  {nodeid}: failed under seed {seed}" for nodeid, seed in seeds_failed]
        if verbose:
            lines += [
                f"  {nodeid}: {n} repetition(s) passed" for nodeid, n, s in shaken if s is None
            ]
    if retries:
        lines.append(f"{retries} retries on transient contention")
    if runtime.kept:
        lines.append("kept databases of failed tests:")
        lines += [f"  {location}" for location in runtime.kept]
    return lines
