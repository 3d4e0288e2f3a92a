"""What the plugin owns on a PostgreSQL server: names, marks, run locks, and the sweep.

Every name is ``tc_<run>_<worker>_<suffix>`` and at most 63 bytes (PostgreSQL silently
truncates longer identifiers, so long per-worker names would collide):

* ``<run>``: the run id, lowercase letters and digits, never shortened. All xdist workers of one
  pytest run share it; it keys the run's advisory lock (:func:`run_lock_key`), which is how a
  later run tells a crashed run's leftovers from a live run's databases.
* ``<worker>``: the xdist worker id (``gw0``, ``gw123``) or ``master``, never shortened. A
  template that all workers of the run share carries a scope token there instead (``s`` and a
  hash of the schema, see :func:`template_name`).
* ``<suffix>``: ``template`` for a template, else ``<n>_<label>``: a per-worker
  sequence number (unique) and the test's label, cut to fit and suffixed with a short hash of the
  full label when cut, so two long labels stay tellable apart for humans.

A name is no proof of ownership: a user's database may look exactly like one of these. What makes
a database the plugin's is its *mark*, a comment (``COMMENT ON DATABASE``) set right after
``CREATE DATABASE`` that names the run (:func:`ownership_mark`, read back by
:func:`marked_run`). Nothing is ever dropped without it. A kept database gets a note instead
(:func:`kept_note`) that no run reads as a mark.

How a backend behaves on a shared server:

* It only ever drops a database that carries the mark of the run its name says, so a user's
  database that merely looks like the plugin's survives every run, crashed run and sweep.
  (Should a process die between the ``CREATE`` and the ``COMMENT``, an unmarked database of the
  plugin's stays behind; that is the price of never dropping a user's. A run of ``fresh`` tests
  clones ahead all the time (:mod:`..spares`), so a SIGKILL in the middle of one is the likely
  way to leave such a ``tc_…_fresh`` database.)
* Every backend holds a *shared* advisory lock keyed by its run id on its admin connection for
  its whole life. At start it lists the ``tc_`` databases of other runs and drops a run's
  databases only after taking that run's lock *exclusively*, i.e. only when no process of that
  run is alive (a crashed or killed run). Databases of a live run are never touched.
* The template is created, filled (``create_all`` and the setup hook) and then closed to
  connections (``ALLOW_CONNECTIONS false``): a session left on a template makes
  ``CREATE DATABASE … TEMPLATE`` wait and fail.
* With a ``template_key`` the template is the run's, not the worker's: all xdist workers of a run
  (one run id) use one template, built by the first under an advisory lock while the others wait,
  then reused (a finished template is sealed and its mark is followed by its seeded tables).
  At stop a backend drops its own databases, releases its shared run lock and, if it then gets
  the run's lock exclusively, it is the run's last: it drops the template (and anything else of
  the run left on the server). Under xdist the controller holds the run's lock too
  (:class:`RunLock`), so a worker that finishes early never drops the template that a
  late worker still needs; the controller drops it once all workers are done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from typing import Any

from ..._background import BackgroundLoop
from ...errors import BackendUnavailableError
from ...store.postgresql import ADMIN_TIMEOUT, _asyncpg
from ...store.postgresql_reset import _quote
from ..naming import (
    DB_PREFIX,
    MAX_IDENTIFIER_BYTES,
    MAX_RUN_ID,
    ParsedName,
    check_token,
    database_name,
    parse_database_name,
    template_name,
)
from ..run_id import new_run_id
from ..server import short_reason as _short_reason
from .servers import address, async_url, connect_kwargs

__all__ = [
    "DB_PREFIX",
    "MAX_IDENTIFIER_BYTES",
    "TEMPLATE_NOTE",
    "WATCHED_NOTE",
    "ParsedName",
    "RunLock",
    "comment_sql",
    "create_marked",
    "database_name",
    "drop_if_ours",
    "drop_run_if_last",
    "finished_template_seed",
    "is_ours",
    "kept_note",
    "marked_databases",
    "marked_run",
    "new_run_id",
    "ownership_mark",
    "parse_database_name",
    "remove_dead_runs",
    "run_lock_key",
    "template_lock_key",
    "template_name",
]

#: Start of the comment that marks a database as made by the plugin for a run.
_MARK = "pytest-threadcreator database of run "
_MARKED = re.compile(re.escape(_MARK) + r"([a-z0-9]{1,20})(?:;.*)?", re.DOTALL)
#: First half of every advisory lock key the plugin takes ("tc" + 1), second half from the run id.
_LOCK_CLASS = 0x7463_0001
#: First half of the lock that serialises the build of one template ("tc" + 2).
_TEMPLATE_LOCK_CLASS = 0x7463_0002


def run_lock_key(run_id: str) -> tuple[int, int]:
    """The two-int advisory lock key of a run (``pg_advisory_lock(int, int)``).

    Every backend of a live run holds it in *shared* mode on its admin connection; a later run
    may drop the run's databases only if it gets the lock in *exclusive* mode. A hash collision
    between two run ids errs on the safe side (leftovers are kept, never a live run's dropped).
    """
    digest = hashlib.blake2b(run_id.encode(), digest_size=4).digest()
    second = int.from_bytes(digest, "big", signed=True)
    return _LOCK_CLASS, second


def template_lock_key(template: str) -> tuple[int, int]:
    """The advisory lock key that serialises building the template named ``template``.

    Whoever holds it builds the template (or finds it built by another worker of the run and
    reuses it); the others wait for it.
    """
    digest = hashlib.blake2b(template.encode(), digest_size=4).digest()
    return _TEMPLATE_LOCK_CLASS, int.from_bytes(digest, "big", signed=True)


def ownership_mark(run_id: str) -> str:
    """The comment the plugin puts on every database it creates for ``run_id``.

    Only a database that carries it (and a name of :func:`parse_database_name`'s form with the
    same run id) is ever dropped; more may follow after a ``;`` (a finished template's note).
    """
    return _MARK + check_token(run_id, "run id", MAX_RUN_ID)


def marked_run(note: str | None) -> str | None:
    """The run id that a database comment marks the database as the plugin's for, else None."""
    if not note:
        return None
    match = _MARKED.fullmatch(note)
    return match.group(1) if match is not None else None


def kept_note(run_id: str, name: str) -> str:
    """The comment of a database kept by ``--threadcreator-keep``: no mark, so no run drops it."""
    return (
        f"pytest-threadcreator kept this database of run {run_id} (--threadcreator-keep); "
        f'no run drops it: DROP DATABASE "{name}" when done'
    )


#: Follows the mark on a finished shared template; the JSON after it lists the seeded tables.
TEMPLATE_NOTE = "; finished template; seeded tables: "
#: Ends a finished template's note when its clones can be recycled (see :mod:`.recycle`).
WATCHED_NOTE = "; watched for schema changes"


def finished_template_seed(row: Any, run_id: str) -> list[str] | None:
    """The seeded tables of a finished shared template (its ``pg_database`` row), else None."""
    if row is None or row["datallowconn"] or not row["note"]:
        return None
    note = str(row["note"])
    head = ownership_mark(run_id) + TEMPLATE_NOTE
    if not note.startswith(head):
        return None
    try:
        seeded = json.loads(note[len(head) :].removesuffix(WATCHED_NOTE))
    except ValueError:
        return None
    return [str(name) for name in seeded] if isinstance(seeded, list) else None


def comment_sql(name: str, note: str) -> str:
    return f"COMMENT ON DATABASE {_quote(name)} IS '{note.replace(chr(39), chr(39) * 2)}'"


async def create_marked(
    conn: Any, name: str, run_id: str, template: str | None = None, *, file_copy: bool = False
) -> None:
    """``CREATE DATABASE`` and mark it as ``run_id``'s at once (two statements: CREATE DATABASE
    cannot share a transaction, and a clone does not inherit its template's comment).

    ``file_copy`` (PostgreSQL 15 and later): clone with ``STRATEGY FILE_COPY``, which copies the
    template's files instead of writing every block to the WAL but makes the server checkpoint
    twice. Which is quicker depends on the server. Measured on a server with ``fsync`` on: one
    clone at a time, the default ``WAL_LOG`` took 17 ms and ``FILE_COPY`` 57 ms (so a clone a
    test waits for uses ``WAL_LOG``); a clone per test for 100 tests that each change the schema
    took 7.4–8.9 s with ``FILE_COPY`` and 9.5–10.4 s with ``WAL_LOG`` (so the tender's clones use
    ``FILE_COPY``). With ``fsync`` off both took 12 ms.
    """
    clone = f" TEMPLATE {_quote(template)}" if template is not None else ""
    if template is not None and file_copy:
        clone += " STRATEGY FILE_COPY"
    await conn.execute(f"CREATE DATABASE {_quote(name)}{clone}")
    await conn.execute(comment_sql(name, ownership_mark(run_id)))


def is_ours(name: str, note: str | None, run_id: str | None = None) -> bool:
    """True for a database the plugin marked as its own: the mark names the run that the name
    names (and ``run_id``, if given). A name alone never is."""
    parsed = parse_database_name(name)
    run = marked_run(note)
    return parsed is not None and run == parsed.run_id and (run_id is None or run == run_id)


async def marked_databases(conn: Any, prefix: str, run_id: str | None = None) -> list[str]:
    """Names starting with ``prefix`` of the databases the plugin marked as its own."""
    rows = await conn.fetch(
        "SELECT datname, shobj_description(oid, 'pg_database') AS note FROM pg_database "
        "WHERE datname LIKE $1 ORDER BY datname",
        prefix.replace("_", "\\_") + "%",
    )
    return [row["datname"] for row in rows if is_ours(row["datname"], row["note"], run_id)]


async def drop_if_ours(conn: Any, name: str, run_id: str) -> bool:
    """``DROP DATABASE name`` if it carries ``run_id``'s mark; False (nothing done) otherwise."""
    note = await conn.fetchval(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", name
    )
    if not is_ours(name, note, run_id):
        return False
    await conn.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    return True


async def drop_run_if_last(conn: Any, run_id: str) -> list[str]:
    """Drop what is left of ``run_id`` on the server if nobody else of the run is alive.

    ``conn`` holds the run's lock in shared mode and gives it up here; getting the lock
    exclusively then means every other holder (the run's other backends, the xdist controller)
    is gone, so nothing of the run is in use. Returns the problems met.
    """
    key = run_lock_key(run_id)
    await conn.execute("SELECT pg_advisory_unlock_shared($1, $2)", *key)
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
        return []  # another holder is alive: the last one drops it
    problems: list[str] = []
    try:
        for name in await marked_databases(conn, f"{DB_PREFIX}{run_id}_", run_id):
            try:
                await drop_if_ours(conn, name, run_id)
            except Exception as exc:  # collected and reported
                problems.append(f"dropping {name}: {_short_reason(exc)}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)
    return problems


class RunLock:
    """A run's lock on a server, held in shared mode from outside its backends.

    The pytest-xdist controller holds one for the whole run: while it does, no worker's backend
    is the run's last, so the shared template outlives workers that finish early.
    :meth:`release` then drops whatever the run left on the server.
    """

    def __init__(self, url: str, run_id: str) -> None:
        self._connect = connect_kwargs(async_url(url, "the PostgreSQL URL"))
        self.run_id = run_id
        template_name(run_id, "master")  # validates the run id
        self._background = BackgroundLoop("threadcreator-pg-run-lock")
        self._conn: Any = None

    def acquire(self) -> None:
        """Connect and take the run's lock in shared mode; BackendUnavailableError if unreachable."""

        async def take() -> None:
            asyncpg = _asyncpg()
            try:
                conn = await asyncpg.connect(
                    timeout=10,
                    server_settings={"application_name": "pytest-threadcreator"},
                    **dict(self._connect, database="postgres"),
                )
            except Exception as exc:  # becomes one readable line
                raise BackendUnavailableError(
                    f"cannot connect to PostgreSQL at {address(self._connect)}: "
                    f"{_short_reason(exc)}"
                ) from None
            await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(self.run_id))
            self._conn = conn

        try:
            self._background.run(take(), timeout=ADMIN_TIMEOUT)
        except BaseException:
            self._background.close()
            raise

    def release(self) -> list[str]:
        """Give the lock up, drop the run's leftovers if nobody else holds it; the problems met."""
        conn, self._conn = self._conn, None
        if conn is None or self._background.closed:
            return []

        async def finish() -> list[str]:
            try:
                return await drop_run_if_last(conn, self.run_id)
            finally:
                await conn.close(timeout=5)

        try:
            return self._background.run(finish(), timeout=ADMIN_TIMEOUT)
        except Exception as exc:  # reported to the caller
            return [f"releasing the run's lock: {_short_reason(exc)}"]
        finally:
            self._background.close()


async def remove_dead_runs(conn: Any, run_id: str) -> list[str]:
    """Drop the databases of runs other than ``run_id`` whose advisory lock nobody holds (their
    processes died); returns their names.

    Only databases marked as the plugin's own count; kept ones carry no mark.
    """
    dead_runs: set[str] = set()
    for name in await marked_databases(conn, DB_PREFIX):
        parsed = parse_database_name(name)
        if parsed is not None and parsed.run_id != run_id:
            dead_runs.add(parsed.run_id)
    removed: list[str] = []
    for dead in sorted(dead_runs):
        key = run_lock_key(dead)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
            # Held shared by a live run, or exclusively by another backend cleaning that
            # run up right now (xdist workers start together). A shared request waits only
            # for the latter: then try again, so that the run is gone when start() returns.
            await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *key)
            await conn.execute("SELECT pg_advisory_unlock_shared($1, $2)", *key)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", *key):
                continue  # a process of that run is alive
        try:
            # Listed again under the lock: the run's last session may have renamed or created
            # one of its databases (and then let the lock go) after the first listing.
            for name in await marked_databases(conn, f"{DB_PREFIX}{dead}_", dead):
                with contextlib.suppress(Exception):
                    if await drop_if_ours(conn, name, dead):
                        removed.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)
    return removed
