"""ThreadSchema options for apps that are not shaped like ours: every problem named at once,
id factories checked against the id columns, schemas without owners, creation time as datetime."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import JSON, Column, ForeignKey, Integer, MetaData, String, Table, Text

from pytest_threadcreator import ConfigurationError, NewThread, ThreadSchema
from pytest_threadcreator.ids import new_uuid


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
