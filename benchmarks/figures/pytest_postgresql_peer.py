"""The pytest-postgresql peer: its own database per test on the same server, as a baseline.

Not a row of its own: the PostgreSQL overhead rows (:mod:`figures.overhead`) use it as their
baseline, interleaved with the plugin's suites so that both see the same server load.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness import Context, Plan, pg_parts
from suites import empty_suite, pytest_postgresql_suite

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = ["EMPTY", "SUITE", "add_peer", "add_to_plan", "postgres_ddl", "schema_ddl"]

#: The peer's suite and the empty sync suite it is measured against, as named in the plan.
SUITE = "pytest-postgresql"
EMPTY = "empty-sync"


def postgres_ddl() -> list[str]:
    """CREATE TABLE / CREATE INDEX statements of the plugin's default schema, for PostgreSQL."""
    from sqlalchemy.dialects import postgresql

    return schema_ddl(postgresql.dialect())  # type: ignore[no-untyped-call]


def schema_ddl(dialect: Dialect) -> list[str]:
    """CREATE TABLE / CREATE INDEX statements of the plugin's default schema for ``dialect``."""
    from sqlalchemy.schema import CreateIndex, CreateTable

    from pytest_threadcreator.schema import default_schema

    out: list[str] = []
    for table in default_schema().metadata.sorted_tables:
        out.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in table.indexes:
            out.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    return out


def add_peer(
    ctx: Context,
    plan: Plan,
    n: int,
    *,
    name: str,
    parts: tuple[str, int, str, str | None],
    suite: Callable[..., str],
    ddl: list[str],
) -> None:
    """Add a peer's ``n``-test suite (``suite(n, host=…, dbname=…, ddl=…)``) as ``name`` and the
    empty sync suite it is measured against to ``plan``."""
    host, port, user, password = parts
    ws = ctx.workspace
    plan[EMPTY] = (ws.suite(EMPTY, empty_suite(n, is_async=False)), [])
    module = suite(
        n,
        host=host,
        port=port,
        user=user,
        password=password,
        dbname=f"tcbench_{uuid.uuid4().hex[:8]}",
        ddl=ddl,
    )
    plan[name] = (ws.suite(name, module), [])


def add_to_plan(ctx: Context, plan: Plan, n: int) -> str | None:
    """Add the peer's ``n``-test suite and its empty suite to ``plan``; None, or why not."""
    reason = ctx.pytest_postgresql_reason()
    if reason is None:
        add_peer(
            ctx,
            plan,
            n,
            name=SUITE,
            parts=pg_parts(ctx.pg_url),
            suite=pytest_postgresql_suite,
            ddl=postgres_ddl(),
        )
    return reason
