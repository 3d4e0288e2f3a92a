"""Quickstart: many simulated users create threads at once; isolation and integrity hold.

No server, no conftest, no setup: the plugin gives each test its own empty SQLite database.
"""

import asyncio

import pytest


@pytest.mark.asyncio
async def test_ten_users_at_once(thread_creator, make_user_context, threadcreator_db):
    users = make_user_context.many(10)
    results = await asyncio.gather(
        *(thread_creator.create_thread_with_message(user, "Hello!") for user in users)
    )

    assert await threadcreator_db.count_threads() == 10
    assert await threadcreator_db.count_messages() == 10
    await threadcreator_db.check_integrity()  # no thread without its first message
    for user, (thread, message) in zip(users, results, strict=True):
        assert message.thread_id == thread.id
        # each user sees exactly their own thread, nobody else's
        assert [t.id for t in await thread_creator.list_threads(user.user_id)] == [thread.id]


@pytest.mark.asyncio
async def test_a_thousand_users_under_load(
    thread_creator, make_user_context, run_concurrently, threadcreator_db
):
    users = make_user_context.many(1000)
    report = await run_concurrently(
        lambda user: thread_creator.create_thread_with_message(user, "Hi"), users
    )

    report.raise_errors()  # one readable failure listing every error, if any
    assert report.succeeded == 1000
    assert await threadcreator_db.orphan_threads() == []
    print(report.summary())


@pytest.mark.asyncio
async def test_every_test_starts_on_an_empty_database(threadcreator_db):
    assert await threadcreator_db.count_threads() == 0
