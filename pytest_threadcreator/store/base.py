"""The data path of one database: what ThreadCreator and the integrity checks use.

A :class:`Store` is *loop-independent*: any event loop may await it (a SQLite writer thread, a
PostgreSQL pool on a private background loop), so a database outlives the test's event loop and
per-test setup costs no new connections. It knows nothing of servers (that is
:mod:`pytest_threadcreator.backends`). What differs between databases is asked as a capability
(:meth:`Store.lock_waits`, :attr:`Store.loop_free_connections`, :meth:`Store.held_connections`),
never by a backend's name.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from sqlalchemy.sql import Select
    from sqlalchemy.sql.selectable import TextualSelect

    from ..faults.steps import FaultDecider

__all__ = [
    "DEFAULT_STORE_POOL",
    "HeldConnections",
    "LoopFreeConnections",
    "Query",
    "SavepointCreate",
    "SavepointRunner",
    "StatementCallback",
    "Store",
    "ThreadIdTaken",
]

#: Connections of a store's pool unless the worker's pool plan gives fewer.
DEFAULT_STORE_POOL = 10

#: What a store's reads take: a SELECT, or a textual one with declared columns.
Query = Union["Select[Any]", "TextualSelect"]

#: Called with a connection label and the SQL text of each statement a store runs.
StatementCallback = Callable[[str, str], None]


class ThreadIdTaken(Exception):
    """Internal: the explicit thread id exists; carries the owner so the caller can decide."""

    def __init__(self, owner: str | None) -> None:
        super().__init__("thread id taken")
        self.owner = owner


@dataclass(frozen=True, slots=True)
class SavepointCreate:
    """A create inside a transaction the caller holds open (``rollback`` isolation): both
    INSERTs inside a SAVEPOINT, so a failed create leaves the outer transaction as it was.

    The SQL is in the parameter style of the driver that runs it. ``owner_sql`` (given for an
    explicit thread id) reads the owner of ``thread_id`` when the thread INSERT hits a
    constraint, so the caller can tell "exists" from "someone else's".
    """

    thread_sql: str
    thread_params: tuple[Any, ...]
    message_sql: str
    message_params: tuple[Any, ...]
    owner_sql: str | None
    thread_id: Any


#: Runs a :class:`SavepointCreate` on one driver connection as one job (``begin``: send the
#: caller's pending BEGIN first, in the same job); returns the SQL it ran, for query counters.
SavepointRunner = Callable[[SavepointCreate, bool], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class LoopFreeConnections:
    """How to open a driver connection that any event loop may use (aiosqlite's run on a
    thread of their own), so one connection can serve a whole run."""

    #: statements each new connection runs first
    pragmas: tuple[str, ...]
    #: the driver's own wait for another connection's lock, in seconds
    busy_timeout_s: float


@dataclass(frozen=True, slots=True)
class HeldConnections:
    """Driver connections kept on a loop of the store's own and usable from any event loop,
    so one connection can serve a whole run where the driver ties connections to their loop."""

    #: SQLAlchemy's name for the driver (``asyncpg``): only an engine of that driver takes them
    driver: str
    #: opens one such connection from the keyword arguments the engine's dialect would pass
    connect: Callable[[Mapping[str, Any]], Awaitable[Any]]
    #: puts one of them back as a new session (given what ``connect`` returned), between tests
    reset: Callable[[Any], Awaitable[None]]
    #: closes every connection ``connect`` opened (from any thread but the store's loop)
    close: Callable[[], None]


class Store(abc.ABC):
    """Data path of one database. Every coroutine may be awaited from any event loop."""

    #: Set when the database's driver connections are not tied to an event loop (SQLite); None
    #: when each connection belongs to the loop that opened it (asyncpg).
    loop_free_connections: LoopFreeConnections | None = None

    def held_connections(self) -> HeldConnections | None:
        """A way to keep loop-bound driver connections for a whole run (asyncpg's, on the
        store's background loop), or None where the store has none."""
        return None

    def savepoint_runner(self, driver: Any) -> SavepointRunner | None:
        """How to run a create as one job on ``driver``, a driver connection to this store's
        database that SQLAlchemy also uses (``rollback`` isolation), or None where the store
        knows no such way for it (the caller then goes through SQLAlchemy)."""
        return None

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

    def detach(self) -> Any:
        """Close the store, handing over its pool where it can outlive the store (a server
        store's, for the tender to close off the test's path); None: nothing to hand over."""
        self.close()
        return None

    def checked_out(self) -> int:
        """Connections currently in use by calls still running (for leak detection)."""
        return 0

    @abc.abstractmethod
    async def watch_statements(self, callback: StatementCallback | None) -> None:
        """Call ``callback(connection_label, sql)`` for every statement from now on (None: stop)."""

    async def lock_waits(self) -> list[str]:
        """Sessions of this database waiting for a lock, and who blocks them, one line each.

        Empty where writers never wait on the database's locks (the SQLite store queues them
        in-process).
        """
        return []
