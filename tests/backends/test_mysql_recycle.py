"""``fresh`` on MySQL/MariaDB: a used database that changed nothing but rows is emptied where it is
and handed to a later test (never the next one), with its store pool; one changed beyond its
rows, or still used by a session, is dropped. Against the real server at
``$THREADCREATOR_MYSQL_URL``; a table is followed by its InnoDB table id, which a new table never
reuses."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncmy
import pytest

from pytest_threadcreator.backends.mysql.backend import MySqlBackend
from pytest_threadcreator.backends.mysql.janitor import REGISTRY
from pytest_threadcreator.backends.mysql.recycle import LOCK_WAIT, Recycler, table_shape
from pytest_threadcreator.backends.postgresql.janitor import new_run_id
from pytest_threadcreator.database import Database
from pytest_threadcreator.schema import default_schema

from ..helpers import MYSQL_SERVER_URL, mysql_server_missing, needs_marks
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


def test_a_database_left_as_found_is_emptied_and_handed_to_a_later_test(
    backend: MySqlBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    table_id, name = _used(backend)
    assert _where(table_id) == name, "kept where it is, not dropped"
    assert _recycler(backend).last_refusal is None
    assert name in _registered(backend), "still marked as the run's own"
    assert backend.leftovers() == [backend.template], "a spare again, not a leftover"
    database, others = _take_until(backend, table_id)
    assert others, "not to the next test: its name (and URL) differs from the one before"
    assert database.name == name
    assert asyncio.run(database.count_threads()) == 0
    assert asyncio.run(database.count_messages()) == 0
    targets = _sql(
        "SELECT UNIQUE_CONSTRAINT_SCHEMA, REFERENCED_TABLE_NAME FROM "
        "information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s",
        (database.name,),
    )
    assert [tuple(row) for row in targets] == [(database.name, "threads")]
    for other in [*others, database]:
        backend.drop_database(other)


def test_the_store_pool_comes_back_with_its_database_trimmed_to_one_connection(
    backend: MySqlBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    first = backend.create_database("first", isolation="fresh")  # made on demand; starts the tender
    database = backend.create_database("used", isolation="fresh")
    pool = database.store._pool  # type: ignore[attr-defined]
    assert pool is not None, "a spare comes with its store pool open"

    async def grow() -> set[int]:  # as a test running creates side by side would
        held = [await pool.acquire() for _ in range(3)]
        for conn in held:
            pool.release(conn)
        return {conn.thread_id() for conn in held}

    opened = backend._background.run(grow())
    assert pool.size == 3
    table_id = _table_id(database.name)
    assert table_id is not None
    backend.drop_database(database)
    backend.leftovers()
    again, others = _take_until(backend, table_id)
    assert again.store._pool is pool and pool.size == 1  # type: ignore[attr-defined]
    sessions = _sql("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (again.name,))
    assert len(sessions) == 1 and sessions[0][0] in opened, "one of its own, not a new one"
    assert asyncio.run(again.count_threads()) == 0
    for other in [first, *others, again]:
        backend.drop_database(other)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("ALTER TABLE threads ADD COLUMN extra INT", "the table threads differs"),
        ("CREATE INDEX ix_extra ON messages (role)", "the table messages differs"),
        ("ALTER TABLE threads COMMENT = 'changed'", "the table threads differs"),
        ("DROP TABLE messages", "doesn't exist"),
        (
            "CREATE TRIGGER no_copy BEFORE INSERT ON threads FOR EACH ROW SET NEW.status = 'x'",
            "it holds a trigger",
        ),
        ("CREATE TABLE scratch (n INT)", "a table, view or sequence the template does not"),
        ("CREATE VIEW seen AS SELECT id FROM threads", "a table, view or sequence"),
        ("CREATE PROCEDURE noop() BEGIN END", "it holds a routine"),
        ("CREATE FUNCTION one() RETURNS INT DETERMINISTIC RETURN 1", "it holds a routine"),
        (
            "CREATE EVENT later ON SCHEDULE AT CURRENT_TIMESTAMP + INTERVAL 1 DAY DO SELECT 1",
            "it holds an event",
        ),
        ("ALTER DATABASE COLLATE utf8mb4_bin", "the database's own options differ"),
    ],
    ids=[
        "column",
        "index",
        "table-option",
        "table-dropped",
        "trigger",
        "table-added",
        "view",
        "procedure",
        "function",
        "event",
        "database-option",
    ],
)
@pytest.mark.parametrize("routine_tables", [True, False], ids=["mysql-tables", "i-s-views"])
def test_a_database_changed_beyond_its_rows_is_dropped(
    backend: MySqlBackend, change: str, why: str, routine_tables: bool
) -> None:
    if routine_tables:  # the fast way, where the user may read mysql.proc (root may)
        assert backend._routine_tables, "MariaDB's own tables of routines are read"
    else:  # the way on MySQL 8, or without the privilege
        backend._routine_tables = False
    backend.prepare_template(SCHEMA, None)
    table_id, name = _used(backend, change)
    assert _where(table_id) is None, "dropped, not handed out again"
    assert why.lower() in (_recycler(backend).last_refusal or "").lower()
    assert backend.leftovers() == [backend.template], "nothing of it left"
    assert name not in _registered(backend)
    assert name not in _databases(f"tc_{backend.run_id}_")
    # the next one comes back as before
    table_id, _ = _used(backend)
    assert _where(table_id) is not None and _recycler(backend).last_refusal is None
    database, others = _take_until(backend, table_id)
    _run(database.name, INSERT_THREAD.format(id="t1"), INSERT_MESSAGE.format(thread="t1"))
    with pytest.raises(asyncmy.errors.IntegrityError):  # type: ignore[attr-defined]
        _run(database.name, INSERT_MESSAGE.format(thread="no_such_thread"))
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


@pytest.mark.parametrize("in_transaction", [False, True], ids=["idle", "in-transaction"])
def test_a_database_a_session_is_still_on_is_not_handed_out_again(
    backend: MySqlBackend, in_transaction: bool
) -> None:
    """An app's pool left open would see the next test's rows: its database is dropped instead
    (a session inside a transaction holds its tables' metadata locks, and the drop waits for
    them up to LOCK_WAIT seconds: then the backend drops it when it stops)."""
    backend.prepare_template(SCHEMA, None)
    database = backend.create_database("held", isolation="fresh")
    table_id = _table_id(database.name)
    assert table_id is not None

    async def hold_then_give_back() -> None:
        held = await asyncmy.connect(  # e.g. an app's engine
            db=database.name, autocommit=not in_transaction, **_server()
        )
        try:
            async with held.cursor() as cursor:
                if in_transaction:
                    await cursor.execute("START TRANSACTION")
                await cursor.execute("SELECT COUNT(*) FROM threads")
            await asyncio.to_thread(backend.drop_database, database)
            await asyncio.to_thread(backend.leftovers)
        finally:
            held.close()

    asyncio.run(hold_then_give_back())
    assert _recycler(backend).last_refusal == "a session still on it"
    assert database.name not in backend._spares.stock()  # type: ignore[union-attr]
    if not in_transaction:
        assert _where(table_id) is None, "dropped"
    # else the drop met the lock: the backend drops it when it stops (the fixture checks)


def test_the_tenders_statements_wait_for_a_lock_at_most_lock_wait_seconds(
    backend: MySqlBackend,
) -> None:
    """A row lock as well as a table's metadata lock: a transaction left holding a row of a used
    database (from a session on another database, which the tender does not see as on it)
    must not stall the tender for InnoDB's default 50 s."""

    async def settings() -> list[Any]:
        conn = await backend._connect_tender()
        try:
            async with conn.cursor() as cursor:
                await cursor.execute("SELECT @@lock_wait_timeout, @@innodb_lock_wait_timeout")
                return list(await cursor.fetchone())
        finally:
            conn.close()

    assert backend._background.run(settings()) == [LOCK_WAIT, LOCK_WAIT]


def test_the_counter_is_read_from_show_create_table() -> None:
    shape, counter = table_shape(
        "CREATE TABLE `t` (\n  `n` int\n) ENGINE=InnoDB AUTO_INCREMENT=7 X"
    )
    assert (shape, counter) == ("CREATE TABLE `t` (\n  `n` int\n) ENGINE=InnoDB X", 7)
    assert table_shape("CREATE TABLE `t` (`n` int) ENGINE=InnoDB") == (
        "CREATE TABLE `t` (`n` int) ENGINE=InnoDB",
        1,
    )


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
    assert _where(table_id or 0) == database.name, "not emptied (and, referred to, not dropped)"
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
        assert _where(table_id or 0) == database.name, "neither emptied nor dropped"
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
    assert _where(table_id or 0) is None, "the used database was dropped"
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
