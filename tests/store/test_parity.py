"""Same test, same outcome: what one backend would refuse is refused up front on every backend.

Each refusal is checked on SQLite and on PostgreSQL in the same run: the same error type, a
message naming the field (and where in metadata), and nothing written. Values every backend can
store (emoji, 4-byte characters, metadata nested exactly as deep as allowed) round-trip on both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import JSON, ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pytest_threadcreator import (
    InvalidContextError,
    InvalidMessageError,
    ThreadCreator,
    ThreadExistsError,
    ThreadOwnershipError,
    UserExecutionContext,
)
from pytest_threadcreator.database import Database
from pytest_threadcreator.factories import MessageFactory, ThreadFactory
from pytest_threadcreator.schema import NewThread, ThreadSchema, default_schema

from .stores import BACKEND_PARAMS, open_database

pytestmark = [pytest.mark.asyncio, pytest.mark.suite_independent]

MAX_DEPTH = 100


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """One database per backend for the module: a refusal writes nothing, so they can share it."""
    with open_database(
        request.param, default_schema(), tmp_path_factory.mktemp("parity")
    ) as database:
        yield database


def nested(levels: int) -> dict[str, Any]:
    """Metadata of ``levels`` nested containers, the metadata dict itself counted."""
    value: Any = "leaf"
    for _ in range(levels - 1):
        value = [value]
    return {"deep": value}


async def _nothing_written(db: Database, before: tuple[int, int]) -> None:
    assert (await db.count_threads(), await db.count_messages()) == before


async def _counts(db: Database) -> tuple[int, int]:
    return await db.count_threads(), await db.count_messages()


MESSAGE_REFUSALS = [
    pytest.param({"metadata": {"score": math.nan}}, "metadata['score'] is nan", id="nan"),
    pytest.param({"metadata": {"a": [1, math.inf]}}, "metadata['a'][1] is inf", id="inf"),
    pytest.param(
        {"metadata": {"a": {"b": -math.inf}}}, "metadata['a']['b'] is -inf", id="minus-inf"
    ),
    pytest.param(
        {"metadata": {"a": ["ok", "x\x00y"]}},
        "metadata['a'][1] contains a NUL character (\\x00)",
        id="nul-in-metadata-value",
    ),
    pytest.param(
        {"metadata": {"a": {"k\x00": 1}}},
        "metadata['a'] has a key 'k\\x00' that contains a NUL character (\\x00)",
        id="nul-in-metadata-key",
    ),
    pytest.param(
        {"metadata": {"a": "bad \udc80 text"}},
        "metadata['a'] contains a lone surrogate '\\udc80' at index 4",
        id="surrogate-in-metadata-value",
    ),
    pytest.param(
        {"metadata": {"\ud800": 1}},
        "metadata has a key '\\ud800' that contains a lone surrogate '\\ud800' at index 0",
        id="surrogate-in-metadata-key",
    ),
    pytest.param(
        {"metadata": nested(MAX_DEPTH + 1)},
        f"metadata['deep']{'[0]' * 5}",
        id="too-deep",
    ),
    pytest.param(
        {"metadata": nested(5_000)},
        "is nested deeper than 100 levels",
        id="deeper-than-python-recursion",
    ),
    pytest.param(
        {"message": "caf\udce9"},
        "message contains a lone surrogate '\\udce9' at index 3",
        id="surrogate-in-message",
    ),
    pytest.param(
        {"message": "a\x00b"}, "message contains a NUL character (\\x00)", id="nul-message"
    ),
    pytest.param(
        {"title": "t\ud83d"},
        "title contains a lone surrogate '\\ud83d' at index 1",
        id="surrogate-title",
    ),
    pytest.param({"title": "t\x00"}, "title contains a NUL character (\\x00)", id="nul-title"),
    pytest.param({"role": "user\x00"}, "role 'user\\x00' is not one of", id="nul-role"),
    pytest.param(
        {"metadata": {"when": {1, 2}}}, "metadata['when'] is not JSON-serialisable (set)", id="set"
    ),
]


@pytest.mark.parametrize(("kwargs", "error"), MESSAGE_REFUSALS)
async def test_what_a_backend_would_refuse_is_refused_on_every_backend(
    db: Database, kwargs: dict[str, Any], error: str
) -> None:
    before = await _counts(db)
    call = {"message": "hello", **kwargs}
    with pytest.raises(InvalidMessageError) as caught:
        await ThreadCreator(db).create_thread_with_message(
            UserExecutionContext(user_id="parity_user"), **call
        )
    assert error in str(caught.value)
    assert "; " in str(caught.value)  # what happened; what to do
    await _nothing_written(db, before)


async def test_the_depth_error_says_what_to_do(db: Database) -> None:
    with pytest.raises(InvalidMessageError) as caught:
        await ThreadCreator(db).create_thread_with_message(
            UserExecutionContext(user_id="parity_user"), "hi", metadata=nested(MAX_DEPTH + 1)
        )
    assert "is nested deeper than 100 levels" in str(caught.value)
    assert "flatten it or store it as a string" in str(caught.value)


def _tampered(field: str, value: str) -> UserExecutionContext:
    context = UserExecutionContext(user_id="parity_user", thread_id="thread_parity_x")
    object.__setattr__(context, field, value)  # frozen, but not against this
    return context


CONTEXT_REFUSALS = [
    pytest.param(
        _tampered("user_id", "ali\x00ce"), "user_id 'ali\\x00ce' contains a NUL", id="nul-user"
    ),
    pytest.param(
        _tampered("thread_id", "thread_\x00"),
        "thread_id 'thread_\\x00' contains a NUL",
        id="nul-thread",
    ),
    pytest.param(
        _tampered("run_id", "run_\udc80"),
        "run_id 'run_\\udc80' contains a lone surrogate",
        id="surrogate-run",
    ),
    pytest.param(
        _tampered("user_id", "null"), "user_id 'null' is a placeholder value", id="placeholder"
    ),
    pytest.param(
        SimpleNamespace(user_id="bob\x00"),
        "user_id 'bob\\x00' contains a NUL",
        id="own-context-class",
    ),
    pytest.param(
        SimpleNamespace(user_id="bob", run_id="\ud800run"),
        "run_id '\\ud800run' contains a lone surrogate",
        id="own-context-run-id",
    ),
]


@pytest.mark.parametrize(("context", "error"), CONTEXT_REFUSALS)
async def test_context_ids_are_checked_at_every_call(
    db: Database, context: Any, error: str
) -> None:
    before = await _counts(db)
    with pytest.raises(InvalidContextError) as caught:
        await ThreadCreator(db).create_thread_with_message(context, "hello")
    assert error in str(caught.value)
    await _nothing_written(db, before)


async def test_text_every_backend_stores_round_trips(db: Database) -> None:
    creator = ThreadCreator(db)
    context = UserExecutionContext(user_id="parity_ünïcode_🧵")
    metadata = {
        "emoji": "🧵🚀 ✓",
        "cjk": "漢字",
        "astral": "\U0001f600\U00010348",
        "ключ": ["значение", 1.5, -0.0, 10**20, None, True],
        **nested(MAX_DEPTH),
    }
    result = await creator.create_thread_with_message(
        context, "héllo 🌍 \U0001f9f5", "títle 🧵", role="assistant", metadata=metadata
    )
    (thread,) = await creator.list_threads(context.user_id)
    assert thread.id == result.thread.id and thread.title == "títle 🧵"
    assert {k: thread.metadata_[k] for k in metadata} == metadata
    (message,) = await creator.list_messages(thread.id)
    assert message.text == "héllo 🌍 \U0001f9f5"


# -- a team's schema that writes more of the context ------------------------------------------


class TeamBase(DeclarativeBase):
    """Threads that record the context's tenant and audit trail."""


class TeamThread(TeamBase):
    __tablename__ = "team_threads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), nullable=False)
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    audit: Mapped[Any] = mapped_column(JSON, nullable=True)


class TeamMessage(TeamBase):
    __tablename__ = "team_messages"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("team_threads.id"), nullable=False)
    body: Mapped[str] = mapped_column(String(2000), nullable=False)


def _team_thread_row(new: NewThread) -> dict[str, Any]:
    context: Any = new.context
    return {
        "id": new.thread_id,
        "user_id": new.user_id,
        "tenant": context.agent_context.get("tenant"),
        "audit": dict(context.audit_metadata),
    }


def _team_message_row(new: NewThread) -> dict[str, Any]:
    return {"id": new.message_id, "thread_id": new.thread_id, "body": new.message}


TEAM_SCHEMA = ThreadSchema.from_models(
    TeamThread,
    TeamMessage,
    thread_row=_team_thread_row,
    message_row=_team_message_row,
    thread_created_column=None,
    deleted_at_column=None,
    owner_metadata_column=None,
    message_created_column=None,
    name="team",
)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def team_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """A database per backend with a schema whose row builder writes context mappings."""
    with open_database(request.param, TEAM_SCHEMA, tmp_path_factory.mktemp("team")) as database:
        yield database


@pytest.mark.parametrize(
    ("agent_context", "audit_metadata", "error"),
    [
        ({}, {"score": math.nan}, "team_threads.audit['score'] is nan, a non-finite float"),
        ({}, {"trail": [["x\x00"]]}, "team_threads.audit['trail'][0][0] contains a NUL"),
        ({}, nested(MAX_DEPTH + 1), "team_threads.audit['deep'][0]"),
        ({"tenant": "acme\udc80"}, {}, "team_threads.tenant contains a lone surrogate"),
    ],
    ids=["nan", "nul", "too-deep", "surrogate"],
)
async def test_context_mappings_a_schema_writes_are_checked_too(
    team_db: Database, agent_context: dict[str, Any], audit_metadata: dict[str, Any], error: str
) -> None:
    context = UserExecutionContext(
        user_id="team_user", agent_context=agent_context, audit_metadata=audit_metadata
    )
    before = await _counts(team_db)
    with pytest.raises(InvalidMessageError) as caught:
        await ThreadCreator(team_db).create_thread_with_message(context, "hello")
    assert error in str(caught.value)
    await _nothing_written(team_db, before)


async def test_context_mappings_a_schema_writes_round_trip(team_db: Database) -> None:
    audit = {"trail": ["🧵", {"n": 1.5}], **nested(MAX_DEPTH)}
    context = UserExecutionContext(
        user_id="team_user_ok", agent_context={"tenant": "äcme 🚀"}, audit_metadata=audit
    )
    creator = ThreadCreator(team_db)
    await creator.create_thread_with_message(context, "hello")
    (thread,) = await creator.list_threads("team_user_ok")
    assert thread.tenant == "äcme 🚀" and thread.audit == audit


# -- factories ----------------------------------------------------------------------------------


async def test_a_factory_thread_id_taken_by_another_user_is_an_ownership_error(
    db: Database,
) -> None:
    factory = ThreadFactory.bind(db)
    await factory.create(id="thread_parity_taken", user_id="parity_owner")
    before = await _counts(db)
    with pytest.raises(ThreadOwnershipError) as other:
        await factory.create(id="thread_parity_taken", user_id="parity_intruder")
    assert str(other.value) == (
        "thread 'thread_parity_taken' cannot be created by this user: the id is taken. Leave "
        "id= out to get a generated one, or pass another"
    )
    assert "parity_owner" not in str(other.value)
    with pytest.raises(ThreadExistsError, match="'thread_parity_taken' already exists"):
        await factory.create(id="thread_parity_taken", user_id="parity_owner")
    await _nothing_written(db, before)


FACTORY_REFUSALS = [
    pytest.param(
        {"metadata": {"x": [math.nan]}},
        InvalidMessageError,
        "threads.metadata_['x'][0] is nan, a non-finite float",
        id="nan-metadata",
    ),
    pytest.param(
        {"metadata_": {"user_id": "u", "deep": nested(MAX_DEPTH + 1)["deep"]}},
        InvalidMessageError,
        "threads.metadata_['deep'][0]",
        id="too-deep-raw-metadata",
    ),
    pytest.param(
        {"title": "t\x00"}, InvalidMessageError, "threads.title contains a NUL", id="nul-title"
    ),
    pytest.param(
        {"first_message": "hi \udc80"},
        InvalidMessageError,
        "messages.content[0]['text']['value'] contains a lone surrogate '\\udc80' at index 3",
        id="surrogate-message",
    ),
    pytest.param(
        {"user_id": "ali\x00ce"},
        InvalidContextError,
        "threads.user_id contains a NUL",
        id="nul-user",
    ),
    pytest.param(
        {"id": "thread_\ud800"},
        InvalidContextError,
        "threads.id contains a lone surrogate",
        id="surrogate-thread-id",
    ),
]


@pytest.mark.parametrize(("kwargs", "error_type", "error"), FACTORY_REFUSALS)
async def test_factories_refuse_what_a_backend_would_refuse(
    db: Database, kwargs: dict[str, Any], error_type: type[Exception], error: str
) -> None:
    before = await _counts(db)
    factory = ThreadFactory.bind(db)
    with pytest.raises(error_type) as caught:
        await factory.create(**kwargs)
    assert error in str(caught.value)
    with pytest.raises(error_type):
        await factory.create_batch(3, **kwargs)
    await _nothing_written(db, before)


async def test_message_factory_refuses_what_a_backend_would_refuse(db: Database) -> None:
    thread = await ThreadFactory.bind(db).create()
    before = await _counts(db)
    with pytest.raises(InvalidMessageError) as caught:
        await MessageFactory.bind(db).create(thread=thread, text="nul \x00 here")
    assert "messages.content[0]['text']['value'] contains a NUL character" in str(caught.value)
    await _nothing_written(db, before)
