"""A create inside the caller's open transaction, as one job on an async driver connection.

``rollback`` isolation keeps each test in one transaction on one connection. Through
SQLAlchemy's session a create is four statements, each its own trip through the session, the
engine and (where the connection lives on another event loop) a hop to that loop. Run as one
coroutine on the driver connection itself, it is the same four statements back to back, and at
most one hop. The SAVEPOINT keeps the create atomic inside the outer transaction, and the
statements leave the connection's nesting as they found it, so SQLAlchemy's view stays true.
(:mod:`.sqlite_savepoint` is the same job for aiosqlite, whose driver runs functions on a
thread of its own.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .base import SavepointCreate, ThreadIdTaken

__all__ = ["SAVEPOINT", "Statements", "savepoint_create"]

#: The name of the create's savepoint.
SAVEPOINT = "threadcreator_create"


class Statements(Protocol):
    """One driver connection, as the job needs it."""

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        """Run one statement."""

    async def first(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first column of the first row of a SELECT, or None without a row."""


async def savepoint_create(
    conn: Statements,
    create: SavepointCreate,
    *,
    begin: bool,
    is_duplicate: Callable[[Exception], bool],
) -> list[str]:
    """Both rows inside a SAVEPOINT, or neither; ``begin`` sends the caller's pending BEGIN
    first. Raises :class:`ThreadIdTaken` when the thread INSERT of an explicit id meets a
    duplicate key (``is_duplicate``) and the thread exists. Returns the SQL it ran."""
    ran: list[str] = []
    if begin:
        ran.append("BEGIN")
        await conn.execute("BEGIN")
    ran.append(f"SAVEPOINT {SAVEPOINT}")
    await conn.execute(ran[-1])
    inserting_thread = True
    try:
        ran.append(create.thread_sql)
        await conn.execute(create.thread_sql, create.thread_params)
        inserting_thread = False
        ran.append(create.message_sql)
        await conn.execute(create.message_sql, create.message_params)
    except BaseException as exc:
        # PostgreSQL refuses everything but a rollback after a failed statement: roll back
        # first, then look the owner up.
        await conn.execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        await conn.execute(f"RELEASE SAVEPOINT {SAVEPOINT}")
        if (
            inserting_thread
            and create.owner_sql is not None
            and isinstance(exc, Exception)
            and is_duplicate(exc)
        ):
            owner = await conn.first(create.owner_sql, (create.thread_id,))
            if owner is not None:
                raise ThreadIdTaken(str(owner)) from None
        raise
    ran.append(f"RELEASE SAVEPOINT {SAVEPOINT}")
    await conn.execute(ran[-1])
    return ran
