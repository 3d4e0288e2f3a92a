"""The MySQL/MariaDB backend against a real server (``THREADCREATOR_MYSQL_URL``, default
``mysql+asyncmy://root@127.0.0.1:3306/``): names, registry marks, run locks, the sweep of a
killed run, lookalikes, utf8mb4, foreign keys and the store's transient errors."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncmy
import pytest
from sqlalchemy import Integer, column, insert, select, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from pytest_threadcreator import ThreadCreator, UserExecutionContext
from pytest_threadcreator.backends.mysql.backend import MySqlBackend
from pytest_threadcreator.backends.mysql.janitor import REGISTRY, lock_name
from pytest_threadcreator.backends.postgresql.janitor import new_run_id
from pytest_threadcreator.database import Database
from pytest_threadcreator.errors import BackendUnavailableError
from pytest_threadcreator.schema import default_schema
from pytest_threadcreator.store.mysql import MySqlStore

from ..helpers import MYSQL_SERVER_URL, line_from, mysql_server_missing, needs_marks

pytestmark = [*needs_marks(mysql_server_missing()), pytest.mark.suite_independent]

SCHEMA = default_schema()
T = SCHEMA.thread_table
M = SCHEMA.message_table


def _server() -> dict[str, Any]:
    url = make_url(MYSQL_SERVER_URL)
    return {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
    }


def _sql(sql: str, params: tuple[Any, ...] = (), db: str | None = None) -> list[Any]:
    """Run one statement on the server with a connection of its own; its rows."""

    async def run() -> list[Any]:
        conn = await asyncmy.connect(autocommit=True, db=db, **_server())
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql, params)
                return list(await cursor.fetchall() or ())
        finally:
            conn.close()

    return asyncio.run(run())


def _databases(prefix: str) -> set[str]:
    rows = _sql(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE %s",
        (prefix.replace("_", "\\_") + "%",),
    )
    return {str(row[0]) for row in rows}


@pytest.fixture
def backend() -> Iterator[MySqlBackend]:
    backend = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw3")
    backend.start()
    try:
        backend.prepare_template(SCHEMA, None)
        yield backend
    finally:
        backend.stop()
    assert not _databases(f"tc_{backend.run_id}_")


@pytest.fixture
def database(backend: MySqlBackend) -> Iterator[Database]:
    database = backend.create_database("test_db", isolation="fresh")
    yield database
    database.dispose_engines()
    backend.drop_database(database)


def test_names_fit_in_64_characters_and_every_database_is_registered(
    backend: MySqlBackend,
) -> None:
    label = "test_" + "a_very_long_parametrised_test_name" * 4
    first = backend.create_database(label, isolation="clean")
    second = backend.create_database(label, isolation="clean")
    try:
        assert first.name != second.name
        assert max(len(first.name), len(second.name)) <= 64
        registered = _sql(
            f"SELECT name, run_id, worker_id FROM `{REGISTRY}`.owned WHERE run_id = %s ORDER BY name",
            (backend.run_id,),
        )
        assert {tuple(row) for row in registered} == {
            (name, backend.run_id, "gw3") for name in (first.name, second.name, backend.template)
        }
        assert set(backend.leftovers()) == {first.name, second.name, backend.template}
        charset = _sql(
            "SELECT DEFAULT_CHARACTER_SET_NAME FROM information_schema.SCHEMATA "
            "WHERE SCHEMA_NAME = %s",
            (first.name,),
        )
        assert charset == [("utf8mb4",)]
        engines = _sql(
            "SELECT DISTINCT ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (first.name,),
        )
        assert engines == [("InnoDB",)]
    finally:
        backend.drop_database(first)
        backend.drop_database(second)
    assert backend.leftovers() == [backend.template]


def _wait_for(what: str, found: Callable[[], set[str]]) -> set[str]:
    """``found()`` once it is not empty (the tender works in the background)."""
    deadline = time.monotonic() + 30
    while not (names := found()):
        assert time.monotonic() < deadline, f"no {what} after 30 s"
        time.sleep(0.01)
    return names


def test_fresh_databases_are_made_ahead_registered_and_dropped_behind(
    backend: MySqlBackend,
) -> None:
    prefix = f"tc_{backend.run_id}_gw3_"
    first = backend.create_database("first", isolation="fresh")  # starts the tender
    ahead = _wait_for("spare", lambda: _databases(prefix) - {first.name, backend.template})
    registered = {
        str(row[0])
        for row in _sql(f"SELECT name FROM `{REGISTRY}`.owned WHERE run_id = %s", (backend.run_id,))
    }
    assert ahead <= registered, "every spare is registered as the run's the moment it exists"
    assert backend.leftovers() == sorted([first.name, backend.template]), "spares not counted"
    first.dispose_engines()
    backend.drop_database(first)
    assert backend.leftovers() == [backend.template], "dropped or recycled in the background"
    spares = backend._spares
    assert spares is not None
    assert first.name not in _databases(prefix) or first.name in spares.stock(), "a spare again"
    # ready ones are handed out oldest first: one ready now is handed out before any begun later
    # (but the one the previous test gave back, if it is a spare again: a later test gets it)
    ready = _wait_for("a ready spare", lambda: {name for name, _ in spares._ready} - {first.name})
    second = backend.create_database("second", isolation="fresh")
    try:
        assert second.name in ready and second.name.endswith("_fresh"), "made ahead"
        creator = ThreadCreator(second)
        asyncio.run(creator.create_thread_with_message(UserExecutionContext(user_id="u"), "hi"))
        assert second.store.fetch_all_sync(select(T.c.user_id)) == [{"user_id": "u"}]
    finally:
        second.dispose_engines()
        backend.drop_database(second)


def _sessions(ids: set[int]) -> set[int]:
    """Which of the server sessions ``ids`` still exist."""
    rows = _sql("SELECT ID FROM information_schema.PROCESSLIST")
    return ids & {int(row[0]) for row in rows}


def test_a_spare_comes_with_its_store_connected_and_goes_with_it(
    backend: MySqlBackend,
) -> None:
    first = backend.create_database("first", isolation="fresh")  # starts the tender
    spares = backend._spares
    assert spares is not None
    ready = _wait_for("a ready spare", lambda: {name for name, _ in spares._ready})
    second = backend.create_database("second", isolation="fresh")
    assert second.name in ready
    store = second.store
    assert isinstance(store, MySqlStore) and store._pool is not None, "connected ahead"
    pool = store._pool
    warm = {conn.thread_id() for conn in list(pool._free)}
    assert warm, "a connection open before the test's first statement"
    rows = _sql("SELECT ID, DB FROM information_schema.PROCESSLIST")
    assert {(i, second.name) for i in warm} <= {(int(i), db) for i, db in rows}
    creator = ThreadCreator(second)
    asyncio.run(creator.create_thread_with_message(UserExecutionContext(user_id="u"), "hi"))
    assert second.store.fetch_all_sync(select(T.c.user_id)) == [{"user_id": "u"}]
    for database in (first, second):
        database.dispose_engines()
        backend.drop_database(database)
    assert backend.leftovers() == [backend.template]  # waits for the background work
    recycled = second.name in spares.stock()
    if recycled and pool.size == 1:  # kept for its next test, down to one of its connections
        kept = _sql("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (second.name,))
        assert len(kept) == 1
        return
    # closed: dropped, or recycled while 4 spares were warm already (it goes out cold then)
    assert pool.size == 0, "its pool closed by the tender"
    # the server ends a closed session on its own time
    _wait_for("its sessions ended", lambda: {"gone"} if not _sessions(warm) else set())
    assert recycled or second.name not in _databases(f"tc_{backend.run_id}_")


def test_a_spare_made_while_the_leftovers_are_listed_is_not_one(backend: MySqlBackend) -> None:
    used = backend.create_database("first", isolation="fresh")  # starts the tender
    spares = backend._spares
    assert spares is not None
    late = sorted(_wait_for("a ready spare", lambda: {name for name, _ in spares._ready}))[0]
    real, looks = spares.stock, []

    def stock() -> set[str]:
        looks.append(1)  # the first look: as if ``late`` were made just after it
        return real() - {late} if len(looks) == 1 else real()

    spares.stock = stock  # type: ignore[method-assign]
    try:
        assert late not in backend.leftovers()
        assert len(looks) == 2, "the tender is asked again once the server has answered"
    finally:
        del spares.stock
        used.dispose_engines()
        backend.drop_database(used)


def test_a_new_template_retires_the_spares_made_from_the_old_one(backend: MySqlBackend) -> None:
    prefix = f"tc_{backend.run_id}_gw3_"
    used = backend.create_database("before", isolation="fresh")
    backend.drop_database(used)
    old = _wait_for("spare", lambda: _databases(prefix) - {backend.template})

    def versioned(template: Database) -> None:
        async def create() -> None:
            async with template.engine.begin() as conn:
                await conn.exec_driver_sql("CREATE TABLE version_table (num INT PRIMARY KEY)")

        asyncio.run(create())

    backend.prepare_template(SCHEMA, versioned)
    assert not old & _databases(prefix), "the old template's spares are dropped"
    database = backend.create_database("after", isolation="fresh")
    try:
        tables = _sql(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (database.name,),
        )
        assert ("version_table",) in {tuple(row) for row in tables}
    finally:
        backend.drop_database(database)


def test_an_engine_driver_that_is_not_installed_is_named_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiomysql", None)  # import aiomysql raises ImportError
    url = MYSQL_SERVER_URL.replace("+asyncmy", "+aiomysql")
    backend = MySqlBackend(url, run_id=new_run_id(), worker_id="gw0")
    with pytest.raises(BackendUnavailableError) as info:
        backend.start()
    assert str(info.value).endswith(
        "needs the aiomysql driver, which is not installed: pip install aiomysql, or use "
        + make_url(MYSQL_SERVER_URL).render_as_string(hide_password=True)
    )
    backend.stop()


def test_the_run_lock_is_held_for_the_backends_life(backend: MySqlBackend) -> None:
    lock = lock_name(backend.run_id, backend.worker_id)
    [(holder,)] = _sql("SELECT IS_USED_LOCK(%s)", (lock,))
    assert holder is not None
    backend.stop()
    # Released by stop itself, not later when the server gets round to the closed session. The
    # lock may be free or briefly taken by another run's sweeper (other tests start backends
    # beside this one), never still the stopped backend's.
    [(after,)] = _sql("SELECT IS_USED_LOCK(%s)", (lock,))
    assert after != holder


_KILLED_RUN = textwrap.dedent(
    """
    import sys, time
    from pytest_threadcreator.backends.mysql.backend import MySqlBackend
    from pytest_threadcreator.schema import default_schema

    backend = MySqlBackend(sys.argv[1], run_id=sys.argv[2], worker_id="gw0")
    backend.start()
    backend.prepare_template(default_schema(), None)
    backend.create_database("killed_one", isolation="fresh")
    backend.create_database("killed_two", isolation="clean")
    spares = backend._spares
    # the tender's spares made ahead, none half made (a spare handed out counts: it comes back)
    while len(spares._ready) + len(spares._handed) < spares.target or spares._cloning:
        time.sleep(0.01)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_runs_databases_are_swept_and_lookalikes_survive() -> None:
    dead = new_run_id()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, MYSQL_SERVER_URL, dead],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert line_from(proc) == "ready"
        made = _databases(f"tc_{dead}_")
        # the template, two databases and the spares made ahead
        assert len(made) >= 4 and any(name.endswith("_fresh") for name in made)
        # A live run is never swept.
        live_check = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw1")
        live_check.start()
        live_check.stop()
        assert live_check.swept == []
        assert _databases(f"tc_{dead}_") == made
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Lookalikes: the dead run's name pattern without a registry row, and a registry row that
    # names another run than the database's name does.
    lookalike = f"tc_{dead}_gw0_zz_users_own"
    mismatch = f"tc_{dead}_gw7_1_other_run"
    _sql(f"CREATE DATABASE `{lookalike}`")
    _sql(f"CREATE DATABASE `{mismatch}`")
    _sql(
        f"INSERT INTO `{REGISTRY}`.owned (name, run_id, worker_id) VALUES (%s, %s, %s)",
        (mismatch, "someoneelse", "gw7"),
    )
    try:
        sweeper = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw2")
        sweeper.start()
        sweeper.stop()
        assert set(sweeper.swept) == made
        assert _databases(f"tc_{dead}_") == {lookalike, mismatch}
        assert _sql(f"SELECT name FROM `{REGISTRY}`.owned WHERE run_id = %s", (dead,)) == []
    finally:
        _sql(f"DROP DATABASE IF EXISTS `{lookalike}`")
        _sql(f"DROP DATABASE IF EXISTS `{mismatch}`")
        _sql(f"DELETE FROM `{REGISTRY}`.owned WHERE name = %s", (mismatch,))


def test_a_database_a_dead_runs_tender_was_still_making_is_swept_too() -> None:
    """A killed run's tender connections hold no lock: one may still be running a clone's
    ``CREATE DATABASE`` and registry row when the run's lock is already free. The sweeper waits
    for that statement and reads the registry again, so the clone goes too."""
    dead = new_run_id()
    used = f"tc_{dead}_gw0_1_used"
    late = f"tc_{dead}_gw0_2_fresh"
    registry = f"`{REGISTRY}`.owned"
    dead_lock = lock_name(dead, "gw0")
    gate = f"tc_test_gate_{dead}"

    async def scalar(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        async with conn.cursor() as cursor:
            await cursor.execute(sql, params)
            return (await cursor.fetchone())[0]

    async def until_free(watcher: Any) -> None:
        # the server frees a closed session's locks when it notices; a sweeper of another test
        # (a concurrent worker's backend) may hold the dead run's lock for a while too
        for _ in range(1500):
            if await scalar(watcher, "SELECT IS_FREE_LOCK(%s)", (dead_lock,)) == 1:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the lock {dead_lock} stayed held for 15 s")

    async def scenario() -> None:
        holder = await asyncmy.connect(autocommit=True, **_server())
        tender = await asyncmy.connect(autocommit=True, **_server())
        keeper = await asyncmy.connect(autocommit=True, **_server())
        watcher = await asyncmy.connect(autocommit=True, **_server())
        try:
            assert await scalar(holder, "SELECT GET_LOCK(%s, 0)", (dead_lock,)) == 1
            assert await scalar(keeper, "SELECT GET_LOCK(%s, 0)", (gate,)) == 1
            async with holder.cursor() as cursor:
                await cursor.execute(
                    f"CREATE DATABASE `{used}`; INSERT INTO {registry} VALUES (%s, %s, %s)",
                    (used, dead, "gw0"),
                )
                while await cursor.nextset():
                    pass

            async def clone_late() -> None:
                # as the tender's connection is after its last clone: on that clone, and held
                # at a gate until the sweeper has the dead run's lock
                async with tender.cursor() as cursor:
                    await cursor.execute(
                        f"USE `{used}`; DO GET_LOCK(%s, 30); CREATE DATABASE `{late}`; "
                        f"INSERT INTO {registry} VALUES (%s, %s, %s)",
                        (gate, late, dead, "gw0"),
                    )
                    while await cursor.nextset():
                        pass

            tender_id = await scalar(tender, "SELECT CONNECTION_ID()")
            cloning = asyncio.create_task(clone_late())
            at_gate = (
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE ID = %s AND INFO LIKE 'DO GET_LOCK%%'"
            )
            while not await scalar(watcher, at_gate, (tender_id,)):
                assert not cloning.done()
                await asyncio.sleep(0.01)
            holder.close()  # the process dies: its lock goes free, its tender's clone still runs
            await until_free(watcher)

            def sweep() -> None:
                sweeper = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw9")
                sweeper.start()
                sweeper.stop()

            sweeping = asyncio.create_task(asyncio.to_thread(sweep))
            while not sweeping.done():
                if await scalar(watcher, "SELECT IS_USED_LOCK(%s)", (dead_lock,)) is not None:
                    await asyncio.sleep(0.3)  # a sweeper that does not wait is done by now
                    break
                await asyncio.sleep(0.01)
            await scalar(keeper, "SELECT RELEASE_LOCK(%s)", (gate,))
            await sweeping
            await cloning
            await until_free(watcher)
        finally:
            for conn in (holder, tender, keeper, watcher):
                conn.close()

    first = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw9")
    first.start()  # the server has the registry from here on
    first.stop()
    try:
        asyncio.run(scenario())
        assert _databases(f"tc_{dead}_") == set()
        assert _sql(f"SELECT name FROM {registry} WHERE run_id = %s", (dead,)) == []
    finally:
        for name in (used, late):
            _sql(f"DROP DATABASE IF EXISTS `{name}`")
        _sql(f"DELETE FROM {registry} WHERE run_id = %s", (dead,))


@pytest.mark.asyncio
async def test_four_byte_characters_round_trip(database: Database) -> None:
    text = "threads 🧵 and emoji 😀 in 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"
    creator = ThreadCreator(database)
    made = await creator.create_thread_with_message(UserExecutionContext(user_id="u🧵"), text)
    (row,) = await database.store.fetch_all(
        select(M.c.content).where(M.c.thread_id == made.thread.id)
    )
    assert text in str(row["content"])
    async with database.session() as session:
        owner = (await session.execute(select(T.c.user_id))).scalar_one()
    assert owner == "u🧵"


@pytest.mark.asyncio
async def test_foreign_keys_are_enforced(database: Database) -> None:
    async with database.session() as session:
        with pytest.raises(IntegrityError) as info:
            async with session.begin():
                await session.execute(
                    insert(M).values(
                        id="msg_orphan",
                        object="thread.message",
                        thread_id="thread_missing",
                        role="user",
                        content=[],
                        created_at=1,
                        metadata_={},
                    )
                )
    assert info.value.orig is not None and info.value.orig.args[0] == 1452
    assert await database.count_messages() == 0


@pytest.mark.asyncio
async def test_a_lock_wait_timeout_is_transient(database: Database) -> None:
    creator = ThreadCreator(database)
    made = await creator.create_thread_with_message(UserExecutionContext(user_id="u1"), "hi")
    holder = await asyncmy.connect(db=database.name, **_server())
    waiter = await asyncmy.connect(db=database.name, **_server())
    try:
        async with holder.cursor() as h, waiter.cursor() as w:
            await h.execute("START TRANSACTION")
            await h.execute("SELECT id FROM threads WHERE id = %s FOR UPDATE", (made.thread.id,))
            await w.execute("SET SESSION innodb_lock_wait_timeout = 1")
            with pytest.raises(asyncmy.errors.OperationalError) as info:
                await w.execute("UPDATE threads SET title = 'x' WHERE id = %s", (made.thread.id,))
            await h.execute("ROLLBACK")
    finally:
        holder.close()
        waiter.close()
    assert info.value.args[0] == 1205
    assert database.store.is_transient(info.value)


@pytest.mark.asyncio
async def test_clean_reset_empties_every_table_with_foreign_keys_on(backend: MySqlBackend) -> None:
    database = backend.create_database("clean_db", isolation="clean")
    try:
        creator = ThreadCreator(database)
        for i in range(3):
            await creator.create_thread_with_message(UserExecutionContext(user_id=f"u{i}"), "x")
        database.store.reset()
        assert (await database.count_threads(), await database.count_messages()) == (0, 0)
        # the store's connection that ran the reset has foreign key checks on again
        checks = text("SELECT @@FOREIGN_KEY_CHECKS AS fk").columns(column("fk", Integer))
        assert await database.store.fetch_all(checks) == [{"fk": 1}]
        await creator.create_thread_with_message(UserExecutionContext(user_id="again"), "x")
        assert await database.count_threads() == 1
    finally:
        database.dispose_engines()
        backend.drop_database(database)


@pytest.mark.asyncio
async def test_a_reset_that_fails_midway_leaves_no_connection_with_foreign_key_checks_off(
    backend: MySqlBackend,
) -> None:
    database = backend.create_database("failing_reset", isolation="clean")
    try:
        creator = ThreadCreator(database)
        made = await creator.create_thread_with_message(UserExecutionContext(user_id="u"), "x")
        store = database.store
        sql = list(store._reset_sql)  # type: ignore[attr-defined]
        # fails after the checks are off and the messages are gone, before the threads
        at = next(n for n, s in enumerate(sql) if s.startswith("DELETE")) + 1
        store._reset_sql = (*sql[:at], "DELETE FROM no_such_table", *sql[at:])  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="no_such_table"):
            store.reset()
        store._reset_sql = tuple(sql)  # type: ignore[attr-defined]
        assert await database.count_messages() == 1, "all or nothing: the messages are back"
        checks = text("SELECT @@FOREIGN_KEY_CHECKS AS fk").columns(column("fk", Integer))
        for _ in range(store.max_size):  # whichever store connection serves next
            assert await store.fetch_all(checks) == [{"fk": 1}]
        with pytest.raises(Exception, match="foreign key constraint"):
            async with database.engine.begin() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO messages (id, object, thread_id, role, content, created_at, "
                    "file_ids, metadata_) VALUES ('m2', 'thread.message', 'nope', 'user', '[]', "
                    "1, '[]', '{}')"
                )
        assert made.thread.id
    finally:
        database.dispose_engines()
        backend.drop_database(database)


def test_a_setup_hooks_rows_are_in_every_new_database_and_survive_a_reset() -> None:
    backend = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw4")
    backend.start()
    try:

        def seed(template: Database) -> None:
            async def create() -> None:
                await ThreadCreator(template).create_thread_with_message(
                    UserExecutionContext(user_id="seeded"), "from setup"
                )
                # a table outside the schema, as a migration tool's version table
                async with template.engine.begin() as conn:
                    await conn.exec_driver_sql(
                        "CREATE TABLE version_table (num VARCHAR(32) PRIMARY KEY)"
                    )
                    await conn.exec_driver_sql("INSERT INTO version_table VALUES ('0001')")

            asyncio.run(create())

        backend.prepare_template(SCHEMA, seed)
        database = backend.create_database("seeded", isolation="clean")
        versions = select(column("num")).select_from(table("version_table"))
        rows = database.store.fetch_all_sync(select(T.c.user_id))
        assert rows == [{"user_id": "seeded"}]
        assert database.store.fetch_all_sync(versions) == [{"num": "0001"}]
        for _ in range(2):
            database.store.reset()
            assert database.store.fetch_all_sync(select(T.c.user_id)) == rows
            assert database.store.fetch_all_sync(versions) == [{"num": "0001"}]
        backend.drop_database(database)
    finally:
        backend.stop()
    assert not _databases(f"tc_{backend.run_id}_")
