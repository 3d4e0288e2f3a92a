"""Your code under test: every SQLAlchemy engine connected to the running test's database.

While a test that uses ``threadcreator_db`` runs, its :class:`~pytest_threadcreator.InstrumentedDatabase` is
*active* here (:func:`activate`, called when the test binds it). Three class-level SQLAlchemy
events (``engine_connect``, ``before_cursor_execute``, ``commit`` on :class:`~sqlalchemy.engine.Engine`)
then reach every engine, async or sync, whoever made it — the app's own engine built from its
settings included — and act only on engines whose URL names an active database:

* SQLite connections get the plugin's settings (``foreign_keys=ON``, busy timeout) once each;
* ``count_queries()`` counts their statements;
* the ``fault_injector`` maps their statements to steps (an ``INSERT`` into the schema's thread
  table is ``thread_insert``, into its message table ``message_insert``, a ``COMMIT`` ``commit``)
  and applies ``statement=`` rules;
* shake mode pauses before each statement run inside a ``run_concurrently`` call, keyed by the
  call and the statement's ordinal in it, so a printed seed replays the schedule;
* engines still holding checked-out connections when the test ends are named (:func:`deactivate`).

An engine on any other database costs one dictionary lookup per statement. In async code a pause
or a cancellation happens inside SQLAlchemy's greenlet bridge, so only the task running the
statement waits or is cancelled (its transaction rolls back); in sync code ``delay`` sleeps the
thread and ``cancel`` raises :class:`~pytest_threadcreator.errors.InjectedFault`.

The plugin's own data path applies fault steps and shake pauses itself; while it runs,
:data:`store_steps` is set so its statements are not mapped to steps a second time.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import re
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import _AdhocProxiedConnection
from sqlalchemy.util import await_only
from sqlalchemy.util.concurrency import in_greenlet

from . import shake
from .errors import InjectedFault
from .faults.steps import FaultAction

if TYPE_CHECKING:
    from .faults import FaultInjector
    from .queries import QueryCounter
    from .schema import ThreadSchema

__all__ = [
    "InstrumentedDatabase",
    "activate",
    "database_key",
    "deactivate",
    "own_engine",
    "store_steps",
]

#: Set while the plugin's own data path runs a create: it applies steps and shake itself.
store_steps: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "threadcreator_store_steps", default=False
)


class InstrumentedDatabase(Protocol):
    """What instrumentation needs of a test's database (the plugin's ``InstrumentedDatabase``)."""

    url: str
    schema: ThreadSchema
    connection_settings: tuple[str, ...]
    fault_injector: FaultInjector | None
    _counters: list[QueryCounter]

    def _record_store_statement(self, label: str, sql: str) -> None: ...


_targets: dict[tuple[str, str], _Target] = {}
_keys: weakref.WeakKeyDictionary[Engine, tuple[str, str] | None] = weakref.WeakKeyDictionary()
#: The target of each database, made on its first activation.
_made: weakref.WeakKeyDictionary[InstrumentedDatabase, _Target] = weakref.WeakKeyDictionary()
#: Engines the plugin made and counts itself (``InstrumentedDatabase.engine``, the rollback engine).
_own: weakref.WeakSet[Engine] = weakref.WeakSet()
_install_lock = threading.Lock()
_installed = False
_SETTINGS_DONE = "threadcreator_settings"


def database_key(url: str | URL) -> tuple[str, str] | None:
    """What identifies a database across URLs: a file's real path, a server's database name.

    A URL without a host names a file (SQLite); None for an in-memory database or a URL
    without a database.
    """
    if isinstance(url, str):
        return _key_of(url)
    return _key(url)


@functools.lru_cache(maxsize=256)
def _key_of(url: str) -> tuple[str, str] | None:
    """:func:`database_key` of a URL string (a test's database URL comes again and again)."""
    return _key(make_url(url))


def _key(parsed: URL) -> tuple[str, str] | None:
    name = parsed.database
    if not name:
        return None
    kind = parsed.get_backend_name()
    if parsed.host is None and "host" not in parsed.query:  # a file, not a server
        if name == ":memory:" or name.startswith("file::memory:") or "mode=memory" in name:
            return None
        if parsed.query.get("mode") == "memory":
            return None
        if name.startswith("file:"):
            name = name[len("file:") :].split("?", 1)[0]
        return (kind, os.path.realpath(name))
    return (kind, name)


class _Target:
    """What instrumentation needs of one active database."""

    __slots__ = ("checkouts", "database", "key", "message_insert", "settings", "thread_insert")

    def __init__(self, database: InstrumentedDatabase) -> None:
        self.database = database
        self.key = database_key(database.url)
        schema = database.schema
        self.thread_insert = _insert_into(schema.thread_table.name)
        self.message_insert = _insert_into(schema.message_table.name)
        self.settings: tuple[str, ...] = tuple(database.connection_settings)
        #: each checkout of a connection by the test's engines, with the engine's URL; it is
        #: still checked out while the pool's handle holds a DBAPI connection (disposing the
        #: engine does not return it)
        self.checkouts: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()

    def step_of(self, sql: str) -> str | None:
        if self.thread_insert.match(sql):
            return "thread_insert"
        if self.message_insert.match(sql):
            return "message_insert"
        return None


def _insert_into(table: str) -> re.Pattern[str]:
    quoted = r"[`\"\[]?" + re.escape(table) + r"[`\"\]]?"
    return re.compile(
        r"\s*INSERT\s+(?:OR\s+\w+\s+|IGNORE\s+)?INTO\s+(?:[`\"\[]?\w+[`\"\]]?\.)?"
        + quoted
        + r"(?=[\s(]|$)",
        re.IGNORECASE,
    )


def activate(database: InstrumentedDatabase) -> None:
    """Instrument every engine connected to ``database`` until :func:`deactivate`."""
    target = _made.get(database)
    if target is None:  # made once per database: a clean database serves many tests
        target = _made[database] = _Target(database)
    if target.key is None:
        return
    _install()
    target.checkouts = weakref.WeakKeyDictionary()
    _targets[target.key] = target


def deactivate(database: InstrumentedDatabase) -> list[tuple[int, str]]:
    """Stop instrumenting ``database``; ``(connections, engine URL)`` of engines still holding some."""
    target = _made.get(database)
    if target is None or target.key is None or _targets.get(target.key) is not target:
        return []
    del _targets[target.key]
    held: dict[str, int] = {}
    for handle, url in list(target.checkouts.items()):
        if handle.dbapi_connection is not None:
            held[url] = held.get(url, 0) + 1
    return [(count, url) for url, count in held.items()]


def own_engine(engine: Engine) -> None:
    """Mark an engine the plugin made and counts itself: statements are not counted twice."""
    _own.add(engine)


def _target_of(engine: Engine) -> _Target | None:
    try:
        key = _keys[engine]
    except KeyError:
        key = _keys[engine] = database_key(engine.url)
    return _targets.get(key) if key is not None else None


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Engine, "engine_connect", _on_connect)
        event.listen(Engine, "before_cursor_execute", _before_statement)
        event.listen(Engine, "commit", _before_commit)
        _installed = True


def _on_connect(conn: Any) -> None:
    if not _targets:
        return
    target = _target_of(conn.engine)
    if target is None:
        return
    engine = conn.engine
    if engine not in _own:  # the InstrumentedDatabase counts and closes its own engines
        target.checkouts[conn.connection] = engine.url.render_as_string(hide_password=True)
    if target.settings:
        info = conn.connection.info
        if not info.get(_SETTINGS_DONE):
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                for statement in target.settings:
                    cursor.execute(statement)
            finally:
                cursor.close()
            info[_SETTINGS_DONE] = True


def _before_statement(
    conn: Any, _cursor: Any, statement: str, _parameters: Any, _context: Any, _many: bool
) -> None:
    if not _targets:
        return
    target = _target_of(conn.engine)
    if target is None or isinstance(conn.connection, _AdhocProxiedConnection):
        return  # (SQLAlchemy's own queries while it sets up an engine's first connection)
    database = target.database
    if database._counters and conn.engine not in _own:
        label = f"engine connection {id(conn.connection.dbapi_connection) % 100_000:05d}"
        database._record_store_statement(label, statement)
    _perturb(conn, target, statement, target.step_of(statement))


def _before_commit(conn: Any) -> None:
    if not _targets:
        return
    target = _target_of(conn.engine)
    if target is not None:
        _perturb(conn, target, "COMMIT", "commit")


def _perturb(conn: Any, target: _Target, sql: str, step: str | None) -> None:
    """Apply the test's fault rules and the shake pause to one statement of an engine."""
    by_store = store_steps.get()
    injector = target.database.fault_injector
    if injector is not None:
        action = injector.decide_statement(sql, None if by_store else step)
        if action is not None:
            _apply(conn, action)
            return
    if by_store:
        return
    shaker = shake.active()
    if shaker is not None:
        seconds = shaker.statement_delay()
        if seconds:
            _apply(conn, FaultAction("delay", step or "statement", seconds=seconds))


def _apply(conn: Any, action: FaultAction) -> None:
    asynchronous = conn.dialect.is_async and in_greenlet()
    if action.kind == "fail" or (action.kind == "cancel" and not asynchronous):
        raise InjectedFault(action.step, action.call)
    if action.kind == "delay":
        if asynchronous:
            await_only(asyncio.sleep(action.seconds))
        else:
            time.sleep(action.seconds)
        return
    # cancel, in async code: cancel the task running the statement, as a timeout would.
    task = asyncio.current_task()
    if task is None:
        raise InjectedFault(action.step, action.call)
    task.cancel("cancelled by the fault injector")
    await_only(asyncio.sleep(0))
