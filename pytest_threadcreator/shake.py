"""Shake mode: seeded, reproducible perturbations of a concurrency test's schedule.

A :class:`Shaker` built from one seed decides, for every decision point, whether to wait and how
long: a start offset for each call of ``run_concurrently`` (which also reorders who gets a slot
first), a pause before ThreadCreator's write, and short pauses inside its transaction before the
message insert and the commit. Each decision is drawn from a random generator keyed by the seed
and by *which* call and step asks — not by the order the asks happen to arrive in — so the same
seed gives the same perturbations every time, and a failing schedule replays.

Delays come from a small set of values, far apart compared with a database round trip (well
under a millisecond here), so that the schedule a seed produces does not hinge on jitter. The
pauses before a call's start and before the statements of the test's engines are kept as a
timetable: each statement waits until the call's start plus the pauses drawn so far, so time
that one statement lost (a new process's first connection, a stall beside another busy xdist
worker) is taken off the next pause instead of pushing the rest of the call later.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .faults.steps import FaultAction, FaultDecider

__all__ = [
    "Shaker",
    "activate",
    "active",
    "call_key",
    "repetition_seeds",
]

#: Pause before each statement of the test's own engines inside a run_concurrently call. Long:
#: it must dominate what a fresh process adds (new connections, first-time compilation) and a
#: stall beside another busy xdist worker, so that a seed's schedule replays in another run
#: (with 10, 30 and 60 ms, an app's race found under -n 2 once replayed in 1 of 5 new
#: processes: 10 ms apart was within such a stall).
STATEMENT_DELAYS = (0.0, 0.0, 0.0, 0.025, 0.075, 0.150)
#: Pause before a call of run_concurrently starts, in seconds (one is drawn per call). As long
#: as the statements' pauses, for the same reason: with a 2 ms offset, whether the later call
#: checked before the first one committed hinged on how warm the process was, and a seed found
#: and confirmed in the run replayed in a new process only about half the time.
START_DELAYS = STATEMENT_DELAYS
#: Pause before ThreadCreator writes (after validation), in seconds.
WRITE_DELAYS = (0.0, 0.0, 0.0, 0.002, 0.010, 0.025)
#: Pause inside the transaction before ``message_insert`` and ``commit``, in seconds.
STEP_DELAYS = (0.0, 0.0, 0.0, 0.0, 0.001, 0.005)

#: Which call of a run_concurrently run the current task is (set inside each call's task).
call_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "threadcreator_call_key", default=None
)


def _runner() -> int:
    """The task running this code, else the thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no event loop in this thread
        task = None
    return id(task) if task is not None else threading.get_ident()


def _draw(seed: int, key: str, choices: tuple[float, ...]) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big")).choice(choices)


@dataclass
class Shaker:
    """The perturbations of one seed. Thread-safe: the SQLite writer thread asks too."""

    seed: int
    #: Every non-zero perturbation drawn, as ``(decision key, seconds)``, in order drawn (a
    #: statement's pause is then shortened by what its call is behind its timetable).
    trace: list[tuple[str, float]] = field(default_factory=list)
    _counters: dict[str, itertools.count[int]] = field(default_factory=dict, repr=False)
    _runs: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: the clock of the calls' timetables
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    #: each run_concurrently call's timetable: when (``clock()``) its next statement is due, and
    #: the task (or thread) that runs the call; tasks it spawns get plain pauses
    _due: dict[str, tuple[float, int]] = field(default_factory=dict, repr=False)

    def _record(self, key: str, seconds: float) -> float:
        if seconds:
            with self._lock:
                self.trace.append((key, seconds))
        return seconds

    def next_run(self) -> int:
        """Number of the next ``run_concurrently`` call in this repetition (0, 1, …)."""
        with self._lock:
            return next(self._runs)

    def start_delay(self, run: int, index: int) -> float:
        """Seconds call ``index`` of run ``run`` waits after the barrier, before its slot."""
        key = f"run{run}/call{index}/start"
        return self._record(key, _draw(self.seed, key, START_DELAYS))

    def begin_call(self, key: str, at: float) -> None:
        """The call ``key``, run by the current task, starts at ``at`` (``clock()``): its
        statements are due at that time plus the pauses drawn before them."""
        with self._lock:
            self._due[key] = (at, _runner())

    def _creation_key(self) -> str:
        base = call_key.get() or "outside"
        with self._lock:
            counter = self._counters.setdefault(base, itertools.count())
            return f"{base}/create{next(counter)}"

    def write_delay(self) -> tuple[str, float]:
        """``(creation key, seconds)``: the pause before a ThreadCreator call writes."""
        key = self._creation_key()
        return key, self._record(f"{key}/before-write", _draw(self.seed, f"{key}/w", WRITE_DELAYS))

    def statement_delay(self) -> float:
        """Seconds to pause before the next statement of the test's engines in this call (0 outside one).

        The pause drawn is keyed by the ``run_concurrently`` call and the statement's ordinal
        within it; the seconds returned are what is left of it on the call's timetable (see
        :meth:`begin_call`).
        """
        base = call_key.get()
        if base is None:
            return 0.0
        with self._lock:
            counter = self._counters.setdefault(base + "#sql", itertools.count())
            key = f"{base}/sql{next(counter)}"
        pause = self._record(key, _draw(self.seed, key, STATEMENT_DELAYS))
        runner = _runner()
        with self._lock:
            timetable = self._due.get(base)
            if timetable is None or timetable[1] != runner:
                return pause
            due = timetable[0] + pause
            self._due[base] = (due, runner)
        return max(0.0, due - self.clock())

    def step_decider(self, creation: str, inner: FaultDecider | None) -> FaultDecider:
        """A fault decider adding in-transaction pauses; ``inner`` (the fault injector) wins."""

        def decide(step: str) -> FaultAction | None:
            if inner is not None:
                action = inner(step)
                if action is not None:
                    return action
            if step == "thread_insert":
                return None  # the pause before the write covers it
            key = f"{creation}/{step}"
            seconds = self._record(key, _draw(self.seed, key, STEP_DELAYS))
            return FaultAction("delay", step, seconds=seconds) if seconds else None

        return decide


_active: Shaker | None = None


def active() -> Shaker | None:
    """The shaker of the repetition running now, or None."""
    return _active


class activate:
    """Make ``shaker`` the active one for the ``with`` block."""

    def __init__(self, shaker: Shaker) -> None:
        self._shaker = shaker

    def __enter__(self) -> Shaker:
        global _active
        _active = self._shaker
        return self._shaker

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = None


def repetition_seeds(nodeid: str, repetitions: int) -> list[int]:
    """Seeds of a test's repetitions: derived from its id, so the same in every run."""
    seeds = []
    for i in range(repetitions):
        digest = hashlib.blake2b(f"{nodeid}#{i}".encode(), digest_size=4).digest()
        seeds.append(int.from_bytes(digest, "big"))
    return seeds
