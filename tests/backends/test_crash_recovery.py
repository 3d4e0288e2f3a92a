"""A run killed outright (SIGKILL) leaves databases behind; the next run removes them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from pytest_threadcreator.backends.postgresql.janitor import parse_database_name

from .test_postgresql_backend import SERVER_URL as PG_URL
from .test_postgresql_backend import _server_kwargs as pg_server_kwargs

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

STUCK = """
import os, pathlib, time
import pytest

@pytest.mark.asyncio
async def test_stuck(threadcreator_db, thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "before the crash")
    pathlib.Path(os.environ["MARKER"]).write_text(threadcreator_db.name)
    while True:  # until the outer test kills this process
        time.sleep(1)
"""

QUICK = """
def test_quick(threadcreator_db):
    pass
"""


async def _databases_of(run_id: str) -> list[str]:
    conn = await asyncpg.connect(**pg_server_kwargs())
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database")
    finally:
        await conn.close()
    names = [row["datname"] for row in rows]
    return [n for n in names if (p := parse_database_name(n)) is not None and p.run_id == run_id]


def _pytest(directory: Path, test_file: str, **env: str) -> subprocess.Popen[bytes]:
    # subprocess: the run under test must die by SIGKILL, which only a process can
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            test_file,
            f"--threadcreator-db={PG_URL}",
        ],
        cwd=directory,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_killed_runs_databases_are_removed_by_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_stuck.py").write_text(STUCK)
    (tmp_path / "test_quick.py").write_text(QUICK)
    marker = tmp_path / "database-name.txt"
    stuck = _pytest(tmp_path, "test_stuck.py", MARKER=str(marker))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # the inner test says its database exists, mid-run
            assert stuck.poll() is None, stuck.communicate()[0].decode()
            assert time.monotonic() < deadline, "the inner run never reached its test"
            time.sleep(0.05)
        parsed = parse_database_name(marker.read_text())
        assert parsed is not None
        stuck.send_signal(signal.SIGKILL)
        stuck.wait(timeout=30)
        left = asyncio.run(_databases_of(parsed.run_id))
        assert left, "a killed run leaves its databases (nothing had a chance to clean up)"

        quick = _pytest(tmp_path, "test_quick.py")
        output = quick.communicate(timeout=120)[0].decode()
        assert quick.returncode == 0, output
        assert asyncio.run(_databases_of(parsed.run_id)) == []
    finally:
        if stuck.poll() is None:
            stuck.kill()
            stuck.wait()
