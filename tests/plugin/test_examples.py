"""Every suite in conftest_examples/ runs green, copied as a newcomer would copy it.

Each example is a ready-to-copy folder with its own pytest.ini (the quickstart has none: it
shows that none is needed). They run through ``pytester.copy_example`` on SQLite and, where the
example is not tied to one backend, on the PostgreSQL server at ``$THREADCREATOR_POSTGRES_URL``
and the MySQL/MariaDB server at ``$THREADCREATOR_MYSQL_URL``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re

import pytest

from ..helpers import (
    MYSQL_SERVER_URL,
    REPO_ROOT,
    mysql_server_missing,
    needs_marks,
    require_postgresql_backend,
)
from ..helpers import PG_SERVER_URL as SERVER_URL

# The examples choose their backend by ini or option, and are no xdist workers.
pytestmark = [pytest.mark.usefixtures("clean_environment"), pytest.mark.suite_independent]

EXAMPLES = REPO_ROOT / "conftest_examples"
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(SERVER_URL, id="postgresql"),
    pytest.param(MYSQL_SERVER_URL, id="mysql", marks=needs_marks(mysql_server_missing())),
]

QUICKSTART_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def test_every_example_folder_is_run_here() -> None:
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == {
        "alembic_migrated",
        "app_engine",
        "fastapi_app",
        "load_with_faults",
        "postgresql_url",
        "quickstart",
        "sync_app",
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


def require(module: str, extra_pin: str) -> None:
    """Fail (never skip) when an example's dependency is missing: the test extra installs it."""
    __tracebackhide__ = True
    if importlib.util.find_spec(module) is None:
        pytest.fail(
            f"{module} is not installed; the test extra installs it ({extra_pin}): "
            "pip install -e '.[test]'",
            pytrace=False,
        )


@pytest.mark.parametrize("db", BACKENDS)
def test_app_engine(pytester: pytest.Pytester, db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_postgresql_backend(db)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pytester.copy_example("app_engine")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*shake: 1 test(s), 20 repetition(s), 0 failed*"])
    assert "DATABASE_URL" not in os.environ  # threadcreator_env put it back as it was


@pytest.mark.parametrize("db", BACKENDS)
def test_fastapi_app(pytester: pytest.Pytester, db: str) -> None:
    require("fastapi", "fastapi>=0.110")
    require("httpx", "httpx>=0.27")
    require_postgresql_backend(db)
    pytester.copy_example("fastapi_app")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*1 concurrency run(s): 100 calls, 0 failed*"])


@pytest.mark.parametrize("db", BACKENDS)
def test_sync_app(pytester: pytest.Pytester, db: str) -> None:
    if db != "sqlite":
        require("psycopg", "psycopg[binary]>=3.1")
    require_postgresql_backend(db)
    pytester.copy_example("sync_app")
    result = pytester.runpytest("-p", "no:cacheprovider", f"--threadcreator-db={db}")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*1 concurrency run(s): 30 calls, 0 failed*"])


GUIDE = REPO_ROOT / "docs" / "your-code.md"
APP_EXAMPLES = ("app_engine", "fastapi_app", "sync_app")


def test_every_code_block_of_the_app_guide_is_example_code_or_runs() -> None:
    """docs/your-code.md shows only code that runs: each python or ini block is a verbatim
    excerpt of an example that this module runs, or a standalone program run here."""
    sources = [
        path.read_text()
        for name in APP_EXAMPLES
        for path in sorted((EXAMPLES / name).iterdir())
        if path.suffix in (".py", ".ini")
    ]
    blocks = re.findall(r"^```(python|ini)\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)
    assert len(blocks) > 10
    standalone = []
    for language, code in blocks:
        if any(code in source for source in sources):
            continue
        assert language == "python", f"this ini block is in no example's pytest.ini:\n{code}"
        exec(compile(code, f"{GUIDE.name} block", "exec"), {"__name__": "guide_block"})
        standalone.append(code)
    # Only the ThreadSchema of "Apps whose tables differ" is a program of its own; any other
    # block found in no example has drifted from the code it was copied from.
    assert len(standalone) == 1, "blocks in no example:\n\n" + "\n\n".join(standalone)
