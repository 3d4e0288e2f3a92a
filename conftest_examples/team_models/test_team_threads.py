"""The plugin on a team's own schema: concurrency, integrity, isolation, factories.

Copy this folder and run ``pytest``: ``pytest.ini`` selects ``team_schema:SCHEMA``, and every
fixture, ThreadCreator and integrity check works on ``conversations``/``chat_messages``.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import select
from team_factories import ChatMessageFactory, ConversationFactory
from team_models import ChatMessage, Conversation

from pytest_threadcreator import ThreadOwnershipError

pytestmark = pytest.mark.asyncio


async def test_fifty_users_create_conversations_at_once(
    thread_creator, make_user_context, run_concurrently, threadcreator_db
):
    users = make_user_context.many(50)
    report = await run_concurrently(
        lambda user: thread_creator.create_thread_with_message(user, "Hello", title="Support"),
        users,
    )

    report.raise_errors()
    assert report.succeeded == 50
    assert await threadcreator_db.count_threads() == 50
    assert await threadcreator_db.count_messages() == 50
    await threadcreator_db.check_integrity()  # every conversation has its first message
    await threadcreator_db.assert_user_isolation(users)  # each owner sees only their own
    for user, (conversation, message) in zip(users, report.results, strict=True):
        assert isinstance(conversation, Conversation)
        assert conversation.owner == user.user_id
        assert message.conversation_ref == conversation.conversation_id


async def test_rows_land_in_the_team_tables(thread_creator, user_context, threadcreator_db):
    await thread_creator.create_thread_with_message(
        user_context, "Plan the trip", title="Trip", metadata={"channel": "web"}
    )

    async with threadcreator_db.session() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = (await session.execute(select(ChatMessage))).scalar_one()
    assert conversation.owner == user_context.user_id
    assert conversation.label == "Trip"
    assert conversation.extra == {"user_id": user_context.user_id, "channel": "web"}
    assert message.conversation_ref == conversation.conversation_id
    assert (message.author_role, message.body) == ("user", "Plan the trip")
    assert message.run_ref == user_context.run_id


async def test_reads_keep_owners_apart(thread_creator, make_user_context):
    alice, bob = make_user_context.many(2)
    conversation, _ = await thread_creator.create_thread_with_message(alice, "Hi")

    assert [c.conversation_id for c in await thread_creator.list_threads(alice.user_id)] == [
        conversation.conversation_id
    ]
    assert await thread_creator.list_threads(bob.user_id) == []
    with pytest.raises(ThreadOwnershipError):
        await thread_creator.get_thread(conversation.conversation_id, user_id=bob.user_id)


async def test_factories_make_team_rows(threadcreator_db):
    conversations = ConversationFactory.bind(threadcreator_db)
    messages = ChatMessageFactory.bind(threadcreator_db)

    made = await conversations.create_batch(3, user_id="alice")
    reply = await messages.create(thread=made[0], role="assistant", text="Sure")
    loose = await messages.create()  # in a new bare conversation of its own

    assert all(c.label.startswith("Conversation ") for c in made)
    assert reply.conversation_ref == made[0].conversation_id
    assert await threadcreator_db.count_threads("alice") == 3
    assert await threadcreator_db.count_messages(made[0].conversation_id) == 2
    assert await threadcreator_db.count_messages(loose.conversation_ref) == 1
    await threadcreator_db.check_integrity()


async def test_archived_conversations_are_not_listed(
    thread_creator, user_context, threadcreator_db
):
    await ConversationFactory.bind(threadcreator_db).create(
        user_id=user_context.user_id, archived_at=datetime.now(timezone.utc)
    )
    kept, _ = await thread_creator.create_thread_with_message(user_context, "Still here")

    listed = await thread_creator.list_threads(user_context.user_id)
    assert [c.conversation_id for c in listed] == [kept.conversation_id]
    assert await threadcreator_db.count_threads(user_context.user_id) == 2  # archived included


async def test_integrity_check_names_a_conversation_without_messages(threadcreator_db):
    bare = await ConversationFactory.bind(threadcreator_db).create(first_message=None)

    with pytest.raises(AssertionError, match="1 thread\\(s\\) without a message") as failure:
        await threadcreator_db.check_integrity()
    assert bare.conversation_id in str(failure.value)


@pytest.mark.parametrize(
    "isolation",
    [
        pytest.param(mode, marks=pytest.mark.threadcreator(isolation=mode))
        for mode in ("clean", "fresh", "rollback")
    ],
)
async def test_every_isolation_mode(isolation, thread_creator, make_user_context, threadcreator_db):
    assert threadcreator_db.isolation == isolation
    assert await threadcreator_db.count_threads() == 0  # each test starts empty
    users = make_user_context.many(3)
    for user in users:
        await thread_creator.create_thread_with_message(user, f"Hello from {isolation}")

    assert await threadcreator_db.count_threads() == 3
    await threadcreator_db.check_integrity()
    await threadcreator_db.assert_user_isolation(users)
