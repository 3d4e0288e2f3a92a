"""``fresh`` on PostgreSQL: a used clone that changed nothing but rows comes back as a later
test's database, emptied, under its name and with one connection of its store pool; one that
changed anything else is dropped. Against the real server at ``$THREADCREATOR_POSTGRES_URL``; a
database is followed by its ``pg_database`` oid, which a new clone never reuses while the old
one exists."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from pytest_threadcreator.backends.postgresql import recycle
from pytest_threadcreator.backends.postgresql.backend import PostgresBackend
from pytest_threadcreator.backends.postgresql.janitor import marked_run, new_run_id
from pytest_threadcreator.backends.postgresql.recycle import recycle_call, recycle_sql
from pytest_threadcreator.database import Database
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
INSERT_THREAD = (
    "INSERT INTO threads (id, object, user_id, status, created_at, metadata_) "
    "VALUES ($1, 'thread', 'ann', 'active', 1, '{}')"
)


def _fetch(sql: str, *args: Any, database: str = "postgres") -> list[Any]:
    return asyncio.run(pg_fetch(sql, *args, database=database))


def _run(database: str, *statements: str) -> None:
    """Each statement on one session of ``database`` (errors are the test's to see)."""

    async def run() -> None:
        conn = await asyncpg.connect(**pg_connect_kwargs(database))
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _oid(name: str) -> int:
    return int(_fetch("SELECT oid FROM pg_database WHERE datname = $1", name)[0]["oid"])


def _name_of(oid: int) -> str | None:
    rows = _fetch("SELECT datname FROM pg_database WHERE oid = $1", oid)
    return str(rows[0]["datname"]) if rows else None


def _note(name: str) -> str | None:
    rows = _fetch(
        "SELECT shobj_description(oid, 'pg_database') AS note FROM pg_database WHERE datname = $1",
        name,
    )
    return rows[0]["note"] if rows else None


@pytest.fixture
def backend() -> Iterator[PostgresBackend]:
    backend = PostgresBackend("url", url=PG_SERVER_URL, run_id=new_run_id(), worker_id="gw6")
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()
    assert not _fetch("SELECT 1 FROM pg_database WHERE datname LIKE $1", f"tc_{backend.run_id}_%")


def _used(backend: PostgresBackend, *statements: str) -> tuple[int, str]:
    """A ``fresh`` database with a row written and ``statements`` run in it, then given back and
    the background work done; its oid and the name it was handed out under."""
    database = backend.create_database("used", isolation="fresh")
    oid, name = _oid(database.name), database.name
    _run(name, INSERT_THREAD.replace("$1", f"'thread_{uuid.uuid4().hex}'"), *statements)
    backend.drop_database(database)
    backend.leftovers()  # waits for the tender's background work
    return oid, name


def _take_until(backend: PostgresBackend, oid: int) -> tuple[Database, list[Database]]:
    """Fresh databases until the one with ``oid`` comes; it and the others taken before it."""
    others: list[Database] = []
    for _ in range(10):
        database = backend.create_database("next", isolation="fresh")
        if _oid(database.name) == oid:
            return database, others
        others.append(database)
    raise AssertionError(f"database {oid} was never handed out again")


def test_a_clone_left_as_found_is_emptied_and_handed_to_a_later_test(
    backend: PostgresBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    oid, name = _used(backend)
    assert _name_of(oid) == name, "kept where it is, under its name, not dropped"
    assert marked_run(_note(name)) == backend.run_id, "still marked as the run's own"
    assert backend.leftovers() == [backend.template], "a spare again, not a leftover"
    database, others = _take_until(backend, oid)
    assert others, "not to the next test: its name (and URL) differs from the one before"
    assert database.name == name
    assert asyncio.run(database.count_threads()) == 0
    assert asyncio.run(database.count_messages()) == 0
    for other in [*others, database]:
        backend.drop_database(other)


def test_the_store_pool_comes_back_with_its_database_trimmed_to_one_connection(
    backend: PostgresBackend,
) -> None:
    backend.prepare_template(SCHEMA, None)
    first = backend.create_database("first", isolation="fresh")  # made on demand; starts the tender
    database = backend.create_database("used", isolation="fresh")
    pool = database.store._pool  # type: ignore[attr-defined]
    assert pool is not None, "a spare comes with its store pool open"

    async def grow() -> set[int]:  # as a test running creates side by side would
        held = [await pool.acquire() for _ in range(3)]
        pids = {conn.get_server_pid() for conn in held}
        for conn in held:
            await pool.release(conn)
        return pids

    opened = backend._background.run(grow())
    assert pool.get_size() == 3
    oid = _oid(database.name)
    backend.drop_database(database)
    backend.leftovers()
    again, others = _take_until(backend, oid)
    assert again.store._pool is pool and pool.get_size() == 1  # type: ignore[attr-defined]
    sessions = _fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", again.name)
    assert len(sessions) == 1 and sessions[0]["pid"] in opened, "one of its own, not a new one"
    assert asyncio.run(again.count_threads()) == 0
    for other in [first, *others, again]:
        backend.drop_database(other)


def test_a_watcher_of_the_test_that_gave_a_database_back_sees_nothing_of_a_later_test(
    backend: PostgresBackend,
) -> None:
    """The store pool (with its connection) outlives its store: the query logger an earlier
    test's count_queries attached to that connection must not report a later test's
    statements, nor come back beside the later test's own."""
    backend.prepare_template(SCHEMA, None)
    first = backend.create_database("first", isolation="fresh")  # made on demand; starts the tender
    database = backend.create_database("used", isolation="fresh")
    earlier: list[str] = []
    store: Any = database.store
    run = backend._background.run
    run(store.watch_statements(lambda _label, sql: earlier.append(sql)))
    asyncio.run(database.store.create(*default_rows(), explicit_id=False))
    run(store.watch_statements(None))  # the test's count_queries() ended
    assert earlier, "it saw the earlier test's create"
    seen = len(earlier)
    oid = _oid(database.name)
    backend.drop_database(database)
    backend.leftovers()
    again, others = _take_until(backend, oid)
    later: list[str] = []
    run(again.store.watch_statements(lambda _label, sql: later.append(sql)))  # type: ignore[attr-defined]
    asyncio.run(again.store.create(*default_rows(), explicit_id=False))
    assert len(earlier) == seen, earlier[seen:]
    assert len(later) == 1, later  # the create's one statement, once
    for other in [first, *others, again]:
        backend.drop_database(other)


def _watch_sql(name: str) -> dict[str, tuple[list[str], str]]:
    """Statements a test might run, each of which leaves its database changed beyond rows, and
    the check that tells (the reason the check raises)."""
    ddl = "a schema change (DDL)"
    return {
        "create table": (["CREATE TABLE extra (id int)"], ddl),
        "alter column": (["ALTER TABLE threads ALTER COLUMN title TYPE text"], ddl),
        "ddl rolled back": (["BEGIN", "CREATE INDEX ON threads (title)", "ROLLBACK"], ddl),
        "temporary table": (["CREATE TEMP TABLE scratch (id int)"], ddl),
        "comment": (["COMMENT ON TABLE threads IS 'changed'"], ddl),
        "grant": (["GRANT SELECT ON threads TO PUBLIC"], ddl),
        "large object": (["SELECT lo_create(0)"], "a large object"),
        "cluster": (["CLUSTER threads USING threads_pkey"], "an index CLUSTER marked"),
        "database setting": (
            [f"ALTER DATABASE \"{name}\" SET work_mem = '8MB'"],
            "a database setting",
        ),
        "database grant": (
            [f'GRANT CONNECT ON DATABASE "{name}" TO PUBLIC'],
            "the database's own settings",
        ),
        "watch disabled and enabled again": (
            [
                "ALTER EVENT TRIGGER threadcreator_ddl_start DISABLE",
                "ALTER EVENT TRIGGER threadcreator_ddl_end DISABLE",
                "CREATE TABLE unseen (id int)",
                "ALTER EVENT TRIGGER threadcreator_ddl_start ENABLE ALWAYS",
                "ALTER EVENT TRIGGER threadcreator_ddl_end ENABLE ALWAYS",
            ],
            "the watch's event triggers changed, disabled, or others added",
        ),
        "event trigger added": (
            ["CREATE EVENT TRIGGER other ON sql_drop EXECUTE FUNCTION threadcreator.ddl_seen()"],
            "the watch's event triggers changed, disabled, or others added",
        ),
        "counter restarted": (["ALTER SEQUENCE threadcreator.ddl RESTART"], ddl),
        "watch dropped": (["DROP SCHEMA threadcreator CASCADE"], 'relation "threadcreator.ddl"'),
    }


def _refusal(backend: PostgresBackend, name: str, seeded: list[str] | None = None) -> str:
    """Why the recycle checks refuse database ``name`` (they must): the shared catalogs'
    check on the maintenance database, then the check on the database itself."""

    async def check() -> str:
        conn = await asyncpg.connect(**pg_connect_kwargs("postgres"))
        try:
            row = await conn.fetchrow(recycle.SHARED_CHECK, name, backend.template, [])
        finally:
            await conn.close()
        if row["why"] is not None:
            return str(row["why"])
        conn = await asyncpg.connect(**pg_connect_kwargs(name))
        try:
            try:
                await conn.execute(recycle_sql(SCHEMA, seeded or []))
            except asyncpg.PostgresError as exc:
                reason = str(exc)
            else:
                raise AssertionError(f"{name} passed the recycle checks")
            # the same from the template's function, as the tender calls it
            try:
                changed = await conn.fetchval(recycle_call(SCHEMA))
            except asyncpg.PostgresError as exc:
                assert str(exc) == reason
            else:
                assert f"threadcreator: changed since it was cloned: {changed}" == reason
            return reason
        finally:
            await conn.close()

    return asyncio.run(check())


@pytest.mark.parametrize("change", list(_watch_sql("x")))
def test_a_clone_changed_beyond_its_rows_is_dropped(backend: PostgresBackend, change: str) -> None:
    backend.prepare_template(SCHEMA, None)
    database = backend.create_database("changed", isolation="fresh")
    oid, name = _oid(database.name), database.name
    statements, reason = _watch_sql(name)[change]
    _run(name, *statements)
    assert reason in _refusal(backend, name), f"{change}: refused by its own check"
    backend.drop_database(database)
    backend.leftovers()
    assert _name_of(oid) is None, f"{change}: dropped, never handed out again"


ALEMBIC = [
    "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
    "INSERT INTO alembic_version VALUES ('4f2e')",
]


def test_a_table_outside_the_schema_left_as_it_was_still_recycles(
    backend: PostgresBackend,
) -> None:
    backend.prepare_template(SCHEMA, lambda template: _run(template.name, *ALEMBIC))
    oid, _ = _used(backend)
    database, others = _take_until(backend, oid)
    assert asyncio.run(database.count_threads()) == 0
    rows = _fetch("SELECT version_num FROM alembic_version", database=database.name)
    assert [row["version_num"] for row in rows] == ["4f2e"]
    for other in [*others, database]:
        backend.drop_database(other)


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE alembic_version SET version_num = '9a01'",
        "DELETE FROM alembic_version",
        "INSERT INTO alembic_version VALUES ('9a01')",
    ],
)
def test_rows_changed_in_a_table_outside_the_schema_drop_the_clone(
    backend: PostgresBackend, change: str
) -> None:
    backend.prepare_template(SCHEMA, lambda template: _run(template.name, *ALEMBIC))
    database = backend.create_database("changed", isolation="fresh")
    oid, name = _oid(database.name), database.name
    _run(name, change)
    assert "rows of alembic_version" in _refusal(backend, name)
    backend.drop_database(database)
    backend.leftovers()
    assert _name_of(oid) is None


def test_an_emptying_that_cascades_outside_the_schema_drops_the_clone(
    backend: PostgresBackend,
) -> None:
    """Emptying the schema's tables must not leave a table outside it unlike the template's."""

    def setup(template: Database) -> None:
        _run(
            template.name,
            "CREATE TABLE thread_tags (thread_id text REFERENCES threads (id) ON DELETE CASCADE)",
            INSERT_THREAD.replace("$1", "'thread_seed'"),
            "INSERT INTO thread_tags VALUES ('thread_seed')",
        )

    backend.prepare_template(SCHEMA, setup)
    database = backend.create_database("cascade", isolation="fresh")
    assert "the rows of thread_tags" in _refusal(backend, database.name, ["threads"])
    backend.drop_database(database)
    oid, _ = _used(backend)
    assert _name_of(oid) is None


def test_a_clone_whose_record_of_the_sequences_was_emptied_is_dropped(
    backend: PostgresBackend,
) -> None:
    backend.prepare_template(SCHEMA, lambda template: _run(template.name, "CREATE SEQUENCE n"))
    database = backend.create_database("record", isolation="fresh")
    _run(database.name, "DELETE FROM threadcreator.sequences")  # a truncate-everything helper
    assert "the plugin's record of the template's sequences" in _refusal(backend, database.name)
    backend.drop_database(database)


def test_a_table_outside_the_schema_too_big_to_digest_is_never_recycled(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recycle, "DIGEST_ROWS", 1)
    backend.prepare_template(
        SCHEMA,
        lambda template: _run(template.name, *ALEMBIC, "INSERT INTO alembic_version VALUES ('b')"),
    )
    database = backend.create_database("big", isolation="fresh")
    reason = _refusal(backend, database.name)
    assert "a table outside the schema that the template did not hold" in reason
    backend.drop_database(database)
    oid, _ = _used(backend)
    assert _name_of(oid) is None


@pytest.mark.parametrize("as_function", [True, False], ids=["function", "do-block"])
def test_a_session_that_comes_after_the_look_for_sessions_drops_the_database(
    backend: PostgresBackend, as_function: bool
) -> None:
    """An app's pool that connects again by the database's name between the tender's look for
    sessions and the emptying would see a later test's rows: the emptying looks again, inside
    its transaction, and refuses."""
    backend.prepare_template(SCHEMA, None)
    name = f"recycle_probe_{uuid.uuid4().hex[:12]}"
    _fetch(f'CREATE DATABASE "{name}" TEMPLATE "{backend.template}"')

    async def run() -> tuple[str | None, bool, str | None]:
        sql = recycle_call(SCHEMA) if as_function else recycle_sql(SCHEMA, [])
        recycler = recycle.Recycler(sql, _connect_to, backend.template)
        conn = await asyncpg.connect(**pg_connect_kwargs("postgres"))
        try:
            reclaimed = await recycler.reclaim(conn, name)
        finally:
            await conn.close()
        late = await asyncpg.connect(**pg_connect_kwargs(name))  # after the look
        try:
            return reclaimed, await recycler.check(name), recycler.last_refusal
        finally:
            await late.close()

    try:
        reclaimed, checked, refusal = asyncio.run(run())
        assert reclaimed == name, "nobody was on it when the tender looked"
        assert not checked and "another session came on it" in (refusal or "")
    finally:
        _fetch(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _connect_to(name: str) -> Any:
    return await asyncpg.connect(**pg_connect_kwargs(name))


def test_a_clone_a_session_still_uses_is_dropped(backend: PostgresBackend) -> None:
    backend.prepare_template(SCHEMA, None)
    database = backend.create_database("held", isolation="fresh")
    oid = _oid(database.name)

    async def hold_then_give_back() -> None:
        held = await asyncpg.connect(**pg_connect_kwargs(database.name))  # e.g. an app's engine
        try:
            await asyncio.to_thread(backend.drop_database, database)
            await asyncio.to_thread(backend.leftovers)
        finally:
            held.terminate()

    asyncio.run(hold_then_give_back())
    assert _name_of(oid) is None
    spares = backend._spares
    assert spares is not None and spares._recycle is not None
    assert spares._recycle.last_refusal == "a session still on it"


def test_sequences_and_seed_rows_are_as_the_template_has_them(backend: PostgresBackend) -> None:
    def setup(template: Database) -> None:
        _run(
            template.name,
            "CREATE SEQUENCE counter",
            "SELECT nextval('counter')",
            INSERT_THREAD.replace("$1", "'thread_seed'"),
        )

    backend.prepare_template(SCHEMA, setup)
    oid, _ = _used(backend, "SELECT nextval('counter') FROM generate_series(1, 5)")
    database, others = _take_until(backend, oid)
    assert _fetch("SELECT nextval('counter') AS n", database=database.name)[0]["n"] == 2
    rows = _fetch("SELECT id FROM threads", database=database.name)
    assert [row["id"] for row in rows] == ["thread_seed"]
    for other in [*others, database]:
        backend.drop_database(other)


@pytest.fixture
def plain_role() -> Iterator[str]:
    """A login role that may create databases but is no superuser (so no event triggers)."""
    role = f"tc_plain_{uuid.uuid4().hex[:12]}"
    _fetch(f"CREATE ROLE {role} LOGIN CREATEDB")
    try:
        yield role
    finally:
        _fetch(f"DROP ROLE IF EXISTS {role}")


def test_without_a_superuser_every_used_clone_is_dropped(plain_role: str) -> None:
    url = make_url(PG_SERVER_URL).set(username=plain_role, password=None)
    backend = PostgresBackend("url", url=url.render_as_string(False), run_id=new_run_id())
    backend.start()
    try:
        backend.prepare_template(SCHEMA, None)
        clone = backend.create_database("look", isolation="clean")
        schemas = _fetch("SELECT nspname FROM pg_namespace", database=clone.name)
        assert "threadcreator" not in {row["nspname"] for row in schemas}, "no watch installed"
        backend.drop_database(clone)
        oid, _ = _used(backend)
        assert _name_of(oid) is None
    finally:
        backend.stop()
    assert not _fetch("SELECT 1 FROM pg_database WHERE datname LIKE $1", f"tc_{backend.run_id}_%")
