"""The ``clean`` reset on PostgreSQL: nothing a previous test left open can block it.

A session left holding row locks on the test database (a transaction never committed, e.g. by a
task cut off mid-transaction) is ended before the reset; sessions that cannot block it (idle
pooled connections, open read transactions) are left alone, so no pool hands out a dead
connection. A blocker the plugin may not end makes the reset fail once, naming its pid, state
and query and what to do.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pytest_threadcreator.backends.postgresql.backend import PostgresBackend
from pytest_threadcreator.backends.postgresql.janitor import new_run_id
from pytest_threadcreator.database import Database
from pytest_threadcreator.errors import DatabaseError
from pytest_threadcreator.schema import default_schema

from ..helpers import (
    PG_SERVER_URL,
    default_rows,
    needs_marks,
    pg_connect_kwargs,
    pg_fetch,
    pg_server_missing,
)

pytestmark = [*needs_marks(pg_server_missing()), pytest.mark.suite_independent]
SCHEMA = default_schema()


async def _fill(db: Database, n: int) -> None:
    await asyncio.gather(*(db.store.create(*default_rows(), explicit_id=False) for _ in range(n)))


async def _alive(conn: Any) -> bool:
    try:
        return bool(await conn.fetchval("SELECT true"))
    except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError):
        return False


async def _gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until the server has ended backend ``pid``: a closed client socket does not mean
    its backend has left ``pg_stat_activity`` yet."""
    deadline = time.monotonic() + timeout
    while await pg_fetch("SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid):
        assert time.monotonic() < deadline, f"backend {pid} still there after {timeout} s"
        await asyncio.sleep(0.01)


@pytest.fixture
def db(pg_backend: PostgresBackend) -> Iterator[Database]:
    database = pg_backend.create_database("clean", isolation="clean")
    yield database
    pg_backend.drop_database(database)


def test_a_session_left_holding_row_locks_is_ended_and_the_reset_succeeds(db: Database) -> None:
    async def scenario() -> tuple[bool, bool, bool, int]:
        await _fill(db, 3)
        blocker = await asyncpg.connect(**pg_connect_kwargs(db.name))
        idle = await asyncpg.connect(**pg_connect_kwargs(db.name))  # e.g. an app's pool
        reader = await asyncpg.connect(**pg_connect_kwargs(db.name))
        try:
            # a transaction left open after updating rows: it holds their row locks
            await blocker.execute("BEGIN; UPDATE threads SET title = 'locked by a leftover'")
            await reader.execute("BEGIN; SELECT count(*) FROM threads")  # cannot block DELETE
            await asyncio.to_thread(db.store.reset)
            threads = await db.count_threads()
            # the store's pool hands out live connections afterwards
            await _fill(db, 20)
            return await _alive(blocker), await _alive(idle), await _alive(reader), threads
        finally:
            for conn in (blocker, idle, reader):
                conn.terminate()

    blocker_alive, idle_alive, reader_alive, threads = asyncio.run(scenario())
    assert threads == 0
    assert not blocker_alive, "the session holding row locks was ended"
    assert idle_alive and reader_alive, "sessions that cannot block the reset are left alone"
    assert asyncio.run(db.count_threads()) == 20
    db.store.reset()
    assert asyncio.run(db.count_threads()) == 0


def test_a_big_reset_does_not_wait_for_an_open_read_transaction(db: Database) -> None:
    async def scenario() -> tuple[int, bool]:
        await _fill(db, 600)  # past the DELETE / TRUNCATE switch
        reader = await asyncpg.connect(**pg_connect_kwargs(db.name))
        try:
            await reader.execute("BEGIN; SELECT count(*) FROM threads")  # blocks a TRUNCATE
            await asyncio.to_thread(db.store.reset)
            return await db.count_threads(), await _alive(reader)
        finally:
            reader.terminate()

    assert asyncio.run(scenario()) == (0, True)


def test_the_reset_calls_the_templates_function_and_without_it_runs_the_same_as_a_do_block(
    db: Database,
) -> None:
    functions = asyncio.run(
        pg_fetch(
            "SELECT p.proname FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
            "WHERE n.nspname = 'threadcreator_reset'",
            database=db.name,
        )
    )
    assert [row["proname"] for row in functions] == ["reset"], "cloned with the template"
    store: Any = db.store
    asyncio.run(_fill(db, 3))
    store.reset()
    assert asyncio.run(db.count_threads()) == 0
    assert store._reset_function, "the function emptied it"
    asyncio.run(pg_fetch("DROP SCHEMA threadcreator_reset CASCADE", database=db.name))
    asyncio.run(_fill(db, 3))
    store.reset()  # a test dropped it: the same reset, compiled each time
    assert asyncio.run(db.count_threads()) == 0 and asyncio.run(db.count_messages()) == 0
    assert not store._reset_function


def test_an_undefined_function_inside_the_reset_is_the_tests_error_not_a_missing_reset(
    db: Database,
) -> None:
    """A trigger of the test's that calls a function that does not exist fails the reset with
    that error; the store keeps its reset function."""
    asyncio.run(_fill(db, 1))
    asyncio.run(
        pg_fetch(
            "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM no_such_function(); RETURN OLD; END $$",
            database=db.name,
        )
    )
    asyncio.run(
        pg_fetch(
            "CREATE TRIGGER broken BEFORE DELETE ON messages FOR EACH ROW EXECUTE FUNCTION broken()",
            database=db.name,
        )
    )
    store: Any = db.store
    with pytest.raises(asyncpg.UndefinedFunctionError, match="no_such_function"):
        store.reset()
    assert store._reset_function
    asyncio.run(pg_fetch("DROP TRIGGER broken ON messages", database=db.name))
    store.reset()
    assert asyncio.run(db.count_messages()) == 0


def test_the_reset_leaves_the_test_engines_pooled_connections_usable(db: Database) -> None:
    async def scenario() -> int:
        await _fill(db, 3)
        async with db.session() as session:  # leaves an idle connection in the engine's pool
            await session.execute(text("SELECT count(*) FROM threads"))
        await asyncio.to_thread(db.store.reset)
        async with db.session() as session:
            count = (await session.execute(text("SELECT count(*) FROM threads"))).scalar_one()
        await db.engine.dispose()
        return int(count)

    assert asyncio.run(scenario()) == 0
    db.dispose_engines()


@pytest.fixture
def unendable_blocker_backend() -> Iterator[tuple[PostgresBackend, str]]:
    """A backend run by a role with CREATEDB (and pg_read_all_stats, to see other sessions),
    which may not end the superuser's sessions."""
    if (reason := pg_server_missing()) is not None and not os.environ.get("CI"):
        pytest.skip(reason)
    role, password = f"threadcreator_reset_{secrets.token_hex(4)}", secrets.token_hex(8)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(**pg_connect_kwargs("postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'"))
    asyncio.run(admin(f"GRANT pg_read_all_stats TO {role}"))
    url = make_url(PG_SERVER_URL).set(username=role, password=password)
    backend = PostgresBackend(
        "url", url=url.render_as_string(hide_password=False), run_id=new_run_id(), worker_id="gw5"
    )
    try:
        backend.start()
        backend.prepare_template(SCHEMA, None)
        yield backend, role
    finally:
        backend.stop()
        asyncio.run(admin(f"DROP ROLE IF EXISTS {role}"))


def test_a_blocker_that_cannot_be_ended_fails_the_reset_once_naming_it(
    unendable_blocker_backend: tuple[PostgresBackend, str],
) -> None:
    backend, role = unendable_blocker_backend
    db = backend.create_database("clean", isolation="clean")
    store: Any = db.store
    store.reset_lock_timeout = 0.2  # the wait this test sits through; 10 s by default

    async def scenario() -> tuple[int, str]:
        await _fill(db, 3)
        # the superuser's session, which a CREATEDB role may not end
        blocker = await asyncpg.connect(**pg_connect_kwargs(db.name))
        try:
            pid = int(await blocker.fetchval("SELECT pg_backend_pid()"))
            await blocker.execute("BEGIN; UPDATE threads SET title = 'held by the superuser'")
            with pytest.raises(DatabaseError) as failure:
                await asyncio.to_thread(db.store.reset)
            # while it lives, the next reset fails at once with the same message
            with pytest.raises(DatabaseError) as again:
                await asyncio.to_thread(db.store.reset)
            assert str(again.value) == f"{failure.value} (it is still there: not waiting again)"
            assert await _alive(blocker), "the plugin could not end it, and did not"
            return pid, str(failure.value)
        finally:
            await blocker.close()
            await _gone(pid)

    pid, message = asyncio.run(scenario())
    assert message == (
        f"resetting the PostgreSQL database {db.name} for the next test waited 0.2 s for a "
        f"lock and gave up: pid {pid} (user postgres, idle in transaction, query "
        "\"BEGIN; UPDATE threads SET title = 'held by the superuser'\") holds locks on its "
        f"tables, and role {role} may not end it. Commit, roll back or close the transactions "
        "that your tests and fixtures open, or end the session with "
        "SELECT pg_terminate_backend(pid)"
    )
    db.store.reset()  # the blocker is gone: the next reset succeeds
    assert asyncio.run(db.count_threads()) == 0
    backend.drop_database(db)


PLUGIN_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

LEAVES_A_LOCK = """
import psycopg
import pytest
from sqlalchemy.engine import make_url

LEFT_OPEN = []


def _sync_dsn(url):
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.mark.asyncio
async def test_1_leaves_a_transaction_holding_row_locks(threadcreator_db, thread_creator,
                                                       make_user_context):
    for user in make_user_context.many(3):
        await thread_creator.create_thread_with_message(user, "hi")
    conn = psycopg.connect(_sync_dsn(threadcreator_db.url))
    conn.execute("UPDATE threads SET title = 'locked'")  # never committed
    LEFT_OPEN.append(conn)


@pytest.mark.asyncio
async def test_2_starts_on_an_empty_database(threadcreator_db, thread_creator, user_context):
    assert await threadcreator_db.count_threads() == 0
    await thread_creator.create_thread_with_message(user_context, "after the leftover")
    assert await threadcreator_db.count_threads() == 1
"""


@pytest.mark.parametrize(
    "workers",
    [pytest.param([], id="serial"), pytest.param(["-n", "2", "--dist", "loadfile"], id="xdist")],
)
def test_the_next_test_starts_clean_after_one_left_row_locks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    for name in ("THREADCREATOR_DB", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini(PLUGIN_INI)
    for n in range(2):  # one pair per file: under -n 2 each worker gets a file
        pytester.makepyfile(**{f"test_pair_{n}": LEAVES_A_LOCK})
    # subprocess: xdist workers are processes, and the left-open psycopg connections must not
    # outlive the inner run inside this process
    db = f"--threadcreator-db={PG_SERVER_URL}"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", db, *workers)
    result.assert_outcomes(passed=4)
