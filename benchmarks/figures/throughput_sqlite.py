"""SQLite throughput, in process: ThreadCreator against raw aiosqlite and plain sqlite3.

Baseline: the better of the raw aiosqlite loops (sequential or concurrent) in each repeat; the
ceiling row sets ThreadCreator's gathered creates against the same transaction in plain sqlite3,
one thread, no event loop.
"""

from __future__ import annotations

from benchlib import Goal, Row, RowSpec, median
from harness import EXTRA_CHEAP_REPEATS, Context, log

from figures.throughput_common import (
    BATCH,
    MODES,
    ceiling_row,
    common_extra,
    creates,
    missing_all,
    paired,
    run_measure,
    specs,
)

__all__ = ["SQLITE_CEILING_GOAL", "SQLITE_THROUGHPUT_GOAL", "measure"]

SQLITE_THROUGHPUT_GOAL = Goal("min_ratio", 1.5, "≥ 1.5×")
#: ThreadCreator against the same transaction in plain sqlite3 (one thread, no event loop).
SQLITE_CEILING_GOAL = Goal("min_ratio", 0.5, "≥ 0.5× ceiling")

CEILING = RowSpec(
    "throughput.sqlite.ceiling",
    "throughput",
    f"Throughput SQLite, gather ×{BATCH}, against its ceiling",
    "creates/s",
    SQLITE_CEILING_GOAL,
)


def measure(ctx: Context) -> list[Row]:
    """The sequential, gathered and ceiling rows of SQLite throughput."""
    if "sqlite" not in ctx.backends:
        return []
    import throughput

    row_specs = specs("sqlite", {mode: SQLITE_THROUGHPUT_GOAL for mode in MODES})
    # The SQLite variants sit closest to the noise: a full run gives them extra repeats.
    repeats = ctx.repeats + (EXTRA_CHEAP_REPEATS if ctx.full else 0)
    result, reason = run_measure(
        "sqlite", lambda: throughput.measure_sqlite(creates(ctx), repeats, BATCH, log)
    )
    if result is None:
        return missing_all(row_specs, reason)
    rates = result.rates
    # Per repeat, the better raw loop is the baseline; ratios are paired per repeat.
    best = [
        max(s, c) for s, c in zip(rates["raw-sequential"], rates["raw-concurrent"], strict=False)
    ]
    extra = common_extra(result)
    rows: list[Row] = []
    for mode, spec in row_specs.items():
        ours = rates[f"ours-{mode}"]
        ratios = paired(ours, best)
        rows.append(
            spec.measured(
                median(ours),
                baseline=median(best),
                baseline_label="raw aiosqlite, best of seq/conc",
                ratio=median(ratios),
                samples={k: list(v) for k, v in rates.items()},
                extra={**extra, "ratio_per_repeat": ratios},
                warning=ctx.smoke_warning,
            )
        )
    row = ceiling_row(ctx, CEILING, rates, "ceiling-sqlite3", "plain sqlite3, one thread")
    if row is not None:
        rows.append(row)
    return rows
