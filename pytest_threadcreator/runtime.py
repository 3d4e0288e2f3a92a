"""Runtime: the backends, templates and databases of one pytest run (or xdist worker).

Pytest-free; the plugin creates one Runtime per run and the fixtures ask it for databases.
Per-test setup is the hot path: in ``clean`` isolation a test reuses the worker's database,
emptied at setup (no new file, server database or connection).

Under pytest-xdist each worker has a Runtime of its own and an :class:`XdistRun` from the
controller: one run id for all workers, the run's shared temp dir and the servers the controller
started. The schema template is then built once per run and shared (a file in the shared dir on
SQLite, one template database on PostgreSQL), so the setup hook runs once per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend, BackendRequest
from .backends.registry import make_backend
from .config import DockerSettings, Settings
from .database import Database
from .errors import BackendUnavailableError, ConfigurationError
from .schema import ThreadSchema

__all__ = ["EnvironmentFault", "Runtime", "SetupCost", "XdistRun", "environment_fault"]


@dataclass(frozen=True)
class XdistRun:
    """What the pytest-xdist workers of one run share; each worker's Runtime gets one."""

    #: the run id every worker uses (lowercase letters and digits)
    run_id: str
    #: a directory all workers of the run see (the shared SQLite templates live there)
    shared_dir: Path
    #: ``--threadcreator-db`` value -> ``LocalCluster.handoff()`` of a cluster the controller
    #: started for the run (``postgresql-local``): the workers use it instead of their own
    servers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass
class SetupCost:
    """How long one test's database took to hand out."""

    nodeid: str
    backend: str
    isolation: str
    seconds: float


@dataclass
class Runtime:
    """Backends by ``db`` value, each started and templated on first use."""

    schema: ThreadSchema
    basetemp: Path
    worker_id: str = "master"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    setup_hook: Callable[[Database], None] | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    shared: dict[tuple[str, str], Database] = field(default_factory=dict)
    setup_costs: list[SetupCost] = field(default_factory=list)
    databases_created: int = 0
    kept: list[str] = field(default_factory=list)
    retries: int = 0
    unavailable: dict[str, BackendUnavailableError] = field(default_factory=dict)
    #: set in an xdist worker: its run id wins over ``run_id``
    xdist: XdistRun | None = None
    #: image and network mode of a postgresql-docker container
    docker: DockerSettings = field(default_factory=DockerSettings)

    def __post_init__(self) -> None:
        if self.xdist is not None:
            self.run_id = self.xdist.run_id

    def for_schema(self, schema: ThreadSchema, basetemp: Path) -> Runtime:
        """A Runtime of this run and worker for another schema (a conftest's override).

        Its run id is derived from this one and the schema, the same in every worker, so the
        workers share its template too, while its database names never meet this runtime's.
        """
        run_id = self.run_id[:10] + "x" + schema_key(schema)[1:]
        xdist = None if self.xdist is None else dataclasses.replace(self.xdist, run_id=run_id)
        return Runtime(
            schema=schema,
            basetemp=basetemp,
            worker_id=self.worker_id,
            run_id=run_id,
            setup_hook=self.setup_hook,
            xdist=xdist,
            docker=self.docker,
        )

    def backend(self, db: str) -> Backend:
        """The started backend for ``db``, its template built (once)."""
        failed = self.unavailable.get(db)
        if failed is not None:  # failed already this run: do not wait for it again
            raise failed
        backend = self.backends.get(db)
        if backend is None:
            try:
                backend = self._make_backend(db)
                backend.start()
            except BackendUnavailableError as exc:
                self.unavailable[db] = exc
                raise
            try:
                backend.prepare_template(self.schema, self.setup_hook)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    backend.stop()
                self._raise_environment_fault(db, backend, exc)
                raise
            self.backends[db] = backend
        return backend

    def disk_full(self, db: str, exc: BaseException) -> EnvironmentFault | None:
        """The fault to stop the run with when a test's own ``exc`` says ``db``'s disk is full
        (where the next reset would fail depends on how much room SQLite's WAL kept)."""
        backend = self.backends.get(db)
        if backend is None or not any(_is_disk_full(e) for e in _exception_chain(exc)):
            return None
        fault = environment_fault(backend, exc)
        if fault is not None:
            self.unavailable[db] = fault
        return fault

    def _raise_environment_fault(self, db: str, backend: Backend, exc: BaseException) -> None:
        """Raise BackendUnavailableError, in one line saying what to do, when ``exc`` comes from
        the environment rather than the test (the server went away, the disk is full, the run's
        files were removed); from then on ``db`` fails at once. Returns otherwise."""
        fault = environment_fault(backend, exc)
        if fault is not None:
            self.unavailable[db] = fault
            raise fault from None

    def _make_backend(self, db: str) -> Backend:
        xdist = self.xdist
        return make_backend(
            BackendRequest(
                db=db,
                basetemp=self.basetemp,
                worker_id=self.worker_id,
                run_id=self.run_id,
                template_key=schema_key(self.schema),
                shared_dir=xdist.shared_dir if xdist is not None else None,
                shared_server=xdist.servers.get(db) if xdist is not None else None,
                docker_image=self.docker.image,
                docker_network=self.docker.network,
            )
        )

    def acquire(self, settings: Settings, nodeid: str) -> Database:
        """An empty database for one test, per its settings.

        Raises BackendUnavailableError when the backend cannot start, or when the environment
        failed under it (see :func:`environment_fault`).
        """
        started = time.perf_counter()
        backend = self.backend(settings.db)
        try:
            database = self._hand_out(backend, settings, nodeid)
        except Exception as exc:
            self._raise_environment_fault(settings.db, backend, exc)
            raise
        self.setup_costs.append(
            SetupCost(nodeid, backend.name, settings.isolation, time.perf_counter() - started)
        )
        return database

    def _hand_out(self, backend: Backend, settings: Settings, nodeid: str) -> Database:
        isolation = settings.isolation
        if isolation == "fresh":
            database = backend.create_database(_label(nodeid), isolation="fresh")
            self.databases_created += 1
        elif isolation in ("clean", "rollback"):
            key = (settings.db, isolation)
            shared = self.shared.get(key)
            if shared is None:
                shared = backend.create_database(f"{isolation}", isolation=isolation)
                self.databases_created += 1
                self.shared[key] = shared
            else:
                shared.store.reset()
            database = shared
            if isolation == "rollback":
                from .rollback import RollbackDatabase

                database = RollbackDatabase(database)
        else:  # validated earlier; kept for a readable failure if a new mode is half-added
            raise ConfigurationError(f"unknown isolation {isolation!r}")
        database.begin_test()
        return database

    def clean_database(self, settings: Settings) -> Database:
        """The database every ``clean`` test of this worker gets on ``settings.db``, made now if
        it is not yet (for ini ``threadcreator_env``, before any test runs)."""
        key = (settings.db, "clean")
        shared = self.shared.get(key)
        if shared is None:
            backend = self.backend(settings.db)
            try:
                shared = backend.create_database("clean", isolation="clean")
            except Exception as exc:
                self._raise_environment_fault(settings.db, backend, exc)
                raise
            self.databases_created += 1
            self.shared[key] = shared
        return shared

    def release(self, database: Database, settings: Settings, *, keep: bool) -> str | None:
        """End a test's use of ``database``; returns where it was kept, if ``keep``."""
        database.dispose_engines()
        self.retries += database.retries
        base = getattr(database, "base", database)
        backend = self.backends.get(settings.db)
        if backend is None or settings.db in self.unavailable:
            return None  # its environment failed: the run stops, and close() clears up quietly
        if not keep:
            if settings.isolation == "fresh":
                backend.drop_database(base)
            return None
        # Keep: take the database out of circulation so later tests do not empty it.
        if settings.isolation != "fresh":
            self.shared.pop((settings.db, settings.isolation), None)
        base.close()
        backend.keep_database(base)
        self.kept.append(base.location)
        return base.location

    def close(self) -> None:
        """Drop everything this run created and stop the backends.

        A backend whose environment failed (:func:`environment_fault`) is stopped quietly: the
        run has said so already, and a later run removes what it left.
        """
        gone = {db for db, exc in self.unavailable.items() if isinstance(exc, EnvironmentFault)}
        for key, database in self.shared.items():
            with contextlib.suppress(Exception) if key[0] in gone else contextlib.nullcontext():
                database.close()
        self.shared.clear()
        errors = []
        for db, backend in self.backends.items():
            try:
                backend.stop()
            except Exception as exc:
                if db not in gone:
                    errors.append(f"{backend.name}: {exc}")
        self.backends.clear()
        if errors:
            raise BackendUnavailableError("stopping backends failed: " + "; ".join(errors))


class EnvironmentFault(BackendUnavailableError):
    """The environment failed under a started backend: its server went away, its disk is full,
    or its files were removed while the run used them. The run cannot go on."""


#: SQLSTATEs of a PostgreSQL server that went away (class 08: connection exception; 57P01-03:
#: shut down by an administrator, crashed, cannot connect now)
_SERVER_GONE_STATES = ("57P01", "57P02", "57P03")
#: driver exceptions (by class name: the drivers are optional) meaning the connection is gone
_SERVER_GONE_TYPES = ("ConnectionDoesNotExistError", "ConnectionFailureError", "InterfaceError")
#: MySQL/MariaDB client errors (``args[0]`` of the driver's OperationalError) meaning the server
#: is gone: cannot connect (2002, 2003), gone away (2006), lost mid-query (2013, 2055); and the
#: server's own: shutting down (1053), connection killed (MariaDB 1927)
_MYSQL_SERVER_GONE_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1053, 1927})
_AGAIN = "then run the tests again; the run stops here"


def environment_fault(backend: Backend, exc: BaseException) -> EnvironmentFault | None:
    """An EnvironmentFault naming ``backend`` and what to do, when ``exc`` (raised while the
    plugin handed out, reset or created a database) comes from the environment; else None."""
    chain = list(_exception_chain(exc))
    full = next((e for e in chain if _is_disk_full(e)), None)
    if full is not None:
        if backend.directory is not None:
            return EnvironmentFault(
                f"the disk is full under {backend.directory} ({_brief(full)}); free space there or "
                f"point --basetemp at a disk with room, {_AGAIN}"
            )
        return EnvironmentFault(
            f"{backend.describe()}: the server is out of disk space ({_brief(full)}); free space "
            f"on the server, {_AGAIN}"
        )
    if backend.directory is not None:
        removed = next((e for e in chain if _is_file_gone(e)), None)
        if removed is not None:
            return EnvironmentFault(
                f"this run's files under {backend.directory} were removed while it ran "
                f"({_brief(removed)}); another pytest run probably uses the same --basetemp: "
                f"give each run that runs at the same time its own --basetemp (or none), {_AGAIN}"
            )
        return None
    gone = next((e for e in chain if _is_server_gone(e)), None)
    if gone is not None:
        return EnvironmentFault(
            f"{backend.describe()}: the server went away mid-run ({_brief(gone)}); check that it "
            f"is running (restart it, or fix {backend.server_settings}), {_AGAIN}"
        )
    return None


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes and contexts, and the driver errors SQLAlchemy wraps (``.orig``)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [getattr(item, "orig", None), item.__context__, item.__cause__]


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if isinstance(exc, sqlite3.Error) and (
        getattr(exc, "sqlite_errorcode", None) == 13  # SQLITE_FULL (named from 3.11)
        or "database or disk is full" in str(exc)
    ):
        return True
    return getattr(exc, "sqlstate", None) == "53100"  # PostgreSQL disk_full


def _is_file_gone(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "unable to open database" in str(exc)


def _is_server_gone(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return True  # refused, reset, no socket file: the server is not there
    state = str(getattr(exc, "sqlstate", None) or "")
    if state.startswith("08") or state in _SERVER_GONE_STATES:
        return True
    name = type(exc).__name__
    if name == "OperationalError" and type(exc).__module__.startswith(("asyncmy", "pymysql")):
        code = exc.args[0] if exc.args else None
        return code in _MYSQL_SERVER_GONE_CODES
    return name in _SERVER_GONE_TYPES and (name != "InterfaceError" or "closed" in str(exc))


def _brief(exc: BaseException) -> str:
    """``module.Type: message`` on one line, cut short."""
    kind = type(exc)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    text = " ".join(str(exc).split())
    return f"{name}: {text[:200]}" if text else name


def _label(nodeid: str) -> str:
    name = nodeid.rsplit("::", 1)[-1]
    return "".join(ch if ch.isalnum() else "_" for ch in name)[:40] or "test"


def schema_key(schema: ThreadSchema) -> str:
    """``s`` and 8 hex digits naming the schema's template: the same in every worker, different
    for schemas with other names, tables or columns."""
    parts = [schema.name]
    for table in schema.metadata.sorted_tables:
        parts.append(table.fullname)
        parts.extend(f"{c.name}:{type(c.type).__name__}" for c in table.columns)
    return "s" + hashlib.blake2b("\0".join(parts).encode(), digest_size=4).hexdigest()


def worker_id_from_env() -> str:
    """The xdist worker id (``gw0`` …) or ``master``."""
    return os.environ.get("PYTEST_XDIST_WORKER", "master")
