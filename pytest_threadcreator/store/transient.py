"""Is this error contention worth a retry? Judged by error code, never by exception class.

SQLite: busy/locked (SQLITE_BUSY, SQLITE_LOCKED). PostgreSQL: SQLSTATE 40001 (serialization
failure) and 40P01 (deadlock), which asyncpg raises as DBAPIError and psycopg as
OperationalError once SQLAlchemy wraps them. MySQL/MariaDB: error 1213 (deadlock) and 1205 (lock
wait timeout), the first argument of asyncmy's, aiomysql's and PyMySQL's errors.
"""

from __future__ import annotations

import sqlite3

__all__ = ["is_mysql_transient", "is_pg_transient", "is_sqlite_busy", "is_transient_error"]

_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
_SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)
_MYSQL_TRANSIENT_CODES = (1213, 1205)  # ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
_MYSQL_DRIVERS = ("asyncmy", "aiomysql", "pymysql", "MySQLdb")


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc``, its ``orig`` (SQLAlchemy's DBAPIError) and ``__cause__``, transitively."""
    pending: list[BaseException] = [exc] if exc is not None else []
    seen: dict[int, BaseException] = {}
    while pending and len(seen) < 16:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen[id(current)] = current
        for nxt in (getattr(current, "orig", None), current.__cause__):
            if isinstance(nxt, BaseException):
                pending.append(nxt)
    return list(seen.values())


def is_sqlite_busy(exc: BaseException | None) -> bool:
    """True for SQLite busy/locked anywhere in the chain."""
    for current in _chain(exc):
        if isinstance(current, sqlite3.OperationalError):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None:
                return (code & 0xFF) in _SQLITE_BUSY_CODES
            text = str(current)  # Python 3.10 has no sqlite_errorcode
            return "database is locked" in text or "database table is locked" in text
    return False


def is_pg_transient(exc: BaseException | None) -> bool:
    """True for SQLSTATE 40001 or 40P01 anywhere in the chain.

    Reads ``sqlstate`` (asyncpg, psycopg 3), ``pgcode`` (psycopg 2) or ``diag.sqlstate``.
    """
    for current in _chain(exc):
        for state in (
            getattr(current, "sqlstate", None),
            getattr(current, "pgcode", None),
            getattr(getattr(current, "diag", None), "sqlstate", None),
        ):
            if isinstance(state, str) and state in _TRANSIENT_SQLSTATES:
                return True
    return False


def is_mysql_transient(exc: BaseException | None) -> bool:
    """True for MySQL/MariaDB error 1213 or 1205 from a MySQL driver anywhere in the chain."""
    for current in _chain(exc):
        if not type(current).__module__.startswith(_MYSQL_DRIVERS):
            continue
        args = current.args
        if args and isinstance(args[0], int) and args[0] in _MYSQL_TRANSIENT_CODES:
            return True
    return False


def is_transient_error(exc: BaseException | None) -> bool:
    """Contention worth a retry on any backend."""
    return is_sqlite_busy(exc) or is_pg_transient(exc) or is_mysql_transient(exc)
