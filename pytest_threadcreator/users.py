"""Making valid user execution contexts with unique users, for tests."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from .context import UserExecutionContext

__all__ = ["UserContextMaker"]


class UserContextMaker:
    """``make_user_context(user_id=None, **fields)``; ``.many(n)`` gives n distinct users."""

    def __init__(self, prefix: str = "user") -> None:
        self._prefix = prefix
        self._run = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        self.made: list[UserExecutionContext] = []

    def unique_user_id(self) -> str:
        """A user id no other context of this run has."""
        return f"{self._prefix}_{self._run}_{next(self._counter):05d}"

    def __call__(self, user_id: str | None = None, **fields: Any) -> UserExecutionContext:
        """A valid context; ``user_id`` defaults to a unique one, other fields pass through."""
        context = UserExecutionContext(
            user_id=user_id if user_id is not None else self.unique_user_id(), **fields
        )
        self.made.append(context)
        return context

    def many(self, n: int, **fields: Any) -> list[UserExecutionContext]:
        """``n`` contexts, each with its own unique user."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"many(n) needs an int n >= 0, got {n!r}")
        return [self(**fields) for _ in range(n)]
