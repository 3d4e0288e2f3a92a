"""pytest hooks of pytest-threadcreator: options, marker, header, summary. Fixtures live in fixtures.py."""

from __future__ import annotations

import asyncio
import shlex
import sys
from typing import Any

import pytest

from . import hookspecs, shake, xdist_support
from .config import BACKEND_NAMES, ISOLATION_MODES, Settings, resolve_settings
from .errors import ConfigurationError, ThreadCreatorError
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
    repetition = item.stash.get(_REPETITION, None)
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


#: (repetition number, repetitions, seed) of the shake repetition running now
_REPETITION = pytest.StashKey[tuple[int, int, int]]()


def _shake_seeds(item: pytest.Item) -> list[int] | None:
    """Seeds to run ``item`` under, or None when it is not shaken (no database or no shake)."""
    st = item.config.stash.get(_STATE, None)
    if st is None or not isinstance(item, pytest.Function):
        return None
    if "threadcreator_db" not in item.fixturenames:
        return None
    settings = st.settings_for(item)
    if settings.seed is not None:
        return [settings.seed]
    if settings.shake:
        return repetition_seeds(item.nodeid, settings.shake)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Shake mode: run the test once per seed, each repetition a whole run of it (function
    fixtures set up and torn down again, on an emptied database); reported once."""
    seeds = _shake_seeds(item)
    if seeds is None:
        return None
    assert isinstance(item, pytest.Function)
    st = state(item.config)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports: list[pytest.TestReport] = []
    failed_seed: int | None = None
    for number, seed in enumerate(seeds, 1):
        if number > 1:  # the previous repetition's request and fixture values are spent
            item._initrequest()
            item._report_sections.clear()
        item.stash[_REPETITION] = (number, len(seeds), seed)
        reports = _run_once(item, seed)
        last = number == len(seeds) or not all(r.passed for r in reports)
        # between repetitions only the test's own (function-scoped) fixtures are torn down
        reports.append(_run_phase(item, "teardown", nextitem=nextitem if last else item.parent))
        if not all(r.passed for r in reports):
            failed_seed = seed
            if not last:  # its teardown failed: finish what the next test does not need
                reports += _finish_teardown(item, nextitem)
            break
    del item.stash[_REPETITION]
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    st.shaken.append((item.nodeid, len(seeds) if failed_seed is None else number, failed_seed))
    if failed_seed is None:
        item.user_properties.append(
            ("threadcreator_shake", f"{len(seeds)} repetition(s) passed, seeds {seeds[0]}…")
        )
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _finish_teardown(
    item: pytest.Function, nextitem: pytest.Item | None
) -> list[pytest.TestReport]:
    """Tear down the scopes above the test that ``nextitem`` does not share, after a teardown
    for a repetition to come (its hooks ran already: only pytest's setup state is left)."""
    setup_state = item.session._setupstate
    call = pytest.CallInfo.from_call(
        lambda: setup_state.teardown_exact(nextitem),
        when="teardown",
        reraise=(pytest.exit.Exception, KeyboardInterrupt),
    )
    if call.excinfo is None:
        return []
    return [item.ihook.pytest_runtest_makereport(item=item, call=call)]


def _run_once(item: pytest.Function, seed: int) -> list[pytest.TestReport]:
    """Setup and call of one repetition, under the shaker of ``seed``."""
    reports = [_run_phase(item, "setup")]
    if reports[0].passed and not item.config.getoption("setuponly", False):
        with shake.activate(shake.Shaker(seed)):
            reports.append(_run_phase(item, "call"))
    return reports


def _run_phase(item: pytest.Function, when: str, **kwargs: Any) -> pytest.TestReport:
    """One phase through the public hooks, as pytest runs it (its report not logged yet)."""
    hook = getattr(item.ihook, f"pytest_runtest_{when}")
    reraise: tuple[type[BaseException], ...] = (pytest.exit.Exception,)
    if not item.config.getoption("usepdb", False):
        reraise += (KeyboardInterrupt,)
    call = pytest.CallInfo.from_call(
        lambda: hook(item=item, **kwargs),
        when=when,  # type: ignore[arg-type]
        reraise=reraise,
    )
    report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    if (
        call.excinfo is not None
        and report.failed
        and not call.excinfo.errisinstance(pytest.skip.Exception)
    ):
        item.ihook.pytest_exception_interact(node=item, call=call, report=report)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A shaken test needs a database emptied before each repetition: not rollback isolation."""
    if _REPETITION not in pyfuncitem.stash:
        return None
    database: Any = pyfuncitem.funcargs.get("threadcreator_db")
    if database is not None and database.isolation == "rollback":
        pytest.fail(
            "shake mode needs clean or fresh isolation (each repetition starts on an emptied "
            "database); this test runs in rollback isolation",
            pytrace=False,
        )
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # The test's event loops are known before it runs (pytest-asyncio's runner is one of its
    # fixtures), so a task it starts before touching the database is seen too; tasks already
    # pending in a shared loop belong to earlier tests.
    loops = _event_loops(getattr(item, "funcargs", None) or {})
    known = {task for loop in loops for task in asyncio.all_tasks(loop)}
    result = yield
    database = getattr(item, "funcargs", {}).get("threadcreator_db")
    if database is not None:
        leaked = database.pending_tasks(loops, known=known)
        if leaked:
            names = ", ".join(sorted({_task_label(t) for t in leaked}))
            pytest.fail(
                f"test left {len(leaked)} asyncio task(s) running: {names}. Await or cancel "
                "them before the test ends (run_concurrently does), or they keep writing into "
                "the next test's database.",
                pytrace=False,
            )
    return result


def _event_loops(funcargs: dict[str, Any]) -> list[asyncio.AbstractEventLoop]:
    """Open event loops among a test's fixture values: loops, and runners (``get_loop()``) such
    as the one pytest-asyncio runs the test in."""
    loops = []
    for value in funcargs.values():
        loop = value
        if not isinstance(value, asyncio.AbstractEventLoop):
            get_loop = getattr(type(value), "get_loop", None)
            if not callable(get_loop) or not type(value).__name__.endswith("Runner"):
                continue
            try:
                loop = value.get_loop()
            except Exception:  # a closed runner
                continue
        if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_closed():
            loops.append(loop)
    return loops


def _task_label(task: Any) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", None) or task.get_name())


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(_STATE, None)
    if st is None:
        return
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
