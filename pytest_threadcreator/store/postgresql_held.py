"""asyncpg as ``rollback`` isolation holds it: the stand-in's driver, the session's end, the
one-job create.

A held connection lives on the store's background loop for the whole run and is reached from
each test's loop through :class:`~.standin.OnLoop`. Between tests :func:`_end_session` rolls the
test back and resets the session in one hop; a create is :func:`.savepoint.savepoint_create`
run there, also in one hop.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Mapping
from typing import Any

from .base import SavepointCreate, SavepointRunner
from .savepoint import savepoint_create
from .standin import Driver, OnLoop, run_there

__all__ = ["held_savepoint_runner", "is_unique_violation", "standin_driver"]


def standin_driver() -> Driver:
    """asyncpg as :mod:`.standin` drives it."""
    from asyncpg import cursor, prepared_stmt, transaction  # type: ignore[import-untyped]

    async def connect(kwargs: Mapping[str, Any]) -> Any:
        return await importlib.import_module("asyncpg").connect(**kwargs)

    return Driver(
        name="asyncpg",
        connect=connect,
        wrapped=(
            prepared_stmt.PreparedStatement,
            transaction.Transaction,
            cursor.Cursor,
            cursor.CursorFactory,
        ),
        loop_only=frozenset({"terminate"}),
        reset=_end_session,
        close=lambda conn: conn.close(timeout=2),
        force_close=lambda conn: conn.terminate(),
    )


async def _end_session(conn: Any) -> None:
    """Put a held connection back as a new session: its transaction (the engine leaves it to
    this, see :mod:`..rollback`) rolled back, then asyncpg's reset of what outlives one."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
    await conn.reset(timeout=5)


class _Statements:
    """An asyncpg connection as :func:`.savepoint.savepoint_create` drives it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        await self._conn.execute(sql, *params)

    async def first(self, sql: str, params: tuple[Any, ...]) -> Any:
        return await self._conn.fetchval(sql, *params)


def is_unique_violation(exc: BaseException) -> bool:
    """SQLSTATE 23505 (a duplicate key), as asyncpg raises it."""
    return getattr(exc, "sqlstate", None) == "23505"


def held_savepoint_runner(driver: Any) -> SavepointRunner | None:
    """A create as one job on a held connection's loop (one hop), or None for any other driver
    connection."""
    if not isinstance(driver, OnLoop):
        return None

    def run(create: SavepointCreate, begin: bool) -> Awaitable[list[str]]:
        return run_there(
            driver,
            lambda conn: savepoint_create(
                _Statements(conn), create, begin=begin, is_duplicate=is_unique_violation
            ),
        )

    return run
