"""PostgreSQL's lanes run the creates queued at the same time back to back, one statement each.

A create is one statement (both rows or neither, see :mod:`.postgresql`); a lane of
:mod:`.queued` keeps its pool connection while creates wait, so a burst of creates pays no
task, pool checkout or return per create. A create cancelled while its statement runs cancels
that statement on the server, as cancelling a task of its own would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .queued import CreateJob, CreateQueue, Outcomes

__all__ = ["PgCreateQueue"]


class StatementStore(Protocol):
    """What :class:`PgCreateQueue` needs of the PostgreSQL store (on the background loop)."""

    name: str
    max_size: int

    async def acquire(self) -> tuple[Any, Any]: ...

    async def put_back(self, pool: Any, conn: Any) -> None: ...

    async def raise_if_taken(
        self, conn: Any, exc: Exception, sql: Any, thread_row: Mapping[str, Any], explicit: bool
    ) -> None: ...


class PgCreateQueue(CreateQueue[StatementStore]):
    """Creates of one PostgreSQL store; ``sql`` of a job: the store's compiled create."""

    cancel_in_flight = True

    def _usable(self, conn: Any) -> bool:
        return not conn.is_closed()

    def _discard(self, conn: Any) -> None:
        conn.terminate()

    async def _send(self, conn: Any, batch: list[CreateJob]) -> Outcomes:
        (job,) = batch
        try:
            await conn.execute(job.sql.combined, *job.params)
        except Exception as exc:
            try:
                await self.store.raise_if_taken(conn, exc, job.sql, job.thread_row, job.explicit)
            except Exception as taken:
                return [(job, taken)]
            return [(job, exc)]
        return [(job, None)]
