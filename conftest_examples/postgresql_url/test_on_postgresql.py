"""The quickstart on a PostgreSQL server given by URL (``threadcreator_db`` in pytest.ini).

The same tests as on SQLite: only the ini line changes. ``--threadcreator-db=...`` or the
``THREADCREATOR_DB`` environment variable override the ini for one run.
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.asyncio


async def test_ten_users_at_once(thread_creator, make_user_context, threadcreator_db):
    assert threadcreator_db.backend == "postgresql"
    users = make_user_context.many(10)
    results = await asyncio.gather(
        *(thread_creator.create_thread_with_message(user, "Hello!") for user in users)
    )

    assert await threadcreator_db.count_threads() == 10
    assert await threadcreator_db.count_messages() == 10
    await threadcreator_db.check_integrity()
    for user, (thread, message) in zip(users, results, strict=True):
        assert message.thread_id == thread.id
        assert [t.id for t in await thread_creator.list_threads(user.user_id)] == [thread.id]


async def test_two_hundred_users_under_load(
    thread_creator, make_user_context, run_concurrently, threadcreator_db
):
    users = make_user_context.many(200)
    report = await run_concurrently(
        lambda user: thread_creator.create_thread_with_message(user, "Hi"), users
    )

    report.raise_errors()
    assert report.succeeded == 200
    assert await threadcreator_db.orphan_threads() == []
    await threadcreator_db.assert_user_isolation(users)


async def test_every_test_starts_on_an_empty_database(threadcreator_db):
    assert await threadcreator_db.count_threads() == 0


@pytest.mark.threadcreator(isolation="fresh")
async def test_a_fresh_database_of_its_own(thread_creator, user_context, threadcreator_db):
    assert threadcreator_db.isolation == "fresh"
    assert await threadcreator_db.count_threads() == 0
    await thread_creator.create_thread_with_message(user_context, "In a new database")
    await threadcreator_db.check_integrity()
