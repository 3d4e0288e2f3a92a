"""PostgreSQL throughput, in process: ThreadCreator against raw asyncpg (a pool of 10).

Gathered creates are held to the raw concurrent loop; sequential awaits are information only.
"""

from __future__ import annotations

from benchlib import Goal, Row, median
from harness import Context, log

from figures.throughput_common import (
    BATCH,
    common_extra,
    creates,
    missing_all,
    paired,
    run_measure,
    specs,
)

__all__ = ["PG_THROUGHPUT_GOAL", "measure"]

PG_THROUGHPUT_GOAL = Goal("min_ratio", 1.0, "≥ 1.0×")


def measure(ctx: Context) -> list[Row]:
    """The sequential and gathered rows of PostgreSQL throughput."""
    if "postgresql" not in ctx.backends:
        return []
    import throughput

    row_specs = specs("postgresql", {"sequential": None, "concurrent": PG_THROUGHPUT_GOAL})
    reason = ctx.pg_reason()
    if reason is not None:
        return missing_all(row_specs, reason)
    result, reason = run_measure(
        "postgresql",
        lambda: throughput.measure_postgres(ctx.pg_url, creates(ctx), ctx.repeats, BATCH, log),
    )
    if result is None:
        return missing_all(row_specs, reason)
    rates = result.rates
    extra = common_extra(result)
    labels = {"sequential": "raw asyncpg seq", "concurrent": "raw asyncpg conc"}
    rows: list[Row] = []
    for mode, spec in row_specs.items():
        ours, base = rates[f"ours-{mode}"], rates[f"raw-{mode}"]
        ratios = paired(ours, base)
        rows.append(
            spec.measured(
                median(ours),
                baseline=median(base),
                baseline_label=labels[mode],
                ratio=median(ratios),
                samples={k: list(v) for k, v in rates.items()},
                extra={**extra, "ratio_per_repeat": ratios},
                warning=ctx.smoke_warning,
            )
        )
    return rows
