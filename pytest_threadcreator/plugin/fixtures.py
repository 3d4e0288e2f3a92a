"""The plugin's fixtures: thin and documented; the work happens in the core modules.

Every fixture here is synchronous on purpose: a sync fixture runs outside any event loop, so it
works with whatever pytest-asyncio loop scope a test uses (the database and its store are
loop-independent; engines bind to the loop that first uses them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from .. import _binding
from ..concurrency import run_concurrently as run
from ..config import Settings
from ..context import UserExecutionContext
from ..creator import ThreadCreator
from ..database import Database, bound_database
from ..errors import BackendUnavailableError
from ..faults import FaultInjector
from ..fixture_types import RunConcurrently
from ..runtime import EnvironmentFault, Runtime, worker_id_from_env
from ..schema import ThreadSchema
from ..users import UserContextMaker
from .state import PHASE_REPORTS_KEY, state
from .xdist import is_worker, worker_run

if TYPE_CHECKING:
    from ..factories import MessageFactory, ThreadFactory

__all__ = [
    "db_session",
    "fault_injector",
    "make_user_context",
    "message_factory",
    "run_concurrently",
    "thread_creator",
    "thread_factory",
    "threadcreator_db",
    "threadcreator_schema",
    "threadcreator_setup",
    "user_context",
]


@pytest.fixture(scope="session")
def threadcreator_schema(pytestconfig: pytest.Config) -> ThreadSchema:
    """The ThreadSchema test databases are built from. Override this to use your own models."""
    return state(pytestconfig).schema()


@pytest.fixture(scope="session")
def threadcreator_setup(
    pytestconfig: pytest.Config,
    threadcreator_schema: ThreadSchema,
    tmp_path_factory: pytest.TempPathFactory,
) -> Runtime:
    """Backends, templates and shared databases of this run. Override this to change how they are made."""
    return run_runtime(pytestconfig, threadcreator_schema, tmp_path_factory)


def run_runtime(
    config: pytest.Config, schema: ThreadSchema, tmp_path_factory: pytest.TempPathFactory
) -> Runtime:
    """The run's Runtime, made on first use (by the fixture, or at session start for ``threadcreator_env``)."""
    st = state(config)
    if st.runtime is None:
        hook = config.hook.pytest_threadcreator_setup_database
        st.runtime = Runtime(
            schema=schema,
            basetemp=tmp_path_factory.getbasetemp(),
            worker_id=worker_id_from_env(),
            setup_hook=lambda database: hook(database=database),
            xdist=worker_run(config, tmp_path_factory),
            docker=st.settings.docker,
        )
    return st.runtime


def _runtime_for(request: pytest.FixtureRequest, runtime: Runtime, schema: ThreadSchema) -> Runtime:
    """``runtime``, or one of its own for a schema that a nearer conftest overrides (made once)."""
    if schema is runtime.schema:
        return runtime
    st = state(request.config)
    other: Runtime | None = st.schema_runtimes.get(id(schema))
    if other is None:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        other = runtime.for_schema(schema, factory.mktemp(f"threadcreator-{schema.name}"))
        st.schema_runtimes[id(schema)] = other
    return other


@pytest.fixture
def threadcreator_db(
    request: pytest.FixtureRequest,
    threadcreator_setup: Runtime,
    threadcreator_schema: ThreadSchema,
) -> Iterator[Database]:
    """An isolated, empty, schema-ready Database for this test (backend and isolation per options/marker)."""
    threadcreator_setup = _runtime_for(request, threadcreator_setup, threadcreator_schema)
    settings = state(request.config).settings_for(request.node)
    try:
        database = threadcreator_setup.acquire(settings, request.node.nodeid)
    except BackendUnavailableError as exc:
        failure: BackendUnavailableError | None = exc
    else:
        failure = None
    if failure is not None:  # outside the except block: the one line, no chained traceback
        _stop_for(request, settings, failure)
    token = _binding.bind(database)
    try:
        yield database
    finally:
        _binding.unbind(token)
        reports = request.node.stash.get(PHASE_REPORTS_KEY, {})
        failed = any(r.failed for r in reports.values())
        kept = threadcreator_setup.release(database, settings, keep=failed and settings.keep)
        if kept:
            request.node.user_properties.append(("threadcreator_kept_database", kept))
        if database.leaked_connections:
            where = "".join(f"\n  {note}" for note in database.leak_notes)
            pytest.fail(
                f"test left {database.leaked_connections} database connection(s) checked out; "
                "close sessions and connections (use 'async with') before the test ends" + where,
                pytrace=False,
            )


def _stop_for(
    request: pytest.FixtureRequest, settings: Settings, exc: BackendUnavailableError
) -> NoReturn:
    """Fail the test in one line; stop the run too unless only its marker asked for ``exc``'s backend."""
    line = f"BackendUnavailableError: {exc}"
    if settings.db_source == "marker":  # only this test asked for it: fail it, in one line
        pytest.fail(line, pytrace=False)
    if not isinstance(exc, EnvironmentFault) and not is_worker(request.config):
        # The run's own backend cannot start: stop now, in one line, rather than per test.
        pytest.exit(line, returncode=pytest.ExitCode.USAGE_ERROR)
    # Mid-run (or in an xdist worker, where pytest.exit is an INTERNALERROR): this test fails
    # in one line and the run stops after it.
    request.session.shouldstop = line
    pytest.fail(line, pytrace=False)


@pytest.fixture
def db_session(threadcreator_db: Database) -> Iterator[AsyncSession]:
    """An AsyncSession on threadcreator_db, closed at teardown (commit to make rows visible to others)."""
    session = threadcreator_db.new_session()
    yield session
    # closed with the engine when threadcreator_db is released


@pytest.fixture
def thread_creator(threadcreator_db: Database) -> ThreadCreator:
    """A ThreadCreator bound to this test's threadcreator_db."""
    return ThreadCreator(threadcreator_db)


@pytest.fixture
def make_user_context() -> UserContextMaker:
    """make_user_context(user_id=None, **fields) makes a valid context; .many(n) gives n distinct users."""
    return UserContextMaker()


@pytest.fixture
def user_context(make_user_context: UserContextMaker) -> UserExecutionContext:
    """A fresh, valid UserExecutionContext with a unique user_id."""
    return make_user_context()


@pytest.fixture
def run_concurrently(request: pytest.FixtureRequest) -> RunConcurrently:
    """await run_concurrently(fn, items, *, max_concurrency=None, timeout=30.0) -> ConcurrencyReport."""
    reports = state(request.config).concurrency_reports
    nodeid = request.node.nodeid

    async def diagnose() -> list[str]:  # on a timeout: the lock waits of the test's database
        database = bound_database()
        return await database.lock_waits() if database is not None else []

    return functools.partial(
        run, on_report=lambda report: reports.append((nodeid, report)), diagnose=diagnose
    )


@pytest.fixture
def thread_factory(threadcreator_db: Database) -> type[ThreadFactory]:
    """ThreadFactory on threadcreator_db: build() writes nothing; await create()/create_batch(n) commit threads with their first message."""
    from ..factories import ThreadFactory  # imported lazily: factory_boy is slow to import

    return ThreadFactory.bind(threadcreator_db)


@pytest.fixture
def message_factory(threadcreator_db: Database) -> type[MessageFactory]:
    """MessageFactory on threadcreator_db: await create(thread=… or thread_id=…) adds a message; with neither it starts a new thread."""
    from ..factories import MessageFactory

    return MessageFactory.bind(threadcreator_db)


@pytest.fixture
def fault_injector(threadcreator_db: Database) -> Iterator[FaultInjector]:
    """Make ThreadCreator fail, delay or cancel at a step (thread_insert, message_insert, commit), for this test only."""
    injector = FaultInjector()
    threadcreator_db.fault_decider = injector.decide
    threadcreator_db.fault_injector = injector  # its rules reach the test's own engines too
    try:
        yield injector
    finally:
        injector.clear()
        threadcreator_db.fault_decider = None
        threadcreator_db.fault_injector = None
