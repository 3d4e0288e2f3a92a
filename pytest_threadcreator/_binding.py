"""Which database the running test bound, for ``ThreadCreator()`` with no argument."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Protocol, runtime_checkable

from . import instrument
from .faults.steps import FaultDecider
from .schema import ThreadSchema
from .store.base import Store

__all__ = ["BoundDatabase", "bind", "current_database", "unbind"]


@runtime_checkable
class BoundDatabase(instrument.InstrumentedDatabase, Protocol):
    """What ThreadCreator, the binding and the instrumentation need of the plugin's
    :class:`~pytest_threadcreator.Database`; they depend on this, never on ``database.py``,
    which sits above them."""

    store: Store
    schema: ThreadSchema
    fault_decider: FaultDecider | None
    retries: int
    loops_seen: set[asyncio.AbstractEventLoop]
    leaked_connections: int
    leak_notes: list[str]


_current: contextvars.ContextVar[BoundDatabase | None] = contextvars.ContextVar(
    "threadcreator_database", default=None
)
# pytest-asyncio copies the context when it starts a test's task, so the ContextVar carries the
# binding into async tests; the fallback covers code that runs in a context made earlier (a
# session-scoped loop's tasks, threads).
_fallback: BoundDatabase | None = None


def bind(database: BoundDatabase) -> contextvars.Token[BoundDatabase | None]:
    """Bind ``database`` as the running test's database; instrument the engines connected to it."""
    global _fallback
    _fallback = database
    instrument.activate(database)
    return _current.set(database)


def unbind(token: contextvars.Token[BoundDatabase | None] | None = None) -> None:
    """Undo :func:`bind` at the end of the test.

    Engines of the test's code still holding connections are counted into the database's
    ``leaked_connections`` and named in its ``leak_notes``.
    """
    global _fallback
    database, _fallback = _fallback, None
    if database is not None:
        for count, url in instrument.deactivate(database):
            database.leaked_connections += count
            database.leak_notes.append(f"{count} connection(s) of an engine on {url}")
    if token is not None:
        try:
            _current.reset(token)
        except ValueError:  # reset from another context: clearing is enough
            _current.set(None)
    else:
        _current.set(None)


def current_database() -> BoundDatabase | None:
    """The running test's database, or None outside a test that uses ``threadcreator_db``."""
    return _current.get() or _fallback
