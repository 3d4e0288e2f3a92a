"""``fresh`` databases cloned ahead and dropped behind, off the test's path (integresql's way).

A ``CREATE DATABASE … TEMPLATE`` per test costs tens of milliseconds of server time, and so does
its ``DROP``. A :class:`SpareTender` does both on the backend's background loop, on connections
of its own, while tests run: it keeps up to ``target`` clones of the template ready (each marked
as the run's own the moment it exists, like every database of the plugin, so a later run sweeps
them if this one is killed) and drops the databases tests are done with. Handing a ``fresh``
database out is then a pop from a queue.

Should a tender's connection fail, it stops; the backend then clones on demand and drops what is left itself, as it would
without a tender, and the same failure reaches the test there.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..._background import BackgroundLoop
from .docker import _short_reason

__all__ = ["SpareTender"]


class SpareTender:
    """Keeps ``target`` cloned databases ready and drops used ones, on ``background``'s loop.

    A worker's databases on the server are thus at most its tests' own, ``target`` clones ready
    or being made, and ``target`` waiting to be dropped.

    Each task on a connection of its own, so that a drop never holds up a clone: ``target``
    cloners keep ``target`` clones ready (clones made side by side share the server's
    checkpoints, so two cost little more than one); the dropper drops what tests are done with.
    ``connect()`` opens a connection (holding the run's lock like the admin one);
    ``make_name()`` names the next clone; ``clone(conn, name)`` creates and marks it;
    ``drop(conn, name)`` drops it if it carries the run's mark.
    """

    def __init__(
        self,
        *,
        background: BackgroundLoop,
        target: int,
        connect: Callable[[], Awaitable[Any]],
        make_name: Callable[[], str],
        clone: Callable[[Any, str], Awaitable[None]],
        drop: Callable[[Any, str], Awaitable[object]],
    ) -> None:
        self.target = target
        self._background = background
        self._connect = connect
        self._make_name = make_name
        self._clone = clone
        self._drop = drop
        #: clones ready to hand out (appended on the loop, popped from any thread)
        self._ready: collections.deque[str] = collections.deque()
        #: databases to drop, oldest first (only touched on the loop)
        self._doomed: collections.deque[str] = collections.deque()
        self._cloning: set[str] = set()
        self._wake_cloner = asyncio.Event()
        self._made = asyncio.Event()
        self._wake_dropper = asyncio.Event()
        self._drained = asyncio.Event()
        self._cloners: list[asyncio.Task[None]] = []
        self._dropper: asyncio.Task[None] | None = None
        self._stopping = False
        #: databases handed to discard() and not dropped yet (at most ``target``)
        self._pending = 0
        self._pending_lock = threading.Lock()
        #: why the tender stopped early, if it did
        self.failure: str | None = None
        #: drops that failed (the backend retries them at stop, with everything else marked)
        self.problems: list[str] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SpareTender {state} ready={len(self._ready)} doomed={len(self._doomed)}>"

    @property
    def running(self) -> bool:
        """True while a cloner lives."""
        return any(not task.done() for task in self._cloners)

    # -- from any thread -------------------------------------------------------------------
    def start(self) -> None:
        """Start tending (idempotent); returns at once."""
        if not self._cloners and not self._stopping:
            self._background.loop.call_soon_threadsafe(self._start)

    def take(self) -> str | None:
        """A ready clone, waiting for the one being made if none is; None when the tender is
        not running (then clone on demand)."""
        try:
            name = self._ready.popleft()
        except IndexError:
            return self._background.run(self._next()) if self.running else None
        self._background.loop.call_soon_threadsafe(self._wake_cloner.set)
        return name

    def discard(self, name: str) -> bool:
        """Drop ``name`` in the background; False when the tender is gone or already has
        ``target`` drops to do (drop it yourself: what waits for a drop stays bounded)."""
        if not _alive(self._dropper) or self._stopping:
            return False
        with self._pending_lock:
            if self._pending >= self.target:
                return False
            self._pending += 1
        self._background.loop.call_soon_threadsafe(self._doom, name)
        return True

    # -- on the loop -----------------------------------------------------------------------
    def stock(self) -> set[str]:
        """The clones not handed out yet (ready, or being made)."""
        return set(self._ready) | self._cloning

    async def drained(self) -> None:
        """Wait until every database discarded so far is dropped (or the dropper stopped)."""
        # FIFO: a discard() posted before this coroutine was has already cleared the event.
        while _alive(self._dropper) and not self._drained.is_set():
            await self._drained.wait()

    async def stop(self) -> list[str]:
        """Finish the jobs in hand, stop, and return what is left to drop (ready or discarded)."""
        self._stopping = True
        self._wake_cloner.set()
        self._wake_dropper.set()
        tasks = [*self._cloners, *([self._dropper] if self._dropper is not None else [])]
        if tasks:
            await asyncio.wait(tasks)
        # and a clone that failed or was cancelled midway: it may exist
        left = [*self._doomed, *self._ready, *sorted(self._cloning)]
        self._doomed.clear()
        self._ready.clear()
        return left

    async def _next(self) -> str | None:
        while not self._ready:
            if not self.running or self._stopping:
                return None
            self._made.clear()  # set by each clone made, and by each cloner that stops
            self._wake_cloner.set()
            await self._made.wait()
        self._wake_cloner.set()
        return self._ready.popleft()

    def _start(self) -> None:
        if not self._cloners and not self._stopping:
            loop = asyncio.get_running_loop()
            self._cloners = [
                loop.create_task(self._keep_cloning(), name=f"threadcreator-pg-cloner-{n}")
                for n in range(self.target)
            ]
            self._dropper = loop.create_task(self._keep_dropping(), name="threadcreator-pg-dropper")

    def _doom(self, name: str) -> None:
        self._doomed.append(name)
        self._drained.clear()
        self._wake_dropper.set()

    async def _keep_cloning(self) -> None:
        conn: Any = None
        try:
            conn = await self._connect()
            while not self._stopping:
                if len(self._ready) + len(self._cloning) < self.target:
                    name = self._make_name()
                    self._cloning.add(name)
                    await self._clone(conn, name)
                    self._ready.append(name)
                    self._cloning.discard(name)
                    self._made.set()
                    continue
                self._wake_cloner.clear()
                await self._wake_cloner.wait()
        except Exception as exc:  # on-demand clones take over and meet the same failure
            self.failure = _short_reason(exc)
        finally:
            self._made.set()
            await _close(conn)

    async def _keep_dropping(self) -> None:
        conn: Any = None
        try:
            conn = await self._connect()
            while True:
                if self._doomed:
                    name = self._doomed[0]
                    try:
                        await self._drop(conn, name)
                    except Exception as exc:  # the backend retries at stop
                        self.problems.append(f"dropping {name}: {_short_reason(exc)}")
                        if conn.is_closed():
                            raise
                    finally:
                        self._doomed.popleft()
                        with self._pending_lock:
                            self._pending -= 1
                    continue
                self._drained.set()
                if self._stopping:
                    return
                self._wake_dropper.clear()
                await self._wake_dropper.wait()
        except Exception as exc:  # the backend drops what is left itself
            self.failure = _short_reason(exc)
        finally:
            self._drained.set()
            await _close(conn)


def _alive(task: asyncio.Task[None] | None) -> bool:
    return task is not None and not task.done()


async def _close(conn: Any) -> None:
    if conn is None:
        return
    try:
        await conn.close(timeout=5)
    except Exception:  # the server is gone: nothing to release there
        conn.terminate()
