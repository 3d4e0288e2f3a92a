"""Types of fixture values that have no class of their own, for annotating test arguments.

``async def test_x(run_concurrently: RunConcurrently) -> None`` then type-checks what the test
passes and what it gets back. Pytest-free.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar, overload

from .concurrency import ConcurrencyReport

__all__ = ["RunConcurrently"]

T = TypeVar("T")


class RunConcurrently(Protocol):
    """The ``run_concurrently`` fixture: :func:`~pytest_threadcreator.run_concurrently` whose
    reports go to the run's summary and report, and whose timeouts list the lock waits of the
    test's database."""

    @overload
    async def __call__(
        self,
        fn: Callable[[int], Awaitable[T]],
        items: int,
        *,
        max_concurrency: int | None = None,
        timeout: float | None = 30.0,
    ) -> ConcurrencyReport[T]: ...

    @overload
    async def __call__(
        self,
        fn: Callable[[Any], Awaitable[T]],
        items: Iterable[Any],
        *,
        max_concurrency: int | None = None,
        timeout: float | None = 30.0,
    ) -> ConcurrencyReport[T]: ...
