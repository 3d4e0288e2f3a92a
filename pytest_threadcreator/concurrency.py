"""Run one async function over many items at once and report how it went.

The logic behind the ``run_concurrently`` fixture. This module never imports pytest.

All calls start together behind a barrier, optionally limited to ``max_concurrency`` at a time
(slots are handed out in input order), and the whole run is bounded by ``timeout``. The result
is a :class:`ConcurrencyReport` with every call's value or exception in input order, counts,
throughput, latency percentiles and each call's start and end for a timeline.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import reprlib
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast, overload

from . import shake

if sys.version_info < (3, 11):  # pragma: no cover - exercised on Python 3.10 only
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

__all__ = ["ConcurrencyReport", "LatencyStats", "Outcome", "run_concurrently"]

T = TypeVar("T")

#: How one call ended: it returned, it raised, or the run's timeout stopped it (or it never
#: got a slot before the timeout).
Outcome = Literal["ok", "error", "timeout"]

# Latency and elapsed time are read from this clock; tests replace it with a fake one.
# The timeout itself always runs on the event loop's clock.
_clock: Callable[[], float] = time.perf_counter

_PERCENTILES = (50, 95, 99)

_item_repr = reprlib.Repr()
_item_repr.maxstring = 60
_item_repr.maxother = 60


async def _diagnosis(diagnose: Callable[[], Awaitable[list[str]]]) -> list[str]:
    """``diagnose()``'s lines; a diagnosis that fails or hangs says so instead."""
    try:
        return list(await asyncio.wait_for(diagnose(), timeout=5))
    except Exception as exc:
        return [f"(diagnosis failed: {type(exc).__name__}: {exc})"]


def _describe_item(item: object) -> str:
    """Return a short repr of ``item`` that never raises."""
    try:
        return _item_repr.repr(item)
    except Exception:
        return object.__repr__(item)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds, computed with the nearest-rank method.

    The samples are every call that started (got its slot), whether it succeeded or failed; a
    call cancelled by the timeout counts from its start until it stopped. Calls that were still
    waiting for a slot when the timeout expired have no latency. With no samples every value is
    ``0.0`` and ``count`` is ``0``.
    """

    p50: float
    p95: float
    p99: float
    max: float
    mean: float
    count: int

    @classmethod
    def from_samples(cls, samples_ms: Iterable[float]) -> LatencyStats:
        """Compute the stats of ``samples_ms`` (nearest rank: the smallest sample >= p% of all)."""
        ordered = sorted(samples_ms)
        count = len(ordered)
        if count == 0:
            return cls(p50=0.0, p95=0.0, p99=0.0, max=0.0, mean=0.0, count=0)

        def nearest_rank(percent: int) -> float:
            # ceil(percent / 100 * count) in integers, so 95 % of 100 is rank 95, not 96.
            rank = max(1, -(-percent * count // 100))
            return float(ordered[rank - 1])

        p50, p95, p99 = (nearest_rank(percent) for percent in _PERCENTILES)
        return cls(
            p50=p50,
            p95=p95,
            p99=p99,
            max=float(ordered[-1]),
            mean=math.fsum(ordered) / count,
            count=count,
        )

    def __str__(self) -> str:
        return (
            f"p50={self.p50:.2f} ms, p95={self.p95:.2f} ms, p99={self.p99:.2f} ms, "
            f"max={self.max:.2f} ms"
        )


@dataclass(frozen=True)
class ConcurrencyReport(Generic[T]):
    """What :func:`run_concurrently` observed.

    ``results`` holds each call's value or exception in input order; ``errors`` the exceptions
    alone, also in input order. ``failed`` includes the ``timed_out`` calls, which have a
    :class:`TimeoutError` as their result. ``waiting`` describes the calls that were still
    pending when the timeout expired. ``elapsed_s`` runs from the barrier's release to the end of
    the last call; ``throughput`` is ``succeeded / elapsed_s`` (``0.0`` when nothing elapsed).

    For timelines, ``timings`` holds each call's ``(start, end)`` in seconds after the barrier's
    release, in input order: the start is when the call got its slot, the end when it returned,
    raised or was stopped by the timeout; ``None`` for a call that never started (it was still
    waiting for a slot when the timeout expired). ``outcomes`` says how each call ended, also in
    input order: ``"ok"``, ``"error"`` or ``"timeout"``. Both are empty for a report built
    without them.
    """

    results: list[T | BaseException]
    succeeded: int
    failed: int
    errors: list[BaseException]
    elapsed_s: float
    throughput: float
    latency_ms: LatencyStats
    timed_out: int = 0
    waiting: list[str] = field(default_factory=list)
    timings: list[tuple[float, float] | None] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def values(self) -> list[T]:
        """The results of the calls that succeeded, in input order."""
        error_ids = {id(error) for error in self.errors}
        return [cast(T, result) for result in self.results if id(result) not in error_ids]

    def raise_errors(self) -> None:
        """Raise an ``ExceptionGroup`` of all errors (in input order); return None if there are none.

        A ``BaseExceptionGroup`` is raised instead when an error is not an ``Exception``
        (a ``CancelledError`` raised by a call itself, for instance).
        """
        __tracebackhide__ = True
        if not self.errors:
            return
        counts = Counter(type(error).__name__ for error in self.errors)
        kinds = ", ".join(f"{count} × {name}" for name, count in counts.most_common())
        message = f"{len(self.errors)} of {len(self.results)} concurrent calls failed: {kinds}"
        exceptions = [error for error in self.errors if isinstance(error, Exception)]
        if len(exceptions) == len(self.errors):
            raise ExceptionGroup(message, exceptions)
        raise BaseExceptionGroup(message, list(self.errors))

    def summary(self) -> str:
        """One line with the counts, elapsed time, throughput and latency percentiles."""
        timed_out = f" ({self.timed_out} timed out)" if self.timed_out else ""
        return (
            f"{len(self.results)} calls: {self.succeeded} succeeded, {self.failed} failed"
            f"{timed_out} in {self.elapsed_s:.3f} s ({self.throughput:.1f} ops/s); "
            f"latency {self.latency_ms}"
        )

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(calls={len(self.results)}, succeeded={self.succeeded}, "
            f"failed={self.failed}, timed_out={self.timed_out}, "
            f"elapsed_s={self.elapsed_s:.6f}, throughput={self.throughput:.1f}, "
            f"latency_ms={self.latency_ms!r})"
        )


class _FifoSlots:
    """A semaphore that hands free slots to its waiters strictly in arrival order.

    ``asyncio.Semaphore`` is not guaranteed FIFO on every supported Python version. Cancelled
    waiters stay in the queue and are skipped on release, so a mass cancellation is O(n).
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just before the cancellation: pass it on.
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves straight to the next waiter
                return
        self._free += 1


async def _call_one(fn: Callable[[Any], Awaitable[Any]], item: Any) -> tuple[bool, Any]:
    """Await ``fn(item)``; return ``(True, value)`` or ``(False, exception)``.

    Kept apart from the runner so a stored exception's traceback references only this small
    frame (``fn`` and ``item``), not the whole run.
    """
    try:
        awaitable = fn(item)
        if not inspect.isawaitable(awaitable):
            raise TypeError(
                f"run_concurrently() called fn({_describe_item(item)}) and got "
                f"{_describe_item(awaitable)} ({type(awaitable).__name__}), not an awaitable: "
                "pass an async function, e.g. `async def fn(item): ...`"
            )
        return True, await awaitable
    except BaseException as exc:
        return False, exc


class _Pending:
    """Marks a call that has not finished yet."""

    def __repr__(self) -> str:
        return "<pending>"


_PENDING: Any = _Pending()


class _Run(Generic[T]):
    """The state of one ``run_concurrently`` call."""

    def __init__(
        self,
        fn: Callable[[Any], Awaitable[T]],
        items: list[Any],
        max_concurrency: int | None,
        timeout: float | None,
        diagnose: Callable[[], Awaitable[list[str]]] | None = None,
    ) -> None:
        self._fn = fn
        self._diagnose = diagnose
        self._items = items
        self._max_concurrency = max_concurrency
        self._timeout = timeout
        self._clock = _clock
        count = len(items)
        self._results: list[Any] = [_PENDING] * count
        self._failed = [False] * count
        self._timed_out = [False] * count
        self._starts: list[float | None] = [None] * count
        self._ends: list[float | None] = [None] * count
        self._slots = _FifoSlots(max_concurrency) if max_concurrency is not None else None
        self._shaker = shake.active()
        self._shake_run = self._shaker.next_run() if self._shaker is not None else 0
        self._barrier = asyncio.Event()
        self._arrived = 0
        self._remaining = count
        self._released_at = 0.0
        self._shake_anchor = 0.0
        self._last_end: float | None = None
        self._stopping = False
        self._fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        self._all_waiting: asyncio.Future[None] = loop.create_future()
        self._finished: asyncio.Future[None] = loop.create_future()

    def _signal_finished(self) -> None:
        if not self._finished.done():
            self._finished.set_result(None)

    async def _call(self, index: int, item: Any) -> None:
        try:
            self._arrived += 1
            if self._arrived == len(self._items) and not self._all_waiting.done():
                self._all_waiting.set_result(None)
            await self._barrier.wait()
            shaker = self._shaker
            if shaker is not None:  # shake mode: a seeded start offset for this call
                key = f"run{self._shake_run}/call{index}"
                shake.call_key.set(key)
                at = self._shake_anchor + shaker.start_delay(self._shake_run, index)
                if at > shaker.clock():
                    await asyncio.sleep(at - shaker.clock())
            if self._slots is not None:
                await self._slots.acquire()
            if shaker is not None:  # its statements' timetable starts once it runs
                shaker.begin_call(key, max(at, shaker.clock()))
            try:
                self._starts[index] = self._clock()
                ok, outcome = await _call_one(self._fn, item)
                end = self._ends[index] = self._clock()
                if self._last_end is None or end > self._last_end:
                    self._last_end = end
            finally:
                if self._slots is not None:
                    self._slots.release()
            if ok:
                if self._results[index] is _PENDING:
                    self._results[index] = outcome
            elif isinstance(outcome, asyncio.CancelledError):
                if self._stopping:
                    raise outcome  # our own cancellation (timeout or cancelled caller)
                self._record_failure(index, outcome)
            elif isinstance(outcome, Exception):
                self._record_failure(index, outcome)
            else:  # KeyboardInterrupt, SystemExit, ...: the runner re-raises it
                if self._fatal is None:
                    self._fatal = outcome
                self._signal_finished()
        finally:
            self._remaining -= 1
            if self._remaining == 0:
                self._signal_finished()

    def _record_failure(self, index: int, error: BaseException) -> None:
        if self._results[index] is _PENDING:
            self._results[index] = error
            self._failed[index] = True

    async def _cancel_and_wait(self) -> None:
        """Cancel every unfinished call and wait until all of them stopped."""
        self._stopping = True
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            task.cancel()
        cancelled: asyncio.CancelledError | None = None
        while pending:
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError as exc:
                # Cancelled again while cleaning up: finish the cleanup, then give in.
                cancelled = exc
            pending = [task for task in pending if not task.done()]
        if cancelled is not None:
            raise cancelled

    def _expire(self) -> list[str]:
        """Turn every unfinished call into a TimeoutError result; return their descriptions."""
        now = self._clock()
        limit = f"run_concurrently's timeout of {self._timeout} s expired"
        waiting: list[str] = []
        for index, result in enumerate(self._results):
            if result is not _PENDING:
                continue
            item = _describe_item(self._items[index])
            start = self._starts[index]
            if start is not None:
                state = f"running for {(now - start) * 1000:.0f} ms"
                message = f"call {index} (item {item}) still running when {limit}"
            else:
                state = f"waiting for a slot (max_concurrency={self._max_concurrency})"
                message = f"call {index} (item {item}) still waiting for a slot when {limit}"
            waiting.append(f"call {index} (item {item}): {state}")
            self._results[index] = TimeoutError(message)
            self._failed[index] = True
            self._timed_out[index] = True
        return waiting

    async def run(self) -> ConcurrencyReport[T]:
        loop = asyncio.get_running_loop()
        deadline = None if self._timeout is None else loop.time() + self._timeout
        if not self._items:
            return self._report([], timed_out=0)
        self._tasks = [
            loop.create_task(self._call(index, item), name=f"run_concurrently call {index}")
            for index, item in enumerate(self._items)
        ]
        timer: asyncio.TimerHandle | None = None
        expired = False

        def on_deadline() -> None:
            nonlocal expired
            expired = True
            self._signal_finished()

        try:
            await self._all_waiting  # every task exists and waits at the barrier
            self._barrier.set()
            # Read after set(): waking 10,000 waiters takes milliseconds that belong to the
            # runner, not to the calls. No call runs before this task awaits.
            self._released_at = self._clock()
            if self._shaker is not None:  # where each call's shaken schedule starts
                self._shake_anchor = self._shaker.clock()
            if deadline is not None:
                timer = loop.call_at(deadline, on_deadline)
            await self._finished
        except BaseException:
            await self._cancel_and_wait()
            raise
        finally:
            if timer is not None:
                timer.cancel()

        waiting: list[str] = []
        diagnosis: list[str] = []
        if self._fatal is None and expired and self._remaining:
            waiting = self._expire()
            if self._diagnose is not None:  # while the calls still wait: what do they wait on?
                diagnosis = await _diagnosis(self._diagnose)
        if self._remaining:
            await self._cancel_and_wait()
        if self._fatal is not None:
            raise self._fatal
        return self._report(waiting + diagnosis, timed_out=len(waiting))

    def _report(self, waiting: list[str], *, timed_out: int) -> ConcurrencyReport[T]:
        errors = [
            result for result, failed in zip(self._results, self._failed, strict=True) if failed
        ]
        succeeded = len(self._results) - len(errors)
        end = self._last_end if self._last_end is not None else self._released_at
        elapsed = max(0.0, end - self._released_at)
        samples = [
            (end - start) * 1000
            for start, end in zip(self._starts, self._ends, strict=True)
            if start is not None and end is not None
        ]
        released = self._released_at
        timings: list[tuple[float, float] | None] = [
            (start - released, end - released) if start is not None and end is not None else None
            for start, end in zip(self._starts, self._ends, strict=True)
        ]
        outcomes: list[Outcome] = [
            "timeout" if timed_out_call else "error" if failed else "ok"
            for failed, timed_out_call in zip(self._failed, self._timed_out, strict=True)
        ]
        return ConcurrencyReport(
            results=list(self._results),
            succeeded=succeeded,
            failed=len(errors),
            errors=errors,
            elapsed_s=elapsed,
            throughput=succeeded / elapsed if elapsed > 0 else 0.0,
            latency_ms=LatencyStats.from_samples(samples),
            timed_out=timed_out,
            waiting=waiting,
            timings=timings,
            outcomes=outcomes,
        )


def _validate(
    fn: object,
    items: object,
    max_concurrency: object,
    timeout: object,
    on_report: object,
) -> tuple[list[Any], float | None]:
    """Check the arguments before anything runs; return the items as a list and the timeout."""
    if not callable(fn):
        raise TypeError(
            "run_concurrently() needs fn to be an async function taking one item, "
            f"e.g. `async def fn(item): ...`; got {_describe_item(fn)} ({type(fn).__name__})"
        )
    if isinstance(items, bool):
        raise TypeError(
            "run_concurrently() needs items to be an iterable or an int (the number of calls), "
            f"not a bool; got {items!r}"
        )
    if isinstance(items, int):
        if items < 0:
            raise ValueError(
                "run_concurrently() needs items to be a non-negative int (the number of calls) "
                f"or an iterable; got {items}"
            )
        item_list: list[Any] = list(range(items))
    else:
        try:
            iterator = iter(items)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(
                "run_concurrently() needs items to be an iterable or an int (the number of "
                f"calls); got {_describe_item(items)} ({type(items).__name__})"
            ) from None
        item_list = list(iterator)
    if max_concurrency is not None:
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int):
            raise TypeError(
                "run_concurrently() needs max_concurrency to be a positive int or None "
                f"(no limit); got {_describe_item(max_concurrency)} "
                f"({type(max_concurrency).__name__})"
            )
        if max_concurrency < 1:
            raise ValueError(
                "run_concurrently() needs max_concurrency to be a positive int or None "
                f"(no limit); got {max_concurrency}"
            )
    seconds: float | None = None
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(
                "run_concurrently() needs timeout to be a positive number of seconds or None "
                f"(no limit); got {_describe_item(timeout)} ({type(timeout).__name__})"
            )
        if math.isnan(timeout) or timeout <= 0:
            raise ValueError(
                "run_concurrently() needs timeout to be a positive number of seconds or None "
                f"(no limit); got {timeout}"
            )
        seconds = None if math.isinf(timeout) else float(timeout)
    if on_report is not None and not callable(on_report):
        raise TypeError(
            "run_concurrently() needs on_report to be a callable taking the report, or None; "
            f"got {_describe_item(on_report)} ({type(on_report).__name__})"
        )
    return item_list, seconds


@overload
async def run_concurrently(
    fn: Callable[[int], Awaitable[T]],
    items: int,
    *,
    max_concurrency: int | None = None,
    timeout: float | None = 30.0,
    on_report: Callable[[ConcurrencyReport[Any]], None] | None = None,
    diagnose: Callable[[], Awaitable[list[str]]] | None = None,
) -> ConcurrencyReport[T]: ...


@overload
async def run_concurrently(
    fn: Callable[[Any], Awaitable[T]],
    items: Iterable[Any],
    *,
    max_concurrency: int | None = None,
    timeout: float | None = 30.0,
    on_report: Callable[[ConcurrencyReport[Any]], None] | None = None,
    diagnose: Callable[[], Awaitable[list[str]]] | None = None,
) -> ConcurrencyReport[T]: ...


async def run_concurrently(
    fn: Callable[[Any], Awaitable[T]],
    items: Iterable[Any] | int,
    *,
    max_concurrency: int | None = None,
    timeout: float | None = 30.0,
    on_report: Callable[[ConcurrencyReport[Any]], None] | None = None,
    diagnose: Callable[[], Awaitable[list[str]]] | None = None,
) -> ConcurrencyReport[T]:
    """Await ``fn(item)`` for every item at once and report the outcome of each call.

    ``items`` is an iterable or an int n (the items are then ``0..n-1``). Every call is created
    first and released together by a barrier; with ``max_concurrency`` at most that many run at
    once, and waiting calls get a slot in input order. ``timeout`` (seconds, ``None`` for no
    limit) bounds the whole run: calls still running or waiting for a slot when it expires are
    cancelled and get a :class:`TimeoutError` as their result. An ``Exception`` raised by a call,
    or a ``CancelledError`` it raises itself, becomes that call's result. Any other
    ``BaseException`` (``KeyboardInterrupt``, ``SystemExit``) is re-raised once the other calls
    are cancelled; so is the ``CancelledError`` of a cancelled caller. No call is left running.
    ``on_report``, if given, is called with the finished report before it is returned.
    ``diagnose``, if given, is awaited when the timeout expires, before the late calls are
    cancelled; the lines it returns (say, the database's lock waits) end ``report.waiting``.
    """
    __tracebackhide__ = True
    item_list, seconds = _validate(fn, items, max_concurrency, timeout, on_report)
    report = await _Run(fn, item_list, max_concurrency, seconds, diagnose).run()
    if on_report is not None:
        on_report(report)
    return report
