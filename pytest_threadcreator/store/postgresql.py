"""The data path of one PostgreSQL database: :class:`PgStore`, on asyncpg pools.

The pools live on one private background event loop (given by the backend), so a database
outlives the test's event loop. ThreadCreator's create is one statement, one round trip (a
data-modifying CTE), unless the fault injector needs to step through an explicit transaction.
A reset empties every table in one round trip and ends the sessions a previous test left
holding locks on them (:mod:`.postgresql_reset`).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, String, column, text
from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

from .._background import BackgroundLoop
from ..errors import BackendUnavailableError, ConfigurationError, DatabaseError
from ..faults.steps import FaultDecider, apply_fault
from .base import (
    DEFAULT_STORE_POOL,
    HeldConnections,
    Query,
    SavepointRunner,
    StatementCallback,
    Store,
    ThreadIdTaken,
)
from .compile import CompiledSelect, InsertPlan, compile_select, insert_plan
from .postgresql_held import held_savepoint_runner, is_unique_violation, standin_driver
from .postgresql_queue import PgCreateQueue
from .postgresql_reset import (
    _LOCK_HOLDERS,
    _STILL_THERE,
    RESET_CALL,
    RESET_LOCK_TIMEOUT,
    RESET_SCHEMA,
    _reset_sql,
)
from .standin import held_on
from .transient import is_pg_transient

if TYPE_CHECKING:
    from ..schema import ThreadSchema

__all__ = ["ADMIN_TIMEOUT", "DEFAULT_STORE_POOL", "PgStore", "close_pool", "open_pool"]


def _not_the_pool_floor(record: logging.LogRecord) -> bool:
    """Drop asyncpg's warning, with a traceback, that a pool cannot reconnect its idle floor.

    It comes from a background task once the server is gone; the plugin says that itself, in
    one line that names the server and what to do (an environment fault), so the traceback would
    only repeat it as noise, at any later moment, up to the end of the run.
    """
    return "connection floor" not in record.getMessage()


logging.getLogger("asyncpg.pool").addFilter(_not_the_pool_floor)
#: How long a create waits for a free store connection before failing with DatabaseError.
ACQUIRE_TIMEOUT = 30.0
#: How long admin work (CREATE/DROP DATABASE, a reset, the setup connection) may take.
ADMIN_TIMEOUT = 60.0
_INSTALL_ASYNCPG = "pip install 'pytest-threadcreator[postgresql]'"

_DIALECT = sa_asyncpg.dialect()  # type: ignore[no-untyped-call]
_PREPARER = _DIALECT.identifier_preparer


def _asyncpg() -> Any:
    """The asyncpg module, or BackendUnavailableError saying how to install it."""
    try:
        return importlib.import_module("asyncpg")
    except ImportError:
        raise BackendUnavailableError(
            f"the PostgreSQL backend needs the asyncpg driver: {_INSTALL_ASYNCPG}"
        ) from None


# ---------------------------------------------------------------------------------------------
# SQL compiled once per schema, values converted by the column types' bind processors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CreateSql:
    """The statements of one schema's create."""

    #: one statement, both rows: ``WITH t AS (INSERT thread RETURNING id) INSERT message``
    combined: str
    thread: str
    message: str
    owner: str
    thread_plan: InsertPlan
    message_plan: InsertPlan
    message_thread_column: str


_CREATE_CACHE: dict[tuple[int, tuple[str, ...], tuple[str, ...]], tuple[object, _CreateSql]] = {}


def _create_sql(
    schema: ThreadSchema, thread_row: Mapping[str, Any], message_row: Mapping[str, Any]
) -> _CreateSql:
    """The compiled create for this schema and these row keys (cached)."""
    key = (id(schema), tuple(thread_row), tuple(message_row))
    hit = _CREATE_CACHE.get(key)
    if hit is not None and hit[0] is schema:
        return hit[1]
    sql = _compile_create(schema, key[1], key[2])
    _CREATE_CACHE[key] = (schema, sql)  # a race only compiles twice
    return sql


def _compile_create(
    schema: ThreadSchema, thread_keys: tuple[str, ...], message_keys: tuple[str, ...]
) -> _CreateSql:
    t_plan = insert_plan(schema.thread_table, thread_keys, _DIALECT)
    m_plan = insert_plan(schema.message_table, message_keys, _DIALECT)
    tid = _PREPARER.quote(schema.thread_id_column)
    mtid = schema.message_thread_column
    if mtid not in m_plan.columns:
        raise ConfigurationError(
            f"the message row builder must set {schema.message_table.name}.{mtid} "
            "(the message's thread id)"
        )
    thread_sql, n = t_plan.render(1)
    # The message takes its thread id from the thread insert: one statement, one round trip,
    # atomic on its own (no explicit transaction needed).
    message_in_cte, _ = m_plan.render(n, replace={mtid: f"(SELECT {tid} FROM t)"})
    combined = f"WITH t AS ({thread_sql} RETURNING {tid}) {message_in_cte}"
    message_sql, _ = m_plan.render(1)
    owner = (
        # without an owner column, the id itself says the thread exists
        f"SELECT {_PREPARER.quote(schema.owner_column or schema.thread_id_column)} FROM "
        f"{_PREPARER.format_table(schema.thread_table)} WHERE {tid} = $1"
    )
    return _CreateSql(combined, thread_sql, message_sql, owner, t_plan, m_plan, mtid)


_CompiledSelect = CompiledSelect


def _compile_select(statement: Query) -> CompiledSelect:
    """Positional ``$n`` parameters (never literal values), processed like SQLAlchemy would."""
    return compile_select(statement, _DIALECT)


# ---------------------------------------------------------------------------------------------
# The data path of one database
# ---------------------------------------------------------------------------------------------


async def _init_connection(conn: Any) -> None:
    """JSON codecs as SQLAlchemy's asyncpg dialect sets them: str in (already serialised by the
    column type's bind processor), Python objects out."""

    def decode_json(data: bytes) -> Any:
        return json.loads(data.decode())

    def encode_jsonb(text: str) -> bytes:
        return b"\x01" + text.encode()

    def decode_jsonb(data: bytes) -> Any:
        return json.loads(data[1:].decode())

    await conn.set_type_codec(
        "json", encoder=str.encode, decoder=decode_json, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "jsonb", encoder=encode_jsonb, decoder=decode_jsonb, schema="pg_catalog", format="binary"
    )


async def _keep_session(conn: Any) -> None:
    """Pool reset hook: nothing beyond asyncpg's own rollback of an open transaction.

    The store never changes session state (no SET, LISTEN or advisory locks), so asyncpg's
    default reset query would only add a round trip to every create.
    """


async def open_pool(
    connect_kwargs: Mapping[str, Any],
    *,
    max_size: int,
    min_size: int = 1,
    schema: ThreadSchema | None = None,
) -> Any:
    """A store pool on one database (on the running loop, which it is bound to).

    With ``schema``, its first connection has also looked at every table of the schema, so the
    server has loaded what a create there needs (on a brand-new database, the first session
    builds its catalog caches).
    """
    pool = await _asyncpg().create_pool(
        min_size=min(min_size, max_size),
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        max_inactive_connection_lifetime=60.0,
        server_settings={"application_name": "pytest-threadcreator"},
        **connect_kwargs,
    )
    if schema is not None:
        try:
            looks = " ".join(
                f"SELECT FROM {_PREPARER.format_table(table)} LIMIT 0;"
                for table in schema.metadata.sorted_tables
            )
            if looks:
                async with pool.acquire() as conn:
                    await conn.execute(looks)
        except BaseException:
            await close_pool(pool)
            raise
    return pool


#: (id of a store pool, server pid) -> (the statement watcher, the query logger attached for it)
#: of each store connection that has one. A ``fresh`` database's pool outlives its store (a
#: later test's store gets it, connection and all), so this is kept per connection, not per
#: store; :func:`close_pool` forgets a pool's. Touched on the background loop only.
_LOGGERS: dict[tuple[int, int], tuple[StatementCallback, Callable[[Any], None]]] = {}


def _forget_loggers(pool: Any) -> None:
    for key in [key for key in _LOGGERS if key[0] == id(pool)]:
        del _LOGGERS[key]


async def close_pool(pool: Any) -> None:
    """Close a store pool (waits up to 5 s for connections in use, then terminates them)."""
    _forget_loggers(pool)
    try:
        await asyncio.wait_for(pool.close(), 5.0)
    except (asyncio.TimeoutError, Exception):  # terminate whatever is left
        pool.terminate()


class PgStore(Store):
    """ThreadCreator's data path on one PostgreSQL database (an asyncpg pool).

    The pool lives on the backend's :class:`BackgroundLoop` and is made on first use; any event
    loop may await the coroutines. :meth:`create` without a fault decider is a single
    statement (both rows or neither, one round trip); with one it is an explicit transaction
    that consults the decider before each step. ``pool``: one made ahead by :func:`open_pool`
    on ``background``'s loop with these sizes, which the store then owns.
    """

    def __init__(
        self,
        *,
        schema: ThreadSchema,
        connect_kwargs: Mapping[str, Any],
        background: BackgroundLoop,
        max_size: int = DEFAULT_STORE_POOL,
        min_size: int = 1,
        acquire_timeout: float = ACQUIRE_TIMEOUT,
        name: str = "",
        seeded: Sequence[str] = (),
        pool: Any = None,
        reset_function: bool = False,
    ) -> None:
        if max_size < 1:
            raise ConfigurationError(f"PgStore max_size must be >= 1, got {max_size}")
        self.schema = schema
        self.connect_kwargs = dict(connect_kwargs)
        self.background = background
        self.max_size = max_size
        self.min_size = min(min_size, max_size)
        self.acquire_timeout = acquire_timeout
        self.name = name or str(self.connect_kwargs.get("database", ""))
        self._pool: Any = pool
        self._pool_task: asyncio.Task[Any] | None = None
        self._checked_out = 0
        self._closed = False
        self._pk_constraint: str | None = None
        self._seeded = tuple(seeded)
        self._reset_text: str | None = None  # made on the first reset (a fresh one has none)
        #: the database holds the template's reset function (see postgresql_reset)
        self._reset_function = reset_function
        #: How long a reset waits for a lock that a session it could not end holds.
        self.reset_lock_timeout = RESET_LOCK_TIMEOUT
        #: The last reset's failure while its blockers live: the next one fails without waiting.
        self._reset_blocked: tuple[list[int], str] | None = None
        self._watcher: StatementCallback | None = None
        self._queue = PgCreateQueue(self, background)

    def __repr__(self) -> str:
        return f"<PgStore {self.name} checked_out={self._checked_out}>"

    @property
    def _reset_query(self) -> str:
        if self._reset_text is None:
            self._reset_text = _reset_sql(self.schema, self._seeded)
        return self._reset_text

    def held_connections(self) -> HeldConnections:
        """asyncpg connections kept on the background loop, usable from any test's loop."""
        return held_on(self.background, standin_driver())

    def savepoint_runner(self, driver: Any) -> SavepointRunner | None:
        """A create as one job on a held connection's loop (:mod:`.postgresql_held`)."""
        return held_savepoint_runner(driver)

    # -- pool ------------------------------------------------------------------------------
    async def _get_pool(self) -> Any:
        """The pool (on the background loop), made by a task of its own on first use.

        The task belongs to no caller: a caller cancelled while the pool is being made does
        not cancel it for the others.
        """
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise DatabaseError(
                f"the PostgreSQL database {self.name} was released; request threadcreator_db "
                "in this test to get a live one"
            )
        task = self._pool_task
        if task is None:
            task = self._pool_task = asyncio.get_running_loop().create_task(self._make_pool())
        try:
            return await asyncio.shield(task)
        except Exception:
            if task.done() and self._pool_task is task:
                self._pool_task = None  # failed: the next call tries again
            raise

    async def _make_pool(self) -> Any:
        pool = await open_pool(self.connect_kwargs, max_size=self.max_size, min_size=self.min_size)
        self._pool = pool
        return pool

    async def acquire(self) -> tuple[Any, Any]:
        pool = await self._get_pool()
        try:
            if pool.get_idle_size():  # a free connection: no wait to bound
                conn = await pool.acquire()
            else:
                conn = await pool.acquire(timeout=self.acquire_timeout)
        except asyncio.TimeoutError:
            raise DatabaseError(
                f"no free connection to {self.name} within {self.acquire_timeout:.0f} s: all "
                f"{self.max_size} store connections stayed busy. Lower the concurrency, or look "
                "for tasks a test leaked that still hold connections"
            ) from None
        self._checked_out += 1
        if self._watcher is not None or _LOGGERS:
            self._sync_logger(pool, conn)
        return pool, conn

    def _sync_logger(self, pool: Any, conn: Any) -> None:
        """Attach the current statement watcher to ``conn`` (or detach an old one, this store's
        or an earlier store's of the same pool)."""
        pid = int(conn.get_server_pid())
        key = (id(pool), pid)
        watcher, current = self._watcher, _LOGGERS.get(key)
        if current is not None and current[0] is watcher:
            return
        if current is not None:
            conn.remove_query_logger(current[1])
            del _LOGGERS[key]
        if watcher is not None:
            label = f"store {self.name} (pid {pid})"

            def log(record: Any) -> None:
                if self._watcher is watcher:  # not once the store is done (its pool lives on)
                    watcher(label, record.query)

            conn.add_query_logger(log)
            _LOGGERS[key] = (watcher, log)

    async def put_back(self, pool: Any, conn: Any) -> None:
        self._checked_out -= 1
        await pool.release(conn)

    def checked_out(self) -> int:
        """Store connections acquired by calls still running."""
        return self._checked_out

    async def watch_statements(self, callback: StatementCallback | None) -> None:
        """Report every statement the store's connections run from now on (None: stop).

        Uses asyncpg's query loggers, attached to a connection when it is next acquired; the
        callback runs on the background loop's thread, before the call that ran it returns.
        """
        self._watcher = callback

    # -- Store API ---------------------------------------------------------------------------
    async def create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        *,
        explicit_id: bool,
        decide: FaultDecider | None = None,
    ) -> None:
        """Insert both rows atomically (see the class docstring)."""
        sql = _create_sql(self.schema, thread_row, message_row)
        thread_params = sql.thread_plan.params(thread_row)
        if decide is None:
            params = thread_params + sql.message_plan.params(
                message_row, skip=sql.message_thread_column
            )
            if not self.background.in_loop_thread():
                await self._queue.create(sql, params, thread_row, explicit_id)
                return
            job = self._create_fast(sql, params, thread_row, explicit_id)
        else:
            job = self._create_stepwise(
                sql,
                thread_params,
                sql.message_plan.params(message_row),
                thread_row,
                explicit_id,
                decide,
            )
        await self.background.submit(job)

    async def _create_fast(
        self,
        sql: _CreateSql,
        params: tuple[Any, ...],
        thread_row: Mapping[str, Any],
        explicit: bool,
    ) -> None:
        pool, conn = await self.acquire()
        try:
            try:
                await conn.execute(sql.combined, *params)
            except Exception as exc:
                await self.raise_if_taken(conn, exc, sql, thread_row, explicit)
                raise
        finally:
            await self.put_back(pool, conn)

    async def _create_stepwise(
        self,
        sql: _CreateSql,
        thread_params: tuple[Any, ...],
        message_params: tuple[Any, ...],
        thread_row: Mapping[str, Any],
        explicit: bool,
        decide: FaultDecider,
    ) -> None:
        pool, conn = await self.acquire()
        try:
            try:
                async with conn.transaction():
                    await apply_fault(decide, "thread_insert")
                    await conn.execute(sql.thread, *thread_params)
                    await apply_fault(decide, "message_insert")
                    await conn.execute(sql.message, *message_params)
                    await apply_fault(decide, "commit")
            except Exception as exc:
                await self.raise_if_taken(conn, exc, sql, thread_row, explicit)
                raise
        finally:
            await self.put_back(pool, conn)

    async def raise_if_taken(
        self,
        conn: Any,
        exc: Exception,
        sql: _CreateSql,
        thread_row: Mapping[str, Any],
        explicit: bool,
    ) -> None:
        """Raise ThreadIdTaken when ``exc`` is a duplicate of the thread table's primary key."""
        if not explicit or not is_unique_violation(exc):
            return
        table = self.schema.thread_table
        if getattr(exc, "table_name", None) != table.name:
            return
        if table.schema is not None and getattr(exc, "schema_name", None) != table.schema:
            return
        if getattr(exc, "constraint_name", None) != await self._primary_key_name(conn):
            return
        owner = await conn.fetchval(sql.owner, thread_row[self.schema.thread_id_column])
        if owner is not None:  # gone again already: let the original error speak
            raise ThreadIdTaken(owner) from None

    async def _primary_key_name(self, conn: Any) -> str | None:
        if self._pk_constraint is None:
            self._pk_constraint = await conn.fetchval(
                "SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
                _PREPARER.format_table(self.schema.thread_table),
            )
        return self._pk_constraint

    async def fetch_all(self, statement: Query) -> list[dict[str, Any]]:
        """Run a SELECT; rows keyed by result column name, values as SQLAlchemy returns them."""
        compiled = _compile_select(statement)
        records = await self.background.submit(self._fetch(compiled))
        return compiled.rows(records)

    def fetch_all_sync(self, statement: Query) -> list[dict[str, Any]]:
        """Like :meth:`fetch_all`, blocking, for use outside an event loop."""
        compiled = _compile_select(statement)
        return compiled.rows(self.background.run(self._fetch(compiled)))

    async def _fetch(self, compiled: _CompiledSelect) -> list[Any]:
        pool, conn = await self.acquire()
        try:
            return list(await conn.fetch(compiled.sql, *compiled.params))
        finally:
            await self.put_back(pool, conn)

    def is_transient(self, exc: BaseException) -> bool:
        """SQLSTATE 40001/40P01 anywhere in the chain (asyncpg, SQLAlchemy or psycopg errors)."""
        return is_pg_transient(exc)

    async def lock_waits(self) -> list[str]:
        """Sessions of this database waiting for a lock and who blocks them, one line each
        (``pg_locks`` joined with ``pg_stat_activity``)."""
        rows = await self.fetch_all(_LOCK_WAITS)
        return [
            f"lock wait: pid {r['pid']} wants {r['mode']} on {r['target']} for "
            f"{r['query']!r}, blocked by pid {r['blocker']} ({r['blocker_state']}: "
            f"{r['blocker_query']!r})"
            for r in rows
        ]

    def reset(self) -> None:
        """Empty every table of the schema in one round trip (see :func:`_reset_sql`).

        Sessions a previous test left holding locks on the tables are ended first. When one
        cannot be ended (another role's), the reset waits :attr:`reset_lock_timeout` seconds
        and raises DatabaseError naming it; while it lives, later resets fail without waiting.
        """
        self.background.run(self._reset(), timeout=ADMIN_TIMEOUT)

    async def _reset(self) -> None:
        pool, conn = await self.acquire()
        try:
            if self._reset_blocked is not None:
                pids, message = self._reset_blocked
                if await conn.fetchval(_STILL_THERE, pids):
                    raise DatabaseError(message + " (it is still there: not waiting again)")
                self._reset_blocked = None
            timeout_ms = max(1, round(self.reset_lock_timeout * 1000))
            try:
                await self._empty(conn, f"SET LOCAL lock_timeout = {timeout_ms}; ")
            except _asyncpg().LockNotAvailableError:
                pids, message = await self._blocked_reset(conn)
                self._reset_blocked = (pids, message) if pids else None
                raise DatabaseError(message) from None
        finally:
            await self.put_back(pool, conn)

    async def _empty(self, conn: Any, settings: str) -> None:
        """The reset itself: the template's reset function, else (a test dropped it) the same
        as a DO block, compiled on every reset."""
        if self._reset_function:
            asyncpg = _asyncpg()
            try:
                await conn.execute(settings + RESET_CALL)
                return
            except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError) as exc:
                if RESET_SCHEMA not in str(exc):  # from inside it (a trigger of the test's)
                    raise
                self._reset_function = False
        await conn.execute(settings + self._reset_query)

    async def _blocked_reset(self, conn: Any) -> tuple[list[int], str]:
        """Who holds locks on the tables that the reset waited for, and what to do."""
        tables = [_PREPARER.format_table(t) for t in self.schema.metadata.sorted_tables]
        rows = await conn.fetch(_LOCK_HOLDERS, tables)
        role = await conn.fetchval("SELECT current_user")
        head = (
            f"resetting the PostgreSQL database {self.name} for the next test waited "
            f"{self.reset_lock_timeout:g} s for a lock and gave up: "
        )
        if not rows:
            return [], head + (
                "no session holds locks on its tables any more, so it was short-lived; if this "
                "happens again, look for transactions that your tests and fixtures leave open"
            )
        who = "; ".join(
            f"pid {row['pid']} (user {row['usename']}, "
            f"{row['state'] or f'state hidden from role {role}'}, query {row['query']!r})"
            for row in rows
        )
        one = len(rows) == 1
        return [int(row["pid"]) for row in rows], head + (
            f"{who} {'holds' if one else 'hold'} locks on its tables, and role {role} may not "
            f"end {'it' if one else 'them'}. Commit, roll back or close the transactions that "
            "your tests and fixtures open, or end the session with "
            "SELECT pg_terminate_backend(pid)"
        )

    def detach(self) -> Any:
        """Close the store and hand its pool over (None if it has none yet): whoever takes it
        closes it, on the background loop (see :func:`close_pool`). A pool still being made is
        closed here instead."""
        self._watcher = None
        if self._closed or (self._pool_task is not None and not self._pool_task.done()):
            self.close()
            return None
        self._closed = True
        pool, self._pool, self._pool_task = self._pool, None, None
        return pool

    def close(self) -> None:
        """Close the pool (waits up to 5 s for connections in use, then terminates them)."""
        if self._closed:
            return
        self._closed = True
        if self.background.closed or (self._pool is None and self._pool_task is None):
            return
        if self.background.in_loop_thread():
            if self._pool is not None:
                _forget_loggers(self._pool)
                self._pool.terminate()
            return
        self.background.run(self._close())

    async def _close(self) -> None:
        task, self._pool_task = self._pool_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))
        pool, self._pool = self._pool, None
        if pool is not None:
            await close_pool(pool)


#: Sessions of the database waiting for a lock, with the sessions that block them.
_LOCK_WAITS = text(
    """
    SELECT w.pid AS pid, l.mode AS mode,
           COALESCE(l.relation::regclass::text, l.locktype) AS target,
           left(w.query, 160) AS query, b.pid AS blocker,
           COALESCE(b.state, '?') AS blocker_state, left(COALESCE(b.query, ''), 160) AS blocker_query
    FROM pg_locks AS l
    JOIN pg_stat_activity AS w ON w.pid = l.pid
    LEFT JOIN LATERAL unnest(pg_blocking_pids(l.pid)) AS bp(pid) ON true
    LEFT JOIN pg_stat_activity AS b ON b.pid = bp.pid
    WHERE NOT l.granted AND w.datname = current_database()
    ORDER BY w.pid, b.pid
    """
).columns(
    column("pid", Integer),
    column("mode", String),
    column("target", String),
    column("query", String),
    column("blocker", Integer),
    column("blocker_state", String),
    column("blocker_query", String),
)
