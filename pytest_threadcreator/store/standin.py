"""A driver connection that lives on a :class:`BackgroundLoop`, usable from any event loop.

asyncpg binds a connection to the loop that opened it, and pytest-asyncio gives each test a
loop of its own by default, so a connection made for one test cannot serve the next: each test
would pay for a new server session (a process forked on the server) and its close. The
:class:`OnLoop` stand-in keeps one connection on the backend's background loop for the whole run
and forwards every call to it: an awaitable result is awaited there
(:meth:`BackgroundLoop.submit`, so cancellation reaches the statement), the driver objects it
returns (prepared statements, transactions, cursors) come back wrapped the same way, and the
synchronous calls that touch the socket (a forced close) are handed to the loop's thread.
SQLAlchemy's async dialects take it as their driver connection
(``create_async_engine(..., async_creator=…)``); :func:`held_on` gives the store's
:class:`~.base.HeldConnections`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .._background import BackgroundLoop, BackgroundLoopError
from .base import HeldConnections

__all__ = ["Driver", "OnLoop", "held_on", "run_there"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Driver:
    """What the stand-in needs to know of a driver."""

    #: SQLAlchemy's name for it (``asyncpg``): only that dialect takes these
    name: str
    #: opens a connection from the driver's keyword arguments (as SQLAlchemy's dialect passes them)
    connect: Callable[[Mapping[str, Any]], Awaitable[Any]]
    #: the driver's objects tied to their connection's loop, returned by its methods
    wrapped: tuple[type, ...]
    #: synchronous connection methods that touch the socket (run on the loop's thread)
    loop_only: frozenset[str]
    #: puts a connection back as a new session (awaited on the loop)
    reset: Callable[[Any], Awaitable[Any]]
    #: closes a connection politely (awaited on the loop)
    close: Callable[[Any], Awaitable[Any]]
    #: closes a connection without a word to the server (called on the loop's thread)
    force_close: Callable[[Any], Any]


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _release(holder: list[Any]) -> None:
    """Called on the loop's thread: the held object's last reference goes here. (Passing the
    object itself is not enough: the handle that carries it may be dropped by the thread that
    queued it, after the loop has already run it.)"""
    holder.clear()


def _on_loop(background: BackgroundLoop, function: Callable[..., Any], *args: Any) -> None:
    """``function(*args)`` on the loop's thread: now if this is it, else soon; nothing once the
    loop is closed (its shutdown closed its connections)."""
    if background.in_loop_thread():
        function(*args)
        return
    with contextlib.suppress(BackgroundLoopError, RuntimeError):  # closed meanwhile
        background.loop.call_soon_threadsafe(function, *args)


class OnLoop:
    """Stands in for a driver object living on ``background``'s loop (see the module
    docstring). Plain attributes and other synchronous methods are read and called directly."""

    __slots__ = ("_background", "_driver", "_loop_only", "_target")

    def __init__(
        self,
        target: Any,
        background: BackgroundLoop,
        driver: Driver,
        loop_only: frozenset[str] = frozenset(),
    ) -> None:
        self._target = target
        self._background = background
        self._driver = driver
        self._loop_only = loop_only

    def __repr__(self) -> str:
        return f"<OnLoop {self._target!r} on {self._background.name}>"

    def __del__(self) -> None:
        # The driver's objects finalise themselves on their connection (asyncpg's prepared
        # statements queue their own close): let the last reference go on the loop's thread.
        background = getattr(self, "_background", None)
        if background is None or getattr(self, "_target", None) is None:
            return
        holder = [self._target]
        self._target = None  # the holder has the only reference now
        _on_loop(background, _release, holder)

    @property
    def target(self) -> Any:
        """The driver's object itself (use it on the background loop only)."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value):
            return value
        if name in self._loop_only:
            return self._on_loop_thread(value)

        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            # a driver object that is awaitable itself is wrapped, and awaiting the stand-in
            # awaits it on its loop
            if not isinstance(result, self._driver.wrapped) and inspect.isawaitable(result):
                return self._later(result)
            return self._wrap(result)

        return call

    def _on_loop_thread(self, method: Callable[..., Any]) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            _on_loop(self._background, lambda: method(*args, **kwargs))

        return call

    def __await__(self) -> Any:
        """Awaiting an awaitable driver object (asyncpg's cursor factory) awaits it on its loop."""
        if not inspect.isawaitable(self._target):
            raise TypeError(f"{self._target!r} can't be used in 'await' expression")
        return self._later(self._target).__await__()

    async def _later(self, awaitable: Awaitable[Any]) -> Any:
        return self._wrap(await self._background.submit(_awaited(awaitable)))

    def _wrap(self, result: Any) -> Any:
        if isinstance(result, self._driver.wrapped):
            return OnLoop(result, self._background, self._driver)
        return result


def run_there(standin: OnLoop, job: Callable[[Any], Coroutine[Any, Any, T]]) -> Awaitable[T]:
    """``job(driver object)`` awaited on the stand-in's loop: several calls in one hop."""
    return standin._background.submit(job(standin._target))


def held_on(background: BackgroundLoop, driver: Driver) -> HeldConnections:
    """Connections of ``driver`` opened on ``background``'s loop, and a ``close`` that closes
    them all there (or drops them without a word to the server when it cannot)."""
    opened: list[Any] = []

    async def connect_there(connect_kwargs: Mapping[str, Any]) -> Any:
        conn = await driver.connect(connect_kwargs)
        # recorded on the loop, so a caller cancelled as the connect ends leaks nothing
        opened.append(conn)
        return conn

    async def open_one(connect_kwargs: Mapping[str, Any]) -> OnLoop:
        conn = await background.submit(connect_there(connect_kwargs))
        return OnLoop(conn, background, driver, driver.loop_only)

    async def reset(standin: OnLoop) -> None:
        await background.submit(_awaited(driver.reset(standin.target)))

    def close_all() -> None:
        while opened:
            conn = opened.pop()
            if background.closed:
                return  # the loop's shutdown closed its connections
            if background.in_loop_thread():
                driver.force_close(conn)
                continue
            try:
                background.run(_awaited(driver.close(conn)), timeout=5)
            except Exception:  # its database is dropped next, whatever holds it
                _on_loop(background, driver.force_close, conn)

    return HeldConnections(driver=driver.name, connect=open_one, reset=reset, close=close_all)
