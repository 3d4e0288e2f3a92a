"""Cancelled means cancelled: a call cancelled or timed out before its COMMIT leaves nothing, on
every backend, and nothing of it appears later.

Each call is parked in a fault delay at one step and cancelled there, by ``task.cancel()`` or by
``asyncio.wait_for``'s timeout. The delay is twice the hang guard, so a store that waits it out
instead of interrupting it cannot pass: the test waits until the database is idle again (nothing
checked out, no job on SQLite's writer thread), then shows that the cancelled call's rows are
absent and that a later create on the same database goes through.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from pytest_threadcreator import Database, ThreadCreator
from pytest_threadcreator.faults import FaultInjector
from pytest_threadcreator.faults.steps import STEPS, FaultAction
from pytest_threadcreator.ids import new_thread_id

from ..helpers import PG_SERVER_URL, needs_marks, pg_server_missing

# Safety net so a store that does not give up fails the test instead of hanging it.
HANG_GUARD_S = 30.0
# Twice the hang guard: a call parked here is idle within the guard only if it was interrupted.
PARKED_S = 2 * HANG_GUARD_S

BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.threadcreator(db="sqlite", isolation="clean")),
    pytest.param(
        PG_SERVER_URL,
        id="postgresql",
        marks=[
            pytest.mark.threadcreator(db=PG_SERVER_URL, isolation="clean"),
            *needs_marks(pg_server_missing()),
        ],
    ),
]


class DelayWatch:
    """Wraps a FaultInjector's ``decide``; ``reached`` is set when a delay starts (any thread)."""

    def __init__(self, injector: FaultInjector) -> None:
        self.injector = injector
        self.reached = threading.Event()
        self.started_at: float | None = None

    def decide(self, step: str) -> FaultAction | None:
        action = self.injector.decide(step)
        if action is not None and action.kind == "delay":
            self.started_at = time.monotonic()
            self.reached.set()
        return action

    async def wait_reached(self) -> None:
        __tracebackhide__ = True
        assert await asyncio.to_thread(self.reached.wait, HANG_GUARD_S), "the delay never began"


@pytest.fixture(params=["store", "sessionmaker"])
def make_creator(
    request: pytest.FixtureRequest, threadcreator_db: Database
) -> Callable[[DelayWatch | None], ThreadCreator]:
    """ThreadCreators on the database's own store, or on a plain async_sessionmaker."""

    def make(watch: DelayWatch | None) -> ThreadCreator:
        target: Any = (
            threadcreator_db if request.param == "store" else threadcreator_db.sessionmaker
        )
        creator = ThreadCreator(target)
        if watch is not None:
            creator.fault_decider = watch.decide
        return creator

    return make


async def wait_until_idle(database: Database) -> None:
    """Poll until no call holds a connection or a writer job of ``database`` (bounded)."""
    __tracebackhide__ = True
    deadline = time.monotonic() + HANG_GUARD_S
    while database.checked_out():
        assert time.monotonic() < deadline, (
            f"{database.checked_out()} connection(s) or writer job(s) still busy "
            f"{HANG_GUARD_S:g} s after the call was cancelled"
        )
        await asyncio.sleep(0.005)


async def stored_thread_ids(database: Database) -> set[str]:
    s = database.schema
    column = s.thread_table.c[s.thread_id_column]
    return {row["id"] for row in await database.store.fetch_all(select(column.label("id")))}


async def assert_only_the_later_create_is_stored(
    database: Database, creator: ThreadCreator, user: Any, cancelled_id: str
) -> None:
    """A later create goes through the same database, and it alone is stored."""
    __tracebackhide__ = True
    later = await asyncio.wait_for(
        creator.create_thread_with_message(user.with_thread(new_thread_id()), "later"),
        HANG_GUARD_S,
    )
    stored = await stored_thread_ids(database)
    assert cancelled_id not in stored, "the cancelled call committed after it was cancelled"
    assert stored == {later.thread_id}
    assert await database.count_messages() == 1
    await database.check_integrity()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["task.cancel", "wait_for"])
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("db_kind", BACKENDS)
async def test_a_call_cancelled_in_a_delay_before_commit_leaves_nothing_ever(
    db_kind: str,
    step: str,
    how: str,
    make_creator: Callable[[DelayWatch | None], ThreadCreator],
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    injector = FaultInjector()
    injector.delay(step, PARKED_S, times=1)
    watch = DelayWatch(injector)
    creator = make_creator(watch)
    user = make_user_context()
    thread_id = new_thread_id()
    call = asyncio.ensure_future(
        creator.create_thread_with_message(user.with_thread(thread_id), "cancelled")
    )
    await watch.wait_reached()  # parked at the step, inside the open transaction

    if how == "task.cancel":
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    else:
        with pytest.raises(asyncio.TimeoutError):  # the builtin one only from Python 3.11
            await asyncio.wait_for(call, timeout=0.01)
    assert call.cancelled()

    await wait_until_idle(threadcreator_db)
    assert await stored_thread_ids(threadcreator_db) == set()
    assert await threadcreator_db.count_messages() == 0
    assert [injector.hits(later) for later in STEPS[STEPS.index(step) + 1 :]] == [0] * (
        len(STEPS) - STEPS.index(step) - 1
    )  # the call stopped at the delay: no later step ran
    await assert_only_the_later_create_is_stored(threadcreator_db, creator, user, thread_id)


@pytest.mark.asyncio
@pytest.mark.parametrize("db_kind", BACKENDS)
async def test_a_wait_for_timeout_before_a_delayed_commit_leaves_nothing_after_the_delay(
    db_kind: str,
    make_creator: Callable[[DelayWatch | None], ThreadCreator],
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    """The user's way: ``wait_for`` around the call, the commit delayed past the timeout."""
    delay_s = 0.3
    injector = FaultInjector()
    injector.delay("commit", delay_s, times=1)
    watch = DelayWatch(injector)
    creator = make_creator(watch)
    user = make_user_context()
    thread_id = new_thread_id()
    began = time.monotonic()

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            creator.create_thread_with_message(user.with_thread(thread_id), "timed out"),
            timeout=0.05,  # the delay outlasts it, so the call cannot commit first
        )

    # Wait until the delay would have run out, and the database is idle: by then an interrupted
    # call is long gone and one that ran on would have committed.
    await wait_until_idle(threadcreator_db)
    delay_ends = (watch.started_at or began) + delay_s
    await asyncio.sleep(max(0.0, delay_ends - time.monotonic()) + 0.05)
    await wait_until_idle(threadcreator_db)
    assert await stored_thread_ids(threadcreator_db) == set()
    assert await threadcreator_db.count_messages() == 0
    await assert_only_the_later_create_is_stored(threadcreator_db, creator, user, thread_id)
