"""PostgreSQL throughput, in process: ThreadCreator against raw asyncpg (a pool of 10).

Gathered creates are held to the raw concurrent loop; sequential awaits are information only.
"""

from __future__ import annotations

from benchlib import Goal, Row
from harness import Context, log

from figures.throughput_common import BATCH, creates, server_rows

__all__ = ["PG_THROUGHPUT_GOAL", "measure"]

PG_THROUGHPUT_GOAL = Goal("min_ratio", 1.0, "≥ 1.0×")


def measure(ctx: Context) -> list[Row]:
    """The sequential and gathered rows of PostgreSQL throughput."""
    import throughput

    return server_rows(
        ctx,
        "postgresql",
        PG_THROUGHPUT_GOAL,
        "asyncpg",
        ctx.pg_reason,
        lambda: throughput.measure_postgres(ctx.pg_url, creates(ctx), ctx.repeats, BATCH, log),
    )
