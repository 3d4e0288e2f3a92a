"""Every suite in conftest_examples/ runs green, copied as a newcomer would copy it.

Each example is a ready-to-copy folder with its own pytest.ini (the quickstart has none: it
shows that none is needed). They run through ``pytester.copy_example`` on SQLite and, where the
example is not tied to one backend, on the PostgreSQL server at ``$THREADCREATOR_POSTGRES_URL``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "conftest_examples"
SERVER_URL = os.environ.get(
    "THREADCREATOR_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param(SERVER_URL, id="postgresql")]

QUICKSTART_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples choose their backend by ini or option, and are no xdist workers even when
    this suite is."""
    for name in ("THREADCREATOR_DB", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)


def _import_postgresql_backend() -> ImportError | None:
    try:
        importlib.import_module("pytest_threadcreator.backends.postgresql.backend")
        importlib.import_module("asyncpg")
    except ImportError as exc:
        return exc
    return None


# At import, before any pytester fixture exists: pytester drops the modules first imported
# while it was alive, and importing a Cython extension a second time in one interpreter crashes
# it (asyncpg's protocol does, on the next PostgreSQL run).
POSTGRESQL_IMPORT_ERROR = _import_postgresql_backend()


def require_postgresql_backend(db: str) -> None:
    """Fail (never skip) when a PostgreSQL run meets a missing backend module."""
    __tracebackhide__ = True
    if db == "sqlite" or POSTGRESQL_IMPORT_ERROR is None:
        return
    exc = POSTGRESQL_IMPORT_ERROR
    pytest.fail(
        "pytest_threadcreator.backends.postgresql.backend does not import "
        f"({type(exc).__name__}: {exc}); the PostgreSQL examples need the backend to land",
        pytrace=False,
    )


def test_every_example_folder_is_run_here() -> None:
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == {
        "alembic_migrated",
        "load_with_faults",
        "postgresql_url",
        "quickstart",
        "team_models",
        "xdist",
    }


@pytest.mark.parametrize("db", BACKENDS)
def test_quickstart(pytester: pytest.Pytester, db: str) -> None:
    require_postgresql_backend(db)
    pytester.makeini(QUICKSTART_INI)
    pytester.copy_example("quickstart")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=3)


@pytest.mark.parametrize("db", BACKENDS)
def test_load_with_faults(pytester: pytest.Pytester, db: str) -> None:
    require_postgresql_backend(db)
    pytester.makeini(QUICKSTART_INI)
    pytester.copy_example("load_with_faults")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize("db", BACKENDS)
def test_team_models(pytester: pytest.Pytester, db: str) -> None:
    require_postgresql_backend(db)
    pytester.copy_example("team_models")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=9)
    result.stdout.fnmatch_lines(["*1 concurrency run(s): 50 calls, 0 failed*"])


@pytest.mark.parametrize("db", BACKENDS)
def test_alembic_migrated(pytester: pytest.Pytester, db: str) -> None:
    if importlib.util.find_spec("alembic") is None:
        pytest.fail("alembic is not installed; the test extra installs it (alembic>=1.13)")
    require_postgresql_backend(db)
    pytester.copy_example("alembic_migrated")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=5)


@pytest.mark.parametrize("db", BACKENDS)
def test_xdist(pytester: pytest.Pytester, db: str) -> None:
    require_postgresql_backend(db)
    pytester.copy_example("xdist")
    # subprocess: xdist workers are processes
    result = pytester.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", f"--threadcreator-db={db}"
    )
    result.assert_outcomes(passed=20)
    result.stdout.fnmatch_lines(["*2 workers [[]20 items[]]*"])


def test_postgresql_url(pytester: pytest.Pytester) -> None:
    require_postgresql_backend(SERVER_URL)
    pytester.copy_example("postgresql_url")
    ini = pytester.path / "pytest.ini"
    default = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    assert f"threadcreator_db = {default}" in ini.read_text()
    # The example names the usual local server; point it at this machine's, as a user would.
    ini.write_text(ini.read_text().replace(default, SERVER_URL))
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*threadcreator: db=postgresql+asyncpg://* (from ini)*"])
