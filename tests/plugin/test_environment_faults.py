"""Faults of the environment (a server gone, a full disk, a shared --basetemp, a backend that
cannot start under xdist) stop the run in one line that says what to do, and only once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..helpers import needs, pg_binaries_missing, private_mariadb, private_mariadb_missing

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

BEFORE_THE_FAULT = """
import pytest

@pytest.mark.asyncio
async def test_a_writes(thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "hi")
"""

AFTER_THE_FAULT = """

@pytest.mark.asyncio
async def test_c_meets_the_fault(thread_creator, user_context):
    await thread_creator.create_thread_with_message(user_context, "hi")

@pytest.mark.asyncio
async def test_d_not_run(threadcreator_db):
    assert await threadcreator_db.count_threads() == 0

def test_e_not_run():
    pass
"""


def run_to_the_fault(pytester: pytest.Pytester, fault: str, *args: str) -> pytest.RunResult:
    """Run a module of a test that writes, ``fault`` (the source of ``test_b_…``, which
    brings the fault), then the tests after it, with ``args``."""
    pytester.makeini(INI)
    pytester.makepyfile(BEFORE_THE_FAULT + textwrap.dedent(fault) + AFTER_THE_FAULT)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def assert_stopped_once(result: pytest.RunResult, line: str, *, in_setup: bool = True) -> None:
    """The first test after the fault is reported once, with ``line``; the run stops there, and
    nothing at exit prints a traceback. ``in_setup``: it errors at setup, in that line alone."""
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 2, outcomes
    assert outcomes.get("errors" if in_setup else "failed") == 1, outcomes
    assert "errors" not in outcomes or "failed" not in outcomes, outcomes
    if in_setup:
        result.stdout.fnmatch_lines(
            [
                "*_ ERROR at setup of test_c_meets_the_fault _*",
                f"BackendUnavailableError: {line}",
                "*short test summary info*",
                "ERROR *::test_c_meets_the_fault*",
            ]
        )
        # the error is that line, not a driver's traceback
        assert not [x for x in result.outlines if x.startswith("E ")], result.outlines
    else:
        result.stdout.fnmatch_lines(
            [
                "*_ test_c_meets_the_fault _*",
                "*- threadcreator -*",
                f"BackendUnavailableError: {line}",
                "*short test summary info*",
                "FAILED *::test_c_meets_the_fault*",
            ]
        )
    result.stdout.fnmatch_lines([f"! Interrupted: BackendUnavailableError: {line} !"])
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback (most recent call last)" not in output
    assert "test_d_not_run" not in output and "test_e_not_run" not in output
    assert result.ret == pytest.ExitCode.INTERRUPTED


@needs(pg_binaries_missing())
def test_a_server_that_goes_away_mid_run_stops_the_run_in_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_threadcreator.backends.postgresql.local import LocalCluster

    cluster = LocalCluster()
    cluster.start()
    try:
        stop = cluster.start_command().replace(" start", " stop -m immediate -w -s")
        monkeypatch.setenv("STOP_THE_SERVER", stop)
        fault = """
            import os, subprocess

            def test_b_stops_the_server(threadcreator_db):
                subprocess.run(os.environ["STOP_THE_SERVER"].split(), check=True)
            """
        result = run_to_the_fault(pytester, fault, f"--threadcreator-db={cluster.url}")
    finally:
        cluster.stop()
    assert_stopped_once(
        result,
        "postgresql (*, PostgreSQL *): the server went away mid-run (*); check that it is "
        "running (restart it, or fix THREADCREATOR_POSTGRES_URL/--threadcreator-db), then run "
        "the tests again; the run stops here",
    )


@pytest.mark.suite_independent
@needs(private_mariadb_missing())
def test_a_mysql_server_that_goes_away_mid_run_stops_the_run_in_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private server: the shared one must keep running for everyone else.
    with private_mariadb() as (url, server):
        monkeypatch.setenv("KILL_THE_SERVER", str(server.pid))
        fault = """
            import os, signal

            def test_b_stops_the_server(threadcreator_db):
                os.kill(int(os.environ["KILL_THE_SERVER"]), signal.SIGKILL)
            """
        result = run_to_the_fault(pytester, fault, f"--threadcreator-db={url}")
    assert_stopped_once(
        result,
        "mysql (*, *MariaDB*): the server went away mid-run (*); check that it is running "
        "(restart it, or fix --threadcreator-db), then run the tests "
        "again; the run stops here",
    )


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only: CI runs as root)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0 and not os.environ.get("CI"):
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_stops_the_run_in_one_line(pytester: pytest.Pytester) -> None:
    fault = """
        def test_b_fills_the_disk(threadcreator_db, tmp_path):
            with open(tmp_path / "filler", "wb") as filler:
                with pytest.raises(OSError, match="No space left on device"):
                    while True:
                        filler.write(b"x" * 65536)
                        filler.flush()
        """
    with small_disk(pytester.path / "disk", "3m") as disk:
        # sqlite is this test's subject whatever THREADCREATOR_DB the suite runs under
        result = run_to_the_fault(
            pytester, fault, "--threadcreator-db=sqlite", f"--basetemp={disk / 'bt'}"
        )
    # Where the full disk shows first depends on the room SQLite's WAL file kept: at the next
    # reset (setup) or in the test's own write.
    in_setup = "ERROR at setup of test_c_meets_the_fault" in result.stdout.str()
    assert_stopped_once(
        result,
        f"the disk is full under {disk / 'bt' / 'threadcreator'} (sqlite3.OperationalError: "
        "database or disk is full); free space there or point --basetemp at a disk with room, "
        "then run the tests again; the run stops here",
        in_setup=in_setup,
    )


def test_a_basetemp_another_run_empties_stops_the_run_in_one_line(
    pytester: pytest.Pytester,
) -> None:
    fault = """
        import shutil

        @pytest.mark.asyncio
        async def test_b_another_run_starts(threadcreator_db, tmp_path_factory):
            await threadcreator_db.count_threads()  # its file is open: nothing is written now
            # what pytest does first in a run given the same --basetemp: empty it
            shutil.rmtree(tmp_path_factory.getbasetemp())
        """
    basetemp = pytester.path / "shared"
    result = run_to_the_fault(
        pytester,
        fault,
        "--threadcreator-db=sqlite",
        "--threadcreator-isolation=fresh",
        f"--basetemp={basetemp}",
    )
    assert_stopped_once(
        result,
        f"this run's files under {basetemp / 'threadcreator'} were removed while it ran "
        f"(FileNotFoundError: *template-*.sqlite3*); another pytest run probably uses the "
        "same --basetemp: give each run that runs at the same time its own --basetemp (or "
        "none), then run the tests again; the run stops here",
    )


def test_a_backend_that_cannot_start_under_xdist_stops_without_internalerror(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.asyncio
        async def test_one(threadcreator_db):
            assert await threadcreator_db.count_threads() == 0

        @pytest.mark.asyncio
        async def test_two(threadcreator_db):
            assert await threadcreator_db.count_threads() == 0
        """
    )
    nobody_listens = "postgresql+asyncpg://postgres@127.0.0.1:1/postgres"
    result = pytester.runpytest(
        "-n", "2", "-p", "no:cacheprovider", f"--threadcreator-db={nobody_listens}"
    )
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output and "Traceback" not in output
    outcomes = result.parseoutcomes()
    assert outcomes.get("errors", 0) in (1, 2) and "passed" not in outcomes, outcomes
    line = (
        "BackendUnavailableError: cannot connect to PostgreSQL at 127.0.0.1:1 as postgres: "
        "ConnectionRefusedError: *. Check that the server runs and the URL (user, password, "
        "host, port) is right"
    )
    result.stdout.fnmatch_lines(["*_ ERROR at setup of test_* _*", "*", line])
    result.stdout.fnmatch_lines([f"! *Interrupted: {line} !"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_cleanup_that_fails_at_exit_says_so_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(
        """
        import pytest
        from pytest_threadcreator.errors import BackendUnavailableError
        from pytest_threadcreator.plugin.state import state

        @pytest.hookimpl(tryfirst=True)
        def pytest_unconfigure(config):
            runtime = state(config).runtime
            close = runtime.close

            def close_then_fail():
                close()
                raise BackendUnavailableError("stopping backends failed: sqlite: disk went away")

            runtime.close = close_then_fail
        """
    )
    pytester.makepyfile("def test_x(threadcreator_db):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--threadcreator-db=sqlite")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(
        [
            "threadcreator: cleaning up after the run: stopping backends failed: sqlite: disk "
            "went away (a later run removes what is left)"
        ]
    )
