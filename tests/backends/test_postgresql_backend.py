"""The PostgreSQL backend, its store, names, local cluster and background loop, on real servers.

Runs against the server at ``$THREADCREATOR_POSTGRES_URL`` (default
``postgresql+asyncpg://postgres@127.0.0.1:5432/postgres``; skipped when none answers) and against
throwaway clusters from the local binaries (skipped when there are none).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from pytest_threadcreator._background import (
    BackgroundLoop,
    BackgroundLoopClosed,
    BackgroundLoopError,
)
from pytest_threadcreator.backends.pools import (
    DEFAULT_SPARES,
    plan_pools,
    service_connections,
)
from pytest_threadcreator.backends.postgresql import cluster_dirs
from pytest_threadcreator.backends.postgresql import local as pg_local
from pytest_threadcreator.backends.postgresql.backend import PostgresBackend
from pytest_threadcreator.backends.postgresql.janitor import (
    MAX_IDENTIFIER_BYTES,
    database_name,
    marked_run,
    new_run_id,
    ownership_mark,
    parse_database_name,
    remove_dead_runs,
    run_lock_key,
    template_name,
)
from pytest_threadcreator.backends.postgresql.kind import make_postgres_backend
from pytest_threadcreator.backends.postgresql.local import LocalCluster, remove_stale_clusters
from pytest_threadcreator.backends.postgresql.servers import async_url as _async_url
from pytest_threadcreator.backends.postgresql.servers import connect_kwargs as _connect_kwargs
from pytest_threadcreator.backends.postgresql.servers import settle_ssl
from pytest_threadcreator.database import Database
from pytest_threadcreator.errors import (
    BackendUnavailableError,
    ConfigurationError,
    InjectedFault,
)
from pytest_threadcreator.faults.steps import FaultAction
from pytest_threadcreator.ids import new_message_id, new_thread_id
from pytest_threadcreator.schema import NewThread, default_schema
from pytest_threadcreator.store.base import ThreadIdTaken
from pytest_threadcreator.store.postgresql import PgStore

from ..helpers import PG_SERVER_URL as SERVER_URL
from ..helpers import (
    needs,
    pg_binaries_missing,
    pg_connect_kwargs,
    pg_fetch,
    pg_server_missing,
)

pytestmark = pytest.mark.suite_independent

SCHEMA = default_schema()
T = SCHEMA.thread_table
M = SCHEMA.message_table


# -- helpers ---------------------------------------------------------------------------------


def _sync_fetch(sql: str, *args: Any, database: str = "postgres") -> list[Any]:
    return asyncio.run(pg_fetch(sql, *args, database=database))


def _databases_like(prefix: str) -> list[str]:
    pattern = prefix.replace("_", "\\_") + "%"
    rows = _sync_fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", pattern)
    return sorted(row["datname"] for row in rows)


def _notes(*names: str) -> dict[str, str | None]:
    """The comment on each database (None: no comment, or no such database)."""
    rows = _sync_fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') AS note FROM pg_database "
        "WHERE datname = ANY($1::text[])",
        list(names),
    )
    found = {row["datname"]: row["note"] for row in rows}
    return {name: found.get(name) for name in names}


async def _create_user_database(admin: Any, name: str) -> None:
    """A user's database (no mark) with rows in it."""
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(**pg_connect_kwargs(name))
    try:
        await conn.execute("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 100) g")
    finally:
        await conn.close()


async def _orders_in(name: str) -> int:
    conn = await asyncpg.connect(**pg_connect_kwargs(name))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM orders"))
    finally:
        await conn.close()


def _rows(
    user_id: str = "user_a", thread_id: str | None = None, **overrides: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    new = NewThread(
        thread_id=thread_id or new_thread_id(),
        message_id=new_message_id(),
        user_id=user_id,
        run_id="run_test",
        message="hello",
        title="a title",
        role="user",
        metadata={"source": "test"},
        created_at=int(time.time()),
        context=None,
    )
    thread, message = SCHEMA.thread_row(new), SCHEMA.message_row(new)
    message.update(overrides)
    return thread, message


async def _idle_in_transaction(database: str) -> int:
    rows = await pg_fetch(
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        database,
    )
    return int(rows[0]["n"])


needs_server = needs(pg_server_missing())
needs_binaries = needs(pg_binaries_missing())


@pytest.fixture
def db(pg_backend: PostgresBackend, request: pytest.FixtureRequest) -> Iterator[Database]:
    database = pg_backend.create_database(request.node.name, isolation="fresh")
    yield database
    pg_backend.drop_database(database)


# -- names -----------------------------------------------------------------------------------


def test_database_names_fit_63_bytes_and_keep_run_and_worker_whole() -> None:
    run = "a1b2c3d4"
    long_label = "test_" + "x" * 300 + "[param-ü-" + "y" * 50 + "]"
    for worker in ("master", "gw0", "gw123"):
        for number in (1, 35, 36, 10_000):
            name = database_name(run, worker, number, long_label)
            assert len(name.encode()) <= MAX_IDENTIFIER_BYTES
            assert name.startswith(f"tc_{run}_{worker}_")
            parsed = parse_database_name(name)
            assert parsed is not None
            assert (parsed.run_id, parsed.worker_id, parsed.is_template) == (run, worker, False)
    longest_run = "r" * 20
    name = database_name(longest_run, "gw123456789", 99_999, long_label)
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES
    assert name.startswith(f"tc_{longest_run}_gw123456789_")


def test_three_workers_get_three_distinct_names_for_one_long_label() -> None:
    label = "test_a_parametrised_case_with_a_very_long_name_" * 4
    names = {database_name("deadbeef", f"gw{i}", 1, label) for i in range(3)}
    assert len(names) == 3
    assert all(len(n) <= MAX_IDENTIFIER_BYTES for n in names)


def test_long_labels_that_share_a_prefix_stay_apart() -> None:
    common = "x" * 100
    first = database_name("deadbeef", "gw1", 1, common + "first")
    second = database_name("deadbeef", "gw1", 1, common + "second")
    assert first != second  # the hash of the whole label differs
    assert database_name("deadbeef", "gw1", 1, "same") != database_name(
        "deadbeef", "gw1", 2, "same"
    )


def test_template_names_and_foreign_names_parse() -> None:
    parsed = parse_database_name(template_name("deadbeef", "gw2"))
    assert parsed is not None and parsed.is_template and parsed.worker_id == "gw2"
    for foreign in ("postgres", "tc_", "tc_x", "tcx_a_b_1_c", "tc_A_b_1_c", "tk_dead_gw0_1_x"):
        assert parse_database_name(foreign) is None


def test_bad_run_ids_are_refused_with_a_readable_error() -> None:
    with pytest.raises(ConfigurationError, match="run id 'Run-1' must be 1-20 lowercase"):
        database_name("Run-1", "gw0", 1, "x")
    with pytest.raises(ConfigurationError, match="never shortened"):
        template_name("r" * 21, "gw0")


def test_new_run_ids_are_valid_and_distinct() -> None:
    # Made within about one second, so the random part alone must keep them apart (four random
    # characters once let 2 of 200 collide now and then).
    ids = {new_run_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert {len(run) for run in ids} == {14}
    for run in ids:
        template_name(run, "master")


def test_run_lock_keys_are_int4_pairs() -> None:
    for run in ("a", "deadbeef", "z" * 20):
        first, second = run_lock_key(run)
        assert -(2**31) <= first < 2**31 and -(2**31) <= second < 2**31
    assert run_lock_key("a") != run_lock_key("b")


# -- pool plan -------------------------------------------------------------------------------


def test_pool_plan_fits_max_connections() -> None:
    one = plan_pools(100, workers=1)
    assert (one.store_max, one.engine_pool_size, one.engine_max_overflow) == (10, 5, 10)
    for workers in (1, 2, 3, 4, 8):
        plan = plan_pools(100, workers=workers)
        per_database = plan.store_max + plan.engine_pool_size + plan.engine_max_overflow
        # the admin connection, the tender's
        service = service_connections(plan.spares, warm=plan.warm_spares)
        assert workers * (service + 2 * per_database) <= 100 - 3 - 5
        assert plan.spares > 0 and per_database >= 4, "spares never starve a database"
    assert plan_pools(100, workers=2).spares == DEFAULT_SPARES
    assert plan_pools(100, workers=1, requested=4).store_max == 4
    # the admin one; a cloner and a warm connection per spare; the dropper
    assert service_connections(DEFAULT_SPARES) == 2 * DEFAULT_SPARES + 2
    tighter = plan_pools(20, reserved=3, workers=1)  # 12 usable: room for fewer spares
    assert 0 < tighter.spares < DEFAULT_SPARES
    assert service_connections(tighter.spares, warm=tighter.warm_spares) + 2 * 4 <= 12
    assert plan_pools(100, workers=2).warm_spares, "with room, each spare holds a connection"
    crowded = plan_pools(100, workers=8)  # 11 per worker: a spare, but no connection kept for it
    assert (crowded.spares, crowded.warm_spares) == (1, False)
    assert service_connections(1, warm=False) == 3
    tight = plan_pools(14, reserved=3, workers=1)  # 6 usable: room for databases, not a tender
    assert (tight.spares, tight.store_max) == (0, 1)


def test_pool_plan_refuses_too_many_workers() -> None:
    with pytest.raises(ConfigurationError, match="max_connections=100 is too low for 40 workers"):
        plan_pools(100, workers=40)


# -- URLs and errors without a server ----------------------------------------------------------


def test_ssl_is_decided_once_per_run_unless_the_url_names_a_mode() -> None:
    kwargs = {"host": "db", "port": 5432}
    assert settle_ssl(kwargs, on_ssl=False) == {**kwargs, "ssl": False}
    assert settle_ssl(kwargs, on_ssl=True) == kwargs, "the server speaks SSL: keep asking"
    assert settle_ssl(kwargs, on_ssl=None) == kwargs, "not known: keep asking"
    assert settle_ssl({**kwargs, "ssl": "prefer"}, on_ssl=False)["ssl"] == "prefer"


@needs_server
@pytest.mark.asyncio
async def test_every_connection_of_a_database_goes_as_the_first_one_found_the_server(
    db: Database,
) -> None:
    server_ssl = (await pg_fetch("SHOW ssl"))[0]["ssl"] == "on"
    assert db.connect_args == ({} if server_ssl else {"ssl": False})
    assert await db.count_threads() == 0  # the store's connections
    async with db.engine.connect() as conn:  # the test's engine
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1


def test_urls_are_normalised_to_async_drivers() -> None:
    assert _async_url("postgresql+asyncpg://u@h/db", "x").drivername == "postgresql+asyncpg"
    assert _async_url("postgresql+psycopg://u@h/db", "x").drivername == "postgresql+psycopg"
    with pytest.raises(ConfigurationError, match="psycopg2 driver, which is not async"):
        _async_url("postgresql+psycopg2://u:secret@h/db", "x")
    with pytest.raises(ConfigurationError) as info:
        make_postgres_backend("mysql", worker_id="gw0", run_id="abc", pool_size=None)
    assert "postgresql-local" in str(info.value)
    kwargs = _connect_kwargs(_async_url("postgresql+asyncpg://u:pw@/db?host=/tmp/x&port=5433", "x"))
    assert kwargs == {
        "host": "/tmp/x",
        "port": 5433,
        "user": "u",
        "password": "pw",
        "database": "db",
    }


def test_missing_asyncpg_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(BackendUnavailableError) as info:
        make_postgres_backend("postgresql", worker_id="gw0", run_id="abc", pool_size=None)
    assert str(info.value) == (
        "the PostgreSQL backend needs the asyncpg driver: "
        "pip install 'pytest-threadcreator[postgresql]'"
    )


def test_docker_unavailable_is_one_readable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # Docker is not there
    backend = make_postgres_backend(
        "postgresql-docker", worker_id="gw0", run_id="abc", pool_size=None
    )
    with pytest.raises(BackendUnavailableError) as info:
        backend.start()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(
        "postgresql-docker: tried to start a PostgreSQL container with testcontainers, but "
        "Docker is not reachable (no Docker daemon at "
    )
    assert message.endswith(
        "use --threadcreator-db=postgresql-local (local PostgreSQL binaries) or a server URL "
        "such as --threadcreator-db=postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    assert len(message) < 400


def test_docker_without_testcontainers_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "testcontainers.community.postgres", None)
    monkeypatch.setitem(sys.modules, "testcontainers.postgres", None)
    backend = make_postgres_backend(
        "postgresql-docker", worker_id="gw0", run_id="abc", pool_size=None
    )
    with pytest.raises(BackendUnavailableError) as info:
        backend.start()
    assert str(info.value).startswith(
        "postgresql-docker: testcontainers is not installed; "
        "pip install 'pytest-threadcreator[docker]', or use --threadcreator-db=postgresql-local"
    )


def test_auto_mode_names_everything_it_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_binaries(explicit: str | None = None) -> str:
        raise BackendUnavailableError("postgresql-local: no PostgreSQL server binaries found")

    monkeypatch.setattr(pg_local, "find_pg_bindir", no_binaries)
    monkeypatch.setitem(sys.modules, "testcontainers.community.postgres", None)
    monkeypatch.setitem(sys.modules, "testcontainers.postgres", None)
    backend = PostgresBackend("auto", run_id="abc", environ={})
    with pytest.raises(BackendUnavailableError) as info:
        backend.start()
    message = str(info.value)
    assert message.startswith(
        "postgresql: no PostgreSQL server could be used. Tried: "
        "THREADCREATOR_POSTGRES_URL (not set); "
        "local binaries (no PostgreSQL server binaries found); "
        "Docker (testcontainers is not installed;"
    )
    assert "Set THREADCREATOR_POSTGRES_URL=postgresql+asyncpg://" in message


@needs_server
def test_auto_mode_prefers_the_environment_url() -> None:
    backend = PostgresBackend(
        "auto", run_id=new_run_id(), environ={"THREADCREATOR_POSTGRES_URL": SERVER_URL}
    )
    backend.start()
    try:
        assert backend.source == "url" and backend.cluster is None
        assert backend.describe().startswith("postgresql (")
    finally:
        backend.stop()


# -- background loop ---------------------------------------------------------------------------


def test_background_loop_runs_from_sync_code_and_other_loops() -> None:
    bg = BackgroundLoop("test-bg")
    try:

        async def where() -> int | None:
            await asyncio.sleep(0)
            return threading.get_ident()

        background_thread = bg.run(where())
        assert background_thread != threading.get_ident()

        async def caller() -> list[int | None]:
            return list(await asyncio.gather(*(bg.submit(where()) for _ in range(50))))

        assert set(asyncio.run(caller())) == {background_thread}
        assert set(asyncio.run(caller())) == {background_thread}  # a second caller loop
    finally:
        bg.close()
    bg.close()  # idempotent
    assert bg.closed
    with pytest.raises(BackgroundLoopClosed):
        bg.run(asyncio.sleep(0))


def test_background_loop_refuses_run_from_its_own_thread() -> None:
    bg = BackgroundLoop("test-bg")
    try:

        async def nested() -> str:
            with pytest.raises(BackgroundLoopError, match="own thread"):
                bg.run(asyncio.sleep(0))
            return "ok"

        assert bg.run(nested()) == "ok"
    finally:
        bg.close()


def test_cancelling_a_submit_cancels_the_background_task_and_waits_for_its_cleanup() -> None:
    bg = BackgroundLoop("test-bg")
    events: list[str] = []
    started = threading.Event()

    async def work() -> None:
        try:
            started.set()
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            events.append("cancelled")
            await asyncio.sleep(0.01)  # cleanup that itself awaits (like a ROLLBACK)
            events.append("cleaned up")
            raise

    async def caller() -> None:
        task = asyncio.ensure_future(bg.submit(work()))
        while not started.is_set():
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("caller saw CancelledError")

    try:
        asyncio.run(caller())
    finally:
        bg.close()
    assert events == ["cancelled", "cleaned up", "caller saw CancelledError"]


# -- backend lifecycle on the shared server ----------------------------------------------------


@needs_server
def test_clone_has_the_schema_and_no_session_stays_on_the_template(
    pg_backend: PostgresBackend, db: Database
) -> None:
    assert db.backend == "postgresql"
    assert db.name.startswith(f"tc_{pg_backend.run_id}_{pg_backend.worker_id}_")
    assert len(db.name) <= 63
    assert db.location == f"{pg_backend.address}/{db.name}"
    tables = _sync_fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database=db.name
    )
    assert [row["tablename"] for row in tables] == ["messages", "threads"]
    template = _sync_fetch(
        "SELECT datallowconn, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)"
        " AS sessions FROM pg_database d WHERE datname = $1",
        pg_backend.template,
    )
    assert template[0]["datallowconn"] is False and template[0]["sessions"] == 0
    assert db.name in pg_backend.leftovers()


@needs_server
@pytest.mark.asyncio
async def test_user_engine_and_store_see_the_same_rows(db: Database) -> None:
    thread, message = _rows()
    await db.store.create(thread, message, explicit_id=False)
    async with db.session() as session:
        count = (await session.execute(text("SELECT count(*) FROM threads"))).scalar_one()
    assert count == 1
    assert await db.count_threads() == 1 and await db.count_messages() == 1
    await db.check_integrity()
    db.dispose_engines()


@needs_server
def test_setup_hook_rows_reach_every_clone() -> None:
    backend = PostgresBackend("url", url=SERVER_URL, run_id=new_run_id(), worker_id="gw8")
    backend.start()
    try:

        def setup(template: Database) -> None:
            thread, message = _rows("seed_user", thread_id="thread_seed")
            asyncio.run(template.store.create(thread, message, explicit_id=True))

        backend.prepare_template(SCHEMA, setup)
        first = backend.create_database("one", isolation="fresh")
        second = backend.create_database("two", isolation="fresh")
        for database in (first, second):
            rows = _sync_fetch("SELECT id, user_id FROM threads", database=database.name)
            assert [(r["id"], r["user_id"]) for r in rows] == [("thread_seed", "seed_user")]
        backend.drop_database(first)
        assert backend.leftovers() == sorted([second.name, backend.template])
    finally:
        backend.stop()
        backend.stop()  # idempotent
    assert _databases_like(f"tc_{backend.run_id}_") == []


@needs_server
def test_reset_empties_the_tables_and_leaves_no_transaction_open(db: Database) -> None:
    async def fill(n: int) -> None:
        await asyncio.gather(*(db.store.create(*_rows(), explicit_id=False) for _ in range(n)))

    for rows in (3, 600):  # both sides of the DELETE / TRUNCATE switch
        asyncio.run(fill(rows))
        assert asyncio.run(db.count_threads()) == rows
        db.store.reset()
        assert asyncio.run(db.count_threads()) == 0
        assert asyncio.run(db.count_messages()) == 0
        assert asyncio.run(_idle_in_transaction(db.name)) == 0
    assert db.checked_out() == 0


@needs_server
def test_keep_database_renames_it_out_of_the_cleanup(pg_backend: PostgresBackend) -> None:
    database = pg_backend.create_database("kept one", isolation="fresh")
    old = database.name
    kept = pg_backend.keep_database(database)
    try:
        # named after its test even when it came from the spares (named "…_fresh")
        assert kept == database.name
        assert kept.startswith(f"tk_{pg_backend.run_id}_gw7_") and kept.endswith("_kept_one")
        assert database.location.endswith("/" + kept)
        assert _databases_like(kept) == [kept] and _databases_like(old) == []
        assert parse_database_name(kept) is None
        note = _notes(kept)[kept]
        assert note is not None and marked_run(note) is None, "no sweep takes a kept database"
        assert f'DROP DATABASE "{kept}"' in note, "the note says how to drop it"
    finally:
        _sync_fetch(f'DROP DATABASE IF EXISTS "{kept}" WITH (FORCE)')


@needs_server
def test_every_database_is_marked_as_the_runs_own_when_created(
    pg_backend: PostgresBackend, db: Database
) -> None:
    notes = _notes(pg_backend.template, db.name)
    assert {name: marked_run(note) for name, note in notes.items()} == {
        pg_backend.template: pg_backend.run_id,
        db.name: pg_backend.run_id,
    }


def test_marks_name_their_run_and_nothing_else_passes_for_one() -> None:
    assert marked_run(ownership_mark("a1b2c3")) == "a1b2c3"
    assert marked_run(ownership_mark("a1b2c3") + "; finished template") == "a1b2c3"
    lookalike_notes = ["", "a1b2c3", "tc_a1b2c3_master_1_clean", "backup of 2024 Q1"]
    for note in [None, *lookalike_notes, "pytest-threadcreator", ownership_mark("a1b2c3") + "X"]:
        assert marked_run(note) is None, note


@needs_server
def test_a_run_drops_only_what_it_marked_even_under_its_own_run_id() -> None:
    run = new_run_id()
    backend = PostgresBackend("url", url=SERVER_URL, run_id=run, worker_id="gw6", template_key="s1")
    # the user's databases, named exactly as this very run's would be
    lookalikes = [database_name(run, "gw6", 99, "user copy"), template_name(run, "gw5")]

    async def create() -> None:
        admin = await asyncpg.connect(**pg_connect_kwargs())
        try:
            for name in lookalikes:
                await _create_user_database(admin, name)
        finally:
            await admin.close()

    try:
        backend.start()
        backend.prepare_template(SCHEMA, None)
        clean = backend.create_database("clean", isolation="clean")
        fresh = backend.create_database("fresh", isolation="fresh")
        asyncio.run(create())
        assert backend.leftovers() == sorted([clean.name, fresh.name])  # the unmarked one: not
        backend.drop_database(fresh)
        backend.stop()  # the run's last backend: drops the rest of the run
        assert _databases_like(f"tc_{run}_") == sorted(lookalikes)
        assert [asyncio.run(_orders_in(name)) for name in lookalikes] == [100, 100]
    finally:
        backend.stop()
        for name in lookalikes:
            _sync_fetch(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@needs_server
def test_psycopg_url_serves_user_engines_while_the_store_uses_asyncpg() -> None:
    url = SERVER_URL.replace("+asyncpg", "+psycopg")
    backend = make_postgres_backend(url, worker_id="gw9", run_id=new_run_id(), pool_size=3)
    backend.start()
    try:
        backend.prepare_template(SCHEMA, None)
        database = backend.create_database("psycopg", isolation="clean")

        async def check() -> tuple[str, int]:
            await database.store.create(*_rows(), explicit_id=False)
            async with database.session() as session:
                count = (await session.execute(text("SELECT count(*) FROM messages"))).scalar_one()
            return database.engine.dialect.driver, count

        assert asyncio.run(check()) == ("psycopg", 1)
        assert isinstance(database.store, PgStore) and database.store.max_size == 3
        database.dispose_engines()
    finally:
        backend.stop()


# -- fresh databases cloned ahead ------------------------------------------------------------


def _marked_of(run_id: str, worker: str) -> list[str]:
    """The databases on the server that carry ``run_id``'s mark, of ``worker``, no template."""
    notes = _notes(*_databases_like(f"tc_{run_id}_{worker}_"))
    return sorted(
        name
        for name, note in notes.items()
        if marked_run(note) == run_id and "template" not in name
    )


@needs_server
def test_spares_are_marked_empty_schema_ready_and_take_no_schema_change_along() -> None:
    backend = PostgresBackend("url", url=SERVER_URL, run_id=new_run_id(), worker_id="gw9")
    backend.start()
    try:
        backend.prepare_template(SCHEMA, None)
        assert backend.plan is not None and backend.plan.spares == DEFAULT_SPARES
        first = backend.create_database("first", isolation="fresh")  # starts the tender
        # the first test changes the schema of its database and leaves rows behind
        for sql in ("ALTER TABLE threads ADD COLUMN leaked text", "CREATE TABLE leaked (id int)"):
            _sync_fetch(sql, database=first.name)
        asyncio.run(first.store.create(*_rows(), explicit_id=False))
        backend.drop_database(first)
        for label in ("second", "third", "fourth"):
            database = backend.create_database(label, isolation="fresh")
            assert database.name.endswith("_fresh"), "handed out from the spares"
            # with its store's first connection already open: the tender opened it
            assert _sessions_on(database.name) >= 1
            assert marked_run(_notes(database.name)[database.name]) == backend.run_id
            tables = _sync_fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
                database=database.name,
            )
            assert [row["tablename"] for row in tables] == ["messages", "threads"]
            columns = _sync_fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'threads'",
                database=database.name,
            )
            assert "leaked" not in {row["column_name"] for row in columns}
            assert asyncio.run(database.count_threads()) == 0
            assert asyncio.run(database.count_messages()) == 0
            asyncio.run(database.store.create(*_rows(), explicit_id=False))  # it works
            # the spares on the server: the ones being made or ready, within the bound
            in_use = sorted([database.name, backend.template])
            assert backend.leftovers() == in_use, "the dropped ones are gone"
            stock = [n for n in _marked_of(backend.run_id, "gw9") if n != database.name]
            assert len(stock) <= backend.plan.spares + backend.plan.spares, stock
            backend.drop_database(database)
            assert backend.leftovers() == [backend.template]  # waits for the background drops
            if _databases_like(database.name):  # left as found: a spare again, with at most
                # one of its connections (none when enough spares are ready with theirs)
                assert _sessions_on(database.name) <= 1, "one connection kept, the others closed"
            else:
                assert _sessions_on(database.name) == 0, "its connections closed before the drop"
    finally:
        backend.stop()
    assert _databases_like(f"tc_{backend.run_id}_") == [], "the spares go at stop"
    assert _sessions_on(f"tc_{backend.run_id}_%") == 0, "and every connection the tender opened"


@needs_server
def test_a_spare_made_while_the_leftovers_are_listed_is_not_one() -> None:
    backend = PostgresBackend("url", url=SERVER_URL, run_id=new_run_id(), worker_id="gw9")
    backend.start()
    try:
        backend.prepare_template(SCHEMA, None)
        used = backend.create_database("first", isolation="fresh")  # starts the tender
        spares = backend._spares
        assert spares is not None
        deadline = time.monotonic() + 30
        while not spares._ready:
            assert time.monotonic() < deadline, "no spare made in 30 s"
            time.sleep(0.01)
        late = spares._ready[0][0]
        real, looks = spares.stock, []

        def stock() -> set[str]:
            looks.append(1)  # the first look: as if ``late`` were made just after it
            return real() - {late} if len(looks) == 1 else real()

        spares.stock = stock  # type: ignore[method-assign]
        assert late not in backend.leftovers()
        assert len(looks) == 2, "the tender is asked again once the server has answered"
        del spares.stock
        backend.drop_database(used)
    finally:
        backend.stop()


def _sessions_on(name: str) -> int:
    """Sessions connected to the database ``name`` (a LIKE pattern)."""
    rows = _sync_fetch("SELECT count(*) AS n FROM pg_stat_activity WHERE datname LIKE $1", name)
    return int(rows[0]["n"])


@needs_server
def test_without_room_for_a_tender_fresh_databases_are_cloned_on_demand() -> None:
    backend = PostgresBackend("url", url=SERVER_URL, run_id=new_run_id(), worker_id="gw9")
    backend.start()
    try:
        backend.prepare_template(SCHEMA, None)
        assert backend.plan is not None
        backend.plan = plan_pools(14, reserved=3, workers=1)  # 6 usable: no tender
        assert backend.plan.spares == 0
        names = []
        for label in ("one", "two"):
            database = backend.create_database(label, isolation="fresh")
            names.append(database.name)
            backend.drop_database(database)
            assert backend.leftovers() == [backend.template]
        assert len(set(names)) == 2 and all(name.endswith("_fresh") for name in names)
    finally:
        backend.stop()
    assert _databases_like(f"tc_{backend.run_id}_") == []


SPARES_INNER = """
import asyncio, os, pathlib

import asyncpg
import pytest
from pytest_threadcreator.backends.postgresql.janitor import marked_run, parse_database_name

SEEN = pathlib.Path(__file__).parent / "seen"


async def marked_of_worker(name):
    parsed = parse_database_name(name)
    prefix = f"tc_{parsed.run_id}_{parsed.worker_id}_"
    conn = await asyncpg.connect(os.environ["INNER_DSN"])
    try:
        rows = await conn.fetch(
            "SELECT datname, shobj_description(oid, 'pg_database') AS note FROM pg_database "
            "WHERE starts_with(datname, $1) AND datname NOT LIKE '%template'", prefix
        )
    finally:
        await conn.close()
    return [r["datname"] for r in rows if marked_run(r["note"]) == parsed.run_id]


@pytest.mark.asyncio
@pytest.mark.threadcreator(isolation="fresh")
@pytest.mark.parametrize("n", range(24))
async def test_fresh(n, threadcreator_db, thread_creator, user_context):
    assert await threadcreator_db.count_threads() == 0
    await thread_creator.create_thread_with_message(user_context, "hello")
    present = await marked_of_worker(threadcreator_db.name)
    SEEN.mkdir(exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "master")
    with open(SEEN / f"{worker}.txt", "a") as seen:
        seen.write(f"{threadcreator_db.name}\\t{len(present)}\\n")
"""


@needs_server
def test_spares_stay_within_their_bound_per_worker_and_nothing_is_left(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_spares=SPARES_INNER)
    dsn = pg_connect_kwargs()
    monkeypatch.setenv(
        "INNER_DSN", f"postgresql://{dsn['user']}@{dsn['host']}:{dsn['port']}/postgres"
    )
    if dsn.get("password"):
        monkeypatch.setenv("PGPASSWORD", str(dsn["password"]))
    # subprocess: xdist workers are processes
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--threadcreator-db={SERVER_URL}", "-n", "2"
    )
    result.assert_outcomes(passed=24)
    seen: dict[str, list[tuple[str, int]]] = {}
    for path in sorted((pytester.path / "seen").glob("*.txt")):
        for line in path.read_text().splitlines():
            name, count = line.split("\t")
            seen.setdefault(path.stem, []).append((name, int(count)))
    assert sorted(seen) == ["gw0", "gw1"]
    spares = plan_pools(200, workers=2).spares
    runs = set()
    for worker, rows in seen.items():
        # the test's own, the spares ready or being made, the ones waiting to be dropped
        assert max(count for _, count in rows) <= 1 + spares + spares, (worker, rows)
        assert any(name.endswith("_fresh") for name, _ in rows), "the spares served tests"
        runs |= {parse_database_name(name).run_id for name, _ in rows}  # type: ignore[union-attr]
    (run,) = runs
    assert _databases_like(f"tc_{run}_") == [], "nothing is left after the run"


# -- leftovers of other runs -------------------------------------------------------------------


@needs_server
def test_a_dead_runs_databases_go_and_a_live_runs_stay() -> None:
    dead, live = new_run_id(), new_run_id()
    foreign = f"tcx_{dead}_not_ours"
    dead_names = [template_name(dead, "gw0"), database_name(dead, "gw0", 1, "left behind")]
    live_names = [template_name(live, "gw1"), database_name(live, "gw1", 1, "still running")]
    # named as the dead run's, but never marked: a user's database, which stays
    unmarked = [database_name(dead, "gw0", 2, "user copy"), template_name(dead, "gw3")]

    present: list[str] = []

    async def scenario() -> None:
        admin = await asyncpg.connect(**pg_connect_kwargs())
        holder = await asyncpg.connect(**pg_connect_kwargs())
        try:
            # The live run's process holds its lock, as a running backend does, from before its
            # databases exist (another run's cleanup may start at any moment on a shared server).
            await holder.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(live))
            for name, run in [*((n, dead) for n in dead_names), *((n, live) for n in live_names)]:
                await admin.execute(f'CREATE DATABASE "{name}"')
                await admin.execute(f"COMMENT ON DATABASE \"{name}\" IS '{ownership_mark(run)}'")
            for name in [*unmarked, foreign]:
                await _create_user_database(admin, name)
            newcomer = PostgresBackend("url", url=SERVER_URL, run_id=new_run_id())
            await asyncio.to_thread(newcomer.start)
            rows = await admin.fetch("SELECT datname FROM pg_database")
            present.extend(row["datname"] for row in rows)
            await asyncio.to_thread(newcomer.stop)
        finally:
            await holder.close()
            for name in [*dead_names, *live_names, *unmarked, foreign]:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    asyncio.run(scenario())
    # Under xdist another worker's backend may start meanwhile and be the one that removes the
    # dead run's databases; what matters is that they are gone and the others are not.
    assert all(name not in present for name in dead_names)
    assert all(name in present for name in [*live_names, *unmarked, foreign])


@needs_server
def test_a_database_the_dead_runs_last_session_renamed_is_swept_too() -> None:
    """A killed run's last statement (its tender renaming a used database into a spare) may
    land after the sweeper listed the run's databases and before it gets the run's lock: the
    sweep lists them again under the lock, so the renamed one goes as well."""
    dead, sweeper_run = new_run_id(), new_run_id()
    used = database_name(dead, "gw0", 1, "used")
    renamed = database_name(dead, "gw0", 2, "fresh")
    gone: list[str] = []

    class RenameBeforeTheLock:
        """The sweeper's connection; the dead run's session renames and quits (freeing the
        lock) just before the sweeper first asks for the lock."""

        def __init__(self, conn: Any, dying: Any) -> None:
            self._conn, self._dying = conn, dying

        async def fetchval(self, sql: str, *args: Any) -> Any:
            if "pg_try_advisory_lock" in sql and self._dying is not None:
                dying, self._dying = self._dying, None
                pid = dying.get_server_pid()
                await dying.execute(f'ALTER DATABASE "{used}" RENAME TO "{renamed}"')
                await dying.close()
                # the server frees the session's lock once its backend has exited
                held = "SELECT count(*) FROM pg_locks WHERE pid = $1"
                for _ in range(1500):
                    if not await self._conn.fetchval(held, pid):
                        break
                    await asyncio.sleep(0.01)
            return await self._conn.fetchval(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    async def scenario() -> None:
        admin = await asyncpg.connect(**pg_connect_kwargs())
        dying = await asyncpg.connect(**pg_connect_kwargs())
        try:
            await dying.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(dead))
            await admin.execute(f'CREATE DATABASE "{used}"')
            await admin.execute(f"COMMENT ON DATABASE \"{used}\" IS '{ownership_mark(dead)}'")
            await remove_dead_runs(RenameBeforeTheLock(admin, dying), sweeper_run)
            rows = await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", [used, renamed]
            )
            gone.extend({used, renamed} - {row["datname"] for row in rows})
        finally:
            await dying.close()
            for name in (used, renamed):
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    asyncio.run(scenario())
    assert sorted(gone) == sorted([used, renamed]), "the renamed database was left behind"


# -- the store: create, explicit ids, failures -------------------------------------------------


@needs_server
@pytest.mark.asyncio
async def test_fast_path_writes_both_rows_with_json_as_python_objects(db: Database) -> None:
    thread, message = _rows()
    await db.store.create(thread, message, explicit_id=False)
    threads = await db.store.fetch_all(select(T).where(T.c.id == thread["id"]))
    messages = await db.store.fetch_all(select(M).where(M.c.thread_id == thread["id"]))
    assert threads == [thread]
    assert messages == [message]
    assert messages[0]["content"][0]["text"]["value"] == "hello"
    # A plain connection of our own sees the committed rows (JSON as text).
    raw = await pg_fetch(
        "SELECT t.id, t.metadata_::text AS meta, m.id AS mid FROM threads t JOIN messages m "
        "ON m.thread_id = t.id",
        database=db.name,
    )
    assert [(r["id"], r["mid"]) for r in raw] == [(thread["id"], message["id"])]
    assert '"source": "test"' in raw[0]["meta"]


@needs_server
@pytest.mark.asyncio
async def test_fetch_all_binds_user_strings_and_lists_as_parameters(db: Database) -> None:
    nasty = "O'Brien'); DROP TABLE threads; --"
    thread, message = _rows()
    thread["title"] = nasty
    await db.store.create(thread, message, explicit_id=False)
    stmt = select(T.c.id.label("tid"), T.c.title).where(
        T.c.title == nasty,
        T.c.id.in_([thread["id"], "other"]),
        T.c.metadata_["source"].as_string() == "test",
    )
    assert await db.store.fetch_all(stmt) == [{"tid": thread["id"], "title": nasty}]
    assert db.store.fetch_all_sync(stmt) == [{"tid": thread["id"], "title": nasty}]


@needs_server
@pytest.mark.asyncio
@pytest.mark.parametrize("stepwise", [False, True], ids=["fast", "stepwise"])
async def test_explicit_duplicate_id_reports_the_owner(db: Database, stepwise: bool) -> None:
    decide = (lambda step: None) if stepwise else None
    thread, message = _rows("owner_1", thread_id="thread_fixed")
    await db.store.create(thread, message, explicit_id=True, decide=decide)
    with pytest.raises(ThreadIdTaken) as info:
        await db.store.create(
            *_rows("someone_else", thread_id="thread_fixed"), explicit_id=True, decide=decide
        )
    assert info.value.owner == "owner_1"
    # Without explicit_id the driver's error propagates unchanged.
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.store.create(
            *_rows("x", thread_id="thread_fixed"), explicit_id=False, decide=decide
        )
    assert await db.count_threads() == 1 and await db.count_messages() == 1
    assert db.checked_out() == 0


@needs_server
@pytest.mark.asyncio
@pytest.mark.parametrize("stepwise", [False, True], ids=["fast", "stepwise"])
async def test_a_failing_message_insert_leaves_neither_row(db: Database, stepwise: bool) -> None:
    decide = (lambda step: None) if stepwise else None
    thread, message = _rows(role=None)  # messages.role is NOT NULL
    with pytest.raises(asyncpg.NotNullViolationError):
        await db.store.create(thread, message, explicit_id=False, decide=decide)
    assert await db.count_threads() == 0 and await db.count_messages() == 0
    assert db.checked_out() == 0


@needs_server
@pytest.mark.asyncio
@pytest.mark.parametrize("step", ["thread_insert", "message_insert", "commit"])
async def test_an_injected_fault_at_any_step_leaves_nothing(db: Database, step: str) -> None:
    seen: list[str] = []

    def fail_at(current: str) -> FaultAction | None:
        seen.append(current)
        return FaultAction("fail", current, call=7) if current == step else None

    with pytest.raises(InjectedFault) as info:
        await db.store.create(*_rows(), explicit_id=False, decide=fail_at)
    assert (info.value.step, info.value.call) == (step, 7)
    assert seen[-1] == step
    assert await db.count_threads() == 0 and await db.count_messages() == 0

    def cancel_at(current: str) -> FaultAction | None:
        return FaultAction("cancel", current) if current == step else None

    with pytest.raises(asyncio.CancelledError):
        await db.store.create(*_rows(), explicit_id=False, decide=cancel_at)
    assert await db.count_threads() == 0 and await db.count_messages() == 0
    assert db.checked_out() == 0
    assert await _idle_in_transaction(db.name) == 0


@needs_server
@pytest.mark.asyncio
async def test_injected_delays_still_commit(db: Database) -> None:
    def delay(step: str) -> FaultAction:
        return FaultAction("delay", step, seconds=0.001)

    thread, message = _rows()
    await db.store.create(thread, message, explicit_id=False, decide=delay)
    assert await db.count_threads() == 1 and await db.count_messages() == 1


@needs_server
@pytest.mark.asyncio
async def test_200_randomly_cancelled_creates_are_all_or_nothing(db: Database) -> None:
    rng = random.Random(20240611)
    rows = [_rows(f"user_{i % 17}") for i in range(200)]

    def decider_for(i: int) -> Any:
        if i % 2 == 0:
            return None  # fast path: one statement
        pause = rng.choice(["thread_insert", "message_insert", "commit"])
        return lambda step: FaultAction("delay", step, seconds=0.002) if step == pause else None

    async def create(i: int) -> None:
        thread, message = rows[i]
        await db.store.create(thread, message, explicit_id=False, decide=decider_for(i))

    # A first, uncancelled batch grows the pool and tells how long such a batch takes here.
    began = time.perf_counter()
    await asyncio.gather(*(db.store.create(*_rows("warm"), explicit_id=False) for _ in range(200)))
    batch_seconds = time.perf_counter() - began
    tasks = [asyncio.ensure_future(create(i)) for i in range(200)]
    # Cancel each call at a random moment across the batch's lifetime: before it starts, while
    # its statement or transaction runs, or after it finished (then cancel() is a no-op). The
    # invariants below hold whatever the timing; the timing only spreads the cancellation points.
    loop = asyncio.get_running_loop()
    for task in tasks:
        loop.call_later(rng.uniform(0, 1.2 * batch_seconds), task.cancel)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert cancelled > 0
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results

    thread_ids = {r["id"] for r in await db.store.fetch_all(select(T.c.id))}
    message_threads = [r["thread_id"] for r in await db.store.fetch_all(select(M.c.thread_id))]
    assert len(message_threads) == len(set(message_threads)) == len(thread_ids)
    assert set(message_threads) == thread_ids
    for (thread, _), result in zip(rows, results, strict=True):
        if result is None:
            assert thread["id"] in thread_ids  # completed calls committed
    committed_anyway = sum(
        isinstance(r, asyncio.CancelledError) and t["id"] in thread_ids
        for (t, _), r in zip(rows, results, strict=True)
    )
    print(
        f"cancelled {cancelled}/200, of which committed {committed_anyway}; rows {len(thread_ids)}"
    )
    assert db.checked_out() == 0
    assert await _idle_in_transaction(db.name) == 0
    await db.check_integrity()


# -- transient errors ----------------------------------------------------------------------------


async def _serialization_conflict(
    first: Any, second: Any, begin: str, run: Any, tag: str
) -> BaseException:
    """Two SERIALIZABLE transactions each read the set the other writes; one must fail."""
    for conn in (first, second):
        await run(conn, begin)
    for conn in (first, second):
        await run(conn, f"SELECT count(*) FROM threads WHERE user_id = '{tag}'")
    failures: list[BaseException] = []
    for i, conn in enumerate((first, second)):
        try:
            await run(
                conn,
                "INSERT INTO threads (id, object, user_id, status, created_at, metadata_) "
                f"VALUES ('thread_{tag}_{i}', 'thread', '{tag}', 'active', 0, '{{}}')",
            )
            await run(conn, "COMMIT")
        except Exception as exc:
            failures.append(exc)
            await run(conn, "ROLLBACK")
    assert len(failures) == 1, failures
    return failures[0]


@needs_server
@pytest.mark.asyncio
async def test_serialization_failures_are_transient_on_asyncpg_and_sqlalchemy(db: Database) -> None:
    kwargs = pg_connect_kwargs(db.name)
    first, second = await asyncpg.connect(**kwargs), await asyncpg.connect(**kwargs)
    try:

        async def run(conn: Any, sql: str) -> None:
            await conn.execute(sql)

        exc = await _serialization_conflict(
            first, second, "BEGIN ISOLATION LEVEL SERIALIZABLE", run, "tag0"
        )
    finally:
        await first.close()
        await second.close()
    assert isinstance(exc, asyncpg.SerializationError) and exc.sqlstate == "40001"
    assert db.store.is_transient(exc)

    engine = create_async_engine(db.url)
    try:
        conns = [await engine.connect() for _ in range(2)]

        async def run_sa(conn: Any, sql: str) -> None:
            await conn.exec_driver_sql(sql)

        wrapped = await _serialization_conflict(
            conns[0], conns[1], "BEGIN ISOLATION LEVEL SERIALIZABLE", run_sa, "tag1"
        )
        for conn in conns:
            await conn.close()
    finally:
        await engine.dispose()
    assert isinstance(wrapped, DBAPIError) and wrapped.orig.sqlstate == "40001"  # type: ignore[union-attr]
    assert db.store.is_transient(wrapped)
    assert not db.store.is_transient(ValueError("40001"))


@needs_server
@pytest.mark.asyncio
async def test_serialization_failures_are_transient_on_psycopg(db: Database) -> None:
    psycopg = pytest.importorskip("psycopg")
    url = _async_url(SERVER_URL, "test")
    conninfo = f"host={url.host} port={url.port or 5432} user={url.username} dbname={db.name}" + (
        f" password={url.password}" if url.password else ""
    )
    first = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    second = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    try:

        async def run(conn: Any, sql: str) -> None:
            await conn.execute(sql)

        exc = await _serialization_conflict(
            first, second, "BEGIN ISOLATION LEVEL SERIALIZABLE", run, "tag2"
        )
    finally:
        await first.close()
        await second.close()
    assert isinstance(exc, psycopg.errors.SerializationFailure)
    assert isinstance(exc, psycopg.OperationalError)
    assert db.store.is_transient(exc)

    engine = create_async_engine(db.url.replace("+asyncpg", "+psycopg"))
    try:
        conns = [await engine.connect() for _ in range(2)]

        async def run_sa(conn: Any, sql: str) -> None:
            await conn.exec_driver_sql(sql)

        wrapped = await _serialization_conflict(
            conns[0], conns[1], "BEGIN ISOLATION LEVEL SERIALIZABLE", run_sa, "tag3"
        )
        for conn in conns:
            await conn.close()
    finally:
        await engine.dispose()
    assert isinstance(wrapped, DBAPIError) and type(wrapped).__name__ == "OperationalError"
    assert wrapped.orig.sqlstate == "40001"  # type: ignore[union-attr]
    assert db.store.is_transient(wrapped)


# -- local cluster ---------------------------------------------------------------------------


@needs_binaries
def test_local_cluster_starts_as_root_with_a_short_socket_path() -> None:
    cluster = LocalCluster()
    cluster.start()
    directory = Path(cluster.socket_dir)
    try:
        socket = directory / f".s.PGSQL.{cluster.port}"
        assert socket.exists() and len(str(socket).encode()) < 107
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to postgres
            assert directory.stat().st_uid != 0

        async def settings() -> list[Any]:
            conn = await asyncpg.connect(
                host=cluster.socket_dir, port=cluster.port, user="postgres", database="postgres"
            )
            try:
                return [
                    await conn.fetchval(f"SHOW {name}") for name in ("fsync", "max_connections")
                ]
            finally:
                await conn.close()

        assert asyncio.run(settings()) == ["off", "200"]
        assert cluster.url.startswith(f"postgresql+asyncpg://postgres@/postgres?host={directory}")
    finally:
        cluster.stop()
    cluster.stop()  # idempotent
    assert not directory.exists()


@needs_binaries
def test_a_cluster_whose_owner_died_is_removed_by_the_next_start() -> None:
    cluster = LocalCluster()
    cluster.start()
    directory = Path(cluster.socket_dir)
    pid = int((directory / "data" / "postmaster.pid").read_text().split()[0])
    # Simulate a killed owner: its lock goes away, the directory and server stay.
    assert cluster._lock is not None
    cluster._lock.close()
    cluster._lock = None
    cluster.directory = None  # forget it, as a dead process would
    server, cluster._postmaster = cluster._postmaster, None
    assert server is not None and server.pid == pid
    removed = remove_stale_clusters(str(directory.parent))
    assert str(directory) in removed
    assert not directory.exists()
    # the postmaster exited (this process started it, so it reaps it: no zombie to look at)
    assert server.wait(timeout=10) is not None


@pytest.fixture
def cluster_parent() -> Iterator[Path]:
    """A short parent directory of clusters (socket paths), traversable by the server's user."""
    parent = Path(tempfile.mkdtemp(prefix="tcc-", dir="/tmp"))
    parent.chmod(0o755)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def _cached_initdb(parent: Path) -> Path:
    caches = sorted(parent.glob("threadcreator-initdb-*"))
    assert len(caches) == 1, caches
    assert (caches[0] / "data" / "PG_VERSION").is_file()
    assert not list(parent.glob(".threadcreator-initdb-*")), "no staging directory is left"
    return caches[0]


async def _fsync_setting(cluster: LocalCluster) -> str:
    conn = await asyncpg.connect(
        host=cluster.socket_dir, port=cluster.port, user="postgres", database="postgres"
    )
    try:
        return str(await conn.fetchval("SHOW fsync"))
    finally:
        await conn.close()


@needs_binaries
def test_a_second_cluster_starts_from_the_cached_initdb_output(cluster_parent: Path) -> None:
    first = LocalCluster(parent_dir=str(cluster_parent))
    first.start()
    first.stop()
    cache = _cached_initdb(cluster_parent)
    # a file initdb never writes: the next cluster has it only if its data came from the cache
    (cache / "data" / "from-the-cache").write_text("1")

    second = LocalCluster(parent_dir=str(cluster_parent))
    second.start()
    try:
        assert (second.data_dir / "from-the-cache").is_file()
        assert asyncio.run(_fsync_setting(second)) == "off"  # configured after the copy
        assert "# pytest-threadcreator" not in (cache / "data" / "postgresql.conf").read_text()
    finally:
        second.stop()


@needs_binaries
@pytest.mark.parametrize("flaw", ["writable by others", "a link", "incomplete"])
def test_a_cache_that_cannot_be_trusted_is_not_used(cluster_parent: Path, flaw: str) -> None:
    first = LocalCluster(parent_dir=str(cluster_parent))
    first.start()
    first.stop()
    cache = _cached_initdb(cluster_parent)
    (cache / "data" / "from-the-cache").write_text("1")
    if flaw == "writable by others":
        cache.chmod(0o777)
    elif flaw == "a link":
        real = cluster_parent / "elsewhere"
        cache.rename(real)
        cache.symlink_to(real)
    else:
        (cache / "data" / "PG_VERSION").unlink()

    second = LocalCluster(parent_dir=str(cluster_parent))
    second.start()
    try:
        assert not (second.data_dir / "from-the-cache").exists(), "initdb ran instead"
        assert asyncio.run(_fsync_setting(second)) == "off"
    finally:
        second.stop()


def test_clusters_live_in_memory_when_it_has_room(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert cluster_dirs.MEMORY_PARENT == "/dev/shm"
    monkeypatch.setattr(cluster_dirs, "MEMORY_PARENT", str(tmp_path))  # stands in for it
    monkeypatch.setattr(cluster_dirs, "MEMORY_MIN_FREE", 1)
    assert cluster_dirs.short_parent() == str(tmp_path)
    monkeypatch.setattr(cluster_dirs, "MEMORY_MIN_FREE", 1 << 62)  # more than any machine has
    assert cluster_dirs.short_parent() == "/tmp"
    monkeypatch.setattr(cluster_dirs, "MEMORY_PARENT", str(tmp_path / "missing"))
    monkeypatch.setattr(cluster_dirs, "MEMORY_MIN_FREE", 1)
    assert cluster_dirs.short_parent() == "/tmp"


@needs_binaries
def test_a_dead_run_cluster_is_swept_in_every_parent_a_run_may_choose(
    monkeypatch: pytest.MonkeyPatch, cluster_parent: Path
) -> None:
    # the memory parent, stood in for: a run chooses it and sweeps /tmp too
    monkeypatch.setattr(cluster_dirs, "MEMORY_PARENT", str(cluster_parent))
    monkeypatch.setattr(cluster_dirs, "MEMORY_MIN_FREE", 1)
    assert "/tmp" in cluster_dirs.default_parents()
    dead = LocalCluster(parent_dir="/tmp")
    dead.start()
    directory = Path(dead.socket_dir)
    assert dead._lock is not None
    dead._lock.close()  # its owner is gone, as after a kill
    dead._lock = None
    server, dead._postmaster = dead._postmaster, None
    try:
        fresh = LocalCluster()
        fresh.start()  # in the chosen parent: its start sweeps the other one too
        try:
            assert Path(fresh.socket_dir).parent == cluster_parent
            assert not directory.exists()
        finally:
            fresh.stop()
    finally:
        if server is not None:
            pg_local._stop_postmaster(server)
        shutil.rmtree(directory, ignore_errors=True)


@needs_binaries
def test_live_clusters_are_left_alone(tmp_path: Path) -> None:
    cluster = LocalCluster()
    cluster.start()
    try:
        assert str(cluster.directory) not in remove_stale_clusters(
            str(Path(cluster.socket_dir).parent)
        )
        assert Path(cluster.socket_dir).exists()
    finally:
        cluster.stop()
    # Directories without the marker are never touched.
    stranger = tmp_path / "tc-stranger"
    stranger.mkdir()
    (stranger / "owner.lock").touch()
    assert remove_stale_clusters(str(tmp_path)) == [] and stranger.exists()
    with open(stranger / "owner.lock", "rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


@needs_binaries
def test_postgresql_local_backend_end_to_end() -> None:
    backend = make_postgres_backend(
        "postgresql-local", worker_id="gw0", run_id=new_run_id(), pool_size=None
    )
    backend.start()
    directory = backend.cluster.socket_dir if backend.cluster else ""
    try:
        assert backend.source == "local"
        assert backend.describe().startswith(f"postgresql-local ({directory}, PostgreSQL ")
        assert backend.plan is not None and backend.plan.max_connections == 200
        backend.prepare_template(SCHEMA, None)
        database = backend.create_database("local", isolation="fresh")

        async def roundtrip() -> int:
            await database.store.create(*_rows(), explicit_id=False)
            async with database.session() as session:
                return int(
                    (await session.execute(text("SELECT count(*) FROM threads"))).scalar_one()
                )

        assert asyncio.run(roundtrip()) == 1
        database.dispose_engines()
        backend.drop_database(database)
    finally:
        backend.stop()
    assert directory and not Path(directory).exists()


@needs_server
@pytest.mark.asyncio
async def test_watch_statements_reports_each_statement_the_store_runs(db: Database) -> None:
    seen: list[tuple[str, str]] = []
    await db.store.create(*_rows(), explicit_id=False)  # before watching: not reported
    await db.store.watch_statements(lambda label, sql: seen.append((label, sql)))
    await db.store.create(*_rows(), explicit_id=False)
    assert [sql.split()[0] for _, sql in seen] == ["WITH"]  # one statement, both rows
    assert seen[0][0].startswith(f"store {db.name} (pid ")
    seen.clear()
    await db.store.create(*_rows(), explicit_id=False, decide=lambda step: None)
    assert [sql.split()[0].rstrip(";") for _, sql in seen] == [
        "BEGIN",
        "INSERT",
        "INSERT",
        "COMMIT",
    ]
    await db.store.watch_statements(None)
    seen.clear()
    await db.store.create(*_rows(), explicit_id=False)
    assert seen == []


@needs_binaries
def test_a_cluster_that_fails_to_start_says_why_and_leaves_nothing() -> None:
    cluster = LocalCluster(settings={"shared_buffers": "999TB"})
    with pytest.raises(BackendUnavailableError) as info:
        cluster.start()
    message = str(info.value)
    assert message.startswith("postgresql-local: the server exited with 1 while starting | ")
    assert "server log: " in message and 'invalid value for parameter "shared_buffers"' in message
    assert message.endswith("--threadcreator-db=postgresql+asyncpg://user@host:5432/postgres")
    match = re.search(r"(/\S+/tc-[^/\s]+)/data/postgresql\.conf", message)
    assert match is not None and not Path(match.group(1)).exists()


# -- rollback's held connection ----------------------------------------------------------------

ADAPTER_ARGS_INNER = """
import pytest
from sqlalchemy import text

@pytest.mark.asyncio
@pytest.mark.parametrize("i", range(2))
async def test_the_urls_adapter_arguments_reach_the_held_connection(threadcreator_db, i):
    async with threadcreator_db.session() as session:
        await session.execute(text("SELECT 1"))
        adapter = (await (await session.connection()).get_raw_connection()).dbapi_connection
        assert adapter._prepared_statement_cache is None, "the URL asked for no statement cache"
"""


@needs_server
def test_rollback_keeps_the_urls_asyncpg_adapter_arguments(pytester: pytest.Pytester) -> None:
    # prepared_statement_cache_size=0 is how users behind PgBouncer turn SQLAlchemy's cache off:
    # the connection rollback keeps for the run must honour it like any other connection
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_adapter=ADAPTER_ARGS_INNER)
    url = f"{SERVER_URL}?prepared_statement_cache_size=0"
    for_clean = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={url}")
    for_clean.assert_outcomes(passed=2)  # the same check holds in clean: the test is sound
    result = pytester.runpytest(
        "-p", "no:cacheprovider", f"--threadcreator-db={url}", "--threadcreator-isolation=rollback"
    )
    result.assert_outcomes(passed=2)
