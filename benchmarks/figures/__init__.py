"""The figures, one module each, under the names ``run.py --only`` chooses them by.

Every module exposes ``measure(ctx) -> list[Row]`` (:data:`harness.FigureFunction`): the rows
it measured for the run's options, or the same rows marked not available and why.
"""

from __future__ import annotations

from harness import FigureFunction

from figures import (
    app_engine,
    concurrent,
    overhead,
    shake,
    startup,
    throughput_mysql,
    throughput_postgresql,
    throughput_sqlite,
    xdist,
)

__all__ = ["FIGURES"]

#: ``--only`` name → the figure functions it runs, in table order.
FIGURES: dict[str, tuple[FigureFunction, ...]] = {
    "overhead": (overhead.measure,),
    "throughput": (
        throughput_sqlite.measure,
        throughput_postgresql.measure,
        throughput_mysql.measure,
    ),
    "concurrent": (concurrent.measure,),
    "xdist": (xdist.measure,),
    "startup": (startup.measure,),
    "engine": (app_engine.measure,),
    "shake": (shake.measure,),
}
