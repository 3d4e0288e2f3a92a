"""When a concurrency run times out, the report says what was still waiting, and on what."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from pytest_threadcreator import ThreadCreator

from ..helpers import PG_SERVER_URL as PG_URL


@pytest.mark.threadcreator(db=PG_URL)
@pytest.mark.asyncio
async def test_a_timeout_on_postgresql_shows_the_lock_waits_and_their_blocker(
    thread_creator: ThreadCreator,
    make_user_context: Any,
    run_concurrently: Any,
    threadcreator_db: Any,
) -> None:
    async with threadcreator_db.engine.connect() as blocker:
        await blocker.execute(text("LOCK TABLE threads IN ACCESS EXCLUSIVE MODE"))
        report = await run_concurrently(
            lambda c: thread_creator.create_thread_with_message(c, "hi"),
            make_user_context.many(3),
            timeout=1.0,
        )
        await blocker.rollback()
    assert report.timed_out == 3 and report.succeeded == 0
    calls = [line for line in report.waiting if line.startswith("call ")]
    locks = [line for line in report.waiting if line.startswith("lock wait: ")]
    assert len(calls) == 3 and all("running for" in line for line in calls)
    assert locks, report.waiting
    assert all("blocked by pid" in line and "LOCK TABLE threads" in line for line in locks)
    assert any("RowExclusiveLock on threads" in line for line in locks)
    assert await threadcreator_db.count_threads() == 0


@pytest.mark.threadcreator(db="sqlite")
@pytest.mark.asyncio
async def test_a_timeout_on_sqlite_lists_the_calls_still_running(
    thread_creator: ThreadCreator,
    make_user_context: Any,
    run_concurrently: Any,
    threadcreator_db: Any,
    fault_injector: Any,
) -> None:
    fault_injector.delay("commit", 2.0, times=1)  # one writer holds the lock, the rest queue
    report = await run_concurrently(
        lambda c: thread_creator.create_thread_with_message(c, "hi"),
        make_user_context.many(3),
        timeout=0.3,
    )
    assert report.timed_out == 3
    assert [line.split(" (item")[0] for line in report.waiting] == ["call 0", "call 1", "call 2"]
    assert all("running for" in line for line in report.waiting)
    assert await threadcreator_db.lock_waits() == []  # SQLite writers queue in-process
