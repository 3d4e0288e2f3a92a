"""Query budgets: count_queries() counts the statements a block makes."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text

from pytest_threadcreator import ThreadCreator, UserExecutionContext
from pytest_threadcreator.models import Thread
from pytest_threadcreator.queries import QueryCounter

#: Statements one create costs, per backend: SQLite runs BEGIN IMMEDIATE, two INSERTs and COMMIT
#: on the writer thread; PostgreSQL inserts both rows with one statement; MySQL sends START
#: TRANSACTION, two INSERTs and COMMIT in one packet.
CREATE_BUDGET = {"sqlite": 4, "postgresql": 1, "mysql": 4}


@pytest.mark.asyncio
async def test_thread_creator_stays_within_its_statement_budget(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    budget = CREATE_BUDGET[threadcreator_db.backend]
    async with threadcreator_db.count_queries() as queries:
        await thread_creator.create_thread_with_message(make_user_context(), "hello")
    queries.assert_exactly(budget)
    assert any("INSERT" in sql for _, sql in queries.statements)

    async with threadcreator_db.count_queries() as queries:
        for context in make_user_context.many(10):
            await thread_creator.create_thread_with_message(context, "hello")
    queries.assert_max(10 * budget)
    assert queries.total == 10 * budget


@pytest.mark.asyncio
async def test_engine_statements_are_counted_per_connection(threadcreator_db: Any) -> None:
    async with threadcreator_db.count_queries() as queries:
        async with threadcreator_db.session() as session:
            await session.execute(select(func.count()).select_from(Thread))
            await session.execute(text("SELECT 1"))
    assert queries.total == 2
    assert list(queries.per_connection.values()) == [2]
    assert all(label.startswith("engine connection") for label in queries.per_connection)


@pytest.mark.asyncio
async def test_nothing_is_counted_outside_the_block(
    thread_creator: ThreadCreator, user_context: UserExecutionContext, threadcreator_db: Any
) -> None:
    async with threadcreator_db.count_queries() as queries:
        pass
    await thread_creator.create_thread_with_message(user_context, "after the block")
    assert queries.total == 0


def test_assert_max_lists_the_statements_when_over_budget() -> None:
    counter = QueryCounter()
    counter.record("store a", "BEGIN IMMEDIATE")
    counter.record("store a", "INSERT INTO threads (id)\n   VALUES (?)")
    counter.assert_max(2)
    with pytest.raises(AssertionError) as caught:
        counter.assert_max(1)
    assert str(caught.value) == (
        "expected at most 1 SQL statement(s), 2 ran:\n"
        "    1. [store a] BEGIN IMMEDIATE\n"
        "    2. [store a] INSERT INTO threads (id) VALUES (?)"
    )
    with pytest.raises(AssertionError, match="expected exactly 3 SQL statement"):
        counter.assert_exactly(3)
