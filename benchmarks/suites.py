"""Generated pytest suites, run in subprocesses and timed from the outside.

Every suite is a directory of its own (a ``pytest.ini`` plus one test module) written once into
a temporary workspace; a run is ``python -m pytest -q -p no:cacheprovider --basetemp=…`` in that
directory, timed as the subprocess's whole wall time (interpreter start, imports, collection,
backend start-up, tests, teardown).
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PytestRun",
    "Workspace",
    "app_engine_suite",
    "concurrent_suite",
    "create_all_suite",
    "empty_suite",
    "ours_create_suite",
    "pytest_mysql_suite",
    "pytest_postgresql_suite",
    "startup_suite",
    "ten_users_suite",
]

PYTEST_INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
asyncio_mode = strict
"""

#: Environment variables that would change what a generated suite measures.
SCRUBBED_ENV = (
    "THREADCREATOR_DB",
    "THREADCREATOR_POSTGRES_URL",
    "THREADCREATOR_MYSQL_URL",
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_AUTO_NUM_WORKERS",
    "PYTEST_CURRENT_TEST",
)

#: Noise in front of pytest's error lines ("E   ", "! _pytest.outcomes.Exit: ", "ERROR ").
_PREFIXES = re.compile(r"^(E\s+|!\s*|ERROR\s+|_pytest\.outcomes\.Exit:\s*)+")
_SUMMARY = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)")


@dataclass(frozen=True)
class PytestRun:
    """The outcome of one pytest subprocess."""

    wall_s: float
    returncode: int
    counts: Mapping[str, int]
    output: str
    #: ``time.time()`` just before the subprocess was started (for time-to-first-test)
    spawned_at: float
    #: user + system CPU seconds of the subprocess and its children (less sensitive to load)
    cpu_s: float = 0.0

    @property
    def passed(self) -> int:
        """Number of passed tests."""
        return self.counts.get("passed", 0)

    def ok(self, expected: int) -> bool:
        """True when pytest exited 0 with exactly ``expected`` passed tests."""
        return self.returncode == 0 and self.passed == expected

    def reason(self) -> str:
        """The most telling line of a failed run's output, for a 'not available' row."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        for marker in ("UsageError", "Error:", "error:", "Exception:", "E   "):
            for line in lines:
                if marker in line and not line.startswith("="):
                    return _PREFIXES.sub("", line).strip()
        tail = lines[-1] if lines else "(no output)"
        return f"pytest exited {self.returncode}: {tail}"


class Workspace:
    """A temporary directory holding the generated suites."""

    def __init__(self, keep: bool = False) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tc-bench-", ignore_cleanup_errors=True)
        self.root = Path(self._tmp.name)
        self.keep = keep

    def suite(self, name: str, test_module: str) -> Path:
        """Write the suite ``name`` (``pytest.ini`` + ``test_bench.py``) once; its directory."""
        directory = self.root / name
        if not directory.exists():
            directory.mkdir(parents=True)
            (directory / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
            (directory / "test_bench.py").write_text(test_module, encoding="utf-8")
        return directory

    def run(
        self,
        directory: Path,
        args: Sequence[str] = (),
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
    ) -> PytestRun:
        """Run pytest in ``directory``; wall time of the whole subprocess."""
        environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        environ.update(env or {})
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={directory / '.basetemp'}",
            *args,
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        spawned_at = time.time()
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                command,
                cwd=directory,
                env=environ,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            returncode, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            returncode = -1
            output = _text(exc.stdout) + _text(exc.stderr) + f"\ntimed out after {timeout:.0f} s"
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        counts: dict[str, int] = {}
        for number, word in _SUMMARY.findall(output):
            key = "errors" if word.startswith("error") else word
            counts[key] = int(number)
        return PytestRun(wall, returncode, counts, output, spawned_at, cpu)

    def close(self) -> None:
        """Remove the workspace (unless ``keep``)."""
        if not self.keep:
            self._tmp.cleanup()


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _module(source: str) -> str:
    return textwrap.dedent(source).lstrip()


# -------------------------------------------------------------------------------------------
# Suites
# -------------------------------------------------------------------------------------------


def empty_suite(n: int, *, is_async: bool) -> str:
    """``n`` tests that do nothing (async ones use pytest-asyncio, like the measured suites)."""
    if is_async:
        return _module(
            f"""
            import pytest


            @pytest.mark.asyncio
            @pytest.mark.parametrize("i", range({n}))
            async def test_empty(i):
                pass
            """
        )
    return _module(
        f"""
        import pytest


        @pytest.mark.parametrize("i", range({n}))
        def test_empty(i):
            pass
        """
    )


def ours_create_suite(n: int) -> str:
    """``n`` tests, each creating one thread with its message through the plugin's fixtures."""
    return _module(
        f"""
        import pytest


        @pytest.mark.asyncio
        @pytest.mark.parametrize("i", range({n}))
        async def test_create(thread_creator, user_context, i):
            await thread_creator.create_thread_with_message(user_context, "Hello")
        """
    )


def create_all_suite(n: int) -> str:
    """Baseline without the plugin: a SQLite file per test, ``metadata.create_all``, one ORM insert."""
    return _module(
        f"""
        import time
        import uuid

        import pytest
        import pytest_asyncio
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        from pytest_threadcreator.models import Base, Message, Thread


        @pytest_asyncio.fixture
        async def sessionmaker(tmp_path):
            engine = create_async_engine(f"sqlite+aiosqlite:///{{tmp_path / 'test.sqlite3'}}")
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            yield async_sessionmaker(engine, expire_on_commit=False)
            await engine.dispose()


        @pytest.mark.asyncio
        @pytest.mark.parametrize("i", range({n}))
        async def test_create(sessionmaker, i):
            now = int(time.time())
            thread_id = "thread_" + uuid.uuid4().hex
            user = f"user_{{i:05d}}"
            async with sessionmaker.begin() as session:
                session.add(
                    Thread(
                        id=thread_id, object="thread", user_id=user, title=None, status="active",
                        created_at=now,
                        metadata_={{"user_id": user, "status": "active", "created_at": now}},
                    )
                )
                session.add(
                    Message(
                        id="msg_" + uuid.uuid4().hex, object="thread.message", thread_id=thread_id,
                        role="user",
                        content=[{{"type": "text", "text": {{"value": "Hello", "annotations": []}}}}],
                        created_at=now, run_id=None, file_ids=[],
                        metadata_={{"initial_message": True}},
                    )
                )
        """
    )


def pytest_postgresql_suite(
    n: int, *, host: str, port: int, user: str, password: str | None, dbname: str, ddl: list[str]
) -> str:
    """Baseline: pytest-postgresql's ``postgresql_noproc`` + ``postgresql`` (a database per test).

    Each test creates the two tables and inserts one thread and its message with psycopg.
    """
    return _module(
        f"""
        import time
        import uuid

        import pytest
        from psycopg.types.json import Json
        from pytest_postgresql import factories

        postgresql_noproc = factories.postgresql_noproc(
            host={host!r}, port={port!r}, user={user!r}, password={password!r}, dbname={dbname!r}
        )
        postgresql = factories.postgresql("postgresql_noproc")

        DDL = {json.dumps(ddl)}
        THREAD_SQL = (
            "INSERT INTO threads (id, object, user_id, title, status, created_at, metadata_) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        MESSAGE_SQL = (
            "INSERT INTO messages (id, object, thread_id, role, content, created_at, "
            "assistant_id, run_id, file_ids, metadata_) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )


        @pytest.mark.parametrize("i", range({n}))
        def test_create(postgresql, i):
            now = int(time.time())
            thread_id = "thread_" + uuid.uuid4().hex
            user = f"user_{{i:05d}}"
            meta = {{"user_id": user, "status": "active", "created_at": now}}
            content = [{{"type": "text", "text": {{"value": "Hello", "annotations": []}}}}]
            with postgresql.cursor() as cur:
                for statement in DDL:
                    cur.execute(statement)
                cur.execute(THREAD_SQL, (thread_id, "thread", user, None, "active", now, Json(meta)))
                cur.execute(
                    MESSAGE_SQL,
                    (
                        "msg_" + uuid.uuid4().hex, "thread.message", thread_id, "user",
                        Json(content), now, None, None, Json([]), Json({{"initial_message": True}}),
                    ),
                )
            postgresql.commit()
        """
    )


def pytest_mysql_suite(
    n: int, *, host: str, port: int, user: str, password: str | None, dbname: str, ddl: list[str]
) -> str:
    """Baseline: pytest-mysql's ``mysql_noproc`` + ``mysql`` (a database per test).

    Each test creates the two tables and inserts one thread and its message with PyMySQL (the
    connection pytest-mysql's fixture yields), then commits.
    """
    return _module(
        f"""
        import json
        import time
        import uuid

        import pytest
        from pytest_mysql import factories

        mysql_noproc = factories.mysql_noproc(host={host!r}, port={port!r}, user={user!r})
        mysql = factories.mysql(
            "mysql_noproc",
            passwd={password!r},
            dbname={dbname!r},
            charset="utf8mb4",
            collation="utf8mb4_unicode_ci",
        )

        DDL = {json.dumps(ddl)}
        THREAD_SQL = (
            "INSERT INTO threads (id, object, user_id, title, status, created_at, metadata_) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        )
        MESSAGE_SQL = (
            "INSERT INTO messages (id, object, thread_id, `role`, content, created_at, "
            "assistant_id, run_id, file_ids, metadata_) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )


        @pytest.mark.parametrize("i", range({n}))
        def test_create(mysql, i):
            now = int(time.time())
            thread_id = "thread_" + uuid.uuid4().hex
            user = f"user_{{i:05d}}"
            meta = {{"user_id": user, "status": "active", "created_at": now}}
            content = [{{"type": "text", "text": {{"value": "Hello", "annotations": []}}}}]
            with mysql.cursor() as cur:
                for statement in DDL:
                    cur.execute(statement)
                cur.execute(
                    THREAD_SQL, (thread_id, "thread", user, None, "active", now, json.dumps(meta))
                )
                cur.execute(
                    MESSAGE_SQL,
                    (
                        "msg_" + uuid.uuid4().hex, "thread.message", thread_id, "user",
                        json.dumps(content), now, None, None, "[]",
                        json.dumps({{"initial_message": True}}),
                    ),
                )
            mysql.commit()
        """
    )


def concurrent_suite() -> str:
    """One test: N concurrent creates through ``run_concurrently``; writes its figures as JSON.

    It asserts nothing, so that errors and orphans are counted instead of failing the run.
    ``BENCH_N``, ``BENCH_TIMEOUT`` and ``BENCH_OUT`` come from the environment.
    """
    return _module(
        """
        import json
        import os
        import resource
        import traceback
        from collections import Counter

        import pytest

        N = int(os.environ["BENCH_N"])
        TIMEOUT = float(os.environ["BENCH_TIMEOUT"])
        OUT = os.environ["BENCH_OUT"]


        def rss_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


        @pytest.mark.asyncio
        async def test_concurrent_creates(
            thread_creator, make_user_context, run_concurrently, threadcreator_db
        ):
            data = {"n": N, "peak_rss_before_mb": rss_mb()}
            try:
                users = make_user_context.many(N)

                async def create(user):
                    return await thread_creator.create_thread_with_message(user, "Hello")

                report = await run_concurrently(create, users, timeout=TIMEOUT)
                data["peak_rss_mb"] = rss_mb()
                data.update(
                    succeeded=report.succeeded,
                    failed=report.failed,
                    timed_out=report.timed_out,
                    elapsed_s=report.elapsed_s,
                    throughput=report.throughput,
                    p50_ms=report.latency_ms.p50,
                    p95_ms=report.latency_ms.p95,
                    p99_ms=report.latency_ms.p99,
                    max_ms=report.latency_ms.max,
                    error_kinds=dict(Counter(type(e).__name__ for e in report.errors)),
                    error_samples=[f"{type(e).__name__}: {e}"[:400] for e in report.errors[:5]],
                )
                data["threads"] = await threadcreator_db.count_threads()
                data["messages"] = await threadcreator_db.count_messages()
                data["orphan_threads"] = len(await threadcreator_db.orphan_threads())
                data["messages_without_thread"] = len(
                    await threadcreator_db.messages_without_thread()
                )
            except BaseException as exc:
                data["exception"] = "".join(traceback.format_exception(exc))[-2000:]
                raise
            finally:
                with open(OUT, "w", encoding="utf-8") as fh:
                    json.dump(data, fh)
        """
    )


def ten_users_suite(n: int, users: int = 10) -> str:
    """``n`` tests like the README's: ``users`` create at once, then count and check integrity."""
    return _module(
        f"""
        import asyncio

        import pytest


        @pytest.mark.asyncio
        @pytest.mark.parametrize("i", range({n}))
        async def test_ten_users(thread_creator, make_user_context, threadcreator_db, i):
            users = make_user_context.many({users})
            await asyncio.gather(
                *(thread_creator.create_thread_with_message(u, "Hello") for u in users)
            )
            assert await threadcreator_db.count_threads() == {users}
            await threadcreator_db.check_integrity()
        """
    )


def startup_suite(*, with_database: bool) -> str:
    """One test that writes ``time.time()`` to ``BENCH_OUT`` as soon as its body starts."""
    fixture = "threadcreator_db" if with_database else ""
    return _module(
        f"""
        import os
        import time

        import pytest


        @pytest.mark.asyncio
        async def test_first({fixture}):
            started = time.time()
            with open(os.environ["BENCH_OUT"], "w", encoding="utf-8") as fh:
                fh.write(repr(started))
        """
    )


def app_engine_suite() -> str:
    """One test: an app's own engine inserting threads + messages, instrumented and plain.

    The "app" makes its engine from a URL, as a service would: once from ``threadcreator_db.url``
    (the test's database, which the plugin instruments) and once on a database of its own the
    plugin does not know (a file in ``tmp_path`` on SQLite, a database it creates and drops on
    the same PostgreSQL server). Both get the same tables (the schema's metadata), the same
    SQLite settings (set by the app itself, so the two sides differ only by the plugin) and the
    same work: ``BENCH_INSERTS`` transactions per side and round, each a single-row INSERT of a
    thread and one of its message, done in chunks of ``BENCH_CHUNK`` that alternate between the
    sides (and which side goes first), after an untimed warm-up. Rates per round, the seconds
    of every chunk and the row counts go to ``BENCH_OUT`` as JSON; the test asserts nothing.
    """
    return _module(
        """
        import json
        import os
        import time
        import traceback
        import uuid

        import pytest
        from sqlalchemy import event, func, insert, select, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.ext.asyncio import create_async_engine

        INSERTS = int(os.environ["BENCH_INSERTS"])
        ROUNDS = int(os.environ["BENCH_ROUNDS"])
        WARMUP = int(os.environ.get("BENCH_WARMUP", "50"))
        CHUNK = min(INSERTS, int(os.environ.get("BENCH_CHUNK", "25")))
        OUT = os.environ["BENCH_OUT"]
        #: The settings the plugin gives its own SQLite connections; the app sets them on both
        #: sides so that only the instrumentation differs.
        SQLITE_PRAGMAS = (
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=5000",
            "PRAGMA synchronous=OFF",
        )


        def app_engine(url):
            engine = create_async_engine(url)
            if engine.dialect.name == "sqlite":

                @event.listens_for(engine.sync_engine, "connect")
                def _settings(dbapi_connection, _record):
                    cursor = dbapi_connection.cursor()
                    for pragma in SQLITE_PRAGMAS:
                        cursor.execute(pragma)
                    cursor.close()

            return engine


        class App:
            def __init__(self, engine, schema):
                self.engine = engine
                self.add_thread = insert(schema.thread_table)
                self.add_message = insert(schema.message_table)
                self.threads = select(func.count()).select_from(schema.thread_table)
                self.messages = select(func.count()).select_from(schema.message_table)

            async def create(self, user):
                now = int(time.time())
                thread_id = "thread_" + uuid.uuid4().hex
                async with self.engine.begin() as conn:
                    await conn.execute(
                        self.add_thread,
                        {
                            "id": thread_id, "object": "thread", "user_id": user, "title": None,
                            "status": "active", "created_at": now,
                            "metadata_": {"user_id": user, "status": "active", "created_at": now},
                        },
                    )
                    await conn.execute(
                        self.add_message,
                        {
                            "id": "msg_" + uuid.uuid4().hex, "object": "thread.message",
                            "thread_id": thread_id, "role": "user",
                            "content": [{"type": "text", "text": {"value": "Hi", "annotations": []}}],
                            "created_at": now, "assistant_id": None, "run_id": None,
                            "file_ids": [], "metadata_": {"initial_message": True},
                        },
                    )

            async def timed(self, n, user):
                started = time.perf_counter()
                for _ in range(n):
                    await self.create(user)
                return time.perf_counter() - started

            async def counts(self):
                async with self.engine.connect() as conn:
                    return (
                        (await conn.execute(self.threads)).scalar_one(),
                        (await conn.execute(self.messages)).scalar_one(),
                    )


        async def plain_database(db, tmp_path):
            # A database of the app's own, unknown to the plugin: its URL and how to drop it.
            if db.backend == "sqlite":
                url = f"sqlite+aiosqlite:///{tmp_path / 'plain.sqlite3'}"
                engine = create_async_engine(url)
                async with engine.begin() as conn:
                    await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                    await conn.run_sync(db.schema.metadata.create_all)
                await engine.dispose()

                async def drop():
                    pass

                return url, drop
            name = "tcbench_plain_" + uuid.uuid4().hex[:12]
            server = create_async_engine(
                make_url(db.url).set(database="postgres"), isolation_level="AUTOCOMMIT"
            )
            async with server.connect() as conn:
                await conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(db.url).set(database=name)
            engine = create_async_engine(url)
            async with engine.begin() as conn:
                await conn.run_sync(db.schema.metadata.create_all)
            await engine.dispose()

            async def drop():
                async with server.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
                await server.dispose()

            return url, drop


        def wal_bytes(path):
            try:
                return os.path.getsize(f"{path}-wal")
            except OSError:
                return None


        @pytest.mark.asyncio
        async def test_app_engine(threadcreator_db, tmp_path):
            data = {
                "inserts": INSERTS // CHUNK * CHUNK,
                "chunk": CHUNK,
                "rounds": ROUNDS,
                "warmup": WARMUP,
                "backend": threadcreator_db.backend,
            }
            plain_url, drop = await plain_database(threadcreator_db, tmp_path)
            apps = {
                "instrumented": App(app_engine(threadcreator_db.url), threadcreator_db.schema),
                "plain": App(app_engine(plain_url), threadcreator_db.schema),
            }
            rates = {side: [] for side in apps}
            chunk_s = {side: [] for side in apps}
            try:
                for side, app in apps.items():
                    await app.timed(WARMUP, f"warmup_{side}")
                for round_ in range(ROUNDS):
                    # Short chunks, alternating which side goes first, so that drift on a busy
                    # machine falls on both sides alike.
                    elapsed = {side: 0.0 for side in apps}
                    for chunk in range(INSERTS // CHUNK):
                        order = list(apps) if chunk % 2 == 0 else list(reversed(apps))
                        for side in order:
                            seconds = await apps[side].timed(CHUNK, f"user_{side}_{round_}")
                            elapsed[side] += seconds
                            chunk_s[side].append(seconds)
                    for side in apps:
                        rates[side].append(INSERTS // CHUNK * CHUNK / elapsed[side])
                data["rates"] = rates
                data["chunk_s"] = chunk_s
                data["expected_rows"] = WARMUP + ROUNDS * (INSERTS // CHUNK * CHUNK)
                data["rows"] = {side: list(await app.counts()) for side, app in apps.items()}
                if threadcreator_db.backend == "sqlite":
                    # A WAL that cannot be checkpointed (a reader holding a snapshot) grows and
                    # slows writes down: worth seeing when the two sides differ.
                    data["wal_bytes"] = {
                        side: wal_bytes(app.engine.url.database) for side, app in apps.items()
                    }
            except BaseException as exc:
                data["exception"] = "".join(traceback.format_exception(exc))[-2000:]
                raise
            finally:
                for app in apps.values():
                    await app.engine.dispose()
                await drop()
                with open(OUT, "w", encoding="utf-8") as fh:
                    json.dump(data, fh)
        """
    )
