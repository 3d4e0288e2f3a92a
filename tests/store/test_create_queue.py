"""Creates queued on a server store's background loop: lanes that keep a connection, MySQL's
packets of several creates, each create its own transaction, on both server backends.

Every test first takes all of the store's connections, so the creates it starts queue up; the
connections are given back only after every create is queued (the background loop runs its
work in the order it was posted), which makes the lanes' work deterministic: the first lane to
run takes the queue's first creates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncmy
import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.engine import make_url

from pytest_threadcreator import ThreadCreator, UserExecutionContext
from pytest_threadcreator.database import Database
from pytest_threadcreator.errors import DatabaseError, ThreadExistsError
from pytest_threadcreator.schema import NewThread, default_schema
from pytest_threadcreator.store.base import ThreadIdTaken
from pytest_threadcreator.store.mysql import MySqlStore
from pytest_threadcreator.store.mysql_batch import (
    MAX_BATCH,
    PACKET_CHARS,
    QUERY_INTERRUPTED,
    MySqlCreateQueue,
)
from pytest_threadcreator.store.postgresql import PgStore
from pytest_threadcreator.store.queued import CreateJob

from ..helpers import mysql_server_missing, needs_marks, pg_server_missing
from .stores import open_database

pytestmark = pytest.mark.suite_independent

SCHEMA = default_schema()
SERVERS = [
    pytest.param("postgresql", id="postgresql", marks=needs_marks(pg_server_missing())),
    pytest.param("mysql", id="mysql", marks=needs_marks(mysql_server_missing())),
]


@pytest.fixture(params=SERVERS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with open_database(request.param, SCHEMA, tmp_path) as database:
        yield database


@pytest.fixture(params=[SERVERS[1]])
def mysql_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh MySQL/MariaDB database (for MySQL's packets and kills)."""
    with open_database(request.param, SCHEMA, tmp_path) as database:
        assert isinstance(database.store, MySqlStore)
        yield database


def _mysql(database: Database) -> MySqlStore:
    assert isinstance(database.store, MySqlStore)
    return database.store


class Held:
    """Every connection of a store, taken on its background loop until :meth:`give_back`."""

    def __init__(self, store: MySqlStore | PgStore) -> None:
        self.store = store
        self.taken: list[tuple[Any, Any]] = []

    async def take(self) -> None:
        for _ in range(self.store.max_size):
            self.taken.append(await self.store.background.submit(self.store.acquire()))

    async def give_back(self) -> None:
        """Queued behind every create posted so far (let each task post first)."""
        await asyncio.sleep(0)
        for pool, conn in self.taken:
            self.store.background.post(self._put_back, pool, conn)
        self.taken.clear()

    def _put_back(self, pool: Any, conn: Any) -> None:
        asyncio.get_running_loop().create_task(self.store.put_back(pool, conn))


@pytest_asyncio.fixture
async def held(database: Database) -> AsyncIterator[Held]:
    store = database.store
    assert isinstance(store, (MySqlStore, PgStore))
    held = Held(store)
    await held.take()
    yield held
    await held.give_back()


def _user(i: int, thread_id: str | None = None) -> UserExecutionContext:
    return UserExecutionContext(user_id=f"user-{i}", thread_id=thread_id)


@pytest.mark.asyncio
async def test_gathered_creates_share_packets_and_each_commits(
    database: Database, held: Held
) -> None:
    creator = ThreadCreator(database)
    calls = [creator.create_thread_with_message(_user(i), f"hello {i}") for i in range(40)]
    tasks = [asyncio.ensure_future(call) for call in calls]
    await held.give_back()
    made = await asyncio.gather(*tasks)

    store = held.store
    if isinstance(store, MySqlStore):  # several creates to a packet
        assert 40 // MAX_BATCH <= store.round_trips < 40
    assert await database.count_threads() == 40
    assert await database.count_messages() == 40
    await database.check_integrity()
    assert {m.message.thread_id for m in made} == {m.thread.id for m in made}
    assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_creates_that_wait_together_commit_in_one_transaction_per_packet(
    mysql_database: Database,
) -> None:
    """A packet's creates share one transaction: one INSERT of their threads, one of their
    messages and one COMMIT (one log flush) for all of them."""
    database = mysql_database
    store = _mysql(database)
    seen: list[str] = []
    await store.watch_statements(lambda label, sql: seen.append(sql))
    held = Held(store)
    await held.take()
    n = 3 * store.max_size  # three creates to each lane's packet
    creator = ThreadCreator(database)
    tasks = [
        asyncio.ensure_future(
            creator.create_thread_with_message(_user(i), f"message {i}", f"title {i}")
        )
        for i in range(n)
    ]
    await held.give_back()
    made = await asyncio.gather(*tasks)
    await store.watch_statements(None)

    assert store.max_size <= store.round_trips < n
    assert seen.count("COMMIT") == seen.count("START TRANSACTION") == store.round_trips
    for table in ("threads", "messages"):
        inserts = [sql for sql in seen if sql.startswith(f"INSERT INTO {table} ")]
        assert len(inserts) == store.round_trips
        assert sum(sql.count("), (") + 1 for sql in inserts) == n  # one row per create
    assert await database.count_threads() == n
    for i, result in enumerate(made):  # each create's own values, in its own rows
        thread = await creator.get_thread(result.thread.id, user_id=f"user-{i}")
        assert thread.title == f"title {i}"
        messages = await creator.list_messages(result.thread.id)
        assert [m.text for m in messages] == [f"message {i}"]
        assert [m.id for m in messages] == [result.message.id]
    await database.check_integrity()
    assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_big_creates_do_not_share_a_packet(mysql_database: Database) -> None:
    """Creates whose text comes to more than PACKET_CHARS together go in packets of their
    own: a packet over the server's max_allowed_packet is refused whole (and its connection
    closed), although each of its creates alone would fit."""
    database = mysql_database
    store = _mysql(database)
    held = Held(store)
    await held.take()
    big = "x" * (PACKET_CHARS // 2 + 1)  # two of them are over the line together
    queue, sizes = store._queue, []
    real_send = queue._send

    async def send(conn: Any, batch: list[CreateJob]) -> Any:
        sizes.append([any(big in str(value) for value in job.params) for job in batch])
        return await real_send(conn, batch)

    queue._send = send  # type: ignore[method-assign]
    n = 2 * store.max_size
    creator = ThreadCreator(database)
    tasks = [
        asyncio.ensure_future(creator.create_thread_with_message(_user(i), big if i < n else "s"))
        for i in range(n + 3 * store.max_size)  # then small ones: those still share packets
    ]
    await held.give_back()
    await asyncio.gather(*tasks)
    assert sum(len(packet) for packet in sizes) == len(tasks)
    assert max(sum(packet) for packet in sizes) == 1  # never two big ones in a packet
    assert max(len(packet) for packet in sizes) > 1  # small ones still share
    assert await database.count_threads() == len(tasks)
    await database.check_integrity()
    assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_a_create_failing_in_a_packet_fails_alone_and_the_ones_after_it_run(
    database: Database, held: Held
) -> None:
    creator = ThreadCreator(database)
    # the creates share connections only after this one exists: its id comes back below
    await held.give_back()
    taken = await creator.create_thread_with_message(_user(1, "thread-taken"), "first")
    await held.take()
    contexts = [_user(i) for i in range(40)]
    contexts[1] = _user(1, "thread-taken")  # in the first packet, with creates after it
    tasks = [
        asyncio.ensure_future(creator.create_thread_with_message(c, f"m{i}"))
        for i, c in enumerate(contexts)
    ]
    await held.give_back()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[1], ThreadExistsError), results[1]
    assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 1)
    assert await database.count_threads() == 40  # 39 new ones and the one that was there
    assert await database.count_messages() == 40
    assert await database.count_messages(taken.thread.id) == 1
    await database.check_integrity()
    assert held.store.checked_out() == 0


@pytest.mark.asyncio
async def test_a_create_cancelled_in_the_queue_never_writes(database: Database, held: Held) -> None:
    creator = ThreadCreator(database)
    tasks = [
        asyncio.ensure_future(creator.create_thread_with_message(_user(i, f"t{i}"), "hi"))
        for i in range(6)
    ]
    await asyncio.sleep(0)  # all queued: no connection is free
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]
    await held.give_back()
    await asyncio.gather(*(t for i, t in enumerate(tasks) if i != 2))

    assert await database.count_threads() == 5
    ids = {row["id"] for row in await _thread_ids(database)}
    assert ids == {"t0", "t1", "t3", "t4", "t5"}
    await asyncio.sleep(0.2)  # nothing of it appears later either
    assert await database.count_threads() == 5
    assert held.store.checked_out() == 0


async def _thread_ids(database: Database) -> list[dict[str, Any]]:
    return await database.store.fetch_all(select(SCHEMA.thread_table.c.id))


def _rows(i: int, created_at: Any = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    new = NewThread(
        thread_id=f"t{i}",
        message_id=f"m{i}",
        user_id=f"user-{i}",
        run_id=None,
        message="hi",
        title=None,
        role="user",
        metadata={},
        created_at=0,
        context=None,
    )
    thread, message = SCHEMA.thread_row(new), SCHEMA.message_row(new)
    thread["created_at"] = created_at
    return thread, message


@pytest.mark.asyncio
async def test_a_value_the_driver_cannot_send_fails_only_its_own_create(
    database: Database, held: Held
) -> None:
    store = held.store
    creates = [_rows(i, i) for i in range(30)]  # 10 lanes: the first packet has 3 creates
    creates[1] = _rows(1, float("nan"))  # MySQL has no NaN: the driver refuses the packet
    tasks = [asyncio.ensure_future(store.create(t, m, explicit_id=False)) for t, m in creates]
    await held.give_back()
    results = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(results[1], Exception) and "nan" in str(results[1])
    assert [i for i, r in enumerate(results) if r is not None] == [1]
    assert {row["id"] for row in await _thread_ids(database)} == {
        f"t{i}" for i in range(30) if i != 1
    }
    assert await database.count_messages() == 29
    assert store.checked_out() == 0


class Blocker:
    """A session of its own holding a lock that every insert into the thread table waits for."""

    def __init__(self, database: Database) -> None:
        self.url = make_url(database.url)
        self.conn: Any = None

    async def __aenter__(self) -> Blocker:
        if self.url.get_backend_name() == "postgresql":
            dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.conn = await asyncpg.connect(dsn)
            await self.conn.execute("BEGIN; LOCK TABLE threads IN ACCESS EXCLUSIVE MODE")
        else:  # InnoDB: the next-key lock of a locking read over the table stops every insert
            self.conn = await asyncmy.connect(
                host=self.url.host,
                port=self.url.port or 3306,
                user=self.url.username,
                password=self.url.password or "",
                db=self.url.database,
            )
            await self._mysql("START TRANSACTION")
            await self._mysql("SELECT id FROM threads FOR UPDATE")
        return self

    async def _mysql(self, sql: str, params: tuple[Any, ...] | None = None) -> list[Any]:
        async with self.conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return list(await cursor.fetchall() or ())

    async def waiting(self, thread_id: str | None = None) -> int:
        """Sessions of the test's database whose statement waits for the lock (the blocker's
        own reads never do); on MySQL, with ``thread_id``, only those inserting that thread."""
        if self.url.get_backend_name() == "postgresql":
            assert thread_id is None
            # the blocker's open transaction would otherwise see one snapshot of the statistics
            await self.conn.execute("SELECT pg_stat_clear_snapshot()")
            return int(
                await self.conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        values = "%" if thread_id is None else f"%VALUES ('{thread_id}',%"
        rows = await self._mysql(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE %s",
            (self.url.database, f"INSERT INTO threads{values}"),
        )
        return int(rows[0][0])

    async def until_waiting(self, sessions: int = 1, thread_id: str | None = None) -> None:
        """Return once ``sessions`` sessions wait for the lock (polls for up to 10 s)."""
        for _ in range(1000):
            if await self.waiting(thread_id) >= sessions:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{sessions} session(s) did not come to wait for the lock")

    async def settles_at(self, sessions: int, thread_id: str | None = None) -> bool:
        """True once exactly ``sessions`` sessions wait for the lock (polls for up to 2 s: a
        statement the server stopped leaves its session's row a moment after its error)."""
        for _ in range(200):
            if await self.waiting(thread_id) == sessions:
                return True
            await asyncio.sleep(0.01)
        return False

    async def __aexit__(self, *exc: object) -> None:
        if self.url.get_backend_name() == "postgresql":
            await self.conn.execute("ROLLBACK")
            await self.conn.close()
        else:
            await self._mysql("ROLLBACK")
            self.conn.close()


@pytest.mark.asyncio
async def test_a_create_cancelled_while_its_statement_waits_is_cut_there(
    database: Database,
) -> None:
    async with Blocker(database) as blocker:
        creator = ThreadCreator(database)
        task = asyncio.ensure_future(creator.create_thread_with_message(_user(1, "blocked"), "hi"))
        await blocker.until_waiting()  # its statement now waits for the lock
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # cut on the server: with the lock still held, no statement of it waits any more
        assert await blocker.settles_at(0)
    await asyncio.sleep(0.3)  # the lock is gone: nothing of the create appears later
    assert await database.count_threads() == 0
    assert database.store.checked_out() == 0
    made = await ThreadCreator(database).create_thread_with_message(_user(2), "after")
    assert await database.count_messages(made.thread.id) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", [SERVERS[1]])
async def test_a_create_stopped_for_a_cancelled_one_in_its_packet_is_sent_again(
    kind: str, tmp_path: Path
) -> None:
    with open_database(kind, SCHEMA, tmp_path) as database:
        store = database.store
        assert isinstance(store, MySqlStore)
        held = Held(store)
        await held.take()
        creator = ThreadCreator(database)
        # two creates to each lane's packet: the first of each waits for the lock, the second
        # (queued behind it in the same packet) is cancelled there
        n = 2 * store.max_size
        async with Blocker(database) as blocker:
            tasks = [
                asyncio.ensure_future(creator.create_thread_with_message(_user(i, f"t{i}"), "hi"))
                for i in range(n)
            ]
            await held.give_back()
            await blocker.until_waiting(store.max_size)
            tasks[1].cancel()
            with pytest.raises(asyncio.CancelledError):
                await tasks[1]
        results = await asyncio.gather(*tasks[:1], *tasks[2:], return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert store.round_trips > store.max_size, "t0, stopped by the kill, was sent again"
        ids = {row["id"] for row in await _thread_ids(database)}
        assert ids == {f"t{i}" for i in range(n) if i != 1}
        assert await database.count_messages() == n - 1
        assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_a_connection_that_fails_to_go_back_does_not_strand_its_creates(
    database: Database,
) -> None:
    store = database.store
    assert isinstance(store, (MySqlStore, PgStore))
    real = store.put_back
    failures = []

    async def put_back(pool: Any, conn: Any) -> None:
        await real(pool, conn)
        if not failures:  # a lane's: the outcomes of its last creates are still to go out
            failures.append(conn)
            raise RuntimeError("reset failed")

    store.put_back = put_back  # type: ignore[method-assign]
    creator = ThreadCreator(database)
    calls = [creator.create_thread_with_message(_user(i), "hi") for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*calls), 10)
    assert failures  # it did fail once
    assert await database.count_threads() == 20
    assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_no_free_connection_fails_the_creates_waiting_and_the_next_ones_run(
    database: Database,
) -> None:
    store = database.store
    assert isinstance(store, (MySqlStore, PgStore))
    real = store.acquire
    calls = []

    async def acquire() -> tuple[Any, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no connection")
        return await real()

    store.acquire = acquire  # type: ignore[method-assign]
    creator = ThreadCreator(database)
    with pytest.raises(DatabaseError, match="no connection"):
        await asyncio.wait_for(creator.create_thread_with_message(_user(1), "hi"), 10)
    made = await asyncio.wait_for(creator.create_thread_with_message(_user(2), "hi"), 10)
    # the failed one is settled: cancelling another create now is not taken for it
    task = asyncio.ensure_future(creator.create_thread_with_message(_user(3), "hi"))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await database.count_messages(made.thread.id) == 1
    assert store.checked_out() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", [SERVERS[1]])
async def test_a_statement_watcher_that_raises_fails_the_create_and_frees_its_connection(
    kind: str, tmp_path: Path
) -> None:
    with open_database(kind, SCHEMA, tmp_path) as database:
        await _watcher_raises(database)


async def _watcher_raises(database: Database) -> None:
    """On MySQL the store calls the watcher itself, before it sends (PostgreSQL's query
    loggers run as callbacks of asyncpg's, whose errors the event loop logs)."""

    def watcher(label: str, sql: str) -> None:
        raise RuntimeError("watcher broke")

    await database.store.watch_statements(watcher)
    creator = ThreadCreator(database)
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(creator.create_thread_with_message(_user(1), "hi"), 10)
    await database.store.watch_statements(None)
    assert "watcher broke" in repr(info.value) or "watcher broke" in repr(info.value.__cause__)
    made = await asyncio.wait_for(creator.create_thread_with_message(_user(2), "hi"), 10)
    assert await database.count_messages(made.thread.id) == 1
    assert database.store.checked_out() == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", [SERVERS[1]])
async def test_a_server_error_above_3000_stops_the_packet_and_the_rest_run(
    kind: str, tmp_path: Path
) -> None:
    with open_database(kind, SCHEMA, tmp_path) as database:
        store = database.store
        assert isinstance(store, MySqlStore)
        url = make_url(database.url)
        conn = await asyncmy.connect(
            host=url.host, port=url.port or 3306, user=url.username, db=url.database
        )
        try:
            async with conn.cursor() as cursor:  # MariaDB: error 4025, MySQL 8: 3819
                await cursor.execute(
                    "ALTER TABLE threads ADD CONSTRAINT no_bad CHECK (title IS NULL OR title <> 'bad')"
                )
        finally:
            conn.close()
        held = Held(store)
        await held.take()
        creator = ThreadCreator(database)
        titles = ["bad" if i == 1 else None for i in range(30)]  # in the first packet of 3
        tasks = [
            asyncio.ensure_future(creator.create_thread_with_message(_user(i), "hi", t))
            for i, t in enumerate(titles)
        ]
        await held.give_back()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [1]
        assert await database.count_threads() == 29
        assert store.checked_out() == 0


# -- MySQL: kills that fail, cuts in a packet sent create by create, cuts while one settles ---


async def _settles(task: asyncio.Future[Any], timeout: float = 5.0) -> None:
    """``task`` is done within ``timeout`` (a cut that never reaches the server would leave it
    waiting for the lock, and its caller with it)."""
    done, _ = await asyncio.wait([task], timeout=timeout)
    assert done, "the cancelled create still waits: its statement was not stopped"
    assert task.cancelled()


@pytest.mark.asyncio
async def test_a_kill_that_fails_is_sent_again_until_the_create_is_cut(
    mysql_database: Database,
) -> None:
    database = mysql_database
    store = _mysql(database)
    real, attempts = store.kill_query, []

    async def kill_query(conn: Any) -> None:
        attempts.append(conn)
        if len(attempts) <= 2:  # the server refuses the kill's connection, say (too many)
            raise OSError("(1040, 'Too many connections')")
        await real(conn)

    store.kill_query = kill_query  # type: ignore[method-assign]
    async with Blocker(database) as blocker:
        task = asyncio.ensure_future(
            ThreadCreator(database).create_thread_with_message(_user(1, "blocked"), "hi")
        )
        await blocker.until_waiting()
        task.cancel()
        await _settles(task)
        assert await blocker.settles_at(0)  # cut on the server, the lock still held
    await asyncio.sleep(0.3)
    assert await database.count_threads() == 0
    assert len(attempts) == 3
    assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_a_packet_sent_create_by_create_stops_at_a_kill_and_a_later_cut_is_killed_too(
    mysql_database: Database,
) -> None:
    database = mysql_database
    store = _mysql(database)
    held = Held(store)
    await held.take()
    n = 3 * store.max_size  # three creates to each lane's packet
    creates = [_rows(i, i) for i in range(n)]
    creates[1] = _rows(1, float("nan"))  # the first packet goes create by create
    async with Blocker(database) as blocker:
        tasks = [asyncio.ensure_future(store.create(t, m, explicit_id=False)) for t, m in creates]
        await held.give_back()
        await blocker.until_waiting(store.max_size)  # each lane's first insert waits
        tasks[0].cancel()
        await _settles(tasks[0])
        await blocker.until_waiting(thread_id="t2")  # sent again, on a new connection
        tasks[2].cancel()
        await _settles(tasks[2])
        assert await blocker.settles_at(0, thread_id="t2")
    results = await asyncio.gather(*tasks[3:], tasks[1], return_exceptions=True)
    assert [r for r in results[:-1] if r is not None] == []
    assert isinstance(results[-1], Exception) and "nan" in str(results[-1])
    ids = {row["id"] for row in await _thread_ids(database)}
    assert ids == {f"t{i}" for i in range(3, n)}
    assert store.checked_out() == 0


@pytest.mark.asyncio
async def test_a_cut_while_a_failed_packet_settles_does_not_reach_the_failed_create(
    mysql_database: Database,
) -> None:
    """A create cancelled while the lane looks up why the create before it in the packet
    failed is not cut with a kill (it never ran): the kill would stop that lookup instead,
    and the failed create would get an interruption for its error."""
    database = mysql_database
    store = _mysql(database)
    creator = ThreadCreator(database)
    await creator.create_thread_with_message(_user(0, "thread-taken"), "first")
    held = Held(store)
    await held.take()
    contexts = [_user(i, f"t{i}") for i in range(3 * store.max_size)]
    contexts[0] = _user(0, "thread-taken")  # fails first in the first packet, two after it
    tasks = [asyncio.ensure_future(creator.create_thread_with_message(c, "hi")) for c in contexts]
    _cancel_during_the_lookup(store, tasks[1])
    await held.give_back()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], ThreadExistsError), repr(results[0])
    assert isinstance(results[1], asyncio.CancelledError)
    assert [r for r in results[2:] if isinstance(r, BaseException)] == []
    ids = {row["id"] for row in await _thread_ids(database)}
    assert ids == {"thread-taken"} | {f"t{i}" for i in range(2, len(contexts))}
    assert store.checked_out() == 0


def _cancel_during_the_lookup(store: MySqlStore, task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` while the lane looks up why the create of ``thread-taken`` failed, and
    let that lookup run only once the cut has reached the lane (a kill sent for it, if any,
    then lands on the lookup, which takes half a second)."""
    loop = asyncio.get_running_loop()
    queue = store._queue
    real_cut, real_lookup = queue._cut, store.raise_if_taken
    cut = asyncio.Event()  # on the background loop, like both of these

    def cut_reached(job: Any) -> None:
        real_cut(job)
        cut.set()

    async def raise_if_taken(conn: Any, exc: Exception, thread_row: Any, explicit: bool) -> None:
        if thread_row["id"] == "thread-taken":
            loop.call_soon_threadsafe(task.cancel)
            await asyncio.wait_for(cut.wait(), 10)
        await real_lookup(conn, exc, thread_row, explicit)

    queue._cut = cut_reached  # type: ignore[method-assign]
    store._owner_sql = store._owner_sql + " AND SLEEP(0.5) = 0"
    store.raise_if_taken = raise_if_taken  # type: ignore[method-assign]


@pytest.mark.asyncio
async def test_a_create_cut_while_a_packet_sent_create_by_create_settles_is_never_sent(
    mysql_database: Database,
) -> None:
    database = mysql_database
    store = _mysql(database)
    await store.create(*_taken_rows(), explicit_id=True)
    held = Held(store)
    await held.take()
    n = 3 * store.max_size
    creates = [_rows(i, i) for i in range(n)]
    # the first packet goes create by create: the first fails (its id is taken), the
    # second cannot be sent, the third is cancelled while the first is settled
    creates[0], creates[1] = _taken_rows(), _rows(1, float("nan"))
    tasks = [asyncio.ensure_future(store.create(t, m, explicit_id=True)) for t, m in creates]
    _cancel_during_the_lookup(store, tasks[2])
    await held.give_back()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], ThreadIdTaken), repr(results[0])
    assert isinstance(results[1], Exception) and "nan" in str(results[1])
    assert isinstance(results[2], asyncio.CancelledError), repr(results[2])
    assert [r for r in results[3:] if r is not None] == []
    await asyncio.sleep(0.2)  # nothing of it appears later either
    ids = {row["id"] for row in await _thread_ids(database)}
    assert ids == {"thread-taken"} | {f"t{i}" for i in range(3, n)}
    assert store.checked_out() == 0


def _taken_rows() -> tuple[dict[str, Any], dict[str, Any]]:
    thread, message = _rows(0)
    thread["id"] = message["thread_id"] = "thread-taken"
    return thread, message


class _Settling:
    """A MySQL packet store stand-in for :meth:`MySqlCreateQueue._failed`: whether the failed
    create's thread exists, as the server would answer once its transaction ended."""

    name, max_size, watcher = "standin", 1, None

    def __init__(self, exists: bool | Exception) -> None:
        self.exists = exists
        self.asked: list[str] = []

    async def roll_back(self, conn: Any) -> None:
        pass

    async def committed(self, conn: Any, thread_row: Any) -> bool:
        self.asked.append(thread_row["id"])
        if isinstance(self.exists, Exception):
            raise self.exists
        return self.exists

    async def raise_if_taken(self, *args: Any) -> None:
        pass


@pytest.mark.asyncio
@pytest.mark.parametrize("exists", [True, False, OSError("lost")], ids=["took", "not", "unknown"])
async def test_an_interrupted_commit_is_asked_about_before_its_create_is_sent_again(
    exists: bool | Exception,
) -> None:
    """KILL QUERY may interrupt a COMMIT that took effect: sending that create again would
    meet its own rows (a duplicate key), so the lane asks whether the thread exists."""
    store = _Settling(exists)
    queue = MySqlCreateQueue(store, background=None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    conn = object()
    jobs = [CreateJob(("i", "i"), (), _rows(i)[0], False, loop) for i in range(3)]
    queue._kills[conn] = loop.create_task(asyncio.sleep(0))  # a kill for another create
    interrupted = Exception(QUERY_INTERRUPTED, "Query execution was interrupted")
    # results read: jobs[0]'s four statements, then jobs[1]'s START and INSERTs: its COMMIT
    outcomes = await queue._failed(conn, jobs, interrupted, 4 + 3)
    await queue._kills.pop(conn)

    assert store.asked == ["t1"]
    assert [job for job, _ in outcomes][:1] == jobs[:1] and outcomes[0][1] is None
    if exists is True:  # committed: done, and only the create after it goes again
        assert outcomes[1] == (jobs[1], None)
        assert list(queue._queue) == jobs[2:]
    elif exists is False:  # rolled back for another create's caller: both go again
        assert len(outcomes) == 1
        assert list(queue._queue) == jobs[1:]
    else:  # nobody can tell: it gets the error, the rest (never run) go again
        assert outcomes[1] == (jobs[1], interrupted)
        assert list(queue._queue) == jobs[2:]


class _Background:
    """What :meth:`MySqlCreateQueue._requeue` needs of the background loop, on this loop."""

    @staticmethod
    def post_back(caller: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
        caller.call_soon(fn, *args)


class _Conn:
    """A connection as the queue sees it: open or closed."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected


def _together(store: _Settling) -> tuple[MySqlCreateQueue, list[CreateJob], list[list[str]]]:
    """A queue on ``store`` with three jobs of one packet sent together; the creates it
    sends one by one afterwards are recorded instead of sent."""
    queue = MySqlCreateQueue(store, background=_Background())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    jobs = [CreateJob(("i", "i"), (), _rows(i)[0], False, loop) for i in range(3)]
    sent: list[list[str]] = []

    async def send_each(conn: Any, batch: list[CreateJob]) -> Any:
        sent.append([job.thread_row["id"] for job in batch])
        return [(job, None) for job in batch]

    queue._send_each = send_each  # type: ignore[method-assign]
    return queue, jobs, sent


@pytest.mark.asyncio
@pytest.mark.parametrize("exists", [True, False, OSError("lost")], ids=["took", "not", "unknown"])
async def test_an_interrupted_commit_of_creates_sent_together_is_asked_about_once(
    exists: bool | Exception,
) -> None:
    """Creates sent together commit together: an interrupted COMMIT took all of them or
    none, which one thread tells."""
    store = _Settling(exists)
    queue, jobs, sent = _together(store)
    conn = _Conn()
    queue._kills[conn] = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    interrupted = Exception(QUERY_INTERRUPTED, "Query execution was interrupted")
    outcomes = await queue._together_failed(conn, jobs, interrupted, 3)  # START, two INSERTs
    await queue._kills.pop(conn)

    assert store.asked == ["t0"]
    assert sent == []
    if exists is True:  # all committed
        assert outcomes == [(job, None) for job in jobs]
        assert list(queue._queue) == []
    elif exists is False:  # rolled back for a cancelled create: all go again
        assert outcomes == []
        assert list(queue._queue) == jobs
    else:  # nobody can tell: each gets the error
        assert outcomes == [(job, interrupted) for job in jobs]
        assert list(queue._queue) == []


@pytest.mark.asyncio
async def test_creates_sent_together_that_failed_beside_a_kill_go_again_elsewhere() -> None:
    """A statement error while a kill is under way for the connection: nothing was written,
    and the connection may yet be interrupted, so the creates go back to the queue."""
    store = _Settling(False)
    queue, jobs, sent = _together(store)
    conn = _Conn()
    queue._kills[conn] = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    duplicate = Exception(1062, "Duplicate entry")
    outcomes = await queue._together_failed(conn, jobs, duplicate, 1)
    await queue._kills.pop(conn)
    assert outcomes == [] and sent == []
    assert list(queue._queue) == jobs
    assert store.asked == []


@pytest.mark.asyncio
async def test_creates_sent_together_that_failed_are_sent_each_alone_but_a_cancelled_one() -> None:
    """One create's statement error rolls back the others with it: they are sent again each
    in a transaction of its own (so the error reaches its create alone), except a create
    cancelled meanwhile (it never took effect, and was never killed: the lane was settling)."""
    store = _Settling(False)
    queue, jobs, sent = _together(store)
    loop = asyncio.get_running_loop()
    jobs.append(CreateJob(("i", "i"), (), _rows(3)[0], False, loop))
    jobs[1].ack = ack = loop.create_future()
    jobs[1].cut = True
    # its caller gave up, and the lane has not heard yet (no cut): not sent either
    jobs[3].ack = unheard = loop.create_future()
    duplicate = Exception(1062, "Duplicate entry")
    outcomes = await queue._together_failed(_Conn(), jobs, duplicate, 1)
    await asyncio.wait_for(ack, 1)  # acknowledged as never written
    await asyncio.wait_for(unheard, 1)

    assert sent == [["t0", "t2"]]
    assert outcomes == [(jobs[0], None), (jobs[2], None)]
    assert list(queue._queue) == []
    lost = OSError(2013, "Lost connection to MySQL server during query")
    queue, jobs, sent = _together(store)
    outcomes = await queue._together_failed(_Conn(), jobs, lost, 1)
    assert outcomes == [(job, lost) for job in jobs] and sent == []  # unknown: each errs


@pytest.mark.asyncio
async def test_creates_sent_together_whose_rollback_closed_the_connection_go_again() -> None:
    """The rollback after a failed packet failed and closed the connection: nothing of the
    packet was written (the server rolls back what a closed connection left open), so its
    creates go back to the queue for another connection rather than fail there."""
    store = _Settling(False)
    queue, jobs, sent = _together(store)
    conn = _Conn()

    async def roll_back(c: Any) -> None:
        c.connected = False  # as MySqlStore.roll_back closes a connection it cannot roll back

    store.roll_back = roll_back  # type: ignore[method-assign]
    outcomes = await queue._together_failed(conn, jobs, Exception(1062, "Duplicate entry"), 1)
    assert outcomes == [] and sent == []
    assert list(queue._queue) == jobs
    # sent again each in a transaction of its own, never together: an error that closes the
    # connection every time (a packet over max_allowed_packet) must not send them for ever
    assert all(job.alone for job in jobs)

    async def together(conn: Any, batch: list[CreateJob]) -> Any:
        raise AssertionError("sent together again")

    queue._send_together = together  # type: ignore[method-assign]
    assert await queue._send(_Conn(), jobs) == [(job, None) for job in jobs]
    assert sent == [["t0", "t1", "t2"]]
