"""The terminal summary's lines, read from the report data (:mod:`.data`). Pytest-free."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

__all__ = ["summary_lines"]


def summary_lines(data: Mapping[str, Any], *, verbose: bool) -> list[str]:
    """Lines for the terminal summary from :func:`~.data.report_data` (empty when no test used it)."""
    setup = data.get("setup") or []
    if not setup:
        return []
    ms = [float(entry["ms"]) for entry in setup]
    lines = [f"backend: {backend}" for backend in data.get("backends") or []]
    lines += [
        f"{len(ms)} test database(s) handed out, {data.get('databases_created', 0)} created; "
        f"setup mean {statistics.fmean(ms):.2f} ms, max {max(ms):.2f} ms"
    ]
    runs = data.get("concurrency_runs") or []
    if runs:
        ops = sum(int(r["calls"]) for r in runs)
        failed = sum(int(r["failed"]) for r in runs)
        best = max(float(r["throughput"]) for r in runs)
        p99 = max(float(r["latency_ms"]["p99"]) for r in runs)
        lines.append(
            f"{len(runs)} concurrency run(s): {ops} calls, {failed} failed; "
            f"best {best:,.0f} ops/s, worst p99 {p99:.1f} ms"
        )
        if verbose:
            lines += [f"  {r['test']}: {r.get('summary', '')}" for r in runs]
    shaken = data.get("shake") or []
    if shaken:
        failed_seeds = [
            (s["test"], s["failed_seed"]) for s in shaken if s["failed_seed"] is not None
        ]
        lines.append(
            f"shake: {len(shaken)} test(s), {sum(int(s['repetitions']) for s in shaken)} "
            f"repetition(s), {len(failed_seeds)} failed"
        )
        lines += [f"  {nodeid}: failed under seed {seed}" for nodeid, seed in failed_seeds]
        if verbose:
            lines += [
                f"  {s['test']}: {s['repetitions']} repetition(s) passed"
                for s in shaken
                if s["failed_seed"] is None
            ]
    if data.get("retries"):
        lines.append(f"{data['retries']} retries on transient contention")
    if data.get("kept_databases"):
        lines.append("kept databases of failed tests:")
        lines += [f"  {location}" for location in data["kept_databases"]]
    return lines
