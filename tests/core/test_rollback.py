"""``rollback`` isolation: query budgets, the one-job create, overlapping sessions.

Runs on the backend of the suite run (THREADCREATOR_DB), like the users' own tests; the hop
counts are SQLite's and PostgreSQL's own.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_threadcreator import (
    ConfigurationError,
    Database,
    ThreadCreator,
    ThreadExistsError,
    ThreadOwnershipError,
)
from pytest_threadcreator._background import BackgroundLoop
from pytest_threadcreator.rollback import _end_test, _roll_back_when_cancelled
from tests.helpers import PG_SERVER_URL, needs, pg_server_missing

pytestmark = [pytest.mark.threadcreator(isolation="rollback"), pytest.mark.asyncio]


async def test_count_queries_sees_thread_creator_and_the_tests_own_statements(
    threadcreator_db: Database, thread_creator: ThreadCreator, user_context: Any
) -> None:
    async with threadcreator_db.count_queries() as queries:
        await thread_creator.create_thread_with_message(user_context, "hello")
    inserts = [sql.split(" (")[0] for _, sql in queries.statements if sql.startswith("INSERT")]
    assert inserts == ["INSERT INTO threads", "INSERT INTO messages"], queries.listing()

    async with threadcreator_db.count_queries() as queries:
        async with threadcreator_db.session() as session:
            await session.execute(text("SELECT 1"))
    assert [sql for _, sql in queries.statements if "SELECT" in sql] == ["SELECT 1"]


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, name: str) -> list[object]:
    """Count the calls of the coroutine method ``owner.name`` from now on (one item a call)."""
    calls: list[object] = []
    method = getattr(owner, name)

    async def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return await method(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


#: Drivers whose connections the stores run a create on as one job (the others take the session).
ONE_JOB_DRIVERS = frozenset({"aiosqlite", "asyncpg", "asyncmy"})
SAVEPOINT_JOB = [
    "SAVEPOINT threadcreator_create",
    "INSERT INTO threads",
    "INSERT INTO messages",
    "RELEASE SAVEPOINT threadcreator_create",
]


async def test_a_create_is_one_savepoint_job_on_the_tests_connection(
    threadcreator_db: Database, thread_creator: ThreadCreator, make_user_context: Any
) -> None:
    driver = make_url(threadcreator_db.url).get_driver_name()
    if driver not in ONE_JOB_DRIVERS:
        pytest.skip(f"{driver}: a create goes through SQLAlchemy's session, by design")
    first, second = make_user_context.many(2)
    await thread_creator.create_thread_with_message(first, "opens the test's transaction")
    async with threadcreator_db.count_queries() as queries:
        await thread_creator.create_thread_with_message(second, "one job, no session")
    assert [sql.split(" (")[0] for _, sql in queries.statements] == SAVEPOINT_JOB
    assert await threadcreator_db.count_threads() == 2


@needs(pg_server_missing())
@pytest.mark.threadcreator(db=PG_SERVER_URL, isolation="rollback")  # counts hops to its loop
async def test_a_create_on_postgresql_is_one_hop_to_the_held_connection_begin_included(
    threadcreator_db: Database,
    thread_creator: ThreadCreator,
    make_user_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = make_user_context.many(2)
    await threadcreator_db._shared_for_loop()  # type: ignore[attr-defined]  # opened, no SQL yet
    async with threadcreator_db.count_queries() as queries:
        hops = count_calls(monkeypatch, BackgroundLoop, "submit")
        await thread_creator.create_thread_with_message(first, "BEGIN goes with it")
        assert len(hops) == 1
        await thread_creator.create_thread_with_message(second, "and the next one alone")
        assert len(hops) == 2
        monkeypatch.undo()
    statements = [sql.split(" (")[0] for _, sql in queries.statements]
    assert statements == ["BEGIN", *SAVEPOINT_JOB, *SAVEPOINT_JOB]
    assert await threadcreator_db.count_threads() == 2


@pytest.mark.threadcreator(db="sqlite", isolation="rollback")  # counts hops to aiosqlite's thread
async def test_a_create_on_sqlite_is_one_hop_to_the_driver_thread(
    threadcreator_db: Database,
    thread_creator: ThreadCreator,
    make_user_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = make_user_context.many(2)
    await thread_creator.create_thread_with_message(first, "opens the test's connection")
    hops = count_calls(monkeypatch, aiosqlite.Connection, "_execute")
    await thread_creator.create_thread_with_message(second, "one job on the driver's thread")
    assert len(hops) == 1
    assert await threadcreator_db.count_threads() == 2


@pytest.mark.threadcreator(db="sqlite", isolation="rollback")  # counts hops to aiosqlite's thread
async def test_the_first_create_of_a_test_sends_its_begin_in_the_same_hop(
    threadcreator_db: Database,
    thread_creator: ThreadCreator,
    user_context: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await threadcreator_db._shared_for_loop()  # type: ignore[attr-defined]  # opened, no SQL yet
    hops = count_calls(monkeypatch, aiosqlite.Connection, "_execute")
    async with threadcreator_db.count_queries() as queries:
        await thread_creator.create_thread_with_message(user_context, "BEGIN goes with it")
    assert len(hops) == 1
    assert [sql.split(" ")[0] for _, sql in queries.statements][:2] == ["BEGIN", "SAVEPOINT"]
    assert await threadcreator_db.count_threads() == 1


async def test_a_taken_thread_id_writes_nothing_and_the_test_goes_on(
    threadcreator_db: Database, thread_creator: ThreadCreator, make_user_context: Any
) -> None:
    owner, other = make_user_context.many(2)
    first = await thread_creator.create_thread_with_message(owner, "first")
    with pytest.raises(ThreadExistsError):
        await thread_creator.create_thread_with_message(owner.with_thread(first.thread.id), "again")
    with pytest.raises(ThreadOwnershipError):
        await thread_creator.create_thread_with_message(
            other.with_thread(first.thread.id), "not yours"
        )
    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages() == 1
    await thread_creator.create_thread_with_message(other, "still works")
    assert await threadcreator_db.count_threads() == 2
    await threadcreator_db.check_integrity()


@pytest.mark.filterwarnings("ignore:nested transaction already deassociated")
async def test_overlapping_sessions_fail_with_a_pointer_to_clean_isolation(
    threadcreator_db: Database,
) -> None:
    async with threadcreator_db.session() as first, threadcreator_db.session() as second:
        await first.execute(text("SELECT 1"))  # SAVEPOINT 1 on the test's one connection
        await second.execute(text("SELECT 2"))  # SAVEPOINT 2, inside 1
        await first.commit()  # releasing 1 releases 2 as well
        with pytest.raises(ConfigurationError) as info:
            await second.commit()
    message = str(info.value)
    assert "rollback isolation" in message
    assert "one at a time" in message
    assert "--threadcreator-isolation=clean" in message
    assert "@pytest.mark.threadcreator(isolation='clean')" in message


async def test_streamed_results_come_through_a_server_side_cursor(
    threadcreator_db: Database, thread_creator: ThreadCreator, make_user_context: Any
) -> None:
    users = make_user_context.many(3)
    for user in users:
        await thread_creator.create_thread_with_message(user, "streamed")
    async with threadcreator_db.session() as session:
        result = await session.stream(text("SELECT user_id FROM threads ORDER BY user_id"))
        owners = [row[0] async for row in result]
    assert owners == sorted(user.user_id for user in users)


@pytest.mark.suite_independent
async def test_a_second_cancellation_does_not_cut_the_end_of_the_test_short(
    tmp_path: Any,
) -> None:
    # A closing loop cancels every task, the guard included, which may already be rolling the
    # test back after the plugin's own cancel: its rollback, session reset and the return of
    # the connection must still all happen, or the next test meets this one's session.
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
        connection = await engine.connect()
        transaction = await connection.begin()
        await connection.execute(text("INSERT INTO t VALUES (1)"))
        reset: list[str] = []

        async def reset_session() -> None:
            reset.append("reset")

        guard = asyncio.create_task(
            _roll_back_when_cancelled(
                functools.partial(_end_test, connection, transaction, None, reset_session)
            )
        )
        await asyncio.sleep(0)
        guard.cancel()
        await asyncio.sleep(0)  # the guard is rolling back now
        guard.cancel()  # and is cancelled again, as a closing loop does
        with pytest.raises(asyncio.CancelledError):
            await guard
        assert reset == ["reset"], "the session was not reset"
        assert connection.closed, "the connection did not go back to the engine"
        async with engine.connect() as again:
            assert (await again.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        await engine.dispose()
