"""What the plugin owns on a MySQL/MariaDB server, and how it tells.

MySQL has no database comments, so the *mark* is a row in a registry the plugin owns (the
database :data:`REGISTRY`, table ``owned``: name, run, worker), written in the same round trip
right after the ``CREATE DATABASE`` (:data:`REGISTER`). Nothing is ever dropped without its row
(:func:`drop_if_ours`). Each backend holds a named lock (:func:`lock_name`) for its run and
worker; :func:`remove_dead_runs` drops the registered databases of the runs whose lock is free.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ...store.mysql import query, quote
from ..naming import DB_PREFIX, parse_database_name

__all__ = [
    "CHARSET",
    "OWNED",
    "REGISTER",
    "REGISTRY",
    "SESSION_GRACE",
    "create_registry",
    "drop_if_ours",
    "foreign_keys_view",
    "is_closed",
    "lock_name",
    "query",
    "remove_dead_runs",
    "results",
    "routine_tables_readable",
]

#: The plugin's own database on the server: which databases it made, for which run and worker.
REGISTRY = "threadcreator_registry"
OWNED = f"{quote(REGISTRY)}.`owned`"
CHARSET = "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
#: A new database and its registry row (the mark), in that order (``{name}``: quoted; the
#: parameters: name, run, worker): should the CREATE fail, the server stops there and no row
#: claims a database that is not the plugin's.
REGISTER = (
    f"CREATE DATABASE {{name}} {CHARSET}; "
    f"INSERT INTO {OWNED} (name, run_id, worker_id) VALUES (%s, %s, %s)"
)


def lock_name(run_id: str, worker_id: str) -> str:
    """The ``GET_LOCK`` name a backend of ``run_id`` and ``worker_id`` holds for its life."""
    return f"threadcreator_{run_id}_{worker_id}"


async def create_registry(conn: Any) -> None:
    """Create the registry if the server has none yet."""
    registry = "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
    if not await query(conn, registry, (REGISTRY,)):
        await query(
            conn,
            f"CREATE DATABASE IF NOT EXISTS {quote(REGISTRY)} {CHARSET}; "
            f"CREATE TABLE IF NOT EXISTS {OWNED} (name VARCHAR(64) PRIMARY KEY, "
            "run_id VARCHAR(20) NOT NULL, worker_id VARCHAR(12) NOT NULL) ENGINE=InnoDB",
        )


async def remove_dead_runs(conn: Any, run_id: str, worker_id: str) -> list[str]:
    """Drop the registered databases of every (run, worker) but ``run_id``'s ``worker_id``
    whose lock is free (a crashed or killed run); the names dropped."""
    rows = await query(conn, f"SELECT DISTINCT run_id, worker_id FROM {OWNED}")
    groups = sorted({(str(run), str(worker)) for run, worker in rows})
    removed: list[str] = []
    for run, worker in groups:
        if (run, worker) == (run_id, worker_id):
            continue
        lock = lock_name(run, worker)
        if (await query(conn, "SELECT GET_LOCK(%s, 0)", (lock,)))[0][0] != 1:
            continue  # a process of that run is alive (or another sweeper has it)
        try:
            # The dead process's tender connections hold no lock: a statement of theirs (a
            # clone's CREATE and registry row) may still be running on the server. Once
            # they are gone, the registry is read again and says all there is.
            await wait_for_sessions_on(conn, f"{DB_PREFIX}{run}_{worker}_")
            names = await query(
                conn,
                f"SELECT name FROM {OWNED} WHERE run_id = %s AND worker_id = %s ORDER BY name",
                (run, worker),
            )
            for (name,) in names:
                with contextlib.suppress(Exception):
                    if await drop_if_ours(conn, name, run):
                        removed.append(name)
        finally:
            await query(conn, "SELECT RELEASE_LOCK(%s)", (lock,))
    return removed


async def results(conn: Any, sql: str, params: tuple[Any, ...] | None) -> list[list[Any]]:
    """Run ``sql`` (one or more statements) in one round trip; the rows of each result that
    has rows' shape (``SELECT``, ``SHOW``), in order (``params`` None: a % in ``sql`` is sent
    as it is)."""
    found: list[list[Any]] = []
    async with conn.cursor() as cursor:
        await cursor.execute(sql, params)
        while True:
            if cursor.description is not None:
                found.append(list(await cursor.fetchall() or ()))
            if not await cursor.nextset():
                return found


def is_closed(conn: Any) -> bool:
    """Whether an asyncmy connection is closed (the server went away, say)."""
    return not conn.connected


async def foreign_keys_view(conn: Any) -> str | None:
    """InnoDB's list of foreign keys in ``information_schema`` (MariaDB's name, then MySQL 8's),
    if this user may read it (it takes the PROCESS privilege); None else."""
    for view in ("INNODB_SYS_FOREIGN", "INNODB_FOREIGN"):
        try:
            await query(conn, f"SELECT 1 FROM information_schema.{view} LIMIT 0")
        except Exception:  # not this server's name, or not readable by this user
            if is_closed(conn):
                raise
            continue
        return view
    return None


async def routine_tables_readable(conn: Any) -> bool:
    """Whether this user may read MariaDB's own tables of routines and events (``mysql.proc``,
    ``mysql.event``): asking them is three times faster than ``information_schema``'s views of
    them. MySQL 8 has no such tables (its views are fast there)."""
    try:
        await query(conn, "SELECT 1 FROM mysql.proc LIMIT 0; SELECT 1 FROM mysql.event LIMIT 0")
    except Exception:  # not this server's, or not readable by this user
        if is_closed(conn):
            raise
        return False
    return True


#: Seconds a sweeper waits for a dead run's statements still running on the server to end.
SESSION_GRACE = 5.0


async def wait_for_sessions_on(conn: Any, prefix: str) -> None:
    """Wait (up to :data:`SESSION_GRACE`) until no other session runs a statement in a database
    whose name starts with ``prefix`` or one that names such a database (idle ones, a user's
    client looking at a kept database, say, do not count)."""
    pattern = prefix.replace("_", "\\_") + "%"
    deadline = asyncio.get_running_loop().time() + SESSION_GRACE
    while asyncio.get_running_loop().time() < deadline:
        busy = await query(
            conn,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
            "AND COMMAND <> 'Sleep' AND (DB LIKE %s OR INFO LIKE %s)",
            (pattern, "%" + pattern),
        )
        if not busy[0][0]:
            return
        await asyncio.sleep(0.02)


async def drop_if_ours(conn: Any, name: str, run_id: str) -> bool:
    """``DROP DATABASE name`` if the registry has it for ``run_id``; False (nothing done) else."""
    parsed = parse_database_name(name)
    if parsed is None or parsed.run_id != run_id or not name.startswith(DB_PREFIX):
        return False
    rows = await query(conn, f"SELECT run_id FROM {OWNED} WHERE name = %s", (name,))
    if not rows or rows[0][0] != run_id:
        return False
    await query(
        conn,
        f"DROP DATABASE IF EXISTS {quote(name)}; DELETE FROM {OWNED} WHERE name = %s",
        (name,),
    )
    return True
