"""Your code under test (SPEC §7): the plugin's tools reach an app's own SQLAlchemy engine.

Each test runs a small suite in pytester against a "team's service" (``chat.py``) that builds
its own engine from the database URL and writes threads with its own SQL, on the backend this
suite runs on.
"""

from __future__ import annotations

import re

import pytest

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
pythonpath = .
"""

#: A team's service: its own engine from a URL, its own ORM writes and reads.
CHAT_SERVICE = '''
import time
import uuid

from sqlalchemy import create_engine, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from pytest_threadcreator.models import Message, Thread


def _rows(user_id, text, title=None):
    now = int(time.time())
    thread_id = "thread_" + uuid.uuid4().hex
    thread = Thread(id=thread_id, object="thread", user_id=user_id, title=title, status="active",
                    created_at=now, metadata_={"user_id": user_id, "status": "active",
                                               "created_at": now})
    message = Message(id="msg_" + uuid.uuid4().hex, object="thread.message", thread_id=thread_id,
                      role="user", created_at=now, file_ids=[], metadata_={},
                      content=[{"type": "text", "text": {"value": text, "annotations": []}}])
    return thread, message


class ChatService:
    """Async: one engine of its own, as the app would build it from its settings."""

    def __init__(self, url):
        self.engine = create_async_engine(url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def start_chat(self, user_id, text, title=None):
        thread, message = _rows(user_id, text, title)
        async with self.sessions.begin() as session:
            session.add(thread)
            await session.flush()          # INSERT INTO threads
            session.add(message)           # INSERT INTO messages at commit
        return thread.id

    async def rename(self, thread_id, title):
        async with self.sessions.begin() as session:
            await session.execute(update(Thread).where(Thread.id == thread_id).values(title=title))

    async def add_orphan_message(self, text):
        _, message = _rows("nobody", text)
        message.thread_id = "thread_" + uuid.uuid4().hex  # no such thread
        async with self.sessions.begin() as session:
            session.add(message)

    async def chats(self, user_id):
        async with self.sessions() as session:
            rows = await session.execute(select(Thread.id).where(Thread.user_id == user_id))
            return [row[0] for row in rows]

    async def all_chats(self, _user_id):  # a bug: shows everyone's chats
        async with self.sessions() as session:
            return [row[0] for row in await session.execute(select(Thread.id))]

    async def welcome_once(self, user_id):  # a race: check, then insert
        async with self.sessions() as session:
            found = (await session.execute(select(Thread.id).where(Thread.user_id == user_id))).first()
        if found is None:
            await self.start_chat(user_id, "Welcome!")

    async def close(self):
        await self.engine.dispose()


class SyncChatService:
    """Sync: a plain Session service, driven from async tests through asyncio.to_thread."""

    def __init__(self, url):
        self.engine = create_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def start_chat(self, user_id, text):
        thread, message = _rows(user_id, text)
        with self.sessions.begin() as session:
            session.add(thread)
            session.flush()
            session.add(message)
        return thread.id

    def close(self):
        self.engine.dispose()
'''

CONFTEST = """
import pytest
import pytest_asyncio

from chat import ChatService, SyncChatService


@pytest_asyncio.fixture
async def chat(threadcreator_db):
    service = ChatService(threadcreator_db.url)   # the app's engine, not the plugin's
    yield service
    await service.close()


@pytest.fixture
def sync_chat(threadcreator_db):
    service = SyncChatService(threadcreator_db.sync_url)
    yield service
    service.close()
"""


@pytest.fixture
def app(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(chat=CHAT_SERVICE)
    pytester.makeconftest(CONFTEST)
    return pytester


def test_query_counts_faults_and_constraints_reach_the_apps_own_engine(
    app: pytest.Pytester,
) -> None:
    app.makepyfile(
        """
        import asyncio

        import pytest
        from sqlalchemy.exc import IntegrityError

        from pytest_threadcreator import InjectedFault


        @pytest.mark.asyncio
        async def test_statements_are_counted(chat, threadcreator_db):
            async with threadcreator_db.count_queries() as queries:
                await chat.start_chat("ann", "hello")
            inserts = [sql.split(" (")[0] for _, sql in queries.statements if sql.startswith("INSERT")]
            assert inserts == ["INSERT INTO threads", "INSERT INTO messages"], queries.listing()


        @pytest.mark.asyncio
        async def test_a_fault_at_message_insert_rolls_the_apps_transaction_back(
            chat, threadcreator_db, fault_injector
        ):
            rule = fault_injector.fail("message_insert", times=1)
            with pytest.raises(InjectedFault):
                await chat.start_chat("ann", "hello")
            assert rule.fired == 1 and fault_injector.hits("message_insert") == 1
            assert fault_injector.hits("thread_insert") == 1
            assert await threadcreator_db.count_threads() == 0
            await chat.start_chat("ann", "again")  # the rule is spent
            assert await threadcreator_db.count_threads() == 1
            await threadcreator_db.check_integrity()


        @pytest.mark.asyncio
        async def test_a_statement_rule_fires_on_matching_sql_only(chat, threadcreator_db, fault_injector):
            thread_id = await chat.start_chat("ann", "hello", title="old")
            rule = fault_injector.fail(statement=r"^UPDATE threads", times=1)
            with pytest.raises(InjectedFault):
                await chat.rename(thread_id, "new")
            assert rule.fired == 1
            (thread,) = await threadcreator_db.store.fetch_all(
                threadcreator_db.schema.thread_table.select()
            )
            assert thread["title"] == "old"


        @pytest.mark.asyncio
        async def test_a_commit_cancel_cancels_the_task_and_keeps_nothing(chat, threadcreator_db, fault_injector):
            fault_injector.cancel("commit", times=1)
            task = asyncio.create_task(chat.start_chat("ann", "hello"))
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
            assert await threadcreator_db.count_threads() == 0
            assert await threadcreator_db.count_messages() == 0


        @pytest.mark.asyncio
        async def test_a_delay_pauses_only_the_task_running_the_statement(
            chat, threadcreator_db, fault_injector
        ):
            fault_injector.delay("thread_insert", 30.0)
            task = asyncio.create_task(chat.start_chat("ann", "hello"))
            # The loop keeps running while the statement waits: this loop reaches the pause and
            # cancels it. A delay that blocked the thread would finish the call first.
            while fault_injector.hits("thread_insert") == 0:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await threadcreator_db.count_threads() == 0


        @pytest.mark.asyncio
        async def test_a_message_without_its_thread_is_refused_on_every_backend(chat, threadcreator_db):
            with pytest.raises(IntegrityError):
                await chat.add_orphan_message("lost")
            assert await threadcreator_db.count_messages() == 0
        """
    )
    result = app.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_sync_code_gets_counts_and_faults_through_db_sync_url(app: pytest.Pytester) -> None:
    app.makepyfile(
        """
        import asyncio

        import pytest

        from pytest_threadcreator import InjectedFault


        @pytest.mark.asyncio
        async def test_sync_service(sync_chat, threadcreator_db, fault_injector):
            async with threadcreator_db.count_queries() as queries:
                await asyncio.to_thread(sync_chat.start_chat, "ann", "hello")
            assert sum(sql.startswith("INSERT") for _, sql in queries.statements) == 2
            fault_injector.fail("message_insert", times=1)
            with pytest.raises(InjectedFault):
                await asyncio.to_thread(sync_chat.start_chat, "bob", "hello")
            fault_injector.cancel("commit", times=1)  # sync code cannot be cancelled: it raises
            with pytest.raises(InjectedFault):
                await asyncio.to_thread(sync_chat.start_chat, "bob", "hello")
            assert await threadcreator_db.count_threads() == 1
            await threadcreator_db.check_integrity()
        """
    )
    result = app.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_engines_on_other_databases_are_left_alone(app: pytest.Pytester) -> None:
    app.makepyfile(
        """
        import pytest
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine


        @pytest.mark.asyncio
        async def test_other_database(threadcreator_db, fault_injector, tmp_path):
            fault_injector.fail(statement="INSERT")
            other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
            try:
                async with threadcreator_db.count_queries() as queries:
                    async with other.begin() as conn:
                        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
                        await conn.execute(text("INSERT INTO t VALUES (1)"))
                        # foreign keys stay as that app set them (off by default in SQLite)
                        assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 0
                assert queries.total == 0
            finally:
                await other.dispose()
        """
    )
    result = app.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_connection_the_app_left_checked_out_fails_the_test_naming_its_engine(
    app: pytest.Pytester,
) -> None:
    app.makepyfile(
        """
        import pytest

        KEPT = []


        @pytest.fixture(scope="session", autouse=True)
        def close_what_the_test_kept():
            yield
            for conn in KEPT:   # after the plugin's check, so nothing outlives the run
                conn.close()


        @pytest.mark.asyncio
        async def test_forgets_to_close(chat, sync_chat):
            await chat.chats("ann")   # the async engine gives its connection back
            KEPT.append(sync_chat.engine.connect())   # the sync one never does
        """
    )
    result = app.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test left 1 database connection(s) checked out; close sessions and connections*",
            "*1 connection(s) of an engine on *",
        ]
    )


def test_assert_user_isolation_reads_what_the_app_shows(app: pytest.Pytester) -> None:
    app.makepyfile(
        """
        import pytest


        @pytest.mark.asyncio
        async def test_isolation_through_the_app(chat, threadcreator_db, make_user_context):
            users = make_user_context.many(3)
            for user in users:
                await chat.start_chat(user.user_id, "hi")
            await threadcreator_db.assert_user_isolation(users, read=lambda c: chat.chats(c.user_id))
            with pytest.raises(AssertionError, match=r"shown 2 thread\\(s\\) of other users"):
                await threadcreator_db.assert_user_isolation(
                    users, read=lambda c: chat.all_chats(c.user_id)
                )
        """
    )
    result = app.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


APP_RACE = """
import pytest


@pytest.mark.asyncio
async def test_welcome_chat_is_created_once(chat, run_concurrently):
    report = await run_concurrently(lambda _: chat.welcome_once("ann"), 2)
    report.raise_errors()
    assert len(await chat.chats("ann")) == 1
"""


def test_shake_finds_a_race_in_the_apps_own_code_and_its_seed_replays_it(
    app: pytest.Pytester,
) -> None:
    app.makepyfile(test_race=APP_RACE)
    result = app.runpytest("--threadcreator-shake=50", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    found = re.search(
        r"failed under seed (\d+); replay exactly that schedule with:\n.*\n?.*pytest "
        r"(test_race.py::test_welcome_chat_is_created_once) --threadcreator-seed=\d+",
        result.stdout.str(),
    )
    assert found is not None, result.stdout.str()
    seed, nodeid = found.group(1), found.group(2)
    failed = 0
    for _ in range(5):
        # subprocess: a user replays a seed in a new process, where the app's first statements are
        # compiled and connected cold (the run that found the seed confirmed it warm)
        replay = app.runpytest_subprocess(
            nodeid, f"--threadcreator-seed={seed}", "-p", "no:cacheprovider"
        )
        outcomes = replay.parseoutcomes()
        if outcomes.get("failed") == 1:
            replay.stdout.fnmatch_lines(["*assert 2 == 1*"])
            failed += 1
        else:
            assert outcomes.get("passed") == 1, replay.stdout.str()
    # The pauses before the app's statements (25-150 ms) decide the race. Beside another xdist
    # worker, a stall can still outweigh a pause now and then: a majority must fail.
    assert failed >= 3, f"the seed's schedule failed only {failed} of 5 replays"


ENV_APP = """
import os

from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from pytest_threadcreator.models import Thread

# Read once, at import, as many apps do (NullPool: the engine outlives each test's event loop).
DATABASE_URL = os.environ["DATABASE_URL"]
engine = create_async_engine(DATABASE_URL, poolclass=NullPool)


async def thread_ids():
    async with engine.connect() as conn:
        return [row[0] for row in await conn.execute(select(Thread.id))]
"""

ENV_TESTS = """
import os

import pytest

import settings_app


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(3))
async def test_the_import_time_engine_is_on_the_tests_database(n, threadcreator_db, thread_factory):
    assert settings_app.DATABASE_URL == threadcreator_db.url
    assert os.environ["SYNC_DATABASE_URL"] == threadcreator_db.sync_url
    thread = await thread_factory.create()
    assert await settings_app.thread_ids() == [thread.id]   # and it starts empty every test
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_threadcreator_env_points_an_import_time_engine_at_the_clean_database(
    pytester: pytest.Pytester, workers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SYNC_DATABASE_URL", "kept-after-the-run")
    pytester.makeini(
        INI + "threadcreator_env =\n    DATABASE_URL={url}\n    SYNC_DATABASE_URL={sync_url}\n"
    )
    pytester.makepyfile(settings_app=ENV_APP, test_env=ENV_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=3)
    assert "DATABASE_URL" not in __import__("os").environ
    assert __import__("os").environ["SYNC_DATABASE_URL"] == "kept-after-the-run"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("DATABASE_URL", "'DATABASE_URL' is not NAME=value"),
        ("DATABASE_URL={dsn}", "has unknown placeholder {dsn}"),
        ("DATABASE_URL=sqlite:///x.db", "has no placeholder"),
        ("1URL={url}", "'1URL={url}' is not NAME=value"),
    ],
)
def test_a_bad_threadcreator_env_line_is_refused_at_start_up(
    pytester: pytest.Pytester, line: str, says: str
) -> None:
    pytester.makeini(INI + f"threadcreator_env = {line}\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*threadcreator_env: *{says}; write lines NAME={{url}} or NAME={{sync_url}}*"]
    )


def test_the_factories_bulk_writes_are_not_the_tests_code(app: pytest.Pytester) -> None:
    app.makepyfile(
        """
        import pytest


        @pytest.mark.asyncio
        async def test_seed_while_a_step_rule_is_armed(threadcreator_db, thread_factory, fault_injector):
            rule = fault_injector.fail("thread_insert")
            threads = await thread_factory.create_batch(3, first_message=None)
            assert len(threads) == 3 and rule.fired == 0
            assert fault_injector.hits("thread_insert") == 0
        """
    )
    result = app.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
