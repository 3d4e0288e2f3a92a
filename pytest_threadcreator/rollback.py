"""``rollback`` isolation: one connection per test, in a transaction rolled back at the end.

Every session of the test joins that connection's transaction through a SAVEPOINT
(``join_transaction_mode="create_savepoint"``), so a session's ``commit()`` is visible to the
test's later sessions and nothing survives the test. Sessions share the one connection one at a
time: this mode is for single-flow logic tests; concurrency guarantees are for ``clean``/``fresh``.

The engine behind it is made once per database and serves every test, whatever its event loop:
on SQLite it holds one aiosqlite connection for the whole run (aiosqlite connections are not
tied to a loop), on PostgreSQL it keeps no pool (asyncpg connections are), so a test pays for
no engine and, on SQLite, for no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
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
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.util import await_only

from .backends.session import SessionStore
from .database import Database

__all__ = ["RollbackDatabase"]

_OWNER = "threadcreator_rollback_owner"
_GUARD_NAME = "threadcreator-rollback-guard"


@dataclass
class _Shared:
    connection: AsyncConnection
    transaction: AsyncTransaction
    lock: asyncio.Lock
    guard: asyncio.Task[None]


class _SharedBindSession(Session):
    """Binds to its test's shared connection, opened on first use in the running loop."""

    def get_bind(self, *args: Any, **kwargs: Any) -> Any:
        owner: RollbackDatabase = self.info[_OWNER]
        shared: _Shared = await_only(owner._shared_for_loop())
        return shared.connection.sync_connection


class RollbackDatabase(Database):
    """A view of ``base`` whose sessions all share one connection and one outer transaction."""

    def __init__(self, base: Database) -> None:
        super().__init__(
            url=base.url,
            backend=base.backend,
            schema=base.schema,
            store=base.store,  # replaced below: writes go through the shared connection
            engine_factory=lambda: _rollback_engine(base),
            isolation="rollback",
            name=base.name,
            location=base.location,
        )
        self.base = base
        self._shared: dict[asyncio.AbstractEventLoop, _Shared] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._sessionmaker = async_sessionmaker(
            sync_session_class=_SharedBindSession,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            info={_OWNER: self},
        )
        self.store = SessionStore(_LockedSessions(self), base.schema)

    @property
    def engine(self) -> AsyncEngine:
        """The database's rollback engine (one for all tests; see the module docstring)."""
        return _rollback_engine(self.base)

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
        # Concurrent first uses must not each check out a connection: there is one.
        async with self._opening.setdefault(loop, asyncio.Lock()):
            shared = self._shared.get(loop)
            if shared is None:
                self.loops_seen.add(loop)
                connection = await self.engine.connect()
                transaction = await connection.begin()
                guard = loop.create_task(
                    _roll_back_when_cancelled(connection, transaction), name=_GUARD_NAME
                )
                shared = _Shared(connection, transaction, asyncio.Lock(), guard)
                self._shared[loop] = shared
        return shared

    def dispose_engines(self) -> None:
        """Roll the test back: its loop may be gone (pytest-asyncio closed it), or still here."""
        shared, self._shared = self._shared, {}
        for loop, item in shared.items():
            if item.guard.done() or loop.is_closed():
                continue  # the loop's shutdown cancelled the guard, which rolled back
            item.guard.cancel()
            if not loop.is_running():
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(item.guard)

    def describe_state(self) -> list[str]:
        return [
            f"backend: {self.backend} (rollback isolation)",
            f"database: {self.location}",
            "row counts: not shown in rollback isolation (the test's rows live only in its own "
            "uncommitted transaction); rerun with --threadcreator-isolation=clean to see them",
        ]

    def close(self) -> None:
        self.dispose_engines()


async def _roll_back_when_cancelled(
    connection: AsyncConnection, transaction: AsyncTransaction
) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await transaction.rollback()
        with contextlib.suppress(Exception):
            await connection.close()  # back to the engine: the connection itself stays open


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


_ENGINES: weakref.WeakKeyDictionary[Database, AsyncEngine] = weakref.WeakKeyDictionary()


def _rollback_engine(base: Database) -> AsyncEngine:
    """The one rollback engine of ``base``, made on first use and closed with ``base``."""
    engine = _ENGINES.get(base)
    if engine is None:
        drivers: list[Any] = []
        engine = _make_rollback_engine(base, drivers)
        _ENGINES[base] = engine
        base.on_close(lambda: _stop_drivers(drivers))
    return engine


def _make_rollback_engine(base: Database, drivers: list[Any]) -> AsyncEngine:
    """The engine; ``drivers`` collects its driver connections so they can be closed loop-free."""
    if base.backend != "sqlite":
        return create_async_engine(base.url, poolclass=NullPool)
    from .backends.sqlite import BUSY_TIMEOUT_MS, sqlite_pragmas

    engine = create_async_engine(
        base.url, poolclass=StaticPool, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas():
            cursor.execute(pragma)
        cursor.close()
        # pysqlite defers BEGIN until the first DML, which breaks SAVEPOINTs: take BEGIN over.
        dbapi_connection.isolation_level = None
        drivers.append(dbapi_connection.driver_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _stop_drivers(drivers: list[Any]) -> None:
    """Close the rollback engine's connections without an event loop (aiosqlite can)."""

    def stop_all() -> None:
        for driver in drivers:
            stop = getattr(driver, "stop", None)  # aiosqlite.Connection.stop()
            if callable(stop):
                with contextlib.suppress(Exception):
                    stop()

    # From a thread with no event loop: stop() then answers no future, so a loop that closes
    # before the driver's thread is done cannot turn the answer into an error in that thread.
    worker = threading.Thread(target=stop_all, name="threadcreator-rollback-close")
    worker.start()
    worker.join()
