"""pytest hooks of pytest-threadcreator: options, marker, header, summary. Fixtures live in fixtures.py."""

from __future__ import annotations

import shlex
from typing import Any, cast

import pytest

from . import hookspecs, shake, xdist_support
from .config import BACKEND_NAMES, ISOLATION_MODES, Settings, resolve_settings
from .errors import ConfigurationError
from .faults import FaultInjector
from .fixtures import (  # noqa: F401 - registered with pytest through this module
    db_session,
    fault_injector,
    make_user_context,
    message_factory,
    run_concurrently,
    thread_creator,
    thread_factory,
    threadcreator_db,
    threadcreator_schema,
    threadcreator_setup,
    user_context,
)
from .reporting import report_data, summary_lines, write_report
from .runtime import Runtime
from .schema import ThreadSchema, default_schema, load_schema
from .shake import repetition_seeds

__all__ = ["PluginState", "state"]

MARKER = (
    "threadcreator(db=None, isolation=None, shake=None): override the database backend, "
    "isolation mode and shake repetitions for this test."
)


def _marker_signature(
    db: str | None = None, isolation: str | None = None, shake: int | None = None
) -> tuple[str | None, str | None, int | None]:
    return db, isolation, shake


class PluginState:
    """Everything the plugin keeps for one run: resolved settings and the runtime."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.runtime: Runtime | None = None
        #: (test id, repetitions run, seed that failed or None) of every shaken test
        self.shaken: list[tuple[str, int, int | None]] = []
        #: (test id, ConcurrencyReport) of every run_concurrently call, in order
        self.concurrency_reports: list[tuple[str, Any]] = []
        self._schema: ThreadSchema | None = None
        #: runtimes of schemas that a conftest's threadcreator_schema override brings, by id
        self.schema_runtimes: dict[int, Runtime] = {}

    def schema(self) -> ThreadSchema:
        """The schema from ini ``threadcreator_schema``, or the default one."""
        if self._schema is None:
            spec = self.settings.schema
            self._schema = load_schema(spec) if spec else default_schema()
        return self._schema

    def settings_for(self, item: pytest.Item) -> Settings:
        """This run's settings with the test's ``threadcreator`` marker applied."""
        marker = item.get_closest_marker("threadcreator")
        if marker is None:
            return self.settings
        db, isolation, shake_count = _marker_signature(*marker.args, **marker.kwargs)
        return self.settings.with_marker(db, isolation, shake_count)


_STATE = pytest.StashKey[PluginState]()
REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


def state(config: pytest.Config) -> PluginState:
    """The plugin's state for this run."""
    return config.stash[_STATE]


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
    config.stash[_STATE] = PluginState(config, settings)
    xdist_support.register(config)


def pytest_sessionstart(session: pytest.Session) -> None:
    st = session.config.stash.get(_STATE, None)
    if st is None or not st.settings.schema:
        return
    try:  # after conftest files are loaded, so a schema module beside them imports
        st.schema()
    except ConfigurationError as exc:
        raise pytest.UsageError(f"ConfigurationError: {exc}") from None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    st = config.stash.get(_STATE, None)
    if st is None:
        return
    for item in items:
        marker = item.get_closest_marker("threadcreator")
        if marker is None:
            continue
        try:
            st.settings_for(item)
        except TypeError as exc:
            reason = str(exc).replace("_marker_signature()", "threadcreator()")
            raise pytest.UsageError(
                f"{item.nodeid}: bad @pytest.mark.threadcreator arguments ({reason}); "
                "signature: threadcreator(db=None, isolation=None, shake=None)"
            ) from None
        except ConfigurationError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    st = config.stash.get(_STATE, None)
    return [st.settings.describe()] if st is not None else []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    item.stash.setdefault(REPORT_KEY, {})[report.when] = report
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
    return report


def run_report(config: pytest.Config) -> dict[str, Any] | None:
    """This process's report data (None when the plugin is not configured)."""
    st = config.stash.get(_STATE, None)
    if st is None:
        return None
    return report_data(
        st.runtime,
        st.concurrency_reports,
        settings=st.settings.describe(),
        shaken=st.shaken,
        extra_runtimes=list(st.schema_runtimes.values()),
    )


def show_report(terminalreporter: Any, config: pytest.Config, data: dict[str, Any]) -> None:
    """Print the summary and write ``--threadcreator-report``."""
    lines = summary_lines(data, verbose=config.get_verbosity() > 0)
    if lines:
        terminalreporter.write_sep("-", "threadcreator")
        for line in lines:
            terminalreporter.write_line(line)
    report = state(config).settings.report
    if report:
        path = write_report(report, data)
        terminalreporter.write_line(f"threadcreator report written to {path}")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if xdist_support.is_worker(config) or xdist_support.is_controller(config):
        return  # under xdist the controller shows the workers' data, merged
    data = run_report(config)
    if data is not None:
        show_report(terminalreporter, config, data)


_SHAKING = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Shake mode: run the test body once per seed, each time on an emptied database."""
    __tracebackhide__ = True
    if pyfuncitem.stash.get(_SHAKING, False):
        return None  # a repetition of ours: let pytest (and pytest-asyncio) run the body
    st = pyfuncitem.config.stash.get(_STATE, None)
    database = getattr(pyfuncitem, "funcargs", {}).get("threadcreator_db")
    if st is None or database is None:
        return None
    settings = st.settings_for(pyfuncitem)
    if settings.seed is not None:
        seeds = [settings.seed]
    elif settings.shake:
        seeds = repetition_seeds(pyfuncitem.nodeid, settings.shake)
    else:
        return None
    if database.isolation == "rollback":
        pytest.fail(
            "shake mode needs clean or fresh isolation (each repetition starts on an emptied "
            "database); this test runs in rollback isolation",
            pytrace=False,
        )
    injector = cast("FaultInjector | None", pyfuncitem.funcargs.get("fault_injector"))
    pyfuncitem.stash[_SHAKING] = True
    try:
        for number, seed in enumerate(seeds, 1):
            if number > 1:  # each repetition is an isolated run of its own
                database.store.reset()
                if injector is not None:
                    injector.clear()
                    injector.reset_counts()
            with shake.activate(shake.Shaker(seed)):
                try:
                    pyfuncitem.ihook.pytest_pyfunc_call(pyfuncitem=pyfuncitem)
                except (Exception, pytest.fail.Exception) as exc:
                    st.shaken.append((pyfuncitem.nodeid, number, seed))
                    raise AssertionError(
                        f"shake: repetition {number} of {len(seeds)} failed under seed {seed}; "
                        "replay exactly that schedule with:\n"
                        f"  pytest {shlex.quote(pyfuncitem.nodeid)} --threadcreator-seed={seed}"
                        f"\n{type(exc).__name__}: {exc}"
                    ) from exc
    finally:
        pyfuncitem.stash[_SHAKING] = False
    st.shaken.append((pyfuncitem.nodeid, len(seeds), None))
    pyfuncitem.user_properties.append(
        ("threadcreator_shake", f"{len(seeds)} repetition(s) passed, seeds {seeds[0]}…")
    )
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    database = getattr(item, "funcargs", {}).get("threadcreator_db")
    if database is not None:
        leaked = database.pending_tasks()
        if leaked:
            names = ", ".join(sorted({_task_label(t) for t in leaked}))
            pytest.fail(
                f"test left {len(leaked)} asyncio task(s) running: {names}. Await or cancel "
                "them before the test ends (run_concurrently does), or they keep writing into "
                "the next test's database.",
                pytrace=False,
            )
    return result


def _task_label(task: Any) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", None) or task.get_name())


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(_STATE, None)
    if st is None:
        return
    others, st.schema_runtimes = list(st.schema_runtimes.values()), {}
    for other in others:
        other.close()
    if st.runtime is not None:
        runtime, st.runtime = st.runtime, None
        runtime.close()
