"""pytest-xdist: per-worker databases, one template per run, one local cluster per run.

Whole runs go through ``pytester.runpytest_subprocess`` (xdist workers are processes) on SQLite,
on the PostgreSQL server at ``$THREADCREATOR_POSTGRES_URL`` and on ``postgresql-local``; the
inner tests write down the database each got, and the setup hook counts its calls. The sharing
protocols themselves (build under a lock, the last backend of a run removes the template) are
tested directly on two backends of one run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_threadcreator import UserExecutionContext
from pytest_threadcreator.backends.postgresql.backend import PostgresBackend
from pytest_threadcreator.backends.postgresql.janitor import (
    MAX_IDENTIFIER_BYTES,
    RunLock,
    new_run_id,
    ownership_mark,
    parse_database_name,
    template_name,
)
from pytest_threadcreator.backends.postgresql.local import LocalCluster
from pytest_threadcreator.backends.sqlite import SqliteBackend
from pytest_threadcreator.creator import ThreadCreator
from pytest_threadcreator.database import Database
from pytest_threadcreator.errors import BackendUnavailableError, DatabaseError
from pytest_threadcreator.plugin.xdist import run_id_from_testrunuid
from pytest_threadcreator.runtime import Runtime, schema_key
from pytest_threadcreator.schema import default_schema

from ..helpers import PG_SERVER_URL as SERVER_URL
from ..helpers import (
    RECORD_KEPT_URLS,
    count_threads_in_kept_database,
    needs,
    needs_marks,
    pg_binaries_missing,
    pg_fetch,
    pg_server_missing,
)

SCHEMA = default_schema()

# Inner runs choose their backend by option, and are no xdist workers even when this suite is
# (their own workers get these variables from their controller).
pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.suite_independent]


# -- helpers ---------------------------------------------------------------------------------
def databases_of_run(run_id: str) -> list[str]:
    """The databases of ``run_id`` on the shared server."""
    pattern = f"tc_{run_id}_".replace("_", "\\_") + "%"
    rows = asyncio.run(pg_fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", pattern))
    return sorted(row["datname"] for row in rows)


needs_server = needs(pg_server_missing())
needs_binaries = needs(pg_binaries_missing())

SQLITE = pytest.param("sqlite", id="sqlite")
POSTGRESQL = pytest.param(SERVER_URL, id="postgresql", marks=needs_marks(pg_server_missing()))


INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

CONFTEST = """
import asyncio
import dataclasses
import os
from pathlib import Path

from pytest_threadcreator import ThreadCreator, UserExecutionContext

HERE = Path(__file__).parent


def pytest_threadcreator_setup_database(database):
    with open(HERE / "hook_calls.txt", "a") as calls:
        calls.write(os.environ.get("PYTEST_XDIST_WORKER", "master") + "\\n")
    seed = UserExecutionContext(user_id="seed_owner")  # every test database starts with it
    asyncio.run(ThreadCreator(database).create_thread_with_message(seed, "Welcome"))
"""

TESTS = """
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio
SEEN = Path(__file__).parent / "seen"


@pytest.mark.parametrize(
    "n", [pytest.param(n, marks=pytest.mark.xdist_group(f"g{n % 3}")) for n in range({count})]
)
async def test_records_its_database(n, threadcreator_db, thread_creator, make_user_context):
    SEEN.mkdir(exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "master")
    with open(SEEN / f"{worker}.txt", "a") as seen:
        seen.write(f"{threadcreator_db.name}\\t{threadcreator_db.location}\\n")
    assert await threadcreator_db.count_threads() == 1  # the hook's seed row, in every worker
    await thread_creator.create_thread_with_message(make_user_context(), f"test {n}")
    assert await threadcreator_db.count_threads() == 2
"""


def make_project(directory: Path, *, tests: int = 12) -> None:
    """The inner suite: ``tests`` tests that write down their database, and the counting hook."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text(INI)
    (directory / "conftest.py").write_text(CONFTEST)
    (directory / "test_recorded.py").write_text(TESTS.replace("{count}", str(tests)))


def run_xdist(pytester: pytest.Pytester, db: str, *args: str) -> pytest.RunResult:
    # subprocess: xdist workers are processes
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--threadcreator-db={db}", *args
    )


def seen(directory: Path) -> dict[str, list[tuple[str, str]]]:
    """(name, location) of the database of each test, by worker."""
    by_worker: dict[str, list[tuple[str, str]]] = {}
    for path in sorted((directory / "seen").glob("*.txt")):
        for line in path.read_text().splitlines():
            name, location = line.split("\t", 1)
            by_worker.setdefault(path.stem, []).append((name, location))
    return by_worker


def hook_calls(directory: Path) -> list[str]:
    """The worker of each call of the setup hook."""
    return (directory / "hook_calls.txt").read_text().splitlines()


def assert_one_database_per_worker(by_worker: dict[str, list[tuple[str, str]]], n: int) -> None:
    __tracebackhide__ = True
    assert sorted(by_worker) == [f"gw{i}" for i in range(n)], "every worker ran tests"
    names = {worker: {name for name, _ in rows} for worker, rows in by_worker.items()}
    # clean isolation: each worker reuses one database, whose name carries the worker id
    for worker, own in names.items():
        assert len(own) == 1 and worker in next(iter(own)), (worker, own)
        assert all(len(name.encode()) <= MAX_IDENTIFIER_BYTES for name in own)
    assert len(set().union(*names.values())) == n, "no two workers share a database"


def run_id_of(by_worker: dict[str, list[tuple[str, str]]]) -> str:
    """The one run id in the PostgreSQL database names of a run."""
    runs = set()
    for rows in by_worker.values():
        for name, _ in rows:
            parsed = parse_database_name(name)
            assert parsed is not None, name
            runs.add(parsed.run_id)
    assert len(runs) == 1, f"workers of one run used several run ids: {runs}"
    return runs.pop()


def assert_nothing_left(
    directory: Path, db: str, by_worker: dict[str, list[tuple[str, str]]]
) -> None:
    __tracebackhide__ = True
    if db == "sqlite":
        assert not [p for p in directory.glob("runpytest-*/**/*") if "sqlite3" in p.name]
        assert not list(directory.glob("runpytest-*/threadcreator-*")), "shared template dir"
    else:
        assert databases_of_run(run_id_of(by_worker)) == []


# -- whole runs --------------------------------------------------------------------------------
@pytest.mark.parametrize("db", [SQLITE, POSTGRESQL])
@pytest.mark.parametrize("workers", [2, 3])
def test_each_worker_has_its_own_databases_and_the_template_is_built_once(
    pytester: pytest.Pytester, db: str, workers: int
) -> None:
    make_project(pytester.path)
    result = run_xdist(pytester, db, "-n", str(workers))
    result.assert_outcomes(passed=12)
    by_worker = seen(pytester.path)
    assert_one_database_per_worker(by_worker, workers)
    assert len(hook_calls(pytester.path)) == 1, "the setup hook runs once per run"
    assert_nothing_left(pytester.path, db, by_worker)


@pytest.mark.parametrize("db", [SQLITE, POSTGRESQL])
def test_fresh_isolation_gives_every_test_its_own_database(
    pytester: pytest.Pytester, db: str
) -> None:
    make_project(pytester.path)
    result = run_xdist(pytester, db, "-n", "2", "--threadcreator-isolation=fresh")
    result.assert_outcomes(passed=12)
    by_worker = seen(pytester.path)
    names = [name for rows in by_worker.values() for name, _ in rows]
    assert len(names) == 12
    workers_of: dict[str, set[str]] = {}
    for worker, rows in by_worker.items():
        for (before, _), (after, _) in itertools.pairwise(rows):
            assert before != after, f"{worker}: a test got the database of the test before it"
        for name, _ in rows:
            workers_of.setdefault(name, set()).add(worker)
    assert all(len(workers) == 1 for workers in workers_of.values()), "no two workers share one"
    if db == "sqlite":  # a new file each; a server hands a database left as found to a later test
        assert len(set(names)) == 12
    assert len(hook_calls(pytester.path)) == 1
    assert_nothing_left(pytester.path, db, by_worker)


@pytest.mark.parametrize("db", [SQLITE, POSTGRESQL])
def test_dist_loadgroup_runs(pytester: pytest.Pytester, db: str) -> None:
    make_project(pytester.path)
    result = run_xdist(pytester, db, "-n", "2", "--dist", "loadgroup", "-v")
    result.assert_outcomes(passed=12)
    assert len(hook_calls(pytester.path)) == 1
    assert_nothing_left(pytester.path, db, seen(pytester.path))
    # pytest 9.2 ignores the "@group" suffix xdist 3.8 writes into node ids, so the groups are
    # not kept together (pytest-dev/pytest-xdist#1386). Where xdist honours them, they are:
    if any("]@g" in line for line in result.outlines):
        workers_of_group: dict[str, set[str]] = {}
        for line in result.outlines:  # "[gw1] [ 8%] PASSED test_recorded.py::test_…[7]@g1"
            match = re.match(r"\[(gw\d+)\] .*PASSED .*@(g\d)", line)
            if match:
                workers_of_group.setdefault(match[2], set()).add(match[1])
        assert all(len(workers) == 1 for workers in workers_of_group.values()), workers_of_group


@pytest.mark.parametrize("db", [SQLITE, POSTGRESQL])
def test_n_auto_runs(pytester: pytest.Pytester, db: str) -> None:
    make_project(pytester.path)
    result = run_xdist(pytester, db, "-n", "auto")
    result.assert_outcomes(passed=12)
    by_worker = seen(pytester.path)
    assert len(hook_calls(pytester.path)) == 1
    assert_nothing_left(pytester.path, db, by_worker)


@needs_server
def test_two_whole_runs_at_once_on_one_server(pytester: pytest.Pytester) -> None:
    runs = [pytester.path / "first", pytester.path / "second"]
    procs = []
    for directory in runs:
        make_project(directory)
        command = [
            sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider",
            f"--threadcreator-db={SERVER_URL}", f"--basetemp={directory / 'tmp'}",
        ]  # fmt: skip
        # subprocess: two concurrent runs, each with xdist workers (processes)
        procs.append(
            subprocess.Popen(
                command, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert "12 passed" in output, output
    run_ids = set()
    for directory in runs:
        by_worker = seen(directory)
        assert_one_database_per_worker(by_worker, 2)
        assert len(hook_calls(directory)) == 1
        run_ids.add(run_id_of(by_worker))
    assert len(run_ids) == 2, "each run has a run id of its own"
    for run_id in run_ids:
        assert databases_of_run(run_id) == []


@needs_binaries
def test_postgresql_local_starts_one_cluster_for_the_run(pytester: pytest.Pytester) -> None:
    make_project(pytester.path)
    result = run_xdist(pytester, "postgresql-local", "-n", "2")
    result.assert_outcomes(passed=12)
    by_worker = seen(pytester.path)
    assert_one_database_per_worker(by_worker, 2)
    assert len(hook_calls(pytester.path)) == 1
    # location is "<socket dir>:<port>/<name>": both workers used the same cluster
    clusters = {loc.rsplit(":", 1)[0] for rows in by_worker.values() for _, loc in rows}
    assert len(clusters) == 1, clusters
    (cluster,) = clusters
    assert Path(cluster).name.startswith("tc-")
    assert not Path(cluster).exists(), "the controller removes the run's cluster"


@needs_binaries
def test_a_kept_database_keeps_the_runs_cluster(pytester: pytest.Pytester) -> None:
    make_project(pytester.path, tests=4)
    pytester.makepyfile(
        test_fails=RECORD_KEPT_URLS
        + """
@pytest.mark.asyncio
async def test_fails(threadcreator_db, thread_creator, user_context):
    record(threadcreator_db)
    await thread_creator.create_thread_with_message(user_context, "evidence")
    assert False, "deliberate"
"""
    )
    result = run_xdist(pytester, "postgresql-local", "-n", "2", "--threadcreator-keep")
    result.assert_outcomes(passed=4, failed=1)
    lines = result.outlines
    kept = lines[lines.index("kept databases of failed tests:") + 1].strip()
    assert " (cluster kept; start it with: " in kept
    (url,) = (pytester.path / "kept-urls.txt").read_text().splitlines()
    # the seed row and the failed test's thread
    assert count_threads_in_kept_database(url, "postgresql-local") == 2


# -- the sharing protocols, on two backends of one run -----------------------------------------
def _seeding_hook(calls: list[str]) -> Any:
    def setup(database: Database) -> None:
        calls.append(database.name)
        seed = UserExecutionContext(user_id="seed_owner")
        asyncio.run(ThreadCreator(database).create_thread_with_message(seed, "Welcome"))

    return setup


def _prepare_at_once(backends: list[Any], setup: Any) -> None:
    """prepare_template on every backend, each on its own thread, all at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(backends))

    def prepare(backend: Any) -> None:
        try:
            barrier.wait()
            backend.prepare_template(SCHEMA, setup)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@pytest.fixture
def two_pg_workers() -> Iterator[list[PostgresBackend]]:
    """Two started backends of one run (workers gw0, gw1) that share a template."""
    run = new_run_id()
    key = schema_key(SCHEMA)
    backends = [
        PostgresBackend("url", url=SERVER_URL, run_id=run, worker_id=w, template_key=key)
        for w in ("gw0", "gw1")
    ]
    try:
        for backend in backends:
            backend.start()
        yield backends
    finally:
        for backend in backends:
            backend.stop()
        assert databases_of_run(run) == []


@needs_server
def test_postgresql_workers_build_one_template_and_the_last_one_drops_it(
    two_pg_workers: list[PostgresBackend],
) -> None:
    first, second = two_pg_workers
    calls: list[str] = []
    _prepare_at_once(two_pg_workers, _seeding_hook(calls))
    assert calls == [first.template] and first.template == second.template
    databases = [b.create_database("clean", isolation="clean") for b in two_pg_workers]
    assert databases[0].name != databases[1].name
    for database in databases:  # the seed row, also where the template was not built
        assert asyncio.run(database.count_threads()) == 1
        database.store.reset()
        assert asyncio.run(database.count_threads()) == 1
    run = first.run_id
    first.stop()
    assert databases_of_run(run) == sorted([first.template, databases[1].name])
    second.stop()
    assert databases_of_run(run) == []


@needs_server
def test_postgresql_template_left_half_built_is_rebuilt(
    two_pg_workers: list[PostgresBackend],
) -> None:
    first, second = two_pg_workers
    # a worker died while building: the template exists, marked as the run's, never sealed
    asyncio.run(pg_fetch(f'CREATE DATABASE "{first.template}"'))
    asyncio.run(
        pg_fetch(f"COMMENT ON DATABASE \"{first.template}\" IS '{ownership_mark(first.run_id)}'")
    )
    calls: list[str] = []
    first.prepare_template(SCHEMA, _seeding_hook(calls))
    second.prepare_template(SCHEMA, _seeding_hook(calls))
    assert calls == [first.template]
    database = second.create_database("clean", isolation="clean")
    assert asyncio.run(database.count_threads()) == 1


@needs_server
def test_an_unmarked_database_under_the_templates_name_is_left_alone(
    two_pg_workers: list[PostgresBackend],
) -> None:
    first, _ = two_pg_workers
    # a database the plugin did not mark: a user's, or one whose creator died before marking it
    asyncio.run(pg_fetch(f'CREATE DATABASE "{first.template}"'))
    try:
        with pytest.raises(DatabaseError) as failure:
            first.prepare_template(SCHEMA, _seeding_hook([]))
        assert str(failure.value) == (
            f"PostgreSQL at {first.address}: a database named {first.template} exists but "
            "carries no pytest-threadcreator mark, so it is not the plugin's to drop; if it is a "
            "leftover of a run that died while creating it, drop it by hand "
            f'(DROP DATABASE "{first.template}") and run again'
        )
        first.stop()
        assert databases_of_run(first.run_id) == [first.template]
    finally:
        asyncio.run(pg_fetch(f'DROP DATABASE IF EXISTS "{first.template}" WITH (FORCE)'))


@needs_server
def test_while_the_controller_holds_the_run_no_worker_drops_the_template(
    two_pg_workers: list[PostgresBackend],
) -> None:
    first, second = two_pg_workers
    controller = RunLock(SERVER_URL, first.run_id)
    controller.acquire()
    try:
        calls: list[str] = []
        first.prepare_template(SCHEMA, _seeding_hook(calls))
        first.create_database("clean", isolation="clean")
        first.stop()  # finished early: the template must stay for the late worker
        assert databases_of_run(first.run_id) == [first.template]
        second.prepare_template(SCHEMA, _seeding_hook(calls))
        assert calls == [first.template], "the late worker reuses the template"
        second.create_database("clean", isolation="clean")
        second.stop()
        assert databases_of_run(first.run_id) == [first.template]
    finally:
        assert controller.release() == []
    assert databases_of_run(first.run_id) == []


def test_sqlite_workers_build_one_template_and_leave_it_to_the_controller(tmp_path: Path) -> None:
    shared = tmp_path / "threadcreator-run"
    key = schema_key(SCHEMA)
    backends = [
        SqliteBackend(tmp_path / w, worker_id=w, template_dir=shared, template_key=key)
        for w in ("gw0", "gw1")
    ]
    try:
        for backend in backends:
            backend.start()
        calls: list[str] = []
        _prepare_at_once(backends, _seeding_hook(calls))
        assert len(calls) == 1
        assert [p.name for p in shared.glob("*.sqlite3")] == [f"template-{key}.sqlite3"]
        databases = [b.create_database("clean", isolation="clean") for b in backends]
        for database in databases:
            assert asyncio.run(database.count_threads()) == 1
            database.store.reset()
            assert asyncio.run(database.count_threads()) == 1
        backends[0].stop()
        backends[1].stop()
        # a worker that starts late still finds it; the controller removes the directory
        assert sorted(p.name for p in shared.iterdir()) == [
            f"template-{key}.lock",
            f"template-{key}.sqlite3",
        ]
        assert not list(tmp_path.glob("gw*/*.sqlite3*"))
    finally:
        for backend in backends:
            backend.stop()


@needs_binaries
def test_a_worker_attaches_to_a_cluster_still_starting() -> None:
    cluster = LocalCluster()
    cluster.start_in_background()
    directory = Path(cluster.socket_dir)  # known at once, before the server is up
    try:
        attached = LocalCluster.attach(cluster.handoff())  # waits for the start to finish
        assert attached.url == cluster.url and attached.version
        cluster.wait_started()
        attached.stop()  # not the owner: the server keeps running
        assert (cluster.data_dir / "postmaster.pid").exists()
    finally:
        cluster.stop()
    assert not directory.exists()


@needs_binaries
def test_a_failed_background_start_reaches_the_workers_in_one_line() -> None:
    cluster = LocalCluster(settings={"shared_buffers": "'lots'"})
    cluster.start_in_background()
    try:
        with pytest.raises(BackendUnavailableError, match="server exited with 1 while"):
            LocalCluster.attach(cluster.handoff())
        with pytest.raises(BackendUnavailableError, match="server exited with 1 while"):
            cluster.wait_started()
    finally:
        cluster.stop()


# -- names ---------------------------------------------------------------------------------------
def test_run_ids_from_xdist_are_the_same_in_every_worker_and_valid() -> None:
    uid = "0123456789abcdef0123456789abcdef"
    assert run_id_from_testrunuid(uid) == run_id_from_testrunuid(uid)
    assert run_id_from_testrunuid(uid) != run_id_from_testrunuid(uid[::-1])
    template_name(run_id_from_testrunuid("any string a user passes"), "gw0")  # valid


def test_a_schema_override_gets_a_run_id_of_its_own(tmp_path: Path) -> None:
    team = dataclasses.replace(SCHEMA, name="team")
    main = Runtime(schema=SCHEMA, basetemp=tmp_path, worker_id="gw0", run_id=new_run_id())
    other = main.for_schema(team, tmp_path / "team")
    # its databases and template never meet the main runtime's, in any worker
    assert other.run_id != main.run_id and other.worker_id == "gw0"
    assert other.run_id == main.for_schema(team, tmp_path / "again").run_id
    assert schema_key(team) != schema_key(SCHEMA) == schema_key(default_schema())
    template_name(other.run_id, schema_key(team))  # valid names


@pytest.mark.parametrize("db", [SQLITE, POSTGRESQL])
def test_the_controller_shows_the_workers_summary_and_writes_the_report(
    pytester: pytest.Pytester, db: str
) -> None:
    make_project(pytester.path)
    result = run_xdist(pytester, db, "-n", "2", "--threadcreator-report=report.json")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(
        [
            "*- threadcreator -*",
            "12 test database(s) handed out, 2 created; setup mean * ms, max * ms",
            "threadcreator report written to report.json",
        ]
    )
    import json

    data = json.loads((pytester.path / "report.json").read_text())
    assert len(data["setup"]) == 12
    assert data["databases_created"] == 2
    assert {entry["test"].split("[")[0] for entry in data["setup"]} == {
        "test_recorded.py::test_records_its_database"
    }
