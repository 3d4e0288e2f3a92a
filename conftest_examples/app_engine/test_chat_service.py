"""Your service, the plugin's tools: concurrency, faults, query budgets, isolation and shake.

Copy this folder and run ``pytest``. ``chat_service`` builds its own engine from DATABASE_URL
at import (``threadcreator_env`` in pytest.ini points it at the test database); every test that
uses ``threadcreator_db`` gets that database empty, and the plugin's tools reach the service's
engine with nothing to call.
"""

from __future__ import annotations

import chat_service
import pytest

from pytest_threadcreator import InjectedFault

pytestmark = pytest.mark.asyncio


async def test_many_users_start_chats_at_once(
    make_user_context, run_concurrently, threadcreator_db
):
    users = make_user_context.many(50)
    report = await run_concurrently(
        lambda user: chat_service.start_chat(user.user_id, "Hello"), users
    )

    report.raise_errors()  # zero errors, or every one of them in an ExceptionGroup
    assert await threadcreator_db.count_threads() == 50
    await threadcreator_db.check_integrity()  # every thread has its first message, and so on


async def test_a_failed_message_insert_rolls_the_whole_chat_back(threadcreator_db, fault_injector):
    # Fires just before the service's INSERT INTO messages, inside its transaction.
    fault_injector.fail("message_insert", times=1)

    with pytest.raises(InjectedFault):
        await chat_service.start_chat("ann", "Hello")

    assert fault_injector.hits("thread_insert") == 1  # the thread row was written ...
    assert await threadcreator_db.count_threads() == 0  # ... and rolled back with the rest
    await chat_service.start_chat("ann", "Hello again")  # times=1: the rule is spent
    await threadcreator_db.check_integrity()


async def test_a_statement_rule_fails_only_the_matching_sql(threadcreator_db, fault_injector):
    thread_id = await chat_service.start_chat("ann", "Hello", title="Draft")
    rule = fault_injector.fail(statement=r"^UPDATE threads", times=1)

    with pytest.raises(InjectedFault):
        await chat_service.rename_chat(thread_id, "Final")

    assert rule.fired == 1
    assert await chat_service.list_chats("ann") == [thread_id]  # the reads were not touched
    await chat_service.rename_chat(thread_id, "Final")
    assert rule.fired == 1


async def test_starting_a_chat_stays_within_its_query_budget(threadcreator_db):
    async with threadcreator_db.count_queries() as queries:
        await chat_service.start_chat("ann", "Hello")

    # The service's statements as its driver ran them: the two INSERTs (the driver's own
    # BEGIN and COMMIT are no SQL statements here). A budget catches an N+1 or a stray SELECT;
    # on failure it lists every statement with its connection.
    queries.assert_max(2)
    assert [sql.split(" (")[0] for _, sql in queries.statements] == [
        "INSERT INTO threads",
        "INSERT INTO messages",
    ], queries.listing()


async def test_each_user_is_shown_only_their_chats(make_user_context, threadcreator_db):
    users = make_user_context.many(3)
    for user in users:
        await chat_service.start_chat(user.user_id, "Hello")
        await chat_service.start_chat(user.user_id, "Hello again")

    # What the service shows each user must be exactly what the table holds for them.
    await threadcreator_db.assert_user_isolation(
        users, read=lambda user: chat_service.list_chats(user.user_id)
    )


@pytest.mark.threadcreator(shake=20)
async def test_concurrent_chats_survive_a_shaken_schedule(
    make_user_context, run_concurrently, threadcreator_db
):
    # Each of the 20 repetitions runs the whole test under a seeded pause before each of the
    # service's statements; a race would fail one and print the seed that replays it.
    users = make_user_context.many(5)
    report = await run_concurrently(
        lambda user: chat_service.start_chat(user.user_id, "Hello"), users
    )

    report.raise_errors()
    for user in users:
        assert len(await chat_service.list_chats(user.user_id)) == 1
    await threadcreator_db.check_integrity()
