"""The fault injector: its rules on their own, then through a real ThreadCreator on a real database.

Nothing here synchronises with sleeps or asserts on time: a delayed transaction is held open by a
gate the test opens itself, and rate-based rules are seeded, so every count is exact.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from pytest_threadcreator import (
    ConfigurationError,
    Database,
    InjectedFault,
    ThreadCreator,
    ThreadCreatorError,
    ThreadWithMessage,
)
from pytest_threadcreator.faults import FaultInjector, FaultRule
from pytest_threadcreator.faults.steps import STEPS, FaultAction
from pytest_threadcreator.store import sqlite as sqlite_backend

# Safety net so a broken store fails the test instead of hanging it; never asserted on.
HANG_GUARD_S = 30.0


def decisions(injector: FaultInjector, step: str, calls: int) -> list[FaultAction | None]:
    return [injector.decide(step) for _ in range(calls)]


def hit_calls(actions: list[FaultAction | None]) -> list[int]:
    return [action.call for action in actions if action is not None]


# --- which calls a rule hits ----------------------------------------------------------------


def test_a_rule_without_times_or_rate_hits_every_call_at_its_step_only() -> None:
    injector = FaultInjector()
    injector.fail("commit")

    assert decisions(injector, "commit", 3) == [
        FaultAction(kind="fail", step="commit", call=1),
        FaultAction(kind="fail", step="commit", call=2),
        FaultAction(kind="fail", step="commit", call=3),
    ]
    assert decisions(injector, "thread_insert", 2) == [None, None]
    assert injector.fired("commit") == 3
    assert injector.fired("thread_insert") == 0


def test_hits_count_every_call_that_reaches_a_step_whether_or_not_a_fault_fired() -> None:
    injector = FaultInjector()
    assert [injector.hits(step) for step in STEPS] == [0, 0, 0]
    injector.decide("thread_insert")
    injector.decide("thread_insert")
    injector.cancel("message_insert", times=1)
    injector.decide("message_insert")
    injector.decide("message_insert")

    assert injector.hits("thread_insert") == 2
    assert injector.hits("message_insert") == 2
    assert injector.hits("commit") == 0
    assert injector.fired("message_insert") == 1


def test_times_hits_the_next_n_calls_after_arming_then_the_rule_is_spent() -> None:
    injector = FaultInjector()
    decisions(injector, "message_insert", 3)  # reached before the rule existed: not hit
    rule = injector.fail("message_insert", times=2)
    assert (rule.remaining, rule.spent) == (2, False)

    actions = decisions(injector, "message_insert", 5)

    assert hit_calls(actions) == [4, 5]
    assert actions[2:] == [None, None, None]
    assert (rule.fired, rule.remaining, rule.spent) == (2, 0, True)
    assert injector.hits("message_insert") == 8
    assert injector.fired("message_insert") == 2


def test_each_kind_returns_its_action_and_delay_carries_its_seconds() -> None:
    injector = FaultInjector()
    injector.fail("thread_insert", times=1)
    injector.delay("message_insert", 2.5, times=1)
    injector.cancel("commit", times=1)

    assert injector.decide("thread_insert") == FaultAction("fail", "thread_insert", 1)
    assert injector.decide("message_insert") == FaultAction("delay", "message_insert", 1, 2.5)
    assert injector.decide("commit") == FaultAction("cancel", "commit", 1)


def test_the_same_seed_gives_the_same_decisions_and_other_seeds_differ() -> None:
    def sequence(seed: int) -> list[int]:
        injector = FaultInjector()
        injector.fail("message_insert", rate=0.3, seed=seed)
        return hit_calls(decisions(injector, "message_insert", 500))

    first, again, other = sequence(1234), sequence(1234), sequence(4321)

    assert first == again
    assert first != other
    assert 0 < len(first) < 500  # a rate, not all-or-nothing


def test_rate_one_hits_every_call() -> None:
    injector = FaultInjector()
    injector.cancel("commit", rate=1.0, seed=5)
    assert hit_calls(decisions(injector, "commit", 50)) == list(range(1, 51))


def test_times_with_rate_stops_after_n_hits_chosen_by_the_seed() -> None:
    unlimited = FaultInjector()
    unlimited.fail("commit", rate=0.5, seed=99)
    limited = FaultInjector()
    rule = limited.fail("commit", times=3, rate=0.5, seed=99)

    expected = hit_calls(decisions(unlimited, "commit", 100))[:3]

    assert hit_calls(decisions(limited, "commit", 100)) == expected
    assert rule.spent


def test_rate_without_seed_picks_one_that_replays_the_same_decisions() -> None:
    injector = FaultInjector()
    rule = injector.fail("commit", rate=0.5)
    assert isinstance(rule.seed, int)
    assert f"seed={rule.seed}" in repr(injector)
    replay = FaultInjector()
    replay.fail("commit", rate=0.5, seed=rule.seed)

    assert hit_calls(decisions(injector, "commit", 200)) == hit_calls(
        decisions(replay, "commit", 200)
    )


def test_the_first_rule_armed_wins_and_later_rules_keep_their_times() -> None:
    injector = FaultInjector()
    injector.fail("commit", times=1)
    delay = injector.delay("commit", 1.0, times=1)
    injector.cancel("commit", times=1)

    kinds = [action.kind if action else None for action in decisions(injector, "commit", 4)]

    assert kinds == ["fail", "delay", "cancel", None]
    assert delay.fired == 1


def test_a_rate_rule_decides_the_same_whether_or_not_an_earlier_rule_fired() -> None:
    alone = FaultInjector()
    alone.cancel("commit", rate=0.5, seed=7)
    behind = FaultInjector()
    behind.fail("commit", times=10)  # wins the first 10 calls
    behind.cancel("commit", rate=0.5, seed=7)

    alone_calls = hit_calls(decisions(alone, "commit", 60))
    behind_actions = decisions(behind, "commit", 60)

    assert [a.kind for a in behind_actions[:10] if a] == ["fail"] * 10
    assert hit_calls(behind_actions[10:]) == [call for call in alone_calls if call > 10]


def test_clear_disarms_every_rule_and_keeps_the_counts() -> None:
    injector = FaultInjector()
    injector.fail("commit")
    injector.delay("thread_insert", 0.5)
    injector.decide("commit")

    injector.clear()

    assert injector.rules == ()
    assert injector.decide("commit") is None
    assert injector.decide("thread_insert") is None
    assert (injector.hits("commit"), injector.fired("commit")) == (2, 1)


def test_reset_counts_zeroes_the_counts_and_keeps_the_rules() -> None:
    injector = FaultInjector()
    rule = injector.fail("commit")
    decisions(injector, "commit", 3)

    injector.reset_counts()

    assert (injector.hits("commit"), injector.fired("commit")) == (0, 0)
    assert injector.rules == (rule,)
    assert injector.decide("commit") == FaultAction("fail", "commit", call=1)


def test_repr_lists_the_armed_rules_and_the_hits() -> None:
    injector = FaultInjector()
    assert repr(injector) == (
        "<FaultInjector no rules armed; hits thread_insert=0 message_insert=0 commit=0>"
    )
    injector.fail("message_insert", rate=0.1, seed=1234)
    injector.delay("commit", 2, times=1)
    injector.decide("commit")

    assert repr(injector) == (
        "<FaultInjector rules: fail('message_insert', rate=0.1, seed=1234) [fired 0]; "
        "delay('commit', 2, times=1) [fired 1, spent]; "
        "hits thread_insert=0 message_insert=0 commit=1>"
    )


def test_decide_is_thread_safe() -> None:
    threads, calls_each = 8, 2_000
    injector = FaultInjector()
    injector.fail("commit", times=1_000)
    injector.delay("commit", 0.0, rate=0.25, seed=3)
    start = threading.Barrier(threads)
    seen: list[list[FaultAction | None]] = [[] for _ in range(threads)]

    def worker(index: int) -> None:
        start.wait(HANG_GUARD_S)
        seen[index] = decisions(injector, "commit", calls_each)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to provoke races
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(HANG_GUARD_S)
    finally:
        sys.setswitchinterval(switch_interval)

    actions = [action for part in seen for action in part]
    fired = [action for action in actions if action is not None]
    total = threads * calls_each
    assert len(actions) == total
    assert injector.hits("commit") == total
    assert injector.fired("commit") == len(fired)
    assert sorted(a.call for a in fired) == sorted({a.call for a in fired})  # no call twice
    assert [a.kind for a in fired].count("fail") == 1_000
    # The same decisions as one thread would get: counts depend on the seed, not the scheduling.
    single = FaultInjector()
    single.fail("commit", times=1_000)
    single.delay("commit", 0.0, rate=0.25, seed=3)
    assert sorted(a.call for a in fired) == hit_calls(decisions(single, "commit", total))


def test_arming_returns_a_read_only_rule() -> None:
    rule = FaultInjector().delay("thread_insert", 1.5, times=2)
    assert isinstance(rule, FaultRule)
    assert (rule.kind, rule.step, rule.seconds, rule.times, rule.rate, rule.seed) == (
        "delay",
        "thread_insert",
        1.5,
        2,
        None,
        None,
    )
    with pytest.raises(AttributeError):
        rule.times = 5  # type: ignore[misc]


# --- validation -----------------------------------------------------------------------------

VALID_STEPS = "'thread_insert', 'message_insert', 'commit'"


@pytest.mark.parametrize("arm", ["fail", "cancel", "delay"])
@pytest.mark.parametrize("step", ["comit", "", "THREAD_INSERT", 1])
def test_an_unknown_step_is_rejected_with_the_valid_steps(arm: str, step: Any) -> None:
    injector = FaultInjector()
    method: Callable[..., Any] = getattr(injector, arm)
    args = (step, 1.0) if arm == "delay" else (step,)
    with pytest.raises(ConfigurationError) as excinfo:
        method(*args)
    assert str(excinfo.value) == f"{arm}() got unknown step {step!r}; pass one of {VALID_STEPS}"
    assert injector.rules == ()


@pytest.mark.parametrize("arm", ["fail", "cancel", "delay"])
def test_a_rule_without_step_or_statement_says_to_pass_one(arm: str) -> None:
    injector = FaultInjector()
    method: Callable[..., Any] = getattr(injector, arm)
    args = (None, 1.0) if arm == "delay" else (None,)
    with pytest.raises(ConfigurationError) as excinfo:
        method(*args)
    assert str(excinfo.value) == (
        f"{arm}() needs a step ({VALID_STEPS}) or statement='regex' (matched against the SQL "
        "of statements of engines on the test's database)"
    )
    assert injector.rules == ()


@pytest.mark.parametrize("read", ["hits", "fired"])
def test_reading_counts_of_an_unknown_step_is_rejected(read: str) -> None:
    with pytest.raises(ConfigurationError, match=r"got unknown step 'comit'; pass one of "):
        getattr(FaultInjector(), read)("comit")


@pytest.mark.parametrize("times", [0, -1, 1.5, True, "2"])
def test_times_must_be_a_positive_int(times: Any) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        FaultInjector().fail("commit", times=times)
    assert str(excinfo.value) == (
        "fail(times=...) must be a positive int (how many calls to hit) or None for every "
        f"call, got {times!r}"
    )


@pytest.mark.parametrize("rate", [0, 0.0, -0.1, 1.01, math.nan, math.inf, True, "0.1"])
def test_rate_must_be_a_probability_above_zero_up_to_one(rate: Any) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        FaultInjector().cancel("commit", rate=rate, seed=1)
    assert str(excinfo.value) == (
        "cancel(rate=...) must be a probability with 0 < rate <= 1 (rate=0.1 hits about one "
        f"call in ten) or None for every call, got {rate!r}"
    )


@pytest.mark.parametrize("seconds", [-0.001, math.nan, math.inf, "1", None, False])
def test_delay_seconds_must_be_a_finite_number_not_below_zero(seconds: Any) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        FaultInjector().delay("commit", seconds)
    assert str(excinfo.value) == (
        "delay() seconds must be a finite number >= 0 (how long to wait before the step's "
        f"SQL), got {seconds!r}; e.g. delay('commit', 0.5) or delay(statement=r'^UPDATE', "
        "seconds=0.5)"
    )


def test_a_seed_without_a_rate_is_rejected() -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        FaultInjector().fail("commit", times=2, seed=1)
    assert str(excinfo.value) == (
        "fail(seed=...) only applies together with rate=...; pass rate=p as well, or drop seed"
    )


@pytest.mark.parametrize("seed", ["1234", 1.5, True])
def test_a_seed_must_be_an_int(seed: Any) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        FaultInjector().fail("commit", rate=0.5, seed=seed)
    assert str(excinfo.value) == (
        f"fail(seed=...) must be an int (the same seed gives the same decisions), got {seed!r}"
    )


def test_the_faults_module_does_not_import_pytest() -> None:
    # subprocess: needs an interpreter in which pytest was never imported
    code = "import sys, pytest_threadcreator.faults; print('pytest' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"


# --- end to end: ThreadCreator on a real database --------------------------------------------


@pytest.fixture
def injector() -> FaultInjector:
    return FaultInjector()


@pytest.fixture(params=["database", "sessionmaker"])
def creator(
    request: pytest.FixtureRequest, threadcreator_db: Database, injector: FaultInjector
) -> ThreadCreator:
    """A ThreadCreator on the plugin's Database (its store) or on a plain async_sessionmaker."""
    if request.param == "database":
        target: Any = threadcreator_db
    else:
        target = threadcreator_db.sessionmaker
    made = ThreadCreator(target)
    made.fault_decider = injector.decide
    return made


async def assert_nothing_written(database: Database) -> None:
    __tracebackhide__ = True
    assert await database.count_threads() == 0
    assert await database.count_messages() == 0


async def assert_both_or_neither(database: Database, thread_id: str) -> int:
    """Whether ``thread_id`` was stored (0 or 1), after checking it has its message iff so."""
    __tracebackhide__ = True
    s = database.schema
    t = s.thread_table
    rows = await database.store.fetch_all(
        select(t.c[s.thread_id_column].label("id")).where(t.c[s.thread_id_column] == thread_id)
    )
    messages = await database.count_messages(thread_id)
    assert (len(rows), messages) in ((0, 0), (1, 1))
    await database.check_integrity()
    return len(rows)


def later_steps(step: str) -> tuple[str, ...]:
    return STEPS[STEPS.index(step) + 1 :]


@pytest.mark.asyncio
@pytest.mark.parametrize("step", STEPS)
async def test_fail_raises_injected_fault_unchanged_unretried_and_writes_nothing(
    step: str,
    creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    injector.fail(step)

    with pytest.raises(InjectedFault) as excinfo:
        await creator.create_thread_with_message(make_user_context(), "hello")

    assert type(excinfo.value) is InjectedFault
    assert not isinstance(excinfo.value, ThreadCreatorError)
    assert (excinfo.value.step, excinfo.value.call) == (step, 1)
    assert injector.hits(step) == 1  # not retried
    assert creator.retries == 0
    assert [injector.hits(later) for later in later_steps(step)] == [0] * len(later_steps(step))
    await assert_nothing_written(threadcreator_db)  # at message_insert: no thread row left


@pytest.mark.asyncio
@pytest.mark.parametrize("step", STEPS)
async def test_cancel_raises_cancelled_error_and_writes_nothing(
    step: str,
    creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    injector.cancel(step)

    with pytest.raises(asyncio.CancelledError):
        await creator.create_thread_with_message(make_user_context(), "hello")

    assert injector.hits(step) == 1
    assert injector.fired(step) == 1
    assert [injector.hits(later) for later in later_steps(step)] == [0] * len(later_steps(step))
    await assert_nothing_written(threadcreator_db)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["fail", "cancel"])
@pytest.mark.parametrize("step", STEPS)
async def test_after_a_spent_fault_the_next_create_succeeds(
    kind: str,
    step: str,
    creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    getattr(injector, kind)(step, times=1)
    with pytest.raises((InjectedFault, asyncio.CancelledError)):
        await creator.create_thread_with_message(make_user_context(), "first")

    result = await creator.create_thread_with_message(make_user_context(), "second")

    assert await threadcreator_db.count_threads() == 1
    assert [m.text for m in await creator.list_messages(result.thread_id)] == ["second"]
    assert injector.hits(step) == 2
    assert injector.fired(step) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("step", STEPS)
async def test_delay_still_writes_the_row(
    step: str,
    creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    injector.delay(step, 0.01)

    result = await creator.create_thread_with_message(make_user_context(), "hello")

    assert injector.fired(step) == 1
    assert await threadcreator_db.count_threads() == 1
    assert await threadcreator_db.count_messages(result.thread_id) == 1


@pytest.mark.asyncio
async def test_a_timeout_during_a_real_commit_delay_leaves_both_rows_or_neither(
    creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    injector.delay("commit", 0.5)
    thread_id = f"thread_{uuid.uuid4().hex}"
    context = make_user_context(thread_id=thread_id)

    with pytest.raises(asyncio.TimeoutError):
        # The delay outlasts the timeout, so the call cannot finish first.
        await asyncio.wait_for(creator.create_thread_with_message(context, "hi"), timeout=0.05)

    # Reads queue behind the delayed transaction on SQLite; on other stores it may still run.
    await assert_both_or_neither(threadcreator_db, thread_id)


# --- end to end on SQLite, with the delay held open by the test ------------------------------


class GatedPause:
    """Stands in for the SQLite store's delay: ``pause`` blocks until the test opens the gate.

    ``cancelled`` is the flag the real delay waits on, which the store sets when the call's
    caller is cancelled.
    """

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.cancelled: Any = threading.Event()  # until the store hands over its own flag
        self.seconds: list[float] = []
        self.stuck = False

    def pause(self, seconds: float, cancelled: Any) -> None:
        self.seconds.append(seconds)
        self.cancelled = cancelled
        self.entered.set()
        if not self.opened.wait(HANG_GUARD_S):
            self.stuck = True


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedPause]:
    gated = GatedPause()
    monkeypatch.setattr(sqlite_backend, "_pause", gated.pause)
    yield gated
    gated.opened.set()  # never leave the writer thread parked


async def wait_for_event(event: threading.Event) -> None:
    __tracebackhide__ = True
    assert await asyncio.to_thread(event.wait, HANG_GUARD_S), "the delay was never reached"


def probe_write_lock_and_rows(database: Database) -> tuple[bool, int]:
    """From a connection of our own: is the write lock taken, and how many threads are visible?"""
    conn = sqlite3.connect(database.location, timeout=0, isolation_level=None)
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc)
            locked = True
        else:
            conn.execute("ROLLBACK")
            locked = False
        table = database.schema.thread_table.name
        visible = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        return locked, int(visible)
    finally:
        conn.close()


@pytest.mark.asyncio
@pytest.mark.threadcreator(db="sqlite", isolation="clean")
@pytest.mark.parametrize("step", STEPS)
async def test_a_delay_happens_inside_the_open_transaction(
    step: str,
    gate: GatedPause,
    thread_creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    thread_creator.fault_decider = injector.decide
    injector.delay(step, 7.5)
    assert probe_write_lock_and_rows(threadcreator_db) == (False, 0)
    task = asyncio.create_task(
        thread_creator.create_thread_with_message(make_user_context(), "hello")
    )
    try:
        await wait_for_event(gate.entered)
        # Parked in the delay: the transaction holds the write lock and nothing is committed.
        assert probe_write_lock_and_rows(threadcreator_db) == (True, 0)
        assert [injector.hits(later) for later in later_steps(step)] == [0] * len(later_steps(step))
    finally:
        gate.opened.set()
    result = await task

    assert gate.seconds == [7.5]
    assert not gate.stuck
    assert probe_write_lock_and_rows(threadcreator_db) == (False, 1)
    assert await threadcreator_db.count_messages(result.thread_id) == 1


@pytest.mark.asyncio
@pytest.mark.threadcreator(db="sqlite", isolation="clean")
async def test_a_timeout_returns_while_the_commit_is_delayed_and_the_writer_rolls_back(
    gate: GatedPause,
    thread_creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    thread_creator.fault_decider = injector.decide
    injector.delay("commit", 2.0)
    thread_id = f"thread_{uuid.uuid4().hex}"
    create = asyncio.ensure_future(
        thread_creator.create_thread_with_message(make_user_context(thread_id=thread_id), "hi")
    )
    try:
        await wait_for_event(gate.entered)  # the call is parked before COMMIT
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(create, timeout=0.05)
        # wait_for came back while the gate was shut: it did not wait for the transaction.
        assert not gate.opened.is_set()
        assert create.cancelled()
        # The writer is told: the flag that the real delay waits on is set.
        await wait_for_event(gate.cancelled)
        assert probe_write_lock_and_rows(threadcreator_db) == (True, 0)
    finally:
        gate.opened.set()

    assert not gate.stuck
    # Even though its delay ran to the end here, the job saw the cancellation before COMMIT and
    # rolled back (the read queues behind it on the writer thread).
    assert await assert_both_or_neither(threadcreator_db, thread_id) == 0
    assert probe_write_lock_and_rows(threadcreator_db) == (False, 0)
    assert injector.hits("commit") == 1


# --- end to end: many concurrent creates with a seeded failure rate -------------------------


@pytest.mark.asyncio
@pytest.mark.threadcreator(
    isolation="clean"
)  # concurrency is promised in clean/fresh, not rollback
async def test_a_thousand_concurrent_creates_with_ten_percent_failures_store_exactly_the_successes(
    thread_creator: ThreadCreator,
    injector: FaultInjector,
    threadcreator_db: Database,
    make_user_context: Any,
) -> None:
    calls = 1_000
    thread_creator.fault_decider = injector.decide
    injector.fail("message_insert", rate=0.1, seed=1234)
    contexts = make_user_context.many(calls)

    results = await asyncio.gather(
        *(
            thread_creator.create_thread_with_message(context, f"hello {i}")
            for i, context in enumerate(contexts)
        ),
        return_exceptions=True,
    )

    successes = [r for r in results if isinstance(r, ThreadWithMessage)]
    faults = [r for r in results if isinstance(r, InjectedFault)]
    assert len(successes) + len(faults) == calls, [
        r for r in results if not isinstance(r, (ThreadWithMessage, InjectedFault))
    ][:3]
    assert len(faults) == injector.fired("message_insert")
    assert injector.hits("thread_insert") == injector.hits("message_insert") == calls
    assert injector.hits("commit") == len(successes)
    # The seed decides exactly which calls fail, whatever order the tasks ran in.
    replay = FaultInjector()
    replay.fail("message_insert", rate=0.1, seed=1234)
    assert sorted(f.call for f in faults) == hit_calls(decisions(replay, "message_insert", calls))
    assert 0 < len(faults) < calls

    s = threadcreator_db.schema
    id_column = s.thread_table.c[s.thread_id_column]
    stored = await threadcreator_db.store.fetch_all(select(id_column.label("id")))
    assert await threadcreator_db.count_threads() == len(successes)
    assert await threadcreator_db.count_messages() == len(successes)
    assert {row["id"] for row in stored} == {r.thread_id for r in successes}
    assert await threadcreator_db.orphan_threads() == []
    await threadcreator_db.check_integrity()


# --- the fault_injector fixture, through pytester ----------------------------------------------

PYTESTER_INI = "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"


def test_the_fault_injector_fixture_reaches_every_thread_creator_for_one_test_only(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(PYTESTER_INI)
    pytester.makepyfile(
        """
        import pytest
        from pytest_threadcreator import FaultInjector, InjectedFault, ThreadCreator

        @pytest.mark.asyncio
        async def test_faulty(fault_injector, thread_creator, threadcreator_db, user_context):
            assert isinstance(fault_injector, FaultInjector)
            fault_injector.fail("message_insert")
            with pytest.raises(InjectedFault):
                await thread_creator.create_thread_with_message(user_context, "hi")
            with pytest.raises(InjectedFault):  # an unbound ThreadCreator uses the test's database
                await ThreadCreator().create_thread_with_message(user_context, "hi")
            assert fault_injector.hits("message_insert") == 2
            assert await threadcreator_db.count_threads() == 0

        @pytest.mark.asyncio
        async def test_next_test_is_unaffected(thread_creator, threadcreator_db, user_context):
            await thread_creator.create_thread_with_message(user_context, "hi")
            assert await threadcreator_db.count_threads() == 1
        """
    )
    result = pytester.runpytest("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_fault_injector_fixture_is_documented(pytester: pytest.Pytester) -> None:
    pytester.makeini(PYTESTER_INI)
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["fault_injector*", "*fail, delay or cancel*"])
