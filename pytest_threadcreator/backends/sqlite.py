"""SQLite backend: file databases under pytest's temp dir, no server.

Each database is a copy of a template file built once (``create_all`` and the setup hook); its
data path is :class:`~pytest_threadcreator.store.sqlite.SqliteStore`.

Under pytest-xdist the template is the run's (``template_dir``, in the run's shared temp dir): the
first worker builds it under an exclusive ``flock`` and moves it into place whole; the others wait
on the lock and copy it. No worker removes it (one that finishes early would make a late one
build it again): the directory belongs to the xdist controller, which removes it at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine

from ..database import Database
from ..errors import ConfigurationError
from ..store.sqlite import BUSY_TIMEOUT_MS, SqliteStore, make_sqlite_engine, sqlite_pragmas
from .base import Backend, BackendKind, BackendRequest

if TYPE_CHECKING:
    from ..schema import ThreadSchema

__all__ = ["KIND", "SqliteBackend"]


class SqliteBackend(Backend):
    """Makes SQLite file databases in one directory (pytest's temp dir for this run/worker).

    ``template_dir`` (xdist): build the template once per run there, shared by the workers
    and left there at stop (see the module docstring); ``template_key`` names it, so that
    runtimes of one run for different schemas keep theirs apart.
    """

    name = "sqlite"
    directory: Path

    def __init__(
        self,
        directory: Path,
        *,
        worker_id: str = "master",
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        template_dir: Path | None = None,
        template_key: str | None = None,
    ) -> None:
        self.directory = directory
        self.worker_id = worker_id
        self.busy_timeout_ms = busy_timeout_ms
        self.template_dir = template_dir
        self.template_key = template_key or worker_id
        self._seed: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._template: Path | None = None
        self._schema: ThreadSchema | None = None
        self._created: list[Path] = []
        self._counter = 0

    def describe(self) -> str:
        return f"sqlite (files under {self.directory})"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.template_dir is not None:
            self.template_dir.mkdir(parents=True, exist_ok=True)

    def prepare_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        self._schema = schema
        if self.template_dir is None:
            path = self.directory / f"template-{self.worker_id}.sqlite3"
            _remove_db_files(path)
            self._build_template(path, schema, setup)
        else:
            path = self.template_dir / f"template-{self.template_key}.sqlite3"
            # The first worker builds it; the others wait here and find it whole.
            with _exclusive(self.template_dir / f"template-{self.template_key}.lock"):
                if not path.exists():
                    building = path.with_name(f"building-{os.getpid()}-{path.name}")
                    _remove_db_files(building)
                    self._build_template(building, schema, setup)
                    os.replace(building, path)
                    _remove_db_files(building)
        self._template = path
        self._seed = _read_seed(path, schema)

    def _build_template(
        self, path: Path, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        engine = create_engine(f"sqlite:///{path}")
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                # a throwaway file, rebuilt by every run: no fsync per DDL statement
                conn.exec_driver_sql("PRAGMA synchronous=OFF")
                schema.metadata.create_all(conn)
        finally:
            engine.dispose()
        if setup is not None:
            database = self._open(path, label="template", isolation="template")
            try:
                setup(database)
            finally:
                database.close()
        # Fold the WAL into the main file so a plain file copy is a complete database.
        raw = sqlite3.connect(path)
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()

    def create_database(self, label: str, *, isolation: str) -> Database:
        if self._template is None:
            raise ConfigurationError("prepare_template() must run before create_database()")
        self._counter += 1
        path = self.directory / f"{self.worker_id}-{self._counter}-{_safe(label)}.sqlite3"
        shutil.copyfile(self._template, path)
        self._created.append(path)
        return self._open(path, label=label, isolation=isolation)

    def _open(self, path: Path, *, label: str, isolation: str) -> Database:
        assert self._schema is not None
        return Database(
            url=f"sqlite+aiosqlite:///{path}",
            backend=KIND.name,
            schema=self._schema,
            store=SqliteStore(
                path, self._schema, seed=self._seed, busy_timeout_ms=self.busy_timeout_ms
            ),
            engine_factory=lambda: make_sqlite_engine(path),
            isolation=isolation,
            name=path.name,
            location=str(path),
            connection_settings=sqlite_pragmas(self.busy_timeout_ms),
        )

    def drop_database(self, database: Database) -> None:
        database.close()
        path = Path(database.location)
        _remove_db_files(path)
        if path in self._created:
            self._created.remove(path)

    def keep_database(self, database: Database) -> str:
        """Forget a database so that :meth:`stop` leaves its file in place; returns its name."""
        path = Path(database.location)
        if path in self._created:
            self._created.remove(path)
        return database.name

    def stop(self) -> None:
        for path in self._created:
            _remove_db_files(path)
        self._created.clear()
        if self.template_dir is None and self._template is not None:
            _remove_db_files(self._template)
        self._template = None  # a shared one stays: other workers may still start

    def leftovers(self) -> list[str]:
        return [p.name for p in self._created if p.exists()]


def _read_seed(path: Path, schema: ThreadSchema) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Rows the setup hook left in the template, read without touching the file."""
    # immutable: no locks, no -wal/-shm files, nothing written (other workers copy it meanwhile)
    raw = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return [
            (table.name, raw.execute(f'SELECT * FROM "{table.name}"').fetchall())
            for table in schema.metadata.sorted_tables
        ]
    finally:
        raw.close()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (waiting for it) for the ``with`` block."""
    import fcntl  # POSIX only; needed under xdist alone

    with open(path, "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _remove_db_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def _safe(label: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)
    return cleaned[:60] or "db"


def _make(request: BackendRequest) -> SqliteBackend:
    return SqliteBackend(
        request.basetemp / "threadcreator",
        worker_id=request.worker_id,
        template_dir=request.shared_dir,
        template_key=request.template_key,
    )


#: ``--threadcreator-db=sqlite``
KIND = BackendKind(name="sqlite", values=("sqlite",), make=_make)
