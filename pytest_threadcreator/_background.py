"""A private asyncio event loop on a daemon thread, for work that must outlive any test's loop.

Connection pools are bound to the loop that made them. pytest-asyncio gives each test (or each
scope) its own loop, so the PostgreSQL pool and the admin connection live here instead: sync
fixtures call :meth:`BackgroundLoop.run`, coroutines of any other loop ``await``
:meth:`BackgroundLoop.submit`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import ThreadCreatorError

__all__ = ["BackgroundLoop", "BackgroundLoopClosed", "BackgroundLoopError", "wait_uncancellable"]

T = TypeVar("T")

#: After the caller is cancelled, how long ``submit`` waits for the background side to finish
#: its own cleanup (rollback, returning the connection) before giving up on it.
CANCEL_CLEANUP_TIMEOUT = 10.0


class BackgroundLoopError(ThreadCreatorError):
    """A :class:`BackgroundLoop` was used in a way that cannot work."""


class BackgroundLoopClosed(BackgroundLoopError):
    """Work was handed to a :class:`BackgroundLoop` after :meth:`BackgroundLoop.close`."""


class BackgroundLoop:
    """An event loop running in a daemon thread, started on first use.

    * :meth:`run` — run a coroutine to completion from synchronous code in any other thread.
    * :meth:`submit` — await a coroutine from another event loop. Cancelling the awaiting task
      cancels the coroutine here *and waits for it to finish*, so when the caller sees
      ``CancelledError`` the background side has already rolled back and released its connection.
    * :meth:`close` — cancel what is left, stop the loop and join the thread (idempotent; after
      it, ``run``/``submit`` raise :class:`BackgroundLoopClosed`).
    """

    def __init__(self, name: str = "threadcreator-background") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._mailbox: _Mailbox | None = None
        self._outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._loop is not None else "idle")
        return f"<BackgroundLoop {self.name} {state}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The background loop, started on first access."""
        loop = self._loop
        if loop is not None and not self._closed:
            return loop
        with self._lock:
            if self._closed:
                raise BackgroundLoopClosed(
                    f"{self.name}: the background event loop was closed (the database backend "
                    "was stopped); create a new backend to talk to the database again"
                )
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self.name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    def in_loop_thread(self) -> bool:
        """True when called from the background loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        """Run ``coro`` on the background loop and block until it is done; return its result.

        Must not be called from the background thread itself (that would deadlock). If
        ``timeout`` passes, or the caller is interrupted (Ctrl-C), the coroutine is cancelled.
        """
        if self.in_loop_thread():
            coro.close()
            raise BackgroundLoopError(
                f"{self.name}: run() was called from the background loop's own thread; "
                "await submit() (or the coroutine itself) there instead"
            )
        try:
            loop = self.loop
        except BackgroundLoopClosed:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except BaseException:
            # Timeout or KeyboardInterrupt: do not leave the coroutine running behind our back.
            future.cancel()
            raise

    async def submit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` running on the background loop, from any other event loop.

        Cancellation is forwarded: the background task is cancelled and awaited (up to
        :data:`CANCEL_CLEANUP_TIMEOUT`) before ``CancelledError`` is re-raised here.
        """
        caller = asyncio.get_running_loop()
        try:
            loop = self.loop
        except BackgroundLoopClosed:
            coro.close()
            raise
        if caller is loop:
            return await coro
        finished: asyncio.Future[T] = caller.create_future()
        started: list[asyncio.Task[T]] = []
        inbox = self._inbox(loop)
        outbox = self._outbox(caller)

        def relay(task: asyncio.Task[T]) -> None:
            # On the background loop: hand the outcome to the caller's loop.
            if not task.cancelled():
                task.exception()  # retrieved here, even if the caller's loop is gone
            outbox.post(_copy_outcome, task, finished)

        def start() -> None:
            task = loop.create_task(coro)
            task.add_done_callback(relay)
            started.append(task)

        inbox.post(start)
        try:
            return await asyncio.shield(finished)
        except asyncio.CancelledError:
            if finished.done() and not finished.cancelled():
                # It completed as we were cancelled: honour the cancellation, drop the result.
                finished.exception()  # mark retrieved
                raise
            # The inbox is FIFO: start() has run by the time _cancel_started does.
            inbox.post(_cancel_started, started)
            await wait_uncancellable(finished, CANCEL_CLEANUP_TIMEOUT)
            if finished.done() and not finished.cancelled():
                finished.exception()
            raise

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the background loop soon, from any thread (FIFO with the work
        :meth:`submit` hands over; one wake-up for every call posted before it runs).

        Raises :class:`BackgroundLoopClosed` after :meth:`close`.
        """
        self._inbox(self.loop).post(fn, *args)

    def post_back(
        self, caller: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any
    ) -> None:
        """Run ``fn(*args)`` on ``caller`` (another event loop) soon, from the background loop;
        dropped if that loop is closed. Calls posted in one go wake ``caller`` once."""
        self._outbox(caller).post(fn, *args)

    def _inbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        box = self._mailbox
        if box is None or box.loop is not loop:
            with self._lock:
                if self._mailbox is None or self._mailbox.loop is not loop:
                    self._mailbox = _Mailbox(loop)
                box = self._mailbox
        return box

    def _outbox(self, caller: asyncio.AbstractEventLoop) -> _Mailbox:
        box = self._outboxes.get(caller)
        if box is None:
            with self._lock:
                box = self._outboxes.get(caller)
                if box is None:
                    box = self._outboxes[caller] = _Mailbox(caller)
        return box

    def close(self, timeout: float = 10.0) -> None:
        """Cancel remaining tasks, stop the loop and join its thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():
            loop.stop()  # closing from inside: stop only; the thread ends by itself
            return
        if thread.is_alive() and not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout)
            except (concurrent.futures.TimeoutError, RuntimeError):
                pass
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not thread.is_alive() and not loop.is_closed():
            loop.close()


class _Mailbox:
    """Callbacks posted from any thread to one loop, with one wake-up per batch.

    ``call_soon_threadsafe`` per item wakes the loop (a pipe write) every time; with hundreds of
    concurrent creates, batching halves the cost of crossing between the loops.
    """

    __slots__ = ("_items", "_lock", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: outboxes are values of a WeakKeyDictionary keyed by their loop.
        self._loop = weakref.ref(loop)
        self._items: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon (FIFO); silently dropped if the loop is closed."""
        with self._lock:
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("event loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._lock:
                self._items.clear()
                self._scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The target loop, or None once it was garbage collected."""
        return self._loop()

    def _drain(self) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._scheduled = False
        for fn, args in items:
            fn(*args)


def _copy_outcome(task: asyncio.Task[T], finished: asyncio.Future[T]) -> None:
    if finished.done():
        return
    if task.cancelled():
        finished.cancel()
        return
    exc = task.exception()
    if exc is not None:
        finished.set_exception(exc)
    else:
        finished.set_result(task.result())


def _cancel_started(started: list[asyncio.Task[Any]]) -> None:
    for task in started:
        task.cancel()


async def wait_uncancellable(future: asyncio.Future[Any], timeout: float) -> None:
    """Wait for ``future`` up to ``timeout`` seconds, ignoring further cancellation requests."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not future.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:
            await asyncio.wait((future,), timeout=remaining)
        except asyncio.CancelledError:
            continue


async def _cancel_all() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)
    await asyncio.get_running_loop().shutdown_asyncgens()
