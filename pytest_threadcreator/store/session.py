"""SessionStore: the data path over a plain ``async_sessionmaker`` (the caller's own engine).

Used when ThreadCreator is given an ``async_sessionmaker`` and for ``rollback`` isolation. Each
create opens its own session and transaction (``sessionmaker.begin()``, cancellation-safe); on
SQLite the transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers queue on the lock.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Insert, Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import instrument
from ..faults.steps import FaultDecider, apply_fault
from ..schema import ThreadSchema
from .base import Query, StatementCallback, Store, ThreadIdTaken
from .transient import is_transient_error

__all__ = ["SessionStore"]

#: Dialects whose writers queue on a ``BEGIN IMMEDIATE`` instead of failing later on the lock.
_WRITERS_QUEUE_ON_BEGIN = frozenset({"sqlite"})


@functools.lru_cache(maxsize=64)
def _insert(table: Table) -> Insert:
    """``insert(table)``, made once per table (a rollback test makes a store of its own)."""
    return insert(table)


class SessionStore(Store):
    """Creates and reads through sessions of an ``async_sessionmaker`` on the running loop."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession] | Any,
        schema: ThreadSchema,
        *,
        lock: asyncio.Lock | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.schema = schema
        self._lock = lock  # rollback isolation: sessions share one connection one at a time
        self._thread_insert = _insert(schema.thread_table)
        self._message_insert = _insert(schema.message_table)

    async def _immediate(self, session: AsyncSession) -> None:
        conn = await session.connection()
        if conn.dialect.name in _WRITERS_QUEUE_ON_BEGIN:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            if driver is not None and not getattr(driver, "in_transaction", True):
                await conn.exec_driver_sql("BEGIN IMMEDIATE")

    async def create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        *,
        explicit_id: bool,
        decide: FaultDecider | None = None,
    ) -> None:
        if self._lock is not None:
            async with self._lock:
                await self._create(thread_row, message_row, explicit_id, decide)
        else:
            await self._create(thread_row, message_row, explicit_id, decide)

    async def _create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        explicit_id: bool,
        decide: FaultDecider | None,
    ) -> None:
        s = self.schema
        token = instrument.store_steps.set(True)  # the steps below are this store's own
        try:
            async with self.sessionmaker.begin() as session:
                await self._immediate(session)
                await apply_fault(decide, "thread_insert")
                await session.execute(self._thread_insert, [dict(thread_row)])
                await apply_fault(decide, "message_insert")
                await session.execute(self._message_insert, [dict(message_row)])
                await apply_fault(decide, "commit")
        except IntegrityError:
            if not explicit_id:
                raise
            t = s.thread_table
            thread_id = thread_row[s.thread_id_column]
            # Without an owner column the id itself says whether the thread exists.
            found = t.c[s.owner_column or s.thread_id_column]
            async with self.sessionmaker() as session:
                row = (
                    await session.execute(select(found).where(t.c[s.thread_id_column] == thread_id))
                ).first()
            if row is None:
                raise
            raise ThreadIdTaken(row[0] if s.owner_column is not None else None) from None
        finally:
            instrument.store_steps.reset(token)

    async def fetch_all(self, statement: Query) -> list[dict[str, Any]]:
        if self._lock is not None:
            async with self._lock:
                return await self._fetch(statement)
        return await self._fetch(statement)

    async def _fetch(self, statement: Query) -> list[dict[str, Any]]:
        async with self.sessionmaker() as session:
            result = await session.execute(statement)
            return [dict(row) for row in result.mappings()]

    def is_transient(self, exc: BaseException) -> bool:
        return is_transient_error(exc)

    async def watch_statements(self, callback: StatementCallback | None) -> None:
        # Statements go through the caller's engine, which the Database's engine events see.
        return None

    def reset(self) -> None:
        raise NotImplementedError("a SessionStore does not own its database")

    def close(self) -> None:
        pass
