"""Which errors count as contention worth a retry: by error code, through wrappers."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import IntegrityError, OperationalError

from pytest_threadcreator.store.transient import (
    is_pg_transient,
    is_sqlite_busy,
    is_transient_error,
)


def _real_sqlite_error(sql: str, conn: sqlite3.Connection) -> sqlite3.Error:
    try:
        conn.execute(sql)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError(f"{sql} did not fail")


def test_sqlite_busy_is_transient_also_wrapped_by_sqlalchemy(tmp_path: object) -> None:
    path = f"{tmp_path}/db.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    busy = _real_sqlite_error("BEGIN IMMEDIATE", other)
    constraint = _real_sqlite_error("SELECT * FROM missing_table", other)
    holder.execute("ROLLBACK")
    assert is_sqlite_busy(busy) and is_transient_error(busy)
    wrapped = OperationalError("BEGIN IMMEDIATE", {}, busy)
    assert is_transient_error(wrapped)
    assert not is_transient_error(constraint)  # "no such table" is an OperationalError too
    assert not is_transient_error(IntegrityError("INSERT", {}, sqlite3.IntegrityError("x")))
    assert not is_pg_transient(busy)


def test_sqlstates_count_only_for_serialization_failures_and_deadlocks() -> None:
    class PgError(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    assert is_transient_error(PgError("40001")) and is_transient_error(PgError("40P01"))
    assert not is_transient_error(PgError("23505"))
    cause = PgError("40001")
    outer = RuntimeError("wrapped")
    outer.__cause__ = cause
    assert is_transient_error(outer)
