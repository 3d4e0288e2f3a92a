"""A run killed outright (SIGKILL) leaves databases behind; the next run removes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_threadcreator.backends.postgresql.janitor import parse_database_name

from ..helpers import PG_SERVER_URL, kill_mid_test, pg_databases_of_run, start_pytest

pytestmark = pytest.mark.suite_independent

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


def test_a_killed_runs_databases_are_removed_by_the_next_run(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_stuck.py").write_text(STUCK)
    (tmp_path / "test_quick.py").write_text(QUICK)
    marker = tmp_path / "database-name.txt"
    db = f"--threadcreator-db={PG_SERVER_URL}"
    stuck = start_pytest(tmp_path, "test_stuck.py", db, MARKER=str(marker))
    parsed = parse_database_name(kill_mid_test(stuck, marker))
    assert parsed is not None
    left = pg_databases_of_run(parsed.run_id)
    assert left, "a killed run leaves its databases (nothing had a chance to clean up)"

    quick = start_pytest(tmp_path, "test_quick.py", db)
    output = quick.communicate(timeout=120)[0]
    assert quick.returncode == 0, output
    assert pg_databases_of_run(parsed.run_id) == []
