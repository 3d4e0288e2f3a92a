"""ThreadSchema options for apps that are not shaped like ours: every problem named at once,
id factories checked against the id columns, schemas without owners, creation time as datetime."""

from __future__ import annotations

import re
import textwrap
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import JSON, Column, ForeignKey, Integer, MetaData, String, Table, Text

from pytest_threadcreator import ConfigurationError, NewThread, ThreadSchema
from pytest_threadcreator.ids import new_uuid

from ..helpers import PG_SERVER_URL


def chat_tables(id_length: int = 36) -> tuple[MetaData, Table, Table]:
    """An app whose ids are plain UUID strings and whose chats have no owner."""
    metadata = MetaData()
    chats = Table(
        "chats",
        metadata,
        Column("id", String(id_length), primary_key=True),
        Column("title", String(200)),
        Column("created", Integer, nullable=False),
        Column("settings", JSON),
    )
    lines = Table(
        "chat_lines",
        metadata,
        Column("id", String(id_length), primary_key=True),
        Column("chat_id", String(id_length), ForeignKey("chats.id"), nullable=False),
        Column("body", Text, nullable=False),
    )
    return metadata, chats, lines


CHAT_OPTIONS: dict[str, Any] = {
    "owner_column": None,
    "thread_created_column": "created",
    "deleted_at_column": None,
    "owner_metadata_column": None,
    "message_thread_column": "chat_id",
    "message_created_column": None,
    "thread_id_factory": new_uuid,
    "message_id_factory": new_uuid,
}


def chat_schema(**changes: Any) -> ThreadSchema:
    metadata, chats, lines = chat_tables()
    return ThreadSchema(
        metadata=metadata, thread_table=chats, message_table=lines, **{**CHAT_OPTIONS, **changes}
    )


def test_a_schema_without_owners_and_with_uuid_ids_fits() -> None:
    schema = chat_schema()
    assert schema.owner_column is None
    assert schema.problems() == []


def test_every_problem_is_named_at_once_with_the_option_to_set() -> None:
    with pytest.raises(ConfigurationError) as failure:
        chat_schema(
            thread_created_column="created_at",
            message_thread_column="chat",
            thread_id_factory=lambda: "thread_" + "0" * 32,
        )
    assert str(failure.value) == (
        "ThreadSchema: 3 problems:\n"
        "  - table 'chats' has no column 'created_at'; its columns are id, title, created, "
        "settings. Set thread_created_column= to the right one (None turns off what uses it).\n"
        "  - table 'chat_lines' has no column 'chat'; its columns are id, chat_id, body. Set "
        "message_thread_column= to the right one.\n"
        "  - chats.id holds 36 characters but thread_id_factory makes ids of 39 (e.g. "
        "'thread_00000000000000000000000000000000'); pass thread_id_factory= a callable "
        "returning ids that fit (pytest_threadcreator.ids.new_uuid makes 36-character "
        "time-ordered UUIDs), or widen the column"
    )


def test_the_default_ids_do_not_fit_a_uuid_column_and_that_is_said_at_start() -> None:
    with pytest.raises(ConfigurationError) as failure:
        chat_schema(thread_id_factory=ThreadSchema.thread_id_factory)
    message = str(failure.value)
    assert message.startswith(
        "ThreadSchema: chats.id holds 36 characters but thread_id_factory makes ids of 39 "
    )
    # the default message ids are 36 characters: they fit, so only the thread ids are named
    assert "message_id_factory" not in message


def test_a_required_column_cannot_be_none() -> None:
    with pytest.raises(ConfigurationError) as failure:
        chat_schema(thread_id_column=None)
    assert str(failure.value) == (
        "ThreadSchema: thread_id_column is None; name the column of table 'chats'"
    )


@pytest.mark.parametrize(
    ("factory", "said"),
    [
        (
            "not callable",
            "message_id_factory must be a callable returning a str id, got str",
        ),
        (lambda: 7, "message_id_factory() must return a non-empty str, returned 7"),
        (lambda: 1 / 0, "message_id_factory() raised ZeroDivisionError: division by zero"),
    ],
    ids=["not-callable", "not-a-str", "raises"],
)
def test_an_id_factory_that_makes_no_ids_is_named(factory: Any, said: str) -> None:
    with pytest.raises(ConfigurationError) as failure:
        chat_schema(message_id_factory=factory)
    assert str(failure.value) == f"ThreadSchema: {said}"


def test_per_user_tools_name_the_missing_owner_column() -> None:
    with pytest.raises(ConfigurationError) as failure:
        chat_schema().owner("count_threads(user_id=...)")
    assert str(failure.value) == (
        "count_threads(user_id=...) needs to know who owns a thread, but this ThreadSchema has "
        "owner_column=None; set owner_column= to the column that holds the owner"
    )


def test_new_uuid_is_a_time_ordered_uuid_string() -> None:
    ids = [new_uuid() for _ in range(1000)]
    assert all(
        re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", i)
        for i in ids
    )
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000


def test_new_thread_offers_its_creation_time_as_an_aware_datetime() -> None:
    new = NewThread(
        thread_id="t",
        message_id="m",
        user_id="u",
        run_id=None,
        message="hi",
        title=None,
        role="user",
        metadata={},
        created_at=1_700_000_000,
        context=None,
    )
    assert new.created_datetime == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)


# -- an app without owners, with UUID ids and empty chats, end to end on each backend ---------
CHAT_APP = """
    from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, Text, select

    from pytest_threadcreator import ThreadSchema
    from pytest_threadcreator.ids import new_uuid

    metadata = MetaData()
    chats = Table(
        "chats", metadata,
        Column("id", String(36), primary_key=True),
        Column("title", String(200)),
        Column("created", Integer, nullable=False),
    )
    lines = Table(
        "chat_lines", metadata,
        Column("id", String(36), primary_key=True),
        Column("chat_id", String(36), ForeignKey("chats.id"), nullable=False),
        Column("body", Text, nullable=False),
    )


    async def no_untitled_chats(session):
        rows = (await session.execute(select(chats.c.id).where(chats.c.title.is_(None)))).all()
        return [f"chat {row.id} has no title" for row in rows]


    SCHEMA = ThreadSchema(
        metadata=metadata, thread_table=chats, message_table=lines,
        thread_row=lambda new: {"id": new.thread_id, "title": new.title,
                                "created": int(new.created_datetime.timestamp())},
        message_row=lambda new: {"id": new.message_id, "chat_id": new.thread_id,
                                 "body": new.message},
        owner_column=None, thread_created_column="created", deleted_at_column=None,
        owner_metadata_column=None, message_thread_column="chat_id",
        message_created_column=None, require_first_message=False,
        checks=[no_untitled_chats], thread_id_factory=new_uuid, message_id_factory=new_uuid,
    )
"""

CHAT_TESTS = """
    import re

    import pytest
    from chat_app import chats

    from pytest_threadcreator import ConfigurationError, ThreadExistsError

    pytestmark = pytest.mark.asyncio
    UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


    async def test_the_app_schema(thread_creator, make_user_context, threadcreator_db, run_concurrently):
        users = make_user_context.many(20)
        report = await run_concurrently(
            lambda u: thread_creator.create_thread_with_message(u, "hi", "A chat"), users
        )
        report.raise_errors()
        chat, line = report.results[0]
        assert UUID.fullmatch(chat["id"]) and UUID.fullmatch(line["id"])
        assert await threadcreator_db.count_threads() == 20
        with pytest.raises(ThreadExistsError):
            await thread_creator.create_thread_with_message(users[1].with_thread(chat["id"]), "again")
        async with threadcreator_db.session() as session:  # an empty chat is valid here
            await session.execute(chats.insert().values(id="empty-chat", title="t", created=1))
            await session.commit()
        await threadcreator_db.check_integrity()
        async with threadcreator_db.session() as session:
            await session.execute(chats.insert().values(id="untitled", title=None, created=1))
            await session.commit()
        with pytest.raises(AssertionError, match="no_untitled_chats: chat untitled has no title"):
            await threadcreator_db.check_integrity()


    async def test_per_user_tools_say_what_is_missing(thread_creator, threadcreator_db, user_context):
        for call in (
            lambda: threadcreator_db.count_threads(user_context.user_id),
            lambda: threadcreator_db.assert_user_isolation([user_context]),
            lambda: thread_creator.list_threads(user_context.user_id),
        ):
            with pytest.raises(ConfigurationError, match="owner_column=None"):
                await call()
"""


@pytest.mark.parametrize("db", ["sqlite", PG_SERVER_URL], ids=["sqlite", "postgresql"])
def test_an_app_without_owners_and_with_uuid_ids_on_every_backend(
    pytester: pytest.Pytester, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("THREADCREATOR_DB", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "pythonpath = .\nthreadcreator_schema = chat_app:SCHEMA\n"
    )
    pytester.makepyfile(chat_app=textwrap.dedent(CHAT_APP), test_chat=textwrap.dedent(CHAT_TESTS))
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=2)
