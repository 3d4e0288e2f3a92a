"""The data path of one SQLite file: the store, its writer thread and the engine settings.

Correct by construction (see the project's reliability notes):

* a file, never ``:memory:`` / StaticPool / shared cache, so every connection is real;
* WAL, ``foreign_keys=ON`` and a busy timeout on *every* connection;
* ThreadCreator's writes run as one ``BEGIN IMMEDIATE … COMMIT`` function on a dedicated writer
  thread with its own connection: writers queue in-process instead of racing for the lock, and a
  create costs one hop between the event loop and the thread instead of ~10.
* Cancelled means cancelled: when the caller of a create is cancelled (or times out), its job on
  the writer thread sees it before every step and before COMMIT and rolls back; a ``delay`` fault
  waits on the job's cancellation flag instead of sleeping, and the wait for another
  connection's lock runs in short busy-timeout slices with the flag checked between them, since
  neither ``Connection.interrupt()`` nor a progress handler stops SQLite's busy wait.
* A reset between tests runs on the caller's thread, on a connection of its own, and is skipped
  when that connection's ``PRAGMA data_version`` says nobody committed since its last wipe
  (see :meth:`SqliteStore.reset`).
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import InjectedFault
from ..faults.steps import FaultDecider
from .base import (
    LoopFreeConnections,
    Query,
    SavepointRunner,
    StatementCallback,
    Store,
    ThreadIdTaken,
)
from .compile import RowInsert, compile_select
from .sqlite_savepoint import savepoint_runner
from .transient import is_sqlite_busy

if TYPE_CHECKING:
    from ..schema import ThreadSchema

__all__ = ["BUSY_TIMEOUT_MS", "SqliteStore", "make_sqlite_engine", "sqlite_pragmas"]

T = TypeVar("T")

#: How long a connection waits for another connection's write lock before SQLITE_BUSY.
BUSY_TIMEOUT_MS = 5_000

#: The writer connection's own busy timeout: it waits for the lock in slices this long and checks
#: between them whether the caller gave up, for at most the backend's busy timeout in all.
LOCK_SLICE_MS = 20

_DIALECT = sqlite_dialect.dialect()


def sqlite_pragmas(busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> tuple[str, ...]:
    """PRAGMAs run on every connection: FK enforcement, lock waits, test durability."""
    return (
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
        "PRAGMA synchronous=OFF",
    )


class _CancelRequested(Exception):
    """Raised on the writer thread when the fault injector asks to cancel the call."""


class _CallerGone(Exception):
    """Raised on the writer thread when the caller was cancelled: roll back, nobody listens."""


_WAKE_LOCK = threading.Lock()


class _Cancellation:
    """Whether a job's caller gave up: set on the caller's loop, read on the writer thread.

    Like a ``threading.Event`` (``set``, ``is_set``, ``wait``) but a plain flag until a thread
    waits on it, since every create makes one and an Event costs a lock and a condition.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: threading.Event | None = None

    def set(self) -> None:
        """Mark the caller gone and wake a thread waiting in :meth:`wait`."""
        self._set = True
        event = self._event  # read after the flag was written: see wait()
        if event is not None:
            event.set()

    def is_set(self) -> bool:
        """True once the caller gave up."""
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the caller gives up or ``timeout`` passes; True if it gave up."""
        with _WAKE_LOCK:
            event = self._event
            if event is None:
                event = self._event = threading.Event()
        if self._set:  # read after the event was published: set() either sees it or ran before
            return True
        return event.wait(timeout)

    def on_done(self, future: asyncio.Future[Any]) -> None:
        """Done callback of the caller's future: a cancelled future means the caller gave up."""
        if future.cancelled():
            self.set()


class _WriterThread:
    """A daemon thread running submitted jobs in FIFO order; reused from database to database."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Any, _Writer] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="threadcreator-sqlite", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any], waiter: Any, writer: _Writer) -> None:
        self._jobs.put((fn, waiter, writer))

    def _run(self) -> None:
        # Jobs already queued run back to back (each its own transaction); their outcomes reach
        # each event loop in one wake-up once the queue is empty (or every _MAX_BATCH jobs).
        jobs = self._jobs
        done: list[_Outcome] = []
        while True:
            item = jobs.get()
            if item is None:
                _deliver(done)
                return
            fn, waiter, writer = item
            if isinstance(waiter, asyncio.Future) and waiter.cancelled():
                done.append((writer, None, None, None))  # cancelled before it started
            else:
                try:
                    done.append((writer, waiter, fn(), None))
                except BaseException as exc:
                    done.append((writer, waiter, None, exc))
            if len(done) >= _MAX_BATCH or jobs.empty():
                _deliver(done)
                done = []


#: A finished job: its writer, its waiter, and its result or exception.
_Outcome = tuple["_Writer", Any, Any, "BaseException | None"]

#: The most job outcomes the writer thread holds back to hand over in one wake-up.
_MAX_BATCH = 64


def _deliver(done: list[_Outcome]) -> None:
    """Hand finished jobs' outcomes to their waiters: one wake-up per event loop."""
    settle: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, Any]]] = {}
    for writer, waiter, result, exc in done:
        writer._finished += 1
        if waiter is None:
            continue
        if isinstance(waiter, asyncio.Future):
            settle.setdefault(waiter.get_loop(), []).append((waiter, result, exc))
        elif exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(result)
    for loop, outcomes in settle.items():
        try:
            loop.call_soon_threadsafe(_settle_all, outcomes)
        except RuntimeError:  # the waiters' loop is closed: nobody is listening
            pass


# Idle writer threads, so that a ``fresh`` database per test costs no thread start and join.
_IDLE: list[_WriterThread] = []
_IDLE_LOCK = threading.Lock()
_MAX_IDLE = 4


def _take_thread() -> _WriterThread:
    with _IDLE_LOCK:
        if _IDLE:
            return _IDLE.pop()
    return _WriterThread()


def _give_back(thread: _WriterThread) -> None:
    with _IDLE_LOCK:
        if len(_IDLE) < _MAX_IDLE:
            _IDLE.append(thread)
            return
    thread._jobs.put(None)


class _Writer:
    """One sqlite3 connection, used only by jobs on a writer thread, one at a time, in FIFO order."""

    def __init__(self, path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Two counters, each written by one side only, so no lock is needed.
        self._submitted = 0
        self._finished = 0
        self._thread = _take_thread()
        self._submitted += 1
        self._thread.submit(self._open, None, self)  # opens while the caller goes on

    @property
    def patience_s(self) -> float:
        """How long in all a job waits for another connection's lock (see :func:`_patiently`)."""
        return self._busy_timeout_ms / 1000

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        for pragma in sqlite_pragmas(min(self._busy_timeout_ms, LOCK_SLICE_MS)):
            conn.execute(pragma)
        self._conn = conn

    def _job(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def job() -> T:
            conn = self._conn
            if conn is None:
                raise RuntimeError(f"the SQLite connection to {self._path} could not be opened")
            try:
                return fn(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise

        return job

    @property
    def busy(self) -> int:
        """Jobs submitted and not finished yet."""
        return self._submitted - self._finished

    async def run(
        self, fn: Callable[[sqlite3.Connection], T], cancelled: _Cancellation | None = None
    ) -> T:
        """Run ``fn(conn)`` on the writer thread and await its result from any event loop.

        ``cancelled`` is set as soon as the awaiting task is cancelled, for ``fn`` to watch.
        """
        if self._closed:
            raise RuntimeError("the database was released; request threadcreator_db in this test")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if cancelled is not None:
            fut.add_done_callback(cancelled.on_done)
        self._submitted += 1
        self._thread.submit(self._job(fn), fut, self)
        return await fut

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer thread and block until it is done (no loop needed)."""
        fut: Future[T] = Future()
        self._submitted += 1
        self._thread.submit(self._job(fn), fut, self)
        return fut.result()

    def close(self) -> None:
        """Close the connection after the jobs already queued, and free the thread."""
        if self._closed:
            return
        self._closed = True
        done: Future[None] = Future()
        self._submitted += 1
        self._thread.submit(self._close_connection, done, self)
        done.result(timeout=60)
        _give_back(self._thread)

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _settle_all(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in outcomes:
        if fut.done():  # cancelled meanwhile: the outcome is dropped
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class SqliteStore(Store):
    """ThreadCreator's data path on one SQLite file (see module docstring)."""

    def __init__(
        self,
        path: Path,
        schema: ThreadSchema,
        *,
        seed: Sequence[tuple[str, Sequence[Sequence[Any]]]] = (),
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
    ) -> None:
        self.path = path
        self.schema = schema
        self.loop_free_connections = LoopFreeConnections(
            sqlite_pragmas(busy_timeout_ms), busy_timeout_ms / 1000
        )
        self._writer = _Writer(path, busy_timeout_ms)
        self._busy_timeout_ms = busy_timeout_ms
        # reset(): its own connection, and its data_version right after its last wipe
        self._reset_lock = threading.Lock()
        self._reset_conn: sqlite3.Connection | None = None
        self._wiped_at: int | None = None
        self._thread_insert = RowInsert(schema.thread_table, _DIALECT)
        self._message_insert = RowInsert(schema.message_table, _DIALECT)
        t = schema.thread_table
        self._owner_sql = (
            f'SELECT "{schema.owner_column or schema.thread_id_column}" FROM "{t.name}" '
            f'WHERE "{schema.thread_id_column}" = ?'
        )
        tables = [tbl.name for tbl in reversed(schema.metadata.sorted_tables)]
        self._reset_sql = [f'DELETE FROM "{name}"' for name in tables]
        # Rows the setup hook put into the template: a reset puts them back.
        self._seed = [
            (f'INSERT INTO "{name}" VALUES ({", ".join("?" * len(rows[0]))})', rows)
            for name, rows in seed
            if rows
        ]

    def savepoint_runner(self, driver: Any) -> SavepointRunner | None:
        """One hop to an aiosqlite connection's thread (:mod:`.sqlite_savepoint`)."""
        return savepoint_runner(driver)

    async def create(
        self,
        thread_row: Mapping[str, Any],
        message_row: Mapping[str, Any],
        *,
        explicit_id: bool,
        decide: FaultDecider | None = None,
    ) -> None:
        t_plan = self._thread_insert.plan(thread_row)
        m_plan = self._message_insert.plan(message_row)
        t_sql, m_sql = t_plan.sql, m_plan.sql
        t_params, m_params = t_plan.params(thread_row), m_plan.params(message_row)
        owner_sql = self._owner_sql
        thread_id = thread_row[self.schema.thread_id_column]
        patience_s = self._writer.patience_s
        cancelled = _Cancellation()

        def transaction(conn: sqlite3.Connection) -> None:
            _patiently(lambda: conn.execute("BEGIN IMMEDIATE"), patience_s, cancelled)
            try:
                _step(decide, "thread_insert", cancelled)
                try:
                    conn.execute(t_sql, t_params)
                except sqlite3.IntegrityError:
                    if explicit_id:
                        row = conn.execute(owner_sql, (thread_id,)).fetchone()
                        if row is not None:
                            raise ThreadIdTaken(row[0]) from None
                    raise
                _step(decide, "message_insert", cancelled)
                conn.execute(m_sql, m_params)
                _step(decide, "commit", cancelled)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        try:
            await self._writer.run(transaction, cancelled)
        except _CancelRequested:
            raise asyncio.CancelledError("cancelled by the fault injector") from None

    async def fetch_all(self, statement: Query) -> list[dict[str, Any]]:
        compiled = compile_select(statement, _DIALECT)
        patience_s = self._writer.patience_s
        raw = await self._writer.run(
            lambda conn: _patiently(
                lambda: conn.execute(compiled.sql, compiled.params).fetchall(), patience_s
            )
        )
        return compiled.rows(raw)

    def fetch_all_sync(self, statement: Query) -> list[dict[str, Any]]:
        """Like :meth:`fetch_all`, blocking, for use outside an event loop."""
        compiled = compile_select(statement, _DIALECT)
        patience_s = self._writer.patience_s
        raw = self._writer.call(
            lambda conn: _patiently(
                lambda: conn.execute(compiled.sql, compiled.params).fetchall(), patience_s
            )
        )
        return compiled.rows(raw)

    def is_transient(self, exc: BaseException) -> bool:
        return is_sqlite_busy(exc)

    def reset(self) -> None:
        """Empty every table and put the seed rows back, unless nobody wrote since the last reset.

        Runs on the caller's thread, on a connection of its own (no hop to the writer thread).
        That connection's ``PRAGMA data_version`` changes whenever *another* connection commits
        (the writer thread, the test's engines, an app's own engine on ``url`` or ``sync_url``,
        another process) and never for its own wipe, so an unchanged value read after a wipe
        means the tables are still as that wipe left them: the reset is then one PRAGMA.
        """
        writer = self._writer
        if writer.busy:  # jobs still queued (a caller that gave up): let them end first
            writer.call(_nothing)
        with self._reset_lock:
            conn = self._reset_conn
            if conn is None:
                conn = self._reset_conn = self._open_reset_connection()
            elif self._wiped_at is not None and _data_version(conn) == self._wiped_at:
                return
            self._wiped_at = None
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read while this connection holds the write lock: whoever commits after the
                # wipe changes it, whoever committed before is wiped.
                version = _data_version(conn)
                for sql in self._reset_sql:
                    conn.execute(sql)
                for sql, rows in self._seed:
                    conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._wiped_at = version

    def _open_reset_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in sqlite_pragmas(self._busy_timeout_ms):
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        return conn

    def checked_out(self) -> int:
        return max(self._writer.busy, 0)

    async def watch_statements(self, callback: StatementCallback | None) -> None:
        label = f"store {self.path.name}"
        trace = None if callback is None else (lambda sql: callback(label, sql))
        await self._writer.run(lambda conn: conn.set_trace_callback(trace))

    def close(self) -> None:
        self._writer.close()
        with self._reset_lock:
            conn, self._reset_conn = self._reset_conn, None
            self._wiped_at = None
        if conn is not None:
            conn.close()


def _data_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA data_version``: changes when another connection commits to the database."""
    # fetchall() steps the statement to its end, so no read transaction stays open
    version: int = conn.execute("PRAGMA data_version").fetchall()[0][0]
    return version


def _nothing(_conn: sqlite3.Connection) -> None:
    """A job that only waits for the jobs queued before it."""


def _patiently(
    attempt: Callable[[], T], patience_s: float, cancelled: _Cancellation | None = None
) -> T:
    """``attempt()``, retried while SQLite is busy for up to ``patience_s`` seconds in all.

    Each try waits one busy-timeout slice (:data:`LOCK_SLICE_MS`) for the lock; between slices a
    set ``cancelled`` ends the wait (:class:`_CallerGone`), which SQLite's own wait would not.
    """
    deadline = time.monotonic() + patience_s
    while True:
        if cancelled is not None and cancelled.is_set():
            raise _CallerGone()
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if not is_sqlite_busy(exc) or time.monotonic() >= deadline:
                raise


def _step(decide: FaultDecider | None, step: str, cancelled: _Cancellation) -> None:
    """Before ``step``'s SQL: stop if the caller gave up, else do what the fault decider says.

    The blocking twin of :func:`~pytest_threadcreator.faults.steps.apply_fault`: ``delay``
    waits on ``cancelled`` (:func:`_pause`), so a cancelled call stops waiting at once.
    """
    if cancelled.is_set():
        raise _CallerGone()
    action = None if decide is None else decide(step)
    if action is None:
        return
    if action.kind == "fail":
        raise InjectedFault(action.step, action.call)
    if action.kind == "delay":
        _pause(action.seconds, cancelled)
        if cancelled.is_set():
            raise _CallerGone()
    elif action.kind == "cancel":
        raise _CancelRequested()


def _pause(seconds: float, cancelled: _Cancellation) -> None:
    """A ``delay`` fault on the writer thread: wait ``seconds``, or until the caller gave up."""
    cancelled.wait(seconds)


def make_sqlite_engine(
    path: Path | str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30
) -> AsyncEngine:
    """An aiosqlite AsyncEngine on ``path`` with a real pool and the pragmas on every connection."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}",
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in sqlite_pragmas():
            cursor.execute(pragma)
        cursor.close()

    return engine
