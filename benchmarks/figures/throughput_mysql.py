"""MySQL/MariaDB throughput, in process: ThreadCreator against raw asyncmy on the same pool size.

The raw side is the best a hand-written asyncmy loop can do for the same transaction: a pool
as large as the plugin's store pool (``maxsize`` from the backend's pool plan on that server,
10 by default), and ``START TRANSACTION; INSERT thread; INSERT message; COMMIT`` sent as *one*
multi-statement packet per create (``CLIENT.MULTI_STATEMENTS``), one round trip, the same as the
plugin's MySQL store sends. Four separate awaits (one per statement) would cost four round
trips and flatter the plugin. Same rows, same ids (checked by reading one pair back from each
side). Gathered creates are held to the raw concurrent loop; sequential awaits are information
only.

With both sides at one round trip per create, what is left between them is the plugin's own
path, mostly the crossing to its background event loop and back for every create (see
"What bounds MySQL throughput" in ``benchmarks/README.md``).
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

__all__ = ["MYSQL_THROUGHPUT_GOAL", "measure"]

MYSQL_THROUGHPUT_GOAL = Goal("min_ratio", 1.0, "≥ 1.0×")


def measure(ctx: Context) -> list[Row]:
    """The sequential and gathered rows of MySQL/MariaDB throughput."""
    if "mysql" not in ctx.backends:
        return []
    import throughput

    row_specs = specs("mysql", {"sequential": None, "concurrent": MYSQL_THROUGHPUT_GOAL})
    reason = ctx.mysql_reason()
    if reason is not None:
        return missing_all(row_specs, reason)
    result, reason = run_measure(
        "mysql",
        lambda: throughput.measure_mysql(ctx.mysql_url, creates(ctx), ctx.repeats, BATCH, log),
    )
    if result is None:
        return missing_all(row_specs, reason)
    rates = result.rates
    extra = {**common_extra(result), **result.extra}
    labels = {"sequential": "raw asyncmy seq", "concurrent": "raw asyncmy conc"}
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
