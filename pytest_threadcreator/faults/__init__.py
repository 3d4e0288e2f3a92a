"""Fault injection: make ThreadCreator fail, stall or be cancelled at a chosen step.

The logic behind the ``fault_injector`` fixture. This module never imports pytest.

A :class:`FaultInjector` holds *rules* armed with :meth:`~FaultInjector.fail`,
:meth:`~FaultInjector.delay` and :meth:`~FaultInjector.cancel`. Its :meth:`~FaultInjector.decide`
is the :data:`~pytest_threadcreator.faults.steps.FaultDecider` the stores call just before each
step's SQL (:data:`~pytest_threadcreator.faults.steps.STEPS`), inside the real transaction::

    injector.fail("message_insert", rate=0.1, seed=1234)   # about one call in ten, reproducibly
    injector.delay("commit", 0.5, times=1)                 # the next call waits 0.5 s before COMMIT
    injector.cancel("thread_insert")                        # every call is cancelled there

Which calls a rule hits:

* neither ``times`` nor ``rate``: every call that reaches the step;
* ``times=n``: the next ``n`` calls that reach the step, then the rule is spent;
* ``rate=p``: each call with probability ``p``, drawn from the rule's own ``random.Random(seed)``;
  the same seed gives the same sequence of decisions (``seed=None`` picks a seed and shows it in
  the rule's repr, so a failing run can be replayed);
* ``times`` and ``rate``: each call with probability ``p``, at most ``n`` hits in all.

Several rules on one step: the **first rule in arming order** whose decision says "hit" fires;
later rules do not fire on that call and keep their ``times``. Every live rate rule draws once
for every call that reaches its step, whether or not an earlier rule fired, so each rule's
decisions depend only on its seed and on how many calls reached the step since it was armed.

:meth:`~FaultInjector.decide` runs on the SQLite writer thread as well as in event-loop code, so
all state is guarded by one lock, held only for a few dictionary and counter updates.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Iterable
from numbers import Real
from typing import Literal

from ..errors import ConfigurationError
from .steps import STEPS, FaultAction

__all__ = ["FaultInjector", "FaultRule"]

FaultKind = Literal["fail", "delay", "cancel"]

_VALID_STEPS = ", ".join(repr(step) for step in STEPS)


class FaultRule:
    """One armed rule; returned by ``fail``/``delay``/``cancel`` so a test can inspect it.

    Read-only for callers: the injector updates ``fired`` and ``remaining`` under its lock.
    """

    __slots__ = (
        "_fired",
        "_kind",
        "_pattern",
        "_rate",
        "_remaining",
        "_rng",
        "_seconds",
        "_seed",
        "_seen",
        "_step",
        "_times",
    )

    def __init__(
        self,
        kind: FaultKind,
        step: str | None,
        *,
        seconds: float,
        times: int | None,
        rate: float | None,
        seed: int | None,
        statement: re.Pattern[str] | None = None,
    ) -> None:
        self._kind: FaultKind = kind
        self._step = step
        self._pattern = statement
        self._seen = 0
        self._seconds = seconds
        self._times = times
        self._rate = rate
        self._seed = seed
        self._rng = random.Random(seed) if rate is not None else None
        self._remaining = times
        self._fired = 0

    @property
    def kind(self) -> FaultKind:
        """``"fail"``, ``"delay"`` or ``"cancel"``."""
        return self._kind

    @property
    def step(self) -> str | None:
        """The step this rule acts at, or None for a ``statement=`` rule."""
        return self._step

    @property
    def statement(self) -> str | None:
        """The regular expression a ``statement=`` rule matches SQL with, or None for a step rule."""
        return self._pattern.pattern if self._pattern is not None else None

    @property
    def seconds(self) -> float:
        """How long a ``delay`` rule waits (0.0 for the other kinds)."""
        return self._seconds

    @property
    def times(self) -> int | None:
        """The most hits this rule makes, or None for no limit."""
        return self._times

    @property
    def rate(self) -> float | None:
        """The probability of a hit per call, or None for every call."""
        return self._rate

    @property
    def seed(self) -> int | None:
        """The seed of this rule's random decisions (picked for you when ``rate`` had no seed)."""
        return self._seed

    @property
    def fired(self) -> int:
        """How many times this rule fired."""
        return self._fired

    @property
    def remaining(self) -> int | None:
        """Hits left before the rule is spent, or None for no limit."""
        return self._remaining

    @property
    def spent(self) -> bool:
        """True once a ``times`` rule made all its hits."""
        return self._remaining == 0

    def _decide(self) -> bool:
        """Whether this call is hit; consumes one random draw for rate rules (lock held)."""
        if self._remaining == 0:
            return False
        return self._rng is None or self._rate is None or self._rng.random() < self._rate

    def _fire(self, call: int, step: str | None = None) -> FaultAction:
        """Record a hit and return the action for the store (lock held)."""
        self._fired += 1
        if self._remaining is not None:
            self._remaining -= 1
        where = step or self._step or "statement"
        return FaultAction(kind=self._kind, step=where, call=call, seconds=self._seconds)

    def __repr__(self) -> str:
        if self._pattern is not None:
            args = [f"statement={self._pattern.pattern!r}"]
        else:
            args = [repr(self._step)]
        if self._kind == "delay":
            args.append(f"{self._seconds:g}")
        if self._times is not None:
            args.append(f"times={self._times}")
        if self._rate is not None:
            args.append(f"rate={self._rate:g}")
            args.append(f"seed={self._seed}")
        state = f"fired {self._fired}" + (", spent" if self.spent else "")
        return f"{self._kind}({', '.join(args)}) [{state}]"


class FaultInjector:
    """Makes ThreadCreator fail, wait or be cancelled just before a step's SQL.

    Arm rules with :meth:`fail`, :meth:`delay` and :meth:`cancel`; hand :meth:`decide` to a
    ThreadCreator (``creator.fault_decider = injector.decide``) or let the ``fault_injector``
    fixture do it. :meth:`hits` and :meth:`fired` count per step; :meth:`clear` disarms every
    rule and keeps the counts; :meth:`reset_counts` zeroes the counts and keeps the rules.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._hits: dict[str, int] = dict.fromkeys(STEPS, 0)
        self._fired: dict[str, int] = dict.fromkeys(STEPS, 0)

    # -- arming ------------------------------------------------------------------------------
    def fail(
        self,
        step: str | None = None,
        *,
        statement: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        seed: int | None = None,
    ) -> FaultRule:
        """Raise :class:`~pytest_threadcreator.errors.InjectedFault` just before ``step``'s SQL.

        ``statement="regex"`` instead of a step: just before each statement of an engine on the
        test's database whose SQL matches (``re.search``, case-insensitive).
        """
        __tracebackhide__ = True
        return self._arm("fail", step, 0.0, times, rate, seed, statement)

    def delay(
        self,
        step: str | None = None,
        seconds: float | None = None,
        *,
        statement: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        seed: int | None = None,
    ) -> FaultRule:
        """Wait ``seconds`` just before ``step``'s SQL (or a matching ``statement=``), inside the transaction."""
        __tracebackhide__ = True
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, Real)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ConfigurationError(
                "delay() seconds must be a finite number >= 0 (how long to wait before the "
                f"step's SQL), got {seconds!r}; e.g. delay('commit', 0.5) or "
                "delay(statement=r'^UPDATE', seconds=0.5)"
            )
        return self._arm("delay", step, float(seconds), times, rate, seed, statement)

    def cancel(
        self,
        step: str | None = None,
        *,
        statement: str | None = None,
        times: int | None = None,
        rate: float | None = None,
        seed: int | None = None,
    ) -> FaultRule:
        """Cancel the call just before ``step``'s SQL (or a matching ``statement=``): it rolls back.

        In async code the task running it is cancelled (CancelledError); a statement of sync
        code raises :class:`~pytest_threadcreator.errors.InjectedFault` instead.
        """
        __tracebackhide__ = True
        return self._arm("cancel", step, 0.0, times, rate, seed, statement)

    def _arm(
        self,
        kind: FaultKind,
        step: str | None,
        seconds: float,
        times: int | None,
        rate: float | None,
        seed: int | None,
        statement: str | None = None,
    ) -> FaultRule:
        __tracebackhide__ = True
        pattern = _check_target(kind, step, statement)
        if times is not None and (
            isinstance(times, bool) or not isinstance(times, int) or times < 1
        ):
            raise ConfigurationError(
                f"{kind}(times=...) must be a positive int (how many calls to hit) or None for "
                f"every call, got {times!r}"
            )
        if rate is not None:
            if (
                isinstance(rate, bool)
                or not isinstance(rate, Real)
                or not math.isfinite(rate)
                or not 0 < rate <= 1
            ):
                raise ConfigurationError(
                    f"{kind}(rate=...) must be a probability with 0 < rate <= 1 (rate=0.1 hits "
                    f"about one call in ten) or None for every call, got {rate!r}"
                )
            rate = float(rate)
            if seed is None:
                seed = random.SystemRandom().randrange(2**32)
        if seed is not None:
            if rate is None:
                raise ConfigurationError(
                    f"{kind}(seed=...) only applies together with rate=...; pass rate=p as well, "
                    "or drop seed"
                )
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ConfigurationError(
                    f"{kind}(seed=...) must be an int (the same seed gives the same decisions), "
                    f"got {seed!r}"
                )
        rule = FaultRule(
            kind, step, seconds=seconds, times=times, rate=rate, seed=seed, statement=pattern
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Disarm every rule. Hit and fired counts are kept (see :meth:`reset_counts`)."""
        with self._lock:
            self._rules = []

    def reset_counts(self) -> None:
        """Zero the hit and fired counts of every step; armed rules stay armed."""
        with self._lock:
            self._hits = dict.fromkeys(STEPS, 0)
            self._fired = dict.fromkeys(STEPS, 0)

    # -- what the stores call ----------------------------------------------------------------
    def decide(self, step: str) -> FaultAction | None:
        """The action for this call at ``step``, or None; counts the hit. Thread-safe."""
        with self._lock:
            call = self._hits.get(step, 0) + 1
            self._hits[step] = call
            chosen: FaultRule | None = None
            for rule in self._rules:
                # Every live rule decides (and draws), so its sequence depends only on its seed.
                if rule._step == step and rule._decide() and chosen is None:
                    chosen = rule
            if chosen is None:
                return None
            self._fired[step] = self._fired.get(step, 0) + 1
            return chosen._fire(call)

    def decide_statement(self, sql: str, step: str | None) -> FaultAction | None:
        """The action for one statement of an engine on the test's database, or None.

        ``step`` is the step the statement maps to (None for any other statement): step rules
        act on it as on the plugin's own steps and it counts as a hit; ``statement=`` rules act
        on every statement whose SQL they match. Thread-safe.
        """
        with self._lock:
            call = 0
            if step is not None:
                call = self._hits.get(step, 0) + 1
                self._hits[step] = call
            chosen: FaultRule | None = None
            for rule in self._rules:
                pattern = rule._pattern
                if pattern is None:
                    if step is None or rule._step != step:
                        continue
                elif not pattern.search(sql):
                    continue
                else:
                    rule._seen += 1
                if rule._decide() and chosen is None:
                    chosen = rule
            if chosen is None:
                return None
            if step is not None:
                self._fired[step] = self._fired.get(step, 0) + 1
            if chosen._pattern is not None:
                call = chosen._seen
            return chosen._fire(call, step)

    # -- inspection --------------------------------------------------------------------------
    def hits(self, step: str) -> int:
        """How many calls reached ``step``, fault or not (a retried attempt reaches it again)."""
        __tracebackhide__ = True
        _check_step("hits", step)
        with self._lock:
            return self._hits.get(step, 0)

    def fired(self, step: str) -> int:
        """How many faults fired at ``step`` (every kind)."""
        __tracebackhide__ = True
        _check_step("fired", step)
        with self._lock:
            return self._fired.get(step, 0)

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The armed rules in arming order (spent ``times`` rules included until :meth:`clear`)."""
        with self._lock:
            return tuple(self._rules)

    def __repr__(self) -> str:
        with self._lock:
            rules = list(self._rules)
            hits = dict(self._hits)
        armed = "rules: " + "; ".join(map(repr, rules)) if rules else "no rules armed"
        return f"<FaultInjector {armed}; hits {_counts(hits.items())}>"


def _check_target(kind: str, step: object, statement: object) -> re.Pattern[str] | None:
    """The compiled ``statement=`` pattern, or None for a step rule; refuse anything else."""
    __tracebackhide__ = True
    if statement is None:
        if step is None:
            raise ConfigurationError(
                f"{kind}() needs a step ({_VALID_STEPS}) or statement='regex' (matched against "
                "the SQL of statements of engines on the test's database)"
            )
        _check_step(kind, step)
        return None
    if step is not None:
        raise ConfigurationError(
            f"{kind}() got both step {step!r} and statement={statement!r}; pass one of them"
        )
    if not isinstance(statement, str) or not statement:
        raise ConfigurationError(
            f"{kind}(statement=...) must be a non-empty regular expression string, got {statement!r}"
        )
    try:
        return re.compile(statement, re.IGNORECASE)
    except re.error as exc:
        raise ConfigurationError(
            f"{kind}(statement={statement!r}) is not a valid regular expression: {exc}"
        ) from None


def _check_step(what: str, step: object) -> None:
    __tracebackhide__ = True
    if not isinstance(step, str) or step not in STEPS:
        raise ConfigurationError(f"{what}() got unknown step {step!r}; pass one of {_VALID_STEPS}")


def _counts(items: Iterable[tuple[str, int]]) -> str:
    return " ".join(f"{step}={count}" for step, count in items)
