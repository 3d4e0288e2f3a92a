"""``fresh`` MySQL/MariaDB databases that a test left as it found them, moved into a new database
for the next test instead of being dropped.

MySQL cannot rename a database, but ``RENAME TABLE a.t TO b.t`` moves a table into another
database without copying it (InnoDB renames its file and updates the foreign keys that name it).
Making a database per test costs the server a ``CREATE DATABASE`` with one new InnoDB file per
table (about 9 ms here) and later a ``DROP DATABASE`` (about 3.5 ms); moving a used database's
tables costs about 3.5 ms. So when a test is done with its ``fresh`` database, the tender's
dropper (:class:`Recycler`) sends, in one round trip:

1. ``CREATE DATABASE`` with the next spare's name, and its registry row (the mark, as for any
   database of the plugin, so a run killed from here on leaves nothing that is not swept);
2. ``RENAME TABLE`` of every table the template has, from the used database into the new one
   (it fails, and the used database is dropped as before, if the test dropped one of them or
   gave one a trigger: a trigger cannot change database);
3. ``DROP DATABASE`` of the used one, with whatever else the test made in it (tables, views,
   routines, events: none of it follows);
4. ``SHOW CREATE TABLE`` of each moved table, which :meth:`Recycler.check` compares with the
   template's (columns, indexes, foreign keys, engine, charset, options; the ``AUTO_INCREMENT``
   counter apart);
5. in one transaction, with foreign key checks off: the used database's registry row goes, every
   moved table is emptied and the template's seed rows are copied back.

A moved table whose counter moved gets the template's back (``ALTER TABLE … AUTO_INCREMENT``).
A database whose tables differ from the template's is dropped by the tender, and one whose move
failed anywhere is dropped with the used one. The dropper's statements wait at most
:data:`LOCK_WAIT` seconds for a table's metadata lock: a session the test left inside a
transaction on a table fails the move, and the drop after it, which the backend retries when it
stops. What a test changed outside its database (grants on it, say) is not looked at; nor is it
when a new database is made.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..store.mysql import quote

__all__ = ["Recycler", "table_shape"]

#: Seconds the dropper's statements wait for a table's metadata lock (a session the test left
#: inside a transaction on it) before they give up: the move fails and the database is dropped.
LOCK_WAIT = 2

_COUNTER = re.compile(r" AUTO_INCREMENT=(\d+)")

#: ``query(conn, sql, params)``: every result set of ``sql``'s statements that has rows' shape
#: (``SELECT``, ``SHOW``), in order.
Query = Callable[[Any, str, tuple[Any, ...]], Awaitable[list[list[Any]]]]


def table_shape(create: str) -> tuple[str, int]:
    """``SHOW CREATE TABLE``'s text without the ``AUTO_INCREMENT`` counter, and the counter (1
    when the text shows none: a table whose counter never moved)."""
    found = _COUNTER.search(create)
    return _COUNTER.sub("", create), int(found.group(1)) if found else 1


class Recycler:
    """Moves a used ``fresh`` database's tables into a new, registered database, empties them and
    checks them against the template (see the module's docstring)."""

    def __init__(
        self,
        *,
        query: Query,
        drop: Callable[[Any, str], Awaitable[object]],
        next_name: Callable[[], str],
        register: str,
        unregister: str,
        owner: tuple[str, str],
        template: str,
        tables: Mapping[str, str],
        seeded: Sequence[str],
    ) -> None:
        """``register``: the SQL making a database and its registry row (``{name}`` the quoted
        name; parameters: name, run, worker); ``unregister``: the SQL deleting a registry row
        (parameter: name); ``owner``: (run, worker); ``tables``: the template's tables, each with
        its ``SHOW CREATE TABLE``; ``seeded``: those holding seed rows; ``drop(conn, name)``
        drops a database if it carries the run's mark."""
        self._query = query
        self._drop = drop
        self._next_name = next_name
        self._register = register
        self._unregister = unregister
        self._owner = owner
        self._template = template
        self._shapes = {table: table_shape(create) for table, create in tables.items()}
        self._seeded = list(seeded)
        #: verdicts of moved databases not checked yet: None if fit, else why not
        self._verdicts: dict[str, str | None] = {}
        #: why the last used database tried was refused, None if it came back (for the tests
        #: and a debugger)
        self.last_refusal: str | None = None

    def _move_sql(self, used: str, new: str) -> str:
        # sent with parameters: a % in a name is doubled
        tables = [table.replace("%", "%%") for table in self._shapes]
        old, fresh, template = (quote(n).replace("%", "%%") for n in (used, new, self._template))
        moves = ", ".join(f"{old}.{quote(t)} TO {fresh}.{quote(t)}" for t in tables)
        shows = [f"SHOW CREATE TABLE {fresh}.{quote(t)}" for t in tables]
        empties = [f"DELETE FROM {fresh}.{quote(t)}" for t in tables]
        seeds = [
            f"INSERT INTO {fresh}.{quote(t)} SELECT * FROM {template}.{quote(t)}"
            for t in (table.replace("%", "%%") for table in self._seeded)
        ]
        return "; ".join(
            [
                f"SET SESSION lock_wait_timeout = {LOCK_WAIT}",
                self._register.format(name=fresh),
                f"RENAME TABLE {moves}",
                f"DROP DATABASE {old}",
                *shows,
                "SET FOREIGN_KEY_CHECKS = 0",
                "START TRANSACTION",
                self._unregister,
                *empties,
                *seeds,
                "COMMIT",
                "SET FOREIGN_KEY_CHECKS = 1",
            ]
        )

    async def rename(self, conn: Any, name: str) -> str | None:
        """Move the used database ``name``'s tables into a new database, emptied: the new one's
        name, or None (nothing of the new one left) when that failed; ``name`` is then to be
        dropped (it may be gone already)."""
        if not self._shapes:
            return None
        new = self._next_name()
        self.last_refusal = None
        try:
            shown = await self._query(conn, self._move_sql(name, new), (new, *self._owner, name))
            verdict = None
            counters: list[str] = []
            for table, rows in zip(self._shapes, shown, strict=True):
                shape, counter = table_shape(str(rows[0][1]))
                want, want_counter = self._shapes[table]
                if shape != want:
                    verdict = f"the table {table} differs from the template's"
                    break
                if counter != want_counter:
                    counters.append(
                        f"ALTER TABLE {quote(new)}.{quote(table)} AUTO_INCREMENT = {want_counter}"
                    )
            if verdict is None and counters:
                await self._query(conn, "; ".join(counters), ())
        except Exception as exc:
            self.last_refusal = f"{type(exc).__name__}: {exc}"
            if conn.connected:  # no transaction or setting left for the dropper's next job
                with contextlib.suppress(Exception):  # what is left is dropped at stop
                    await self._query(conn, "ROLLBACK; SET FOREIGN_KEY_CHECKS = 1", ())
                    await self._drop(conn, new)
            if not conn.connected:  # the dropper stops; the backend drops what is left
                raise
            return None
        self._verdicts[new] = verdict
        return new

    async def check(self, name: str, handle: Any = None) -> bool:
        """Whether the moved database ``name`` has the template's tables (emptied by
        :meth:`rename` already); False means the tender drops it."""
        verdict = self._verdicts.pop(name, "never moved")
        if verdict is not None:
            self.last_refusal = verdict
        return verdict is None
