"""Creates queued on a server store's background loop and run by lanes that hold a connection.

Under ``asyncio.gather`` many creates arrive at the background loop at once. Handing each to a
task of its own that takes a pool connection, runs one statement and gives the connection back
spends more of the machine than the statement does. Here each create is a job in one queue per
store; up to ``max_size`` *lanes* (one task and one connection each) take jobs from it back to
back while any wait, then give their connection back. A subclass says how one lane sends the
jobs it took (:meth:`CreateQueue._send`): one statement per job on PostgreSQL, each its own
transaction; several jobs to a packet and one transaction on MySQL (:mod:`.mysql_batch`). Either
way each create's two rows commit together or not at all.

Cancellation keeps the store's promise (SPEC: a call cancelled before its commit leaves
nothing, ever): a job cancelled while it waits in the queue is taken out; one cancelled while
it is on the wire is cut there (:meth:`CreateQueue._cut`: PostgreSQL cancels the lane's
statement, as a task of its own would be; MySQL interrupts it on the server) and its outcome
awaited. Only then does ``CancelledError`` reach the caller.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

from .._background import (
    CANCEL_CLEANUP_TIMEOUT,
    BackgroundLoop,
    BackgroundLoopClosed,
    wait_uncancellable,
)
from ..errors import DatabaseError

__all__ = ["CreateJob", "CreateQueue", "LaneStore", "Outcomes"]

_QUEUED, _SENT, _DONE, _WITHDRAWN = range(4)


class LaneStore(Protocol):
    """What a :class:`CreateQueue` needs of its store (all on the background loop)."""

    name: str
    max_size: int

    async def acquire(self) -> tuple[Any, Any]: ...

    async def put_back(self, pool: Any, conn: Any) -> None: ...


class CreateJob:
    """One create waiting for, or travelling on, a lane's connection."""

    __slots__ = (
        "ack",
        "alone",
        "caller",
        "conn",
        "cut",
        "explicit",
        "future",
        "lane",
        "params",
        "sql",
        "state",
        "thread_row",
    )

    def __init__(
        self,
        sql: Any,
        params: tuple[Any, ...],
        thread_row: Mapping[str, Any],
        explicit: bool,
        caller: asyncio.AbstractEventLoop,
    ) -> None:
        self.sql = sql  # the store's own form of the statements
        self.params = params
        self.thread_row = thread_row
        self.explicit = explicit
        self.caller = caller
        self.future: asyncio.Future[None] = caller.create_future()
        self.state = _QUEUED
        #: set when the caller was cancelled while the job was on the wire
        self.ack: asyncio.Future[None] | None = None
        #: the lane task running it, and its connection, while it is on the wire
        self.lane: asyncio.Task[None] | None = None
        self.conn: Any = None
        #: its lane's statement was cancelled for it
        self.cut = False
        #: to be sent in a transaction of its own (a transaction it shared failed; MySQL)
        self.alone = False


#: Each job a lane sent, with its error (None: committed).
Outcomes = list[tuple[CreateJob, "BaseException | None"]]

S = TypeVar("S", bound=LaneStore)


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


class CreateQueue(abc.ABC, Generic[S]):
    """The queue of one store's creates and the lanes that run them."""

    #: at most this many jobs per :meth:`_send`
    max_batch = 1
    #: a job withdrawn on the wire is cut there (:meth:`_cut`; else its outcome is awaited)
    cancel_in_flight = False

    def __init__(self, store: S, background: BackgroundLoop) -> None:
        self.store = store
        self.background = background
        self._queue: collections.deque[CreateJob] = collections.deque()
        self._lanes = 0
        #: sends so far (round trips on MySQL; a deterministic measure for tests)
        self.round_trips = 0

    # -- the caller's side --------------------------------------------------------------------
    async def create(
        self, sql: Any, params: tuple[Any, ...], thread_row: Mapping[str, Any], explicit: bool
    ) -> None:
        """Queue one create and wait for its outcome (from any loop but the background one)."""
        job = CreateJob(sql, params, thread_row, explicit, asyncio.get_running_loop())
        self.background.post(self._enqueue, job)
        try:
            await job.future
        except asyncio.CancelledError:
            if job.future.done() and not job.future.cancelled():
                job.future.exception()  # the outcome came first; the cancellation wins
                raise
            job.ack = ack = job.caller.create_future()
            try:
                self.background.post(self._withdraw, job, ack)
            except BackgroundLoopClosed:  # the store is gone: nothing runs any more
                raise asyncio.CancelledError from None
            await wait_uncancellable(ack, CANCEL_CLEANUP_TIMEOUT)
            raise

    # -- the background loop's side -----------------------------------------------------------
    @abc.abstractmethod
    async def _send(self, conn: Any, batch: list[CreateJob]) -> Outcomes:
        """Run ``batch`` on ``conn``; each job's outcome. Jobs that did not run may be given
        back to :meth:`_requeue` instead."""

    def _usable(self, conn: Any) -> bool:
        """Whether ``conn`` may take the next jobs (it is still open)."""
        return True

    def _discard(self, conn: Any) -> None:
        """Close ``conn`` at once: it was cut off mid-statement."""

    def _cut(self, job: CreateJob) -> None:
        """Stop ``job``'s statement, withdrawn while on the wire: cancel its lane's task."""
        assert job.lane is not None
        job.lane.cancel()

    async def _after_cut(self, conn: Any) -> None:
        """A job on ``conn`` was cut: whatever must happen before the lane lets it go."""

    def _enqueue(self, job: CreateJob) -> None:
        self._queue.append(job)
        if self._lanes < self.store.max_size:
            self._lanes += 1
            asyncio.get_running_loop().create_task(self._lane())

    def _withdraw(self, job: CreateJob, ack: asyncio.Future[None]) -> None:
        if job.state == _QUEUED:
            with contextlib.suppress(ValueError):  # cleared at close: it never ran either
                self._queue.remove(job)
            job.state = _WITHDRAWN
        elif job.state == _SENT:  # on the wire: its outcome acknowledges it
            if self.cancel_in_flight and not job.cut and job.lane is not None:
                job.cut = True
                self._cut(job)
            return
        self.background.post_back(job.caller, _acknowledge, ack)

    def _fit(self, n: int) -> int:
        """How many of the queue's first ``n`` jobs one send may carry (at least one)."""
        return n

    def _take(self, conn: Any = None) -> list[CreateJob]:
        """The next jobs of a lane (to send on ``conn``): an even share of the queue, at most
        :attr:`max_batch` (and what :meth:`_fit` allows)."""
        queue = self._queue
        share = -(-len(queue) // max(self._lanes, 1))
        n = self._fit(min(self.max_batch, share, len(queue)))
        batch = [queue.popleft() for _ in range(n)]
        lane = asyncio.current_task()
        for job in batch:
            job.state = _SENT
            job.lane = lane
            job.conn = conn
        return batch

    @staticmethod
    def _done(outcomes: Outcomes) -> None:
        """The jobs' outcomes are known: no cancellation may reach their lane for them."""
        for job, _ in outcomes:
            job.state = _DONE
            job.lane = job.conn = None

    def _deliver(self, outcomes: Outcomes) -> None:
        for job, exc in outcomes:
            self.background.post_back(job.caller, _settle, job, exc)

    def _requeue(self, jobs: list[CreateJob]) -> None:
        """Jobs whose statements never ran: back to the front, in their order (or, for one
        whose caller gave up meanwhile, acknowledged as never written)."""
        for job in reversed(jobs):
            if job.ack is not None:
                job.state = _WITHDRAWN
                self.background.post_back(job.caller, _acknowledge, job.ack)
            else:
                job.state = _QUEUED
                job.lane = job.conn = None
                self._queue.appendleft(job)

    async def _lane(self) -> None:
        """Run jobs on one connection while any are queued."""
        sent: list[CreateJob] = []  # the jobs on the wire
        outcomes: Outcomes = []  # known, not yet handed over
        try:
            while self._queue:
                try:
                    pool, conn = await self.store.acquire()
                except Exception as exc:  # no connection: the next jobs fail
                    failed: Outcomes = [(job, exc) for job in self._take()]
                    self._done(failed)
                    self._deliver(failed)
                    continue
                try:
                    while self._queue and self._usable(conn):
                        self._deliver(outcomes)  # the previous jobs'
                        outcomes = []
                        sent = self._take(conn)
                        self.round_trips += 1
                        try:
                            outcomes = await self._send(conn, sent)
                        except asyncio.CancelledError:
                            if not any(job.cut for job in sent) or _uncancel():
                                raise  # the background loop is closing
                            outcomes = [(job, asyncio.CancelledError()) for job in sent]
                        except Exception as exc:  # e.g. a statement watcher that raised
                            outcomes = [(job, exc) for job in sent]
                        self._done(outcomes)  # before any other wait: no cut from now on
                        cut = any(job.cut for job in sent)
                        sent = []
                        if cut:  # the connection goes back (a cancelled statement settles)
                            await self._after_cut(conn)
                            break
                except BaseException:
                    self._discard(conn)  # cut off mid-statement: out of step with the server
                    raise
                finally:
                    with contextlib.suppress(Exception):  # the pool closes what it cannot reset
                        await self.store.put_back(pool, conn)
                self._deliver(outcomes)  # after the release: callers see no connection held
                outcomes = []
        except asyncio.CancelledError:  # the background loop is closing
            closed = DatabaseError(f"the database {self.store.name} was closed")
            gone: Outcomes = [(job, closed) for job in [*sent, *self._queue]]
            self._queue.clear()
            self._done(gone)
            self._deliver([*outcomes, *gone])
            raise
        finally:
            self._lanes -= 1


def _uncancel() -> bool:
    """Undo the cancellation a lane took for one job (Python 3.11+ counts them); True when
    another cancellation (the loop closing) is still pending."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    return uncancel is not None and uncancel() > 0
