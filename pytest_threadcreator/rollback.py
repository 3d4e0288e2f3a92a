"""``rollback`` isolation: one connection per test, in a transaction rolled back at the end.

Every session of the test joins that connection's transaction through a SAVEPOINT
(``join_transaction_mode="create_savepoint"``), so a session's ``commit()`` is visible to the
test's later sessions and nothing survives the test. Sessions share the one connection one at a
time: this mode is for single-flow logic tests; concurrency guarantees are for ``clean``/``fresh``.

The engine behind it is made once per database and serves every test, whatever its event loop,
and on SQLite and PostgreSQL holds one connection for the whole run: an aiosqlite connection
(not tied to a loop), or an asyncpg connection kept on the backend's background loop and reached
through a stand-in (:mod:`.store.standin`; asyncpg connections belong to their loop). On MySQL a
test opens a connection of its own: a MySQL connection is cheap to open, and measured side by
side the stand-in's hop per statement cost more than it saved (8.4 ms per test against 6.5 ms).

ThreadCreator's create is one job on that connection (the store's
:meth:`~.store.base.Store.savepoint_runner`): a SAVEPOINT, both INSERTs and its RELEASE back to
back, in one hop where the connection lives elsewhere. Where the engine holds the connection
for the run, the test's BEGIN is held back and goes with its first statement; on PostgreSQL the
engine runs in AUTOCOMMIT, so the driver adapter leaves the transaction to this module, and the
session's reset rolls the test back in the same hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, event, select
from sqlalchemy.engine import make_url
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

from . import instrument
from ._background import CANCEL_CLEANUP_TIMEOUT, wait_uncancellable
from .database import Database
from .errors import ConfigurationError
from .faults.steps import FaultDecider
from .store.base import SavepointCreate, SavepointRunner, StatementCallback
from .store.compile import RowInsert
from .store.session import SessionStore
from .store.sqlite_savepoint import DriverRunner, driver_runner

__all__ = ["RollbackDatabase"]

_OWNER = "threadcreator_rollback_owner"
#: How query counters name the test's one connection.
_LABEL = "rollback connection"
_GUARD_NAME = "threadcreator-rollback-guard"


@dataclass
class _Shared:
    connection: AsyncConnection
    transaction: AsyncTransaction
    lock: asyncio.Lock
    guard: asyncio.Task[None]
    #: runs a function on the driver's own thread (aiosqlite), or None
    run: DriverRunner[Any] | None = None
    #: runs a create as one job on the connection, or None (the session path)
    create: SavepointRunner | None = None


@dataclass
class _EngineState:
    """What the events of one rollback engine report to, and what they hold back."""

    #: the running test's query counters
    watcher: StatementCallback | None = None
    #: the test's transaction began for SQLAlchemy, but its BEGIN was not sent yet: it goes to
    #: the driver with the first statement (a create's one job, or ahead of a session's SQL),
    #: so opening the test's transaction costs no hop of its own
    begin_pending: bool = False
    #: puts a held connection's session back as new after the test's rollback (what the
    #: store's :class:`HeldConnections` offers), or None where each test has its own connection
    reset_session: Callable[[Any], Awaitable[None]] | None = None


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
            connect_args=base.connect_args,
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
        self.store = _RollbackStore(self)

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
                raw = await connection.get_raw_connection()
                run = driver_runner(raw.driver_connection)
                reset = _engine_state(self.engine).reset_session
                after: Callable[[], Awaitable[None]] | None = None
                if reset is not None:
                    after = functools.partial(reset, raw.driver_connection)
                guard = loop.create_task(
                    _roll_back_when_cancelled(
                        functools.partial(_end_test, connection, transaction, run, after)
                    ),
                    name=_GUARD_NAME,
                )
                create = self.base.store.savepoint_runner(raw.driver_connection)
                shared = _Shared(connection, transaction, asyncio.Lock(), guard, run, create)
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


async def _roll_back_when_cancelled(end_test: Callable[[], Awaitable[None]]) -> None:
    """Wait until cancelled, then ``end_test()`` (:func:`_end_test` of the test's connection)."""
    try:
        await asyncio.Event().wait()
    finally:
        # A closing loop cancels every task, this one too, maybe while it rolls back after the
        # plugin's own cancel: the end of the test runs to its end all the same.
        ending = asyncio.ensure_future(end_test())
        await wait_uncancellable(ending, CANCEL_CLEANUP_TIMEOUT)


async def _end_test(
    connection: AsyncConnection,
    transaction: AsyncTransaction,
    run: DriverRunner[Any] | None,
    reset_session: Callable[[], Awaitable[None]] | None,
) -> None:
    try:
        await transaction.rollback()
    except Exception:
        if run is not None:  # the engine skips the reset on return: end it at the driver
            with contextlib.suppress(Exception):
                await run(_driver_rollback)
    if reset_session is not None:
        # What outlives a rollback (session advisory locks, LISTEN, SET SESSION outside
        # the transaction, open cursors) must not reach the next test on this connection.
        try:
            await reset_session()
        except Exception:
            with contextlib.suppress(Exception):
                await connection.invalidate()  # the next test opens a new one
    with contextlib.suppress(Exception):
        await connection.close()  # back to the engine: the connection itself stays open


def _driver_rollback(conn: Any) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class _RollbackStore(SessionStore):
    """ThreadCreator's path in rollback isolation: sessions on the shared connection, one at a
    time; a create without fault steps is one job on the connection where the store knows how
    (aiosqlite, asyncpg held on its loop, asyncmy)."""

    def __init__(self, database: RollbackDatabase) -> None:
        super().__init__(_LockedSessions(database), database.base.schema)
        self._database = database
        self._state = _engine_state(database.engine)
        compiled = _compiled_for(database.base)
        self._thread_rows = compiled.thread_rows
        self._message_rows = compiled.message_rows
        self._owner_sql = compiled.owner_sql

    async def lock_waits(self) -> list[str]:
        """The base database's lock waits (read on its own store, outside the test's
        transaction)."""
        return await self._database.base.store.lock_waits()

    async def create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        *,
        explicit_id: bool,
        decide: FaultDecider | None = None,
    ) -> None:
        shared = await self._database._shared_for_loop()
        if decide is not None or shared.create is None:  # fault steps need the session path
            await super().create(thread_row, message_row, explicit_id=explicit_id, decide=decide)
            return
        t_plan = self._thread_rows.plan(thread_row)
        m_plan = self._message_rows.plan(message_row)
        create = SavepointCreate(
            t_plan.sql,
            t_plan.params(thread_row),
            m_plan.sql,
            m_plan.params(message_row),
            owner_sql=self._owner_sql if explicit_id else None,
            thread_id=thread_row[self.schema.thread_id_column],
        )
        state = self._state
        async with shared.lock:
            begin, state.begin_pending = state.begin_pending, False
            ran = await shared.create(create, begin)
        watcher = self._state.watcher
        if watcher is not None:
            for sql in ran:
                watcher(_LABEL, sql)

    async def watch_statements(self, callback: StatementCallback | None) -> None:
        self._state.watcher = callback


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


@dataclass(frozen=True)
class _Compiled:
    """The SQL of a create in rollback isolation, compiled once per database, not per test."""

    thread_rows: RowInsert
    message_rows: RowInsert
    owner_sql: str


def _compiled_for(base: Database) -> _Compiled:
    compiled = _COMPILED.get(base)
    if compiled is None:
        dialect = _rollback_engine(base).dialect
        schema = base.schema
        t = schema.thread_table
        owner = select(t.c[schema.owner_column or schema.thread_id_column]).where(
            t.c[schema.thread_id_column] == bindparam("thread_id")
        )
        compiled = _COMPILED[base] = _Compiled(
            RowInsert(t, dialect),
            RowInsert(schema.message_table, dialect),
            str(owner.compile(dialect=dialect)),
        )
    return compiled


_ENGINES: weakref.WeakKeyDictionary[Database, AsyncEngine] = weakref.WeakKeyDictionary()
_COMPILED: weakref.WeakKeyDictionary[Database, _Compiled] = weakref.WeakKeyDictionary()
_STATES: weakref.WeakKeyDictionary[Any, _EngineState] = weakref.WeakKeyDictionary()

#: What SQLite and PostgreSQL say when a session releases a savepoint another one already ended.
_LOST_SAVEPOINT = re.compile(r"no such savepoint|savepoint \S+ does not exist", re.IGNORECASE)


def _engine_state(engine: AsyncEngine) -> _EngineState:
    return _STATES.setdefault(engine.sync_engine, _EngineState())


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
    setup = base.store.loop_free_connections
    if setup is None:
        held = _held_connection_engine(base)
        if held is not None:
            return held
        # Connections belong to their loop: none is kept between tests. The guard rolls the
        # test back itself, and a closed connection keeps nothing: no second rollback on return.
        engine = create_async_engine(
            base.url,
            poolclass=NullPool,
            pool_reset_on_return=None,
            connect_args=base.connect_args,
        )
        _watch(engine)
        return engine

    # The guard ends the test's transaction itself: a reset on return would be one more hop.
    engine = create_async_engine(
        base.url,
        poolclass=StaticPool,
        pool_reset_on_return=None,
        connect_args={"timeout": setup.busy_timeout_s},
    )
    _watch(engine)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in setup.pragmas:
            cursor.execute(pragma)
        cursor.close()
        # pysqlite defers BEGIN until the first DML, which breaks SAVEPOINTs: take BEGIN over.
        dbapi_connection.isolation_level = None
        drivers.append(dbapi_connection.driver_connection)

    _take_begin_over(engine)
    return engine


def _held_connection_engine(base: Database) -> AsyncEngine | None:
    """An engine on one connection the store keeps for the whole run (see the module
    docstring), or None where the store keeps none for this engine's driver."""
    held = base.store.held_connections()
    if held is None or make_url(base.url).get_driver_name() != held.driver:
        return None

    async def connect(**kwargs: Any) -> Any:
        return await held.connect(kwargs)

    # The dialect calls ``async_creator_fn`` with the driver's own connect arguments, having
    # taken its adapter's (the URL's prepared_statement_cache_size, say) for itself.
    # In AUTOCOMMIT the driver adapter leaves transactions alone: the test's BEGIN goes with
    # its first statement, and held.reset rolls the test back with the session's reset.
    engine = create_async_engine(
        base.url,
        poolclass=StaticPool,
        pool_reset_on_return=None,
        isolation_level="AUTOCOMMIT",
        connect_args={**base.connect_args, "async_creator_fn": connect},
    )
    _watch(engine)
    _take_begin_over(engine)
    _engine_state(engine).reset_session = held.reset
    base.on_close(held.close)
    return engine


def _take_begin_over(engine: AsyncEngine) -> None:
    """The test's BEGIN is held back and sent with its first statement (a create's one job, or
    ahead of a session's SQL): opening the test's transaction costs no hop of its own."""
    state = _engine_state(engine)

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(_conn: Any) -> None:
        state.begin_pending = True

    @event.listens_for(engine.sync_engine, "commit")
    @event.listens_for(engine.sync_engine, "rollback")
    def _end(_conn: Any) -> None:
        state.begin_pending = False  # never sent: nothing to end on the driver


def _send_begin(driver: Any) -> Any:
    """Send BEGIN on ``driver``: one hop to aiosqlite's thread, or to a held connection's loop."""
    run = driver_runner(driver)
    if run is not None:
        return run(_driver_begin)
    return driver.execute("BEGIN")


def _driver_begin(conn: Any) -> None:
    conn.execute("BEGIN")


def _watch(engine: AsyncEngine) -> None:
    """Report the engine's statements to the running test's counters; name a lost savepoint."""
    state = _engine_state(engine)
    instrument.own_engine(engine.sync_engine)  # counted here, not by the instrumentation

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if state.begin_pending:  # the test's BEGIN goes first, in one hop
            state.begin_pending = False
            await_only(_send_begin(conn.connection.driver_connection))
            if state.watcher is not None:
                state.watcher(_LABEL, "BEGIN")
        if state.watcher is not None:
            state.watcher(_LABEL, statement)

    @event.listens_for(engine.sync_engine, "handle_error")
    def _lost_savepoint(context: Any) -> None:
        if _LOST_SAVEPOINT.search(str(context.original_exception)):
            raise ConfigurationError(
                "rollback isolation runs the test's sessions one at a time on one connection, "
                "but two of them overlapped: one ended a savepoint the other still used "
                f"({context.original_exception}). For concurrent sessions use clean isolation: "
                "--threadcreator-isolation=clean, or @pytest.mark.threadcreator(isolation='clean') "
                "on the test"
            ) from context.original_exception


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
