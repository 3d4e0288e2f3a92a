"""The steps a fault can target and what a fault does there; imports only ``errors``.

The stores call :func:`apply_fault` (or its blocking twin on the SQLite writer thread) just before
each step's SQL, inside the real transaction, with a :data:`FaultDecider` — usually
:meth:`pytest_threadcreator.faults.FaultInjector.decide`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Literal

from ..errors import InjectedFault

__all__ = ["STEPS", "FaultAction", "FaultDecider", "apply_fault"]

STEPS: tuple[str, ...] = ("thread_insert", "message_insert", "commit")


@dataclasses.dataclass(frozen=True, slots=True)
class FaultAction:
    """What to do just before a step's SQL: raise, wait, or cancel the call."""

    kind: Literal["fail", "delay", "cancel"]
    step: str
    call: int = 0
    seconds: float = 0.0


#: Called with a step name before that step's SQL; returns the action to take, or None.
FaultDecider = Callable[[str], "FaultAction | None"]


async def apply_fault(decide: FaultDecider | None, step: str) -> None:
    """Do what ``decide`` says just before ``step``'s SQL, inside an open transaction.

    ``fail`` raises InjectedFault, ``delay`` waits, ``cancel`` raises CancelledError; the
    caller's transaction then rolls back. (The SQLite writer thread has a blocking twin.)
    """
    if decide is None:
        return
    action = decide(step)
    if action is None:
        return
    if action.kind == "fail":
        raise InjectedFault(step, action.call)
    if action.kind == "delay":
        await asyncio.sleep(action.seconds)
    elif action.kind == "cancel":
        raise asyncio.CancelledError("cancelled by the fault injector")
