"""``fresh`` databases that a test left as it found them, emptied and renamed for the next one.

A clone of the template costs the server tens of milliseconds to make and as much to drop; most
``fresh`` tests never change the schema. So the template watches for schema changes: an event
trigger (fired by every DDL command, before and after it, also in a transaction rolled back)
advances a sequence in the template's ``threadcreator`` schema. When a test is done with its
clone, the tender runs :func:`recycle_sql`'s statement on it, in one round trip, asking whether it is still the
template's copy in all but rows:

* the sequence never moved, and the two event triggers are the template's own and enabled;
* no large object, no index marked by ``CLUSTER``, no per-database setting, no prepared
  transaction, the database's own row (owner, ACL, connection limit, tablespace) as
  ``CREATE DATABASE`` made it;
* every table that holds rows is one the reset empties (the schema's tables; the plugin's
  ``threadcreator`` and ``threadcreator_seed`` schemas aside).

If so, the same statement empties the schema's tables (putting seed rows back, as ``clean``
does) and sets every sequence back to the template's value; the tender then renames the database
(so a test's URL still changes with each ``fresh`` database) and hands it out again. Anything
else, an error included, means the clone is dropped as before. Installing the watch needs a
superuser (``CREATE EVENT TRIGGER``); without one every used clone is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ...store.postgresql_reset import _PREPARER, SEED_SCHEMA, _quote, _reset_sql

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...schema import ThreadSchema

__all__ = ["WATCH_SCHEMA", "Recycle", "install_watch", "make_recycler", "recycle_sql"]

#: ``recycle(conn, name)``: the used database ``name`` emptied and renamed (its new name), or
#: None when it is to be dropped; ``conn`` is on the maintenance database.
Recycle = Callable[[Any, str], Awaitable[str | None]]

#: Looks (2 ms apart) for the sessions on a used database to be gone before it is renamed.
RECYCLE_POLLS = 50
_SESSIONS_ON = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = $1 "
    "AND backend_type = 'client backend')"
)

#: The template's schema holding the DDL counter, the sequences' values and the watch's triggers.
WATCH_SCHEMA = "threadcreator"

_TRIGGERS = ("threadcreator_ddl_start", "threadcreator_ddl_end")

#: Run on the template (superuser), after everything else was put into it.
_INSTALL = f"""
CREATE SCHEMA {WATCH_SCHEMA};
CREATE SEQUENCE {WATCH_SCHEMA}.ddl MINVALUE 0 START 0;
CREATE TABLE {WATCH_SCHEMA}.sequences (seq oid PRIMARY KEY, last_value bigint, is_called bool);
CREATE TABLE {WATCH_SCHEMA}.triggers (name name PRIMARY KEY, row_xmin text NOT NULL);
CREATE FUNCTION {WATCH_SCHEMA}.ddl_seen() RETURNS event_trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = pg_catalog AS
  $f$ BEGIN PERFORM nextval('{WATCH_SCHEMA}.ddl'); END $f$;
DO $d$ DECLARE s oid; BEGIN
  FOR s IN SELECT c.oid FROM pg_class c WHERE c.relkind = 'S'
      AND c.relnamespace <> '{WATCH_SCHEMA}'::regnamespace LOOP
    EXECUTE format('INSERT INTO {WATCH_SCHEMA}.sequences SELECT %s, last_value, is_called FROM %s',
                   s, s::regclass);
  END LOOP;
END $d$;
CREATE EVENT TRIGGER {_TRIGGERS[0]} ON ddl_command_start EXECUTE FUNCTION {WATCH_SCHEMA}.ddl_seen();
CREATE EVENT TRIGGER {_TRIGGERS[1]} ON ddl_command_end EXECUTE FUNCTION {WATCH_SCHEMA}.ddl_seen();
ALTER EVENT TRIGGER {_TRIGGERS[0]} ENABLE ALWAYS;
ALTER EVENT TRIGGER {_TRIGGERS[1]} ENABLE ALWAYS;
INSERT INTO {WATCH_SCHEMA}.triggers SELECT evtname, xmin::text FROM pg_event_trigger
  WHERE evtname IN ('{_TRIGGERS[0]}', '{_TRIGGERS[1]}');
SELECT setval('{WATCH_SCHEMA}.ddl', 0, false);
"""


async def install_watch(conn: Any) -> bool:
    """Install the DDL watch in the template ``conn`` is on; False (nothing done) when the role
    may not create event triggers."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return False
    await conn.execute(_INSTALL)
    return True


def recycle_sql(schema: ThreadSchema, seeded: Sequence[str], template: str) -> str:
    """One simple-protocol query: raise unless the database is unchanged but for rows (see the
    module's docstring), else empty it and set its sequences back (one transaction)."""
    reset = _reset_sql(schema, seeded)
    emptied = ", ".join(
        "'" + _quoted(table).replace("'", "''") + "'::regclass"
        for table in schema.metadata.sorted_tables
    )
    kept = f"c.oid NOT IN ({emptied}) AND " if emptied else ""
    ours = f"'{WATCH_SCHEMA}', '{SEED_SCHEMA}', 'pg_catalog', 'information_schema'"
    triggers = ", ".join(f"'{name}'" for name in _TRIGGERS)
    changed = " OR ".join(
        [
            f"(SELECT last_value <> 0 OR is_called FROM {WATCH_SCHEMA}.ddl)",
            "(SELECT count(*) FROM pg_event_trigger) <> 2",
            f"(SELECT count(*) FROM pg_event_trigger e JOIN {WATCH_SCHEMA}.triggers t "
            f"ON t.name = e.evtname AND t.row_xmin = e.xmin::text WHERE e.evtenabled = 'A' "
            f"AND e.evtname IN ({triggers})) <> 2",
            "EXISTS (SELECT 1 FROM pg_largeobject_metadata)",
            "EXISTS (SELECT 1 FROM pg_index WHERE indisclustered)",  # CLUSTER … USING
            "EXISTS (SELECT 1 FROM pg_db_role_setting WHERE setdatabase = d.oid)",
            "EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database())",
            "NOT d.datallowconn OR d.datistemplate OR d.datconnlimit <> -1 OR d.datacl IS NOT NULL",
            "d.datdba <> (SELECT oid FROM pg_roles WHERE rolname = session_user)",
            "d.dattablespace <> (SELECT dattablespace FROM pg_database WHERE datname = "
            + _literal(template)
            + ")",
            "EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p', 'm', 'f') AND {kept}n.nspname NOT IN ({ours}) "
            "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%')",
        ]
    )
    check = (
        "DO $threadcreator_check$ BEGIN IF EXISTS (SELECT 1 FROM pg_database d "
        f"WHERE d.datname = current_database() AND ({changed})) THEN "
        "RAISE EXCEPTION 'threadcreator: changed since it was cloned'; END IF; "
        "END $threadcreator_check$;"
    )
    sequences = (
        f"SELECT count(setval(s.seq::regclass, s.last_value, s.is_called)) "
        f"FROM {WATCH_SCHEMA}.sequences s;"
    )
    return f"{check} {reset.rstrip(';')}; {sequences}"


def _quoted(table: Any) -> str:
    return str(_PREPARER.format_table(table))


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def make_recycler(
    sql: str, connect_to: Callable[[str], Awaitable[Any]], next_name: Callable[[], str]
) -> Recycle:
    """A :data:`Recycle` running ``sql`` (:func:`recycle_sql`) on the used database, on a
    connection of ``connect_to(name)``; the new name from ``next_name()``."""

    async def recycle(conn: Any, name: str) -> str | None:
        try:
            used = await connect_to(name)
            try:
                await used.execute(sql)
            finally:
                await used.close(timeout=5)
        except Exception:  # changed, or not to be trusted: dropped
            return None
        try:
            # a closed session leaves the server a moment later; RENAME would wait 100 ms
            for _ in range(RECYCLE_POLLS):
                if not await conn.fetchval(_SESSIONS_ON, name):
                    break
                await asyncio.sleep(0.002)
            else:
                return None  # someone still uses it (a connection the test left open)
            new = next_name()
            await conn.execute(f"ALTER DATABASE {_quote(name)} RENAME TO {_quote(new)}")
        except Exception:
            if conn.is_closed():
                raise
            return None
        return new

    return recycle
