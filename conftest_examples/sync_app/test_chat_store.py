"""A synchronous service under concurrency, faults and a query count, from async tests.

Copy this folder and run ``pytest``: ``ChatStore`` runs in worker threads through
``asyncio.to_thread``; the plugin's tools reach its sync engine as they reach async ones,
except that a sync statement cannot be cancelled (see the last test).
"""

import asyncio

import pytest

from pytest_threadcreator import InjectedFault

pytestmark = pytest.mark.asyncio


async def test_concurrent_creates_from_worker_threads(
    chat_store, make_user_context, run_concurrently, threadcreator_db
):
    users = make_user_context.many(30)
    report = await run_concurrently(
        lambda user: asyncio.to_thread(chat_store.start_chat, user.user_id, "Hello"), users
    )

    report.raise_errors()
    assert await threadcreator_db.count_threads() == 30
    await threadcreator_db.check_integrity()


async def test_a_failed_message_insert_rolls_back(chat_store, fault_injector, threadcreator_db):
    rule = fault_injector.fail("message_insert", times=1)

    with pytest.raises(InjectedFault):
        await asyncio.to_thread(chat_store.start_chat, "ann", "Hello")

    assert rule.fired == 1
    assert await threadcreator_db.count_threads() == 0
    assert await asyncio.to_thread(chat_store.chat_count, "ann") == 0


async def test_reading_a_count_is_one_statement(chat_store, threadcreator_db):
    await asyncio.to_thread(chat_store.start_chat, "ann", "Hello")

    async with threadcreator_db.count_queries() as queries:
        assert await asyncio.to_thread(chat_store.chat_count, "ann") == 1

    queries.assert_exactly(1)  # on failure: every statement, with its connection


async def test_sync_code_gets_delay_as_a_sleep_and_cancel_as_an_error(
    chat_store, fault_injector, threadcreator_db
):
    # In a worker thread there is no task to cancel: `cancel` raises InjectedFault there,
    # inside the transaction, which rolls back. `delay` sleeps the thread (the loop runs on).
    fault_injector.delay("thread_insert", 0.01, times=1)
    fault_injector.cancel("commit", times=1)

    with pytest.raises(InjectedFault):
        await asyncio.to_thread(chat_store.start_chat, "ann", "Hello")

    assert fault_injector.hits("thread_insert") == 1
    assert await threadcreator_db.count_threads() == 0
    await asyncio.to_thread(chat_store.start_chat, "ann", "Hello")  # both rules are spent
    assert await threadcreator_db.count_threads() == 1
