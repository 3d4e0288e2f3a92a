"""The factory_boy factories, on a real database through the plugin's fixtures.

The tests bind the factories themselves (``ThreadFactory.bind(threadcreator_db)``), as the
``thread_factory``/``message_factory`` fixtures do.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from factory.base import Factory
from factory.declarations import RelatedFactory, SubFactory
from sqlalchemy import select

from pytest_threadcreator import (
    ConfigurationError,
    Database,
    InvalidContextError,
    InvalidMessageError,
    NoDatabaseError,
    ThreadCreator,
    ThreadExistsError,
    UserExecutionContext,
)
from pytest_threadcreator.context import validate_id
from pytest_threadcreator.factories import MessageFactory, ThreadFactory, UserContextFactory
from pytest_threadcreator.models import Message, Thread

THREAD_ID = re.compile(r"^thread_[0-9a-f]{32}$")
MESSAGE_ID = re.compile(r"^msg_[0-9a-f]{32}$")


@pytest.fixture
def threads(threadcreator_db: Database) -> type[ThreadFactory]:
    return ThreadFactory.bind(threadcreator_db)


@pytest.fixture
def messages(threadcreator_db: Database) -> type[MessageFactory]:
    return MessageFactory.bind(threadcreator_db)


async def stored_threads(db: Database) -> list[Thread]:
    async with db.session() as session:
        rows = await session.scalars(select(Thread).order_by(Thread.created_at, Thread.id))
        return list(rows)


async def stored_messages(db: Database, thread_id: str) -> list[Message]:
    async with db.session() as session:
        rows = await session.scalars(
            select(Message)
            .where(Message.thread_id == thread_id)
            .order_by(Message.created_at, Message.id)
        )
        return list(rows)


# -- build -----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_build_makes_a_thread_like_thread_creator_and_writes_nothing(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    thread = threads.build(title="Plans", metadata={"source": "factory"})
    [first] = thread.messages

    assert THREAD_ID.match(thread.id)
    assert MESSAGE_ID.match(first.id)
    assert thread.object == "thread" and thread.status == "active"
    assert thread.metadata_ == {
        "user_id": thread.user_id,
        "title": "Plans",
        "status": "active",
        "created_at": thread.created_at,
        "source": "factory",
    }
    assert first.thread_id == thread.id and first.thread is thread
    assert first.content == [{"type": "text", "text": {"value": "Hello", "annotations": []}}]
    assert first.text == "Hello" and first.role == "user"
    assert first.metadata_ == {"initial_message": True}
    assert first.created_at == thread.created_at
    assert first.run_id is not None and first.run_id.startswith("run_")
    assert await threadcreator_db.count_threads() == 0
    assert await threadcreator_db.count_messages() == 0


def test_build_needs_no_database() -> None:
    thread = ThreadFactory.build(user_id="alice")
    assert thread.user_id == "alice" and thread.metadata_["user_id"] == "alice"
    message = MessageFactory.build(thread=thread, text="Second")
    assert thread.messages == [thread.messages[0], message]
    assert message.metadata_ == {}


@pytest.mark.asyncio
async def test_built_rows_have_the_keys_thread_creator_writes(
    threads: type[ThreadFactory], thread_creator: ThreadCreator, user_context: Any
) -> None:
    made = threads.build(title="T", metadata={"k": 1})
    written, first = await thread_creator.create_thread_with_message(
        user_context, "Hello", "T", metadata={"k": 1}
    )
    assert made.metadata_.keys() == written.metadata_.keys()
    columns = [c.key for c in Thread.__table__.columns]
    assert [getattr(made, c) is None for c in columns] == [
        getattr(written, c) is None for c in columns
    ]
    message_columns = [c.key for c in Message.__table__.columns]
    made_first = made.messages[0]
    assert {c: type(getattr(made_first, c)) for c in message_columns} == {
        c: type(getattr(first, c)) for c in message_columns
    }


# -- create ----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_create_commits_a_thread_with_its_first_message(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    thread = await threads.create(first_message="Hi there")

    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages(thread.id) == 1
    [stored] = await stored_threads(threadcreator_db)  # another connection sees it
    assert (stored.id, stored.user_id, stored.metadata_) == (
        thread.id,
        thread.user_id,
        thread.metadata_,
    )
    [message] = await stored_messages(threadcreator_db, thread.id)
    assert message.text == "Hi there" and message.id == thread.messages[0].id
    await threadcreator_db.check_integrity()


@pytest.mark.asyncio
async def test_created_objects_are_detached_rows_a_session_can_update(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    thread = await threads.create()
    async with threadcreator_db.session() as session:
        session.add(thread)  # a transient object would be INSERTed again and collide
        thread.title = "Renamed"
        await session.commit()
    [stored] = await stored_threads(threadcreator_db)
    assert stored.title == "Renamed"


@pytest.mark.asyncio
async def test_create_batch_commits_fifty_threads_in_creation_order(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    made = await threads.create_batch(50)

    assert len(made) == 50
    assert await threadcreator_db.count_threads() == 50
    assert await threadcreator_db.count_messages() == 50
    await threadcreator_db.check_integrity()
    ids = [t.id for t in made]
    assert len(set(ids)) == 50
    assert len({t.user_id for t in made}) == 50
    assert len({t.messages[0].id for t in made}) == 50
    assert [t.id for t in await stored_threads(threadcreator_db)] == ids
    for thread in made:
        assert [m.id for m in await stored_messages(threadcreator_db, thread.id)] == [
            thread.messages[0].id
        ]


@pytest.mark.asyncio
async def test_create_batch_passes_overrides_to_every_object(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    made = await threads.create_batch(3, user_id="alice", first_message="Hey")
    assert await threadcreator_db.count_threads(user_id="alice") == 3
    assert {t.messages[0].text for t in made} == {"Hey"}
    assert await threads.create_batch(0) == []


@pytest.mark.asyncio
async def test_create_batch_rejects_a_bad_size(threads: type[ThreadFactory]) -> None:
    with pytest.raises(ValueError, match=r"create_batch\(size\) needs an int size >= 0, got -1"):
        await threads.create_batch(-1)


@pytest.mark.asyncio
async def test_overrides_reach_the_rows(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    thread = await threads.create(
        user_id="alice", title="Budget", metadata={"team": "blue"}, role="assistant"
    )
    [stored] = await stored_threads(threadcreator_db)
    assert stored.user_id == "alice" and stored.title == "Budget"
    assert stored.metadata_ == {
        "user_id": "alice",
        "title": "Budget",
        "status": "active",
        "created_at": thread.created_at,
        "team": "blue",
    }
    [message] = await stored_messages(threadcreator_db, thread.id)
    assert message.role == "assistant"
    await threadcreator_db.check_integrity()


@pytest.mark.asyncio
async def test_model_attributes_override_the_row(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    await threads.create(status="archived")
    [stored] = await stored_threads(threadcreator_db)
    assert stored.status == "archived"


@pytest.mark.asyncio
async def test_raw_metadata_can_make_an_owner_mismatch_for_integrity_tests(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    good = await threads.create()
    bad = await threads.create(user_id="alice", metadata_={"user_id": "mallory"})
    with pytest.raises(AssertionError) as failure:
        await threadcreator_db.check_integrity()
    assert bad.id in str(failure.value) and good.id not in str(failure.value)


def test_metadata_keys_the_plugin_sets_are_refused() -> None:
    with pytest.raises(InvalidMessageError, match=r"'user_id' are set by the plugin.*metadata_="):
        ThreadFactory.build(metadata={"user_id": "mallory"})


@pytest.mark.asyncio
async def test_an_explicit_id_that_exists_raises_thread_exists(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    thread = await threads.create()
    with pytest.raises(ThreadExistsError, match=rf"thread {thread.id!r} already exists"):
        await threads.create(id=thread.id, user_id=thread.user_id)
    assert await threadcreator_db.count_threads() == 1


# -- bare threads ----------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_first_message_none_makes_a_bare_thread(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    with_message = await threads.create()
    bare = await threads.create(first_message=None)

    assert bare.messages == []
    assert await threadcreator_db.count_threads() == 2
    assert await threadcreator_db.count_messages() == 1
    assert await threadcreator_db.orphan_threads() == [bare.id]
    with pytest.raises(AssertionError, match=r"1 thread\(s\) without a message") as failure:
        await threadcreator_db.check_integrity()
    assert bare.id in str(failure.value) and with_message.id not in str(failure.value)


@pytest.mark.asyncio
async def test_a_batch_of_bare_threads(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    made = await threads.create_batch(5, first_message=None)
    assert await threadcreator_db.count_messages() == 0
    assert await threadcreator_db.orphan_threads() == sorted(t.id for t in made)


# -- messages --------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_message_factory_adds_messages_to_a_thread(
    threads: type[ThreadFactory],
    messages: type[MessageFactory],
    threadcreator_db: Database,
    thread_creator: ThreadCreator,
) -> None:
    thread = await threads.create()
    reply = await messages.create(thread=thread, text="Sure", role="assistant")
    more = await messages.create_batch(3, thread=thread)

    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages(thread.id) == 5
    order = [thread.messages[0].id, reply.id, *(m.id for m in more)]
    assert [m.id for m in await stored_messages(threadcreator_db, thread.id)] == order
    assert [m.id for m in await thread_creator.list_messages(thread.id)] == order
    assert [m.id for m in thread.messages] == order  # the in-memory thread follows
    assert reply.thread is thread and reply.thread_id == thread.id
    assert reply.text == "Sure" and reply.role == "assistant"
    assert reply.metadata_ == {}  # only the first message is marked initial
    await threadcreator_db.check_integrity()


@pytest.mark.asyncio
async def test_message_factory_by_thread_id(
    messages: type[MessageFactory], threadcreator_db: Database, thread_creator: ThreadCreator
) -> None:
    context = UserContextFactory.build()
    result = await thread_creator.create_thread_with_message(context, "Hello")
    message = await messages.create(thread_id=result.thread_id)
    by_result = await messages.create(thread=result)  # ThreadCreator's result works too

    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages(result.thread_id) == 3
    assert message.thread_id == by_result.thread_id == result.thread_id


@pytest.mark.asyncio
async def test_message_factory_without_a_thread_starts_one(
    messages: type[MessageFactory], threadcreator_db: Database
) -> None:
    message = await messages.create(text="Opening")

    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages() == 1
    [stored] = await stored_threads(threadcreator_db)
    assert stored.id == message.thread_id == message.thread.id
    assert message.thread.messages == [message]
    assert message.metadata_ == {"initial_message": True}  # it is the thread's first message
    await threadcreator_db.check_integrity()


@pytest.mark.asyncio
async def test_a_message_completes_a_bare_thread(
    threads: type[ThreadFactory], messages: type[MessageFactory], threadcreator_db: Database
) -> None:
    bare = await threads.create(first_message=None)
    first = await messages.create(thread=bare)
    second = await messages.create(thread=bare)
    assert first.metadata_ == {"initial_message": True}
    assert second.metadata_ == {}
    await threadcreator_db.check_integrity()


@pytest.mark.asyncio
async def test_message_factory_reaches_into_its_new_thread(
    messages: type[MessageFactory], threadcreator_db: Database
) -> None:
    message = await messages.create(thread__user_id="bob", thread__title="From a message")
    assert message.thread.user_id == "bob"
    assert await threadcreator_db.count_threads(user_id="bob") == 1


class ThreadWithReplyFactory(ThreadFactory):
    reply = RelatedFactory(  # type: ignore[no-untyped-call]
        MessageFactory, factory_related_name="thread", role="assistant", text="How can I help?"
    )


@pytest.mark.asyncio
async def test_related_factories_commit_in_the_same_call(
    threadcreator_db: Database, thread_creator: ThreadCreator
) -> None:
    made = await ThreadWithReplyFactory.bind(threadcreator_db).create_batch(2)
    for thread in made:
        listed = await thread_creator.list_messages(thread.id)
        assert [(m.role, m.text) for m in listed] == [
            ("user", "Hello"),
            ("assistant", "How can I help?"),
        ]
        assert [m.id for m in thread.messages] == [m.id for m in listed]
    assert await threadcreator_db.count_messages() == 4
    await threadcreator_db.check_integrity()


def test_thread_and_thread_id_must_agree() -> None:
    thread = ThreadFactory.build()
    with pytest.raises(InvalidMessageError, match=r"thread_id='thread_other' is not the id"):
        MessageFactory.build(thread=thread, thread_id="thread_other")
    with pytest.raises(InvalidMessageError, match=r"MessageFactory needs a thread"):
        MessageFactory.build(thread=None)


@pytest.mark.asyncio
async def test_a_forgotten_await_is_named(
    threads: type[ThreadFactory], messages: type[MessageFactory]
) -> None:
    with pytest.raises(TypeError, match=r"thread= got a coroutine; did you forget `await`"):
        await messages.create(thread=threads.create())


# -- contexts --------------------------------------------------------------------------------
def test_user_context_factory_makes_distinct_valid_contexts() -> None:
    contexts = UserContextFactory.build_batch(20)
    assert len({c.user_id for c in contexts}) == 20
    assert len({c.request_id for c in contexts}) == 20
    for context in contexts:
        assert isinstance(context, UserExecutionContext)
        validate_id(context.user_id, "user_id")
    assert UserContextFactory.build(thread_id="thread_given").thread_id == "thread_given"
    with pytest.raises(InvalidContextError):
        UserContextFactory.build(user_id="test")  # still validated


@pytest.mark.asyncio
async def test_a_context_supplies_user_run_and_thread_id(
    threads: type[ThreadFactory], threadcreator_db: Database
) -> None:
    context = UserContextFactory.build(thread_id="thread_from_context")
    thread = await threads.create(context=context)
    assert (thread.id, thread.user_id) == ("thread_from_context", context.user_id)
    assert thread.messages[0].run_id == context.run_id
    assert await threadcreator_db.count_threads(user_id=context.user_id) == 1


@pytest.mark.asyncio
async def test_factory_data_reads_back_through_thread_creator(
    threads: type[ThreadFactory], thread_creator: ThreadCreator
) -> None:
    made = await threads.create_batch(3, user_id="carol")
    listed = await thread_creator.list_threads("carol")
    assert [t.id for t in listed] == [t.id for t in made]


# -- binding ---------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_an_unbound_factory_outside_a_database_test_says_what_to_do() -> None:
    with pytest.raises(NoDatabaseError) as failure:
        await ThreadFactory.create()
    assert str(failure.value) == (
        "ThreadFactory.create() has no database to write to. In a test, use the thread_factory "
        "/ message_factory fixtures (or request threadcreator_db); elsewhere bind one: "
        "ThreadFactory.bind(database). ThreadFactory.build() needs no database."
    )


@pytest.mark.asyncio
async def test_an_unbound_factory_writes_to_the_running_tests_database(
    threadcreator_db: Database,
) -> None:
    await ThreadFactory.create()
    await MessageFactory.create()
    assert await threadcreator_db.count_threads() == 2


def test_bind_refuses_what_is_not_a_database() -> None:
    with pytest.raises(TypeError, match=r"ThreadFactory.bind\(\) takes the threadcreator_db"):
        ThreadFactory.bind("sqlite:///x.db")  # type: ignore[arg-type]


def test_bound_factories_keep_their_name_and_share_the_sequence(threadcreator_db: Database) -> None:
    bound = ThreadFactory.bind(threadcreator_db)
    assert bound.__name__ == "ThreadFactory" and issubclass(bound, ThreadFactory)
    before, after = ThreadFactory.build().user_id, bound.build().user_id
    assert int(after.rsplit("_", 1)[1]) == int(before.rsplit("_", 1)[1]) + 1


@pytest.mark.asyncio(loop_scope="session")
async def test_factories_work_on_a_session_scoped_loop(
    threads: type[ThreadFactory], messages: type[MessageFactory], threadcreator_db: Database
) -> None:
    thread = await threads.create()
    await threads.create_batch(4, first_message=None)
    await messages.create_batch(4, thread=thread)
    assert await threadcreator_db.count_threads() == 5
    assert await threadcreator_db.count_messages(thread.id) == 5


@pytest.mark.asyncio
@pytest.mark.threadcreator(isolation="rollback")
async def test_factories_work_in_rollback_isolation(
    threads: type[ThreadFactory], messages: type[MessageFactory], threadcreator_db: Database
) -> None:
    thread = await threads.create()
    await threads.create_batch(3)
    await messages.create(thread=thread)
    assert await threadcreator_db.count_threads() == 4
    assert await threadcreator_db.count_messages() == 5
    await threadcreator_db.check_integrity()


def test_a_plain_factory_cannot_create_through_ours() -> None:
    class Holder:
        def __init__(self, thread: Thread) -> None:
            self.thread = thread

    class HolderFactory(Factory[Holder]):
        class Meta:
            model = Holder

        thread = SubFactory(ThreadFactory)  # type: ignore[no-untyped-call]

    assert isinstance(HolderFactory.build().thread, Thread)  # building is fine
    with pytest.raises(ConfigurationError, match=r"only written by `await ThreadFactory.create"):
        HolderFactory.create()


# -- other teams' models ---------------------------------------------------------------------
def test_a_factory_for_another_model_than_the_schema_names_the_fix() -> None:
    class WrongFactory(ThreadFactory):
        class Meta:
            model = Message

    with pytest.raises(
        ConfigurationError, match=r"WrongFactory builds Message \(table 'messages'\)"
    ):
        WrongFactory.build()


TEAM_MODELS = """
    from typing import Any

    from sqlalchemy import JSON, ForeignKey, String, Text
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

    from pytest_threadcreator import ThreadSchema
    from pytest_threadcreator.schema import NewThread


    class Base(DeclarativeBase):
        pass


    class Conversation(Base):
        __tablename__ = "conversations"
        pk: Mapped[str] = mapped_column("conversation_id", String(64), primary_key=True)
        owner: Mapped[str] = mapped_column(String(255))
        topic: Mapped[str | None] = mapped_column(String(255), nullable=True)
        tenant: Mapped[str] = mapped_column(String(32), default="none")
        created: Mapped[int]
        extra: Mapped[dict[str, Any]] = mapped_column(JSON)
        posts: Mapped[list["Post"]] = relationship(back_populates="conversation", lazy="raise")


    class Post(Base):
        __tablename__ = "posts"
        pk: Mapped[str] = mapped_column("post_id", String(64), primary_key=True)
        conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.conversation_id"))
        body: Mapped[str] = mapped_column(Text)  # MySQL wants a length or TEXT
        created: Mapped[int]
        conversation: Mapped[Conversation] = relationship(back_populates="posts", lazy="raise")


    def thread_row(new: NewThread) -> dict[str, Any]:
        return {"conversation_id": new.thread_id, "owner": new.user_id, "topic": new.title,
                "created": new.created_at, "extra": {"user_id": new.user_id, **new.metadata}}


    def message_row(new: NewThread) -> dict[str, Any]:
        return {"post_id": new.message_id, "conversation_id": new.thread_id,
                "body": new.message, "created": new.created_at}


    schema = ThreadSchema.from_models(
        Conversation, Post, thread_row=thread_row, message_row=message_row,
        thread_id_column="conversation_id", owner_column="owner", thread_created_column="created",
        deleted_at_column=None, owner_metadata_column="extra", message_id_column="post_id",
        message_thread_column="conversation_id", message_created_column="created",
    )
"""

TEAM_TESTS = """
    import factory
    import pytest

    from pytest_threadcreator.factories import MessageFactory, ThreadFactory
    from team_models import Conversation, Post, schema


    class TeamThreadFactory(ThreadFactory):
        class Meta:
            model = Conversation
            schema = schema

        title = factory.Sequence(lambda n: f"Topic {n}")
        tenant = "acme"


    def test_build_without_a_database():
        conversation = TeamThreadFactory.build()
        assert isinstance(conversation, Conversation) and conversation.tenant == "acme"
        assert conversation.extra["user_id"] == conversation.owner
        assert [p.body for p in conversation.posts] == ["Hello"]


    @pytest.mark.asyncio
    async def test_the_plugin_factories_follow_the_schema(threadcreator_db):
        conversation = await ThreadFactory.bind(threadcreator_db).create(first_message="Hi")
        assert isinstance(conversation, Conversation)
        post = await MessageFactory.bind(threadcreator_db).create(thread=conversation, text="Re")
        assert isinstance(post, Post) and post.conversation_id == conversation.pk
        assert await threadcreator_db.count_threads() == 1
        assert await threadcreator_db.count_messages(conversation.pk) == 2
        await threadcreator_db.check_integrity()


    @pytest.mark.asyncio
    async def test_a_subclass_adds_declarations(threadcreator_db):
        made = await TeamThreadFactory.bind(threadcreator_db).create_batch(3, first_message=None)
        assert [c.tenant for c in made] == ["acme"] * 3
        assert await threadcreator_db.orphan_threads() == sorted(c.pk for c in made)
"""


def test_factories_work_on_another_teams_schema(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(team_models=textwrap.dedent(TEAM_MODELS))
    pytester.makepyfile(test_team=textwrap.dedent(TEAM_TESTS))
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "threadcreator_schema = team_models:schema\n"
    )
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_the_module_does_not_import_pytest() -> None:
    # subprocess: this process has pytest imported already
    code = "import sys, pytest_threadcreator.factories; print('pytest' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
