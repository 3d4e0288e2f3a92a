"""The JSON report's model: what ``--threadcreator-report`` writes and the summary reads.

This module is the source of truth for the report's shape; the terminal summary
(:mod:`.terminal`) and the HTML page (:mod:`.html`) only read it. Pytest-free. The shape, as the
:class:`ReportData` typed dicts below spell it::

    {
        "settings": str,                      # Settings.describe(), shown as is
        "backends": [str, ...],               # Backend.describe() of each backend used
        "databases_created": int,
        "retries": int,                       # retries taken on transient contention
        "setup": [                            # one per test database handed out, in run order
            {"test": str, "backend": str, "isolation": str, "ms": float},
        ],
        "concurrency_runs": [                 # one per run_concurrently call, in run order
            {
                "test": str,                  # the test's node id
                "calls": int,
                "succeeded": int,
                "failed": int,                # includes timed_out
                "timed_out": int,
                "elapsed_s": float,
                "throughput": float,          # ops/s
                "latency_ms": {"p50": float, "p95": float, "p99": float, "max": float,
                               "mean": float},
                "errors": [str, ...],         # sorted exception type names
                "error_counts": {str: int},   # exception type name -> count
                # per call, in input order (both lists have "calls" entries, or are empty):
                "timings": [[start_s, end_s] | None, ...],  # seconds after the barrier's
                                              # release, rounded to µs; None: never started
                "outcomes": ["ok" | "error" | "timeout", ...],
                "summary": str,               # ConcurrencyReport.summary()
            },
        ],
        "shake": [                            # one per shaken test (--threadcreator-shake)
            {"test": str, "repetitions": int, "failed_seed": int | None},
        ],
        "kept_databases": [str, ...],         # where each kept database lives
    }

Readers treat every key as optional (a report written by an older version lacks some), since
the data may come from a file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from ..concurrency import ConcurrencyReport, Outcome
from ..runtime import Runtime

__all__ = [
    "ConcurrencyRunData",
    "LatencyData",
    "ReportData",
    "SetupData",
    "ShakeData",
    "merge_report_data",
    "report_data",
    "run_data",
]


class SetupData(TypedDict):
    """The setup cost of one test database handed out."""

    test: str
    backend: str
    isolation: str
    ms: float


class LatencyData(TypedDict):
    """Latency percentiles of a concurrency run, in milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float
    mean: float


class _RunFields(TypedDict):
    test: str
    calls: int
    succeeded: int
    failed: int
    timed_out: int
    elapsed_s: float
    throughput: float
    latency_ms: LatencyData
    errors: list[str]
    error_counts: dict[str, int]
    timings: list[list[float] | None]
    outcomes: list[Outcome]


class ConcurrencyRunData(_RunFields, total=False):
    """One ``run_concurrently`` call; ``summary`` is absent from :func:`run_data` alone."""

    summary: str


class ShakeData(TypedDict):
    """One shaken test: repetitions run and the seed that failed, if one did."""

    test: str
    repetitions: int
    failed_seed: int | None


class ReportData(TypedDict):
    """Everything ``--threadcreator-report`` writes (the module docstring shows it as JSON)."""

    settings: str
    backends: list[str]
    databases_created: int
    retries: int
    setup: list[SetupData]
    concurrency_runs: list[ConcurrencyRunData]
    shake: list[ShakeData]
    kept_databases: list[str]


def run_data(nodeid: str, report: ConcurrencyReport[Any]) -> ConcurrencyRunData:
    """One concurrency run as plain JSON-able data, with per-call timings and outcomes."""
    lat = report.latency_ms
    error_counts = Counter(type(error).__name__ for error in report.errors)
    outcomes: list[Outcome] = list(report.outcomes)
    if not outcomes and report.results:
        # A report built by hand, without outcomes: tell successes from errors by identity.
        error_ids = {id(error) for error in report.errors}
        outcomes = ["error" if id(result) in error_ids else "ok" for result in report.results]
    return {
        "test": nodeid,
        "calls": len(report.results),
        "succeeded": report.succeeded,
        "failed": report.failed,
        "timed_out": report.timed_out,
        "elapsed_s": report.elapsed_s,
        "throughput": report.throughput,
        "latency_ms": {
            "p50": lat.p50,
            "p95": lat.p95,
            "p99": lat.p99,
            "max": lat.max,
            "mean": lat.mean,
        },
        "errors": sorted(error_counts),
        "error_counts": dict(sorted(error_counts.items())),
        "timings": [
            None if timing is None else [round(timing[0], 6), round(timing[1], 6)]
            for timing in report.timings
        ],
        "outcomes": outcomes,
    }


def report_data(
    runtime: Runtime | None,
    runs: Sequence[tuple[str, ConcurrencyReport[Any]]],
    *,
    settings: str,
    shaken: Sequence[tuple[str, int, int | None]] = (),
    extra_runtimes: Sequence[Runtime] = (),
) -> ReportData:
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


def merge_report_data(parts: Sequence[Mapping[str, Any]], *, settings: str) -> ReportData:
    """One report from the reports of several processes (the xdist workers, whose reports come
    over the wire as plain data)."""
    merged: ReportData = {
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
        merged["databases_created"] += int(part.get("databases_created", 0))
        merged["retries"] += int(part.get("retries", 0))
        merged["setup"] += list(part.get("setup", []))
        merged["concurrency_runs"] += list(part.get("concurrency_runs", []))
        merged["shake"] += list(part.get("shake", []))
        merged["kept_databases"] += list(part.get("kept_databases", []))
        merged["backends"] += [b for b in part.get("backends", []) if b not in merged["backends"]]
    return merged
