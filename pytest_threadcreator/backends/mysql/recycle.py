"""``fresh`` MySQL/MariaDB databases that a test left as it found them, emptied where they are and
handed to a later test.

MySQL cannot rename a database. Giving a used database's tables a new database costs a ``CREATE
DATABASE``, a ``RENAME TABLE`` of every table and a ``DROP DATABASE``: on MariaDB each table's
DDL costs the server about 1 ms (its DDL log, table definition and dictionary are written and
synced), 4–6 ms per test in all, more than a short test takes. So a used database that its test
changed nothing but the rows of keeps its name: it is emptied and handed to a later test. The
tender hands spares out oldest first, and never the one the previous test gave back (see
:class:`~..spares.SpareTender`), so a test's URL differs from the one before it.

When a test is done with its ``fresh`` database, its store pool is trimmed to one connection
(:meth:`Recycler.trim`; it serves the database's next test) and the tender's dropper
(:class:`Recycler`) asks, in one round trip, whether:

1. the registry has it as the run's own (a database it does not have as the run's is never
   touched);
2. a session other than that connection is still on it (one an app left open would see the
   next test's rows): the round trip is made again every 2 ms for up to :data:`RECYCLE_POLLS`
   times (a closed session leaves the server a moment later), then it is dropped;
3. a table of another database has a foreign key into it (emptying it with foreign key checks
   off would leave that table's rows pointing at nothing);
4. it holds a table, view or sequence the template does not, or a routine, trigger or event;

and reads ``SHOW CREATE DATABASE`` of it and of the template, and ``SHOW CREATE TABLE`` of each
of the template's tables in it (an error if the test dropped one). Only if nothing of that
tells it apart from the template (a table's ``AUTO_INCREMENT`` counter apart) does it write to
it: in a second round trip, in one transaction with foreign key checks off, every table is
emptied and the template's seed rows are copied back, and a counter that moved is set back to
the template's (``ALTER TABLE … AUTO_INCREMENT``). Nothing is written into a table before it is
known to be the template's (a ``MERGE`` or ``FEDERATED`` table's rows are another table's).
Anything else, an error included, and the database is dropped, as any used one was before.

The tender's statements wait at most :data:`LOCK_WAIT` seconds for a table's metadata lock; a
drop that gives up is done again when the run ends. What a test changed outside its database
(grants on it, a view elsewhere reading its tables) is not looked at; nor is it when a new
database is made. A template holding a system-versioned table (MariaDB: its history would
survive the emptying) gets no recycler.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from ...store.mysql import quote

__all__ = ["RECYCLE_POLLS", "Recycler", "table_shape"]

#: Seconds the dropper's statements wait for a table's metadata lock (a session the test left
#: inside a transaction on it) before they give up.
LOCK_WAIT = 2

#: Looks (2 ms apart) for the sessions on a used database to be gone before it is emptied.
RECYCLE_POLLS = 50

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
    """Checks a used ``fresh`` database against the template and empties it where it is (see the
    module's docstring)."""

    def __init__(
        self,
        *,
        query: Query,
        owned: str,
        run_id: str,
        template: str,
        tables: Mapping[str, str],
        seeded: Sequence[str],
        foreign_keys: str | None = None,
        routine_tables: bool = False,
    ) -> None:
        """``owned``: the registry's table (quoted); ``tables``: the template's tables, each
        with its ``SHOW CREATE TABLE``; ``seeded``: those holding seed rows; ``foreign_keys``:
        InnoDB's list of foreign keys in ``information_schema`` that this connection may read
        (``INNODB_SYS_FOREIGN`` on MariaDB, ``INNODB_FOREIGN`` on MySQL 8), or None (the much
        slower ``REFERENTIAL_CONSTRAINTS`` is asked instead); ``routine_tables``: whether
        MariaDB's ``mysql.proc`` and ``mysql.event`` may be read (else ``information_schema``'s
        slower views of them are asked)."""
        self._query = query
        self._owned = owned
        self._run_id = run_id
        self._foreign_keys = foreign_keys
        self._routines, self._events = (
            ("mysql.proc WHERE db", "mysql.event WHERE db")
            if routine_tables
            else (
                "information_schema.ROUTINES WHERE ROUTINE_SCHEMA",
                "information_schema.EVENTS WHERE EVENT_SCHEMA",
            )
        )
        self._template = template
        self._shapes = {table: table_shape(create) for table, create in tables.items()}
        self._seeded = list(seeded)
        #: why the last used database tried was refused, None if it came back (for the tests
        #: and a debugger)
        self.last_refusal: str | None = None

    def _inspect_sql(self, used: str) -> tuple[str, tuple[Any, ...]]:
        """One round trip: the server's sessions; why ``used`` is not to be emptied (or NULL);
        its triggers; ``SHOW CREATE DATABASE`` of it and of the template; ``SHOW CREATE TABLE``
        of each of the template's tables in it."""
        if self._foreign_keys is not None:  # InnoDB's own list: names are ``database/table``
            pattern = used.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "/%"
            incoming = (
                f"SELECT 1 FROM information_schema.{self._foreign_keys} "
                "WHERE REF_NAME LIKE %s AND FOR_NAME NOT LIKE %s"
            )
            fk_params: tuple[Any, ...] = (pattern, pattern)
        else:  # opens every table on the server: several milliseconds
            incoming = (
                "SELECT 1 FROM information_schema.REFERENTIAL_CONSTRAINTS "
                "WHERE UNIQUE_CONSTRAINT_SCHEMA = %s AND CONSTRAINT_SCHEMA <> %s"
            )
            fk_params = (used, used)
        why = (
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM "
            f"{self._owned} WHERE name = %s AND run_id = %s) "
            "THEN 'not registered as the run''s own' "
            f"WHEN EXISTS ({incoming}) "
            "THEN 'a foreign key of another database''s table refers to it' "
            "WHEN (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s) <> "
            f"{len(self._shapes)} "
            "THEN 'it holds a table, view or sequence the template does not' "
            f"WHEN EXISTS (SELECT 1 FROM {self._routines} = %s) THEN 'it holds a routine' "
            f"WHEN EXISTS (SELECT 1 FROM {self._events} = %s) THEN 'it holds an event' END"
        )
        # sent with parameters: a % in a name is doubled
        name, template = (quote(n).replace("%", "%%") for n in (used, self._template))
        sql = "; ".join(
            [
                "SHOW PROCESSLIST",
                why,
                f"SHOW TRIGGERS FROM {name}",
                f"SHOW CREATE DATABASE {name}",
                f"SHOW CREATE DATABASE {template}",
                *(f"SHOW CREATE TABLE {name}.{quote(t.replace('%', '%%'))}" for t in self._shapes),
            ]
        )
        return sql, (used, self._run_id, *fk_params, used, used, used)

    def _empty_sql(self, name: str, counters: Sequence[str]) -> str:
        """Sent without parameters."""
        used, template = quote(name), quote(self._template)
        return "; ".join(
            [
                "SET FOREIGN_KEY_CHECKS = 0",
                "START TRANSACTION",
                *(f"DELETE FROM {used}.{quote(t)}" for t in self._shapes),
                *(
                    f"INSERT INTO {used}.{quote(t)} SELECT * FROM {template}.{quote(t)}"
                    for t in self._seeded
                ),
                "COMMIT",
                "SET FOREIGN_KEY_CHECKS = 1",
                *counters,
            ]
        )

    def _verdict(self, name: str, shown: Sequence[Sequence[Any]]) -> tuple[str | None, list[str]]:
        """Why the database's own options or its tables are not the template's (None if they
        are), and the statements setting the tables' counters back; ``shown``: the ``SHOW``
        results of :meth:`_inspect_sql`."""
        (own,), (template,), *tables = shown
        if str(own[1]).replace(quote(name), "", 1) != str(template[1]).replace(
            quote(self._template), "", 1
        ):
            return "the database's own options differ from the template's", []
        counters: list[str] = []
        for table, rows in zip(self._shapes, tables, strict=True):
            shape, counter = table_shape(str(rows[0][1]))
            want, want_counter = self._shapes[table]
            if shape != want:
                return f"the table {table} differs from the template's", []
            if counter != want_counter:
                counters.append(
                    f"ALTER TABLE {quote(name)}.{quote(table)} AUTO_INCREMENT = {want_counter}"
                )
        return None, counters

    #: the store pool of a used database stays open, trimmed to one connection, and serves its
    #: next test: no connection closed and opened again per test
    keeps_handles = True

    async def trim(self, name: str, pool: Any) -> bool:
        """Close every connection of the used database ``name``'s store pool but one (what a
        ready spare holds): False, and nothing closed, if one is still in use. (A connection
        is free only outside a transaction: the pool closes one given back inside one.)"""
        if pool.size != pool.freesize:
            return False
        async with pool.acquire():
            await pool.clear()
        return True

    async def reclaim(self, conn: Any, name: str, handle: Any = None) -> str | None:
        """Check the used database ``name`` and, if it is the template's but for its rows,
        empty it: ``name`` (a spare again), or None when it was refused or a step failed (it is
        then to be dropped, if it is the run's: nothing was written to it, or what was is
        rolled back). The connection :meth:`trim` kept in ``handle`` (its store pool) does not
        count as a session on it."""
        self.last_refusal = None
        own = {conn.thread_id()}
        if handle is not None:  # its one connection, free (no statement opens a new one)
            async with handle.acquire() as kept:
                own.add(kept.thread_id())
        if not self._shapes:
            self.last_refusal = "the template has no table"
            return None
        emptying = False
        try:
            for _ in range(RECYCLE_POLLS):
                sessions, [(refusal,)], triggers, *shown = await self._query(
                    conn, *self._inspect_sql(name)
                )
                if not any(row[3] == name and row[0] not in own for row in sessions):
                    break
                await asyncio.sleep(0.002)  # a closed session leaves the server a moment later
            else:
                self.last_refusal = "a session still on it"
                return None
            if refusal is None and triggers:
                refusal = "it holds a trigger"
            if refusal is not None:
                self.last_refusal = str(refusal)
                return None
            verdict, counters = self._verdict(name, shown)
            if verdict is not None:
                self.last_refusal = verdict
                return None
            emptying = True
            await self._query(conn, self._empty_sql(name, counters), None)
        except Exception as exc:
            self.last_refusal = f"{type(exc).__name__}: {exc}"
            if not conn.connected:  # the dropper stops; the backend drops what is left
                raise
            if emptying:  # no transaction or setting left for the dropper's next job
                with contextlib.suppress(Exception):
                    await self._query(conn, "ROLLBACK", None)
                with contextlib.suppress(Exception):
                    await self._query(conn, "SET FOREIGN_KEY_CHECKS = 1", None)
            if not conn.connected:
                raise
            return None
        return name

    async def check(self, name: str, handle: Any = None) -> bool:
        """True: :meth:`reclaim` checked and emptied ``name`` already."""
        return True
