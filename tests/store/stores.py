"""Databases of every backend in one run, for suites that must behave the same on each.

``open_database(kind, schema, tmp_path)`` yields a fresh Database from a backend of its own,
made the way the backend suites make them: a SQLite file under ``tmp_path``, or a clone on the
server of ``$THREADCREATOR_POSTGRES_URL``, or one on the MySQL/MariaDB server of
``$THREADCREATOR_MYSQL_URL``. ``BACKEND_PARAMS`` parametrises a fixture over all three;
a server's one is skipped on a developer's machine without a server, never under CI.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_threadcreator.backends.mysql.backend import MySqlBackend
from pytest_threadcreator.backends.postgresql.backend import PostgresBackend
from pytest_threadcreator.backends.postgresql.janitor import new_run_id
from pytest_threadcreator.backends.sqlite import SqliteBackend
from pytest_threadcreator.database import Database
from pytest_threadcreator.schema import ThreadSchema

from ..helpers import (
    MYSQL_SERVER_URL,
    PG_SERVER_URL,
    mysql_server_missing,
    needs_marks,
    pg_server_missing,
)

BACKEND_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=needs_marks(pg_server_missing())),
    pytest.param("mysql", id="mysql", marks=needs_marks(mysql_server_missing())),
]

_LABELS = itertools.count()


@contextlib.contextmanager
def open_database(kind: str, schema: ThreadSchema, tmp_path: Path) -> Iterator[Database]:
    """A fresh, empty database of backend ``kind`` with ``schema``; everything removed after."""
    label = f"contract{next(_LABELS)}"
    backend: SqliteBackend | PostgresBackend | MySqlBackend
    if kind == "sqlite":
        backend = SqliteBackend(tmp_path / "contract-dbs", busy_timeout_ms=200)
    elif kind == "mysql":
        backend = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw9")
    else:
        backend = PostgresBackend("url", url=PG_SERVER_URL, run_id=new_run_id(), worker_id="gw9")
    backend.start()
    try:
        backend.prepare_template(schema, None)
        database = backend.create_database(label, isolation="fresh")
        try:
            yield database
        finally:
            database.dispose_engines()
            backend.drop_database(database)
    finally:
        backend.stop()
