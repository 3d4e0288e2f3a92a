"""pytest hooks of pytest-threadcreator: options, marker, header, failure sections, summary.

Fixtures live in :mod:`.fixtures`, shake mode in :mod:`.shake`, the leaked-task check in
:mod:`.leaks`; all reach the run's state through :mod:`.state`.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

import pytest

from ..config import BACKEND_NAMES, ISOLATION_MODES, resolve_settings
from ..errors import ConfigurationError, ThreadCreatorError
from . import env, hookspecs, xdist
from .fixtures import run_runtime
from .state import (
    PHASE_REPORTS_KEY,
    REPETITION_KEY,
    STATE_KEY,
    PluginState,
    marker_arguments,
    state,
    state_or_none,
)
from .summary import run_report, show_report

__all__ = [
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_makereport",
    "pytest_sessionstart",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]

MARKER = (
    "threadcreator(db=None, isolation=None, shake=None): override the database backend, "
    "isolation mode and shake repetitions for this test."
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("threadcreator", "thread creation concurrency testing")
    group.addoption(
        "--threadcreator-db",
        dest="threadcreator_db",
        default=None,
        metavar="DB",
        help="database for tests: " + ", ".join(BACKEND_NAMES) + " or an async SQLAlchemy URL "
        "(postgresql+asyncpg://user@host:port/db). Precedence: marker > this option > env "
        "THREADCREATOR_DB > ini threadcreator_db > sqlite.",
    )
    group.addoption(
        "--threadcreator-isolation",
        dest="threadcreator_isolation",
        default=None,
        choices=None,
        metavar="MODE",
        help="how tests are isolated: " + ", ".join(ISOLATION_MODES) + " (default: clean).",
    )
    group.addoption(
        "--threadcreator-keep",
        dest="threadcreator_keep",
        action="store_true",
        default=False,
        help="keep the database of each failed test and name it in the report.",
    )
    group.addoption(
        "--threadcreator-report",
        dest="threadcreator_report",
        default=None,
        metavar="PATH",
        help="write a report of per-test setup costs and concurrency runs to PATH: JSON, or "
        "a self-contained HTML page with latency histograms and timelines if PATH ends in .html.",
    )
    group.addoption(
        "--threadcreator-shake",
        dest="threadcreator_shake",
        default=None,
        metavar="N",
        help="run each test that uses the database N times, each under its own seeded "
        "perturbation of the schedule; a failure prints the seed that replays it.",
    )
    group.addoption(
        "--threadcreator-seed",
        dest="threadcreator_seed",
        default=None,
        metavar="SEED",
        help="replay one shake schedule: run each database test once under SEED.",
    )
    parser.addini("threadcreator_db", "default database (see --threadcreator-db)", default="")
    parser.addini("threadcreator_shake", "default for --threadcreator-shake", default="")
    parser.addini(
        "threadcreator_isolation",
        "default isolation mode (see --threadcreator-isolation)",
        default="",
    )
    parser.addini(
        "threadcreator_docker_image",
        "image for postgresql-docker (env THREADCREATOR_DOCKER_IMAGE; default: the official "
        "postgres image)",
        default="",
    )
    parser.addini(
        "threadcreator_docker_network",
        "network mode for postgresql-docker: bridge (default) or host (a free loopback port "
        "passed as PGPORT); env THREADCREATOR_DOCKER_NETWORK",
        default="",
    )
    parser.addini(
        "threadcreator_env",
        "lines NAME={url} or NAME={sync_url}: environment variables set to this worker's clean "
        "database before test modules are imported (for apps that read DATABASE_URL at import)",
        type="linelist",
        default=[],
    )
    parser.addini(
        "threadcreator_schema",
        "custom ThreadSchema as 'package.module:attribute' (default: pytest_threadcreator.models)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    try:
        settings = resolve_settings(
            cli={
                "db": config.getoption("threadcreator_db"),
                "isolation": config.getoption("threadcreator_isolation"),
                "keep": config.getoption("threadcreator_keep"),
                "report": config.getoption("threadcreator_report"),
                "shake": config.getoption("threadcreator_shake"),
                "seed": config.getoption("threadcreator_seed"),
            },
            ini={
                "db": config.getini("threadcreator_db"),
                "isolation": config.getini("threadcreator_isolation"),
                "schema": config.getini("threadcreator_schema"),
                "shake": config.getini("threadcreator_shake"),
                "docker_image": config.getini("threadcreator_docker_image"),
                "docker_network": config.getini("threadcreator_docker_network"),
            },
        )
    except ConfigurationError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = PluginState(config, settings)
    xdist.register(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    st = state_or_none(config)
    if st is None:
        return
    pairs = env.parse(config.getini("threadcreator_env"))
    if not st.settings.schema and not pairs:
        return
    try:  # after conftest files are loaded, so a schema module beside them imports
        schema = st.schema()
    except ConfigurationError as exc:
        raise pytest.UsageError(f"ConfigurationError: {exc}") from None
    if pairs and not xdist.is_controller(config):  # the controller imports no test module
        runtime = run_runtime(config, schema, config._tmp_path_factory)  # type: ignore[attr-defined]
        try:
            database = runtime.clean_database(st.settings)
        except ThreadCreatorError as exc:
            raise pytest.UsageError(
                f"threadcreator_env needs the {st.settings.db} database at session start: {exc}"
            ) from None
        st.saved_env = env.apply(pairs, {"url": database.url, "sync_url": database.sync_url})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    st = state_or_none(config)
    if st is None:
        return
    for item in items:
        marker = item.get_closest_marker("threadcreator")
        if marker is None:
            continue
        try:
            st.settings_for(item)
        except TypeError as exc:
            reason = str(exc).replace(f"{marker_arguments.__name__}()", "threadcreator()")
            raise pytest.UsageError(
                f"{item.nodeid}: bad @pytest.mark.threadcreator arguments ({reason}); "
                "signature: threadcreator(db=None, isolation=None, shake=None)"
            ) from None
        except ConfigurationError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    st = state_or_none(config)
    return [st.settings.describe()] if st is not None else []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    item.stash.setdefault(PHASE_REPORTS_KEY, {})[report.when] = report
    repetition = item.stash.get(REPETITION_KEY, None)
    if repetition is not None and report.failed:
        number, count, seed = repetition
        report.sections.append(
            (
                "threadcreator shake",
                f"shake: repetition {number} of {count} failed under seed {seed}; replay "
                f"exactly that schedule with:\n  pytest {shlex.quote(item.nodeid)} "
                f"--threadcreator-seed={seed}",
            )
        )
    if report.when == "call" and report.failed:
        database = getattr(item, "funcargs", {}).get("threadcreator_db")
        if database is not None:
            lines = database.describe_state()
            runs = [
                r for nodeid, r in state(item.config).concurrency_reports if nodeid == item.nodeid
            ]
            if runs:
                lines.append(f"last concurrency run: {runs[-1].summary()}")
                lines += [f"  still waiting: {w}" for w in runs[-1].waiting[:10]]
            report.sections.append(("threadcreator database", "\n".join(lines)))
            if call.excinfo is not None:
                _stop_on_disk_full(item, call.excinfo.value, report)
    return report


def _stop_on_disk_full(item: pytest.Item, exc: BaseException, report: pytest.TestReport) -> None:
    """A test that failed because the database's disk is full stops the run, in one line."""
    st = state(item.config)
    db = st.settings_for(item).db
    for runtime in [st.runtime, *st.schema_runtimes.values()]:
        fault = runtime.disk_full(db, exc) if runtime is not None else None
        if fault is not None:
            line = f"BackendUnavailableError: {fault}"
            report.sections.append(("threadcreator", line))
            item.session.shouldstop = line
            return


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if xdist.is_worker(config) or xdist.is_controller(config):
        return  # under xdist the controller shows the workers' data, merged
    data = run_report(config)
    if data is not None:
        show_report(terminalreporter, config, data)


def pytest_unconfigure(config: pytest.Config) -> None:
    st = state_or_none(config)
    if st is None:
        return
    env.restore(st.saved_env)
    st.saved_env = {}
    runtimes = [*st.schema_runtimes.values(), *([st.runtime] if st.runtime is not None else [])]
    st.schema_runtimes, st.runtime = {}, None
    for runtime in runtimes:
        try:
            runtime.close()
        except ThreadCreatorError as exc:  # after the summary: one line, not a traceback
            sys.stderr.write(
                f"threadcreator: cleaning up after the run: {exc} (a later run removes what "
                "is left)\n"
            )
