"""``rollback`` isolation: one connection per test, in a transaction rolled back at the end.

Every session of the test joins that connection's transaction through a SAVEPOINT
(``join_transaction_mode="create_savepoint"``), so a session's ``commit()`` is visible to the
test's later sessions and nothing survives the test. Sessions share the one connection one at a
time: this mode is for single-flow logic tests; concurrency guarantees are for ``clean``/``fresh``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    AsyncTransaction,
    async_sessionmaker,
)
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from .backends.session import SessionStore
from .database import Database

__all__ = ["RollbackDatabase"]


@dataclass
class _Shared:
    connection: AsyncConnection
    transaction: AsyncTransaction
    lock: asyncio.Lock


class RollbackDatabase(Database):
    """A view of ``base`` whose sessions all share one connection and one outer transaction."""

    def __init__(self, base: Database) -> None:
        super().__init__(
            url=base.url,
            backend=base.backend,
            schema=base.schema,
            store=base.store,  # replaced below; the base store is never used for writes here
            engine_factory=lambda: _rollback_engine(base),
            isolation="rollback",
            name=base.name,
            location=base.location,
        )
        self.base = base
        self._shared: dict[asyncio.AbstractEventLoop, _Shared] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        owner = self

        class _SharedBindSession(Session):
            """Binds to the test's shared connection, opened on first use in the running loop."""

            def get_bind(self, *args: Any, **kwargs: Any) -> Any:
                shared: _Shared = await_only(owner._shared_for_loop())
                return shared.connection.sync_connection

        self._sessionmaker = async_sessionmaker(
            sync_session_class=_SharedBindSession,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
        )
        self.store = SessionStore(_LockedSessions(self), base.schema)

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Sessions joined to the test's one connection (a commit releases a SAVEPOINT)."""
        return self._sessionmaker

    def new_session(self) -> AsyncSession:
        return self._sessionmaker()

    async def _shared_for_loop(self) -> _Shared:
        loop = asyncio.get_running_loop()
        shared = self._shared.get(loop)
        if shared is not None:
            return shared
        # Concurrent first uses must not each check out a connection: the pool holds one.
        async with self._opening.setdefault(loop, asyncio.Lock()):
            shared = self._shared.get(loop)
            if shared is None:
                connection = await self.engine.connect()
                transaction = await connection.begin()
                shared = _Shared(
                    connection=connection, transaction=transaction, lock=asyncio.Lock()
                )
                self._shared[loop] = shared
        return shared

    async def _release_engine(self, engine: AsyncEngine, sessions: list[AsyncSession]) -> None:
        # Roll the test back and return the connection before the engine is disposed.
        shared = self._shared.pop(asyncio.get_running_loop(), None)
        if shared is not None and shared.connection.engine is engine:
            with contextlib.suppress(Exception):
                await shared.transaction.rollback()
            with contextlib.suppress(Exception):
                await shared.connection.close()
        await super()._release_engine(engine, sessions)

    def describe_state(self) -> list[str]:
        return [
            f"backend: {self.backend} (rollback isolation)",
            f"database: {self.location}",
            "row counts: not shown in rollback isolation (the test's rows live only in its own "
            "uncommitted transaction); rerun with --threadcreator-isolation=clean to see them",
        ]

    def close(self) -> None:
        self.dispose_engines()


class _LockedSessions:
    """``sessionmaker``-like: sessions on the shared connection, one at a time."""

    def __init__(self, database: RollbackDatabase) -> None:
        self._database = database

    @contextlib.asynccontextmanager
    async def _session(self, begin: bool) -> AsyncIterator[AsyncSession]:
        shared = await self._database._shared_for_loop()
        async with shared.lock:
            async with self._database.sessionmaker() as session:
                if begin:
                    async with session.begin():
                        yield session
                else:
                    yield session

    def __call__(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        return self._session(False)

    def begin(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]:
        return self._session(True)


def _rollback_engine(base: Database) -> AsyncEngine:
    if base.backend != "sqlite":
        engine: AsyncEngine = base._engine_factory()
        return engine
    from .backends.sqlite import make_sqlite_engine

    engine = make_sqlite_engine(base.location, pool_size=1, max_overflow=0)

    # pysqlite defers BEGIN until the first DML, which breaks SAVEPOINTs: take BEGIN over.
    @event.listens_for(engine.sync_engine, "connect")
    def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine
