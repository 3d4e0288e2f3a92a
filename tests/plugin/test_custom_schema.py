"""Another team's schema: its own table and column names, selected by ini or by a fixture.

Direct tests check what a ThreadSchema accepts and the errors that name what does not fit; the
rest runs real suites through pytester, on SQLite and on the PostgreSQL server at
``$THREADCREATOR_POSTGRES_URL``, as a team would run them.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Column, ForeignKey, Integer, MetaData, String, Table, Text

from pytest_threadcreator import ConfigurationError, ThreadSchema
from pytest_threadcreator.schema import load_schema

from ..helpers import PG_SERVER_URL as SERVER_URL
from ..helpers import require_postgresql_backend

# Runs choose their backend by option, and are no xdist workers even when this suite is.
pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.suite_independent]


@pytest.fixture(params=["sqlite", SERVER_URL], ids=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> str:
    """The --threadcreator-db value of a pytester run; PostgreSQL fails (never skips) if missing."""
    require_postgresql_backend(request.param)
    value: str = request.param
    return value


# -- ThreadSchema itself ---------------------------------------------------------------------
def team_tables(*, foreign_key: bool = True) -> tuple[MetaData, Table, Table]:
    """``conversations``/``chat_messages`` as plain tables; no column has a default name."""
    metadata = MetaData()
    conversations = Table(
        "conversations",
        metadata,
        Column("conversation_id", String(64), primary_key=True),
        Column("owner", String(255), nullable=False),
        Column("opened_at", Integer, nullable=False),
        Column("extra_json", JSON),
    )
    reference = (
        [ForeignKey("conversations.conversation_id")] if foreign_key else []
    )  # the one thing a bad schema leaves out
    messages = Table(
        "chat_messages",
        metadata,
        Column("message_id", String(64), primary_key=True),
        Column("conversation_ref", String(64), *reference, nullable=False),
        Column("body", Text, nullable=False),
        Column("posted_at", Integer, nullable=False),
    )
    return metadata, conversations, messages


TEAM_OPTIONS: dict[str, Any] = {
    "thread_id_column": "conversation_id",
    "owner_column": "owner",
    "thread_created_column": "opened_at",
    "deleted_at_column": None,
    "owner_metadata_column": "extra_json",
    "message_id_column": "message_id",
    "message_thread_column": "conversation_ref",
    "message_created_column": "posted_at",
}


def test_a_schema_of_plain_tables_with_the_teams_names() -> None:
    metadata, conversations, messages = team_tables()
    schema = ThreadSchema(
        metadata=metadata, thread_table=conversations, message_table=messages, **TEAM_OPTIONS
    )
    assert (schema.thread_table.name, schema.message_table.name) == (
        "conversations",
        "chat_messages",
    )
    # without models, rows come back as dicts keyed by column name
    assert schema.thread_from_row({"conversation_id": "c1", "owner": "u"}) == {
        "conversation_id": "c1",
        "owner": "u",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            {"owner_column": "user_id"},
            "ThreadSchema: table 'conversations' has no column 'user_id'; its columns are "
            "conversation_id, owner, opened_at, extra_json. Set owner_column= to the right one "
            "(None turns off what uses it).",
            id="missing-owner-column",
        ),
        pytest.param(
            {"owner_metadata_column": "metadata_"},
            "ThreadSchema: table 'conversations' has no column 'metadata_'; its columns are "
            "conversation_id, owner, opened_at, extra_json. Set owner_metadata_column= to the "
            "right one (None turns off what uses it).",
            id="missing-metadata-column",
        ),
        pytest.param(
            {"message_thread_column": "thread_id"},
            "ThreadSchema: table 'chat_messages' has no column 'thread_id'; its columns are "
            "message_id, conversation_ref, body, posted_at. Set message_thread_column= to the "
            "right one.",
            id="missing-message-thread-column",
        ),
        pytest.param(
            {"message_thread_column": "body"},
            "ThreadSchema: chat_messages.body has no foreign key to "
            "conversations.conversation_id; atomicity and integrity checks need it. Add "
            "ForeignKey(...) to the column.",
            id="thread-column-without-foreign-key",
        ),
    ],
)
def test_a_schema_that_does_not_fit_names_the_problem(change: dict[str, Any], message: str) -> None:
    metadata, conversations, messages = team_tables()
    with pytest.raises(ConfigurationError) as failure:
        ThreadSchema(
            metadata=metadata,
            thread_table=conversations,
            message_table=messages,
            **{**TEAM_OPTIONS, **change},
        )
    assert str(failure.value) == message


def test_no_foreign_key_from_message_to_thread() -> None:
    metadata, conversations, messages = team_tables(foreign_key=False)
    with pytest.raises(ConfigurationError) as failure:
        ThreadSchema(
            metadata=metadata, thread_table=conversations, message_table=messages, **TEAM_OPTIONS
        )
    assert str(failure.value) == (
        "ThreadSchema: chat_messages.conversation_ref has no foreign key to "
        "conversations.conversation_id; atomicity and integrity checks need it. Add "
        "ForeignKey(...) to the column."
    )


def test_tables_of_another_metadata() -> None:
    metadata, conversations, _ = team_tables()
    _, _, other_messages = team_tables()
    with pytest.raises(ConfigurationError) as failure:
        ThreadSchema(
            metadata=metadata,
            thread_table=conversations,
            message_table=other_messages,
            **TEAM_OPTIONS,
        )
    assert str(failure.value) == (
        "ThreadSchema: the thread and message tables must belong to the schema's MetaData"
    )


def test_from_models_needs_models() -> None:
    _, conversations, messages = team_tables()
    with pytest.raises(ConfigurationError, match=r"needs two SQLAlchemy declarative models"):
        ThreadSchema.from_models(conversations, messages)  # tables, not models


# -- load_schema: the ini value --------------------------------------------------------------
@pytest.fixture
def schema_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a uniquely named importable module; returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"team_schema_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name

    return write


SCHEMA_MODULE = """
    from sqlalchemy import Column, ForeignKey, MetaData, String, Table

    from pytest_threadcreator import ThreadSchema

    metadata = MetaData()
    conversations = Table("conversations", metadata, Column("conversation_id", String, primary_key=True),
                          Column("owner", String))
    chat_messages = Table("chat_messages", metadata, Column("message_id", String, primary_key=True),
                          Column("conversation_ref", String, ForeignKey("conversations.conversation_id")))
    SCHEMA = ThreadSchema(metadata=metadata, thread_table=conversations, message_table=chat_messages,
                          thread_id_column="conversation_id", owner_column="owner",
                          thread_created_column=None, deleted_at_column=None,
                          owner_metadata_column=None, message_id_column="message_id",
                          message_thread_column="conversation_ref", message_created_column=None)
    SETTINGS = {"threads": "conversations"}

    def make_schema():
        return SCHEMA

    def conversation_row(new):
        return {"conversation_id": new.thread_id, "owner": new.user_id}
"""


def test_load_schema_finds_the_attribute(schema_module: Callable[[str], str]) -> None:
    name = schema_module(SCHEMA_MODULE)
    schema = load_schema(f"{name}:SCHEMA")
    assert schema is sys.modules[name].SCHEMA
    assert load_schema(f"{name}:make_schema") is schema  # a function returning one is called


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        pytest.param(
            "SCHEMAS",
            "threadcreator_schema = '{module}:SCHEMAS': '{module}' has no attribute 'SCHEMAS'",
            id="attribute-that-does-not-exist",
        ),
        pytest.param(
            "SETTINGS",
            "threadcreator_schema = '{module}:SETTINGS' names a dict, not a ThreadSchema (build "
            "one with ThreadSchema.from_models(ThreadModel, MessageModel))",
            id="not-a-thread-schema",
        ),
    ],
)
def test_load_schema_names_what_the_attribute_is(
    schema_module: Callable[[str], str], attribute: str, message: str
) -> None:
    name = schema_module(SCHEMA_MODULE)
    with pytest.raises(ConfigurationError) as failure:
        load_schema(f"{name}:{attribute}")
    assert str(failure.value) == message.format(module=name)


def test_load_schema_of_a_module_that_does_not_import() -> None:
    with pytest.raises(ConfigurationError) as failure:
        load_schema("no_such_team.schema:SCHEMA")
    assert str(failure.value) == (
        "threadcreator_schema = 'no_such_team.schema:SCHEMA': cannot import "
        "'no_such_team.schema' (No module named 'no_such_team'). Check the module path and "
        "that it is importable from the test run."
    )


def test_load_schema_needs_module_colon_attribute() -> None:
    with pytest.raises(ConfigurationError) as failure:
        load_schema("team_schema.SCHEMA")
    assert str(failure.value) == (
        "threadcreator_schema = 'team_schema.SCHEMA' is not of the form 'package.module:attribute'"
    )


def test_load_schema_of_a_function_that_needs_arguments(
    schema_module: Callable[[str], str],
) -> None:
    # A row builder named by mistake is a bad schema like any other, not a TypeError.
    name = schema_module(SCHEMA_MODULE)
    with pytest.raises(ConfigurationError, match=r"conversation_row.*not a ThreadSchema"):
        load_schema(f"{name}:conversation_row")


# -- the team's suite, through pytester ------------------------------------------------------
TEAM_MODELS = """
    from datetime import datetime
    from typing import Any

    from sqlalchemy import JSON, DateTime, ForeignKey, String, Text
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Conversation(Base):
        __tablename__ = "conversations"
        # attribute names differ from column names on purpose: the schema speaks columns
        pk: Mapped[str] = mapped_column("conversation_id", String(64), primary_key=True)
        owner: Mapped[str] = mapped_column(String(255), index=True)
        label: Mapped[str | None] = mapped_column(String(255))
        opened: Mapped[int] = mapped_column("opened_at")
        closed: Mapped[datetime | None] = mapped_column("closed_at", DateTime(timezone=True))
        extra: Mapped[dict[str, Any]] = mapped_column("extra_json", JSON)


    class ChatMessage(Base):
        __tablename__ = "chat_messages"
        pk: Mapped[str] = mapped_column("message_id", String(64), primary_key=True)
        conversation_ref: Mapped[str] = mapped_column(ForeignKey("conversations.conversation_id"))
        author_role: Mapped[str] = mapped_column(String(16))
        body: Mapped[str] = mapped_column(Text)
        posted: Mapped[int] = mapped_column("posted_at")
"""

TEAM_SCHEMA = """
    from team_models import ChatMessage, Conversation

    from pytest_threadcreator import ThreadSchema

    SETTINGS = {"threads": "conversations"}


    def conversation_row(new):
        return {"conversation_id": new.thread_id, "owner": new.user_id, "label": new.title,
                "opened_at": new.created_at, "closed_at": None,
                "extra_json": {"user_id": new.user_id, **new.metadata}}


    def chat_message_row(new):
        return {"message_id": new.message_id, "conversation_ref": new.thread_id,
                "author_role": new.role, "body": new.message, "posted_at": new.created_at}


    SCHEMA = ThreadSchema.from_models(
        Conversation, ChatMessage, thread_row=conversation_row, message_row=chat_message_row,
        thread_id_column="conversation_id", owner_column="owner",
        thread_created_column="opened_at", deleted_at_column="closed_at",
        owner_metadata_column="extra_json", message_id_column="message_id",
        message_thread_column="conversation_ref", message_created_column="posted_at",
    )
"""

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
pythonpath = .
{extra}
"""


@pytest.fixture
def ini(pytester: pytest.Pytester) -> Callable[..., None]:
    def write(extra: str = "threadcreator_schema = team_schema:SCHEMA") -> None:
        pytester.makeini(INI.format(extra=extra))

    write()
    return write


@pytest.fixture
def team(pytester: pytest.Pytester, ini: Callable[..., None]) -> pytest.Pytester:
    """A project with the team's models and schema, selected in the ini."""
    pytester.makepyfile(
        team_models=textwrap.dedent(TEAM_MODELS), team_schema=textwrap.dedent(TEAM_SCHEMA)
    )
    return pytester


def run_suite(pytester: pytest.Pytester, db: str, *args: str) -> pytest.RunResult:
    """Run the project in-process on ``db``."""
    return pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}", *args)


TEAM_TESTS = """
    import pytest
    from sqlalchemy import select
    from team_models import ChatMessage, Conversation

    from pytest_threadcreator import ThreadOwnershipError
    from pytest_threadcreator.factories import MessageFactory, ThreadFactory

    pytestmark = pytest.mark.asyncio


    async def test_thread_creator(thread_creator, make_user_context, run_concurrently, threadcreator_db):
        assert await threadcreator_db.count_threads() == 0
        users = make_user_context.many(30)
        report = await run_concurrently(
            lambda u: thread_creator.create_thread_with_message(u, "Hi", "Topic", metadata={"k": 1}),
            users,
        )
        report.raise_errors()
        assert await threadcreator_db.count_threads() == 30
        assert await threadcreator_db.count_messages() == 30
        await threadcreator_db.check_integrity()
        await threadcreator_db.assert_user_isolation(users)

        conversation, message = report.results[0]
        assert isinstance(conversation, Conversation) and isinstance(message, ChatMessage)
        assert conversation.owner == users[0].user_id and conversation.label == "Topic"
        assert conversation.extra == {"user_id": users[0].user_id, "k": 1}
        assert (message.conversation_ref, message.body) == (conversation.pk, "Hi")
        async with threadcreator_db.session() as session:
            stored = await session.get(Conversation, conversation.pk)
            assert stored.opened == conversation.opened
        listed = await thread_creator.list_threads(users[0].user_id)
        assert [c.pk for c in listed] == [conversation.pk]
        assert [m.body for m in await thread_creator.list_messages(conversation.pk)] == ["Hi"]
        with pytest.raises(ThreadOwnershipError):
            await thread_creator.get_thread(conversation.pk, user_id=users[1].user_id)


    async def test_factories(threadcreator_db):
        assert await threadcreator_db.count_threads() == 0
        threads = ThreadFactory.bind(threadcreator_db)
        conversation = await threads.create(title="Plans", first_message="First")
        assert isinstance(conversation, Conversation) and conversation.label == "Plans"
        reply = await MessageFactory.bind(threadcreator_db).create(
            thread=conversation, role="assistant", text="Reply"
        )
        assert isinstance(reply, ChatMessage) and reply.conversation_ref == conversation.pk
        batch = await threads.create_batch(4, user_id="team_owner")
        assert [c.owner for c in batch] == ["team_owner"] * 4
        assert await threadcreator_db.count_threads("team_owner") == 4
        assert await threadcreator_db.count_messages(conversation.pk) == 2
        await threadcreator_db.check_integrity()
        built = threads.build()
        assert isinstance(built, Conversation) and await threadcreator_db.count_threads() == 5


    async def test_closed_conversations_are_not_listed(thread_creator, user_context, threadcreator_db):
        from datetime import datetime, timezone

        assert await threadcreator_db.count_threads() == 0
        await ThreadFactory.bind(threadcreator_db).create(
            user_id=user_context.user_id, closed=datetime.now(timezone.utc)
        )
        kept, _ = await thread_creator.create_thread_with_message(user_context, "open")
        listed = await thread_creator.list_threads(user_context.user_id)
        assert [c.pk for c in listed] == [kept.pk]


    async def test_integrity_problems_are_named(threadcreator_db):
        assert await threadcreator_db.count_threads() == 0
        threads = ThreadFactory.bind(threadcreator_db)
        bare = await threads.create(first_message=None)
        wrong = await threads.create(user_id="owner_a", extra={"user_id": "owner_b"})
        with pytest.raises(AssertionError) as failure:
            await threadcreator_db.check_integrity()
        assert f"1 thread(s) without a message: {bare.pk}" in str(failure.value)
        assert f"1 thread(s) whose metadata owner differs from owner: {wrong.pk}" in str(failure.value)


    @pytest.mark.threadcreator(isolation="clean")  # needs connections of its own
    async def test_a_message_without_its_conversation_is_named(threadcreator_db):
        assert await threadcreator_db.count_messages() == 0
        async with threadcreator_db.engine.connect() as connection:
            # switch foreign keys off for this connection, as a broken writer would have
            if threadcreator_db.backend == "sqlite":
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            else:
                await connection.exec_driver_sql("SET session_replication_role = replica")
            await connection.execute(
                ChatMessage.__table__.insert().values(
                    message_id="msg_homeless", conversation_ref="gone", author_role="user",
                    body="?", posted_at=0,
                )
            )
            await connection.commit()
        with pytest.raises(AssertionError, match="1 message\\\\(s\\\\) without a thread: msg_homeless"):
            await threadcreator_db.check_integrity()
"""


@pytest.mark.parametrize("isolation", ["clean", "fresh", "rollback"])
def test_the_teams_suite_in_every_isolation_mode(
    team: pytest.Pytester, db: str, isolation: str
) -> None:
    team.makepyfile(test_team=textwrap.dedent(TEAM_TESTS))
    result = run_suite(team, db, f"--threadcreator-isolation={isolation}")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([f"*isolation={isolation} (from command line)*"])


def test_a_failed_tests_report_counts_the_team_tables(team: pytest.Pytester, db: str) -> None:
    team.makepyfile(
        test_fails="""
        import pytest

        @pytest.mark.asyncio
        async def test_fails(thread_creator, user_context):
            await thread_creator.create_thread_with_message(user_context, "evidence")
            assert False, "deliberate"
        """
    )
    result = run_suite(team, db)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- threadcreator database -*",
            "backend: * (clean isolation)",
            "database: *",
            "rows in conversations: 1",
            "rows in chat_messages: 1",
            "orphan threads: 0",
        ]
    )


# -- schemas that do not fit, selected in the ini --------------------------------------------
BAD_INI_SCHEMAS = [
    pytest.param(
        "team_schema:SCHEMA",
        lambda source: source.replace('owner_column="owner",', ""),
        None,
        "ERROR: ConfigurationError: ThreadSchema: table 'conversations' has no column "
        "'user_id'; its columns are conversation_id, owner, label, opened_at, closed_at, "
        "extra_json. Set owner_column= to the right one (None turns off what uses it).",
        id="missing-owner-column",
    ),
    pytest.param(
        "team_schema:SCHEMA",
        None,
        lambda source: source.replace('ForeignKey("conversations.conversation_id")', "String(64)"),
        "ERROR: ConfigurationError: ThreadSchema: chat_messages.conversation_ref has no foreign "
        "key to conversations.conversation_id; atomicity and integrity checks need it. Add "
        "ForeignKey(...) to the column.",
        id="no-foreign-key",
    ),
    pytest.param(
        "team_schemas:SCHEMA",
        None,
        None,
        "ERROR: ConfigurationError: threadcreator_schema = 'team_schemas:SCHEMA': cannot import "
        "'team_schemas' (No module named 'team_schemas'). Check the module path and that it is "
        "importable from the test run.",
        id="does-not-import",
    ),
    pytest.param(
        "team_schema:SCHEMAS",
        None,
        None,
        "ERROR: ConfigurationError: threadcreator_schema = 'team_schema:SCHEMAS': 'team_schema' "
        "has no attribute 'SCHEMAS'",
        id="attribute-that-does-not-exist",
    ),
    pytest.param(
        "team_schema:SETTINGS",
        None,
        None,
        "ERROR: ConfigurationError: threadcreator_schema = 'team_schema:SETTINGS' names a dict, "
        "not a ThreadSchema (build one with ThreadSchema.from_models(ThreadModel, MessageModel))",
        id="not-a-thread-schema",
    ),
    pytest.param(
        "team_schema:conversation_row",
        None,
        None,
        "ERROR: ConfigurationError: threadcreator_schema = 'team_schema:conversation_row'*"
        "not a ThreadSchema*",
        id="a-function-that-needs-arguments",
    ),
]


@pytest.mark.parametrize(("spec", "edit_schema", "edit_models", "error"), BAD_INI_SCHEMAS)
def test_a_bad_schema_in_the_ini_stops_the_run_at_startup(
    pytester: pytest.Pytester,
    ini: Callable[..., None],
    spec: str,
    edit_schema: Callable[[str], str] | None,
    edit_models: Callable[[str], str] | None,
    error: str,
) -> None:
    models, schema = textwrap.dedent(TEAM_MODELS), textwrap.dedent(TEAM_SCHEMA)
    pytester.makepyfile(
        team_models=edit_models(models) if edit_models else models,
        team_schema=edit_schema(schema) if edit_schema else schema,
    )
    ini(extra=f"threadcreator_schema = {spec}")
    pytester.makepyfile("def test_never_runs():\n    raise AssertionError('ran')\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([error])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# -- the setup hook ----------------------------------------------------------------------------
HOOK_CONFTEST = """
    import asyncio
    import os
    from pathlib import Path

    from pytest_threadcreator import ThreadCreator, UserExecutionContext

    CALLS = Path(__file__).parent / "hook_calls"
    SEED = {seed}


    def pytest_threadcreator_setup_database(database):
        CALLS.mkdir(exist_ok=True)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "master")
        with open(CALLS / f"{{worker}}.txt", "a") as calls:
            calls.write(database.schema.thread_table.name + "\\n")
        if SEED:  # a seed conversation: every test database starts with it
            seed = UserExecutionContext(user_id="seed_owner")
            asyncio.run(ThreadCreator(database).create_thread_with_message(seed, "Welcome"))
"""

HOOK_TESTS = """
    import pytest

    pytestmark = pytest.mark.asyncio


    @pytest.mark.parametrize("n", range({count}))
    async def test_starts_from_the_template(n, thread_creator, make_user_context, threadcreator_db):
        assert await threadcreator_db.count_threads() == {seeded}
        await thread_creator.create_thread_with_message(make_user_context(), f"test {{n}}")
        assert await threadcreator_db.count_threads() == {seeded} + 1
        await threadcreator_db.check_integrity()
"""


def hook_project(pytester: pytest.Pytester, *, tests: int, seed: bool) -> None:
    pytester.makeconftest(textwrap.dedent(HOOK_CONFTEST.format(seed=seed)))
    source = HOOK_TESTS.format(count=tests, seeded=int(seed))
    pytester.makepyfile(test_hook=textwrap.dedent(source))


def hook_calls(pytester: pytest.Pytester) -> dict[str, list[str]]:
    """Thread table named in each hook call, by xdist worker ("master" without xdist)."""
    folder = pytester.path / "hook_calls"
    return {p.stem: p.read_text().splitlines() for p in sorted(folder.glob("*.txt"))}


@pytest.mark.parametrize("isolation", ["clean", "fresh", "rollback"])
def test_the_setup_hook_runs_once_per_template(
    team: pytest.Pytester, db: str, isolation: str
) -> None:
    hook_project(team, tests=5, seed=False)
    result = run_suite(team, db, f"--threadcreator-isolation={isolation}")
    result.assert_outcomes(passed=5)
    assert hook_calls(team) == {"master": ["conversations"]}


def test_the_setup_hook_runs_once_per_xdist_run(team: pytest.Pytester, db: str) -> None:
    hook_project(team, tests=10, seed=True)
    # subprocess: xdist workers are processes
    result = team.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", f"--threadcreator-db={db}"
    )
    result.assert_outcomes(passed=10)
    # the workers share one template per run: one of them builds it, so the hook runs once,
    # and the rows it seeds are in every worker's databases (the tests check the count)
    calls = hook_calls(team)
    assert list(calls.values()) == [["conversations"]] and set(calls) <= {"gw0", "gw1"}


@pytest.mark.parametrize("isolation", ["clean", "fresh", "rollback"])
def test_rows_the_hook_seeds_are_in_every_test_database(
    team: pytest.Pytester, db: str, isolation: str
) -> None:
    # clean and rollback reuse one database: emptying it between tests must keep the seed rows
    hook_project(team, tests=3, seed=True)
    result = run_suite(team, db, f"--threadcreator-isolation={isolation}")
    result.assert_outcomes(passed=3)
    assert hook_calls(team) == {"master": ["conversations"]}


# -- the schema from a fixture instead of the ini ----------------------------------------------
OVERRIDE_CONFTEST = """
    import pytest
    from team_schema import SCHEMA


    @pytest.fixture(scope="session")
    def threadcreator_schema():
        return SCHEMA
"""

USES_TEAM_SCHEMA = """
    import pytest
    from team_models import Conversation
    from team_schema import SCHEMA

    @pytest.mark.asyncio
    async def test_team_schema(thread_creator, user_context, threadcreator_db):
        assert threadcreator_db.schema is SCHEMA
        conversation, _ = await thread_creator.create_thread_with_message(user_context, "Hi")
        assert isinstance(conversation, Conversation)
        await threadcreator_db.check_integrity()
"""

USES_DEFAULT_SCHEMA = """
    import pytest

    @pytest.mark.asyncio
    async def test_default_schema(threadcreator_db):
        assert threadcreator_db.schema.thread_table.name == "threads"
"""


def test_overriding_the_schema_fixture_instead_of_the_ini(
    team: pytest.Pytester, ini: Callable[..., None], db: str
) -> None:
    ini(extra="")
    team.makeconftest(textwrap.dedent(OVERRIDE_CONFTEST))
    team.makepyfile(test_team=textwrap.dedent(USES_TEAM_SCHEMA))
    result = run_suite(team, db)
    result.assert_outcomes(passed=1)


def test_a_schema_fixture_override_in_a_subfolder_is_not_ignored(
    team: pytest.Pytester, ini: Callable[..., None]
) -> None:
    # a/ uses the default schema and runs first; b/ overrides threadcreator_schema.
    ini(extra="")
    team.mkpydir("a").joinpath("test_a.py").write_text(textwrap.dedent(USES_DEFAULT_SCHEMA))
    team.mkpydir("b").joinpath("conftest.py").write_text(textwrap.dedent(OVERRIDE_CONFTEST))
    team.path.joinpath("b", "test_b.py").write_text(textwrap.dedent(USES_TEAM_SCHEMA))
    result = team.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
