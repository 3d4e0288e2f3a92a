"""An asyncpg connection that lives on a :class:`BackgroundLoop`, usable from any event loop.

asyncpg binds a connection to the loop that opened it, and pytest-asyncio gives each test a
loop of its own by default, so a connection made for one test cannot serve the next: each test
would pay for a new server session (a process forked on the server) and its close. The
:class:`OnLoop` stand-in keeps one connection on the backend's background loop for the whole run
and forwards every call to it: an awaitable result is awaited there (:meth:`BackgroundLoop.submit`,
so cancellation reaches the statement), and the asyncpg objects it returns (prepared
statements, transactions, cursors) come back wrapped the same way. SQLAlchemy's asyncpg dialect
takes it as its driver connection (``create_async_engine(..., async_creator=…)``);
:func:`held_on` gives the store's :class:`~.base.HeldConnections`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._background import BackgroundLoop
from .base import HeldConnections

__all__ = ["OnLoop", "connect_on", "held_on"]


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _wrapped_types() -> tuple[type, ...]:
    """asyncpg's objects that are tied to their connection's loop (imported on first use)."""
    from asyncpg import cursor, prepared_stmt, transaction  # type: ignore[import-untyped]

    return (
        prepared_stmt.PreparedStatement,
        transaction.Transaction,
        cursor.Cursor,
        cursor.CursorFactory,
    )


class OnLoop:
    """Stands in for an asyncpg object living on ``background``'s loop (see the module
    docstring). Plain attributes and synchronous methods are read and called directly; the
    connection's ``terminate()`` is handed to its loop."""

    __slots__ = ("_background", "_target", "_types")

    def __init__(self, target: Any, background: BackgroundLoop) -> None:
        self._target = target
        self._background = background
        self._types = _wrapped_types()

    def __repr__(self) -> str:
        return f"<OnLoop {self._target!r} on {self._background.name}>"

    @property
    def target(self) -> Any:
        """The asyncpg object itself (use it on the background loop only)."""
        return self._target

    def terminate(self) -> None:
        """Close the connection now, without a word to the server (thread-safe)."""
        if not self._background.closed:
            self._background.loop.call_soon_threadsafe(self._target.terminate)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._later(result)
            return self._wrap(result)

        return call

    async def _later(self, awaitable: Awaitable[Any]) -> Any:
        return self._wrap(await self._background.submit(_awaited(awaitable)))

    def _wrap(self, result: Any) -> Any:
        if isinstance(result, self._types):
            return OnLoop(result, self._background)
        return result


def connect_on(
    background: BackgroundLoop,
    connect: Callable[..., Awaitable[Any]],
    connect_kwargs: Mapping[str, Any],
) -> Callable[[], Awaitable[OnLoop]]:
    """An ``async_creator`` for SQLAlchemy: each call opens a connection on ``background``'s
    loop with ``connect(**connect_kwargs)`` and returns its stand-in."""

    async def creator() -> OnLoop:
        conn = await background.submit(_awaited(connect(**connect_kwargs)))
        return OnLoop(conn, background)

    return creator


def held_on(
    background: BackgroundLoop,
    connect: Callable[..., Awaitable[Any]],
    connect_kwargs: Mapping[str, Any],
) -> HeldConnections:
    """Connections opened by :func:`connect_on`, and a ``close`` that closes them all on their
    loop (or drops them without a word to the server when it cannot)."""
    opened: list[OnLoop] = []
    creator = connect_on(background, connect, connect_kwargs)

    async def open_one() -> OnLoop:
        conn = await creator()
        opened.append(conn)
        return conn

    def close_all() -> None:
        while opened:
            conn = opened.pop()
            if background.closed:
                return  # the loop's own shutdown closed its connections
            if background.in_loop_thread():
                conn.terminate()
                continue
            try:
                background.run(conn.target.close(timeout=2), timeout=5)
            except Exception:  # its database is dropped WITH (FORCE) next
                conn.terminate()

    return HeldConnections(connect=open_one, close=close_all)
