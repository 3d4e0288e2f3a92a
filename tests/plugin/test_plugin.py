"""Plugin behaviour, exercised through pytester runs of real test files."""

from __future__ import annotations

import ast
import json
import textwrap
import typing
from pathlib import Path

import pytest

import pytest_threadcreator

from ..helpers import (
    BACKEND,
    RECORD_KEPT_URLS,
    count_threads_in_kept_database,
    remove_kept_databases,
)

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
{extra}
"""


@pytest.fixture
def ini(pytester: pytest.Pytester) -> object:
    def write(mode: str = "strict", extra: str = "") -> None:
        pytester.makeini(INI.format(mode=mode, extra=extra))

    write()
    return write


def test_the_quickstart_example_passes(pytester: pytest.Pytester, ini: object) -> None:
    pytester.copy_example("quickstart/test_ten_users.py")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_every_fixture_is_documented(pytester: pytest.Pytester, ini: object) -> None:
    result = pytester.runpytest("--fixtures")
    out = result.stdout.str()
    for name, doc in {
        "threadcreator_db": "An isolated, empty, schema-ready Database",
        "db_session": "An AsyncSession on threadcreator_db",
        "thread_creator": "A ThreadCreator bound to this test's threadcreator_db",
        "user_context": "A fresh, valid UserExecutionContext",
        "make_user_context": "make_user_context(user_id=None, **fields)",
        "run_concurrently": "await run_concurrently(fn, items",
        "threadcreator_schema": "Override this to use your own models",
        "threadcreator_setup": "Override this to change how they are made",
        "fault_injector": "Make ThreadCreator fail, delay or cancel at a step",
        "thread_factory": "ThreadFactory on threadcreator_db: build() writes nothing",
        "message_factory": "MessageFactory on threadcreator_db: await create(thread=",
    }.items():
        assert f"{name} " in out or f"{name} [" in out, name
        assert doc in out, name
    assert (
        "no docstring available" not in out.split("fixtures defined from pytest_threadcreator")[-1]
    )


def test_help_lists_the_options(pytester: pytest.Pytester, ini: object) -> None:
    out = pytester.runpytest("--help").stdout.str()
    for option in (
        "--threadcreator-db=DB",
        "--threadcreator-isolation=MODE",
        "--threadcreator-keep",
        "--threadcreator-report=PATH",
        "threadcreator_schema",
    ):
        assert option in out


def test_disabling_the_plugin_removes_its_fixtures(pytester: pytest.Pytester, ini: object) -> None:
    pytester.makepyfile("def test_x(threadcreator_db):\n    pass\n")
    result = pytester.runpytest("-p", "no:threadcreator")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'threadcreator_db' not found*"])


SHOW_SETTINGS = """
import pytest

@pytest.mark.asyncio
async def test_default(threadcreator_db):
    print("SETTINGS", threadcreator_db.backend, threadcreator_db.isolation)

@pytest.mark.threadcreator(isolation="fresh")
@pytest.mark.asyncio
async def test_marked(threadcreator_db):
    print("MARKED", threadcreator_db.backend, threadcreator_db.isolation)
"""


@pytest.mark.parametrize(
    ("ini_value", "env_value", "cli_value", "expected", "source"),
    [
        (None, None, None, "clean", "default"),
        ("rollback", None, None, "rollback", "ini"),
        ("rollback", None, "fresh", "fresh", "command line"),
    ],
)
def test_isolation_precedence_marker_cli_ini_default(
    pytester: pytest.Pytester,
    ini: object,
    ini_value: str | None,
    env_value: str | None,
    cli_value: str | None,
    expected: str,
    source: str,
) -> None:
    ini(extra=f"threadcreator_isolation = {ini_value}" if ini_value else "")  # type: ignore[operator]
    pytester.makepyfile(SHOW_SETTINGS)
    args = ["-s", "-p", "no:cacheprovider"]
    if cli_value:
        args.append(f"--threadcreator-isolation={cli_value}")
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"*isolation={expected} (from {source})*",
            f"*SETTINGS {BACKEND} {expected}",
            f"*MARKED {BACKEND} fresh",
        ]
    )


def test_db_precedence_env_over_ini_and_cli_over_env(
    pytester: pytest.Pytester, ini: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini(extra="threadcreator_db = postgresql-docker")  # type: ignore[operator]
    pytester.makepyfile("def test_x():\n    pass\n")
    monkeypatch.setenv("THREADCREATOR_DB", "sqlite")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*threadcreator: db=sqlite (from env)*"])
    monkeypatch.setenv("THREADCREATOR_DB", "postgresql-local")
    result = pytester.runpytest("--threadcreator-db=sqlite")
    result.stdout.fnmatch_lines(["*threadcreator: db=sqlite (from command line)*"])
    monkeypatch.delenv("THREADCREATOR_DB")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*threadcreator: db=postgresql-docker (from ini)*"])


@pytest.mark.parametrize(
    ("args", "extra", "env", "message"),
    [
        (
            ["--threadcreator-db=mysql"],
            "",
            None,
            "--threadcreator-db: 'mysql' is not a valid database; valid values: sqlite, postgresql, "
            "postgresql-local, postgresql-docker, or an async SQLAlchemy URL*",
        ),
        (
            ["--threadcreator-db=postgresql://u@h/db"],
            "",
            None,
            "*is not an async PostgreSQL URL; use postgresql+asyncpg://*",
        ),
        (
            ["--threadcreator-isolation=savepoint"],
            "",
            None,
            "--threadcreator-isolation: 'savepoint' is not an isolation mode; valid values: clean, fresh, rollback",
        ),
        (
            [],
            "threadcreator_isolation = nope",
            None,
            "ini threadcreator_isolation: 'nope' is not an isolation mode; valid values: clean, fresh, rollback",
        ),
        (
            [],
            "threadcreator_db = oracle",
            None,
            "ini threadcreator_db: 'oracle' is not a valid database*",
        ),
        ([], "", "memory", "environment THREADCREATOR_DB: 'memory' is not a valid database*"),
    ],
)
def test_bad_values_fail_at_startup_with_the_valid_ones(
    pytester: pytest.Pytester,
    ini: object,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    extra: str,
    env: str | None,
    message: str,
) -> None:
    ini(extra=extra)  # type: ignore[operator]
    if env:
        monkeypatch.setenv("THREADCREATOR_DB", env)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            'threadcreator(isolation="savepoint")',
            "*the threadcreator marker's isolation: 'savepoint' is not an isolation mode; valid values: clean, fresh, rollback",
        ),
        (
            'threadcreator(db="mongo")',
            "*the threadcreator marker's db: 'mongo' is not a valid database*",
        ),
        (
            "threadcreator(shards=3)",
            "*test_x: bad @pytest.mark.threadcreator arguments (threadcreator() got an unexpected keyword argument 'shards'); signature: threadcreator(db=None, isolation=None, shake=None)",
        ),
        (
            'threadcreator("sqlite", "clean", 3, "extra")',
            "*bad @pytest.mark.threadcreator arguments*",
        ),
        (
            "threadcreator(shake=-1)",
            "*the threadcreator marker's shake: -1 is not a number of repetitions; pass an int >= 0*",
        ),
    ],
)
def test_bad_marker_arguments_fail_at_startup(
    pytester: pytest.Pytester, ini: object, marker: str, message: str
) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_x():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


LOOP_SCOPES = """
import pytest
from pytest_threadcreator import ThreadCreator

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_one(thread_creator, user_context, threadcreator_db, db_session):
    assert await threadcreator_db.count_threads() == 0
    await thread_creator.create_thread_with_message(user_context, "one")
    assert await threadcreator_db.count_threads() == 1

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_two(user_context, threadcreator_db):
    assert await threadcreator_db.count_threads() == 0
    await ThreadCreator().create_thread_with_message(user_context, "two")
    async with threadcreator_db.session() as session:
        from sqlalchemy import func, select
        from pytest_threadcreator.models import Thread
        assert (await session.execute(select(func.count()).select_from(Thread))).scalar() == 1

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_three(thread_creator, make_user_context, threadcreator_db):
    assert await threadcreator_db.count_threads() == 0
    for context in make_user_context.many(3):
        await thread_creator.create_thread_with_message(context, "three")
    await threadcreator_db.check_integrity()
"""


@pytest.mark.parametrize("isolation", ["clean", "fresh", "rollback"])
@pytest.mark.parametrize("scope", ["function", "module", "session"])
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_three_async_tests_in_a_row_under_each_loop_scope_and_mode(
    pytester: pytest.Pytester, ini: object, scope: str, mode: str, isolation: str
) -> None:
    ini(mode=mode)  # type: ignore[operator]
    pytester.makepyfile(LOOP_SCOPES.format(scope=scope))
    result = pytester.runpytest(
        f"--threadcreator-isolation={isolation}",
        "-W",
        "error::pytest.PytestUnraisableExceptionWarning",
    )
    result.assert_outcomes(passed=3)


EMPTY_EACH_TIME = """
import pytest

@pytest.mark.parametrize("n", range(4))
@pytest.mark.asyncio
async def test_writes_then_next_is_empty(n, thread_creator, user_context, threadcreator_db):
    assert await threadcreator_db.count_threads() == 0
    assert await threadcreator_db.count_messages() == 0
    await thread_creator.create_thread_with_message(user_context, f"test {n}")
    assert await threadcreator_db.count_threads() == 1
"""


@pytest.mark.parametrize("isolation", ["clean", "fresh", "rollback"])
def test_every_test_starts_on_an_empty_database(
    pytester: pytest.Pytester, ini: object, isolation: str
) -> None:
    pytester.makepyfile(EMPTY_EACH_TIME)
    result = pytester.runpytest(f"--threadcreator-isolation={isolation}")
    result.assert_outcomes(passed=4)


BROKEN_THEN_EMPTY = """
import asyncio
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

SESSION_LOCKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)

PIDS = []

async def server_pid(db):
    async with db.session() as session:
        return (await session.execute(text("SELECT pg_backend_pid()"))).scalar()

async def assert_nothing_left(db):
    assert await db.count_threads() == 0
    if db.backend == "postgresql":
        async with db.session() as session:
            locks = (await session.execute(text(SESSION_LOCKS))).scalar()
        assert locks == 0, "a previous test's session lock is still held"

@pytest.mark.asyncio
async def test_a_breaks_its_transaction(threadcreator_db, thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "must not survive")
    if threadcreator_db.backend == "postgresql":
        PIDS.append(await server_pid(threadcreator_db))
        async with threadcreator_db.session() as session:  # a lock that outlives a rollback
            await session.execute(text("SELECT pg_advisory_lock(4242)"))
    async with threadcreator_db.session() as session:
        with pytest.raises(DBAPIError):
            await session.execute(text("SELECT * FROM no_such_table"))

@pytest.mark.asyncio
async def test_b_is_cancelled_mid_statement(threadcreator_db, thread_creator, user_context):
    await assert_nothing_left(threadcreator_db)
    if threadcreator_db.backend == "postgresql" and threadcreator_db.isolation == "rollback":
        # rollback keeps its server session between tests: a's lock went with the reset
        assert await server_pid(threadcreator_db) == PIDS[0]
    await thread_creator.create_thread_with_message(user_context, "must not survive")
    if threadcreator_db.backend != "postgresql":
        pytest.skip("only PostgreSQL cancels a running statement")
    async with threadcreator_db.session() as session:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(session.execute(text("SELECT pg_sleep(30)")), 0.2)

@pytest.mark.asyncio
async def test_c_starts_empty_and_writes(threadcreator_db, thread_creator, user_context):
    await assert_nothing_left(threadcreator_db)  # on a new session: b's was cancelled mid-statement
    await thread_creator.create_thread_with_message(user_context, "fine")
    assert await threadcreator_db.count_threads() == 1
"""


@pytest.mark.parametrize("isolation", ["clean", "rollback"])
def test_a_broken_or_cancelled_test_leaves_the_next_one_empty_and_working(
    pytester: pytest.Pytester, ini: object, isolation: str
) -> None:
    pytester.makepyfile(BROKEN_THEN_EMPTY)
    result = pytester.runpytest(f"--threadcreator-isolation={isolation}", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()
    assert outcomes["passed"] + outcomes.get("skipped", 0) == 3
    if BACKEND == "postgresql":
        assert outcomes["passed"] == 3, "the cancelled statement was not run"


LATE_WRITER = """
import time

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from pytest_threadcreator.models import Message, Thread

URLS = []


@pytest.fixture
def late_writer():
    # set up before threadcreator_db, so torn down after it: an app's fixture that writes as it
    # ends (through the URL it was given), when the plugin is done with the test's database
    yield
    engine = create_engine(URLS[-1])
    try:
        with Session(engine) as session, session.begin():
            now = int(time.time())
            session.add(Thread(id="thread_late", object="thread", user_id="late", status="active",
                               created_at=now, metadata_={"user_id": "late"}))
            session.flush()
            session.add(Message(id="msg_late", object="thread.message", thread_id="thread_late",
                                role="user", created_at=now, file_ids=[], metadata_={},
                                content=[]))
    finally:
        engine.dispose()


@pytest.mark.asyncio
@pytest.mark.parametrize("i", range(3))
async def test_each_starts_empty(late_writer, threadcreator_db, i):
    assert await threadcreator_db.count_threads() == 0
    URLS.append(threadcreator_db.sync_url)
"""


def test_what_a_later_fixture_writes_as_the_test_ends_is_gone_for_the_next_test(
    pytester: pytest.Pytester, ini: object
) -> None:
    pytester.makepyfile(LATE_WRITER)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_keep_names_the_failed_tests_database_and_leaves_it(
    pytester: pytest.Pytester, ini: object
) -> None:
    pytester.makepyfile(
        RECORD_KEPT_URLS
        + """
@pytest.mark.asyncio
async def test_fails(threadcreator_db, thread_creator, user_context):
    record(threadcreator_db)
    await thread_creator.create_thread_with_message(user_context, "evidence")
    assert False, "deliberate"

@pytest.mark.asyncio
async def test_after(threadcreator_db):
    assert await threadcreator_db.count_threads() == 0
"""
    )
    result = pytester.runpytest(
        "--threadcreator-keep", "-p", "no:cacheprovider", "--junitxml=out.xml"
    )
    result.assert_outcomes(passed=1, failed=1)
    text = (pytester.path / "out.xml").read_text()
    assert 'name="threadcreator_kept_database"' in text
    import re

    found = re.search(r'name="threadcreator_kept_database" value="([^"]+)"', text)
    assert found is not None
    result.stdout.fnmatch_lines(["kept databases of failed tests:", f"  {found.group(1)}"])
    (url,) = (pytester.path / "kept-urls.txt").read_text().splitlines()
    assert count_threads_in_kept_database(url) == 1


def test_without_keep_nothing_is_left_behind(pytester: pytest.Pytester, ini: object) -> None:
    pytester.makepyfile(EMPTY_EACH_TIME)
    result = pytester.runpytest(
        "--threadcreator-isolation=fresh", f"--basetemp={pytester.path / 'bt'}"
    )
    result.assert_outcomes(passed=4)
    leftovers = list((pytester.path / "bt").rglob("*.sqlite3*"))
    assert leftovers == []


def test_leaked_tasks_are_reported_on_the_test(pytester: pytest.Pytester, ini: object) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        async def forgotten(creator, context):
            await asyncio.Event().wait()

        @pytest.mark.asyncio(loop_scope="{scope}")
        async def test_leaks(thread_creator, user_context):
            await thread_creator.create_thread_with_message(user_context, "hi")
            asyncio.get_running_loop().create_task(forgotten(thread_creator, user_context))

        @pytest.mark.asyncio(loop_scope="{scope}")
        async def test_clean(thread_creator, user_context):
            await thread_creator.create_thread_with_message(user_context, "hi")
        """.replace("{scope}", "function")
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*test left 1 asyncio task(s) running: forgotten. Await or cancel them*"]
    )


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
def test_leaked_connections_are_reported_on_the_test(
    pytester: pytest.Pytester, ini: object
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_leaks_a_connection(threadcreator_db):
            connection = await threadcreator_db.engine.connect()   # never closed
            await connection.exec_driver_sql("SELECT 1")

        @pytest.mark.asyncio
        async def test_closes_its_connection(threadcreator_db):
            async with threadcreator_db.engine.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
        """
    )
    result = pytester.runpytest("-p", "no:warnings")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test left 1 database connection(s) checked out*"])
    import gc

    gc.collect()  # the deliberately leaked connection warns when collected: collect it here


def test_summary_report_file_and_failure_section(pytester: pytest.Pytester, ini: object) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_load(thread_creator, make_user_context, run_concurrently):
            report = await run_concurrently(
                lambda c: thread_creator.create_thread_with_message(c, "hi"), make_user_context.many(50)
            )
            assert report.succeeded == 50

        @pytest.mark.asyncio
        async def test_fails_with_state(thread_creator, make_user_context, run_concurrently):
            await run_concurrently(
                lambda c: thread_creator.create_thread_with_message(c, "hi"), make_user_context.many(7)
            )
            assert False, "deliberate"
        """
    )
    result = pytester.runpytest("--threadcreator-report=out/report.json", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- threadcreator database -*",
            f"backend: {BACKEND} (clean isolation)",
            "database: *.sqlite3" if BACKEND == "sqlite" else "database: *:*/tc_*",
            "rows in threads: 7",
            "rows in messages: 7",
            "orphan threads: 0",
            "last concurrency run: 7 calls: 7 succeeded, 0 failed*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*- threadcreator -*",
            "2 test database(s) handed out, 1 created; setup mean * ms, max * ms",
            "2 concurrency run(s): 57 calls, 0 failed; best * ops/s, worst p99 * ms",
            "threadcreator report written to out/report.json",
        ]
    )

    data = json.loads((pytester.path / "out" / "report.json").read_text())
    assert [run["calls"] for run in data["concurrency_runs"]] == [50, 7]
    assert [len(run["timings"]) for run in data["concurrency_runs"]] == [50, 7]
    assert data["concurrency_runs"][0]["outcomes"] == ["ok"] * 50
    assert [s["test"].split("::")[-1] for s in data["setup"]] == [
        "test_load",
        "test_fails_with_state",
    ]
    assert data["databases_created"] == 1


def test_an_html_report_path_writes_a_self_contained_page(
    pytester: pytest.Pytester, ini: object
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_load(thread_creator, make_user_context, run_concurrently):
            report = await run_concurrently(
                lambda c: thread_creator.create_thread_with_message(c, "hi"), make_user_context.many(20)
            )
            assert report.succeeded == 20
        """
    )
    result = pytester.runpytest("--threadcreator-report=out/report.html", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["threadcreator report written to out/report.html"])
    page = (pytester.path / "out" / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "test_an_html_report_path_writes_a_self_contained_page.py::test_load" in page
    assert "timeline: calls, sorted by start" in page
    assert "http://" not in page and "https://" not in page


def test_an_unavailable_backend_stops_the_run_in_one_line(
    pytester: pytest.Pytester, ini: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # Docker is not there
    pytester.makepyfile(EMPTY_EACH_TIME)
    result = pytester.runpytest("--threadcreator-db=postgresql-docker")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            "*BackendUnavailableError: postgresql-docker: tried to start a PostgreSQL container "
            "with testcontainers, but Docker is not reachable (*); use "
            "--threadcreator-db=postgresql-local (local PostgreSQL binaries) or a server URL*"
        ]
    )
    assert "Traceback" not in result.stdout.str()
    result.assert_outcomes()  # stopped before any test ran


def test_a_marker_asking_for_an_unavailable_backend_fails_only_its_test(
    pytester: pytest.Pytester, ini: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # Docker is not there
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.threadcreator(db="postgresql-docker")
        def test_docker(threadcreator_db):
            pass

        @pytest.mark.threadcreator(db="postgresql-docker")
        def test_docker_again(threadcreator_db):
            pass

        @pytest.mark.threadcreator(db="sqlite")
        def test_sqlite(threadcreator_db):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*BackendUnavailableError: postgresql-docker: tried to start*"])


def documented_report_paths() -> tuple[set[str], set[str]]:
    """Key paths of the JSON report as report/data.py's docstring shows it, and the paths of
    its free-form mappings (``{str: int}``), whose keys are data."""
    from pytest_threadcreator.report import data

    doc = data.__doc__ or ""
    block = doc[doc.index("::\n") + 3 : doc.index("\n\nReaders")]
    source = "\n".join(line.split("#")[0] for line in block.splitlines())
    paths: set[str] = set()
    free: set[str] = set()

    def walk(node: ast.expr, prefix: str) -> None:
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    paths.add(prefix + key.value)
                    walk(value, f"{prefix}{key.value}.")
                else:
                    free.add(prefix.rstrip("."))
        elif isinstance(node, ast.List) and node.elts:
            walk(node.elts[0], prefix.rstrip(".") + "[].")

    walk(ast.parse(source.strip(), mode="eval").body, "")
    return paths, free


def report_paths(value: object, prefix: str, free: set[str]) -> set[str]:
    """Key paths of a real report; keys under a free-form mapping are data, not paths."""
    paths: set[str] = set()
    if isinstance(value, dict) and prefix.rstrip(".") not in free:
        for key, item in value.items():
            paths.add(prefix + key)
            paths |= report_paths(item, f"{prefix}{key}.", free)
    elif isinstance(value, list):
        for item in value:
            paths |= report_paths(item, prefix.rstrip(".") + "[].", free)
    return paths


def typed_report_paths(hint: object, prefix: str) -> set[str]:
    """Key paths of the report's TypedDicts, as mypy checks them."""
    if typing.is_typeddict(hint):
        paths: set[str] = set()
        for key, item in typing.get_type_hints(hint).items():
            paths.add(prefix + key)
            paths |= typed_report_paths(item, f"{prefix}{key}.")
        return paths
    if typing.get_origin(hint) is list:
        return typed_report_paths(typing.get_args(hint)[0], prefix.rstrip(".") + "[].")
    return set()


def test_the_documented_report_keys_are_the_keys_a_run_writes(
    pytester: pytest.Pytester, ini: object
) -> None:
    from pytest_threadcreator.report.data import ReportData

    pytester.makepyfile(
        RECORD_KEPT_URLS
        + textwrap.dedent(
            """
            @pytest.mark.asyncio
            async def test_load(thread_creator, make_user_context, run_concurrently):
                async def fail(i):
                    raise ValueError(i)

                await run_concurrently(
                    lambda c: thread_creator.create_thread_with_message(c, "hi"),
                    make_user_context.many(3),
                )
                await run_concurrently(fail, 2)

            def test_kept(threadcreator_db):
                record(threadcreator_db)
                assert False
            """
        )
    )
    result = pytester.runpytest(
        "--threadcreator-report=report.json",
        "--threadcreator-shake=2",
        "--threadcreator-keep",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, failed=1)
    kept = (pytester.path / "kept-urls.txt").read_text().splitlines()
    assert kept  # one per repetition of the failing test (its seed is replayed)
    remove_kept_databases(kept)  # a kept cluster or container too
    written = json.loads((pytester.path / "report.json").read_text())
    for key in ("setup", "concurrency_runs", "shake", "kept_databases"):
        assert written[key], key  # every list has an entry, so every key below it shows
    documented, free = documented_report_paths()
    assert free == {"concurrency_runs[].error_counts"}
    assert report_paths(written, "", free) == documented
    assert typed_report_paths(ReportData, "") == documented


FIXTURE_TYPES = """
import pytest

from pytest_threadcreator import (
    ConcurrencyReport,
    Database,
    FaultInjector,
    FaultRule,
    QueryCounter,
    RunConcurrently,
    ThreadCreator,
    ThreadWithMessage,
    UserContextMaker,
    UserExecutionContext,
)


@pytest.mark.asyncio
async def test_annotated(
    threadcreator_db: Database,
    thread_creator: ThreadCreator,
    make_user_context: UserContextMaker,
    user_context: UserExecutionContext,
    run_concurrently: RunConcurrently,
    fault_injector: FaultInjector,
) -> None:
    assert isinstance(make_user_context, UserContextMaker)
    assert isinstance(user_context, UserExecutionContext)
    rule: FaultRule = fault_injector.delay("commit", 0.0, times=1)
    assert isinstance(rule, FaultRule)

    async def create(context: UserExecutionContext) -> ThreadWithMessage:
        return await thread_creator.create_thread_with_message(context, "hi")

    report: ConcurrencyReport[ThreadWithMessage] = await run_concurrently(
        create, make_user_context.many(3)
    )
    assert report.succeeded == 3

    async def square(i: int) -> int:
        return i * i

    squares: ConcurrencyReport[int] = await run_concurrently(square, 4, max_concurrency=2)
    assert squares.results == [0, 1, 4, 9]
    async with threadcreator_db.count_queries() as queries:
        await thread_creator.create_thread_with_message(user_context, "hi")
    assert isinstance(queries, QueryCounter)
    counted: QueryCounter = queries
    assert counted.total > 0
"""

WRONG_FIXTURE_TYPES = """
from pytest_threadcreator import ConcurrencyReport, RunConcurrently, UserContextMaker


async def test_wrong(run_concurrently: RunConcurrently, make_user_context: UserContextMaker) -> None:
    async def square(i: int) -> int:
        return i * i

    texts: ConcurrencyReport[str] = await run_concurrently(square, 4)
    make_user_context.many("3")
    await run_concurrently(square, 4, max_concurency=2)
"""


def test_the_fixtures_give_the_exported_types(pytester: pytest.Pytester, ini: object) -> None:
    pytester.makepyfile(FIXTURE_TYPES)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_test_module_annotated_with_the_exported_types_type_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mypy import api

    (tmp_path / "test_annotated.py").write_text(FIXTURE_TYPES)
    (tmp_path / "test_wrong.py").write_text(WRONG_FIXTURE_TYPES)
    # the package's own source, however it is installed (mypy cannot follow an editable install)
    monkeypatch.setenv("MYPYPATH", str(Path(pytest_threadcreator.__file__).parent.parent))
    out, err, status = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--config-file=",
            f"--cache-dir={tmp_path / 'mypy-cache'}",
            str(tmp_path / "test_annotated.py"),
            str(tmp_path / "test_wrong.py"),
        ]
    )
    assert err == ""
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert not [line for line in errors if "test_annotated.py" in line], out
    wrong = {int(line.split(":")[1]) for line in errors if "test_wrong.py" in line}
    assert wrong == {9, 10, 11}, out  # the wrong result type, argument and keyword
    assert status == 1
