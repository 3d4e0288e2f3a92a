"""How a PostgreSQL database is emptied between tests, and the seed rows it gets back.

:func:`_reset_sql` is the one statement a reset runs (see its docstring), and
:func:`reset_function_sql` the same as a function that each template, and so each clone, holds;
:func:`copy_seed` keeps the rows the setup hook put into a template in :data:`SEED_SCHEMA`,
where the reset of every clone finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

if TYPE_CHECKING:
    from ..schema import ThreadSchema

__all__ = [
    "RESET_CALL",
    "RESET_LOCK_TIMEOUT",
    "RESET_SCHEMA",
    "RESET_TRUNCATE_ROWS",
    "SEED_SCHEMA",
    "copy_seed",
    "reset_function_sql",
]

_PREPARER = sa_asyncpg.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


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
    body = _reset_body(schema, seeded)
    return "SELECT 1" if body is None else f"DO $threadcreator$ {body} END $threadcreator$;"


#: Schema in each template holding :func:`reset_function_sql`'s function.
RESET_SCHEMA = "threadcreator_reset"
#: A reset on a database holding that function.
RESET_CALL = f"SELECT {RESET_SCHEMA}.reset()"


def reset_function_sql(schema: ThreadSchema, seeded: Sequence[str] = ()) -> str | None:
    """:func:`_reset_sql`'s reset as a function in :data:`RESET_SCHEMA`, for the template (its
    clones hold it too): a server session compiles and plans it once, where it compiles the DO
    block on every reset (measured on one session: 0.6 ms a reset against 1.1 ms). None for a
    schema without tables."""
    body = _reset_body(schema, seeded)
    if body is None:
        return None
    return (
        f"CREATE SCHEMA {RESET_SCHEMA}; CREATE FUNCTION {RESET_SCHEMA}.reset() RETURNS void "
        f"LANGUAGE plpgsql AS $threadcreator$ {body} END $threadcreator$;"
    )


def _reset_body(schema: ThreadSchema, seeded: Sequence[str]) -> str | None:
    """The PL/pgSQL of :func:`_reset_sql`, from ``DECLARE`` up to its last ``END``."""
    parts = _reset_parts(schema, seeded)
    if parts is None:
        return None
    counted, deletes, truncate, restore, oids = parts
    limit = RESET_TRUNCATE_ROWS
    others_lock_tables = (
        "EXISTS (SELECT 1 FROM pg_locks WHERE pid <> pg_backend_pid() AND locktype = 'relation' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        f"AND relation IN ({oids}))"
    )
    end_blockers = (
        f"FOR blocker IN {_BLOCKERS} LOOP BEGIN PERFORM pg_terminate_backend(blocker); "
        "EXCEPTION WHEN insufficient_privilege THEN NULL; END; END LOOP;"
    )
    return (
        "DECLARE blocker int; "
        "patience text := current_setting('lock_timeout'); BEGIN "
        "BEGIN PERFORM set_config('lock_timeout', '1ms', true); "
        f"IF {counted} >= {limit} THEN {truncate} ELSE {deletes} END IF; "
        f"EXCEPTION WHEN lock_not_available THEN {end_blockers} "
        "PERFORM set_config('lock_timeout', patience, true); "
        f"IF {counted} >= {limit} AND NOT {others_lock_tables} THEN {truncate} "
        f"ELSE {deletes} END IF; END; PERFORM set_config('lock_timeout', patience, true); "
        f"{restore}"
    )


def plain_reset_body(schema: ThreadSchema, seeded: Sequence[str] = ()) -> str:
    """PL/pgSQL statements that empty the schema's tables and put the seed rows back, for a
    database no other session can be on (nothing to wait for, nobody to end)."""
    parts = _reset_parts(schema, seeded)
    if parts is None:
        return ""
    counted, deletes, truncate, restore, _ = parts
    return f"IF {counted} >= {RESET_TRUNCATE_ROWS} THEN {truncate} ELSE {deletes} END IF; {restore}"


def _reset_parts(
    schema: ThreadSchema, seeded: Sequence[str]
) -> tuple[str, str, str, str, str] | None:
    """The pieces of a reset: the (capped) row count, the DELETEs, the TRUNCATE, the seed
    rows' INSERTs and the tables' oids; None for a schema without tables."""
    tables = [_PREPARER.format_table(t) for t in reversed(schema.metadata.sorted_tables)]
    if not tables:
        return None
    limit = RESET_TRUNCATE_ROWS
    counted = " + ".join(
        f"(SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {limit}) AS s)" for name in tables
    )
    deletes = " ".join(f"DELETE FROM {name};" for name in tables)
    truncate = f"TRUNCATE {', '.join(tables)} CASCADE;"
    oids = ", ".join("'" + name.replace("'", "''") + "'::regclass" for name in tables)
    restore = " ".join(
        f"INSERT INTO {_PREPARER.format_table(t)} SELECT * FROM {SEED_SCHEMA}.{_quote(t.name)};"
        for t in schema.metadata.sorted_tables
        if t.name in seeded
    )
    return counted, deletes, truncate, restore, oids


#: Schema in the template that keeps a copy of the rows the setup hook seeded.
SEED_SCHEMA = "threadcreator_seed"


async def copy_seed(conn: Any, schema: ThreadSchema) -> list[str]:
    """Copy the rows the setup hook left in the schema's tables (``conn`` is on the template)
    into :data:`SEED_SCHEMA`; returns the names of those tables."""
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
