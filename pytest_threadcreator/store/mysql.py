"""The data path of one MySQL/MariaDB database: :class:`MySqlStore`, on an asyncmy pool.

The pool lives on one private background event loop (given by the backend), so a database
outlives the test's event loop. ThreadCreator's create is one round trip: ``START TRANSACTION``,
both INSERTs and ``COMMIT`` sent as one multi-statement packet (the server stops at the first
failing statement; the store then rolls back); creates that wait at the same time share a
packet and its transaction, one multi-row INSERT per table (:mod:`.queued`,
:mod:`.mysql_batch`). With a fault decider it steps through the same transaction one statement
at a time. A reset is one round trip too (one transaction: ``DELETE`` of every table, foreign
key checks off for its span, the setup hook's rows copied back from the template).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.dialects.mysql import asyncmy as sa_asyncmy

from .._background import BackgroundLoop
from ..errors import BackendUnavailableError, ConfigurationError, DatabaseError
from ..faults.steps import FaultDecider, apply_fault
from .base import (
    DEFAULT_STORE_POOL,
    Query,
    SavepointCreate,
    SavepointRunner,
    StatementCallback,
    Store,
    ThreadIdTaken,
)
from .compile import compile_select, insert_plan
from .mysql_batch import MySqlCreateQueue
from .savepoint import savepoint_create
from .transient import is_mysql_transient

if TYPE_CHECKING:
    from ..schema import ThreadSchema

__all__ = [
    "ADMIN_TIMEOUT",
    "MULTI_STATEMENTS",
    "MySqlStore",
    "asyncmy_module",
    "close_pool",
    "open_pool",
    "query",
    "quote",
]

ACQUIRE_TIMEOUT = 30.0
ADMIN_TIMEOUT = 60.0
#: asyncmy's CLIENT.MULTI_STATEMENTS flag: several statements in one packet.
MULTI_STATEMENTS = 1 << 16
#: MySQL's error for a duplicate key.
_DUPLICATE_KEY = 1062
_INSTALL = "pip install 'pytest-threadcreator[mysql]'"

T = TypeVar("T")

_DIALECT = sa_asyncmy.dialect()
_PREPARER = _DIALECT.identifier_preparer


def asyncmy_module() -> Any:
    """The asyncmy module, or BackendUnavailableError saying how to install it."""
    try:
        return importlib.import_module("asyncmy")
    except ImportError:
        raise BackendUnavailableError(
            f"the MySQL/MariaDB backend needs the asyncmy driver: {_INSTALL}"
        ) from None


def quote(name: str) -> str:
    """A MySQL identifier in backquotes."""
    return "`" + name.replace("`", "``") + "`"


async def query(conn: Any, sql: str, params: tuple[Any, ...] | None = None) -> list[Any]:
    """Run ``sql`` (one or more statements) in one round trip; the first result's rows
    (``params`` None: a % in ``sql`` is sent as it is)."""
    async with conn.cursor() as cursor:
        await cursor.execute(sql, params)
        rows = list(await cursor.fetchall() or ())
        while await cursor.nextset():
            pass
    return rows


class _Cursor:
    """An asyncmy cursor as :func:`.savepoint.savepoint_create` drives it."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        await self._cursor.execute(sql, params or None)

    async def first(self, sql: str, params: tuple[Any, ...]) -> Any:
        await self._cursor.execute(sql, params)
        row = await self._cursor.fetchone()
        return None if row is None else row[0]


def _is_duplicate_key(exc: Exception) -> bool:
    return exc.args[:1] == (_DUPLICATE_KEY,)


async def _create_in_savepoint(conn: Any, create: SavepointCreate) -> list[str]:
    async with conn.cursor() as cursor:
        # MySQL begins the caller's transaction with its first statement: no BEGIN to send
        return await savepoint_create(
            _Cursor(cursor), create, begin=False, is_duplicate=_is_duplicate_key
        )


async def _settled(job: Coroutine[Any, Any, T]) -> T:
    """Await ``job`` (one round trip); if the caller is cancelled meanwhile, let the round trip
    finish first, then raise CancelledError.

    A statement cut off half-way would leave the connection out of step with the server (its
    reply still unread) and its outcome unknown; this way, when CancelledError propagates, the
    statement either ran or did not, and the connection is fit for a rollback and for reuse.
    """
    task = asyncio.ensure_future(job)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller sees
        raise


async def open_pool(connect_kwargs: Mapping[str, Any], *, name: str, max_size: int) -> Any:
    """A store pool on database ``name`` with its first connection open (on the running loop,
    which it is bound to)."""
    return await asyncmy_module().create_pool(
        minsize=1,
        maxsize=max_size,
        autocommit=True,
        charset="utf8mb4",
        client_flag=MULTI_STATEMENTS,
        **dict(connect_kwargs, db=name),
    )


async def close_pool(pool: Any) -> None:
    """Close a store pool (waits up to 5 s for connections in use, then terminates them)."""
    pool.close()
    try:
        await asyncio.wait_for(pool.wait_closed(), 5.0)
    except (asyncio.TimeoutError, Exception):  # terminate whatever is left
        pool.terminate()


class MySqlStore(Store):
    """ThreadCreator's data path on one MySQL/MariaDB database (an asyncmy pool).

    ``pool``: one made ahead by :func:`open_pool` on ``background``'s loop with these sizes,
    which the store then owns.
    """

    def __init__(
        self,
        *,
        schema: ThreadSchema,
        connect_kwargs: Mapping[str, Any],
        background: BackgroundLoop,
        max_size: int = DEFAULT_STORE_POOL,
        name: str,
        template: str | None = None,
        seeded: Sequence[str] = (),
        pool: Any = None,
    ) -> None:
        if max_size < 1:
            raise ConfigurationError(f"MySqlStore max_size must be >= 1, got {max_size}")
        self.schema = schema
        self.connect_kwargs = dict(connect_kwargs, db=name)
        self.background = background
        self.max_size = max_size
        self.name = name
        self._pool: Any = pool
        self._pool_lock: asyncio.Lock | None = None
        self._checked_out = 0
        self._closed = False
        self._watcher: StatementCallback | None = None
        self._queue = MySqlCreateQueue(self, background)
        tables = [_PREPARER.format_table(t) for t in reversed(schema.metadata.sorted_tables)]
        # seeded tables outside the schema (a migration tool's version table) are emptied too,
        # so that the seed's copy below does not meet its own rows
        names = {t.name for t in schema.metadata.sorted_tables}
        tables += [quote(t) for t in seeded if t not in names]
        # one transaction: one commit (one log flush) instead of one per table, and a reset
        # that fails midway is rolled back whole (its connection, left inside the transaction
        # with the checks off, is closed by the pool, not reused)
        statements = ["SET FOREIGN_KEY_CHECKS = 0", "START TRANSACTION"]
        statements += [f"DELETE FROM {t}" for t in tables]
        for table in seeded:
            statements.append(
                f"INSERT INTO {quote(table)} SELECT * FROM {quote(template or '')}.{quote(table)}"
            )
        statements += ["COMMIT", "SET FOREIGN_KEY_CHECKS = 1"]
        self._reset_sql = tuple(statements)
        thread_pk = schema.owner_column or schema.thread_id_column
        self._owner_sql = (
            f"SELECT {_PREPARER.quote(thread_pk)} FROM "
            f"{_PREPARER.format_table(schema.thread_table)} "
            f"WHERE {_PREPARER.quote(schema.thread_id_column)} = %s"
        )

    def __repr__(self) -> str:
        return f"<MySqlStore {self.name} checked_out={self._checked_out}>"

    def savepoint_runner(self, driver: Any) -> SavepointRunner | None:
        """A create as one job on an asyncmy connection of the running loop
        (:mod:`.savepoint`), let finish if its caller is cancelled meanwhile (see
        :func:`_settled`), so the connection stays fit for the rest of the test."""
        if not isinstance(driver, asyncmy_module().Connection):
            return None

        def run(create: SavepointCreate, begin: bool) -> Awaitable[list[str]]:
            return _settled(_create_in_savepoint(driver, create))

        return run

    # -- pool ------------------------------------------------------------------------------
    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise self._released()
        if self._pool_lock is None:
            self._pool_lock = asyncio.Lock()
        async with self._pool_lock:
            if self._pool is None:
                pool = await open_pool(self.connect_kwargs, name=self.name, max_size=self.max_size)
                if self._closed:  # closed while the pool was being made: nobody else will
                    await close_pool(pool)
                    raise self._released()
                self._pool = pool
        return self._pool

    def _released(self) -> DatabaseError:
        return DatabaseError(
            f"the MySQL database {self.name} was released; request threadcreator_db in this "
            "test to get a live one"
        )

    async def acquire(self) -> tuple[Any, Any]:
        """A store connection and its pool (on the background loop); give it back with
        :meth:`release`."""
        pool = await self._get_pool()
        try:
            if pool.freesize:  # a free connection: no wait to bound
                conn = await pool.acquire()
            else:
                conn = await asyncio.wait_for(pool.acquire(), ACQUIRE_TIMEOUT)
        except asyncio.TimeoutError:
            raise DatabaseError(
                f"no free connection to {self.name} within {ACQUIRE_TIMEOUT:.0f} s: all "
                f"{self.max_size} store connections stayed busy. Lower the concurrency, or look "
                "for tasks a test leaked that still hold connections"
            ) from None
        self._checked_out += 1
        return pool, conn

    def release(self, pool: Any, conn: Any) -> None:
        """Give back a connection from :meth:`acquire`."""
        self._checked_out -= 1
        pool.release(conn)  # a connection left inside a transaction is closed, not reused

    async def put_back(self, pool: Any, conn: Any) -> None:
        """:meth:`release`, as the create queue's lanes await it."""
        self.release(pool, conn)

    def checked_out(self) -> int:
        """Store connections acquired by calls still running."""
        return self._checked_out

    async def watch_statements(self, callback: StatementCallback | None) -> None:
        """Report every statement packet the store sends from now on (None: stop)."""
        self._watcher = callback

    async def _execute(
        self, conn: Any, sql: str | Sequence[str], params: Sequence[Any] = ()
    ) -> list[Any]:
        """Run ``sql`` (a statement, or several in one packet) in one round trip; the first
        result's rows. The watcher sees each statement."""
        statements = [sql] if isinstance(sql, str) else list(sql)
        if self._watcher is not None:
            for statement in statements:
                self._watcher(f"store {self.name}", statement)
        return await _settled(query(conn, "; ".join(statements), tuple(params)))

    # -- Store API ---------------------------------------------------------------------------
    async def create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        *,
        explicit_id: bool,
        decide: FaultDecider | None = None,
    ) -> None:
        """Insert both rows in one transaction (see the module docstring)."""
        t_plan = insert_plan(self.schema.thread_table, tuple(thread_row), _DIALECT)
        m_plan = insert_plan(self.schema.message_table, tuple(message_row), _DIALECT)
        if self.schema.message_thread_column not in m_plan.columns:
            raise ConfigurationError(
                f"the message row builder must set {self.schema.message_table.name}."
                f"{self.schema.message_thread_column} (the message's thread id)"
            )
        if decide is None and not self.background.in_loop_thread():
            params = t_plan.params(thread_row) + m_plan.params(message_row)
            await self._queue.create((t_plan, m_plan), params, thread_row, explicit_id)
            return
        await self.background.submit(
            self._create(
                (t_plan.sql, t_plan.params(thread_row)),
                (m_plan.sql, m_plan.params(message_row)),
                thread_row,
                explicit_id,
                decide,
            )
        )

    @property
    def watcher(self) -> StatementCallback | None:
        """The statement watcher set by :meth:`watch_statements` (None: none)."""
        return self._watcher

    @property
    def round_trips(self) -> int:
        """Packets of creates sent so far (several gathered creates share one)."""
        return self._queue.round_trips

    async def _create(
        self,
        thread: tuple[str, tuple[Any, ...]],
        message: tuple[str, tuple[Any, ...]],
        thread_row: Mapping[str, Any],
        explicit: bool,
        decide: FaultDecider | None,
    ) -> None:
        pool, conn = await self.acquire()
        try:
            try:
                if decide is None:
                    statements = ("START TRANSACTION", thread[0], message[0], "COMMIT")
                    await self._execute(conn, statements, thread[1] + message[1])
                else:
                    await self._execute(conn, "START TRANSACTION")
                    await apply_fault(decide, "thread_insert")
                    await self._execute(conn, *thread)
                    await apply_fault(decide, "message_insert")
                    await self._execute(conn, *message)
                    await apply_fault(decide, "commit")
                    await self._execute(conn, "COMMIT")
            except BaseException as exc:
                await self.roll_back(conn)
                if isinstance(exc, Exception):
                    await self.raise_if_taken(conn, exc, thread_row, explicit)
                raise
        finally:
            self.release(pool, conn)

    async def roll_back(self, conn: Any) -> None:
        """Roll back after a failure; a connection that cannot is closed (never reused)."""
        try:
            await _settled(conn.rollback())
        except BaseException:
            conn.close()

    async def kill_query(self, conn: Any) -> None:
        """Stop the statement ``conn`` runs: ``KILL QUERY`` from a connection of its own (the
        store's may all be busy)."""
        side = await asyncmy_module().connect(
            autocommit=True, connect_timeout=5, **self.connect_kwargs
        )
        try:
            async with side.cursor() as cursor:
                await cursor.execute("KILL QUERY %s", (conn.thread_id(),))
        finally:
            side.close()

    async def committed(self, conn: Any, thread_row: Mapping[str, Any]) -> bool:
        """Whether the thread of ``thread_row`` exists, with its owner (asked after its
        transaction ended: another session's create of the same id may have come in since)."""
        schema = self.schema
        sql = f"SELECT 1 FROM {_PREPARER.format_table(schema.thread_table)} WHERE "
        columns = [schema.thread_id_column]
        if schema.owner_column is not None and schema.owner_column in thread_row:
            columns.append(schema.owner_column)
        sql += " AND ".join(f"{_PREPARER.quote(column)} = %s" for column in columns)
        rows = await self._execute(conn, sql, tuple(thread_row[column] for column in columns))
        return bool(rows)

    async def raise_if_taken(
        self, conn: Any, exc: Exception, thread_row: Mapping[str, Any], explicit: bool
    ) -> None:
        """Raise ThreadIdTaken when ``exc`` is a duplicate key and the thread id exists."""
        if not explicit or not _is_duplicate_key(exc) or not conn.connected:
            return
        rows = await self._execute(
            conn, self._owner_sql, (thread_row[self.schema.thread_id_column],)
        )
        if rows:  # the transaction was rolled back: the thread is someone else's
            raise ThreadIdTaken(str(rows[0][0])) from None

    async def fetch_all(self, statement: Query) -> list[dict[str, Any]]:
        """Run a SELECT; rows keyed by result column name, values as SQLAlchemy returns them."""
        compiled = compile_select(statement, _DIALECT)
        records = await self.background.submit(self._fetch(compiled.sql, compiled.params))
        return compiled.rows(records)

    def fetch_all_sync(self, statement: Query) -> list[dict[str, Any]]:
        """Like :meth:`fetch_all`, blocking, for use outside an event loop."""
        compiled = compile_select(statement, _DIALECT)
        return compiled.rows(self.background.run(self._fetch(compiled.sql, compiled.params)))

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        pool, conn = await self.acquire()
        try:
            return await self._execute(conn, sql, params)
        finally:
            self.release(pool, conn)

    def is_transient(self, exc: BaseException) -> bool:
        """Deadlock (1213) or lock wait timeout (1205) anywhere in the chain."""
        return is_mysql_transient(exc)

    async def lock_waits(self) -> list[str]:
        """Transactions on this server waiting for a row lock and who blocks them (InnoDB)."""
        sql = (
            "SELECT r.trx_mysql_thread_id, LEFT(COALESCE(r.trx_query, ''), 160), "
            "b.trx_mysql_thread_id, LEFT(COALESCE(b.trx_query, ''), 160) "
            "FROM information_schema.INNODB_LOCK_WAITS w "
            "JOIN information_schema.INNODB_TRX r ON r.trx_id = w.requesting_trx_id "
            "JOIN information_schema.INNODB_TRX b ON b.trx_id = w.blocking_trx_id"
        )
        try:
            rows = await self.background.submit(self._fetch(sql, ()))
        except Exception:  # MySQL 8 moved these tables; nothing to report then
            return []
        return [
            f"lock wait: connection {r[0]} ({r[1]!r}) blocked by connection {r[2]} ({r[3]!r})"
            for r in rows
        ]

    def reset(self) -> None:
        """Empty every table of the schema in one round trip (see the module docstring)."""

        async def reset() -> None:
            pool, conn = await self.acquire()
            try:
                await self._execute(conn, self._reset_sql)
            finally:
                self.release(pool, conn)

        self.background.run(reset(), timeout=ADMIN_TIMEOUT)

    def detach(self) -> Any:
        """Close the store and hand its pool over (None if it has none): whoever takes it
        closes it, on the background loop (see :func:`close_pool`). A pool still being made
        is closed by :meth:`close` instead."""
        if self._closed or (self._pool_lock is not None and self._pool_lock.locked()):
            self.close()
            return None
        self._closed = True
        pool, self._pool = self._pool, None
        return pool

    def close(self) -> None:
        """Close the pool (connections still in use are closed at once)."""
        if self._closed:
            return
        self._closed = True
        if self._pool is None or self.background.closed:
            return
        pool, self._pool = self._pool, None
        if self.background.in_loop_thread():
            pool.terminate()
            return
        self.background.run(close_pool(pool))
