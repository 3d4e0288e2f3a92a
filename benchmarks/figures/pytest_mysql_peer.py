"""The pytest-mysql peer: its own database per test on the same server, as a baseline.

Not a row of its own: the MySQL overhead rows (:mod:`figures.overhead`) use it as their
baseline, interleaved with the plugin's suites so that both see the same server load.

pytest-mysql is used as its documentation says for a server it does not start:
``factories.mysql_noproc(host, port, user)`` (session scope, starts nothing) and
``factories.mysql("mysql_noproc", passwd, dbname, charset, collation)``, whose function-scoped
fixture connects with PyMySQL, runs ``CREATE DATABASE`` and ``USE`` before the test and
``DROP DATABASE`` after it. The database gets utf8mb4 like the plugin's (pytest-mysql's default
is the 3-byte ``utf8``). Each test then creates the plugin's default schema in it (DDL compiled
with SQLAlchemy's mysql dialect, InnoDB as the server's default engine) and inserts one thread
and its message with PyMySQL in one transaction. pytest-mysql's no-process fixture works
against MariaDB as it is (checked with MariaDB 10.11); its one side effect is a PyMySQL
DeprecationWarning per test (it passes ``passwd=``), which the suite leaves in pytest's summary.
"""

from __future__ import annotations

from harness import Context, Plan, mysql_parts
from suites import pytest_mysql_suite

from figures.pytest_postgresql_peer import EMPTY, add_peer, schema_ddl

__all__ = ["EMPTY", "SUITE", "add_to_plan", "mysql_ddl"]

#: The peer's suite as named in the plan; it shares the empty sync suite with pytest-postgresql.
SUITE = "pytest-mysql"


def mysql_ddl() -> list[str]:
    """CREATE TABLE / CREATE INDEX statements of the plugin's default schema, for MySQL."""
    from sqlalchemy.dialects import mysql

    return schema_ddl(mysql.dialect())  # type: ignore[no-untyped-call]


def add_to_plan(ctx: Context, plan: Plan, n: int) -> str | None:
    """Add the peer's ``n``-test suite and its empty suite to ``plan``; None, or why not."""
    reason = ctx.pytest_mysql_reason()
    if reason is None:
        add_peer(
            ctx,
            plan,
            n,
            name=SUITE,
            parts=mysql_parts(ctx.mysql_url),
            suite=pytest_mysql_suite,
            ddl=mysql_ddl(),
        )
    return reason
