"""Database: one isolated database of a test, with the reads tests assert on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import _binding, instrument, integrity
from .faults import FaultInjector
from .faults.steps import FaultDecider
from .queries import QueryCounter
from .schema import ThreadSchema
from .store.base import Store

__all__ = ["Database", "bound_database", "sync_url_of"]

#: The synchronous driver named in ``sync_url`` for each async driver the plugin uses.
_SYNC_DRIVERS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "mysql+asyncmy": "mysql+pymysql",
    "mysql+aiomysql": "mysql+pymysql",
}


def sync_url_of(url: str) -> str:
    """The same database as async ``url``, through a synchronous driver (password kept)."""
    parsed = make_url(url)
    sync = _SYNC_DRIVERS.get(parsed.drivername, parsed.get_backend_name())
    return parsed.set(drivername=sync).render_as_string(hide_password=False)


EngineFactory = Callable[[], AsyncEngine]


class Database:
    """An isolated, schema-ready database.

    ThreadCreator and the integrity reads go through :attr:`store`, which any event loop may
    await. :attr:`engine` and :attr:`sessionmaker` are for the test's own SQLAlchemy code; an
    engine is made lazily for each running event loop (an engine cannot cross loops) and
    disposed when the database is released.
    """

    def __init__(
        self,
        *,
        url: str,
        backend: str,
        schema: ThreadSchema,
        store: Store,
        engine_factory: EngineFactory,
        isolation: str = "clean",
        name: str = "",
        location: str = "",
        connection_settings: tuple[str, ...] = (),
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.backend = backend
        self.schema = schema
        self.store = store
        self.isolation = isolation
        self.name = name
        #: where the database lives, for humans (file path or server + database name)
        self.location = location or url
        #: statements run once on every new connection of an engine on this database (SQLite
        #: PRAGMAs), the app's engines included
        self.connection_settings = connection_settings
        #: driver arguments of the engines the plugin itself makes on this database (the
        #: rollback engine), as the backend decided them for the run (PostgreSQL's SSL)
        self.connect_args: dict[str, Any] = dict(connect_args or {})
        self._engine_factory = engine_factory
        # Each engine is tied to the event loop of its first connection; None until then.
        self._engines: list[AsyncEngine] = []
        self._engine_loops: dict[int, asyncio.AbstractEventLoop] = {}
        # One guard task per engine's loop: pytest-asyncio closes a test's loop *before* sync
        # fixtures tear down, cancelling pending tasks first; the guard then closes sessions and
        # disposes the engine inside the loop, while it still runs.
        self._guards: dict[int, asyncio.Task[None]] = {}
        self._sessions: list[AsyncSession] = []
        self._counters: list[QueryCounter] = []
        self._closers: list[Callable[[], None]] = []
        #: event loops the test used this database from (for leak checks after the test)
        self.loops_seen: set[asyncio.AbstractEventLoop] = set()
        #: connections the test's code left checked out, found when its engines were disposed
        self.leaked_connections = 0
        #: which engines of the test's code left connections checked out, for the failure message
        self.leak_notes: list[str] = []
        #: retries ThreadCreator took on transient contention in this test
        self.retries = 0
        #: set by the fault_injector fixture; every ThreadCreator on this database consults it
        self.fault_decider: FaultDecider | None = None
        #: the test's fault injector: its rules also act on the statements of every engine
        #: connected to this database (see :mod:`pytest_threadcreator.instrument`)
        self.fault_injector: FaultInjector | None = None

    def __repr__(self) -> str:
        return f"<Database {self.backend} {self.safe_url} isolation={self.isolation}>"

    @property
    def sync_url(self) -> str:
        """This database's URL for a synchronous driver (``sqlite:///…``, ``postgresql+psycopg://…``).

        The same database as :attr:`url`, for sync code under test (a ``Session`` service, a
        migration tool). The driver itself is the app's to install.
        """
        return sync_url_of(self.url)

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden."""
        return make_url(self.url).render_as_string(hide_password=True)

    # -- SQLAlchemy access for the test's own code ---------------------------------------
    @property
    def engine(self) -> AsyncEngine:
        """An AsyncEngine usable in the running event loop (one per loop, made on first use).

        Outside a loop it returns an engine that binds to the loop of its first connection,
        so a sync fixture can hand one to an async test of any loop scope.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for engine in self._engines:
            bound = self._engine_loops.get(id(engine))
            if bound is loop or bound is None:
                return engine
        engine = self._engine_factory()
        self._engines.append(engine)
        instrument.own_engine(engine.sync_engine)  # counted below, not by the instrumentation
        loops = self._engine_loops

        guards = self._guards
        sessions = self._sessions

        counters = self._counters

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _count(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if counters:
                label = f"engine connection {id(conn.connection.dbapi_connection) % 100_000:05d}"
                for counter in counters:
                    counter.record(label, statement)

        @event.listens_for(engine.sync_engine, "connect")
        def _record_loop(_dbapi: Any, _record: Any) -> None:
            if id(engine) not in loops:
                running = asyncio.get_running_loop()
                loops[id(engine)] = running
                self.loops_seen.add(running)
                guards[id(engine)] = running.create_task(
                    self._guard(engine, sessions), name=GUARD_TASK_NAME
                )

        return engine

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """An ``async_sessionmaker`` on :attr:`engine` (``expire_on_commit=False``)."""
        return async_sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A new AsyncSession of its own, closed on exit. Commit explicitly to keep changes."""
        async with self.sessionmaker() as session:
            yield session

    def new_session(self) -> AsyncSession:
        """A new AsyncSession, usable from any loop (callable outside one); see :meth:`close_session`."""
        session = AsyncSession(self.engine, expire_on_commit=False)
        self._sessions.append(session)
        return session

    @contextlib.asynccontextmanager
    async def count_queries(self) -> AsyncIterator[QueryCounter]:
        """Count the SQL statements run inside the block (ThreadCreator's and the test's own).

        ``async with threadcreator_db.count_queries() as queries: ...`` then
        ``queries.assert_max(n)``; ``queries.total``, ``queries.per_connection``.
        """
        counter = QueryCounter()
        self._counters.append(counter)
        if len(self._counters) == 1:
            await self.store.watch_statements(self._record_store_statement)
        try:
            yield counter
        finally:
            self._counters.remove(counter)
            if not self._counters:
                await self.store.watch_statements(None)

    def _record_store_statement(self, label: str, sql: str) -> None:
        for counter in list(self._counters):
            counter.record(label, sql)

    def checked_out(self) -> int:
        """Connections checked out right now, by the store and by every engine."""
        total = self.store.checked_out()
        for engine in self._engines:
            checked = getattr(engine.sync_engine.pool, "checkedout", None)
            if callable(checked):
                total += int(checked())
        return total

    def dispose_engines(self) -> None:
        """Close sessions and dispose engines made for the test's code (synchronous, at teardown)."""
        engines, self._engines = self._engines, []
        loops, self._engine_loops = self._engine_loops, {}
        guards, self._guards = self._guards, {}
        self._sessions = []
        for engine in engines:
            loop, guard = loops.get(id(engine)), guards.get(id(engine))
            if loop is None or guard is None or guard.done() or loop.is_closed():
                continue  # never connected, or the guard already disposed it
            if loop.is_running():  # torn down from inside the loop: let the guard finish later
                guard.cancel()
                continue
            guard.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(guard)

    async def _guard(self, engine: AsyncEngine, sessions: list[AsyncSession]) -> None:
        """Wait until cancelled, then release what the engine holds, inside its loop."""
        try:
            await asyncio.Event().wait()
        finally:
            await self._release_engine(engine, sessions)

    async def _release_engine(self, engine: AsyncEngine, sessions: list[AsyncSession]) -> None:
        for session in list(sessions):
            if session.bind is engine:
                with contextlib.suppress(Exception):
                    await session.close()
        checked = getattr(engine.sync_engine.pool, "checkedout", None)
        if callable(checked):
            self.leaked_connections += int(checked())
        await engine.dispose()

    def begin_test(self) -> None:
        """Forget what the previous test using this (shared) database left in the per-test state."""
        self.loops_seen = set()
        self.leaked_connections = 0
        self.leak_notes = []
        self.retries = 0
        self.fault_decider = None
        self.fault_injector = None

    def describe_state(self) -> list[str]:
        """Lines describing the database and its rows, for a failed test's report."""
        lines = [
            f"backend: {self.backend} ({self.isolation} isolation)",
            f"database: {self.location}",
        ]
        s = self.schema
        try:
            for table in (s.thread_table, s.message_table):
                stmt = select(func.count().label("n")).select_from(table)
                lines.append(f"rows in {table.name}: {self.store.fetch_all_sync(stmt)[0]['n']}")
            orphans = [r["id"] for r in self.store.fetch_all_sync(integrity.orphans_query(s))]
            lines.append(
                f"orphan threads: {len(orphans)}" + (f" ({_ids(orphans)})" if orphans else "")
            )
        except Exception as exc:
            lines.append(f"(row counts unavailable: {type(exc).__name__}: {exc})")
        return lines

    def pending_tasks(
        self,
        loops: Iterable[asyncio.AbstractEventLoop] = (),
        *,
        known: Collection[asyncio.Task[Any]] = (),
    ) -> list[asyncio.Task[Any]]:
        """Tasks still pending in ``loops`` and in the loops this database was used from (the
        plugin's own and those in ``known``, pending before the test began, excluded)."""
        pending = []
        for loop in {*self.loops_seen, *loops}:
            if loop.is_closed():
                continue
            for task in asyncio.all_tasks(loop):
                if task.done() or task in known or task.get_name().startswith("threadcreator-"):
                    continue
                pending.append(task)
        return pending

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` when this database is closed (synchronously, no event loop)."""
        self._closers.append(closer)

    def close(self) -> None:
        """Dispose engines, run the closers and close the store."""
        self.dispose_engines()
        closers, self._closers = self._closers, []
        for closer in closers:
            closer()
        self.store.close()

    # -- reads for assertions (see :mod:`pytest_threadcreator.integrity`) -------------------
    async def count_threads(self, user_id: str | None = None) -> int:
        """Number of threads (soft-deleted included), optionally of one user."""
        return await integrity.count_threads(self, user_id)

    async def count_messages(self, thread_id: str | None = None) -> int:
        """Number of messages, optionally of one thread."""
        return await integrity.count_messages(self, thread_id)

    async def orphan_threads(self) -> list[str]:
        """Ids of threads that have no message, in id order."""
        return await integrity.orphan_threads(self)

    async def messages_without_thread(self) -> list[str]:
        """Ids of messages whose thread row is missing (only possible without foreign keys)."""
        return await integrity.messages_without_thread(self)

    async def owner_mismatches(self) -> list[str]:
        """Ids of threads whose metadata owner differs from the owner column."""
        return await integrity.owner_mismatches(self)

    async def ownerless_threads(self) -> list[str]:
        """Ids of threads whose owner is NULL or empty (none without an owner column)."""
        return await integrity.ownerless_threads(self)

    async def assert_user_isolation(
        self,
        contexts: Iterable[Any],
        *,
        read: Callable[[Any], Awaitable[Iterable[Any]]] | None = None,
    ) -> None:
        """Assert each user sees exactly their own live threads.

        Without ``read``, through ThreadCreator's reads: ``list_threads`` returns only threads
        owned by that user, and exactly the set the table holds for them; another user's
        ``get_thread`` on one of them is refused. With ``read``, an async callable
        ``read(context)`` returning what *your app* shows that user (thread ids, or rows or
        objects with an id), it asserts that each user is shown exactly the threads the table
        holds for them, naming other users' threads that leaked in.
        """
        __tracebackhide__ = True
        await integrity.assert_user_isolation(self, contexts, read=read)

    async def lock_waits(self) -> list[str]:
        """Sessions of this database waiting for a lock, and who blocks them, one line each.

        Asked of the store: PostgreSQL's reads ``pg_locks`` joined with ``pg_stat_activity``;
        SQLite's has none, since ThreadCreator's writers queue in-process instead of waiting.
        """
        return await self.store.lock_waits()

    async def check_integrity(self) -> None:
        """Raise AssertionError naming every problem: threads without a message (unless the
        schema allows them), messages without a thread, threads without an owner or whose
        metadata owner differs, and what the schema's own ``checks`` report."""
        __tracebackhide__ = True
        await integrity.check_integrity(self)


def _ids(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", … and {len(ids) - limit} more" if len(ids) > limit else "")


GUARD_TASK_NAME = "threadcreator-engine-guard"


def bound_database() -> Database | None:
    """The running test's Database (see :func:`pytest_threadcreator._binding.current_database`)."""
    database = _binding.current_database()
    return database if isinstance(database, Database) else None
