"""``fresh`` MySQL/MariaDB databases that a test left as it found them, moved into a new database
for the next test instead of being dropped.

MySQL cannot rename a database, but ``RENAME TABLE a.t TO b.t`` moves a table into another
database without copying it (InnoDB renames its file and updates the foreign keys that name it).
Making a database per test costs the server a ``CREATE DATABASE`` with one new InnoDB file per
table (about 9 ms here) and later a ``DROP DATABASE`` (about 3.5 ms); moving a used database's
tables costs about 3.5 ms. So when a test is done with its ``fresh`` database, the tender's
dropper (:class:`Recycler`):

1. asks whether the used database is registered as the run's own (a database the registry does
   not have as the run's is never touched) and whether a table of another database has a
   foreign key into it (``RENAME TABLE`` would point that key at the moved table, changing a
   table the plugin did not make): if either, it is dropped as before (if it is the run's);
2. sends, in one round trip: ``CREATE DATABASE`` with the next spare's name and its registry
   row (the mark, as for any database of the plugin, so a run killed from here on leaves
   nothing that is not swept); ``RENAME TABLE`` of every table the template has, from the used
   database into the new one (it fails, and the used database is dropped as before, if the
   test dropped one of them or gave one a trigger: a trigger cannot change database); ``DROP
   DATABASE`` of the used one with whatever else the test made in it (tables, views, routines,
   events: none of it follows), and its registry row; ``SHOW CREATE TABLE`` of each moved
   table;
3. compares each with the template's (columns, indexes, foreign keys, engine, charset, options;
   the ``AUTO_INCREMENT`` counter apart): a database whose tables differ is dropped, and
   nothing is written into it first (a ``MERGE`` or ``FEDERATED`` table's rows are another
   table's);
4. else, in one round trip: in one transaction with foreign key checks off, every moved table
   is emptied and the template's seed rows are copied back; a counter that moved is set back to
   the template's (``ALTER TABLE … AUTO_INCREMENT``).

A database whose move failed anywhere is dropped with the used one. The tender's statements
wait at most :data:`LOCK_WAIT` seconds for a table's metadata lock (a session the test left
inside a transaction on a table): the move gives up, the drop after it too, and the backend
drops the database when the run ends. What a test changed outside its database (grants on it,
say) is not looked at; nor is it when a new database is made. A template holding a
system-versioned table (MariaDB: its history would survive the emptying) gets no recycler.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ...store.mysql import quote

__all__ = ["Recycler", "table_shape"]

#: Seconds the dropper's statements wait for a table's metadata lock (a session the test left
#: inside a transaction on it) before they give up: the move fails and the database is dropped.
LOCK_WAIT = 2

_COUNTER = re.compile(r" AUTO_INCREMENT=(\d+)")

#: ``query(conn, sql, params)``: every result set of ``sql``'s statements that has rows' shape
#: (``SELECT``, ``SHOW``), in order (``params`` None: a % in ``sql`` is sent as it is).
Query = Callable[[Any, str, tuple[Any, ...] | None], Awaitable[list[list[Any]]]]


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
        owned: str,
        owner: tuple[str, str],
        template: str,
        tables: Mapping[str, str],
        seeded: Sequence[str],
        foreign_keys: str | None = None,
    ) -> None:
        """``register``: the SQL making a database and its registry row (``{name}`` the quoted
        name; parameters: name, run, worker); ``owned``: the registry's table (quoted);
        ``owner``: (run, worker); ``tables``: the template's tables, each with its ``SHOW
        CREATE TABLE``; ``seeded``: those holding seed rows; ``drop(conn, name)`` drops a
        database if it carries the run's mark; ``foreign_keys``: InnoDB's list of
        foreign keys in ``information_schema`` that this connection may read
        (``INNODB_SYS_FOREIGN`` on MariaDB, ``INNODB_FOREIGN`` on MySQL 8), or None (the much
        slower ``REFERENTIAL_CONSTRAINTS`` is asked instead)."""
        self._query = query
        self._drop = drop
        self._next_name = next_name
        self._register = register
        self._owned = owned
        self._foreign_keys = foreign_keys
        self._owner = owner
        self._template = template
        self._shapes = {table: table_shape(create) for table, create in tables.items()}
        self._seeded = list(seeded)
        #: verdicts of moved databases not checked yet: None if fit, else why not
        self._verdicts: dict[str, str | None] = {}
        #: why the last used database tried was refused, None if it came back (for the tests
        #: and a debugger)
        self.last_refusal: str | None = None

    def _refusal(self, used: str) -> tuple[str, tuple[Any, ...]]:
        """Why the used database is not to be moved (or NULL), and its parameters: a database
        the registry does not have as the run's is never touched, and a foreign key of another
        database's table into it would follow the move."""
        if self._foreign_keys is not None:  # InnoDB's own list: names are ``database/table``
            pattern = used.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "/%"
            incoming = (
                f"SELECT 1 FROM information_schema.{self._foreign_keys} "
                "WHERE REF_NAME LIKE %s AND FOR_NAME NOT LIKE %s"
            )
            params: tuple[Any, ...] = (pattern, pattern)
        else:  # opens every table on the server: several milliseconds
            incoming = (
                "SELECT 1 FROM information_schema.REFERENTIAL_CONSTRAINTS "
                "WHERE UNIQUE_CONSTRAINT_SCHEMA = %s AND CONSTRAINT_SCHEMA <> %s"
            )
            params = (used, used)
        sql = (
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM "
            f"{self._owned} WHERE name = %s AND run_id = %s) "
            "THEN 'not registered as the run''s own' "
            f"WHEN EXISTS ({incoming}) "
            "THEN 'a foreign key of another database''s table refers to it' END"
        )
        return sql, (used, self._owner[0], *params)

    def _move_sql(self, used: str, new: str) -> str:
        """Parameters: the new name, the run, the worker, the used name."""
        # sent with parameters: a % in a name is doubled
        tables = [table.replace("%", "%%") for table in self._shapes]
        old, fresh = (quote(n).replace("%", "%%") for n in (used, new))
        moves = ", ".join(f"{old}.{quote(t)} TO {fresh}.{quote(t)}" for t in tables)
        return "; ".join(
            [
                self._register.format(name=fresh),
                f"RENAME TABLE {moves}",
                f"DROP DATABASE {old}",
                f"DELETE FROM {self._owned} WHERE name = %s",
                *(f"SHOW CREATE TABLE {fresh}.{quote(t)}" for t in tables),
            ]
        )

    def _empty_sql(self, new: str, counters: Sequence[str]) -> str:
        """Sent without parameters."""
        fresh, template = quote(new), quote(self._template)
        return "; ".join(
            [
                "SET FOREIGN_KEY_CHECKS = 0",
                "START TRANSACTION",
                *(f"DELETE FROM {fresh}.{quote(t)}" for t in self._shapes),
                *(
                    f"INSERT INTO {fresh}.{quote(t)} SELECT * FROM {template}.{quote(t)}"
                    for t in self._seeded
                ),
                "COMMIT",
                "SET FOREIGN_KEY_CHECKS = 1",
                *counters,
            ]
        )

    def _verdict(self, new: str, shown: Sequence[Sequence[Any]]) -> tuple[str | None, list[str]]:
        """Why the moved tables are not the template's (None if they are), and the statements
        setting their counters back."""
        counters: list[str] = []
        for table, rows in zip(self._shapes, shown, strict=True):
            shape, counter = table_shape(str(rows[0][1]))
            want, want_counter = self._shapes[table]
            if shape != want:
                return f"the table {table} differs from the template's", []
            if counter != want_counter:
                counters.append(
                    f"ALTER TABLE {quote(new)}.{quote(table)} AUTO_INCREMENT = {want_counter}"
                )
        return None, counters

    async def rename(self, conn: Any, name: str) -> str | None:
        """Move the used database ``name``'s tables into a new database and, if they are the
        template's, empty them: the new one's name (:meth:`check` tells whether it is a spare
        again), or None (nothing of the new one left) when the move was refused or failed;
        ``name`` is then to be dropped if it is still there."""
        self.last_refusal = None
        if not self._shapes:
            self.last_refusal = "the template has no table"
            return None
        new: str | None = None
        emptying = False
        try:
            [[(refusal,)]] = await self._query(conn, *self._refusal(name))
            if refusal is not None:
                self.last_refusal = str(refusal)
                return None
            new = self._next_name()
            shown = await self._query(conn, self._move_sql(name, new), (new, *self._owner, name))
            # nothing is written into a moved table before it is known to be the template's (a
            # MERGE or FEDERATED table's rows are another table's)
            verdict, counters = self._verdict(new, shown)
            if verdict is None:
                emptying = True
                await self._query(conn, self._empty_sql(new, counters), None)
        except Exception as exc:
            self.last_refusal = f"{type(exc).__name__}: {exc}"
            if not conn.connected:  # the dropper stops; the backend drops what is left
                raise
            if emptying:  # no transaction or setting left for the dropper's next job
                with contextlib.suppress(Exception):
                    await self._query(conn, "ROLLBACK", None)
                with contextlib.suppress(Exception):
                    await self._query(conn, "SET FOREIGN_KEY_CHECKS = 1", None)
            if new is not None:
                with contextlib.suppress(Exception):  # else it is dropped when the run ends
                    await self._drop(conn, new)
            if not conn.connected:
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
