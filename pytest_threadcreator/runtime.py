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

import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend
from .config import DockerSettings, Settings, backend_kind
from .database import Database
from .errors import BackendUnavailableError, ConfigurationError
from .schema import ThreadSchema

__all__ = ["Runtime", "SetupCost", "XdistRun"]


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
        backend = self.backends.get(db)
        if backend is None:
            failed = self.unavailable.get(db)
            if failed is not None:  # tried already this run: do not wait for it again
                raise failed
            try:
                backend = self._make_backend(db)
                backend.start()
            except BackendUnavailableError as exc:
                self.unavailable[db] = exc
                raise
            try:
                backend.prepare_template(self.schema, self.setup_hook)
            except BaseException:
                backend.stop()
                raise
            self.backends[db] = backend
        return backend

    def _make_backend(self, db: str) -> Backend:
        key = schema_key(self.schema)
        if backend_kind(db) == "sqlite":
            from .backends.sqlite import SqliteBackend

            return SqliteBackend(
                self.basetemp / "threadcreator",
                worker_id=self.worker_id,
                template_dir=self.xdist.shared_dir if self.xdist is not None else None,
                template_key=key,
            )
        try:
            from .backends.postgresql import make_postgres_backend
        except ImportError as exc:
            raise BackendUnavailableError(
                f"--threadcreator-db={db} needs the PostgreSQL driver: "
                f"pip install 'pytest-threadcreator[postgresql]' ({exc})"
            ) from None
        return make_postgres_backend(
            db,
            worker_id=self.worker_id,
            run_id=self.run_id,
            template_key=key,
            shared_cluster=self.xdist.servers.get(db) if self.xdist is not None else None,
            docker_image=self.docker.image,
            docker_network=self.docker.network,
        )

    def acquire(self, settings: Settings, nodeid: str) -> Database:
        """An empty database for one test, per its settings."""
        started = time.perf_counter()
        backend = self.backend(settings.db)
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
        self.setup_costs.append(
            SetupCost(nodeid, backend.name, isolation, time.perf_counter() - started)
        )
        return database

    def release(self, database: Database, settings: Settings, *, keep: bool) -> str | None:
        """End a test's use of ``database``; returns where it was kept, if ``keep``."""
        database.dispose_engines()
        self.retries += database.retries
        base = getattr(database, "base", database)
        backend = self.backend(settings.db)
        if not keep:
            if settings.isolation == "fresh":
                backend.drop_database(base)
            return None
        # Keep: take the database out of circulation so later tests do not empty it.
        if settings.isolation != "fresh":
            self.shared.pop((settings.db, settings.isolation), None)
        base.close()
        keep_fn = getattr(backend, "keep_database", None)
        if callable(keep_fn):
            keep_fn(base)
        self.kept.append(base.location)
        return base.location

    def close(self) -> None:
        """Drop everything this run created and stop the backends."""
        for database in self.shared.values():
            database.close()
        self.shared.clear()
        errors = []
        for backend in self.backends.values():
            try:
                backend.stop()
            except Exception as exc:
                errors.append(f"{backend.name}: {exc}")
        self.backends.clear()
        if errors:
            raise BackendUnavailableError("stopping backends failed: " + "; ".join(errors))


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
