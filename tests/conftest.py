"""Test-suite setup."""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

# pytester's in-process runs unload modules they imported; asyncpg's C extension must not be
# imported twice in one process, so load it once here, before any inner run.
import asyncpg
import pytest
import sqlalchemy.dialects.postgresql.asyncpg  # noqa: F401 - re-imports re-register functions
from sqlalchemy.engine import make_url

import pytest_threadcreator.backends.postgresql.backend  # noqa: F401
from pytest_threadcreator.config import backend_kind

F = TypeVar("F", bound=Callable[..., Any])


def needs(missing: str | None) -> Callable[[F], F]:
    """Skip when a service is missing on a developer's machine; under CI (CI set) never skip:
    the test then runs and fails, so a missing service cannot hide behind a skip."""
    if missing is None or os.environ.get("CI"):
        return lambda test: test
    skip: Callable[[F], F] = pytest.mark.skip(reason=missing)
    return skip


@functools.cache
def pg_server_missing() -> str | None:
    """Why the PostgreSQL server of ``THREADCREATOR_POSTGRES_URL`` cannot be reached, or None."""
    from pytest_threadcreator.backends.postgresql.servers import async_url as _async_url
    from pytest_threadcreator.backends.postgresql.servers import connect_kwargs as _connect_kwargs

    async def probe() -> None:
        kwargs = dict(_connect_kwargs(_async_url(PG_SERVER_URL, "test")), database="postgres")
        conn = await asyncpg.connect(**kwargs)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"no PostgreSQL server at {PG_SERVER_URL}: {exc}"
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


def needs_marks(missing: str | None) -> list[pytest.MarkDecorator]:
    """:func:`needs` for ``pytest.param(..., marks=...)``."""
    if missing is None or os.environ.get("CI"):
        return []
    return [pytest.mark.skip(reason=missing)]


#: The PostgreSQL server the suite uses where a test needs one regardless of THREADCREATOR_DB.
PG_SERVER_URL = os.environ.get(
    "THREADCREATOR_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)

#: The MySQL/MariaDB server the suite uses where a test needs one regardless of THREADCREATOR_DB.
MYSQL_SERVER_URL = os.environ.get("THREADCREATOR_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/")


@functools.cache
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


#: The backend this run of the suite exercises (THREADCREATOR_DB picks it, as for users).
BACKEND = backend_kind(os.environ.get("THREADCREATOR_DB", "").strip() or "sqlite")


def count_threads_in_kept_database(location: str, url: str | None = None) -> int:
    """Rows in ``threads`` of a database kept by --threadcreator-keep; drops it if on a server."""
    if BACKEND == "sqlite":
        with sqlite3.connect(location) as conn:
            return int(conn.execute("SELECT count(*) FROM threads").fetchone()[0])
    if " (cluster kept; start it with: " in location:
        return _count_in_kept_cluster(location)
    if " (container " in location:
        return _count_in_kept_container(location)
    server = make_url(url or os.environ["THREADCREATOR_DB"])
    name = location.rsplit("/", 1)[-1]
    if server.get_backend_name() == "mysql":  # the server's own driver
        return _count_in_kept_mysql_database(server, name)

    async def count_and_drop() -> int:
        conn = await asyncpg.connect(
            host=server.host, port=server.port, user=server.username, database=name
        )
        try:
            n = await conn.fetchval("SELECT count(*) FROM threads")
        finally:
            await conn.close()
        admin = await asyncpg.connect(
            host=server.host, port=server.port, user=server.username, database="postgres"
        )
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        return int(n)

    return asyncio.run(count_and_drop())


def _count_in_kept_mysql_database(server: Any, name: str) -> int:
    """Count in a kept MySQL/MariaDB database, then drop it."""
    import asyncmy

    async def count_and_drop() -> int:
        conn = await asyncmy.connect(
            host=server.host, port=server.port or 3306, user=server.username, autocommit=True
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


def _count_in_kept_container(location: str) -> int:
    """Count in a kept Docker container (psql over its socket), then remove the container."""
    import subprocess

    address, _, rest = location.partition(" (container ")
    container = rest.split(" ", 1)[0]
    dbname = address.rsplit("/", 1)[-1]
    try:
        out = subprocess.run(
            [
                "docker",
                "exec",
                container,
                "psql",
                "-U",
                "postgres",
                "-d",
                dbname,
                "-Atc",
                "SELECT count(*) FROM threads",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return int(out.strip())
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", container], check=False, capture_output=True)


def _count_in_kept_cluster(location: str) -> int:
    """Start a kept local cluster, count, then stop and remove it."""
    import shutil
    import subprocess

    address, _, rest = location.partition(" (cluster kept; start it with: ")
    command = rest.rstrip(")")
    subprocess.run([*command.split(), "-w", "-s"], check=True)
    socket_dir, _, dbname = address.rpartition("/")
    data_dir = command.split(" -D ", 1)[1].split()[0]
    stop = command.replace(" start", " stop -m immediate -w -s")
    try:

        async def count() -> int:
            host, _, port = socket_dir.rpartition(":")
            conn = await asyncpg.connect(
                host=host, port=int(port), user="postgres", database=dbname
            )
            try:
                return int(await conn.fetchval("SELECT count(*) FROM threads"))
            finally:
                await conn.close()

        return asyncio.run(count())
    finally:
        subprocess.run(stop.split(), check=False)
        shutil.rmtree(os.path.dirname(data_dir), ignore_errors=True)
