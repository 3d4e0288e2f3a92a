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

from benchlib import Goal, Row
from harness import Context, log

from figures.throughput_common import BATCH, creates, server_rows

__all__ = ["MYSQL_THROUGHPUT_GOAL", "measure"]

MYSQL_THROUGHPUT_GOAL = Goal("min_ratio", 1.0, "≥ 1.0×")


def measure(ctx: Context) -> list[Row]:
    """The sequential and gathered rows of MySQL/MariaDB throughput."""
    import throughput

    return server_rows(
        ctx,
        "mysql",
        MYSQL_THROUGHPUT_GOAL,
        "asyncmy",
        ctx.mysql_reason,
        lambda: throughput.measure_mysql(ctx.mysql_url, creates(ctx), ctx.repeats, BATCH, log),
    )
