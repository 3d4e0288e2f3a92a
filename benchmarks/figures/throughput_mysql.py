"""MySQL/MariaDB throughput, in process: ThreadCreator against raw asyncmy on the same pool size.

The raw side is the best a hand-written asyncmy loop can do for the same transaction: a pool
as large as the plugin's store pool (``maxsize`` from the backend's pool plan on that server,
10 by default), and ``START TRANSACTION; INSERT thread; INSERT message; COMMIT`` sent as *one*
multi-statement packet per create (``CLIENT.MULTI_STATEMENTS``), one round trip, the same as the
plugin's MySQL store sends. Four separate awaits (one per statement) would cost four round
trips and flatter the plugin. Same rows, same ids (checked by reading one pair back from each
side). Gathered creates are held to the raw concurrent loop; sequential awaits are information
only.

Under gather the plugin's store sends up to 8 waiting creates in one packet and one
transaction (one multi-row INSERT per table, one COMMIT): a hand-written loop sends a
transaction per create. The ceiling row sets the gathered creates against that same design
written bare in raw asyncmy (``ceiling-asyncmy``: lanes, packets, no per-create futures, no
second event loop); it has no goal: it says how much of its design's speed the plugin keeps.
"""

from __future__ import annotations

from typing import Any

from benchlib import Goal, Row, RowSpec
from harness import Context, log

from figures.throughput_common import BATCH, ceiling_row, creates, server_rows

__all__ = ["MYSQL_THROUGHPUT_GOAL", "measure"]

MYSQL_THROUGHPUT_GOAL = Goal("min_ratio", 1.0, "≥ 1.0×")

CEILING = RowSpec(
    "throughput.mysql.ceiling",
    "throughput",
    f"Throughput MySQL, gather ×{BATCH}, against its design bare",
    "creates/s",
    None,
)


def measure(ctx: Context) -> list[Row]:
    """The sequential, gathered and ceiling rows of MySQL/MariaDB throughput."""
    import throughput

    measured: list[Any] = []

    def measure() -> throughput.ThroughputResult:
        result = throughput.measure_mysql(ctx.mysql_url, creates(ctx), ctx.repeats, BATCH, log)
        measured.append(result)
        return result

    rows = server_rows(ctx, "mysql", MYSQL_THROUGHPUT_GOAL, "asyncmy", ctx.mysql_reason, measure)
    if measured:
        name, label = throughput.MYSQL_CEILING[0], "raw asyncmy, the same packets"
        row = ceiling_row(ctx, CEILING, measured[0].rates, name, label)
        if row is not None:
            rows.append(row)
    return rows
