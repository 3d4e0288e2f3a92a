"""MySQL's lanes send the creates queued at the same time several to a packet, in one transaction.

The creates a lane takes from the queue (:mod:`.queued`) travel in one multi-statement packet
and commit together: ``START TRANSACTION``, one ``INSERT`` of all their threads, one of all
their messages, ``COMMIT``. That is one round trip, one wake-up of each event loop and one log
flush for all of them, and a quarter of the statements a transaction per create would take.
Each create is still atomic: its two rows commit together, with the others' or not at all. A
create alone in the queue is a packet of one, and so is a big one (:data:`PACKET_CHARS`): a
packet over the server's ``max_allowed_packet`` would be refused whole.

When such a packet fails, nothing of it was written (an interrupted ``COMMIT`` may have taken
effect: the lane then asks whether one of its threads exists, which tells for all). If a
statement failed (a taken thread id, a constraint, a deadlock), the lane sends the creates
again on the same connection (on another if the rollback closed it), each in a transaction of
its own, so that the error reaches its own create alone and the others commit: ``START
TRANSACTION; INSERT; INSERT; COMMIT`` per create, still one packet. They are never sent
together again, so an error that recurs (one that closes the connection every time, say)
ends with its create; a create whose caller gave up meanwhile is not sent at all. The server runs a packet's statements in order and stops at the
first that fails, so that packet's outcome is exact: the creates before the failing statement
committed, the failing create is rolled back and gets its error, and the creates after it did
not run and go back to the front of the queue. Creates whose rows differ in columns (a row
builder that leaves a column out now and then) are sent this way from the start.

A create cancelled while its packet is on the wire is interrupted on the server: ``KILL QUERY``
from a connection of its own stops the statement running (a create waiting for a lock, say), so
the server stops the packet there. A packet sent together is then rolled back whole and its
other creates go back to the queue (their callers did not ask for that); in a packet sent create
by create the outcome is exact as above, and the create that was running, if it was not the
cancelled one, goes back to the queue. A kill that fails (the server refuses its connection,
say) is sent again until the packet's answer is in, which the caller's ``CancelledError`` waits
for (up to the cleanup timeout, :data:`~.._background.CANCEL_CLEANUP_TIMEOUT`). A packet sent
create by create stops at the first kill and puts the rest back in the queue. Once a packet has
failed, a create cancelled while the lane settles it (rolls back, looks up why) is not killed:
it never ran and goes back to its caller as withdrawn (also from a packet sent create by
create), and a kill would only stop the lane's own statements. An interrupted ``COMMIT`` may
have taken effect: the lane then asks whether the thread exists with the create's owner.

The packet's answer is always read to its end (cutting the client off half-way would leave the
connection out of step with the server), and a connection a kill was sent to is closed
afterwards, never reused: a kill that arrives after its packet finished must not stop the next
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from .base import StatementCallback
from .queued import CreateJob, CreateQueue, Outcomes

__all__ = ["MAX_BATCH", "PACKET_CHARS", "MySqlCreateQueue"]

#: At most this many creates share one packet.
MAX_BATCH = 8
#: Creates share a packet only while their text values come to at most this many characters
#: together (a create bigger than that goes alone): a packet over the server's
#: ``max_allowed_packet`` (4 MiB by default on MySQL 5.7, 16 MiB on MariaDB) is refused, and the
#: connection closed, even when each of its creates alone would fit.
PACKET_CHARS = 256 * 1024
#: Statements of a transaction in a packet: START TRANSACTION, two INSERTs, COMMIT.
_PER_CREATE = 4
#: Results a transaction's packet gives before its COMMIT's (START TRANSACTION, two INSERTs),
#: whether it carries one create or several.
_COMMIT_AT = _PER_CREATE - 1
#: MySQL's error for a statement stopped by ``KILL QUERY``.
QUERY_INTERRUPTED = 1317
#: MySQL's error for a ``KILL`` of a connection that no longer exists.
UNKNOWN_THREAD = 1094
#: How long a lane that must settle a failed packet waits for a kill still under way (longer
#: than one attempt: a connect of up to 5 s and the ``KILL`` itself).
KILL_TIMEOUT = 15.0
#: Seconds between attempts at a kill that failed (doubling up to the second figure).
KILL_RETRY = (0.01, 0.25)


class PacketStore(Protocol):
    """What :class:`MySqlCreateQueue` needs of the MySQL store (on the background loop)."""

    name: str
    max_size: int

    @property
    def watcher(self) -> StatementCallback | None: ...

    async def acquire(self) -> tuple[Any, Any]: ...

    async def put_back(self, pool: Any, conn: Any) -> None: ...

    async def roll_back(self, conn: Any) -> None: ...

    async def raise_if_taken(
        self, conn: Any, exc: Exception, thread_row: Mapping[str, Any], explicit: bool
    ) -> None: ...

    async def kill_query(self, conn: Any) -> None: ...

    async def committed(self, conn: Any, thread_row: Mapping[str, Any]) -> bool: ...


def _code(exc: BaseException) -> int | None:
    code = exc.args[0] if exc.args else None
    return code if isinstance(code, int) else None


def _is_statement_error(exc: BaseException) -> bool:
    """An error the server sent for a statement: the packet stopped there. (The client's own
    errors, such as a lost connection, are MySQL's codes 2000-2999; the server's are below and
    above, e.g. 4025 for a CHECK constraint on MariaDB.)"""
    code = _code(exc)
    return code is not None and code > 0 and not 2000 <= code < 3000


class MySqlCreateQueue(CreateQueue[PacketStore]):
    """Creates of one MySQL store; ``sql`` of a job: the :class:`~.compile.InsertPlan` of its
    thread and of its message (its ``params``: the thread's, then the message's)."""

    max_batch = MAX_BATCH
    cancel_in_flight = True

    def __init__(self, store: PacketStore, background: Any) -> None:
        super().__init__(store, background)
        #: kills sent for a cancelled create, by the connection they stop
        self._kills: dict[Any, asyncio.Task[None]] = {}
        #: connections whose failed packet is being settled: no kill for them
        self._settling: set[Any] = set()

    def _fit(self, n: int) -> int:
        size = 0
        for taken, job in enumerate(itertools.islice(self._queue, n)):
            size += sum(len(value) for value in job.params if isinstance(value, (str, bytes)))
            if taken and size > PACKET_CHARS:
                return taken
        return n

    def _cut(self, job: CreateJob) -> None:
        conn = job.conn
        if conn is not None and conn not in self._kills and conn not in self._settling:
            self._kills[conn] = asyncio.get_running_loop().create_task(
                self._kill(conn), name="threadcreator-mysql-kill"
            )

    async def _kill(self, conn: Any) -> None:
        """``KILL QUERY`` for ``conn``'s statement, sent again while it fails, until it is done,
        the packet failed (it is being settled) or the lane, done with the packet, stops it."""
        delay, longest = KILL_RETRY
        while True:
            try:
                await self.store.kill_query(conn)
                return
            except Exception as exc:
                if _code(exc) == UNKNOWN_THREAD or not self._usable(conn):
                    return  # the connection is gone: nothing runs on it any more
            if conn in self._settling:
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, longest)
            if conn in self._settling:
                return

    async def _kill_done(self, conn: Any) -> None:
        """Wait for the kill sent to ``conn`` (if any) to be done (or given up)."""
        kill = self._kills.get(conn)
        if kill is not None:
            with contextlib.suppress(Exception):  # no kill: the packet was waited for instead
                await asyncio.wait_for(asyncio.shield(kill), KILL_TIMEOUT)

    async def _after_cut(self, conn: Any) -> None:
        # the packet's answer is in: a kill still trying has nothing left to stop
        kill = self._kills.pop(conn, None)
        if kill is not None and not kill.done():
            kill.cancel()
        self._discard(conn)  # a kill that came late must not stop the next packet

    def _usable(self, conn: Any) -> bool:
        return bool(conn.connected)

    def _discard(self, conn: Any) -> None:
        conn.close()

    def _watch(self, statements: Iterable[str]) -> None:
        watcher = self.store.watcher
        if watcher is not None:
            label = f"store {self.store.name}"
            for statement in statements:
                watcher(label, statement)

    async def _send(self, conn: Any, batch: list[CreateJob]) -> Outcomes:
        """``batch``'s creates in one packet; each job's outcome (jobs that did not run are
        queued again)."""
        first = batch[0].sql
        if len(batch) > 1 and all(
            j.sql[0] is first[0] and j.sql[1] is first[1] and not j.alone for j in batch
        ):
            return await self._send_together(conn, batch)
        return await self._send_each(conn, batch)

    async def _send_together(self, conn: Any, batch: list[CreateJob]) -> Outcomes:
        """One transaction for all of ``batch``: ``START TRANSACTION``, one INSERT of all their
        threads, one of all their messages, ``COMMIT``."""
        thread_plan, message_plan = batch[0].sql
        inserts = (thread_plan.rows_sql(len(batch)), message_plan.rows_sql(len(batch)))
        split = len(thread_plan.bound)  # a job's params: its thread's, then its message's
        params = tuple(itertools.chain.from_iterable(job.params[:split] for job in batch))
        params += tuple(itertools.chain.from_iterable(job.params[split:] for job in batch))
        sql = f"START TRANSACTION; {inserts[0]}; {inserts[1]}; COMMIT"
        statements = ("START TRANSACTION", *inserts, "COMMIT")
        return await self._packet(conn, batch, sql, params, statements, self._together_failed)

    async def _together_failed(
        self, conn: Any, batch: list[CreateJob], exc: Exception, read: int
    ) -> Outcomes:
        """The transaction of :meth:`_send_together` failed: all of it was rolled back (or, if
        its COMMIT was interrupted, perhaps all of it committed)."""
        self._settling.add(conn)
        try:
            if conn in self._kills:  # the kill must not stop the ROLLBACK instead
                await self._kill_done(conn)
            await self.store.roll_back(conn)
            if _code(exc) == QUERY_INTERRUPTED and read == _COMMIT_AT:
                # its COMMIT was interrupted, and may have taken effect all the same
                try:
                    took = await self.store.committed(conn, batch[0].thread_row)
                except Exception:  # nobody can tell: they get the error
                    return [(job, exc) for job in batch]
                if took:
                    return [(job, None) for job in batch]
        finally:
            self._settling.discard(conn)
        if not _is_statement_error(exc):  # the connection broke: what became of them is unknown
            return [(job, exc) for job in batch]
        if conn in self._kills:
            # stopped for a cancelled create: none was written; the others go again on another
            # connection (a kill that came late must not stop them)
            self._requeue(batch)
            return []
        # one create's statement failed and took the others with it: each goes again in a
        # transaction of its own, so that the error reaches its create alone (a create whose
        # caller gave up meanwhile is not sent: it never ran)
        gone = [job for job in batch if job.cut or job.ack is not None]
        left = [job for job in batch if not (job.cut or job.ack is not None)]
        for job in left:
            job.alone = True
        self._requeue(gone)
        if not self._usable(conn):  # the rollback failed and closed it: on another connection
            self._requeue(left)
            return []
        return await self._send_each(conn, left)

    async def _send_each(self, conn: Any, batch: list[CreateJob]) -> Outcomes:
        """One packet with ``batch``'s creates, each in a transaction of its own; each job's
        outcome (jobs that did not run are queued again)."""
        if not batch:
            return []
        sql = "; ".join(
            f"START TRANSACTION; {job.sql[0].sql}; {job.sql[1].sql}; COMMIT" for job in batch
        )
        params = tuple(itertools.chain.from_iterable(job.params for job in batch))
        statements = (
            s
            for job in batch
            for s in ("START TRANSACTION", job.sql[0].sql, job.sql[1].sql, "COMMIT")
        )
        return await self._packet(conn, batch, sql, params, statements, self._failed)

    async def _packet(
        self,
        conn: Any,
        batch: list[CreateJob],
        sql: str,
        params: tuple[Any, ...],
        statements: Iterable[str],
        failed: Callable[[Any, list[CreateJob], Exception, int], Awaitable[Outcomes]],
    ) -> Outcomes:
        """Send ``batch``'s packet and read its answer to the end; ``failed(conn, batch, exc,
        read)`` settles a packet that failed after ``read`` results (one per statement)."""
        read = 0
        try:
            async with conn.cursor() as cursor:
                try:
                    packet = cursor.mogrify(sql, params)
                except Exception as exc:  # a value the driver cannot send: nothing was sent
                    return await self._one_by_one(conn, batch, exc)
                self._watch(statements)
                await cursor.execute(packet)
                read = 1
                while await cursor.nextset():
                    read += 1
        except Exception as exc:
            return await failed(conn, batch, exc, read)
        return [(job, None) for job in batch]

    async def _one_by_one(self, conn: Any, batch: list[CreateJob], exc: Exception) -> Outcomes:
        """Each job in a packet of its own, so that the error reaches the create it is of."""
        if len(batch) == 1:
            return [(batch[0], exc)]
        done: Outcomes = []
        for n, job in enumerate(batch):
            if job.cut:  # cancelled while an earlier one was settled, unkilled: never sent
                self._requeue([job])
                continue
            done += await self._send_each(conn, [job])
            if conn in self._kills:  # the connection is not to be used again
                self._requeue(batch[n + 1 :])
                break
        return done

    async def _failed(
        self, conn: Any, batch: list[CreateJob], exc: Exception, read: int
    ) -> Outcomes:
        at = read // _PER_CREATE  # the create whose statement failed
        done: Outcomes = [(job, None) for job in batch[:at]]
        failing, rest = batch[at], batch[at + 1 :]
        stopped = _is_statement_error(exc)  # the server stopped there: the rest did not run
        self._settling.add(conn)
        try:
            if conn in self._kills:  # the kill must not stop the ROLLBACK instead
                await self._kill_done(conn)
            await self.store.roll_back(conn)
            interrupted = _code(exc) == QUERY_INTERRUPTED
            took: bool | None = False  # whether it committed all the same (None: unknown)
            if interrupted and read % _PER_CREATE == _COMMIT_AT:
                # its COMMIT was interrupted, and may have taken effect all the same
                try:
                    took = await self.store.committed(conn, failing.thread_row)
                except Exception:  # it gets its error
                    took = None
                if took:
                    done.append((failing, None))
                    self._requeue(rest)
                    return done
            if interrupted and took is False and failing.ack is None and conn in self._kills:
                # stopped for another create's caller, not its own: sent again
                self._requeue([failing, *rest])
                return done
            outcome: BaseException = exc
            try:
                await self.store.raise_if_taken(conn, exc, failing.thread_row, failing.explicit)
            except Exception as taken:
                outcome = taken
            done.append((failing, outcome))
            if stopped:
                self._requeue(rest)
            else:  # the connection broke: what became of the rest is unknown
                done += [(job, exc) for job in rest]
            return done
        finally:
            self._settling.discard(conn)
