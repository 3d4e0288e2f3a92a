"""What the suite's tests share, written once: the PostgreSQL server they use and how to reach it,
skips that never hide a failure under CI, a fake clock, pytest runs killed mid-test, and counting
the rows of a kept database.

Plain constants and functions; the fixtures built on them are in ``conftest.py``. Importing this
module also imports the database drivers, see :data:`POSTGRESQL_IMPORT_ERROR`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import pwd
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.engine import make_url

from pytest_threadcreator.config import backend_kind


def _import_drivers() -> ImportError | None:
    # pytester's in-process runs unload the modules first imported while they ran, and a C
    # extension imported a second time in one interpreter crashes it (asyncpg's protocol,
    # psycopg's binary module): import them all here, at collection, before any inner run.
    try:
        importlib.import_module("asyncpg")
        importlib.import_module("sqlalchemy.dialects.postgresql.asyncpg")
        importlib.import_module("pytest_threadcreator.backends.postgresql.backend")
    except ImportError as exc:
        return exc
    for optional in ("psycopg", "asyncmy", "asyncmy.cursors"):
        # psycopg: only the sync examples use it, and they fail naming it. asyncmy: a module
        # imported first inside an inner run is dropped after it, and the package imported
        # again lacks its ``cursors`` attribute, which SQLAlchemy's streaming results need.
        with contextlib.suppress(ImportError):
            importlib.import_module(optional)
    return None


#: Why the PostgreSQL backend does not import, or None; PostgreSQL runs fail on it, never skip.
POSTGRESQL_IMPORT_ERROR = _import_drivers()

#: The repository's root (``conftest_examples/``, ``docs/``, ``benchmarks/``).
REPO_ROOT = Path(__file__).resolve().parents[1]

#: The PostgreSQL server the suite uses where a test needs one regardless of THREADCREATOR_DB.
PG_SERVER_URL = os.environ.get(
    "THREADCREATOR_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)

#: The --threadcreator-db value of this run of the suite (THREADCREATOR_DB, as for users).
DB = os.environ.get("THREADCREATOR_DB", "").strip() or "sqlite"

#: The backend kind this run of the suite exercises: ``sqlite`` or ``postgresql``.
BACKEND = backend_kind(DB)

F = TypeVar("F", bound=Callable[..., Any])


# -- skips that never hide a failure ---------------------------------------------------------
def needs(missing: str | None) -> Callable[[F], F]:
    """Skip when a service is missing on a developer's machine; under CI (CI set) never skip:
    the test then runs and fails, so a missing service cannot hide behind a skip."""
    if missing is None or os.environ.get("CI"):
        return lambda test: test
    skip: Callable[[F], F] = pytest.mark.skip(reason=missing)
    return skip


def needs_marks(missing: str | None) -> list[pytest.MarkDecorator]:
    """:func:`needs` for ``pytest.param(..., marks=...)`` and ``pytestmark``."""
    if missing is None or os.environ.get("CI"):
        return []
    return [pytest.mark.skip(reason=missing)]


def require_postgresql_backend(db: str) -> None:
    """Fail (never skip) when a run on PostgreSQL meets a PostgreSQL backend that does not import."""
    __tracebackhide__ = True
    if db == "sqlite" or POSTGRESQL_IMPORT_ERROR is None:
        return
    exc = POSTGRESQL_IMPORT_ERROR
    pytest.fail(
        "pytest_threadcreator.backends.postgresql.backend does not import "
        f"({type(exc).__name__}: {exc}); install the test extra: pip install -e '.[test]'",
        pytrace=False,
    )


# -- the PostgreSQL server -------------------------------------------------------------------
def pg_connect_kwargs(database: str = "postgres", url: str = PG_SERVER_URL) -> dict[str, Any]:
    """``asyncpg.connect`` arguments for ``database`` on the server of ``url``."""
    from pytest_threadcreator.backends.postgresql.servers import async_url, connect_kwargs

    return dict(connect_kwargs(async_url(url, "test")), database=database)


async def pg_fetch(sql: str, *args: Any, database: str = "postgres") -> list[Any]:
    """The rows of one statement on the suite's server, on a connection of its own."""
    import asyncpg

    conn = await asyncpg.connect(**pg_connect_kwargs(database))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def pg_databases_of_run(run_id: str) -> list[str]:
    """The databases on the suite's server whose names say they belong to run ``run_id``."""
    from pytest_threadcreator.backends.postgresql.janitor import parse_database_name

    rows = asyncio.run(pg_fetch("SELECT datname FROM pg_database"))
    names = [row["datname"] for row in rows]
    return [n for n in names if (p := parse_database_name(n)) is not None and p.run_id == run_id]


@functools.cache
def pg_server_missing() -> str | None:
    """Why the PostgreSQL server of ``THREADCREATOR_POSTGRES_URL`` cannot be reached, or None."""
    try:
        asyncio.run(pg_fetch("SELECT 1"))
    except Exception as exc:
        return f"no PostgreSQL server at {PG_SERVER_URL}: {exc}"
    return None


#: The MySQL/MariaDB server the suite uses where a test needs one regardless of THREADCREATOR_DB.
MYSQL_SERVER_URL = os.environ.get("THREADCREATOR_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/")


@functools.cache
def line_from(proc: subprocess.Popen[str], seconds: float = 60) -> str:
    """The next line ``proc`` prints, failing the test (not hanging it) after ``seconds``."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, f"the child process printed nothing in {seconds:g} s"
    return proc.stdout.readline().strip()


def mysql_server_missing() -> str | None:
    """Why the MySQL/MariaDB server of ``THREADCREATOR_MYSQL_URL`` cannot be reached, or None."""
    import asyncmy

    server = make_url(MYSQL_SERVER_URL)

    async def probe() -> None:
        conn = await asyncmy.connect(
            host=server.host or "localhost",
            port=server.port or 3306,
            user=server.username or "root",
            password=server.password or "",
        )
        conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"no MySQL/MariaDB server at {MYSQL_SERVER_URL}: {exc}"
    return None


@functools.cache
def pg_binaries_missing() -> str | None:
    """Why no local PostgreSQL binaries are found, or None."""
    from pytest_threadcreator.backends.postgresql import local as pg_local
    from pytest_threadcreator.errors import BackendUnavailableError

    try:
        pg_local.find_pg_bindir()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


MARIADBD = "/usr/sbin/mariadbd"
MARIADB_INSTALL_DB = "/usr/bin/mariadb-install-db"


@functools.cache
def private_mariadb_missing() -> str | None:
    """Why a private MariaDB server cannot be started here (see :func:`private_mariadb`)."""
    for binary in (MARIADBD, MARIADB_INSTALL_DB):
        if not os.access(binary, os.X_OK):
            return f"no {binary} (apt-get install mariadb-server)"
    if os.geteuid() != 0:
        return "starting a private MariaDB server as the mysql user needs root"
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return "no mysql user to run a private MariaDB server as"
    return None


@contextlib.contextmanager
def private_mariadb() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A MariaDB server of the test's own (its URL and process): a new data directory under
    the temporary directory, a free port on 127.0.0.1, run as the mysql user; killed and removed
    after. For tests that stop a server: never the shared one."""
    import tempfile

    mysql = pwd.getpwnam("mysql")
    root = Path(tempfile.mkdtemp(prefix="tc-mariadb-"))
    os.chown(root, mysql.pw_uid, mysql.pw_gid)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                MARIADB_INSTALL_DB,
                "--no-defaults",
                f"--datadir={root / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            user="mysql",
            cwd=root,
            capture_output=True,
            check=True,
            timeout=120,
        )
        server = subprocess.Popen(
            [
                MARIADBD,
                "--no-defaults",
                f"--datadir={root / 'data'}",
                f"--port={port}",
                "--bind-address=127.0.0.1",
                f"--socket={root / 'mysqld.sock'}",
                f"--pid-file={root / 'mysqld.pid'}",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ],
            user="mysql",
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the private MariaDB server did not start on {port}"
                    ) from None
                time.sleep(0.1)
        yield f"mysql+asyncmy://root@127.0.0.1:{port}/", server
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


# -- a fake clock ----------------------------------------------------------------------------
class FakeClock:
    """A clock that only moves when a test advances it (``clock.now += 1``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- pytest runs killed mid-test -------------------------------------------------------------
def start_pytest(directory: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """A quiet pytest run in a process of its own in ``directory``, its output in one text pipe."""
    # subprocess: the runs under test must die by SIGKILL, which only a process can
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_mid_test(
    run: subprocess.Popen[str],
    marker: Path,
    *,
    within_s: float = 60,
    ready: Callable[[str], bool] | None = None,
) -> str:
    """Wait until the run's test writes ``marker`` (and ``ready(marker text)`` holds, if given),
    kill the run by SIGKILL, return the marker.

    The inner test writes the marker once its database (or container) exists, then blocks; the
    killed run has no chance to clean anything up. ``within_s`` only guards against a hang.
    """
    __tracebackhide__ = True
    try:
        deadline = time.monotonic() + within_s
        while not (marker.exists() and marker.read_text()):
            assert run.poll() is None, run.communicate()[0]
            assert time.monotonic() < deadline, "the inner run never reached its test"
            time.sleep(0.05)
        while ready is not None and not ready(marker.read_text()):
            assert run.poll() is None, run.communicate()[0]
            assert time.monotonic() < deadline, "the inner run never got ready to be killed"
            time.sleep(0.05)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        return marker.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


# -- kept databases --------------------------------------------------------------------------
#: Test-file code that records ``threadcreator_db.url`` of every test that calls
#: ``record(threadcreator_db)``, after its teardown (where --threadcreator-keep renames the
#: database), in ``kept-urls.txt`` beside the test file, one line per database.
RECORD_KEPT_URLS = """
import pathlib
import pytest

_RECORDED = []


def record(database):
    _RECORDED.append(database)


@pytest.fixture(scope="module", autouse=True)
def _write_kept_urls():
    yield  # after every test's teardown: a kept database has its kept url by now
    if _RECORDED:
        kept = pathlib.Path(__file__).parent / "kept-urls.txt"
        kept.write_text("".join(db.url + "\\n" for db in _RECORDED))
"""


def count_threads_in_kept_database(url: str, db: str = DB) -> int:
    """Rows in ``threads`` of a database kept by --threadcreator-keep, found by its ``url``, then
    remove it: drop it from the server, or remove its kept cluster or kept container.

    ``db`` is the --threadcreator-db value of the run that kept it.
    """
    address = make_url(url)
    if backend_kind(db) == "sqlite":
        with sqlite3.connect(address.database or "") as conn:
            return int(conn.execute("SELECT count(*) FROM threads").fetchone()[0])
    host = address.query.get("host")
    if isinstance(host, str) and (Path(host) / "data").is_dir():
        return _count_in_kept_cluster(url, Path(host))
    if db == "postgresql-docker":
        return _count_in_kept_container(url)
    if address.get_backend_name() == "mysql":
        return _count_and_drop_mysql(url)
    return _count_and_drop(url)


def remove_kept_databases(urls: Sequence[str], db: str = DB) -> None:
    """Remove the databases a run kept; those of one kept cluster or container go with it."""
    removed: set[tuple[object, ...]] = set()
    for url in urls:
        address = make_url(url)
        place = (address.host, address.port, address.query.get("host"))
        whole = db == "postgresql-docker" or isinstance(address.query.get("host"), str)
        if whole and place in removed:
            continue
        removed.add(place)
        count_threads_in_kept_database(url, db)


def _count_and_drop_mysql(url: str) -> int:
    """Count in a kept MySQL/MariaDB database (it keeps its name), then drop it."""
    import asyncmy

    address = make_url(url)
    name = address.database or ""

    async def count_and_drop() -> int:
        conn = await asyncmy.connect(
            host=address.host or "localhost",
            port=address.port or 3306,
            user=address.username or "root",
            password=address.password or "",
            autocommit=True,
        )
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(f"SELECT count(*) FROM `{name}`.threads")
                (n,) = await cursor.fetchone()
                await cursor.execute(f"DROP DATABASE `{name}`")
            return int(n)
        finally:
            conn.close()

    return asyncio.run(count_and_drop())


async def _count(url: str) -> int:
    import asyncpg

    name = make_url(url).database or ""
    conn = await asyncpg.connect(**pg_connect_kwargs(name, url=url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM threads"))
    finally:
        await conn.close()


def _count_and_drop(url: str) -> int:
    """Count on the server, then drop the kept database."""
    import asyncpg

    async def count_and_drop() -> int:
        n = await _count(url)
        admin = await asyncpg.connect(**pg_connect_kwargs("postgres", url=url))
        try:
            await admin.execute(f'DROP DATABASE "{make_url(url).database}" WITH (FORCE)')
        finally:
            await admin.close()
        return n

    return asyncio.run(count_and_drop())


def _count_in_kept_container(url: str) -> int:
    """Count in a kept Docker container (it keeps running), then remove the container."""
    from pytest_threadcreator.backends.postgresql.docker import LABEL_RUN
    from pytest_threadcreator.backends.postgresql.janitor import parse_database_name

    kept = make_url(url).database or ""
    parsed = parse_database_name("tc_" + kept.removeprefix("tk_"))  # kept: tc_… renamed tk_…
    assert parsed is not None, f"not a kept database of the plugin: {url}"
    try:
        return asyncio.run(_count(url))
    finally:
        found = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={LABEL_RUN}={parsed.run_id}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for container in found:
            subprocess.run(
                ["docker", "rm", "-f", "-v", container], check=False, capture_output=True
            )


def _count_in_kept_cluster(url: str, cluster_dir: Path) -> int:
    """Start a kept local cluster (its socket directory is the cluster's, data in ``data/``),
    count, then stop and remove it."""
    from pytest_threadcreator.backends.postgresql import local as pg_local

    pg_ctl = [os.path.join(pg_local.find_pg_bindir(), "pg_ctl"), "-D", str(cluster_dir / "data")]
    if os.geteuid() == 0:  # the cluster belongs to the user it ran as, as root cannot run it
        owner = pwd.getpwuid((cluster_dir / "data").stat().st_uid).pw_name
        pg_ctl = ["runuser", "-u", owner, "--", *pg_ctl]
    subprocess.run([*pg_ctl, "start", "-w", "-s"], check=True)
    try:
        return asyncio.run(_count(url))
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate", "-w", "-s"], check=False)
        shutil.rmtree(cluster_dir, ignore_errors=True)


def default_rows(user_id: str = "user_a") -> tuple[dict[str, Any], dict[str, Any]]:
    """A new thread's row and its first message's, in the default schema, for a store's
    ``create``."""
    from pytest_threadcreator.ids import new_message_id, new_thread_id
    from pytest_threadcreator.schema import NewThread, default_schema

    new = NewThread(
        thread_id=new_thread_id(),
        message_id=new_message_id(),
        user_id=user_id,
        run_id="run_test",
        message="hello",
        title="a title",
        role="user",
        metadata={},
        created_at=int(time.time()),
        context=None,
    )
    schema = default_schema()
    return schema.thread_row(new), schema.message_row(new)
