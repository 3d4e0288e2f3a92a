"""Direct tests of the concurrency runner behind the ``run_concurrently`` fixture.

Calls are orchestrated with ``asyncio.Event``s, never with sleeps, and latency is asserted on a
fake clock, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

from pytest_threadcreator.concurrency import ConcurrencyReport, LatencyStats, run_concurrently

from ..helpers import FakeClock

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

# Safety net so a broken runner fails the test instead of hanging it; never asserted on.
HANG_GUARD_S = 30.0


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks of this loop that are still running, apart from the test itself."""
    return asyncio.all_tasks() - {asyncio.current_task()}


async def wait_until(event: asyncio.Event, condition: Any) -> None:
    """Wait, without sleeping, until ``condition()`` holds; ``event`` is set on every change."""
    while not condition():
        event.clear()
        await event.wait()


async def yield_to_loop() -> None:
    """Let every other ready task run one step before this one continues."""
    resumed = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(resumed.set_result, None)
    await resumed


# --- results, order and counts ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_results_keep_input_order_when_later_items_finish_first() -> None:
    count = 8
    gates = [asyncio.Event() for _ in range(count)]
    gates[-1].set()
    finished: list[int] = []

    async def fn(item: int) -> str:
        await gates[item].wait()
        finished.append(item)
        if item > 0:
            gates[item - 1].set()  # each call lets the previous one finish: reverse order
        return f"value {item}"

    report = await run_concurrently(fn, range(count), timeout=HANG_GUARD_S)

    assert finished == list(reversed(range(count)))
    assert report.results == [f"value {item}" for item in range(count)]
    assert report.values == report.results
    assert (report.succeeded, report.failed, report.timed_out) == (count, 0, 0)
    assert report.errors == []
    assert report.waiting == []


@pytest.mark.asyncio
async def test_an_int_means_that_many_calls_over_range() -> None:
    seen: list[int] = []

    async def fn(item: int) -> int:
        seen.append(item)
        return item * item

    report = await run_concurrently(fn, 5)

    assert seen == [0, 1, 2, 3, 4]
    assert report.results == [0, 1, 4, 9, 16]
    assert report.succeeded == 5


@pytest.mark.asyncio
async def test_any_iterable_works_including_a_generator() -> None:
    async def fn(item: str) -> str:
        return item.upper()

    report = await run_concurrently(fn, (word for word in ["a", "b", "c"]))

    assert report.results == ["A", "B", "C"]


@pytest.mark.asyncio
async def test_no_items_give_an_empty_report() -> None:
    async def fn(item: int) -> int:
        raise AssertionError("never called")

    report = await run_concurrently(fn, [])

    assert report.results == []
    assert (report.succeeded, report.failed, report.elapsed_s, report.throughput) == (0, 0, 0, 0)
    assert report.latency_ms.count == 0
    report.raise_errors()  # returns None: nothing to raise


@pytest.mark.asyncio
async def test_errors_are_collected_in_input_order_with_counts() -> None:
    count = 9
    gates = [asyncio.Event() for _ in range(count)]
    gates[-1].set()

    async def fn(item: int) -> int:
        await gates[item].wait()
        if item > 0:
            gates[item - 1].set()  # finish in reverse order
        if item % 3 == 0:
            raise ValueError(f"bad item {item}")
        return item

    report = await run_concurrently(fn, count, timeout=HANG_GUARD_S)

    assert (report.succeeded, report.failed) == (6, 3)
    assert [str(error) for error in report.errors] == ["bad item 0", "bad item 3", "bad item 6"]
    for index in (0, 3, 6):
        assert report.results[index] is report.errors[index // 3]
    assert report.values == [1, 2, 4, 5, 7, 8]


@pytest.mark.asyncio
async def test_a_non_async_fn_fails_each_call_with_a_clear_error() -> None:
    def fn(item: int) -> int:
        return item

    report: ConcurrencyReport[Any] = await run_concurrently(fn, 2)  # type: ignore[arg-type]

    assert report.failed == 2
    assert isinstance(report.errors[0], TypeError)
    assert "not an awaitable: pass an async function" in str(report.errors[0])


@pytest.mark.asyncio
async def test_a_call_raising_cancelled_error_itself_is_a_failure() -> None:
    async def fn(item: int) -> int:
        if item == 1:
            raise asyncio.CancelledError("call gave up on its own")
        return item

    report = await run_concurrently(fn, 3)

    assert (report.succeeded, report.failed, report.timed_out) == (2, 1, 0)
    assert isinstance(report.results[1], asyncio.CancelledError)
    assert report.errors == [report.results[1]]
    with pytest.raises(BaseExceptionGroup) as caught:
        report.raise_errors()
    assert not isinstance(caught.value, ExceptionGroup)
    assert caught.value.exceptions == (report.results[1],)
    assert str(caught.value).startswith("1 of 3 concurrent calls failed: 1 × CancelledError")


# --- barrier and concurrency limit ------------------------------------------------------------


@pytest.mark.asyncio
async def test_no_call_starts_before_all_tasks_exist_and_all_overlap() -> None:
    count = 50
    tasks_before = len(asyncio.all_tasks())
    tasks_seen_on_entry: list[int] = []
    all_inside = asyncio.Event()

    async def fn(item: int) -> int:
        tasks_seen_on_entry.append(len(asyncio.all_tasks()))
        if len(tasks_seen_on_entry) == count:
            all_inside.set()
        await all_inside.wait()  # only returns if all 50 bodies are in flight together
        return item

    report = await run_concurrently(fn, count, timeout=HANG_GUARD_S)

    assert report.succeeded == count
    assert tasks_seen_on_entry == [tasks_before + count] * count


@pytest.mark.asyncio
async def test_max_concurrency_limits_calls_in_flight_and_hands_out_slots_in_order() -> None:
    count, limit = 10, 3
    gates = [asyncio.Event() for _ in range(count)]
    started: list[int] = []
    changed = asyncio.Event()
    in_flight = peak = 0

    async def fn(item: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        started.append(item)
        changed.set()
        try:
            await gates[item].wait()
        finally:
            in_flight -= 1
        return item

    run = asyncio.create_task(run_concurrently(fn, count, max_concurrency=limit))
    await wait_until(changed, lambda: len(started) == limit)
    assert started == [0, 1, 2]

    # Release out of order: the freed slot still goes to the next item in input order.
    for expected_next, release in zip(range(limit, count), [2, 0, 4, 1, 3, 6, 5], strict=True):
        gates[release].set()
        await wait_until(changed, lambda n=expected_next: len(started) == n + 1)
        assert started[-1] == expected_next
        assert in_flight == limit
    for gate in gates:
        gate.set()
    report = await asyncio.wait_for(run, HANG_GUARD_S)

    assert started == list(range(count))
    assert peak == limit
    assert report.results == list(range(count))


@pytest.mark.asyncio
async def test_max_concurrency_one_runs_calls_one_after_another() -> None:
    events: list[str] = []

    async def fn(item: int) -> int:
        events.append(f"start {item}")
        await yield_to_loop()  # gives other calls every chance to interleave
        events.append(f"end {item}")
        return item

    await run_concurrently(fn, 3, max_concurrency=1)

    assert events == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]


# --- timeout, cancellation and fatal errors ---------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_reports_blocked_calls_as_timeout_errors_and_cancels_them() -> None:
    never = asyncio.Event()
    cancelled: list[int] = []

    async def fn(item: int) -> int:
        if item % 2:
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(item)
                raise
        return item

    report = await asyncio.wait_for(
        run_concurrently(fn, 6, max_concurrency=2, timeout=0.05), HANG_GUARD_S
    )

    assert other_tasks() == set()
    assert cancelled == [1, 3]  # 4 and 5 never got a slot, so their bodies never ran
    assert report.results[0] == 0 and report.results[2] == 2
    assert (report.succeeded, report.failed, report.timed_out) == (2, 4, 4)
    assert all(type(report.results[index]) is TimeoutError for index in (1, 3, 4, 5))
    assert report.errors == [report.results[index] for index in (1, 3, 4, 5)]
    assert str(report.results[1]) == (
        "call 1 (item 1) still running when run_concurrently's timeout of 0.05 s expired"
    )
    assert str(report.results[4]) == (
        "call 4 (item 4) still waiting for a slot when run_concurrently's timeout of 0.05 s expired"
    )
    assert [entry.split(":")[0] for entry in report.waiting] == [
        "call 1 (item 1)",
        "call 3 (item 3)",
        "call 4 (item 4)",
        "call 5 (item 5)",
    ]
    assert "running for" in report.waiting[0] and "running for" in report.waiting[1]
    assert report.waiting[2] == "call 4 (item 4): waiting for a slot (max_concurrency=2)"
    assert report.latency_ms.count == 4  # items 4 and 5 never started: no latency
    assert "(4 timed out)" in report.summary()


@pytest.mark.asyncio
async def test_timeout_descriptions_truncate_long_item_reprs() -> None:
    never = asyncio.Event()

    async def fn(item: str) -> None:
        await never.wait()

    report = await run_concurrently(fn, ["x" * 10_000], timeout=0.01)

    assert report.timed_out == 1
    assert len(report.waiting[0]) < 200
    assert "..." in report.waiting[0]


@pytest.mark.asyncio
async def test_cancelling_the_caller_cancels_and_awaits_every_call() -> None:
    count, limit = 20, 15
    never = asyncio.Event()
    entered: list[int] = []
    cleaned_up: list[int] = []
    changed = asyncio.Event()
    reports: list[ConcurrencyReport[Any]] = []

    async def fn(item: int) -> None:
        entered.append(item)
        changed.set()
        try:
            await never.wait()
        finally:
            cleaned_up.append(item)

    run = asyncio.create_task(
        run_concurrently(fn, count, max_concurrency=limit, on_report=reports.append)
    )
    await wait_until(changed, lambda: len(entered) == limit)  # 5 more wait for a slot
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert other_tasks() == set()
    assert sorted(cleaned_up) == list(range(limit))
    assert reports == []


@pytest.mark.asyncio
async def test_cancelling_the_caller_before_the_barrier_leaves_nothing_running() -> None:
    async def fn(item: int) -> int:
        raise AssertionError("no call may start")

    run = asyncio.create_task(run_concurrently(fn, 100))
    # Scheduled after the runner's first step, which creates the tasks and waits for them
    # to reach the barrier: the cancellation lands before the barrier opens.
    asyncio.get_running_loop().call_soon(run.cancel)
    with pytest.raises(asyncio.CancelledError):
        await run

    assert other_tasks() == set()


@pytest.mark.asyncio
async def test_keyboard_interrupt_in_a_call_propagates_after_cancelling_the_others() -> None:
    never = asyncio.Event()
    others_entered = asyncio.Event()
    cancelled: list[int] = []

    async def fn(item: int) -> None:
        if item == 0:
            await others_entered.wait()
            raise KeyboardInterrupt
        if item == 4:
            others_entered.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(item)
            raise

    with pytest.raises(KeyboardInterrupt):
        await run_concurrently(fn, 5)

    assert other_tasks() == set()
    assert sorted(cancelled) == [1, 2, 3, 4]


# --- raise_errors, summary and repr -----------------------------------------------------------


@pytest.mark.asyncio
async def test_raise_errors_raises_a_group_of_exactly_the_errors() -> None:
    async def fn(item: int) -> int:
        if item in (1, 4, 7):
            raise ValueError(f"bad {item}")
        if item == 8:
            raise KeyError(item)
        return item

    report = await run_concurrently(fn, 10)

    with pytest.raises(ExceptionGroup) as caught:
        report.raise_errors()
    assert caught.value.exceptions == tuple(report.errors)
    assert caught.value.message == "4 of 10 concurrent calls failed: 3 × ValueError, 1 × KeyError"


@pytest.mark.asyncio
async def test_raise_errors_returns_none_without_errors() -> None:
    async def fn(item: int) -> int:
        return item

    report = await run_concurrently(fn, 3)

    report.raise_errors()  # returns None: nothing to raise


@pytest.mark.asyncio
async def test_str_and_repr_summarise_without_dumping_results(fake_clock: FakeClock) -> None:
    async def fn(item: int) -> int:
        fake_clock.now += 1
        return item

    report = await run_concurrently(fn, 4, max_concurrency=1)

    assert (
        str(report)
        == report.summary()
        == (
            "4 calls: 4 succeeded, 0 failed in 4.000 s (1.0 ops/s); "
            "latency p50=1000.00 ms, p95=1000.00 ms, p99=1000.00 ms, max=1000.00 ms"
        )
    )
    assert repr(report).startswith(
        "ConcurrencyReport(calls=4, succeeded=4, failed=0, timed_out=0, elapsed_s=4.000000, "
        "throughput=1.0, latency_ms=LatencyStats("
    )
    assert "results" not in repr(report)


# --- latency on a fake clock ------------------------------------------------------------------


def test_nearest_rank_percentiles() -> None:
    stats = LatencyStats.from_samples([50.0, 15.0, 40.0, 20.0, 35.0])

    assert stats == LatencyStats(p50=35.0, p95=50.0, p99=50.0, max=50.0, mean=32.0, count=5)


def test_percentiles_of_one_to_a_hundred() -> None:
    stats = LatencyStats.from_samples(float(value) for value in range(100, 0, -1))

    assert (stats.p50, stats.p95, stats.p99, stats.max) == (50.0, 95.0, 99.0, 100.0)
    assert (stats.mean, stats.count) == (50.5, 100)


def test_no_samples_give_zero_stats() -> None:
    assert LatencyStats.from_samples([]) == LatencyStats(0.0, 0.0, 0.0, 0.0, 0.0, 0)


@pytest.mark.asyncio
async def test_latency_and_throughput_on_a_fake_clock(fake_clock: FakeClock) -> None:
    # One at a time, call i takes durations[i] seconds of fake time.
    durations = [(37 * index) % 100 + 1 for index in range(100)]  # 1..100 shuffled

    async def fn(item: int) -> int:
        fake_clock.now += durations[item]
        if item % 10 == 0:
            raise RuntimeError("failed calls count towards latency too")
        return item

    report = await run_concurrently(fn, 100, max_concurrency=1)

    assert sorted(durations) == list(range(1, 101))
    assert report.latency_ms == LatencyStats(
        p50=50_000.0, p95=95_000.0, p99=99_000.0, max=100_000.0, mean=50_500.0, count=100
    )
    assert report.elapsed_s == 5050.0
    assert report.throughput == 90 / 5050.0


@pytest.mark.asyncio
async def test_latency_runs_from_each_calls_start_to_its_end(fake_clock: FakeClock) -> None:
    # All calls start at fake time 0; they finish one after another in input order.
    durations = [3.0, 1.0, 2.0, 4.0]
    gates = [asyncio.Event() for _ in durations]
    entered = 0

    async def fn(item: int) -> int:
        nonlocal entered
        entered += 1
        if entered == len(durations):
            gates[0].set()  # the first call goes on once every call has started
        await gates[item].wait()
        fake_clock.now += durations[item]
        if item + 1 < len(gates):
            gates[item + 1].set()  # runs only after this call's end was measured
        return item

    report = await run_concurrently(fn, len(durations), timeout=HANG_GUARD_S)

    # Ends at 3, 4, 6, 10 s -> latencies 3000, 4000, 6000, 10000 ms.
    assert report.latency_ms == LatencyStats(
        p50=4000.0, p95=10_000.0, p99=10_000.0, max=10_000.0, mean=5750.0, count=4
    )
    assert report.elapsed_s == 10.0
    assert report.throughput == 0.4


# --- per-call timings and outcomes for timelines ----------------------------------------------


@pytest.mark.asyncio
async def test_timings_are_offsets_from_the_barrier_release_in_input_order(
    fake_clock: FakeClock,
) -> None:
    # One at a time on a clock that reads 100 s at the release: call i takes durations[i] s.
    fake_clock.now = 100.0
    durations = [2.0, 0.5, 1.0, 4.0]

    async def fn(item: int) -> int:
        fake_clock.now += durations[item]
        if item == 2:
            raise ValueError("a failure still has a start and an end")
        return item

    report = await run_concurrently(fn, len(durations), max_concurrency=1)

    assert report.timings == [(0.0, 2.0), (2.0, 2.5), (2.5, 3.5), (3.5, 7.5)]
    assert report.outcomes == ["ok", "ok", "error", "ok"]
    assert report.elapsed_s == 7.5


@pytest.mark.asyncio
async def test_timings_of_overlapping_calls_follow_their_own_start_and_end(
    fake_clock: FakeClock,
) -> None:
    # Every call starts at fake time 0; each ends after the one before it advanced the clock.
    durations = [3.0, 1.0, 2.0]
    gates = [asyncio.Event() for _ in durations]
    entered = 0

    async def fn(item: int) -> int:
        nonlocal entered
        entered += 1
        if entered == len(durations):
            gates[0].set()
        await gates[item].wait()
        fake_clock.now += durations[item]
        if item + 1 < len(gates):
            gates[item + 1].set()
        return item

    report = await run_concurrently(fn, len(durations), timeout=HANG_GUARD_S)

    assert report.timings == [(0.0, 3.0), (0.0, 4.0), (0.0, 6.0)]
    assert report.outcomes == ["ok", "ok", "ok"]


@pytest.mark.asyncio
async def test_timed_out_calls_end_when_stopped_and_unstarted_calls_have_no_timing(
    fake_clock: FakeClock,
) -> None:
    # Two slots: even items advance the clock by 1 s and return, odd items never finish.
    never = asyncio.Event()

    async def fn(item: int) -> int:
        if item % 2:
            await never.wait()
        fake_clock.now += 1
        return item

    report = await asyncio.wait_for(
        run_concurrently(fn, 6, max_concurrency=2, timeout=0.05), HANG_GUARD_S
    )

    assert report.outcomes == ["ok", "timeout", "ok", "timeout", "timeout", "timeout"]
    # 0 runs 0→1; 1 starts at 1; 2 runs 1→2; 3 starts at 2; 1 and 3 are stopped at 2;
    # 4 and 5 were still waiting for a slot.
    assert report.timings == [(0.0, 1.0), (1.0, 2.0), (1.0, 2.0), (2.0, 2.0), None, None]


@pytest.mark.asyncio
async def test_a_timeout_error_raised_by_a_call_is_an_error_not_a_timeout() -> None:
    async def fn(item: int) -> int:
        if item == 0:
            raise TimeoutError("the call's own deadline")
        if item == 1:
            raise asyncio.CancelledError("the call gave up on its own")
        return item

    report = await run_concurrently(fn, 3)

    assert report.outcomes == ["error", "error", "ok"]
    assert report.timed_out == 0
    assert all(timing is not None for timing in report.timings)


@pytest.mark.asyncio
async def test_no_items_give_no_timings() -> None:
    report = await run_concurrently(_noop, [])

    assert (report.timings, report.outcomes) == ([], [])


@pytest.mark.asyncio
async def test_ten_thousand_calls_each_have_a_timing_and_an_outcome() -> None:
    async def fn(item: int) -> int:
        if item % 1000 == 0:
            raise ValueError(item)
        return item

    report = await run_concurrently(fn, 10_000, max_concurrency=100)

    assert len(report.timings) == len(report.outcomes) == 10_000
    assert report.outcomes.count("error") == 10
    assert report.outcomes[1000] == "error" and report.outcomes[1001] == "ok"
    for timing in report.timings:
        assert timing is not None
        start, end = timing
        assert 0.0 <= start <= end <= report.elapsed_s


# --- scale and reporting hook -----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("max_concurrency", [None, 100])
async def test_ten_thousand_trivial_calls(max_concurrency: int | None) -> None:
    async def fn(item: int) -> int:
        return item * 2

    report = await run_concurrently(fn, 10_000, max_concurrency=max_concurrency)

    assert report.succeeded == 10_000
    assert report.failed == 0
    assert report.results[9_999] == 19_998
    assert report.latency_ms.count == 10_000
    assert other_tasks() == set()


@pytest.mark.asyncio
async def test_on_report_is_called_once_with_the_report() -> None:
    reports: list[ConcurrencyReport[Any]] = []

    async def fn(item: int) -> int:
        return item

    report = await run_concurrently(fn, 3, on_report=reports.append)

    assert len(reports) == 1
    assert reports[0] is report


# --- argument validation ----------------------------------------------------------------------


async def _noop(item: object) -> None:
    return None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"fn": 42},
            TypeError,
            (
                "run_concurrently() needs fn to be an async function taking one item, "
                "e.g. `async def fn(item): ...`; got 42 (int)"
            ),
        ),
        (
            {"items": -1},
            ValueError,
            (
                "run_concurrently() needs items to be a non-negative int (the number of calls) "
                "or an iterable; got -1"
            ),
        ),
        (
            {"items": None},
            TypeError,
            (
                "run_concurrently() needs items to be an iterable or an int (the number of calls); "
                "got None (NoneType)"
            ),
        ),
        (
            {"items": True},
            TypeError,
            (
                "run_concurrently() needs items to be an iterable or an int (the number of calls), "
                "not a bool; got True"
            ),
        ),
        (
            {"max_concurrency": 0},
            ValueError,
            (
                "run_concurrently() needs max_concurrency to be a positive int or None (no limit); "
                "got 0"
            ),
        ),
        (
            {"max_concurrency": 2.5},
            TypeError,
            (
                "run_concurrently() needs max_concurrency to be a positive int or None (no limit); "
                "got 2.5 (float)"
            ),
        ),
        (
            {"timeout": 0},
            ValueError,
            (
                "run_concurrently() needs timeout to be a positive number of seconds or None "
                "(no limit); got 0"
            ),
        ),
        (
            {"timeout": "5"},
            TypeError,
            (
                "run_concurrently() needs timeout to be a positive number of seconds or None "
                "(no limit); got '5' (str)"
            ),
        ),
        (
            {"on_report": "print"},
            TypeError,
            (
                "run_concurrently() needs on_report to be a callable taking the report, or None; "
                "got 'print' (str)"
            ),
        ),
    ],
)
async def test_bad_arguments_are_rejected_with_what_to_pass(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments: dict[str, Any] = {"fn": _noop, "items": 3} | kwargs
    fn, items = arguments.pop("fn"), arguments.pop("items")

    with pytest.raises(error) as caught:
        await run_concurrently(fn, items, **arguments)
    assert str(caught.value) == message


@pytest.mark.asyncio
async def test_timeout_none_and_infinity_mean_no_limit() -> None:
    report = await run_concurrently(_noop, 2, timeout=None)
    assert report.succeeded == 2
    report = await run_concurrently(_noop, 2, timeout=float("inf"))
    assert report.succeeded == 2


def test_importing_the_runner_does_not_import_pytest() -> None:
    # subprocess: needs an interpreter in which pytest was never imported
    code = "import sys, pytest_threadcreator.concurrency; print('pytest' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"
