"""Runtime: the backends, templates and databases of one pytest run (or xdist worker).

Pytest-free; the plugin creates one Runtime per run and the fixtures ask it for databases.
Per-test setup is the hot path: in ``clean`` isolation a test reuses the worker's database,
emptied at setup (no new file, server database or connection).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend
from .config import Settings, backend_kind
from .database import Database
from .errors import BackendUnavailableError, ConfigurationError
from .schema import ThreadSchema

__all__ = ["Runtime", "SetupCost"]


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
        if backend_kind(db) == "sqlite":
            from .backends.sqlite import SqliteBackend

            return SqliteBackend(self.basetemp / "threadcreator", worker_id=self.worker_id)
        try:
            from .backends.postgresql import make_postgres_backend
        except ImportError as exc:
            raise BackendUnavailableError(
                f"--threadcreator-db={db} needs the PostgreSQL driver: "
                f"pip install 'pytest-threadcreator[postgresql]' ({exc})"
            ) from None
        return make_postgres_backend(db, worker_id=self.worker_id, run_id=self.run_id)

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


def worker_id_from_env() -> str:
    """The xdist worker id (``gw0`` …) or ``master``."""
    return os.environ.get("PYTEST_XDIST_WORKER", "master")
