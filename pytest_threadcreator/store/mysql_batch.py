"""Creates queued on the MySQL store's background loop and sent several to a packet.

Under ``asyncio.gather`` many creates arrive at once. Each stays a transaction of its own
(``START TRANSACTION; INSERT; INSERT; COMMIT``), but the creates waiting when a connection is
free travel in one multi-statement packet: one round trip, and one wake-up of each event loop,
for all of them. The server runs a packet's statements in order and stops at the first that
fails, so a packet's outcome is exact: the creates before the failing statement committed, the
failing create is rolled back and gets its error, and the creates after it did not run and go
back to the front of the queue. A create alone in the queue is a packet of one, as before.

Cancellation keeps the store's promise: a create cancelled while it waits in the queue is taken
out (nothing written, ever); one cancelled while its packet is on the wire waits for the packet's
outcome before ``CancelledError`` reaches its caller (committed or not, never later).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Mapping
from typing import Any, Protocol

from .._background import CANCEL_CLEANUP_TIMEOUT, BackgroundLoop, wait_uncancellable
from ..errors import DatabaseError
from .base import StatementCallback

__all__ = ["MAX_BATCH", "CreateBatcher", "CreateJob"]

#: At most this many creates share one packet.
MAX_BATCH = 8
#: Statements of one create in a packet: START TRANSACTION, two INSERTs, COMMIT.
_PER_CREATE = 4

_QUEUED, _SENT, _DONE, _WITHDRAWN = range(4)


class BatchStore(Protocol):
    """What :class:`CreateBatcher` needs of the store it serves (on the background loop)."""

    name: str
    max_size: int

    @property
    def watcher(self) -> StatementCallback | None: ...

    async def acquire(self) -> tuple[Any, Any]: ...

    def release(self, pool: Any, conn: Any) -> None: ...

    async def roll_back(self, conn: Any) -> None: ...

    async def raise_if_taken(
        self, conn: Any, exc: Exception, thread_row: Mapping[str, Any], explicit: bool
    ) -> None: ...


class CreateJob:
    """One create waiting for, or travelling in, a packet."""

    __slots__ = ("ack", "caller", "explicit", "future", "params", "sql", "state", "thread_row")

    def __init__(
        self,
        sql: tuple[str, str],
        params: tuple[Any, ...],
        thread_row: Mapping[str, Any],
        explicit: bool,
        caller: asyncio.AbstractEventLoop,
    ) -> None:
        self.sql = sql  # the two INSERTs
        self.params = params
        self.thread_row = thread_row
        self.explicit = explicit
        self.caller = caller
        self.future: asyncio.Future[None] = caller.create_future()
        self.state = _QUEUED
        #: set when the caller was cancelled while the job was on the wire
        self.ack: asyncio.Future[None] | None = None


def _settle(job: CreateJob, exc: BaseException | None) -> None:
    """On the caller's loop: hand the outcome over (the caller may have stopped waiting)."""
    if not job.future.done():
        if exc is None:
            job.future.set_result(None)
        else:
            job.future.set_exception(exc)
    if job.ack is not None and not job.ack.done():
        job.ack.set_result(None)


def _acknowledge(ack: asyncio.Future[None]) -> None:
    if not ack.done():
        ack.set_result(None)


def _is_statement_error(exc: BaseException) -> bool:
    """An error the server sent for a statement (MySQL's codes below 2000; the client's own,
    such as a lost connection, are 2000 and up): the packet stopped there."""
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and 0 < code < 2000


class CreateBatcher:
    """The queue of one store's creates and the lanes (one connection each) that send them."""

    def __init__(self, store: BatchStore, background: BackgroundLoop) -> None:
        self._store = store
        self._background = background
        self._queue: collections.deque[CreateJob] = collections.deque()
        self._lanes = 0
        #: packets sent (a deterministic measure of the batching, for tests)
        self.round_trips = 0

    # -- the caller's side ----------------------------------------------------------------------
    async def create(
        self,
        sql: tuple[str, str],
        params: tuple[Any, ...],
        thread_row: Mapping[str, Any],
        explicit: bool,
    ) -> None:
        """Queue one create and wait for its outcome (from any loop but the background one)."""
        job = CreateJob(sql, params, thread_row, explicit, asyncio.get_running_loop())
        self._background.post(self._enqueue, job)
        try:
            await job.future
        except asyncio.CancelledError:
            if job.future.done() and not job.future.cancelled():
                job.future.exception()  # the outcome came first; the cancellation wins
                raise
            job.ack = ack = job.caller.create_future()
            self._background.post(self._withdraw, job, ack)
            await wait_uncancellable(ack, CANCEL_CLEANUP_TIMEOUT)
            raise

    # -- the background loop's side --------------------------------------------------------------
    def _enqueue(self, job: CreateJob) -> None:
        self._queue.append(job)
        if self._lanes < self._store.max_size:
            self._lanes += 1
            asyncio.get_running_loop().create_task(self._lane())

    def _withdraw(self, job: CreateJob, ack: asyncio.Future[None]) -> None:
        if job.state == _QUEUED:
            self._queue.remove(job)
            job.state = _WITHDRAWN
        if job.state != _SENT:  # on the wire: the packet's outcome acknowledges it
            self._background.post_back(job.caller, _acknowledge, ack)

    def _take(self) -> list[CreateJob]:
        """The next packet's jobs: an even share of the queue among the lanes, at most
        :data:`MAX_BATCH`."""
        queue = self._queue
        share = -(-len(queue) // max(self._lanes, 1))
        batch = [queue.popleft() for _ in range(min(MAX_BATCH, share, len(queue)))]
        for job in batch:
            job.state = _SENT
        return batch

    def _deliver(self, outcomes: list[tuple[CreateJob, BaseException | None]]) -> None:
        for job, exc in outcomes:
            job.state = _DONE
            self._background.post_back(job.caller, _settle, job, exc)

    def _requeue(self, jobs: list[CreateJob]) -> None:
        """Jobs whose statements never ran: back to the front, in their order (or, for one
        whose caller gave up meanwhile, acknowledged as never written)."""
        for job in reversed(jobs):
            if job.ack is not None:
                job.state = _WITHDRAWN
                self._background.post_back(job.caller, _acknowledge, job.ack)
            else:
                job.state = _QUEUED
                self._queue.appendleft(job)

    async def _lane(self) -> None:
        """Send packets on one connection while creates are queued."""
        sent: list[CreateJob] = []  # the packet on the wire
        try:
            while self._queue:
                try:
                    pool, conn = await self._store.acquire()
                except Exception as exc:  # no connection: the next packet's creates fail
                    self._deliver([(job, exc) for job in self._take()])
                    continue
                outcomes: list[tuple[CreateJob, BaseException | None]] = []
                try:
                    while self._queue and conn.connected:
                        self._deliver(outcomes)  # the previous packet's
                        sent = self._take()
                        outcomes = await self._send(conn, sent)
                        sent = []
                except BaseException:
                    conn.close()  # cut off mid-packet: out of step with the server
                    raise
                finally:
                    self._store.release(pool, conn)
                self._deliver(outcomes)  # after the release: callers see no connection held
        except asyncio.CancelledError:  # the background loop is closing
            closed = DatabaseError(f"the MySQL database {self._store.name} was closed")
            self._deliver([(job, closed) for job in [*sent, *self._queue]])
            self._queue.clear()
            raise
        finally:
            self._lanes -= 1

    async def _send(
        self, conn: Any, batch: list[CreateJob]
    ) -> list[tuple[CreateJob, BaseException | None]]:
        """One packet with ``batch``'s creates; each job's outcome (jobs that did not run are
        queued again)."""
        watcher = self._store.watcher
        if watcher is not None:
            label = f"store {self._store.name}"
            for job in batch:
                for statement in ("START TRANSACTION", *job.sql, "COMMIT"):
                    watcher(label, statement)
        sql = "; ".join(f"START TRANSACTION; {job.sql[0]}; {job.sql[1]}; COMMIT" for job in batch)
        params = tuple(itertools.chain.from_iterable(job.params for job in batch))
        self.round_trips += 1
        read = 0  # results read, one per statement
        try:
            async with conn.cursor() as cursor:
                await cursor.execute(sql, params)
                read = 1
                while await cursor.nextset():
                    read += 1
        except Exception as exc:
            return await self._failed(conn, batch, exc, read)
        return [(job, None) for job in batch]

    async def _failed(
        self, conn: Any, batch: list[CreateJob], exc: Exception, read: int
    ) -> list[tuple[CreateJob, BaseException | None]]:
        at = read // _PER_CREATE  # the create whose statement failed
        done: list[tuple[CreateJob, BaseException | None]] = [(job, None) for job in batch[:at]]
        if read == 0 and len(batch) > 1 and not _is_statement_error(exc) and conn.connected:
            # refused before anything was sent (a value the driver cannot encode): one by one,
            # so that the error reaches the create it belongs to
            for job in batch:
                done += await self._send(conn, [job])
            return done
        failing, rest = batch[at], batch[at + 1 :]
        stopped = _is_statement_error(exc)  # the server stopped there: the rest did not run
        await self._store.roll_back(conn)
        outcome: BaseException = exc
        try:
            await self._store.raise_if_taken(conn, exc, failing.thread_row, failing.explicit)
        except Exception as taken:
            outcome = taken
        done.append((failing, outcome))
        if stopped:
            self._requeue(rest)
        else:  # the connection broke: what became of the rest is unknown
            done += [(job, exc) for job in rest]
        return done
