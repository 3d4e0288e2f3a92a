"""ThreadCreator on a real database, through the plugin's fixtures."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select, update

from pytest_threadcreator import (
    DatabaseError,
    InvalidContextError,
    InvalidMessageError,
    NoDatabaseError,
    ThreadCreator,
    ThreadExistsError,
    ThreadNotFoundError,
    ThreadOwnershipError,
    UserExecutionContext,
)
from pytest_threadcreator.ids import new_thread_id
from pytest_threadcreator.models import Message, Thread

pytestmark = pytest.mark.asyncio
sync = pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")

HEX32 = re.compile(r"^[0-9a-f]{32}$")


async def test_ten_users_each_get_a_thread_with_its_first_message(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    contexts = make_user_context.many(10)
    results = await asyncio.gather(
        *(thread_creator.create_thread_with_message(c, "Hello") for c in contexts)
    )
    assert await threadcreator_db.count_threads() == 10
    assert await threadcreator_db.count_messages() == 10
    await threadcreator_db.check_integrity()
    for context, result in zip(contexts, results, strict=True):
        thread, message = result
        assert result.context is context
        assert thread.user_id == context.user_id
        assert message.thread_id == thread.id
        assert message.text == "Hello"
        assert [t.id for t in await thread_creator.list_threads(context.user_id)] == [thread.id]


async def test_rows_have_the_documented_shape(
    thread_creator: ThreadCreator, user_context: UserExecutionContext, threadcreator_db: Any
) -> None:
    result = await thread_creator.create_thread_with_message(
        user_context, "Hi there", "My title", role="assistant", metadata={"source": "test"}
    )
    async with threadcreator_db.session() as session:
        thread = await session.get(Thread, result.thread.id)
        message = await session.get(Message, result.message.id)
    assert thread is not None and message is not None
    assert thread.id.startswith("thread_") and HEX32.match(thread.id[len("thread_") :])
    assert thread.id[len("thread_") :][12] == "7"  # UUID version 7 layout
    assert message.id.startswith("msg_") and HEX32.match(message.id[len("msg_") :])
    assert thread.object == "thread" and thread.status == "active"
    assert thread.title == "My title" and thread.deleted_at is None
    assert thread.metadata_ == {
        "user_id": user_context.user_id,
        "title": "My title",
        "status": "active",
        "created_at": thread.created_at,
        "source": "test",
    }
    assert message.object == "thread.message" and message.role == "assistant"
    assert message.content == [{"type": "text", "text": {"value": "Hi there", "annotations": []}}]
    assert message.run_id == user_context.run_id
    assert message.file_ids == [] and message.assistant_id is None
    assert message.metadata_ == {"initial_message": True}
    assert message.created_at == thread.created_at


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"message": 42}, "message must be a str, got int"),
        ({"message": ""}, "message is empty or blank"),
        ({"message": "  \n\t "}, "message is empty or blank"),
        ({"message": "x" * 101}, "message has 101 characters, over the limit of 100"),
        ({"title": 7}, "title must be a str or None, got int"),
        ({"title": "t" * 256}, "title has 256 characters, over the limit of 255"),
        ({"role": "robot"}, "role 'robot' is not one of assistant, system, user"),
        ({"message": "nul\x00inside"}, "message contains a NUL character (\\x00)"),
        ({"title": "a\x00b"}, "title contains a NUL character (\\x00)"),
        ({"metadata": ["a"]}, "metadata must be a dict, got list"),
        ({"metadata": {"user_id": "x"}}, "metadata key(s) 'user_id' are set by the plugin"),
        ({"metadata": {"title": 1, "status": 2}}, "metadata key(s) 'status', 'title'"),
        ({"metadata": {"created_at": 1}}, "metadata key(s) 'created_at' are set by the plugin"),
        ({"metadata": {"when": object()}}, "metadata['when'] is not JSON-serialisable (object)"),
        ({"metadata": {1: "a"}}, "metadata keys must be str"),
    ],
)
async def test_bad_input_is_rejected_before_any_write(
    threadcreator_db: Any, user_context: UserExecutionContext, kwargs: dict[str, Any], error: str
) -> None:
    creator = ThreadCreator(threadcreator_db, max_message_chars=100)
    call = {"message": "hello", **kwargs}
    with pytest.raises(InvalidMessageError) as caught:
        await creator.create_thread_with_message(user_context, **call)
    assert error in str(caught.value)
    assert await threadcreator_db.count_threads() == 0
    assert await threadcreator_db.count_messages() == 0


@pytest.mark.parametrize(
    "context",
    [
        SimpleNamespace(user_id="test"),
        SimpleNamespace(user_id=" padded"),
        SimpleNamespace(user_id=""),
        SimpleNamespace(user_id=5),
        SimpleNamespace(name="no user id"),
        SimpleNamespace(user_id="alice_1", thread_id="null"),
    ],
)
async def test_bad_contexts_are_rejected_before_any_write(
    thread_creator: ThreadCreator, threadcreator_db: Any, context: Any
) -> None:
    with pytest.raises(InvalidContextError):
        await thread_creator.create_thread_with_message(context, "hello")
    assert await threadcreator_db.count_threads() == 0


async def test_other_teams_context_objects_are_accepted(
    thread_creator: ThreadCreator, threadcreator_db: Any
) -> None:
    class TheirContext:
        def __init__(self) -> None:
            self.user_id = "team_user_42"
            self.run_id = "run_team_1"

    result = await thread_creator.create_thread_with_message(TheirContext(), "hello")
    assert result.thread.user_id == "team_user_42"
    assert result.message.run_id == "run_team_1"
    await threadcreator_db.check_integrity()


async def test_explicit_thread_id_is_used_and_duplicates_are_refused(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    owner = make_user_context()
    thread_id = new_thread_id()
    result = await thread_creator.create_thread_with_message(owner.with_thread(thread_id), "one")
    assert result.thread.id == thread_id

    with pytest.raises(ThreadExistsError, match="already exists for this user"):
        await thread_creator.create_thread_with_message(owner.with_thread(thread_id), "two")

    intruder = make_user_context()
    with pytest.raises(ThreadOwnershipError) as caught:
        await thread_creator.create_thread_with_message(intruder.with_thread(thread_id), "three")
    assert owner.user_id not in str(caught.value)  # reveals nothing of the owner
    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages() == 1


async def test_concurrent_creates_of_one_explicit_id_store_exactly_one(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    owner = make_user_context()
    thread_id = new_thread_id()
    outcomes = await asyncio.gather(
        *(
            thread_creator.create_thread_with_message(owner.with_thread(thread_id), f"m{i}")
            for i in range(20)
        ),
        return_exceptions=True,
    )
    created = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(created) == 1
    assert all(isinstance(o, ThreadExistsError) for o in outcomes if o not in created)
    assert await threadcreator_db.count_messages() == 1


def _schema_with_broken_message(threadcreator_db: Any) -> Any:
    """The default schema, except the message row violates NOT NULL (a real constraint error)."""
    base = threadcreator_db.schema

    def broken_message_row(new: Any) -> dict[str, Any]:
        return {**base.message_row(new), "role": None}

    return dataclasses.replace(base, message_row=broken_message_row)


async def test_a_failing_second_insert_leaves_neither_row(
    threadcreator_db: Any, user_context: UserExecutionContext
) -> None:
    creator = ThreadCreator(threadcreator_db, schema=_schema_with_broken_message(threadcreator_db))
    with pytest.raises(DatabaseError) as caught:
        await creator.create_thread_with_message(user_context, "hello")
    assert caught.value.__cause__ is not None  # the driver's own error, chained
    cause = str(caught.value.__cause__)
    assert "NOT NULL" in cause or "null value" in cause or "cannot be null" in cause
    assert "creating thread" in str(caught.value)
    assert await threadcreator_db.count_threads() == 0
    assert await threadcreator_db.count_messages() == 0


async def test_the_same_on_a_callers_sessionmaker(
    threadcreator_db: Any, user_context: UserExecutionContext
) -> None:
    schema = _schema_with_broken_message(threadcreator_db)
    creator = ThreadCreator(threadcreator_db.sessionmaker, schema=schema)
    with pytest.raises(DatabaseError):
        await creator.create_thread_with_message(user_context, "hello")
    assert await threadcreator_db.count_threads() == 0

    working = ThreadCreator(threadcreator_db.sessionmaker)
    result = await working.create_thread_with_message(user_context, "hello")
    assert working.database is None
    assert [t.id for t in await working.list_threads(user_context.user_id)] == [result.thread.id]
    with pytest.raises(ThreadExistsError):
        await working.create_thread_with_message(user_context.with_thread(result.thread.id), "x")
    await threadcreator_db.check_integrity()


async def test_500_random_cancellations_leave_both_rows_or_neither(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    rng = random.Random(20261126)
    contexts = [c.with_thread(new_thread_id()) for c in make_user_context.many(500)]
    tasks = [
        asyncio.create_task(thread_creator.create_thread_with_message(c, "hello")) for c in contexts
    ]
    cancelled = 0
    for task in tasks:
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        if rng.random() < 0.5:
            cancelled += task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert cancelled > 0  # how many were still running when cancelled depends on the machine
    assert not [o for o in outcomes if isinstance(o, Exception)]
    stored = {t for (t,) in await _thread_ids(threadcreator_db)}
    with_message = {t for (t,) in await _message_thread_ids(threadcreator_db)}
    assert stored == with_message  # both rows or neither, for every id
    for context, outcome in zip(contexts, outcomes, strict=True):
        if not isinstance(outcome, BaseException):
            assert context.thread_id in stored
    assert await threadcreator_db.orphan_threads() == []
    assert threadcreator_db.checked_out() == 0


async def _thread_ids(db: Any) -> list[tuple[str]]:
    async with db.session() as session:
        return [tuple(r) for r in (await session.execute(select(Thread.id))).all()]


async def _message_thread_ids(db: Any) -> list[tuple[str]]:
    async with db.session() as session:
        return [tuple(r) for r in (await session.execute(select(Message.thread_id))).all()]


async def test_500_concurrent_writers_with_awaits_inside_their_transactions(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    """Sessions doing read-then-write with awaits inside, racing ThreadCreator: no lock errors."""

    async def session_writer(i: int) -> None:
        async with threadcreator_db.session() as session:
            await session.execute(select(func.count()).select_from(Thread))  # read first
            await asyncio.sleep(0)
            session.add(
                Thread(
                    id=new_thread_id(),
                    user_id=f"sess_{i}",
                    created_at=1,
                    metadata_={"user_id": f"sess_{i}"},
                )
            )
            await session.flush()
            await asyncio.sleep(0)  # hold the write transaction across an await
            await session.commit()

    contexts = make_user_context.many(250)
    outcomes = await asyncio.gather(
        *(session_writer(i) for i in range(250)),
        *(thread_creator.create_thread_with_message(c, "hello") for c in contexts),
        return_exceptions=True,
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors == []
    assert await threadcreator_db.count_threads() == 500
    assert await threadcreator_db.count_messages() == 250


async def test_a_create_completes_while_the_test_holds_a_read_session_open(
    thread_creator: ThreadCreator, user_context: UserExecutionContext, threadcreator_db: Any
) -> None:
    async with threadcreator_db.session() as session:
        before = (await session.execute(select(func.count()).select_from(Thread))).scalar_one()
        result = await asyncio.wait_for(
            thread_creator.create_thread_with_message(user_context, "hello"), timeout=20
        )
        assert before == 0
    assert result.thread.user_id == user_context.user_id


async def test_ordering_is_total_and_stable_with_same_second_ties(
    thread_creator: ThreadCreator, user_context: UserExecutionContext
) -> None:
    created = []
    for chunk in range(4):
        created += await asyncio.gather(
            *(
                thread_creator.create_thread_with_message(user_context, f"m{chunk}-{i}")
                for i in range(250)
            )
        )
    first = [t.id for t in await thread_creator.list_threads(user_context.user_id)]
    second = [t.id for t in await thread_creator.list_threads(user_context.user_id)]
    assert first == second
    assert len(set(first)) == 1000
    keys = [(t.created_at, t.id) for t in await thread_creator.list_threads(user_context.user_id)]
    assert keys == sorted(keys)
    # time-ordered ids keep creation order within the process, also inside one second
    assert first == [
        r.thread.id for r in sorted(created, key=lambda r: (r.thread.created_at, r.thread.id))
    ]


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld — ünïcödé ✓ 🧵🚀 中文 العربية",
        "'; DROP TABLE threads; --",
        "quotes \"double\" 'single' `back` \\ backslash \\n not newline",
        "line1\nline2\r\nline3\ttab",
    ],
)
async def test_text_is_stored_verbatim(
    thread_creator: ThreadCreator, user_context: UserExecutionContext, text: str
) -> None:
    result = await thread_creator.create_thread_with_message(user_context, text, title=text[:255])
    [message] = await thread_creator.list_messages(result.thread.id)
    assert message.text == text
    thread = await thread_creator.get_thread(result.thread.id, user_id=user_context.user_id)
    assert thread.title == text[:255]


async def test_reads_check_ownership_and_skip_soft_deleted_threads(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Any
) -> None:
    alice, bob = make_user_context.many(2)
    kept = await thread_creator.create_thread_with_message(alice, "keep")
    gone = await thread_creator.create_thread_with_message(alice, "delete me")
    async with threadcreator_db.session() as session:
        await session.execute(
            update(Thread).where(Thread.id == gone.thread.id).values(deleted_at=func.now())
        )
        await session.commit()
    assert [t.id for t in await thread_creator.list_threads(alice.user_id)] == [kept.thread.id]
    assert await thread_creator.list_threads(bob.user_id) == []
    with pytest.raises(ThreadOwnershipError) as caught:
        await thread_creator.get_thread(kept.thread.id, user_id=bob.user_id)
    assert alice.user_id not in str(caught.value)
    with pytest.raises(ThreadNotFoundError):
        await thread_creator.get_thread(gone.thread.id, user_id=alice.user_id)
    with pytest.raises(ThreadNotFoundError):
        await thread_creator.get_thread(new_thread_id(), user_id=alice.user_id)


async def test_unbound_creator_uses_the_running_tests_database(
    threadcreator_db: Any, user_context: UserExecutionContext
) -> None:
    creator = ThreadCreator()
    await creator.create_thread_with_message(user_context, "hello")
    assert creator.database is threadcreator_db
    assert await threadcreator_db.count_threads() == 1


@sync
def test_unbound_creator_outside_a_database_test_says_what_to_do(
    user_context: UserExecutionContext,
) -> None:
    creator = ThreadCreator()
    with pytest.raises(NoDatabaseError) as caught:
        asyncio.run(creator.create_thread_with_message(user_context, "hello"))
    assert "request the threadcreator_db (or thread_creator) fixture" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"database": "sqlite:///x.db"}, "ThreadCreator(database=...) takes"),
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
        ({"max_message_chars": 0}, "max_message_chars must be an int >= 1"),
    ],
)
@sync
def test_constructor_arguments_are_checked(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises((TypeError, ValueError)) as caught:
        ThreadCreator(**kwargs)
    assert error in str(caught.value)


async def test_user_isolation_holds_and_its_check_can_fail(
    thread_creator: ThreadCreator,
    make_user_context: Any,
    threadcreator_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = make_user_context.many(5)
    await asyncio.gather(
        *(thread_creator.create_thread_with_message(u, f"hi {i}") for u in users for i in range(3))
    )
    await threadcreator_db.assert_user_isolation(users)

    # A read that forgets the owner filter (the classic leak) must be caught.
    original = ThreadCreator.list_threads

    async def leaky_list_threads(self: ThreadCreator, user_id: str) -> list[Any]:
        return [t for u in users for t in await original(self, u.user_id)]

    monkeypatch.setattr(ThreadCreator, "list_threads", leaky_list_threads)
    with pytest.raises(AssertionError, match="list_threads returned threads of other users"):
        await threadcreator_db.assert_user_isolation(users)
