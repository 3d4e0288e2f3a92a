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

__all__ = ["merge_report_data", "report_data", "summary_lines", "write_report"]


def report_data(
    runtime: Runtime | None,
    runs: Sequence[tuple[str, ConcurrencyReport[Any]]],
    *,
    settings: str,
    shaken: Sequence[tuple[str, int, int | None]] = (),
    extra_runtimes: Sequence[Runtime] = (),
) -> dict[str, Any]:
    """Everything ``--threadcreator-report`` writes (and the summary shows), as JSON-able data."""
    runtimes = [rt for rt in (runtime, *extra_runtimes) if rt is not None]
    return {
        "settings": settings,
        "backends": [b.describe() for rt in runtimes for b in rt.backends.values()],
        "databases_created": sum(rt.databases_created for rt in runtimes),
        "retries": sum(rt.retries for rt in runtimes),
        "setup": [
            {
                "test": c.nodeid,
                "backend": c.backend,
                "isolation": c.isolation,
                "ms": round(c.seconds * 1000, 3),
            }
            for rt in runtimes
            for c in rt.setup_costs
        ],
        "concurrency_runs": [{**run_data(nodeid, r), "summary": r.summary()} for nodeid, r in runs],
        "shake": [
            {"test": nodeid, "repetitions": n, "failed_seed": seed} for nodeid, n, seed in shaken
        ],
        "kept_databases": [location for rt in runtimes for location in rt.kept],
    }


def merge_report_data(parts: Sequence[dict[str, Any]], *, settings: str) -> dict[str, Any]:
    """One report from the reports of several processes (the xdist workers)."""
    merged: dict[str, Any] = {
        "settings": settings,
        "backends": [],
        "databases_created": 0,
        "retries": 0,
        "setup": [],
        "concurrency_runs": [],
        "shake": [],
        "kept_databases": [],
    }
    for part in parts:
        for key in ("databases_created", "retries"):
            merged[key] += int(part.get(key, 0))
        for key in ("setup", "concurrency_runs", "shake", "kept_databases"):
            merged[key] += list(part.get(key, ()))
        merged["backends"] += [b for b in part.get("backends", ()) if b not in merged["backends"]]
    return merged


def write_report(path: str, data: dict[str, Any]) -> Path:
    """Write the report, an HTML page if ``path`` ends in .html or .htm, else JSON; return it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in (".html", ".htm"):
        target.write_text(render_html(data), encoding="utf-8")
    else:
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target


def summary_lines(data: dict[str, Any], *, verbose: bool) -> list[str]:
    """Lines for the terminal summary from :func:`report_data` (empty when no test used it)."""
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
