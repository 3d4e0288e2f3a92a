"""``fresh`` on MySQL/MariaDB: a used database that changed nothing but rows has its tables moved
into a new database, emptied, and handed out to a later test; one changed beyond its rows is
dropped. Against the real server at ``$THREADCREATOR_MYSQL_URL``; a table is followed by its
InnoDB table id, which ``RENAME TABLE`` keeps and a new table never reuses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncmy
import pytest

from pytest_threadcreator.backends.mysql.backend import MySqlBackend
from pytest_threadcreator.backends.mysql.janitor import REGISTRY, lock_name
from pytest_threadcreator.backends.mysql.recycle import Recycler, table_shape
from pytest_threadcreator.backends.postgresql.janitor import new_run_id
from pytest_threadcreator.database import Database
from pytest_threadcreator.schema import default_schema

from ..helpers import MYSQL_SERVER_URL, line_from, mysql_server_missing, needs_marks
from .test_mysql_backend import _databases, _server, _sql

pytestmark = [*needs_marks(mysql_server_missing()), pytest.mark.suite_independent]

SCHEMA = default_schema()
INSERT_THREAD = (
    "INSERT INTO threads (id, object, user_id, status, created_at, metadata_) "
    "VALUES ('{id}', 'thread', 'ann', 'active', 1, '{{}}')"
)
INSERT_MESSAGE = (
    "INSERT INTO messages (id, object, thread_id, role, content, created_at, file_ids, metadata_) "
    "VALUES ('m_{thread}', 'thread.message', '{thread}', 'user', '[]', 1, '[]', '{{}}')"
)


def _run(database: str, *statements: str) -> None:
    """Each statement on one session of ``database`` (errors are the test's to see)."""

    async def run() -> None:
        conn = await asyncmy.connect(autocommit=True, db=database, **_server())
        try:
            async with conn.cursor() as cursor:
                for sql in statements:
                    await cursor.execute(sql)
        finally:
            conn.close()

    asyncio.run(run())


def _table_id(database: str, table: str = "threads") -> int | None:
    for view in ("INNODB_SYS_TABLES", "INNODB_TABLES"):  # MariaDB, MySQL 8
        try:
            rows = _sql(
                f"SELECT TABLE_ID FROM information_schema.{view} WHERE NAME = %s",
                (f"{database}/{table}",),
            )
        except Exception:  # the other server's name
            continue
        return int(rows[0][0]) if rows else None
    raise AssertionError("no InnoDB table list on this server")


def _where(table_id: int) -> str | None:
    """The database that holds the table with ``table_id`` now."""
    for view in ("INNODB_SYS_TABLES", "INNODB_TABLES"):
        try:
            rows = _sql(
                f"SELECT NAME FROM information_schema.{view} WHERE TABLE_ID = %s", (table_id,)
            )
        except Exception:
            continue
        return str(rows[0][0]).partition("/")[0] if rows else None
    raise AssertionError("no InnoDB table list on this server")


def _registered(backend: MySqlBackend) -> set[str]:
    rows = _sql(f"SELECT name FROM `{REGISTRY}`.owned WHERE run_id = %s", (backend.run_id,))
    return {str(row[0]) for row in rows}


@pytest.fixture
def backend() -> Iterator[MySqlBackend]:
    backend = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw5")
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()
    assert not _databases(f"tc_{backend.run_id}_")
    assert not _registered(backend)


def _recycler(backend: MySqlBackend) -> Recycler:
    spares = backend._spares
    assert spares is not None and isinstance(spares._recycle, Recycler)
    return spares._recycle


def _used(backend: MySqlBackend, *statements: str) -> tuple[int, str]:
    """A ``fresh`` database with a row written and ``statements`` run in it, then given back and
    the background work done; its threads table's id and the name it was handed out under."""
    database = backend.create_database("used", isolation="fresh")
    table_id, name = _table_id(database.name), database.name
    assert table_id is not None
    _run(name, INSERT_THREAD.format(id=f"thread_{uuid.uuid4().hex}"), *statements)
    backend.drop_database(database)
    backend.leftovers()  # waits for the tender's background work
    return table_id, name


def _take_until(backend: MySqlBackend, table_id: int) -> tuple[Database, list[Database]]:
    """Fresh databases until the one holding ``table_id`` comes; it and the others before it."""
    others: list[Database] = []
    for _ in range(10):
        database = backend.create_database("next", isolation="fresh")
        if _table_id(database.name) == table_id:
            return database, others
        others.append(database)
    raise AssertionError(f"the table {table_id} was never handed out again")


def test_a_database_left_as_found_is_moved_emptied_and_handed_out_again(
    backend: MySqlBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    table_id, first_name = _used(backend)
    moved = _where(table_id)
    assert moved is not None, "moved, not dropped"
    assert moved != first_name, "a fresh database's name (and URL) changes per test"
    assert moved.startswith(f"tc_{backend.run_id}_gw5_") and moved.endswith("_fresh")
    assert first_name not in _databases(f"tc_{backend.run_id}_"), "the used one is gone"
    registered = _registered(backend)
    assert moved in registered and first_name not in registered, "the mark moved with it"
    assert _recycler(backend).last_refusal is None
    assert backend.leftovers() == [backend.template], "a spare again, not a leftover"
    database, others = _take_until(backend, table_id)
    assert database.name == moved and first_name not in database.url
    assert asyncio.run(database.count_threads()) == 0
    assert asyncio.run(database.count_messages()) == 0
    # its foreign keys name the tables beside it, not the used database's
    targets = _sql(
        "SELECT UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME FROM "
        "information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s",
        (database.name,),
    )
    assert [tuple(row) for row in targets] == [(database.name, "threads")]
    for other in [*others, database]:
        backend.drop_database(other)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("ALTER TABLE threads ADD COLUMN extra INT", "the table threads differs"),
        ("CREATE INDEX ix_extra ON messages (role)", "the table messages differs"),
        ("ALTER TABLE threads COMMENT = 'changed'", "the table threads differs"),
        ("DROP TABLE messages", "doesn't exist"),
        (
            "CREATE TRIGGER no_move BEFORE INSERT ON threads FOR EACH ROW SET NEW.status = 'x'",
            "Trigger",
        ),
    ],
    ids=["column", "index", "table-option", "table-dropped", "trigger"],
)
def test_a_database_changed_beyond_its_rows_is_dropped(
    backend: MySqlBackend, change: str, why: str
) -> None:
    backend.prepare_template(SCHEMA, None)
    table_id, name = _used(backend, change)
    assert _where(table_id) is None, "dropped, not handed out again"
    assert why.lower() in (_recycler(backend).last_refusal or "").lower()
    assert backend.leftovers() == [backend.template], "nothing of it left, new or used"
    assert name not in _registered(backend)
    # the next one comes back as before
    table_id, _ = _used(backend)
    assert _where(table_id) is not None and _recycler(backend).last_refusal is None
    database, others = _take_until(backend, table_id)
    _run(database.name, INSERT_THREAD.format(id="t1"), INSERT_MESSAGE.format(thread="t1"))
    with pytest.raises(asyncmy.errors.IntegrityError):  # type: ignore[attr-defined]
        _run(database.name, INSERT_MESSAGE.format(thread="no_such_thread"))
    for other in [*others, database]:
        backend.drop_database(other)


def test_what_a_test_added_beside_the_tables_does_not_follow_them(backend: MySqlBackend) -> None:
    backend.prepare_template(SCHEMA, None)
    table_id, _ = _used(
        backend,
        "CREATE TABLE scratch (n INT)",
        "CREATE VIEW seen AS SELECT id FROM threads",
        "CREATE PROCEDURE noop() BEGIN END",
    )
    database, others = _take_until(backend, table_id)
    tables = _sql(
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
        "ORDER BY TABLE_NAME",
        (database.name,),
    )
    assert [row[0] for row in tables] == ["messages", "threads"]
    routines = _sql(
        "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
        (database.name,),
    )
    assert routines == []
    for other in [*others, database]:
        backend.drop_database(other)


def test_seed_rows_and_counters_are_as_the_template_has_them(backend: MySqlBackend) -> None:
    def setup(template: Database) -> None:
        _run(
            template.name,
            # a % of the DDL's own reaches the server as it is, in a new database and a moved one
            "CREATE TABLE counted (n INT AUTO_INCREMENT PRIMARY KEY, "
            "label VARCHAR(8) COMMENT '100% a label')",
            "CREATE TABLE `odd%name` (n INT AUTO_INCREMENT PRIMARY KEY)",
            "INSERT INTO counted (label) VALUES ('a'), ('b')",
            INSERT_THREAD.format(id="thread_seed"),
        )

    backend.prepare_template(SCHEMA, setup)
    table_id, _ = _used(
        backend,
        "INSERT INTO counted (label) VALUES ('c'), ('d'), ('e')",
        "DELETE FROM counted WHERE label = 'a'",
        "INSERT INTO `odd%name` VALUES (), (), ()",
        "DELETE FROM threads WHERE id = 'thread_seed'",
    )
    database, others = _take_until(backend, table_id)
    _run(database.name, "INSERT INTO counted (label) VALUES ('next')")
    rows = _sql("SELECT n, label FROM counted ORDER BY n", db=database.name)
    assert [tuple(row) for row in rows] == [(1, "a"), (2, "b"), (3, "next")]
    comment = _sql(
        "SELECT COLUMN_COMMENT FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
        "AND TABLE_NAME = 'counted' AND COLUMN_NAME = 'label'",
        (database.name,),
    )
    assert comment == [("100% a label",)]
    _run(database.name, "INSERT INTO `odd%name` VALUES ()")
    assert _sql("SELECT n FROM `odd%%name`", db=database.name) == [(1,)]  # sent with ()
    threads = _sql("SELECT id FROM threads", db=database.name)
    assert [row[0] for row in threads] == ["thread_seed"]
    for other in [*others, database]:
        backend.drop_database(other)


def test_a_session_left_in_a_transaction_on_a_table_fails_the_move_not_the_run(
    backend: MySqlBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    database = backend.create_database("held", isolation="fresh")
    table_id = _table_id(database.name)
    assert table_id is not None

    async def hold_then_give_back() -> None:
        held = await asyncmy.connect(db=database.name, **_server())  # e.g. an app's engine
        try:
            async with held.cursor() as cursor:
                await cursor.execute("START TRANSACTION")
                await cursor.execute("SELECT COUNT(*) FROM threads")
            await asyncio.to_thread(backend.drop_database, database)
            await asyncio.to_thread(backend.leftovers)
        finally:
            held.close()

    asyncio.run(hold_then_give_back())
    assert "lock wait timeout" in (_recycler(backend).last_refusal or "").lower()
    assert _where(table_id) is None or _where(table_id) == database.name, "not moved"
    # the drop met the same lock: the backend drops it when it stops (the fixture checks)


def test_the_counter_is_read_from_show_create_table() -> None:
    shape, counter = table_shape(
        "CREATE TABLE `t` (\n  `n` int\n) ENGINE=InnoDB AUTO_INCREMENT=7 X"
    )
    assert (shape, counter) == ("CREATE TABLE `t` (\n  `n` int\n) ENGINE=InnoDB X", 7)
    assert table_shape("CREATE TABLE `t` (`n` int) ENGINE=InnoDB") == (
        "CREATE TABLE `t` (`n` int) ENGINE=InnoDB",
        1,
    )


_KILLED_MID_MOVE = textwrap.dedent(
    """
    import sys, time
    from pytest_threadcreator.backends.mysql import backend as mysql
    from pytest_threadcreator.schema import default_schema

    mysql.LOCK_WAIT = 60  # the test kills the run while the move waits
    backend = mysql.MySqlBackend(sys.argv[1], run_id=sys.argv[2], worker_id="gw0")
    backend.start()
    backend.prepare_template(default_schema(), None)
    database = backend.create_database("used", isolation="fresh")
    print(database.name, flush=True)
    sys.stdin.readline()  # the test holds a lock on its table now
    backend.drop_database(database)  # the move waits for that lock, and the run is killed
    time.sleep(600)
    """
)


def test_a_run_killed_in_the_middle_of_a_move_leaves_nothing_after_the_sweep() -> None:
    """The new database is registered in the same round trip, before the tables move, and the
    used one loses its row only once it is dropped: whatever point a kill reaches, the next
    run's sweep drops both."""
    dead = new_run_id()
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_MOVE, MYSQL_SERVER_URL, dead],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    async def scenario() -> None:
        assert proc.stdin is not None and proc.stdout is not None
        used = line_from(proc)
        assert used.startswith(f"tc_{dead}_")
        holder = await asyncmy.connect(db=used, **_server())
        watcher = await asyncmy.connect(autocommit=True, **_server())
        try:
            async with holder.cursor() as cursor:  # a metadata lock on the used table
                await cursor.execute("START TRANSACTION")
                await cursor.execute("SELECT COUNT(*) FROM threads")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            moving = (
                "SELECT INFO FROM information_schema.PROCESSLIST WHERE INFO LIKE 'RENAME%%' "
                "AND INFO LIKE %s"
            )
            for _ in range(3000):  # the killed run's move waits up to 60 s for the lock
                async with watcher.cursor() as cursor:
                    await cursor.execute(moving, (f"%{used}%",))
                    found = await cursor.fetchone()
                if found:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the move never reached its RENAME")
            # the database the tables are moving into, named by the waiting RENAME
            new = re.findall(r" TO `(tc_[^`]+)`\.", str(found[0]))[0]
            assert new != used and new.startswith(f"tc_{dead}_gw0_")
            async with watcher.cursor() as cursor:
                await cursor.execute(
                    f"SELECT o.name FROM `{REGISTRY}`.owned o JOIN information_schema.SCHEMATA s "
                    "ON s.SCHEMA_NAME = o.name WHERE o.run_id = %s",
                    (dead,),
                )
                there = {str(row[0]) for row in await cursor.fetchall()}
            assert {used, new} <= there, "both exist, each registered, before the tables move"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            holder.close()  # the RENAME goes on (or stops) on the server now
            watcher.close()

    try:
        asyncio.run(scenario())
        deadline = time.monotonic() + 15
        while _sql("SELECT IS_FREE_LOCK(%s)", (lock_name(dead, "gw0"),))[0][0] != 1:
            assert time.monotonic() < deadline, "the killed run's lock stayed held"
            time.sleep(0.01)
        sweeper = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw9")
        sweeper.start()
        sweeper.stop()
        assert _databases(f"tc_{dead}_") == set()
        assert _sql(f"SELECT name FROM `{REGISTRY}`.owned WHERE run_id = %s", (dead,)) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def outside() -> Iterator[str]:
    """A database of the user's, beside the run's (not the plugin's to touch)."""
    name = f"user_own_{uuid.uuid4().hex[:12]}"
    _sql(f"CREATE DATABASE `{name}`")
    try:
        yield name
    finally:
        _sql(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.mark.parametrize("innodb_list", [True, False], ids=["innodb-list", "information-schema"])
def test_a_database_another_databases_table_refers_to_is_not_moved(
    backend: MySqlBackend, outside: str, innodb_list: bool
) -> None:
    if innodb_list:  # the fast way, where the user may read InnoDB's own list (root may)
        assert backend._foreign_keys in ("INNODB_SYS_FOREIGN", "INNODB_FOREIGN")
    else:  # the way without the PROCESS privilege
        backend._foreign_keys = None
    backend.prepare_template(SCHEMA, None)
    database = backend.create_database("referred", isolation="fresh")
    table_id = _table_id(database.name)
    _run(
        outside,
        "CREATE TABLE child (thread_id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci, "
        f"FOREIGN KEY (thread_id) "
        f"REFERENCES `{database.name}`.threads (id)) ENGINE=InnoDB",
    )
    backend.drop_database(database)
    backend.leftovers()
    assert "foreign key of another database" in (_recycler(backend).last_refusal or "")
    assert _where(table_id or 0) == database.name, "not moved (and, referred to, not dropped)"
    targets = _sql(
        "SELECT UNIQUE_CONSTRAINT_SCHEMA FROM information_schema.REFERENTIAL_CONSTRAINTS "
        "WHERE CONSTRAINT_SCHEMA = %s",
        (outside,),
    )
    assert targets == [(database.name,)], "the user's table is as it was"
    _sql(f"DROP TABLE `{outside}`.child")  # the run's end drops the database then


def test_a_table_whose_rows_are_another_tables_is_never_written_to(
    backend: MySqlBackend, outside: str
) -> None:
    backend.prepare_template(SCHEMA, None)
    _run(
        outside,
        "CREATE TABLE victim (id VARCHAR(64)) ENGINE=MyISAM",
        "INSERT INTO victim VALUES ('a'), ('b'), ('c')",
    )
    table_id, _ = _used(
        backend,
        "DROP TABLE messages",
        f"CREATE TABLE messages (id VARCHAR(64)) ENGINE=MRG_MyISAM UNION=(`{outside}`.victim)",
    )
    assert _where(table_id) is None, "dropped, not handed out again"
    assert "the table messages differs" in (_recycler(backend).last_refusal or "")
    assert _sql(f"SELECT COUNT(*) FROM `{outside}`.victim") == [(3,)]


def test_a_database_the_registry_does_not_have_as_the_runs_is_not_touched(
    backend: MySqlBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    database = backend.create_database("unmarked", isolation="fresh")
    table_id = _table_id(database.name)
    _sql(f"DELETE FROM `{REGISTRY}`.owned WHERE name = %s", (database.name,))
    try:
        backend.drop_database(database)
        backend.leftovers()
        assert _recycler(backend).last_refusal == "not registered as the run's own"
        assert _where(table_id or 0) == database.name, "neither moved nor dropped"
    finally:
        _sql(f"DROP DATABASE IF EXISTS `{database.name}`")


def test_a_failure_while_emptying_leaves_the_dropper_as_it_was(
    backend: MySqlBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.prepare_template(SCHEMA, None)
    first = backend.create_database("first", isolation="fresh")  # starts the tender
    recycler = _recycler(backend)
    sent = recycler._query
    asked = "SELECT @@in_transaction, @@foreign_key_checks"
    during: list[Any] = []
    after: list[Any] = []

    async def failing_empty(conn: Any, sql: str, params: Any) -> list[list[Any]]:
        if sql.startswith("SET FOREIGN_KEY_CHECKS = 0"):  # made to fail inside its transaction
            sql = sql.replace("; COMMIT", "; DELETE FROM `no_such_database`.`t`; COMMIT")
            try:
                return await sent(conn, sql, params)
            finally:
                during.extend(await sent(conn, asked, None))
        result = await sent(conn, sql, params)
        if sql.startswith("SET FOREIGN_KEY_CHECKS = 1"):
            after.extend(await sent(conn, asked, None))
        return result

    monkeypatch.setattr(recycler, "_query", failing_empty)
    table_id = _table_id(first.name)
    backend.drop_database(first)
    backend.leftovers()
    assert "no_such_database" in (recycler.last_refusal or "")
    assert during == [[(1, 0)]], "the failure came inside the transaction, checks off"
    assert after == [[(0, 1)]], "rolled back, foreign key checks on again"
    assert _where(table_id or 0) is None, "the new database was dropped"
    assert backend.leftovers() == [backend.template]


def test_a_template_with_a_system_versioned_table_is_copied_and_never_recycled() -> None:
    if "mariadb" not in str(_sql("SELECT VERSION()")[0][0]).lower():
        pytest.skip("system-versioned tables are MariaDB's")
    backend = MySqlBackend(MYSQL_SERVER_URL, run_id=new_run_id(), worker_id="gw5")
    backend.start()
    try:
        backend.prepare_template(
            SCHEMA, lambda t: _run(t.name, "CREATE TABLE audit (n INT) WITH SYSTEM VERSIONING")
        )
        table_id, _ = _used(backend, "INSERT INTO audit VALUES (1)", "DELETE FROM audit")
        assert _where(table_id) is None, "dropped: its history would survive an emptying"
        database = backend.create_database("next", isolation="fresh")
        kinds = _sql(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
            "AND TABLE_NAME = 'audit'",
            (database.name,),
        )
        assert kinds == [("SYSTEM VERSIONED",)]
        backend.drop_database(database)
    finally:
        backend.stop()
    assert not _databases(f"tc_{backend.run_id}_")
