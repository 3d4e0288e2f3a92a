"""A name is no proof of ownership: a user's database that looks like the plugin's survives.

The plugin drops only databases it marked as its own when it created them (SPEC §8). Here a
user's databases with rows, named like the plugin's (the three names that a name-based sweep once
dropped, and names of exactly the plugin's format, some with the run id of a killed run), sit on
the server through a normal run, a SIGKILLed run (with fresh databases cloned ahead by its
tender) and a ``-n 2`` run that sweeps the killed run's leftovers: as the superuser, and as an
ordinary role with CREATEDB that owns them and runs the plugin.
"""

from __future__ import annotations

import asyncio
import fcntl
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from pytest_threadcreator.backends.pools import DEFAULT_SPARES
from pytest_threadcreator.backends.postgresql.janitor import (
    marked_run,
    parse_database_name,
    run_lock_key,
)

from ..helpers import (
    PG_SERVER_URL,
    kill_mid_test,
    needs_marks,
    pg_connect_kwargs,
    pg_databases_of_run,
    pg_server_missing,
    start_pytest,
)

pytestmark = needs_marks(pg_server_missing())

#: The user's databases that one ordinary run of a name-matching sweep dropped.
REPORTED = ["tc_shop_eu_2024_backup", "tc_crm_prod_template", "tc_data_2024_q1_report"]
#: Names of exactly the plugin's format (run id, worker id, number and label, or template).
EXACT = ["tc_a1b2c3_master_1_clean", "tc_a1b2c3_gw0_template", "tc_a1b2c3_gw1_2_test_fresh"]
ROWS = 100

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

TESTS = """
import pytest

@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(4))
async def test_clean(n, threadcreator_db, thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, f"hello {n}")
    assert await threadcreator_db.count_threads() == 1

@pytest.mark.asyncio
@pytest.mark.threadcreator(isolation="fresh")
async def test_fresh(threadcreator_db, thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "fresh")
    assert await threadcreator_db.count_threads() == 1
"""

STUCK = """
import os, pathlib, time
import pytest

@pytest.mark.asyncio
@pytest.mark.threadcreator(isolation="fresh")
async def test_a_fresh_one_first(threadcreator_db, thread_creator, user_context):
    # the backend's tender starts cloning spare fresh databases ahead
    await thread_creator.create_thread_with_message(user_context, "fresh")

@pytest.mark.asyncio
async def test_stuck(threadcreator_db, thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "before the crash")
    pathlib.Path(os.environ["MARKER"]).write_text(threadcreator_db.name)
    while True:  # until the outer test kills this process
        time.sleep(1)
"""


@dataclass(frozen=True)
class Owner:
    """Who owns the lookalikes and runs the plugin."""

    url: str
    user: str
    password: str | None

    def connect_kwargs(self, database: str = "postgres") -> dict[str, Any]:
        return pg_connect_kwargs(database, url=self.url)


async def _run_admin(sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(**pg_connect_kwargs())
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _create_lookalikes(owner: Owner, names: list[str]) -> None:
    """The user's own databases, with rows, created by ``owner``."""
    admin = await asyncpg.connect(**owner.connect_kwargs())
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
            conn = await asyncpg.connect(**owner.connect_kwargs(name))
            try:
                await conn.execute(
                    "CREATE TABLE orders AS SELECT g AS id, 'order ' || g AS note "
                    f"FROM generate_series(1, {ROWS}) AS g"
                )
            finally:
                await conn.close()
    finally:
        await admin.close()


async def _rows_in(names: list[str]) -> dict[str, int | None]:
    """Rows of ``orders`` in each database; None for a database that is gone."""
    present = {row["datname"] for row in await _run_admin("SELECT datname FROM pg_database")}
    counts: dict[str, int | None] = {}
    for name in names:
        if name not in present:
            counts[name] = None
            continue
        conn = await asyncpg.connect(**pg_connect_kwargs(name))
        try:
            counts[name] = int(await conn.fetchval("SELECT count(*) FROM orders"))
        finally:
            await conn.close()
    return counts


def assert_all_survive(names: list[str], when: str) -> None:
    __tracebackhide__ = True
    counts = asyncio.run(_rows_in(names))
    lost = {name: n for name, n in counts.items() if n != ROWS}
    assert not lost, f"{when}: the user's databases were dropped or emptied: {lost}"


def _spares_of_run(run_id: str) -> tuple[list[str], list[str]]:
    """The run's fresh databases cloned ahead (``…_fresh``): those that carry the run's mark,
    and those that do not (yet: between their CREATE and their COMMENT)."""
    rows = asyncio.run(
        _run_admin(
            "SELECT datname, shobj_description(oid, 'pg_database') AS note FROM pg_database "
            "WHERE starts_with(datname, $1) AND datname LIKE '%\\_fresh'",
            f"tc_{run_id}_",
        )
    )
    marked = sorted(row["datname"] for row in rows if marked_run(row["note"]) == run_id)
    return marked, sorted(row["datname"] for row in rows if row["datname"] not in marked)


def _run_of(name: str) -> str:
    parsed = parse_database_name(name)
    assert parsed is not None, name
    return parsed.run_id


class _RunHold:
    """A session holding a run's lock shared, as the run's own sessions do: while it lasts, no
    sweeper (another test's backend starting beside this one under xdist) takes the run for
    dead and removes its databases before this test has looked at them."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.pid = 0

    def take(self, run_id: str) -> bool:
        if self.conn is None:
            import psycopg

            kw = pg_connect_kwargs()
            self.conn = psycopg.connect(
                host=kw.get("host"),
                port=kw.get("port"),
                user=kw.get("user"),
                password=kw.get("password"),
                dbname=kw.get("database"),
                autocommit=True,
            )
            self.conn.execute("SELECT pg_advisory_lock_shared(%s, %s)", run_lock_key(run_id))
            self.pid = self.conn.info.backend_pid
        return True

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _wait_run_gone(run_id: str, within_s: float = 30, but: int = 0) -> None:
    """Wait until no session of the (killed) run is left on the server: none holds its run lock.

    A statement the run had sent (a clone's ``CREATE DATABASE``) still finishes on the server
    after the process is gone; the session ends only then.
    """
    key = run_lock_key(run_id)
    deadline = time.monotonic() + within_s
    while asyncio.run(
        _run_admin(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 "
            "AND pid <> $3",
            key[0] & 0xFFFFFFFF,
            key[1] & 0xFFFFFFFF,
            but,
        )
    ):
        assert time.monotonic() < deadline, "the killed run's sessions never left the server"
        time.sleep(0.05)


def _tender_idle(run_id: str) -> bool:
    """All the run's spares are cloned and marked."""
    marked, unmarked = _spares_of_run(run_id)
    return not unmarked and len(marked) >= DEFAULT_SPARES


@pytest.fixture
def one_lookalike_scenario_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The lookalike names are fixed, so scenarios on one server (xdist workers) take turns."""
    root = tmp_path_factory.getbasetemp().parent
    with open(root / "threadcreator-lookalikes.lock", "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


@pytest.fixture(params=["superuser", "createdb_role"])
def owner(
    request: pytest.FixtureRequest, one_lookalike_scenario_at_a_time: None
) -> Iterator[Owner]:
    """The server's superuser (the URL's user), or a fresh role with CREATEDB only."""
    url = make_url(PG_SERVER_URL)
    if request.param == "superuser":
        yield Owner(PG_SERVER_URL, url.username or "", url.password)
        return
    role = f"threadcreator_owner_{secrets.token_hex(4)}"
    password = secrets.token_hex(8)
    asyncio.run(_run_admin(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'"))
    role_url = url.set(username=role, password=password).render_as_string(hide_password=False)
    try:
        yield Owner(role_url, role, password)
    finally:

        async def drop_role() -> None:
            rows = await _run_admin(
                "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE r.rolname = $1",
                role,
            )
            for row in rows:
                await _run_admin(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
            await _run_admin(f"DROP ROLE IF EXISTS {role}")

        asyncio.run(drop_role())


@pytest.fixture
def lookalikes(owner: Owner) -> Iterator[list[str]]:
    """The user's databases named like the plugin's, 100 rows each, owned by ``owner``."""
    names = [*REPORTED, *EXACT]
    asyncio.run(_create_lookalikes(owner, names))
    yield names

    async def drop() -> None:
        for name in names:
            await _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    asyncio.run(drop())


def _start_run(directory: Path, owner: Owner, *args: str, **env: str) -> subprocess.Popen[str]:
    db = f"--threadcreator-db={owner.url}"
    return start_pytest(directory, db, f"--basetemp={directory / 'tmp'}", *args, **env)


@pytest.mark.suite_independent
@pytest.mark.usefixtures("clean_environment")
def test_lookalike_databases_survive_runs_a_killed_run_and_the_sweep(
    pytester: pytest.Pytester,
    owner: Owner,
    lookalikes: list[str],
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_runs=TESTS, test_stuck=STUCK)

    # 1. an ordinary run (its start sweeps for dead runs, its end drops its own databases)
    db = f"--threadcreator-db={owner.url}"
    result = pytester.runpytest("-p", "no:cacheprovider", db, "test_runs.py")
    result.assert_outcomes(passed=5)
    assert_all_survive(lookalikes, "after a normal run")

    # 2. a run killed outright, mid-test: its databases stay behind
    marker = pytester.path / "database-name.txt"
    stuck = _start_run(pytester.path, owner, "test_stuck.py", MARKER=str(marker))
    # Killed once its tender has cloned and marked its spares: killed between a clone's CREATE
    # and its COMMENT, a run leaves that clone unmarked, not provably the plugin's, so kept.
    hold = _RunHold()
    name = kill_mid_test(
        stuck, marker, ready=lambda name: _tender_idle(_run_of(name)) and hold.take(_run_of(name))
    )
    dead = _run_of(name)
    _wait_run_gone(dead, but=hold.pid)
    assert pg_databases_of_run(dead), "a killed run leaves its databases"
    marked, unmarked = _spares_of_run(dead)
    assert marked, "among them, marked, the fresh ones cloned ahead"
    # The tender may still have begun a clone after it looked idle (a used database that failed
    # its recycle check is replaced): killed between its CREATE and its COMMENT, that clone is
    # not provably the plugin's, so every run keeps it (SPEC 8).
    assert_all_survive(lookalikes, "after a killed run")
    # the user's databases named exactly as the killed run's would be
    same_run = [
        f"tc_{dead}_master_99_user_copy",
        f"tc_{dead}_gw5_template",
        f"tc_{dead}_master_98_fresh",  # named like a spare
    ]
    asyncio.run(_create_lookalikes(owner, same_run))
    hold.release()  # the run is dead for every sweeper from here on
    try:
        # 3. the next run, under xdist: its workers sweep the killed run's databases
        run = _start_run(pytester.path, owner, "-n", "2", "test_runs.py")
        output = run.communicate(timeout=180)[0]
        assert run.returncode == 0, output
        assert "5 passed" in output, output
        left = sorted(pg_databases_of_run(dead))
        assert left == sorted([*same_run, *unmarked]), "only the killed run's marked ones go"
        assert_all_survive([*lookalikes, *same_run], "after the sweep by a -n 2 run")
    finally:

        async def drop() -> None:
            for name in [*same_run, *unmarked]:
                await _run_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        asyncio.run(drop())
