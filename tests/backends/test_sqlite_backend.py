"""The embedded SQLite backend: right by construction (see RELIABILITY rows 1-5, 7)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select, text
from sqlalchemy.pool import StaticPool

from pytest_threadcreator import DatabaseError, ThreadCreator, UserExecutionContext
from pytest_threadcreator.backends.sqlite import SqliteBackend
from pytest_threadcreator.database import Database
from pytest_threadcreator.ids import new_thread_id
from pytest_threadcreator.models import Message, Thread
from pytest_threadcreator.rollback import RollbackDatabase
from pytest_threadcreator.schema import default_schema
from pytest_threadcreator.store.sqlite import SqliteStore, make_sqlite_engine

# Every test here is about the SQLite backend, whatever backend the suite runs on.
pytestmark = pytest.mark.threadcreator(db="sqlite")

# Safety net so a writer that does not give up fails the test instead of hanging it.
HANG_GUARD_S = 30.0


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    """A SQLite backend outside the plugin's own runtime, with a short busy timeout."""
    b = SqliteBackend(tmp_path / "dbs", busy_timeout_ms=50)
    b.start()
    b.prepare_template(default_schema(), None)
    yield b
    b.stop()


def _context(n: int = 0) -> UserExecutionContext:
    return UserExecutionContext(user_id=f"sqlite_user_{n}")


@pytest.mark.asyncio
async def test_the_default_database_is_a_wal_file_with_a_real_pool(
    threadcreator_db: Database,
) -> None:
    assert threadcreator_db.backend == "sqlite"
    assert Path(threadcreator_db.location).is_file()
    assert ":memory:" not in threadcreator_db.url
    pool = threadcreator_db.engine.sync_engine.pool
    assert not isinstance(pool, StaticPool)
    assert pool.size() >= 5  # type: ignore[attr-defined]
    async with threadcreator_db.engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 0


@pytest.mark.asyncio
async def test_foreign_keys_are_enforced_on_every_pooled_connection(
    threadcreator_db: Database,
) -> None:
    engine = threadcreator_db.engine
    connections = [await engine.connect() for _ in range(4)]  # four distinct pool checkouts
    try:
        for conn in connections:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            with pytest.raises(sa_exc.IntegrityError, match="FOREIGN KEY"):
                await conn.execute(
                    Message.__table__.insert().values(  # type: ignore[attr-defined]
                        id="msg_x",
                        thread_id="thread_missing",
                        role="user",
                        content=[],
                        created_at=1,
                    )
                )
            await conn.rollback()
    finally:
        for conn in connections:
            await conn.close()


@pytest.mark.asyncio
async def test_pool_exhaustion_is_a_clear_error_within_its_timeout(
    threadcreator_db: Database,
) -> None:
    engine = make_sqlite_engine(
        threadcreator_db.location, pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        held = await engine.connect()
        with pytest.raises(
            sa_exc.TimeoutError, match="QueuePool limit of size 1 overflow 0 reached"
        ):
            await asyncio.wait_for(engine.connect(), timeout=10)
        await held.close()
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_one_session_shared_by_twenty_tasks_is_detected(threadcreator_db: Database) -> None:
    async with threadcreator_db.session() as session:

        async def use(i: int) -> Any:
            return (await session.execute(select(func.count()).select_from(Thread))).scalar()

        outcomes = await asyncio.gather(*(use(i) for i in range(20)), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert errors, "concurrent use of one AsyncSession must surface, not be swallowed"
    assert all(
        isinstance(e, (sa_exc.InvalidRequestError, sa_exc.IllegalStateChangeError)) for e in errors
    )


@pytest.mark.asyncio
async def test_thread_creator_never_shares_a_session_under_gather(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Database
) -> None:
    outcomes = await asyncio.gather(
        *(thread_creator.create_thread_with_message(c, "x") for c in make_user_context.many(200)),
        return_exceptions=True,
    )
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    await threadcreator_db.check_integrity()


@pytest.fixture
def patient_backend(tmp_path: Path) -> Iterator[SqliteBackend]:
    """A SQLite backend whose writers wait for the lock far longer than any test runs."""
    b = SqliteBackend(tmp_path / "patient", busy_timeout_ms=600_000)
    b.start()
    b.prepare_template(default_schema(), None)
    yield b
    b.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["task.cancel", "wait_for"])
async def test_a_call_cancelled_while_waiting_for_the_lock_gives_up_and_never_commits(
    patient_backend: SqliteBackend, how: str
) -> None:
    database = patient_backend.create_database("lock-wait", isolation="clean")
    creator = ThreadCreator(database)
    begun = threading.Event()
    await database.store.watch_statements(
        lambda _label, sql: begun.set() if sql.startswith("BEGIN") else None
    )
    holder = sqlite3.connect(database.location, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process-like writer holds the lock
    thread_id = new_thread_id()
    try:
        call = asyncio.ensure_future(
            creator.create_thread_with_message(_context().with_thread(thread_id), "hello")
        )
        assert await asyncio.to_thread(begun.wait, HANG_GUARD_S), "the writer never began"
        if how == "task.cancel":
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        else:
            with pytest.raises(asyncio.TimeoutError):  # the builtin one only from Python 3.11
                await asyncio.wait_for(call, timeout=0.01)
        # The lock is still held and the busy timeout is ten minutes: the writer is free again
        # within the guard only because it stopped waiting when the call was cancelled.
        deadline = time.monotonic() + HANG_GUARD_S
        while database.checked_out():
            assert time.monotonic() < deadline, "the writer still waits for the lock"
            await asyncio.sleep(0.005)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await database.store.watch_statements(None)
    later = await creator.create_thread_with_message(_context(1), "later")
    ids = [r["id"] for r in database.store.fetch_all_sync(select(Thread.__table__.c.id))]  # type: ignore[attr-defined]
    assert ids == [later.thread_id]  # the cancelled call never took the lock after it was freed
    assert await database.count_messages() == 1
    database.close()


@pytest.mark.asyncio
async def test_busy_is_retried_then_reported_with_its_cause(backend: SqliteBackend) -> None:
    database = backend.create_database("busy", isolation="clean")
    creator = ThreadCreator(database, max_retries=2)
    holder = sqlite3.connect(database.location, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseError) as caught:
            await creator.create_thread_with_message(_context(), "hello")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert creator.retries == 2
    assert "still contended after 2 retries" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "database is locked" in str(caught.value.__cause__)
    assert await database.count_threads() == 0
    database.close()


@pytest.mark.asyncio
async def test_busy_is_retried_until_the_lock_is_released(backend: SqliteBackend) -> None:
    database = backend.create_database("busy2", isolation="clean")
    database.begin_test()
    creator = ThreadCreator(database, max_retries=50)
    holder = sqlite3.connect(database.location, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    create = asyncio.create_task(creator.create_thread_with_message(_context(), "hello"))
    while database.retries == 0:  # wait until the first attempt was refused
        await asyncio.sleep(0.001)
    holder.execute("ROLLBACK")
    holder.close()
    result = await create
    assert creator.retries >= 1
    assert await database.count_threads() == 1
    assert [t.id for t in await creator.list_threads("sqlite_user_0")] == [result.thread.id]
    database.close()


@pytest.mark.asyncio
async def test_rollback_isolation_really_rolls_back(backend: SqliteBackend) -> None:
    base = backend.create_database("rb", isolation="rollback")
    view = RollbackDatabase(base)
    creator = ThreadCreator(view)
    await creator.create_thread_with_message(_context(), "hello")
    async with view.session() as session:
        session.add(
            Thread(
                id=new_thread_id(), user_id="u_seen", created_at=1, metadata_={"user_id": "u_seen"}
            )
        )
        await session.commit()  # releases a savepoint only
    assert await view.count_threads() == 2
    async with view.session() as session:  # later sessions see the test's writes
        assert (await session.execute(select(func.count()).select_from(Thread))).scalar() == 2
    assert await base.count_threads() == 0  # uncommitted for everybody else
    await _release(view)
    assert await base.count_threads() == 0
    base.close()


async def _release(view: RollbackDatabase) -> None:
    """Roll the view back from inside the running loop (what its guard does at loop close)."""
    guards = [shared.guard for shared in view._shared.values()]
    for guard in guards:
        guard.cancel()
    await asyncio.gather(*guards, return_exceptions=True)


def test_seed_rows_from_the_setup_hook_survive_every_reset(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    backend.start()

    def seed(database: Database) -> None:
        with sqlite3.connect(database.location) as conn:
            conn.execute(
                "INSERT INTO threads (id, object, user_id, status, created_at, metadata_) "
                "VALUES ('thread_seed', 'thread', 'seed_user', 'active', 1, '{\"user_id\": \"seed_user\"}')"
            )

    backend.prepare_template(default_schema(), seed)
    database = backend.create_database("seeded", isolation="clean")
    try:
        rows = database.store.fetch_all_sync(select(Thread.__table__.c.id))  # type: ignore[attr-defined]
        assert [r["id"] for r in rows] == ["thread_seed"]
        database.store.reset()
        rows = database.store.fetch_all_sync(select(Thread.__table__.c.id))  # type: ignore[attr-defined]
        assert [r["id"] for r in rows] == ["thread_seed"]
    finally:
        database.close()
        backend.stop()
    assert list(tmp_path.glob("*.sqlite3*")) == []


@pytest.mark.asyncio
async def test_engines_from_a_sync_fixture_work_in_any_loop(threadcreator_db: Database) -> None:
    async with threadcreator_db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1


@pytest.mark.threadcreator(isolation="rollback")
@pytest.mark.asyncio
async def test_rollback_isolation_takes_concurrent_calls_one_at_a_time(
    thread_creator: ThreadCreator, make_user_context: Any, threadcreator_db: Database
) -> None:
    results = await asyncio.wait_for(
        asyncio.gather(
            *(thread_creator.create_thread_with_message(c, "x") for c in make_user_context.many(20))
        ),
        timeout=20,
    )
    assert len({r.thread.id for r in results}) == 20
    assert await threadcreator_db.count_threads() == 20


#: Each test of this suite first checks that the database is empty, then writes a thread with
#: one writer: the rows of every writer must be gone when the next test starts.
EVERY_WRITER_SUITE = '''
import contextlib
import sqlite3
import time
import uuid

import pytest
from sqlalchemy import create_engine, insert
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_threadcreator import ThreadCreator, UserExecutionContext
from pytest_threadcreator.factories import ThreadFactory
from pytest_threadcreator.models import Thread

WRITERS = ["thread_creator", "thread_factory", "db_session", "app_async_engine",
           "app_sync_engine", "raw_sqlite3", "thread_creator_again"]


def _row(user_id):
    return {"id": "thread_" + uuid.uuid4().hex, "object": "thread", "user_id": user_id,
            "status": "active", "created_at": int(time.time()), "metadata_": {"user_id": user_id}}


def _committed(db):
    """Rows in the file, read by a connection of this test's own."""
    with contextlib.closing(sqlite3.connect(db.location)) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                   for t in ("threads", "messages"))


async def _write(db, writer):
    if writer.startswith("thread_creator"):
        await ThreadCreator(db).create_thread_with_message(UserExecutionContext(user_id="u1"), "x")
    elif writer == "thread_factory":
        await ThreadFactory.bind(db).create()
    elif writer == "db_session":
        async with db.session() as session:
            session.add(Thread(**_row("u1")))
            await session.commit()
    elif writer == "app_async_engine":
        engine = create_async_engine(db.url)
        async with engine.begin() as conn:
            await conn.execute(insert(Thread.__table__).values(**_row("u1")))
        await engine.dispose()
    elif writer == "app_sync_engine":
        engine = create_engine(db.sync_url)
        with engine.begin() as conn:
            conn.execute(insert(Thread.__table__).values(**_row("u1")))
        engine.dispose()
    else:
        with contextlib.closing(sqlite3.connect(db.location)) as conn, conn:
            conn.execute("INSERT INTO threads (id, object, user_id, status, created_at, metadata_) "
                         "VALUES ('thread_raw', 'thread', 'u1', 'active', 1, '{}')")


@pytest.mark.asyncio
@pytest.mark.parametrize("writer", WRITERS)
async def test_starts_empty_then_writes(threadcreator_db, writer):
    assert _committed(threadcreator_db) == 0
    await _write(threadcreator_db, writer)  # the test's first statement
    assert await threadcreator_db.count_threads() == 1
    rolled_back = threadcreator_db.isolation == "rollback" and writer in (
        "thread_creator", "thread_factory", "db_session", "thread_creator_again")
    # rollback isolation: only the test's own transaction holds the plugin's writes
    assert (_committed(threadcreator_db) == 0) == rolled_back


@pytest.mark.asyncio
async def test_z_starts_empty_after_the_last_writer(threadcreator_db):
    assert _committed(threadcreator_db) == 0
    assert await threadcreator_db.count_threads() == 0
'''


@pytest.mark.parametrize("isolation", ["clean", "rollback"])
def test_every_writers_rows_are_gone_in_the_next_test(
    pytester: pytest.Pytester, isolation: str
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(EVERY_WRITER_SUITE)
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "--threadcreator-db=sqlite",
        f"--threadcreator-isolation={isolation}",
    )
    result.assert_outcomes(passed=8)


def test_a_reset_wipes_only_after_a_commit_of_any_connection(backend: SqliteBackend) -> None:
    database = backend.create_database("skip", isolation="clean")
    store = database.store
    assert isinstance(store, SqliteStore)
    insert = (
        "INSERT INTO threads (id, object, user_id, status, created_at, metadata_) "
        "VALUES ('thread_other', 'thread', 'u1', 'active', 1, '{}')"
    )
    other = sqlite3.connect(database.location, isolation_level=None)
    try:
        store.reset()
        assert store._reset_conn is not None
        ran: list[str] = []
        store._reset_conn.set_trace_callback(ran.append)

        store.reset()  # nobody wrote since the last wipe: nothing to delete
        other.execute("BEGIN")
        other.execute(insert)
        other.execute("ROLLBACK")  # rolled back (rollback isolation): still nothing to delete
        store.reset()
        assert not [sql for sql in ran if sql.startswith("DELETE")]

        other.execute(insert)  # another connection commits
        store.reset()
        assert [sql for sql in ran if sql.startswith("DELETE")] == [
            'DELETE FROM "messages"',
            'DELETE FROM "threads"',
        ]
        assert other.execute("SELECT count(*) FROM threads").fetchone() == (0,)
    finally:
        other.close()
        database.close()
