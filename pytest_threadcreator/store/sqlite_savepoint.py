"""One-hop work on an aiosqlite connection that SQLAlchemy also uses (``rollback`` isolation).

SQLAlchemy's aiosqlite adapter pays about three hops to the driver's thread per statement
(cursor, execute, close). A create inside the test's one transaction is four statements
(SAVEPOINT, two INSERTs, RELEASE): run as one function on the driver's own thread, it is one hop
(:mod:`.savepoint` is the same job for async drivers). The SAVEPOINT keeps the create atomic
inside the test's outer transaction, and the statements leave the connection's nesting exactly
as they found it, so SQLAlchemy's view stays true.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosqlite

from .base import SavepointCreate, SavepointRunner, ThreadIdTaken
from .savepoint import SAVEPOINT

__all__ = ["DriverRunner", "driver_runner", "savepoint_create", "savepoint_runner"]

T = TypeVar("T")

#: Runs a function with the driver's sqlite3 connection, on the driver's thread.
DriverRunner = Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]


def driver_runner(driver: Any) -> DriverRunner[Any] | None:
    """A runner for ``driver`` if it is an aiosqlite connection, else None (use the session path).

    aiosqlite runs every call as a function on its thread (``Connection._execute``); this hands it
    ours. Anything else — another driver, or an aiosqlite without that method — gets None.
    """
    if not isinstance(driver, aiosqlite.Connection) or not hasattr(driver, "_execute"):
        return None

    def run(fn: Callable[[sqlite3.Connection], T]) -> Awaitable[T]:
        return driver._execute(lambda: fn(driver._conn))  # type: ignore[no-untyped-call]

    return run


def savepoint_runner(driver: Any) -> SavepointRunner | None:
    """Runs a :class:`SavepointCreate` as one function on ``driver``'s thread, if it is an
    aiosqlite connection (see :func:`driver_runner`), else None."""
    run = driver_runner(driver)
    if run is None:
        return None

    def run_create(create: SavepointCreate, begin: bool) -> Awaitable[list[str]]:
        job = savepoint_create(create)
        return run(job if not begin else _after_begin(job))

    return run_create


def _after_begin(job: Callable[[sqlite3.Connection], list[str]]) -> Callable[..., list[str]]:
    """``job`` preceded by the caller's pending BEGIN, in the same hop to the driver's thread."""

    def begin_then_job(conn: sqlite3.Connection) -> list[str]:
        conn.execute("BEGIN")
        return ["BEGIN", *job(conn)]

    return begin_then_job


def savepoint_create(create: SavepointCreate) -> Callable[[sqlite3.Connection], list[str]]:
    """The create as one function: both rows inside a SAVEPOINT, or neither. Returns the SQL
    it ran, for query counters."""

    def job(conn: sqlite3.Connection) -> list[str]:
        ran = [f"SAVEPOINT {SAVEPOINT}"]
        conn.execute(ran[0])
        try:
            ran.append(create.thread_sql)
            try:
                conn.execute(create.thread_sql, create.thread_params)
            except sqlite3.IntegrityError:
                if create.owner_sql is not None:
                    row = conn.execute(create.owner_sql, (create.thread_id,)).fetchone()
                    if row is not None:
                        raise ThreadIdTaken(row[0]) from None
                raise
            ran.append(create.message_sql)
            conn.execute(create.message_sql, create.message_params)
        except BaseException:
            conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            conn.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
            raise
        ran.append(f"RELEASE SAVEPOINT {SAVEPOINT}")
        conn.execute(ran[-1])
        return ran

    return job
