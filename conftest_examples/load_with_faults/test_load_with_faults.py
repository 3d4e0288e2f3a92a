"""A load test with injected faults: atomicity and integrity hold under failures and timeouts.

Copy this file into your tests: a thousand users create threads at once while one in ten
message inserts fails inside the real transaction, then the database must hold exactly the
successful creates, every thread with its first message, each user seeing only their own.
"""

import asyncio

import pytest

from pytest_threadcreator import InjectedFault


@pytest.mark.asyncio
async def test_a_thousand_users_with_one_in_ten_failing(
    thread_creator, make_user_context, run_concurrently, fault_injector, threadcreator_db
):
    fault_injector.fail("message_insert", rate=0.1, seed=1234)
    users = make_user_context.many(1000)
    report = await run_concurrently(
        lambda user: thread_creator.create_thread_with_message(user, "Hi"),
        users,
        max_concurrency=200,
    )

    assert report.failed == fault_injector.fired("message_insert") > 0
    assert all(isinstance(error, InjectedFault) for error in report.errors)
    assert await threadcreator_db.count_threads() == report.succeeded  # no half-written create
    assert await threadcreator_db.orphan_threads() == []
    await threadcreator_db.check_integrity()
    await threadcreator_db.assert_user_isolation(users)


@pytest.mark.asyncio
async def test_cancelled_and_timed_out_creates_are_all_or_nothing(
    thread_creator, make_user_context, run_concurrently, fault_injector, threadcreator_db
):
    fault_injector.delay("commit", 0.05, rate=0.2, seed=7)  # some commits are slow ...
    report = await run_concurrently(
        lambda user: asyncio.wait_for(  # ... and their callers give up on them
            thread_creator.create_thread_with_message(user, "Hi"), timeout=0.02
        ),
        make_user_context.many(200),
    )

    assert report.failed > 0  # the slow ones timed out on the caller's side
    # a timed-out create may still have committed: both rows or neither, never one
    assert await threadcreator_db.count_threads() == await threadcreator_db.count_messages()
    await threadcreator_db.check_integrity()
