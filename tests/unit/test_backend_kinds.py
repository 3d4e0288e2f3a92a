"""The registry of backend kinds: one check of a server URL for every route, and nothing outside
``backends/`` asking which backend it has."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

import pytest_threadcreator
from pytest_threadcreator.backends.postgresql.servers import (
    ENV_POSTGRES_URL,
    ServerOptions,
    reach_server,
)
from pytest_threadcreator.backends.registry import BACKEND_NAMES, KINDS, kind_of
from pytest_threadcreator.config import resolve_settings
from pytest_threadcreator.errors import ConfigurationError

PACKAGE = Path(pytest_threadcreator.__file__).parent

URLS = [
    "postgresql://u@h/db",
    "postgres://u:secret@h:5433/db",
    "postgresql+asyncpg://u@h/db",
    "postgresql+psycopg://u@h/db",
    "postgresql+psycopg2://u:secret@h/db",
]


def _by_option(url: str) -> str:
    """What ``--threadcreator-db=<url>`` gives: the db value, or the error after its setting."""
    try:
        return resolve_settings(cli={"db": url}, ini={}, env={}).db
    except ConfigurationError as exc:
        return "error: " + str(exc).removeprefix("--threadcreator-db: ")


def _by_environment(url: str) -> str:
    """What ``--threadcreator-db=postgresql`` makes of ``THREADCREATOR_POSTGRES_URL=<url>``: at
    start-up, and in the backend's auto chain (which must agree)."""
    try:
        resolve_settings(cli={}, ini={}, env={ENV_POSTGRES_URL: url})
        at_startup = "taken"
    except ConfigurationError as exc:
        at_startup = "error: " + str(exc).removeprefix(f"environment {ENV_POSTGRES_URL}: ")
    probed: list[URL] = []
    options = ServerOptions(mode="auto", run_id="abc")
    try:
        server = reach_server(options, {ENV_POSTGRES_URL: url}, probed.append)
    except ConfigurationError as exc:
        assert not probed, "a refused URL must not be tried"
        in_chain = "error: " + str(exc).removeprefix(f"environment {ENV_POSTGRES_URL}: ")
        assert at_startup == in_chain
        return in_chain
    assert at_startup == "taken"
    assert server.source == "url" and probed == [server.url]
    return server.url.render_as_string(hide_password=False)


@pytest.mark.parametrize("url", URLS)
def test_the_option_and_the_environment_give_one_answer(url: str) -> None:
    assert _by_option(url) == _by_environment(url)


def test_what_the_url_check_accepts_and_what_it_says_to_write() -> None:
    assert _by_option("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert _by_option("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert _by_option("postgresql://u@h/db") == (
        "error: postgresql://u@h/db is not an async PostgreSQL URL; use "
        "postgresql+asyncpg://u@h/db instead (or postgresql+psycopg://…): it names no driver, "
        "and SQLAlchemy then uses the sync psycopg2"
    )
    assert _by_option("postgres://u:secret@h:5433/db").startswith(
        "error: postgres://u:***@h:5433/db is not an async PostgreSQL URL; use "
        "postgresql+asyncpg://u:***@h:5433/db instead"
    )
    psycopg2 = _by_option("postgresql+psycopg2://u:secret@h/db")
    assert psycopg2.endswith("the psycopg2 driver, which is not async")
    assert "secret" not in psycopg2
    # MySQL/MariaDB URLs go to the MySQL kind: async drivers taken, the rest told what to write.
    for url in ("mysql+asyncmy://root@127.0.0.1:3306/", "mysql+aiomysql://u:pw@h:3307/"):
        assert _by_option(url) == url
        assert kind_of(url).name == "mysql"
    assert _by_option("mariadb+asyncmy://root@h/") == "mariadb+asyncmy://root@h/"
    pymysql = _by_option("mysql+pymysql://u:secret@h/")
    assert pymysql == (
        "error: mysql+pymysql://u:***@h/ is not an async MySQL URL; use "
        "mysql+asyncmy://u:***@h/ instead (or mysql+aiomysql://…): the pymysql driver is not async"
    )
    assert _by_option("mysql://root@h/").endswith("it names no driver")
    # THREADCREATOR_POSTGRES_URL wants a PostgreSQL server, at start-up and in the auto chain.
    assert _by_environment("mysql+asyncmy://root@127.0.0.1:3306/") == (
        "error: mysql+asyncmy://root@127.0.0.1:3306/ is a MySQL/MariaDB URL, where a PostgreSQL "
        "URL such as postgresql+asyncpg://user@host:5432/postgres is wanted; give a "
        "MySQL/MariaDB URL as --threadcreator-db instead"
    )


def test_every_db_value_has_exactly_one_kind() -> None:
    assert BACKEND_NAMES == ("sqlite", "postgresql", "postgresql-local", "postgresql-docker")
    assert [kind_of(value).name for value in BACKEND_NAMES] == [
        "sqlite",
        "postgresql",
        "postgresql",
        "postgresql",
    ]
    assert kind_of("postgresql+asyncpg://u@h/db").name == "postgresql"
    assert len({kind.name for kind in KINDS}) == len(KINDS)


def test_the_registry_knows_each_server_kind_as_its_module_does() -> None:
    from pytest_threadcreator.backends.mysql import backend as mysql
    from pytest_threadcreator.backends.postgresql import backend, servers
    from pytest_threadcreator.backends.registry import MYSQL, POSTGRESQL

    assert POSTGRESQL.values == tuple(servers.MODES)
    assert POSTGRESQL.environment == (ENV_POSTGRES_URL,)
    assert (POSTGRESQL.name, MYSQL.name) == (backend.NAME, mysql.NAME)


def _loaded_in_a_new_interpreter(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``prefixes`` that a new interpreter has loaded after
    running ``code``."""
    script = (
        f"import sys\n{code}\nprint(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    )
    # subprocess: what a fresh interpreter imports, which this one has long done already
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return list(ast.literal_eval(out.strip()))


def test_the_mysql_backend_loads_nothing_of_postgresql() -> None:
    """Names and pool sizes are shared, not borrowed from the PostgreSQL backend: a MySQL run
    imports neither it nor asyncpg (35 ms of its start-up here)."""
    heavy = (
        "asyncpg",
        "sqlalchemy.dialects.postgresql",
        "pytest_threadcreator.backends.postgresql",
        "pytest_threadcreator.store.postgresql",
    )
    assert (
        _loaded_in_a_new_interpreter("import pytest_threadcreator.backends.mysql.backend", heavy)
        == []
    )


def test_the_pool_plan_names_the_server_kind_it_refuses() -> None:
    from pytest_threadcreator.backends.pools import plan_pools

    with pytest.raises(ConfigurationError) as info:
        plan_pools(40, reserved=1, workers=20, server="MySQL", remedy="or use another server")
    assert str(info.value) == (
        "MySQL max_connections=40 is too low for 20 workers (each would get 1 connections). "
        "Raise max_connections on the server, run fewer xdist workers (-n), or use another "
        "server"
    )


def test_a_sqlite_run_loads_no_server_kind() -> None:
    """The PostgreSQL and MySQL backends, their dialects and drivers load on first use."""
    code = (
        "import pytest_threadcreator.plugin\n"
        "from pytest_threadcreator.config import resolve_settings\n"
        "from pytest_threadcreator.backends.registry import validate_environment\n"
        "resolve_settings(cli={}, ini={}, env={})\n"
        "validate_environment({})"
    )
    heavy = (
        "asyncpg",
        "asyncmy",
        "sqlalchemy.dialects.postgresql",
        "sqlalchemy.dialects.mysql",
        "pytest_threadcreator.backends.postgresql",
        "pytest_threadcreator.backends.mysql",
        "pytest_threadcreator.store.postgresql",
    )
    assert _loaded_in_a_new_interpreter(code, heavy) == []


def test_a_bad_postgres_url_in_the_environment_is_still_refused() -> None:
    from pytest_threadcreator.backends.registry import validate_environment

    with pytest.raises(ConfigurationError, match=ENV_POSTGRES_URL):
        validate_environment({ENV_POSTGRES_URL: "mysql+asyncmy://root@h/"})


@pytest.mark.parametrize(
    ("url", "example"),
    [
        ("postgresql://u@h:notaport/db", "postgresql+asyncpg://"),
        ("mysql+asyncmy://root@h:54x/", "mysql+asyncmy://"),
    ],
)
def test_a_url_whose_port_is_not_a_number_is_refused_saying_so(url: str, example: str) -> None:
    error = _by_option(url)
    assert error.startswith(f"error: {url!r} is not a valid URL (its port is not a number)")
    assert example in error


def _backend_names() -> set[str]:
    return {kind.name for kind in KINDS} | set(BACKEND_NAMES) | {"mysql", "mariadb"}


def _name_comparisons(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines of ``x == "sqlite"``, ``x != "postgresql"``, ``x in ("sqlite", …)`` and the like."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            elements = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else []
            constants = [operand, *elements]
            if any(isinstance(c, ast.Constant) and c.value in names for c in constants):
                lines.append(node.lineno)
    return lines


def test_the_scan_finds_a_backend_name_comparison() -> None:
    source = 'if db == "sqlite": pass\nif kind in ("postgresql", "x"): pass\nif a == "b": pass\n'
    assert _name_comparisons(ast.parse(source), _backend_names()) == [1, 2]


def test_no_module_outside_backends_compares_a_backend_name() -> None:
    names = _backend_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "backends":
            continue
        for line in _name_comparisons(ast.parse(path.read_text(encoding="utf-8")), names):
            found.append(f"{relative}:{line}")
    assert found == [], (
        "ask the backend registry (backends/registry.py), the backend or the store for a "
        f"capability instead of comparing a backend name: {found}"
    )


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Absolute names of the modules a module of ``package`` imports, anywhere in it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = str(node.module)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_store_imports_no_servers_no_database_and_no_pytest() -> None:
    forbidden = ("database", "backends", "runtime", "plugin", "fixtures", "xdist_support")
    found = []
    for path in sorted((PACKAGE / "store").glob("*.py")):
        package = "pytest_threadcreator.store"
        for name in _imports(ast.parse(path.read_text(encoding="utf-8")), package):
            parts = name.split(".")
            if parts[0] in ("pytest", "_pytest") or (
                parts[0] == "pytest_threadcreator" and len(parts) > 1 and parts[1] in forbidden
            ):
                found.append(f"store/{path.name}: {name}")
    assert found == [], f"the store is the data path of one database only: {found}"
