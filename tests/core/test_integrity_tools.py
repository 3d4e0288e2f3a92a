"""check_integrity()'s built-in owner check and assert_user_isolation(read=...) on your app's view.

Runs on the backend of the suite run (THREADCREATOR_DB), like the users' own tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from pytest_threadcreator import ConfigurationError, Database, ThreadCreator
from pytest_threadcreator.ids import new_thread_id
from pytest_threadcreator.models import Message, Thread

pytestmark = pytest.mark.asyncio


async def test_a_thread_without_an_owner_is_always_a_problem(threadcreator_db: Database) -> None:
    ownerless = new_thread_id()
    async with threadcreator_db.session() as session:
        session.add(Thread(id=ownerless, user_id="", created_at=1, metadata_={"user_id": ""}))
        await session.flush()
        session.add(
            Message(
                id="msg_for_ownerless", thread_id=ownerless, role="user", content=[], created_at=1
            )
        )
        await session.commit()
    with pytest.raises(AssertionError) as failure:
        await threadcreator_db.check_integrity()
    assert f"1 thread(s) whose user_id is NULL or empty: {ownerless}" in str(failure.value)
    assert "without a message" not in str(failure.value)


async def _seed(creator: ThreadCreator, users: list[Any]) -> dict[str, list[str]]:
    threads: dict[str, list[str]] = {}
    for user in users:
        for n in range(2):
            result = await creator.create_thread_with_message(user, f"hello {n}")
            threads.setdefault(user.user_id, []).append(result.thread.id)
    return threads


async def test_read_sees_what_the_app_shows_each_user(
    threadcreator_db: Database, thread_creator: ThreadCreator, make_user_context: Any
) -> None:
    users = make_user_context.many(3)
    await _seed(thread_creator, users)

    async def app_lists_my_threads(context: Any) -> list[Any]:  # what a correct app returns
        async with threadcreator_db.session() as session:
            query = select(Thread).where(Thread.user_id == context.user_id)
            return list((await session.execute(query)).scalars())

    await threadcreator_db.assert_user_isolation(users, read=app_lists_my_threads)


async def test_read_names_the_threads_of_other_users_an_app_leaks(
    threadcreator_db: Database, thread_creator: ThreadCreator, make_user_context: Any
) -> None:
    users = make_user_context.many(2)
    threads = await _seed(thread_creator, users)
    first, second = users

    async def app_forgets_the_filter(context: Any) -> list[str]:
        async with threadcreator_db.session() as session:
            return list((await session.execute(select(Thread.id))).scalars())

    with pytest.raises(AssertionError) as failure:
        await threadcreator_db.assert_user_isolation(users, read=app_forgets_the_filter)
    message = str(failure.value)
    leaked = ", ".join(sorted(threads[second.user_id]))
    assert (
        f"{first.user_id}: shown 2 thread(s) of other users ({second.user_id}): {leaked}" in message
    )


async def test_read_names_threads_an_app_does_not_show(
    threadcreator_db: Database, thread_creator: ThreadCreator, make_user_context: Any
) -> None:
    users = make_user_context.many(2)
    threads = await _seed(thread_creator, users)

    async def app_shows_only_the_newest(context: Any) -> list[dict[str, str]]:
        return [{"id": max(threads[context.user_id])}]

    with pytest.raises(AssertionError) as failure:
        await threadcreator_db.assert_user_isolation(users, read=app_shows_only_the_newest)
    oldest = min(threads[users[0].user_id])
    assert f"{users[0].user_id}: shown 1 thread(s), the table holds 2 for them " in str(
        failure.value
    )
    assert f"(missing: {oldest}; not in the table: )" in str(failure.value)


async def test_read_must_return_ids_or_things_with_an_id(
    threadcreator_db: Database, thread_creator: ThreadCreator, user_context: Any
) -> None:
    await thread_creator.create_thread_with_message(user_context, "hello")

    async def app_returns_titles(context: Any) -> list[tuple[str]]:
        return [("a title",)]

    with pytest.raises(ConfigurationError) as failure:
        await threadcreator_db.assert_user_isolation([user_context], read=app_returns_titles)
    assert str(failure.value) == (
        "assert_user_isolation(read=...): read() returned tuple ('a title',); return thread "
        "ids, or rows or objects with an 'id'"
    )
