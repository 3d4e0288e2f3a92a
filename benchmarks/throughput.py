"""Throughput: ThreadCreator against the raw driver doing the same two inserts per transaction.

Run: ``.venv/bin/python benchmarks/throughput.py [--creates N] [--repeats R]
[--backends sqlite,postgresql,mysql] [--pg-url URL] [--mysql-url URL]``; or import
:func:`measure_sqlite` / :func:`measure_postgres` / :func:`measure_mysql` (``benchmarks/run.py``
does).

Everything runs in this process, without pytest. Each measurement gets a fresh database cloned
from the backend's template (the plugin's own ``create_database``), warms up with one untimed
batch, then times ``creates`` creates, either as sequential awaits or as ``asyncio.gather`` in
batches. Variants are interleaved (and the order reversed every other repeat) so drift on a
noisy machine hits ours and the raw driver alike.

Raw baselines, written the way a careful hand-written loop would be:

* aiosqlite: one connection (WAL, ``synchronous=OFF``, ``foreign_keys=ON``, busy timeout);
  ``BEGIN IMMEDIATE; INSERT thread; INSERT message; COMMIT`` = 4 awaits per transaction, as a
  sequential loop and as concurrent tasks sharing the connection (an ``asyncio.Lock`` keeps
  their transactions from interleaving on it, which would otherwise fail).
* asyncpg: a pool of 10; per create the single statement the plugin's PostgreSQL store sends
  (``WITH t AS (INSERT thread … RETURNING id) INSERT message …``, the message's thread id taken
  from the CTE), one round trip, atomic on its own; sequential and as concurrent tasks.
* asyncmy: a pool as large as the plugin's store pool on that server (``maxsize`` from the
  backend's pool plan, 10 by default; autocommit, utf8mb4, like the store's); ``START
  TRANSACTION; INSERT thread; INSERT message; COMMIT`` sent as one multi-statement packet, one
  round trip per create, sequential and as concurrent tasks: the transaction per create a
  hand-written loop sends. (The plugin's MySQL store sends the same packet for a create waiting
  alone, and joins up to 8 creates that wait at the same time into one transaction.)

And the ceilings, which the lines report ThreadCreator as a fraction of:

* SQLite (``ceiling-sqlite3``): the same transaction in plain ``sqlite3``, one thread, no event
  loop, the same pragmas and rows. Nothing that talks to SQLite from asyncio can beat it.
* MySQL (``ceiling-asyncmy``): the plugin's own design written bare in raw asyncmy on the same
  pool: as many lanes as connections, each taking an even share of a gathered batch (at most
  8) and sending it as one transaction, one multi-row ``INSERT`` per table, in one packet; no
  per-create futures, no second event loop. What the plugin's design can reach on this server.

The raw rows carry the same columns and JSON as ThreadCreator's default schema (checked: one row
of each side is read back and compared, ids and times masked), and the same time-ordered ids.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_threadcreator import ThreadCreator, UserExecutionContext
from pytest_threadcreator.backends.sqlite import SqliteBackend
from pytest_threadcreator.ids import new_message_id, new_thread_id
from pytest_threadcreator.schema import default_schema

__all__ = [
    "VARIANTS",
    "BenchmarkError",
    "ThroughputResult",
    "measure_mysql",
    "measure_postgres",
    "measure_sqlite",
]

MESSAGE = "Hello from the throughput benchmark"
TITLE = "Benchmark thread"
DEFAULT_CREATES = 5_000
DEFAULT_BATCH = 200
PG_POOL_SIZE = 10

Side = Literal["ours", "raw", "ceiling"]
Mode = Literal["sequential", "concurrent"]
#: (variant name, side, mode); interleaved ours/raw so both see the same machine state.
VARIANTS: tuple[tuple[str, Side, Mode], ...] = (
    ("ours-sequential", "ours", "sequential"),
    ("raw-sequential", "raw", "sequential"),
    ("ours-concurrent", "ours", "concurrent"),
    ("raw-concurrent", "raw", "concurrent"),
)
#: SQLite only: plain sqlite3 in one thread, no event loop (see the module docstring).
SQLITE_CEILING: tuple[str, Side, Mode] = ("ceiling-sqlite3", "ceiling", "sequential")
#: MySQL only: the plugin's packets of creates in one transaction, bare (see the docstring).
MYSQL_CEILING: tuple[str, Side, Mode] = ("ceiling-asyncmy", "ceiling", "concurrent")
#: What each ceiling is, for the printed lines.
CEILING_LABELS = {
    SQLITE_CEILING[0]: "plain sqlite3, one thread, no loop",
    MYSQL_CEILING[0]: "raw asyncmy, the plugin's grouped packets bare",
}

Call = Callable[[UserExecutionContext], Awaitable[object]]
Log = Callable[[str], None]

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=OFF",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)
THREAD_COLUMNS = ("id", "object", "user_id", "title", "status", "created_at", "metadata_")
MESSAGE_COLUMNS = (
    "id",
    "object",
    "thread_id",
    "role",
    "content",
    "created_at",
    "assistant_id",
    "run_id",
    "file_ids",
    "metadata_",
)
JSON_COLUMNS = frozenset({"metadata_", "content", "file_ids"})
#: Values that differ per row by design; masked before ours and raw rows are compared.
MASKED = frozenset({"id", "user_id", "thread_id", "run_id", "created_at"})


class BenchmarkError(Exception):
    """The benchmark itself found something wrong (a count or row shape that does not match)."""


@dataclass
class ThroughputResult:
    """Creates per second of every variant, one value per repeat."""

    backend: str
    creates: int
    batch: int
    rates: dict[str, list[float]] = field(default_factory=dict)
    #: why the backend could not be measured (None: it was)
    reason: str | None = None
    #: details of the measurement worth keeping (e.g. the pool size, the server's version)
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, variant: str) -> float:
        """Median creates/s of ``variant``."""
        values = sorted(self.rates[variant])
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    def ceiling_name(self) -> str | None:
        """The ceiling variant this backend measured (None: none)."""
        for name in CEILING_LABELS:
            if self.rates.get(name):
                return name
        return None

    def ceiling(self) -> float | None:
        """Median creates/s of the backend's ceiling (SQLite, MySQL), else None."""
        name = self.ceiling_name()
        return None if name is None else self.median(name)

    def best_raw(self) -> tuple[str, float]:
        """The better raw variant and its median creates/s."""
        return max(
            ((name, self.median(name)) for name, side, _ in VARIANTS if side == "raw"),
            key=lambda item: item[1],
        )


def _contexts(n: int) -> list[UserExecutionContext]:
    return [UserExecutionContext(user_id=f"bench_user_{i:06d}") for i in range(n)]


def _run_ours(
    database: Any, contexts: Sequence[UserExecutionContext], mode: Mode, batch: int
) -> float:
    """Seconds ThreadCreator takes for ``contexts`` on ``database`` (sequential or gathered)."""
    creator = ThreadCreator(database)

    async def ours(c: UserExecutionContext) -> object:
        return await creator.create_thread_with_message(c, MESSAGE, TITLE)

    return asyncio.run(_drive(ours, contexts, mode, batch))


async def _drive(
    call: Call, contexts: Sequence[UserExecutionContext], mode: Mode, batch: int
) -> float:
    """One untimed warm-up batch, then the timed creates; returns the seconds they took."""
    await _run_mode(call, contexts[:batch], mode, batch)
    started = time.perf_counter()
    await _run_mode(call, contexts[batch:], mode, batch)
    return time.perf_counter() - started


async def _run_mode(
    call: Call, contexts: Sequence[UserExecutionContext], mode: Mode, batch: int
) -> None:
    if mode == "sequential":
        for context in contexts:
            await call(context)
    else:
        for i in range(0, len(contexts), batch):
            await asyncio.gather(*(call(c) for c in contexts[i : i + batch]))


def raw_rows(context: UserExecutionContext) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Thread and message parameters, in THREAD_COLUMNS / MESSAGE_COLUMNS order, JSON as text."""
    now = int(time.time())
    thread_id, message_id = new_thread_id(), new_message_id()
    meta = {"user_id": context.user_id, "title": TITLE, "status": "active", "created_at": now}
    thread = (
        thread_id,
        "thread",
        context.user_id,
        TITLE,
        "active",
        now,
        json.dumps(meta),
    )
    content = [{"type": "text", "text": {"value": MESSAGE, "annotations": []}}]
    message = (
        message_id,
        "thread.message",
        thread_id,
        "user",
        json.dumps(content),
        now,
        None,
        context.run_id,
        json.dumps([]),
        json.dumps({"initial_message": True}),
    )
    return thread, message


def _insert_sql(
    table: str, columns: Sequence[str], style: Literal["qmark", "dollar", "format"], rows: int = 1
) -> str:
    if style == "qmark":
        marks = ", ".join("?" for _ in columns)
    elif style == "dollar":
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    else:  # MySQL: %s, and every column name in backquotes (``role`` is a keyword there)
        marks = ", ".join("%s" for _ in columns)
        columns = [f"`{c}`" for c in columns]
    values = ", ".join([f"({marks})"] * rows)  # rows > 1: MySQL's ceiling only (no numbering)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}"


def _shape(thread: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """A row pair with per-row values masked and JSON parsed, for comparing ours with raw."""

    def norm(row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key in JSON_COLUMNS and isinstance(value, str):
                value = json.loads(value)
            if key == "metadata_" and isinstance(value, dict):
                value = {k: ("<masked>" if k in MASKED else v) for k, v in value.items()}
            out[key] = "<masked>" if key in MASKED and value is not None else value
        return out

    return {"thread": norm(thread), "message": norm(message)}


def _compare_shapes(backend: str, shapes: dict[str, dict[str, Any]]) -> None:
    ours, raw = shapes.get("ours"), shapes.get("raw")
    if ours is not None and raw is not None and ours != raw:
        raise BenchmarkError(
            f"{backend}: the raw baseline does not write what ThreadCreator writes; "
            f"ThreadCreator: {ours!r}; raw: {raw!r}"
        )


# -------------------------------------------------------------------------------------------
# SQLite
# -------------------------------------------------------------------------------------------


@asynccontextmanager
async def _raw_aiosqlite(path: Path, mode: Mode) -> AsyncIterator[Call]:
    import aiosqlite

    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in SQLITE_PRAGMAS:
            await conn.execute(pragma)
        thread_sql = _insert_sql("threads", THREAD_COLUMNS, "qmark")
        message_sql = _insert_sql("messages", MESSAGE_COLUMNS, "qmark")

        async def transaction(context: UserExecutionContext) -> None:
            thread, message = raw_rows(context)
            await conn.execute("BEGIN IMMEDIATE")
            try:
                await conn.execute(thread_sql, thread)
                await conn.execute(message_sql, message)
                await conn.execute("COMMIT")
            except BaseException:
                await conn.execute("ROLLBACK")
                raise

        if mode == "sequential":
            yield transaction
        else:
            lock = asyncio.Lock()

            async def shared(context: UserExecutionContext) -> None:
                async with lock:
                    await transaction(context)

            yield shared
    finally:
        await conn.close()


def _sqlite_readback(path: Path) -> tuple[int, int, dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        threads = conn.execute("SELECT count(*) FROM threads").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        thread = conn.execute(
            f"SELECT {', '.join(THREAD_COLUMNS)}, deleted_at FROM threads ORDER BY id LIMIT 1"
        ).fetchone()
        message = conn.execute(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE thread_id = ?",
            (thread["id"],),
        ).fetchone()
        return int(threads), int(messages), _shape(dict(thread), dict(message))
    finally:
        conn.close()


def _sqlite_ceiling_run(path: Path, contexts: Sequence[UserExecutionContext], batch: int) -> float:
    """Seconds plain sqlite3 takes for the same transactions: one thread, no event loop."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma)
        thread_sql = _insert_sql("threads", THREAD_COLUMNS, "qmark")
        message_sql = _insert_sql("messages", MESSAGE_COLUMNS, "qmark")

        def run(part: Sequence[UserExecutionContext]) -> None:
            for context in part:
                thread, message = raw_rows(context)
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(thread_sql, thread)
                conn.execute(message_sql, message)
                conn.execute("COMMIT")

        run(contexts[:batch])  # the same untimed warm-up as the other variants
        started = time.perf_counter()
        run(contexts[batch:])
        return time.perf_counter() - started
    finally:
        conn.close()


def measure_sqlite(
    creates: int = DEFAULT_CREATES,
    repeats: int = 3,
    batch: int = DEFAULT_BATCH,
    log: Log | None = None,
) -> ThroughputResult:
    """ThreadCreator on the plugin's SQLite backend against raw aiosqlite and plain sqlite3."""
    variants = (*VARIANTS, SQLITE_CEILING)
    result = ThroughputResult("sqlite", creates, batch, {name: [] for name, _, _ in variants})
    contexts = _contexts(creates + batch)
    shapes: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tc-bench-tp-") as tmp:
        backend = SqliteBackend(Path(tmp), worker_id="bench")
        backend.start()
        backend.prepare_template(default_schema(), None)
        try:
            for rep in range(repeats):
                order = variants if rep % 2 == 0 else tuple(reversed(variants))
                for name, side, mode in order:
                    database = backend.create_database(name, isolation="clean")
                    path = Path(database.location)
                    try:
                        if side == "ours":
                            elapsed = _run_ours(database, contexts, mode, batch)
                        elif side == "raw":
                            database.close()  # the raw loop brings its own connection
                            elapsed = asyncio.run(_sqlite_raw_run(path, contexts, mode, batch))
                        else:
                            database.close()
                            elapsed = _sqlite_ceiling_run(path, contexts, batch)
                        threads, messages, shape = _sqlite_readback(path)
                    finally:
                        backend.drop_database(database)
                    _check_counts("sqlite", name, threads, messages, len(contexts))
                    shapes.setdefault("raw" if side == "ceiling" else side, shape)
                    result.rates[name].append(creates / elapsed)
                    if log is not None:
                        log(f"throughput sqlite {name}: {creates / elapsed:,.0f}/s")
                _compare_shapes("sqlite", shapes)
        finally:
            backend.stop()
    return result


async def _sqlite_raw_run(
    path: Path, contexts: Sequence[UserExecutionContext], mode: Mode, batch: int
) -> float:
    async with _raw_aiosqlite(path, mode) as call:
        return await _drive(call, contexts, mode, batch)


def _check_counts(backend: str, variant: str, threads: int, messages: int, expected: int) -> None:
    if threads != expected or messages != expected:
        raise BenchmarkError(
            f"{backend} {variant}: expected {expected} threads and messages, found "
            f"{threads} threads and {messages} messages"
        )


# -------------------------------------------------------------------------------------------
# PostgreSQL
# -------------------------------------------------------------------------------------------


def _asyncpg() -> Any:
    """The asyncpg module (untyped; imported only for the PostgreSQL figures)."""
    return importlib.import_module("asyncpg")


async def _pg_readback(connect: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    conn = await _asyncpg().connect(**connect)
    try:
        threads = await conn.fetchval("SELECT count(*) FROM threads")
        messages = await conn.fetchval("SELECT count(*) FROM messages")
        thread = await conn.fetchrow(
            f"SELECT {', '.join(THREAD_COLUMNS)}, deleted_at FROM threads ORDER BY id LIMIT 1"
        )
        message = await conn.fetchrow(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM messages WHERE thread_id = $1",
            thread["id"],
        )
        return int(threads), int(messages), _shape(dict(thread), dict(message))
    finally:
        await conn.close()


def _pg_cte_sql() -> str:
    """Both inserts as one statement, the message taking its thread id from the thread's
    ``RETURNING``: the single data-modifying CTE the plugin's PostgreSQL store sends."""
    n = len(THREAD_COLUMNS)
    thread = _insert_sql("threads", THREAD_COLUMNS, "dollar")
    marks, i = [], n
    for column in MESSAGE_COLUMNS:
        if column == "thread_id":
            marks.append("(SELECT id FROM t)")
        else:
            i += 1
            marks.append(f"${i}")
    message = f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) VALUES ({', '.join(marks)})"
    return f"WITH t AS ({thread} RETURNING id) {message}"


_PG_MESSAGE_THREAD = MESSAGE_COLUMNS.index("thread_id")


async def _pg_raw_run(
    connect: dict[str, Any], contexts: Sequence[UserExecutionContext], mode: Mode, batch: int
) -> float:
    pool = await _asyncpg().create_pool(min_size=PG_POOL_SIZE, max_size=PG_POOL_SIZE, **connect)
    sql = _pg_cte_sql()
    skip = _PG_MESSAGE_THREAD

    async def transaction(context: UserExecutionContext) -> None:
        thread, message = raw_rows(context)
        async with pool.acquire() as conn:
            await conn.execute(sql, *thread, *message[:skip], *message[skip + 1 :])

    try:
        return await _drive(transaction, contexts, mode, batch)
    finally:
        await pool.close()


def _pg_connect_kwargs(url: str, database: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    kwargs: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "database": database,
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def measure_postgres(
    url: str,
    creates: int = DEFAULT_CREATES,
    repeats: int = 3,
    batch: int = DEFAULT_BATCH,
    log: Log | None = None,
) -> ThroughputResult:
    """ThreadCreator on the plugin's PostgreSQL backend (by URL) against raw asyncpg.

    Returns a result with ``reason`` set when the plugin's PostgreSQL backend cannot be built or
    started (not there yet, no driver, server unreachable).
    """
    result = ThroughputResult("postgresql", creates, batch, {name: [] for name, _, _ in VARIANTS})
    try:
        from pytest_threadcreator.backends.postgresql.janitor import new_run_id
        from pytest_threadcreator.backends.postgresql.kind import make_postgres_backend

        backend = make_postgres_backend(url, worker_id="bench", run_id=new_run_id())
        backend.start()
    except Exception as exc:
        result.reason = f"{type(exc).__name__}: {exc}"
        return result
    _measure_server(
        result,
        backend,
        connect=lambda name: _pg_connect_kwargs(backend.url, name),
        raw=_pg_raw_run,
        readback=_pg_readback,
        repeats=repeats,
        log=log,
    )
    return result


def _measure_server(
    result: ThroughputResult,
    backend: Any,
    *,
    connect: Callable[[str], dict[str, Any]],
    raw: Callable[[dict[str, Any], Sequence[UserExecutionContext], Mode, int], Awaitable[float]],
    readback: Callable[[dict[str, Any]], Awaitable[tuple[int, int, dict[str, Any]]]],
    repeats: int,
    log: Log | None,
    ceiling: Callable[[dict[str, Any], Sequence[UserExecutionContext], int], Awaitable[float]]
    | None = None,
) -> None:
    """Every variant ``repeats`` times on a started server backend (stopped at the end), each in
    a new database of its own, order reversed every other repeat; rates into ``result``.

    ``connect(database)``: the raw driver's connect kwargs; ``raw(connect, contexts, mode,
    batch)``: the raw loop's seconds; ``readback(connect)``: thread and message counts and the
    shape of one pair, checked against every other variant's; ``ceiling(connect, contexts,
    batch)``: the seconds of the backend's ceiling (:data:`MYSQL_CEILING`), if it has one.
    """
    contexts = _contexts(result.creates + result.batch)
    shapes: dict[str, dict[str, Any]] = {}
    variants = VARIANTS if ceiling is None else (*VARIANTS, MYSQL_CEILING)
    try:
        backend.prepare_template(default_schema(), None)
        for rep in range(repeats):
            order = variants if rep % 2 == 0 else tuple(reversed(variants))
            for name, side, mode in order:
                database = backend.create_database(name.replace("-", "_"), isolation="clean")
                kwargs = connect(database.name)
                try:
                    if side == "ours":
                        elapsed = _run_ours(database, contexts, mode, result.batch)
                    elif side == "raw" or ceiling is None:
                        database.close()
                        elapsed = asyncio.run(raw(kwargs, contexts, mode, result.batch))
                    else:
                        database.close()
                        elapsed = asyncio.run(ceiling(kwargs, contexts, result.batch))
                    threads, messages, shape = asyncio.run(readback(kwargs))
                finally:
                    backend.drop_database(database)
                _check_counts(result.backend, name, threads, messages, len(contexts))
                shapes.setdefault("raw" if side == "ceiling" else side, shape)
                rate = result.creates / elapsed
                result.rates[name].append(rate)
                if log is not None:
                    log(f"throughput {result.backend} {name}: {rate:,.0f}/s")
            _compare_shapes(result.backend, shapes)
    finally:
        backend.stop()


# -------------------------------------------------------------------------------------------
# MySQL / MariaDB
# -------------------------------------------------------------------------------------------


def _asyncmy() -> Any:
    """The asyncmy module (untyped; imported only for the MySQL figures)."""
    return importlib.import_module("asyncmy")


async def _mysql_readback(connect: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    conn = await _asyncmy().connect(charset="utf8mb4", **connect)
    columns = ", ".join(f"`{c}`" for c in MESSAGE_COLUMNS)
    try:
        async with conn.cursor(_asyncmy().cursors.DictCursor) as cur:
            await cur.execute("SELECT count(*) AS n FROM threads")
            threads = (await cur.fetchone())["n"]
            await cur.execute("SELECT count(*) AS n FROM messages")
            messages = (await cur.fetchone())["n"]
            await cur.execute(
                f"SELECT {', '.join(THREAD_COLUMNS)}, deleted_at FROM threads ORDER BY id LIMIT 1"
            )
            thread = await cur.fetchone()
            await cur.execute(
                f"SELECT {columns} FROM messages WHERE thread_id = %s", (thread["id"],)
            )
            message = await cur.fetchone()
        return int(threads), int(messages), _shape(dict(thread), dict(message))
    finally:
        conn.close()


async def _mysql_pool(connect: dict[str, Any], pool_size: int) -> Any:
    """An asyncmy pool like the plugin's store's (autocommit, utf8mb4, multi-statement)."""
    from pytest_threadcreator.store.mysql import MULTI_STATEMENTS

    return await _asyncmy().create_pool(
        minsize=1,
        maxsize=pool_size,
        autocommit=True,
        charset="utf8mb4",
        client_flag=MULTI_STATEMENTS,
        **connect,
    )


async def _mysql_raw_run(
    connect: dict[str, Any],
    pool_size: int,
    contexts: Sequence[UserExecutionContext],
    mode: Mode,
    batch: int,
) -> float:
    pool = await _mysql_pool(connect, pool_size)
    # One packet, one round trip: what the plugin's store sends for a create waiting alone.
    sql = (
        f"START TRANSACTION; {_insert_sql('threads', THREAD_COLUMNS, 'format')}; "
        f"{_insert_sql('messages', MESSAGE_COLUMNS, 'format')}; COMMIT"
    )

    async def transaction(context: UserExecutionContext) -> None:
        thread, message = raw_rows(context)
        async with pool.acquire() as conn:
            try:
                async with conn.cursor() as cur:
                    await cur.execute(sql, thread + message)
                    while await cur.nextset():
                        pass
            except BaseException:
                await conn.rollback()
                raise

    try:
        return await _drive(transaction, contexts, mode, batch)
    finally:
        pool.close()
        await pool.wait_closed()


async def _mysql_ceiling_run(
    connect: dict[str, Any], pool_size: int, contexts: Sequence[UserExecutionContext], batch: int
) -> float:
    """Seconds for :data:`MYSQL_CEILING`: each gathered batch taken by ``pool_size`` lanes, an
    even share (at most 8) per packet, one transaction and one multi-row INSERT per table."""
    from pytest_threadcreator.store.mysql_batch import MAX_BATCH

    pool = await _mysql_pool(connect, pool_size)
    sql: dict[int, str] = {}

    def packet(n: int) -> str:
        if n not in sql:
            threads = _insert_sql("threads", THREAD_COLUMNS, "format", rows=n)
            messages = _insert_sql("messages", MESSAGE_COLUMNS, "format", rows=n)
            sql[n] = f"START TRANSACTION; {threads}; {messages}; COMMIT"
        return sql[n]

    async def lane(queue: list[tuple[tuple[Any, ...], tuple[Any, ...]]], lanes: int) -> None:
        async with pool.acquire() as conn, conn.cursor() as cur:
            while queue:
                take = min(MAX_BATCH, -(-len(queue) // lanes), len(queue))
                rows, queue[:take] = queue[:take], []
                params = tuple(v for thread, _ in rows for v in thread)
                params += tuple(v for _, message in rows for v in message)
                await cur.execute(packet(len(rows)), params)
                while await cur.nextset():
                    pass

    async def run(part: Sequence[UserExecutionContext]) -> None:
        for i in range(0, len(part), batch):
            queue = [raw_rows(c) for c in part[i : i + batch]]
            lanes = min(pool_size, len(queue))
            await asyncio.gather(*(lane(queue, lanes) for _ in range(lanes)))

    try:
        await run(contexts[:batch])  # warm-up, untimed (as _drive)
        started = time.perf_counter()
        await run(contexts[batch:])
        return time.perf_counter() - started
    finally:
        pool.close()
        await pool.wait_closed()


def _mysql_connect_kwargs(url: str, database: str) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return {
        "host": parsed.host or "localhost",
        "port": parsed.port or 3306,
        "user": parsed.username or "root",
        "password": parsed.password or "",
        "db": database,
    }


def measure_mysql(
    url: str,
    creates: int = DEFAULT_CREATES,
    repeats: int = 3,
    batch: int = DEFAULT_BATCH,
    log: Log | None = None,
) -> ThroughputResult:
    """ThreadCreator on the plugin's MySQL/MariaDB backend (by URL) against raw asyncmy.

    Returns a result with ``reason`` set when the backend cannot be built or started (no
    driver, server unreachable).
    """
    result = ThroughputResult("mysql", creates, batch, {name: [] for name, _, _ in VARIANTS})
    try:
        from pytest_threadcreator.backends.mysql.backend import MySqlBackend
        from pytest_threadcreator.backends.postgresql.janitor import new_run_id

        backend = MySqlBackend(url, run_id=new_run_id(), worker_id="bench")
        backend.start()
    except Exception as exc:
        result.reason = f"{type(exc).__name__}: {exc}"
        return result
    assert backend.plan is not None
    pool_size = backend.plan.store_max  # the plugin's store pool on this server

    async def raw(
        connect: dict[str, Any], contexts: Sequence[UserExecutionContext], mode: Mode, batch: int
    ) -> float:
        return await _mysql_raw_run(connect, pool_size, contexts, mode, batch)

    async def ceiling(
        connect: dict[str, Any], contexts: Sequence[UserExecutionContext], batch: int
    ) -> float:
        return await _mysql_ceiling_run(connect, pool_size, contexts, batch)

    result.rates[MYSQL_CEILING[0]] = []
    _measure_server(
        result,
        backend,
        connect=lambda name: _mysql_connect_kwargs(url, name),
        raw=raw,
        readback=_mysql_readback,
        repeats=repeats,
        log=log,
        ceiling=ceiling,
    )
    result.extra["pool_size"] = pool_size
    result.extra["server"] = backend.version
    return result


def _print(result: ThroughputResult) -> None:
    if result.reason is not None:
        print(f"{result.backend}: not available: {result.reason}")
        return
    raw_name, raw_rate = result.best_raw()
    print(f"{result.backend}: {result.creates} creates per measurement, batch {result.batch}")
    ceiling = result.ceiling_name()
    for name, _, _ in VARIANTS:
        rate = result.median(name)
        line = f"  {name:16} {rate:10,.0f}/s  ({rate / raw_rate:.2f}× best raw, {raw_name}"
        if ceiling is not None:
            line += f"; {_paired_ratio(result, name, ceiling):.2f}× the ceiling"
        print(line + ")")
    if ceiling is not None:
        rate = result.median(ceiling)
        print(f"  {ceiling:16} {rate:10,.0f}/s  ({CEILING_LABELS[ceiling]})")


def _paired_ratio(result: ThroughputResult, name: str, base: str) -> float:
    """Median over repeats of ``name``'s rate divided by ``base``'s rate in the same repeat."""
    pairs = sorted(a / b for a, b in zip(result.rates[name], result.rates[base], strict=False))
    mid = len(pairs) // 2
    return pairs[mid] if len(pairs) % 2 else (pairs[mid - 1] + pairs[mid]) / 2


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--creates", type=int, default=DEFAULT_CREATES)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql,mysql")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "THREADCREATOR_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("THREADCREATOR_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/"),
    )
    args = parser.parse_args(argv)
    backends = {b.strip() for b in args.backends.split(",") if b.strip()}

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    if "sqlite" in backends:
        _print(measure_sqlite(args.creates, args.repeats, args.batch, log))
    if "postgresql" in backends:
        _print(measure_postgres(args.pg_url, args.creates, args.repeats, args.batch, log))
    if "mysql" in backends:
        _print(measure_mysql(args.mysql_url, args.creates, args.repeats, args.batch, log))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
