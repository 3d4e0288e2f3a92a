"""PostgreSQL backend: per-test databases cloned from a template, on any reachable server.

Where the server comes from (:func:`make_postgres_backend`):

* ``url``    — an async SQLAlchemy URL (``postgresql+asyncpg://…`` or ``postgresql+psycopg://…``);
* ``local``  — a throwaway cluster from the local binaries (:mod:`.pg_local`);
* ``docker`` — a testcontainers PostgreSQL;
* ``auto``   — the first of those that works (``--threadcreator-db=postgresql``).

How it behaves on a shared server:

* It only creates databases named ``tc_<run>_<worker>_…`` (:mod:`.pg_names`), at most 63 bytes
  each, and marks each as its own right after ``CREATE DATABASE`` (a ``COMMENT ON DATABASE`` that
  names the run, :func:`.pg_names.ownership_mark`). A name is no proof: it only ever drops a
  database that carries the mark of the run the name says, so a user's database that merely
  looks like the plugin's survives every run, crashed run and sweep. (Should a process die
  between the ``CREATE`` and the ``COMMENT``, an unmarked database of the plugin's stays behind;
  that is the price of never dropping a user's.)
* Every backend holds a *shared* advisory lock keyed by its run id on its admin connection for
  its whole life. At start it lists the ``tc_`` databases of other runs and drops a run's
  databases only after taking that run's lock *exclusively*, i.e. only when no process of that
  run is alive (a crashed or killed run). Databases of a live run are never touched.
* The template is created, filled (``create_all`` and the setup hook) and then closed to
  connections (``ALLOW_CONNECTIONS false``): a session left on a template makes
  ``CREATE DATABASE … TEMPLATE`` wait and fail.
* With a ``template_key`` the template is the run's, not the worker's: all xdist workers of a run
  (one run id) use one template, built by the first under an advisory lock while the others wait,
  then reused (a finished template is sealed and its mark is followed by its seeded tables).
  At stop a backend drops its own databases, releases its shared run lock and, if it then gets
  the run's lock exclusively, it is the run's last: it drops the template (and anything else of
  the run left on the server). Under xdist the controller holds the run's lock too
  (:class:`RunLock`), so a worker that finishes early never drops the template that a late
  worker still needs; the controller drops it once all workers are done.

The data path (:class:`PgStore`) runs on asyncpg pools that live on one private background
event loop per backend, so a database outlives the test's event loop. ThreadCreator's create is
one statement, one round trip (a data-modifying CTE), unless the fault injector needs to step
through an explicit transaction.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .._background import BackgroundLoop
from ..database import Database
from ..errors import (
    BackendUnavailableError,
    ConfigurationError,
    DatabaseError,
    ThreadCreatorError,
)
from ..faults.steps import FaultDecider, apply_fault
from ._compile import CompiledSelect, InsertPlan, compile_select, insert_plan
from .base import Backend, Query, StatementCallback, Store, ThreadIdTaken
from .pg_docker import DEFAULT_IMAGE as DOCKER_IMAGE
from .pg_docker import KEPT_SUFFIX, DockerServer
from .pg_docker import _short_reason as _short_reason
from .pg_docker import docker_unreachable_reason as docker_unreachable_reason
from .pg_names import (
    DB_PREFIX,
    database_name,
    kept_note,
    marked_run,
    normalise_worker_id,
    ownership_mark,
    parse_database_name,
    run_lock_key,
    template_lock_key,
    template_name,
)
from .transient import is_pg_transient

if TYPE_CHECKING:
    from ..schema import ThreadSchema
    from .pg_local import LocalCluster

__all__ = [
    "ENV_POSTGRES_URL",
    "PgStore",
    "PoolPlan",
    "PostgresBackend",
    "RunLock",
    "is_pg_transient",
    "make_postgres_backend",
    "plan_pools",
]

T = TypeVar("T")

ENV_POSTGRES_URL = "THREADCREATOR_POSTGRES_URL"
ENV_WORKER_COUNT = "PYTEST_XDIST_WORKER_COUNT"
#: Connections of the server kept free for humans, monitoring and other tools.
SERVER_HEADROOM = 5
DEFAULT_STORE_POOL = 10
DEFAULT_ENGINE_POOL = 5
DEFAULT_ENGINE_OVERFLOW = 10
#: How long a create waits for a free store connection before failing with DatabaseError.
ACQUIRE_TIMEOUT = 30.0
#: How long admin work (CREATE/DROP DATABASE, the setup connection) may take.
ADMIN_TIMEOUT = 60.0
#: How long a worker waits for another worker of its run to build the shared template (the
#: setup hook may run migrations).
TEMPLATE_WAIT_TIMEOUT = 600.0
#: Follows the mark on a finished shared template; the JSON after it lists the seeded tables.
_TEMPLATE_NOTE = "; finished template; seeded tables: "
_INSTALL_ASYNCPG = "pip install 'pytest-threadcreator[postgresql]'"
_USE_INSTEAD = (
    "use --threadcreator-db=postgresql-local (local PostgreSQL binaries) or a server URL such as "
    "--threadcreator-db=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)

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


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


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
# Errors
# ---------------------------------------------------------------------------------------------


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


class PgStore(Store):
    """ThreadCreator's data path on one PostgreSQL database (an asyncpg pool).

    The pool lives on the backend's :class:`BackgroundLoop` and is made on first use; any event
    loop may await the coroutines. :meth:`create` without a fault decider is a single
    statement (both rows or neither, one round trip); with one it is an explicit transaction
    that consults the decider before each step.
    """

    dialect_name = "postgresql"

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
        self._pool: Any = None
        self._pool_task: asyncio.Task[Any] | None = None
        self._checked_out = 0
        self._closed = False
        self._pk_constraint: str | None = None
        self._reset_sql = _reset_sql(schema, seeded)
        #: How long a reset waits for a lock that a session it could not end holds.
        self.reset_lock_timeout = RESET_LOCK_TIMEOUT
        #: The last reset's failure while its blockers live: the next one fails without waiting.
        self._reset_blocked: tuple[list[int], str] | None = None
        self._watcher: StatementCallback | None = None
        #: server pid -> (watcher, the query logger attached to that connection for it)
        self._loggers: dict[int, tuple[StatementCallback, Callable[[Any], None]]] = {}

    def __repr__(self) -> str:
        return f"<PgStore {self.name} checked_out={self._checked_out}>"

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
        pool = await _asyncpg().create_pool(
            min_size=self.min_size,
            max_size=self.max_size,
            init=_init_connection,
            reset=_keep_session,
            max_inactive_connection_lifetime=60.0,
            server_settings={"application_name": "pytest-threadcreator"},
            **self.connect_kwargs,
        )
        self._pool = pool
        return pool

    async def _acquire(self) -> tuple[Any, Any]:
        pool = await self._get_pool()
        try:
            conn = await pool.acquire(timeout=self.acquire_timeout)
        except asyncio.TimeoutError:
            raise DatabaseError(
                f"no free connection to {self.name} within {self.acquire_timeout:.0f} s: all "
                f"{self.max_size} store connections stayed busy. Lower the concurrency, or look "
                "for tasks a test leaked that still hold connections"
            ) from None
        self._checked_out += 1
        if self._watcher is not None or self._loggers:
            self._sync_logger(conn)
        return pool, conn

    def _sync_logger(self, conn: Any) -> None:
        """Attach the current statement watcher to ``conn`` (or detach an old one)."""
        pid = int(conn.get_server_pid())
        watcher, current = self._watcher, self._loggers.get(pid)
        if current is not None and current[0] is watcher:
            return
        if current is not None:
            conn.remove_query_logger(current[1])
            del self._loggers[pid]
        if watcher is not None:
            label = f"store {self.name} (pid {pid})"

            def log(record: Any) -> None:
                watcher(label, record.query)

            conn.add_query_logger(log)
            self._loggers[pid] = (watcher, log)

    async def _release(self, pool: Any, conn: Any) -> None:
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
        pool, conn = await self._acquire()
        try:
            try:
                await conn.execute(sql.combined, *params)
            except Exception as exc:
                await self._raise_if_taken(conn, exc, sql, thread_row, explicit)
                raise
        finally:
            await self._release(pool, conn)

    async def _create_stepwise(
        self,
        sql: _CreateSql,
        thread_params: tuple[Any, ...],
        message_params: tuple[Any, ...],
        thread_row: Mapping[str, Any],
        explicit: bool,
        decide: FaultDecider,
    ) -> None:
        pool, conn = await self._acquire()
        try:
            try:
                async with conn.transaction():
                    await apply_fault(decide, "thread_insert")
                    await conn.execute(sql.thread, *thread_params)
                    await apply_fault(decide, "message_insert")
                    await conn.execute(sql.message, *message_params)
                    await apply_fault(decide, "commit")
            except Exception as exc:
                await self._raise_if_taken(conn, exc, sql, thread_row, explicit)
                raise
        finally:
            await self._release(pool, conn)

    async def _raise_if_taken(
        self,
        conn: Any,
        exc: Exception,
        sql: _CreateSql,
        thread_row: Mapping[str, Any],
        explicit: bool,
    ) -> None:
        """Raise ThreadIdTaken when ``exc`` is a duplicate of the thread table's primary key."""
        if not explicit or getattr(exc, "sqlstate", None) != "23505":
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
        pool, conn = await self._acquire()
        try:
            return list(await conn.fetch(compiled.sql, *compiled.params))
        finally:
            await self._release(pool, conn)

    def is_transient(self, exc: BaseException) -> bool:
        """SQLSTATE 40001/40P01 anywhere in the chain (asyncpg, SQLAlchemy or psycopg errors)."""
        return is_pg_transient(exc)

    def reset(self) -> None:
        """Empty every table of the schema in one round trip (see :func:`_reset_sql`).

        Sessions a previous test left holding locks on the tables are ended first. When one
        cannot be ended (another role's), the reset waits :attr:`reset_lock_timeout` seconds
        and raises DatabaseError naming it; while it lives, later resets fail without waiting.
        """
        self.background.run(self._reset(), timeout=ADMIN_TIMEOUT)

    async def _reset(self) -> None:
        pool, conn = await self._acquire()
        try:
            if self._reset_blocked is not None:
                pids, message = self._reset_blocked
                if await conn.fetchval(_STILL_THERE, pids):
                    raise DatabaseError(message + " (it is still there: not waiting again)")
                self._reset_blocked = None
            timeout_ms = max(1, round(self.reset_lock_timeout * 1000))
            try:
                await conn.execute(f"SET LOCAL lock_timeout = {timeout_ms}; {self._reset_sql}")
            except _asyncpg().LockNotAvailableError:
                pids, message = await self._blocked_reset(conn)
                self._reset_blocked = (pids, message) if pids else None
                raise DatabaseError(message) from None
        finally:
            await self._release(pool, conn)

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

    def close(self) -> None:
        """Close the pool (waits up to 5 s for connections in use, then terminates them)."""
        if self._closed:
            return
        self._closed = True
        if self.background.closed or (self._pool is None and self._pool_task is None):
            return
        if self.background.in_loop_thread():
            if self._pool is not None:
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
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except (asyncio.TimeoutError, Exception):  # terminate whatever is left
                pool.terminate()


#: From this many rows on, TRUNCATE (≈4 ms whatever the size) beats DELETE (≈0.1 ms + 4 µs/row).
RESET_TRUNCATE_ROWS = 500
#: Seconds a reset waits for a lock held by a session it could not end, before it gives up.
RESET_LOCK_TIMEOUT = 10.0

#: Other sessions on this database that may block a reset: in a transaction that wrote or locked
#: rows (it has a transaction id), or holding a table lock stronger than writers take.
_BLOCKERS = (
    "SELECT a.pid FROM pg_stat_activity AS a "
    "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
    "AND a.backend_type = 'client backend' AND a.state <> 'idle' "
    "AND (a.backend_xid IS NOT NULL OR EXISTS (SELECT 1 FROM pg_locks AS l "
    "WHERE l.pid = a.pid AND l.locktype = 'relation' "
    "AND l.mode NOT IN ('AccessShareLock', 'RowShareLock', 'RowExclusiveLock')))"
)

#: Sessions holding locks on the given tables (or a transaction id), for a reset's error.
_LOCK_HOLDERS = (
    "SELECT a.pid, a.usename, a.state, left(a.query, 200) AS query FROM pg_stat_activity AS a "
    "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
    "AND a.backend_type = 'client backend' AND (a.backend_xid IS NOT NULL OR EXISTS ("
    "SELECT 1 FROM pg_locks AS l WHERE l.pid = a.pid AND l.locktype = 'relation' "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.relation = ANY (SELECT to_regclass(t)::oid FROM unnest($1::text[]) AS t))) "
    "ORDER BY a.pid"
)

#: Whether any of the sessions that blocked the last reset is still in a transaction.
_STILL_THERE = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ANY ($1::int[]) AND state <> 'idle')"
)


def _reset_sql(schema: ThreadSchema, seeded: Sequence[str] = ()) -> str:
    """One simple-protocol query that empties every table of the schema.

    Tables named in ``seeded`` got rows from the setup hook; their copies in the
    ``threadcreator_seed`` schema (cloned with the template) are put back, parents first.

    Small tables (the usual case) get DELETEs, children first: ≈0.2 ms and no ACCESS EXCLUSIVE
    lock, so a session a test leaked does not block it. From :data:`RESET_TRUNCATE_ROWS` rows on
    it TRUNCATEs instead. Identity sequences are not restarted either way. It runs as one
    implicit transaction (nothing stays open); the caller sets its lock timeout.

    Nothing a previous test left behind can block it. The first attempt may wait 1 ms for a
    lock (in a subtransaction: the usual case costs ≈0.3 ms more than the plain reset, where a
    look at ``pg_stat_activity`` on every reset measured ≈0.6 ms more). When it had to wait, it
    ends the sessions on the database that may block it (:data:`_BLOCKERS`: in a transaction
    that wrote or locked rows, or holding a strong table lock; they are the test suite's own,
    on the plugin's database) and tries again with the caller's lock timeout, DELETEing if
    another session still holds a lock on the tables (an open read transaction would make
    TRUNCATE wait). Idle sessions (the pools' connections) and read transactions are never
    ended, so no pool hands out a dead connection; sessions that it may not end (another
    role's) are left, and the lock timeout then reports them (see :meth:`PgStore.reset`).
    """
    tables = [_PREPARER.format_table(t) for t in reversed(schema.metadata.sorted_tables)]
    if not tables:
        return "SELECT 1"
    limit = RESET_TRUNCATE_ROWS
    counted = " + ".join(
        f"(SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {limit}) AS s)" for name in tables
    )
    deletes = " ".join(f"DELETE FROM {name};" for name in tables)
    truncate = f"TRUNCATE {', '.join(tables)} CASCADE;"
    oids = ", ".join("'" + name.replace("'", "''") + "'::regclass" for name in tables)
    others_lock_tables = (
        "EXISTS (SELECT 1 FROM pg_locks WHERE pid <> pg_backend_pid() AND locktype = 'relation' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        f"AND relation IN ({oids}))"
    )
    end_blockers = (
        f"FOR blocker IN {_BLOCKERS} LOOP BEGIN PERFORM pg_terminate_backend(blocker); "
        "EXCEPTION WHEN insufficient_privilege THEN NULL; END; END LOOP;"
    )
    restore = " ".join(
        f"INSERT INTO {_PREPARER.format_table(t)} SELECT * FROM {SEED_SCHEMA}.{_quote(t.name)};"
        for t in schema.metadata.sorted_tables
        if t.name in seeded
    )
    return (
        "DO $threadcreator$ DECLARE blocker int; "
        "patience text := current_setting('lock_timeout'); BEGIN "
        "BEGIN PERFORM set_config('lock_timeout', '1ms', true); "
        f"IF {counted} >= {limit} THEN {truncate} ELSE {deletes} END IF; "
        f"EXCEPTION WHEN lock_not_available THEN {end_blockers} "
        "PERFORM set_config('lock_timeout', patience, true); "
        f"IF {counted} >= {limit} AND NOT {others_lock_tables} THEN {truncate} "
        f"ELSE {deletes} END IF; END; PERFORM set_config('lock_timeout', patience, true); "
        f"{restore} END $threadcreator$;"
    )


#: Schema in the template that keeps a copy of the rows the setup hook seeded.
SEED_SCHEMA = "threadcreator_seed"


# ---------------------------------------------------------------------------------------------
# Pool sizes within the server's max_connections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """Connection budget of one worker; see :func:`plan_pools`."""

    max_connections: int
    workers: int
    per_worker: int
    store_max: int
    engine_pool_size: int
    engine_max_overflow: int


def plan_pools(
    max_connections: int,
    *,
    reserved: int = 3,
    workers: int = 1,
    requested: int | None = None,
) -> PoolPlan:
    """Split the server's connections so that every xdist worker's pools fit.

    The rule: ``usable = max_connections - superuser_reserved_connections - 5`` (headroom for
    psql and monitoring); each of the ``workers`` gets ``usable // workers``; one of those is
    the admin connection; the rest is shared by at most two live databases (the worker's
    ``clean`` database and a ``fresh`` one), and within a database half goes to the store pool
    (ThreadCreator, integrity reads; default 10, or ``requested``) and the remainder to the
    engine for the test's own code (``pool_size`` default 5, or ``requested``, plus overflow up
    to 10). Raises ConfigurationError when a database would get fewer than 2 connections.
    Another run sharing the server is not counted: give each CI job its own server or lower -n.
    """
    workers = max(1, workers)
    usable = max_connections - reserved - SERVER_HEADROOM
    per_worker = usable // workers
    per_database = (per_worker - 1) // 2
    if per_database < 2:
        raise ConfigurationError(
            f"PostgreSQL max_connections={max_connections} is too low for {workers} workers "
            f"(each would get {max(per_worker, 0)} connections). Raise max_connections on the "
            "server, run fewer xdist workers (-n), or use --threadcreator-db=postgresql-local "
            "(its cluster allows 200)"
        )
    store_max = max(1, min(requested or DEFAULT_STORE_POOL, per_database // 2))
    engine_total = per_database - store_max
    engine_pool = max(1, min(requested or DEFAULT_ENGINE_POOL, engine_total))
    overflow = max(0, min(DEFAULT_ENGINE_OVERFLOW, engine_total - engine_pool))
    return PoolPlan(max_connections, workers, per_worker, store_max, engine_pool, overflow)


def _worker_count() -> int:
    try:
        return max(1, int(os.environ.get(ENV_WORKER_COUNT, "1")))
    except ValueError:
        return 1


# ---------------------------------------------------------------------------------------------
# Server addresses
# ---------------------------------------------------------------------------------------------


def _async_url(value: str, where: str) -> URL:
    """``value`` as an async SQLAlchemy URL (bare ``postgresql://`` means asyncpg)."""
    try:
        url = make_url(value)
    except ArgumentError as exc:
        raise ConfigurationError(f"{where}: {value!r} is not a valid URL ({exc})") from None
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(f"{where}: {_safe(url)} is not a PostgreSQL URL")
    driver = url.get_driver_name()
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    elif driver not in ("asyncpg", "psycopg", "psycopg_async"):
        raise ConfigurationError(
            f"{where}: {_safe(url)} uses the {driver} driver, which is not async; use "
            "postgresql+asyncpg://… or postgresql+psycopg://…"
        )
    return url


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _connect_kwargs(url: URL) -> dict[str, Any]:
    """asyncpg.connect() arguments for the server (and database) of ``url``."""
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    port: Any = url.port or query.get("port")
    kwargs: dict[str, Any] = {
        "host": url.host or query.get("host"),
        "port": int(port) if port else None,
        "user": url.username,
        "password": url.password,
        "database": url.database,
    }
    ssl = query.get("ssl") or query.get("sslmode")
    if ssl:
        kwargs["ssl"] = ssl
    return {k: v for k, v in kwargs.items() if v is not None}


def _address(kwargs: Mapping[str, Any]) -> str:
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 5432)}"


def _finished_template_seed(row: Any, run_id: str) -> list[str] | None:
    """The seeded tables of a finished shared template (its ``pg_database`` row), else None."""
    if row is None or row["datallowconn"] or not row["note"]:
        return None
    note = str(row["note"])
    head = ownership_mark(run_id) + _TEMPLATE_NOTE
    if not note.startswith(head):
        return None
    try:
        seeded = json.loads(note[len(head) :])
    except ValueError:
        return None
    return [str(name) for name in seeded] if isinstance(seeded, list) else None


def _comment_sql(name: str, note: str) -> str:
    return f"COMMENT ON DATABASE {_quote(name)} IS '{note.replace(chr(39), chr(39) * 2)}'"


async def _create_marked(conn: Any, name: str, run_id: str, template: str | None = None) -> None:
    """``CREATE DATABASE`` and mark it as ``run_id``'s at once (two statements: CREATE DATABASE
    cannot share a transaction, and a clone does not inherit its template's comment)."""
    clone = f" TEMPLATE {_quote(template)}" if template is not None else ""
    await conn.execute(f"CREATE DATABASE {_quote(name)}{clone}")
    await conn.execute(_comment_sql(name, ownership_mark(run_id)))


def _is_ours(name: str, note: str | None, run_id: str | None = None) -> bool:
    """True for a database the plugin marked as its own: the mark names the run that the name
    names (and ``run_id``, if given). A name alone never is."""
    parsed = parse_database_name(name)
    run = marked_run(note)
    return parsed is not None and run == parsed.run_id and (run_id is None or run == run_id)


async def _marked_databases(conn: Any, prefix: str, run_id: str | None = None) -> list[str]:
    """Names starting with ``prefix`` of the databases the plugin marked as its own."""
    rows = await conn.fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') AS note FROM pg_database "
        "WHERE datname LIKE $1 ORDER BY datname",
        prefix.replace("_", "\\_") + "%",
    )
    return [row["datname"] for row in rows if _is_ours(row["datname"], row["note"], run_id)]


async def _drop_if_ours(conn: Any, name: str, run_id: str) -> bool:
    """``DROP DATABASE name`` if it carries ``run_id``'s mark; False (nothing done) otherwise."""
    note = await conn.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
    )
    if not _is_ours(name, note, run_id):
        return False
    await conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    return True


async def _drop_run_if_last(conn: Any, run_id: str) -> list[str]:
    """Drop what is left of ``run_id`` on the server if nobody else of the run is alive.

    ``conn`` holds the run's lock in shared mode and gives it up here; getting the lock
    exclusively then means every other holder (the run's other backends, the xdist controller)
    is gone, so nothing of the run is in use. Returns the problems met.
    """
    key = run_lock_key(run_id)
    await conn.execute("SELECT pg_advisory_unlock_shared($1, $2)", *key)
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
        return []  # another holder is alive: the last one drops it
    problems: list[str] = []
    try:
        for name in await _marked_databases(conn, f"{DB_PREFIX}{run_id}_", run_id):
            try:
                await _drop_if_ours(conn, name, run_id)
            except Exception as exc:  # collected and reported
                problems.append(f"dropping {name}: {_short_reason(exc)}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)
    return problems


class RunLock:
    """A run's lock on a server, held in shared mode from outside its backends.

    The pytest-xdist controller holds one for the whole run: while it does, no worker's backend
    is the run's last, so the shared template outlives workers that finish early.
    :meth:`release` then drops whatever the run left on the server.
    """

    def __init__(self, url: str, run_id: str) -> None:
        self._connect = _connect_kwargs(_async_url(url, "the PostgreSQL URL"))
        self.run_id = run_id
        template_name(run_id, "master")  # validates the run id
        self._background = BackgroundLoop("threadcreator-pg-run-lock")
        self._conn: Any = None

    def acquire(self) -> None:
        """Connect and take the run's lock in shared mode; BackendUnavailableError if unreachable."""

        async def take() -> None:
            asyncpg = _asyncpg()
            try:
                conn = await asyncpg.connect(
                    timeout=10,
                    server_settings={"application_name": "pytest-threadcreator"},
                    **dict(self._connect, database="postgres"),
                )
            except Exception as exc:  # becomes one readable line
                raise BackendUnavailableError(
                    f"cannot connect to PostgreSQL at {_address(self._connect)}: "
                    f"{_short_reason(exc)}"
                ) from None
            await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(self.run_id))
            self._conn = conn

        try:
            self._background.run(take(), timeout=ADMIN_TIMEOUT)
        except BaseException:
            self._background.close()
            raise

    def release(self) -> list[str]:
        """Give the lock up, drop the run's leftovers if nobody else holds it; the problems met."""
        conn, self._conn = self._conn, None
        if conn is None or self._background.closed:
            return []

        async def finish() -> list[str]:
            try:
                return await _drop_run_if_last(conn, self.run_id)
            finally:
                await conn.close(timeout=5)

        try:
            return self._background.run(finish(), timeout=ADMIN_TIMEOUT)
        except Exception as exc:  # reported to the caller
            return [f"releasing the run's lock: {_short_reason(exc)}"]
        finally:
            self._background.close()


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

Mode = Literal["url", "local", "docker", "auto"]


class PostgresBackend(Backend):
    """Databases on a PostgreSQL server: per test ``CREATE DATABASE … TEMPLATE``.

    ``mode``: ``"url"`` (``url`` required), ``"local"``, ``"docker"`` or ``"auto"`` (the
    environment's URL, then local binaries, then Docker). Build it with
    :func:`make_postgres_backend`; then :meth:`start`, :meth:`prepare_template`,
    :meth:`create_database`/:meth:`drop_database`, :meth:`stop`.
    """

    name = "postgresql"

    def __init__(
        self,
        mode: Mode,
        *,
        run_id: str,
        worker_id: str = "master",
        url: str | None = None,
        pool_size: int | None = None,
        workers: int | None = None,
        bindir: str | None = None,
        docker_image: str = DOCKER_IMAGE,
        docker_network: str = "bridge",
        environ: Mapping[str, str] | None = None,
        template_key: str | None = None,
        shared_cluster: Mapping[str, str] | None = None,
    ) -> None:
        if mode == "url" and not url:
            raise ConfigurationError("PostgresBackend(mode='url') needs a url")
        self.mode: Mode = mode
        self.run_id = run_id
        self.worker_id = normalise_worker_id(worker_id)
        template_name(run_id, self.worker_id)  # validates both ids
        #: with a key, one template per run and schema, shared by the run's workers
        self.shared_template = template_key is not None
        self.template = template_name(run_id, template_key or self.worker_id)
        #: LocalCluster.handoff() of a cluster another process of the run started (xdist)
        self._shared_cluster = dict(shared_cluster) if shared_cluster is not None else None
        self.pool_size = pool_size
        self.workers = workers if workers is not None else _worker_count()
        self._given_url = url
        self._bindir = bindir
        self._docker_image = docker_image
        self._docker_network = docker_network
        self._environ = environ if environ is not None else os.environ
        #: which source was used ("url", "local", "docker") once started
        self.source = ""
        self.version = ""
        self.plan: PoolPlan | None = None
        self.cluster: LocalCluster | None = None
        self.container: DockerServer | None = None
        #: databases of dead runs dropped at start
        self.removed_leftovers: list[str] = []
        #: seconds spent in each phase, for the report
        self.timings: dict[str, float] = {}
        self._url: URL | None = None
        self._connect: dict[str, Any] = {}
        self._background = BackgroundLoop(f"threadcreator-pg-{self.worker_id}")
        self._admin: Any = None
        self._admin_lock: asyncio.Lock | None = None
        self._schema: ThreadSchema | None = None
        self._template_ready = False
        self._seeded: list[str] = []
        self._keep_cluster = False
        self._keep_container = False
        self._databases: dict[str, Database] = {}
        self._counter = 0
        self._started = False
        self._stopped = False
        self._state_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<PostgresBackend {self.mode} run={self.run_id} worker={self.worker_id}>"

    # -- description -------------------------------------------------------------------------
    def describe(self) -> str:
        """E.g. ``postgresql-local (/tmp/tc-ab12cd34, PostgreSQL 15.20)``."""
        label = {"url": "postgresql", "local": "postgresql-local", "docker": "postgresql-docker"}
        name = label.get(self.source, "postgresql")
        where = self.cluster.socket_dir if self.cluster is not None else self.address
        return f"{name} ({where}, PostgreSQL {self.version or '?'})"

    @property
    def address(self) -> str:
        """``host:port`` of the server (the socket directory for a local cluster)."""
        return _address(self._connect) if self._connect else "(not started)"

    @property
    def url(self) -> str:
        """The server URL the engines use (password included; use :attr:`safe_url` to show)."""
        if self._url is None:
            raise BackendUnavailableError("the PostgreSQL backend was not started")
        return self._url.render_as_string(hide_password=False)

    @property
    def safe_url(self) -> str:
        """The server URL with the password hidden."""
        return _safe(self._url) if self._url is not None else "(not started)"

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Reach or start the server, take the run's lock, remove dead runs' databases."""
        if self._started:
            return
        if self._stopped:
            raise BackendUnavailableError("this PostgreSQL backend was stopped; make a new one")
        _asyncpg()
        began = time.perf_counter()
        try:
            self._start_server()
            self.timings["server_start_s"] = time.perf_counter() - began
            self._background.run(self._open_admin(), timeout=ADMIN_TIMEOUT)
        except BaseException:
            self._shutdown(strict=False)
            raise
        self._started = True
        atexit.register(self._stop_at_exit)
        self.timings["start_s"] = time.perf_counter() - began

    def _start_server(self) -> None:
        if self._shared_cluster is not None and DockerServer.is_handoff(self._shared_cluster):
            self._attach_docker(self._shared_cluster)
        elif self._shared_cluster is not None:
            self._attach_local(self._shared_cluster)
        elif self.mode == "url":
            assert self._given_url is not None
            self._use_url(_async_url(self._given_url, "the PostgreSQL URL"), "url")
        elif self.mode == "local":
            self._start_local()
        elif self.mode == "docker":
            self._start_docker()
        else:
            self._start_auto()

    def _use_url(self, url: URL, source: str) -> None:
        self._url = url
        self._connect = _connect_kwargs(url)
        self.source = source

    def _start_local(self) -> None:
        from .pg_local import LocalCluster  # POSIX-only (pwd, fcntl): imported when needed

        cluster = LocalCluster(bindir=self._bindir)
        cluster.start()
        self.cluster = cluster
        self._use_url(make_url(cluster.url), "local")

    def _attach_local(self, handoff: Mapping[str, str]) -> None:
        from .pg_local import LocalCluster

        cluster = LocalCluster.attach(handoff)  # waits while the controller still starts it
        self.cluster = cluster
        self._use_url(make_url(cluster.url), "local")

    def _start_docker(self) -> None:
        container = DockerServer(
            self._docker_image, network=self._docker_network, run_id=self.run_id
        )
        url = container.start()
        self.container = container
        self._use_url(_async_url(url, "the container's URL"), "docker")

    def _attach_docker(self, handoff: Mapping[str, str]) -> None:
        container = DockerServer.attach(handoff)  # waits while the container still starts
        self.container = container
        self._use_url(_async_url(container.url, "the container's URL"), "docker")

    def _start_auto(self) -> None:
        tried: list[str] = []
        env_url = self._environ.get(ENV_POSTGRES_URL)
        if env_url:
            try:
                self._use_url(_async_url(env_url, ENV_POSTGRES_URL), "url")
                self._background.run(self._probe(), timeout=ADMIN_TIMEOUT)
                return
            except ThreadCreatorError as exc:
                tried.append(f"{ENV_POSTGRES_URL} ({exc})")
            except Exception as exc:  # reported below
                tried.append(f"{ENV_POSTGRES_URL} ({_short_reason(exc)})")
        else:
            tried.append(f"{ENV_POSTGRES_URL} (not set)")
        self._url, self._connect = None, {}
        try:
            self._start_local()
            return
        except BackendUnavailableError as exc:
            tried.append(f"local binaries ({str(exc).removeprefix('postgresql-local: ')})")
        try:
            self._start_docker()
            return
        except BackendUnavailableError as exc:
            tried.append(f"Docker ({str(exc).removeprefix('postgresql-docker: ')})")
        raise BackendUnavailableError(
            "postgresql: no PostgreSQL server could be used. Tried: "
            + "; ".join(tried)
            + f". Set {ENV_POSTGRES_URL}=postgresql+asyncpg://user@host:5432/postgres, install "
            "the PostgreSQL server binaries, or start Docker"
        )

    async def _probe(self) -> None:
        conn = await self._connect_to("postgres")
        await conn.close()

    async def _connect_to(self, database: str) -> Any:
        asyncpg = _asyncpg()
        kwargs = dict(self._connect, database=database)
        try:
            return await asyncpg.connect(
                timeout=10, server_settings={"application_name": "pytest-threadcreator"}, **kwargs
            )
        except asyncpg.InvalidCatalogNameError:
            raise
        except Exception as exc:  # becomes one readable line
            raise BackendUnavailableError(
                f"cannot connect to PostgreSQL at {_address(kwargs)} as "
                f"{kwargs.get('user', '(default user)')}: {type(exc).__name__}: "
                f"{_short_reason(exc)}. Check that the server runs and the URL (user, password, "
                "host, port) is right"
            ) from None

    async def _open_admin(self) -> None:
        """Admin connection to the maintenance database; the run's lock; dead runs' cleanup."""
        asyncpg = _asyncpg()
        self._admin_lock = asyncio.Lock()
        try:
            conn = await self._connect_to("postgres")
        except asyncpg.InvalidCatalogNameError:
            # No "postgres" database: fall back to the URL's own (locks are per database, so
            # every run against this server then has to use the same one).
            conn = await self._connect_to(str(self._connect.get("database") or "template1"))
        self._admin = conn
        row = await conn.fetchrow(
            "SELECT current_setting('server_version') AS version, "
            "current_setting('max_connections')::int AS max_connections, "
            "current_setting('superuser_reserved_connections')::int AS reserved, "
            "(SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user) AS can"
        )
        self.version = str(row["version"]).split()[0]
        if not row["can"]:
            raise BackendUnavailableError(
                f"PostgreSQL at {self.address}: role {self._connect.get('user')!r} may not "
                "create databases; grant it (ALTER ROLE … CREATEDB) or use another user"
            )
        self.plan = plan_pools(
            int(row["max_connections"]),
            reserved=int(row["reserved"]),
            workers=self.workers,
            requested=self.pool_size,
        )
        await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(self.run_id))
        self.removed_leftovers = await self._remove_dead_runs(conn)

    async def _remove_dead_runs(self, conn: Any) -> list[str]:
        """Drop the databases of runs whose advisory lock nobody holds (their processes died).

        Only databases marked as the plugin's own count; kept ones carry no mark.
        """
        by_run: dict[str, list[str]] = {}
        for name in await _marked_databases(conn, DB_PREFIX):
            parsed = parse_database_name(name)
            if parsed is not None and parsed.run_id != self.run_id:
                by_run.setdefault(parsed.run_id, []).append(name)
        removed: list[str] = []
        for run_id, names in by_run.items():
            key = run_lock_key(run_id)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
                # Held shared by a live run, or exclusively by another backend cleaning that
                # run up right now (xdist workers start together). A shared request waits only
                # for the latter: then try again, so that the run is gone when start() returns.
                await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *key)
                await conn.execute("SELECT pg_advisory_unlock_shared($1, $2)", *key)
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
                    continue  # a process of that run is alive
            try:
                for name in names:
                    with contextlib.suppress(Exception):
                        if await _drop_if_ours(conn, name, run_id):
                            removed.append(name)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)
        return removed

    # -- admin helpers ---------------------------------------------------------------------
    def _admin_run(
        self, make: Callable[[Any], Coroutine[Any, Any, T]], *, timeout: float = ADMIN_TIMEOUT
    ) -> T:
        """Run ``make(admin_connection)`` on the background loop, one admin job at a time."""
        if not self._started:
            raise BackendUnavailableError("start() the PostgreSQL backend first")

        async def job() -> T:
            assert self._admin_lock is not None
            async with self._admin_lock:
                if self._admin is None or self._admin.is_closed():
                    await self._reopen_admin()
                return await make(self._admin)

        return self._background.run(job(), timeout=timeout)

    async def _reopen_admin(self) -> None:
        conn = await self._connect_to("postgres")
        await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(self.run_id))
        self._admin = conn

    # -- template ------------------------------------------------------------------------------
    def prepare_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Build the template (``create_all``, ``setup``, sealed), or reuse the run's one.

        A shared template (``template_key``) is built by whichever worker of the run takes its
        build lock first; the others wait on the lock and then find it finished.
        """
        self._template_ready = False
        self._schema = schema
        if not self.shared_template:
            self._build_template(schema, setup)
            self._template_ready = True
            return
        began = time.perf_counter()
        key = template_lock_key(self.template)

        async def claim(conn: Any) -> Any:
            await conn.execute("SELECT pg_advisory_lock($1, $2)", *key)
            return await conn.fetchrow(
                "SELECT datallowconn, shobj_description(oid, 'pg_database') AS note "
                "FROM pg_database WHERE datname = $1",
                self.template,
            )

        async def release(conn: Any) -> None:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)

        row = self._admin_run(claim, timeout=TEMPLATE_WAIT_TIMEOUT)
        try:
            seeded = _finished_template_seed(row, self.run_id)
            if seeded is None:  # not there, or left half-built by a worker that died
                self._build_template(schema, setup)
            else:
                self._seeded = seeded
                self.timings["template_wait_s"] = time.perf_counter() - began
        finally:
            self._admin_run(release)
        self._template_ready = True

    def _build_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Create the template, ``create_all`` into it, run ``setup``, close it."""
        began = time.perf_counter()
        tpl = _quote(self.template)

        async def create(conn: Any) -> None:
            # left half-built by a worker of this run that died: ours if marked, else not ours
            await _drop_if_ours(conn, self.template, self.run_id)
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.template):
                raise DatabaseError(
                    f"PostgreSQL at {self.address}: a database named {self.template} exists but "
                    "carries no pytest-threadcreator mark, so it is not the plugin's to drop; "
                    "if it is a leftover of a run that died while creating it, drop it by hand "
                    f'(DROP DATABASE "{self.template}") and run again'
                )
            await _create_marked(conn, self.template, self.run_id)

        self._admin_run(create)
        self._background.run(self._create_all(schema), timeout=ADMIN_TIMEOUT)
        if setup is not None:
            database = self._open(self.template, label="template", isolation="template")
            try:
                setup(database)
            finally:
                database.close()
            self._seeded = self._background.run(self._copy_seed(schema), timeout=ADMIN_TIMEOUT)

        note = ownership_mark(self.run_id) + _TEMPLATE_NOTE + json.dumps(self._seeded)

        async def seal(conn: Any) -> None:
            # Still the run's mark, now also "finished" to the other workers, and what was seeded.
            await conn.execute(_comment_sql(self.template, note))
            # No session may stay on a template (CREATE DATABASE … TEMPLATE would wait and
            # fail), and none may come back later.
            await conn.execute(f"ALTER DATABASE {tpl} ALLOW_CONNECTIONS false")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.template,
            )

        self._admin_run(seal)
        self.timings["template_s"] = time.perf_counter() - began

    async def _copy_seed(self, schema: ThreadSchema) -> list[str]:
        """Copy the rows the setup hook left in the schema's tables; returns those tables."""
        conn = await self._connect_to(self.template)
        try:
            seeded = []
            for table in schema.metadata.sorted_tables:
                name = _PREPARER.format_table(table)
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name})"):
                    seeded.append(table.name)
            if seeded:
                await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SEED_SCHEMA}")
                for table in schema.metadata.sorted_tables:
                    if table.name in seeded:
                        await conn.execute(
                            f"CREATE TABLE {SEED_SCHEMA}.{_quote(table.name)} AS TABLE "
                            f"{_PREPARER.format_table(table)}"
                        )
            return seeded
        finally:
            await conn.close()

    async def _create_all(self, schema: ThreadSchema) -> None:
        assert self._url is not None
        url = self._url.set(drivername="postgresql+asyncpg", database=self.template)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(schema.metadata.create_all)
        finally:
            await engine.dispose()

    # -- databases -----------------------------------------------------------------------------
    def create_database(self, label: str, *, isolation: str) -> Database:
        """``CREATE DATABASE tc_<run>_<worker>_<n>_<label> TEMPLATE <template>``."""
        if not self._template_ready:
            raise ConfigurationError("prepare_template() must run before create_database()")
        with self._state_lock:
            self._counter += 1
            name = database_name(self.run_id, self.worker_id, self._counter, label)

        async def create(conn: Any) -> None:
            await _create_marked(conn, name, self.run_id, template=self.template)

        self._admin_run(create)
        database = self._open(name, label=label, isolation=isolation)
        self._databases[name] = database
        return database

    def _open(self, name: str, *, label: str, isolation: str) -> Database:
        assert self._url is not None and self._schema is not None and self.plan is not None
        url = self._url.set(database=name)
        plan = self.plan
        store = PgStore(
            schema=self._schema,
            connect_kwargs=dict(self._connect, database=name),
            background=self._background,
            max_size=plan.store_max,
            name=name,
            seeded=self._seeded,
        )

        def engine_factory() -> AsyncEngine:
            return create_async_engine(
                url, pool_size=plan.engine_pool_size, max_overflow=plan.engine_max_overflow
            )

        return Database(
            url=url.render_as_string(hide_password=False),
            backend="postgresql",
            schema=self._schema,
            store=store,
            engine_factory=engine_factory,
            isolation=isolation,
            name=name,
            location=f"{self.address}/{name}",
        )

    def drop_database(self, database: Database) -> None:
        """Close the database's pools and ``DROP DATABASE … WITH (FORCE)`` if it carries this
        run's mark (a database without it is left alone, whatever its name)."""
        database.close()
        self._databases.pop(database.name, None)
        name = database.name

        async def drop(conn: Any) -> None:
            await _drop_if_ours(conn, name, self.run_id)

        self._admin_run(drop)

    def keep_database(self, database: Database) -> str:
        """Keep a database after the run (``--threadcreator-keep``); returns its final name.

        Its mark gives way to a note saying it was kept (no run drops a database without the
        mark), then it is renamed ``tk_…``; its ``name``, ``url`` and ``location`` are updated.
        Drop it by hand when done.
        """
        database.close()
        self._databases.pop(database.name, None)
        kept = "tk_" + database.name.removeprefix(DB_PREFIX)
        old, new = _quote(database.name), _quote(kept)

        async def rename(conn: Any) -> None:
            await conn.execute(_comment_sql(database.name, kept_note(self.run_id, kept)))
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database.name,
            )
            await conn.execute(f"ALTER DATABASE {old} RENAME TO {new}")

        self._admin_run(rename)
        database.location = database.location.removesuffix(database.name) + kept
        if self.cluster is not None:
            # A throwaway cluster would vanish at exit: keep its files and say how to start it.
            self._keep_cluster = True
            database.location += f" (cluster kept; start it with: {self.cluster.start_command()})"
        if self.container is not None:
            # The container would be removed at exit: keep it running, out of later runs' sweeps.
            self._keep_container = True
            name = self.container.name + KEPT_SUFFIX
            database.location += f" (container {name} kept; remove it with: docker rm -f -v {name})"
        database.url = make_url(database.url).set(database=kept).render_as_string(False)
        database.name = kept
        return kept

    def leftovers(self) -> list[str]:
        """Databases of this run and worker still on the server (marked as the run's own)."""
        if not self._started or self._stopped:
            return []
        prefix = f"{DB_PREFIX}{self.run_id}_{self.worker_id}_"

        async def names(conn: Any) -> list[str]:
            return await _marked_databases(conn, prefix, self.run_id)

        return self._admin_run(names)

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drop this run's databases and template, release the lock, stop what we started.

        Idempotent. Raises DatabaseError after finishing all the cleanup it could do when
        something failed on the way.
        """
        self._shutdown(strict=True)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self._shutdown(strict=False)

    def _shutdown(self, *, strict: bool) -> None:
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._stop_at_exit)
        problems: list[str] = []
        databases = list(self._databases.values())
        self._databases.clear()
        for database in databases:
            try:
                database.close()
            except Exception as exc:  # collected and reported
                problems.append(f"closing {database.name}: {_short_reason(exc)}")
        names = [d.name for d in databases]
        if not self.shared_template:
            names.append(self.template)
        # a shared cluster (xdist) goes with everything in it once the controller stops it
        attached = self.cluster is not None and self.cluster.attached
        if self._admin is not None and not self._background.closed:

            async def drop_all() -> None:
                assert self._admin_lock is not None
                async with self._admin_lock:
                    for name in names:
                        try:
                            await _drop_if_ours(self._admin, name, self.run_id)
                        except Exception as exc:  # collected and reported
                            problems.append(f"dropping {name}: {_short_reason(exc)}")
                    if self.shared_template and not attached:
                        problems.extend(await _drop_run_if_last(self._admin, self.run_id))
                    await self._admin.close(timeout=5)  # releases the run's advisory lock

            try:
                self._background.run(drop_all(), timeout=ADMIN_TIMEOUT)
            except Exception as exc:  # collected and reported
                problems.append(f"dropping databases: {_short_reason(exc)}")
                with contextlib.suppress(Exception):
                    self._admin.terminate()
        self._admin = None
        self._background.close()
        if self.cluster is not None:
            # an attached cluster (xdist) is the controller's to stop; its stop() does nothing
            self.cluster.stop(keep_data=self._keep_cluster)
        if self.container is not None:
            # an attached container (xdist) is the controller's to remove
            self.container.stop(keep=self._keep_container)
        if problems and strict:
            raise DatabaseError(
                "stopping the PostgreSQL backend left work undone: " + "; ".join(problems)
            )


def make_postgres_backend(
    value: str,
    *,
    worker_id: str,
    run_id: str,
    pool_size: int | None = None,
    template_key: str | None = None,
    shared_cluster: Mapping[str, str] | None = None,
    docker_image: str | None = None,
    docker_network: str | None = None,
) -> PostgresBackend:
    """The backend for a ``--threadcreator-db`` value (not started yet).

    ``"postgresql"`` (auto: ``$THREADCREATOR_POSTGRES_URL``, else local binaries, else Docker),
    ``"postgresql-local"``, ``"postgresql-docker"``, or an async SQLAlchemy URL.
    ``template_key``: share one template per run (see the module docstring);
    ``shared_cluster``: use the local cluster (or Docker container) another process of the run
    started; ``docker_image``/``docker_network``: the container's image and network mode.
    """
    _asyncpg()
    modes: dict[str, Mode] = {
        "postgresql": "auto",
        "postgresql-local": "local",
        "postgresql-docker": "docker",
    }
    common: dict[str, Any] = {
        "run_id": run_id,
        "worker_id": worker_id,
        "pool_size": pool_size,
        "template_key": template_key,
        "shared_cluster": shared_cluster,
        "docker_image": docker_image or DOCKER_IMAGE,
        "docker_network": docker_network or "bridge",
    }
    value = value.strip()
    if value in modes:
        return PostgresBackend(modes[value], **common)
    if "://" in value:
        _async_url(value, "--threadcreator-db")
        return PostgresBackend("url", url=value, **common)
    raise ConfigurationError(
        f"{value!r} is not a PostgreSQL backend; valid values: postgresql, postgresql-local, "
        "postgresql-docker, or an async URL such as postgresql+asyncpg://user@host:5432/postgres"
    )
