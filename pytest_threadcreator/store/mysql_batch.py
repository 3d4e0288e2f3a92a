"""MySQL's lanes send the creates queued at the same time several to a packet.

Each create stays a transaction of its own (``START TRANSACTION; INSERT; INSERT; COMMIT``), but
the creates a lane takes from the queue (:mod:`.queued`) travel in one multi-statement packet:
one round trip, and one wake-up of each event loop, for all of them. The server runs a packet's
statements in order and stops at the first that fails, so a packet's outcome is exact: the
creates before the failing statement committed, the failing create is rolled back and gets its
error, and the creates after it did not run and go back to the front of the queue. A create
alone in the queue is a packet of one.

A create cancelled while its packet is on the wire is interrupted on the server: ``KILL QUERY``
from a connection of its own stops the statement running (a create waiting for a lock, say), so
the server stops the packet there and the outcome is exact as above; the create that was running
is rolled back, and if it was not the cancelled one it goes back to the queue (its caller did
not ask for that). A kill that fails (the server refuses its connection, say) is sent again
until the packet's answer is in, which the caller's ``CancelledError`` waits for (up to the
cleanup timeout, :data:`~.._background.CANCEL_CLEANUP_TIMEOUT`). A packet sent create by create
stops at the first kill and puts the rest back in the queue. Once a packet has failed, a create
cancelled while the lane settles it (rolls back, looks up why) is not killed: it never ran and
goes back to its caller as withdrawn (also from a packet sent create by create), and a kill
would only stop the lane's own statements. An interrupted ``COMMIT`` may have taken effect: the
lane then asks whether the thread exists with the create's owner.

The packet's answer is always read to its end (cutting the client off half-way would leave the
connection out of step with the server), and a connection a kill was sent to is closed
afterwards, never reused: a kill that arrives after its packet finished must not stop the next
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from typing import Any, Protocol

from .base import StatementCallback
from .queued import CreateJob, CreateQueue, Outcomes

__all__ = ["MAX_BATCH", "MySqlCreateQueue"]

#: At most this many creates share one packet.
MAX_BATCH = 8
#: Statements of one create in a packet: START TRANSACTION, two INSERTs, COMMIT.
_PER_CREATE = 4
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
    """Creates of one MySQL store; ``sql`` of a job: its two INSERTs."""

    max_batch = MAX_BATCH
    cancel_in_flight = True

    def __init__(self, store: PacketStore, background: Any) -> None:
        super().__init__(store, background)
        #: kills sent for a cancelled create, by the connection they stop
        self._kills: dict[Any, asyncio.Task[None]] = {}
        #: connections whose failed packet is being settled: no kill for them
        self._settling: set[Any] = set()

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

    async def _send(self, conn: Any, batch: list[CreateJob]) -> Outcomes:
        """One packet with ``batch``'s creates; each job's outcome (jobs that did not run are
        queued again)."""
        sql = "; ".join(f"START TRANSACTION; {job.sql[0]}; {job.sql[1]}; COMMIT" for job in batch)
        params = tuple(itertools.chain.from_iterable(job.params for job in batch))
        read = 0  # results read, one per statement
        try:
            async with conn.cursor() as cursor:
                try:
                    packet = cursor.mogrify(sql, params)
                except Exception as exc:  # a value the driver cannot send: nothing was sent
                    return await self._one_by_one(conn, batch, exc)
                watcher = self.store.watcher
                if watcher is not None:
                    label = f"store {self.store.name}"
                    for job in batch:
                        for statement in ("START TRANSACTION", *job.sql, "COMMIT"):
                            watcher(label, statement)
                await cursor.execute(packet)
                read = 1
                while await cursor.nextset():
                    read += 1
        except Exception as exc:
            return await self._failed(conn, batch, exc, read)
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
            done += await self._send(conn, [job])
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
            if interrupted and read % _PER_CREATE == _PER_CREATE - 1:
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
