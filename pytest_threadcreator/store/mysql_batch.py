"""MySQL's lanes send the creates queued at the same time several to a packet.

Each create stays a transaction of its own (``START TRANSACTION; INSERT; INSERT; COMMIT``), but
the creates a lane takes from the queue (:mod:`.queued`) travel in one multi-statement packet:
one round trip, and one wake-up of each event loop, for all of them. The server runs a packet's
statements in order and stops at the first that fails, so a packet's outcome is exact: the
creates before the failing statement committed, the failing create is rolled back and gets its
error, and the creates after it did not run and go back to the front of the queue. A create
alone in the queue is a packet of one.

A create cancelled while its packet is on the wire waits for the packet's outcome (a packet
cut off half-way would leave the connection out of step with the server).
"""

from __future__ import annotations

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


def _is_statement_error(exc: BaseException) -> bool:
    """An error the server sent for a statement: the packet stopped there. (The client's own
    errors, such as a lost connection, are MySQL's codes 2000-2999; the server's are below and
    above, e.g. 4025 for a CHECK constraint on MariaDB.)"""
    code = exc.args[0] if exc.args else None
    return isinstance(code, int) and code > 0 and not 2000 <= code < 3000


class MySqlCreateQueue(CreateQueue[PacketStore]):
    """Creates of one MySQL store; ``sql`` of a job: its two INSERTs."""

    max_batch = MAX_BATCH

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
        for job in batch:
            done += await self._send(conn, [job])
        return done

    async def _failed(
        self, conn: Any, batch: list[CreateJob], exc: Exception, read: int
    ) -> Outcomes:
        at = read // _PER_CREATE  # the create whose statement failed
        done: Outcomes = [(job, None) for job in batch[:at]]
        failing, rest = batch[at], batch[at + 1 :]
        stopped = _is_statement_error(exc)  # the server stopped there: the rest did not run
        await self.store.roll_back(conn)
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
