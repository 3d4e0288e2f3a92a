"""``fresh`` databases cloned ahead and dropped behind, off the test's path (integresql's way).

Making a database per test costs the server milliseconds to tens of milliseconds (PostgreSQL: a
``CREATE DATABASE … TEMPLATE``; MySQL/MariaDB: a ``CREATE DATABASE`` and the template's DDL),
and so does its ``DROP``. A :class:`SpareTender` does both on the backend's background loop, on
connections of its own, while tests run: it keeps up to ``target`` clones of the template ready
(each marked as the run's own the moment it exists, like every database of the plugin, so a
later run sweeps them if this one is killed) and drops the databases tests are done with.
Handing a ``fresh`` database out is then a pop from a queue. Both server backends use it.

With a ``warm`` step, each clone also gets its first connection opened (and its catalog caches
loaded) by the tender: a brand-new database's first connection is the slowest one it will ever
get, and the test then starts on a connection that is already there. Whatever ``warm`` made is
handed out with the clone, and closed by the tender (``unwarm``) when the clone is dropped unused
or the test is done with it.

With a ``recycle`` step (a :class:`Recycler`), the dropper reclaims a used database instead, and
a task beside it warms the reclaimed one and has it checked (and emptied): one that changed
nothing but rows is a spare again, any other goes back to the dropper. Both keep the
used database's name and one connection of its store pool (``keeps_handles``), which serves its
next test. PostgreSQL's (for a template that watches for schema changes) makes sure no other
session is on it in :meth:`Recycler.reclaim` and checks and empties it on the kept connection
in ``check``; MySQL's checks and empties it in :meth:`Recycler.reclaim`, and its ``check`` only
says so. Spares are handed out oldest first,
and never the database the previous test gave back while it is the only one: the next test
waits for another, so each test's database has a name other than the one before it had. The
cloners leave room for the used databases still to come back (as long as the last one tried
did come back: tests that change the schema get clones made ahead as before).

Should a tender's connection fail, it stops; the backend then clones on demand and drops what
is left itself, as it would without a tender, and the same failure reaches the test there.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .._background import BackgroundLoop
from ..errors import short_reason as _short_reason

__all__ = ["Recycler", "SpareTender"]


class Recycler(Protocol):
    """Makes a used database a spare again (PostgreSQL's :class:`~.postgresql.recycle.Recycler`,
    MySQL's :class:`~.mysql.recycle.Recycler`)."""

    #: whether a used database's warm handle stays open through :meth:`reclaim` (trimmed by
    #: :meth:`trim`) and serves its next test, instead of being closed when the test is done
    keeps_handles: bool

    async def trim(self, name: str, handle: Any) -> bool:
        """Make the warm handle of the used database ``name`` what a ready spare holds (MySQL:
        one connection of its pool); False if it cannot be kept (it is closed then)."""

    async def reclaim(self, conn: Any, name: str, handle: Any = None) -> str | None:
        """Take the used database ``name`` back for a later test (``handle``: the warm handle
        kept for it, if any; PostgreSQL: no other session is on it; MySQL: checked and emptied
        where it is): the name it comes back under, or None to drop ``name`` instead."""

    async def check(self, name: str, handle: Any) -> bool:
        """Check and empty the reclaimed ``name`` (on ``handle``, if warmed), unless
        ``reclaim`` did: True if it is a spare again."""


class SpareTender:
    """Keeps ``target`` cloned databases ready and drops used ones, on ``background``'s loop.

    A worker's databases on the server are thus at most its tests' own, ``target`` clones ready
    or being made (one more while a used one is being recycled), and ``target`` given back and
    waiting to be dropped (plus recycled ones that failed their check).

    Each task on a connection of its own, so that a drop never holds up a clone: ``target``
    cloners keep ``target`` clones ready (clones made side by side share the server's
    checkpoints, so two cost little more than one); the dropper drops what tests are done with.
    The first clone is made alone, the others once it is ready: the first ``fresh`` test waits
    for it, and each of several clones begun together takes longer than one alone (on
    PostgreSQL, four begun together took about 390 ms each, one alone about 150 ms).
    ``connect()`` opens a connection (holding the run's lock like the admin one, where the
    server's lock is shared by the run's sessions), ``disconnect(conn)`` closes it (it must not
    raise) and ``is_closed(conn)`` tells whether it broke;
    ``make_name()`` names the next clone; ``clone(conn, name)`` creates and marks it;
    ``drop(conn, name)`` drops it if it carries the run's mark; ``warm(name)`` (optional)
    opens what the test will use on a new clone (a failure there only hands the clone out cold)
    and ``unwarm(handle)`` closes it; ``recycle`` (optional) makes used databases spares again.
    """

    def __init__(
        self,
        *,
        background: BackgroundLoop,
        target: int,
        connect: Callable[[], Awaitable[Any]],
        disconnect: Callable[[Any], Awaitable[None]],
        is_closed: Callable[[Any], bool],
        make_name: Callable[[], str],
        clone: Callable[[Any, str], Awaitable[None]],
        drop: Callable[[Any, str], Awaitable[object]],
        warm: Callable[[str], Awaitable[Any]] | None = None,
        unwarm: Callable[[Any], Awaitable[None]] | None = None,
        recycle: Recycler | None = None,
    ) -> None:
        self.target = target
        self._background = background
        self._connect = connect
        self._disconnect = disconnect
        self._is_closed = is_closed
        self._make_name = make_name
        self._clone = clone
        self._drop = drop
        self._warm = warm
        self._unwarm = unwarm
        self._recycle = recycle
        #: used databases come back as spares (``recycle``), so the cloners count on them
        self.recycling = recycle is not None
        #: whether the last used database tried came back (tests that change the schema make
        #: the cloners stop counting on the ones still to come)
        self._coming_back = True
        #: clones ready to hand out with what ``warm`` made for each, or None (appended on the
        #: loop, popped from any thread)
        self._ready: collections.deque[tuple[str, Any]] = collections.deque()
        #: databases to drop (or recycle), oldest first, each with the closing of its warm
        #: handle, or its trimming (the task's result: the handle kept, or None), if any (only
        #: touched on the loop)
        self._doomed: collections.deque[tuple[str, asyncio.Task[Any] | None]] = collections.deque()
        self._cloning: set[str] = set()
        #: databases to recycle whose warm handle is being kept for them (counted in the budget)
        self._keeping: set[str] = set()
        #: databases handed out and not given back yet (under ``_pending_lock``)
        self._handed: set[str] = set()
        #: takers waiting for a spare (a clone is made for each, even with some to come back)
        self._waiting = 0
        #: the database given back last, until the next test takes one: not handed to that test
        #: (a recycled one keeps its name), which waits for another instead
        self._last_back: str | None = None
        self._wake_cloner = asyncio.Event()
        self._made = asyncio.Event()
        #: set once the first clone is ready (or its cloner stopped): the other cloners wait
        self._first_made = asyncio.Event()
        self._wake_dropper = asyncio.Event()
        self._drained = asyncio.Event()
        self._cloners: list[asyncio.Task[None]] = []
        #: used databases that failed their check: dropped, not tried again
        self._unfit: set[str] = set()
        #: recycled databases being warmed and checked before they are ready
        self._warming: set[asyncio.Task[None]] = set()
        self._dropper: asyncio.Task[None] | None = None
        self._stopping = False
        #: databases to drop or recycle, not done yet (discard() takes at most ``target``; those
        #: that fail their recycle check come on top)
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
    def coming_back(self) -> bool:
        """Whether used databases come back as spares (a recycler, and the last one tried came
        back): then few clones are made, else one per test."""
        return self.recycling and self._coming_back

    @property
    def running(self) -> bool:
        """True while a cloner lives."""
        return any(not task.done() for task in self._cloners)

    # -- from any thread -------------------------------------------------------------------
    def start(self) -> None:
        """Start tending (idempotent); returns at once."""
        if not self._cloners and not self._stopping:
            self._background.loop.call_soon_threadsafe(self._start)

    def take(self) -> tuple[str, Any] | None:
        """A ready clone and its warm handle (None if it has none), waiting for the one being
        made if none is ready; None when the tender is not running (then clone on demand).
        The handle is the caller's from now on, until it gives it back to :meth:`discard`."""
        try:
            spare = self._ready.popleft()
        except IndexError:
            return self._background.run(self._next()) if self.running else None
        if spare[0] == self._last_back:  # the previous test's: a later test's, not this one's
            self._ready.appendleft(spare)
            return self._background.run(self._next()) if self.running else None
        self._hand(spare[0])
        self._background.loop.call_soon_threadsafe(self._wake_cloner.set)
        return spare

    def forget(self, name: str) -> None:
        """``name`` was handed out and will not come back (kept, or lost with a failed setup)."""
        with self._pending_lock:
            self._handed.discard(name)
        self._background.loop.call_soon_threadsafe(self._wake_cloner.set)

    def discard(self, name: str, handle: Any = None) -> bool:
        """Recycle or drop ``name`` in the background, closing ``handle`` (a warm handle) first;
        False when the tender is gone or already has ``target`` databases to see to (then close
        and drop them yourself: what waits for a drop stays bounded)."""
        self._last_back = name
        if not _alive(self._dropper) or self._stopping:
            return False
        with self._pending_lock:
            full = self._pending >= self.target
            if not full:
                self._pending += 1
        if full:  # not coming back as a spare
            self.forget(name)
            return False
        self._background.loop.call_soon_threadsafe(self._returned, name, handle)
        return True

    # -- on the loop -----------------------------------------------------------------------
    def stock(self) -> set[str]:
        """The clones not handed out yet (ready, or being made)."""
        return {name for name, _ in self._ready} | self._cloning

    async def drained(self) -> None:
        """Wait until every database discarded so far is dropped or a spare again (or the
        dropper stopped)."""
        # FIFO: a discard() posted before this coroutine was has already cleared the event.
        while (_alive(self._dropper) and not self._drained.is_set()) or self._warming:
            if self._warming:
                await asyncio.wait(list(self._warming))
            else:
                await self._drained.wait()

    async def stop(self) -> list[str]:
        """Finish the jobs in hand, stop, and return what is left to drop (ready or discarded)."""
        self._stopping = True
        self._wake_cloner.set()
        self._first_made.set()
        self._wake_dropper.set()
        tasks = [*self._cloners, *([self._dropper] if self._dropper is not None else [])]
        if tasks:
            await asyncio.wait(tasks)
        if self._warming:
            await asyncio.wait(list(self._warming))
        # what was warmed for the ones left is closed before they are dropped
        pending = [task for _, task in self._doomed if task is not None]
        if pending:
            await asyncio.wait(pending)
        kept = [task.result() for task in pending if not task.cancelled()]
        closing = [self._close_soon(handle) for handle in kept if handle is not None]
        closing += [self._close_soon(handle) for _, handle in self._ready if handle is not None]
        if closing:
            await asyncio.wait(closing)
        # and a clone that failed or was cancelled midway: it may exist
        left = [
            *(name for name, _ in self._doomed),
            *(name for name, _ in self._ready),
            *sorted(self._cloning),
        ]
        self._doomed.clear()
        self._ready.clear()
        return left

    async def _next(self) -> tuple[str, Any] | None:
        self._waiting += 1  # a clone is made for it, whatever else is still to come back
        try:
            while True:
                if not self.running or self._stopping:
                    return None
                try:
                    spare = self._pop_ready()
                except IndexError:  # none ready (or another thread took the last one)
                    self._made.clear()  # set by each clone made, and by each cloner that stops
                    self._wake_cloner.set()
                    await self._made.wait()
                    continue
                self._hand(spare[0])
                self._wake_cloner.set()
                return spare
        finally:
            self._waiting -= 1

    def _pop_ready(self) -> tuple[str, Any]:
        """The oldest ready spare but the one the previous test gave back (IndexError if none)."""
        for at, spare in enumerate(self._ready):
            if spare[0] != self._last_back:
                del self._ready[at]
                return spare
        raise IndexError("no spare ready for this test")

    def _hand(self, name: str) -> None:
        self._last_back = None  # kept from the next test only
        with self._pending_lock:
            self._handed.add(name)

    def _returned(self, name: str, handle: Any) -> None:
        """A database given back, to recycle or drop."""
        with self._pending_lock:
            self._handed.discard(name)
        self._doom(name, handle)

    def _start(self) -> None:
        if not self._cloners and not self._stopping:
            loop = asyncio.get_running_loop()
            self._cloners = [
                loop.create_task(self._keep_cloning(n == 0), name=f"threadcreator-cloner-{n}")
                for n in range(self.target)
            ]
            self._dropper = loop.create_task(self._keep_dropping(), name="threadcreator-dropper")

    def _doom(self, name: str, handle: Any) -> None:
        # closed (or trimmed) now, not when its turn to be dropped comes: its connections count
        # meanwhile (a test's pool may hold several)
        task = None
        if handle is not None:
            recycler = self._recycle
            # within the connection budget (see _ready_up): one connection for each of
            # ``target`` spares, ready or coming back, and none where spares are planned cold
            if (
                recycler is not None
                and recycler.keeps_handles
                and self._warm is not None
                and name not in self._unfit
                and len(self._ready) + len(self._keeping) < self.target
            ):
                self._keeping.add(name)
                task = self._keep_soon(recycler, name, handle)
            else:
                task = self._close_soon(handle)
        self._doomed.append((name, task))
        self._drained.clear()
        self._wake_dropper.set()

    def _keep_soon(self, recycler: Recycler, name: str, handle: Any) -> asyncio.Task[Any]:
        """Trim ``handle`` for the used database ``name``'s next test: the task's result is the
        handle, or None when it could not be kept (then it is closed)."""

        async def keep() -> Any:
            with contextlib.suppress(Exception):
                if await recycler.trim(name, handle):
                    return handle
            await self._let_go(handle)
            return None

        return asyncio.get_running_loop().create_task(keep(), name="threadcreator-trim")

    async def _let_go(self, handle: Any) -> None:
        if handle is not None:
            assert self._unwarm is not None
            await _quietly(self._unwarm(handle))

    def _close_soon(self, handle: Any) -> asyncio.Task[None]:
        assert self._unwarm is not None
        return asyncio.get_running_loop().create_task(
            _quietly(self._unwarm(handle)), name="threadcreator-unwarm"
        )

    async def _keep_cloning(self, first: bool) -> None:
        """Clone while fewer than ``target`` are ready or coming back; only the ``first``
        cloner before the first clone is ready."""
        conn: Any = None
        try:
            if not first:
                await self._first_made.wait()
            conn = await self._connect()
            while not self._stopping:
                stock = self._stock()
                if stock + self._returning() < self.target or self._waiting > self._takeable():
                    name = self._make_name()
                    self._cloning.add(name)
                    await self._clone(conn, name)
                    handle = await self._warmed(name)
                    self._ready.append((name, handle))
                    self._cloning.discard(name)
                    self._made.set()
                    self._first_made.set()
                    continue
                self._wake_cloner.clear()
                await self._wake_cloner.wait()
        except Exception as exc:  # on-demand clones take over and meet the same failure
            self.failure = _short_reason(exc)
        finally:
            self._made.set()
            if first:
                self._first_made.set()
            if conn is not None:
                await self._disconnect(conn)

    async def _keep_dropping(self) -> None:
        conn: Any = None
        try:
            conn = await self._connect()
            while True:
                if self._doomed:
                    name, pending = self._doomed[0]
                    try:
                        kept = None
                        if pending is not None:
                            await asyncio.wait((pending,))
                            kept = None if pending.cancelled() else pending.result()
                        await self._recycle_or_drop(conn, name, kept)
                    except Exception as exc:  # the backend retries at stop
                        self.problems.append(f"dropping {name}: {_short_reason(exc)}")
                        if self._is_closed(conn):
                            raise
                    finally:
                        self._doomed.popleft()
                        self._keeping.discard(name)
                        with self._pending_lock:
                            self._pending -= 1
                        self._wake_cloner.set()  # one fewer coming back
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
            if conn is not None:
                await self._disconnect(conn)

    def _stock(self) -> int:
        return len(self._ready) + len(self._cloning)

    def _takeable(self) -> int:
        """Spares ready or being made that a waiting test may take (all but the previous
        test's)."""
        names = [*(name for name, _ in self._ready), *self._cloning]
        return sum(name != self._last_back for name in names)

    def _returning(self) -> int:
        """Databases that may come back as spares, in tests or given back (the cloners leave
        room for them)."""
        coming = self.recycling and self._coming_back and _alive(self._dropper)
        return len(self._doomed) + len(self._handed) if coming else 0

    async def _recycle_or_drop(self, conn: Any, name: str, kept: Any = None) -> None:
        """Reclaim the used database ``name`` (with ``kept``, the warm handle kept for it) to
        have it checked, emptied and warmed beside the next drop (see :meth:`_ready_up`), or
        drop it."""
        recycler = self._recycle
        # up to one spare more than ``target`` (a clone begun while the test ran), not more
        unfit = name in self._unfit
        self._unfit.discard(name)
        if recycler is None or unfit or self._stopping or self._stock() > self.target:
            await self._let_go(kept)
            await self._drop(conn, name)
            return
        try:
            new = await recycler.reclaim(conn, name, kept)
        except BaseException:
            await self._let_go(kept)
            raise
        if new is None:
            self._coming_back = False
            await self._let_go(kept)
            await self._drop(conn, name)
            return
        # counted meanwhile as a clone being made
        self._cloning.add(new)
        task = asyncio.get_running_loop().create_task(
            self._ready_up(new, recycler, kept), name="threadcreator-recycle"
        )
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _ready_up(self, name: str, recycler: Recycler, kept: Any = None) -> None:
        """Warm the reclaimed database ``name`` (unless ``kept``, its warm handle, still is) and
        check and empty it on the connection warmed for its next test; a spare again if it
        passed, else back to the dropper."""
        handle = kept
        try:
            # warm within the connection budget: one connection for each of ``target`` spares
            if len(self._ready) >= self.target:
                handle = None
                await self._let_go(kept)
            elif handle is None:
                handle = await self._warmed(name)
            ready = not self._stopping and await recycler.check(name, handle)
            self._coming_back = ready
            if ready:
                self._ready.append((name, handle))
            else:
                self._unfit.add(name)
                with self._pending_lock:
                    self._pending += 1
                self._doom(name, handle)
        finally:
            self._cloning.discard(name)
            self._made.set()

    async def _warmed(self, name: str) -> Any:
        """What ``warm`` made for the new clone ``name``, or None (a cold clone still serves)."""
        if self._warm is None or self._stopping:
            return None
        try:
            return await self._warm(name)
        except Exception:  # the test opens its own connections, and meets any real failure
            return None


async def _quietly(closing: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):  # its database is dropped WITH (FORCE) next
        await closing


def _alive(task: asyncio.Task[None] | None) -> bool:
    return task is not None and not task.done()
