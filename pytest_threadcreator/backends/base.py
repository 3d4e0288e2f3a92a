"""The interface every backend implements, so fixtures and tests do not care which one runs.

Two levels:

* :class:`Backend` — a server (or, for SQLite, a directory): start/stop it, build the schema
  template once, create/drop databases from the template.
* :class:`Store` — the data path of one database that ThreadCreator and the integrity checks use.
  It is *loop-independent*: any event loop may await it (a SQLite writer thread, a PostgreSQL
  pool on a private background loop), so a database outlives the test's event loop and per-test
  setup costs no new connections.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from sqlalchemy.sql import Select
    from sqlalchemy.sql.selectable import TextualSelect

    from ..database import Database
    from ..faults.steps import FaultDecider
    from ..schema import ThreadSchema

__all__ = [
    "Backend",
    "Query",
    "StatementCallback",
    "Store",
    "ThreadIdTaken",
]

#: What a store's reads take: a SELECT, or a textual one with declared columns.
Query = Union["Select[Any]", "TextualSelect"]

#: Called with a connection label and the SQL text of each statement a store runs.
StatementCallback = Callable[[str, str], None]


class ThreadIdTaken(Exception):
    """Internal: the explicit thread id exists; carries the owner so the caller can decide."""

    def __init__(self, owner: str | None) -> None:
        super().__init__("thread id taken")
        self.owner = owner


class Store(abc.ABC):
    """Data path of one database. Every coroutine may be awaited from any event loop."""

    #: "sqlite" or "postgresql"
    dialect_name: str

    @abc.abstractmethod
    async def create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        *,
        explicit_id: bool,
        decide: FaultDecider | None = None,
    ) -> None:
        """Insert both rows in one transaction (both or neither).

        Raises :class:`ThreadIdTaken` when ``explicit_id`` and the thread id exists; the
        driver's own exception for anything else (the caller classifies and retries).
        ``decide`` is consulted before each step in :data:`STEPS`.
        """

    @abc.abstractmethod
    async def fetch_all(self, statement: Query) -> list[dict[str, Any]]:
        """Run a SELECT; rows keyed by result column name, values processed by SQLAlchemy types."""

    def fetch_all_sync(self, statement: Query) -> list[dict[str, Any]]:
        """:meth:`fetch_all`, blocking, from code outside any event loop (failure reports)."""
        result: list[list[dict[str, Any]]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(asyncio.run(self.fetch_all(statement)))
            except BaseException as exc:  # handed back to the caller's thread
                errors.append(exc)

        worker = threading.Thread(target=run, name="threadcreator-sync-read")
        worker.start()
        worker.join()
        if errors:
            raise errors[0]
        return result[0]

    @abc.abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """True for contention worth a retry (SQLite busy/locked, SQLSTATE 40001/40P01)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Empty every table of the schema (synchronous; no event loop needed)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections and threads (synchronous, idempotent)."""

    def checked_out(self) -> int:
        """Connections currently in use by calls still running (for leak detection)."""
        return 0

    @abc.abstractmethod
    async def watch_statements(self, callback: StatementCallback | None) -> None:
        """Call ``callback(connection_label, sql)`` for every statement from now on (None: stop)."""


class Backend(abc.ABC):
    """A place to make databases: a SQLite directory or a PostgreSQL server."""

    #: "sqlite" or "postgresql"
    name: str

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the report header, e.g. ``postgresql-local (/tmp/tc-xyz, PostgreSQL 15)``."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start or reach the server (no-op for SQLite). Raises BackendUnavailableError."""

    @abc.abstractmethod
    def prepare_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Build the schema once into a template that ``create_database`` clones.

        ``setup`` (the ``pytest_threadcreator_setup_database`` hook) runs once on the template.
        """

    @abc.abstractmethod
    def create_database(self, label: str, *, isolation: str) -> Database:
        """A new database cloned from the template; ``label`` ends up in its name."""

    @abc.abstractmethod
    def drop_database(self, database: Database) -> None:
        """Close and remove a database this backend created."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Drop everything this run created and stop what it started (idempotent)."""

    def leftovers(self) -> Sequence[str]:
        """Names of databases of this run still present (for tests and diagnostics)."""
        return ()
