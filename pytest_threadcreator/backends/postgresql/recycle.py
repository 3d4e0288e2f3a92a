"""``fresh`` databases that a test left as it found them, emptied where they are and handed to a
later test.

A clone of the template costs the server tens of milliseconds to make and as much to drop; most
``fresh`` tests never change the schema. So the template watches for schema changes: an event
trigger (fired by every DDL command, before and after it, also in a transaction rolled back)
advances a sequence in the template's ``threadcreator`` schema. When a test is done with its
clone, its store pool is trimmed to one connection (:meth:`Recycler.trim`), which stays open
for the database's next test, and the tender (:class:`Recycler`) asks the maintenance database
(:data:`SHARED_CHECK`) whether a session other than that one is still on it and whether what
the shared catalogs hold of it changed: a per-database setting, a prepared transaction, its
``pg_database`` row (owner, ACL, connection limit, tablespace). If not, it runs
:func:`recycle_call` on the kept connection (:func:`recycle_sql`'s DO block, as a function
of the template that a session compiles once):

* the sequence never moved, the two event triggers are the template's own and enabled and no
  other came, and the plugin's record of the template's sequences is whole;
* no large object, no index marked by ``CLUSTER`` (a template holding either is never
  recycled);
* every table outside the schema (``alembic_version``, say; not a foreign table) is one the
  template held;

then empties the schema's tables (putting seed rows back, as ``clean`` does), sets every
sequence back to the template's value, and last compares every table outside the schema, and
the seed rows' copies, with a digest of the rows the template held (taken when the watch was
installed, under pinned output settings; a table of more than :data:`DIGEST_ROWS` rows gets
none: outside the schema its clones are then never recycled, a seed copy that big goes
unchecked). So an emptying that reaches outside the schema (a cascading foreign key) is caught
too. Anything else, an error included, rolls it all back and the clone is dropped as before;
the error names the first check that failed. Installing the watch needs a superuser (``CREATE
EVENT TRIGGER``); without one every used clone is dropped. Every clone thus carries the
``threadcreator`` schema and the two event triggers (which do nothing but count). A test that
rewrites that schema's tables by hand can still fool the check.

The database keeps its name, as on MySQL: a rename would have to wait for every session to
leave it, the kept one included, and the next test's first statements would then run on a new
session with cold caches (measured: 10.8–13.7 ms per ``fresh`` test with the rename and a new
connection, 7.2 ms without). The tender never hands a database to the test right after the one
that gave it back (see :class:`~..spares.SpareTender`), so a test's URL differs from the one
before it. A session the test left that connects again by the old URL after the check, while a
later test has the database, would reach that test's database: a test that keeps an engine on
``db.url`` past its end must dispose of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ...store.postgresql_reset import _PREPARER, SEED_SCHEMA, plain_reset_body

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...schema import ThreadSchema

__all__ = ["WATCH_SCHEMA", "Recycler", "install_watch", "recycle_call", "recycle_sql"]

#: Looks (2 ms apart) for the sessions on a used database to be gone before it is checked.
RECYCLE_POLLS = 50
#: Looks (2 ms apart) for the sessions a trim closed to have left the server.
GONE_POLLS = 1000
#: Whether any of the sessions ``$1`` is still on the server.
_STILL_ON = "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = ANY ($1::int[]))"
#: Seconds the check and emptying of a used database may take (a big table, a slow server).
CHECK_TIMEOUT = 5.0

#: The template's schema holding the DDL counter, the sequences' values and the watch's triggers.
WATCH_SCHEMA = "threadcreator"
#: A table outside the schema with more rows than this gets no digest (its clones are dropped).
DIGEST_ROWS = 10_000

_TRIGGERS = ("threadcreator_ddl_start", "threadcreator_ddl_end")
_OURS = f"'{WATCH_SCHEMA}', '{SEED_SCHEMA}', 'pg_catalog', 'information_schema'"
#: Tables (plain or partitioned, not partitions) outside the plugin's and the system's schemas.
_OUTSIDE = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'f') AND NOT c.relispartition "
    f"AND n.nspname NOT IN ({_OURS}) AND n.nspname NOT LIKE 'pg\\_toast%' "
    "AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)
#: The settings a row's text depends on, pinned for this transaction wherever digests are taken.
_PINNED = " ".join(
    f"PERFORM set_config('{name}', '{value}', true);"
    for name, value in (
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO, MDY"),
        ("IntervalStyle", "postgres"),
        ("extra_float_digits", "1"),
        ("bytea_output", "hex"),
    )
)
#: The seed rows' copies (see :func:`copy_seed`), digested like the tables outside the schema.
_SEED_COPIES = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE c.relkind = 'r' AND n.nspname = '{SEED_SCHEMA}'"
)
#: A table's rows, as one md5 (``%s``: the table).
_DIGEST = "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM %s t"


def _install_sql(emptied: str, function: str) -> str:
    """Run on the template (superuser), after everything else was put into it; ``emptied``
    lists the schema's tables (``regclass`` literals), which get no digest; ``function``
    creates the recycle function."""
    not_emptied = f"AND c.oid NOT IN ({emptied})" if emptied else ""
    return f"""
CREATE SCHEMA {WATCH_SCHEMA};
{function}
CREATE SEQUENCE {WATCH_SCHEMA}.ddl MINVALUE 0 START 0;
CREATE TABLE {WATCH_SCHEMA}.sequences (seq oid PRIMARY KEY, last_value bigint, is_called bool);
CREATE TABLE {WATCH_SCHEMA}.triggers (name name PRIMARY KEY, row_xmin text NOT NULL);
CREATE TABLE {WATCH_SCHEMA}.tables (rel oid PRIMARY KEY, digest text NOT NULL);
CREATE FUNCTION {WATCH_SCHEMA}.ddl_seen() RETURNS event_trigger LANGUAGE plpgsql
  SECURITY DEFINER SET search_path = pg_catalog AS
  $f$ BEGIN PERFORM nextval('{WATCH_SCHEMA}.ddl'); END $f$;
DO $d$ DECLARE s oid; r oid; n bigint; BEGIN
  {_PINNED}
  FOR s IN SELECT c.oid FROM pg_class c WHERE c.relkind = 'S'
      AND c.relnamespace <> '{WATCH_SCHEMA}'::regnamespace LOOP
    EXECUTE format('INSERT INTO {WATCH_SCHEMA}.sequences SELECT %s, last_value, is_called FROM %s',
                   s, s::regclass);
  END LOOP;
  FOR r IN {_OUTSIDE} AND c.relkind <> 'f' {not_emptied} UNION ALL {_SEED_COPIES} LOOP
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT {DIGEST_ROWS + 1}) s',
                   r::regclass) INTO n;
    CONTINUE WHEN n > {DIGEST_ROWS};
    EXECUTE format('INSERT INTO {WATCH_SCHEMA}.tables SELECT %s, ({_DIGEST.replace("'", "''")})',
                   r, r::regclass);
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


async def install_watch(conn: Any, schema: ThreadSchema, seeded: Sequence[str]) -> bool:
    """Install the DDL watch, and the recycle function :func:`recycle_call` calls, in the
    template ``conn`` is on; False (nothing done) when the role may not create event
    triggers."""
    if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return False
    await conn.execute(_install_sql(_emptied(schema), _recycle_function_sql(schema, seeded)))
    return True


def recycle_sql(schema: ThreadSchema, seeded: Sequence[str]) -> str:
    """One DO block, run on the used database: raise, naming the first change found, unless the
    database is unchanged but for the schema's rows (see the module's docstring; the database's
    own row is :data:`SHARED_CHECK`'s) and no other session is on it, else empty it and set its
    sequences back (one transaction). A watched template holds the same as a function (see
    :func:`recycle_call`)."""
    return (
        "DO $threadcreator_recycle$ DECLARE why text; BEGIN "
        f"SELECT CASE {_checks(schema)} END INTO why; "
        f"IF why IS NULL THEN {_recycle_body(schema, seeded)} END IF; "
        "IF why IS NOT NULL THEN "
        "RAISE EXCEPTION 'threadcreator: changed since it was cloned: %', why; END IF; "
        "END $threadcreator_recycle$;"
    )


def recycle_call(schema: ThreadSchema) -> str:
    """:func:`recycle_sql` as one statement calling the template's function (made by
    :func:`install_watch`), which a session compiles once: what changed (text), or NULL when
    the database is emptied; the function raises for what only the emptying can find. The
    first checks stay outside the function, so that a test cannot replace them."""
    return f"SELECT CASE {_checks(schema)} ELSE {WATCH_SCHEMA}.recycle() END"


def _recycle_function_sql(schema: ThreadSchema, seeded: Sequence[str]) -> str:
    return (
        f"CREATE FUNCTION {WATCH_SCHEMA}.recycle() RETURNS text LANGUAGE plpgsql AS "
        f"$threadcreator_recycle$ DECLARE why text; BEGIN {_recycle_body(schema, seeded)} "
        "IF why IS NOT NULL THEN "
        "RAISE EXCEPTION 'threadcreator: changed since it was cloned: %', why; END IF; "
        "RETURN NULL; END $threadcreator_recycle$;"
    )


def _checks(schema: ThreadSchema) -> str:
    """``WHEN … THEN 'what changed'`` for each check made before the emptying, first first."""
    emptied = _emptied(schema)
    not_emptied = f" AND c.oid NOT IN ({emptied})" if emptied else ""
    triggers = ", ".join(f"'{name}'" for name in _TRIGGERS)
    checks = {
        "a schema change (DDL)": f"(SELECT last_value <> 0 OR is_called FROM {WATCH_SCHEMA}.ddl)",
        "the watch's event triggers changed, disabled, or others added": (
            f"(SELECT count(*) <> 2 OR count(t.name) <> 2 FROM pg_event_trigger e "
            f"LEFT JOIN {WATCH_SCHEMA}.triggers t ON t.name = e.evtname "
            f"AND t.row_xmin = e.xmin::text AND e.evtenabled = 'A' AND e.evtname IN ({triggers}))"
        ),
        "the plugin's record of the template's sequences": (
            f"(SELECT count(*) FROM {WATCH_SCHEMA}.sequences) <> (SELECT count(*) FROM pg_class "
            f"WHERE relkind = 'S' AND relnamespace <> '{WATCH_SCHEMA}'::regnamespace)"
        ),
        "a large object": "EXISTS (SELECT 1 FROM pg_largeobject_metadata)",
        "an index CLUSTER marked": "EXISTS (SELECT 1 FROM pg_index WHERE indisclustered)",
        "a table outside the schema that the template did not hold": (
            f"EXISTS ({_OUTSIDE}{not_emptied} "
            f"AND c.oid NOT IN (SELECT rel FROM {WATCH_SCHEMA}.tables))"
        ),
    }
    return " ".join(f"WHEN {sql} THEN {_literal(why)}" for why, sql in checks.items())


def _recycle_body(schema: ThreadSchema, seeded: Sequence[str]) -> str:
    """PL/pgSQL (``why`` declared) that empties the database and sets its sequences back, then
    sets ``why`` if a digest differs or another session is on it."""
    # the digests last: the emptying may reach outside the schema (a cascading foreign key)
    return (
        "DECLARE r record; d text; BEGIN "
        f"{plain_reset_body(schema, seeded)} "
        f"PERFORM setval(s.seq::regclass, s.last_value, s.is_called) "
        f"FROM {WATCH_SCHEMA}.sequences s; "
        f"{_PINNED} "
        f"FOR r IN SELECT rel, digest FROM {WATCH_SCHEMA}.tables LOOP "
        f"EXECUTE format({_literal(_DIGEST)}, r.rel::regclass) INTO d; "
        "IF d IS DISTINCT FROM r.digest THEN "
        "why := format('the rows of %s (outside the schema) differ from the template''s', "
        "r.rel::regclass); EXIT; END IF; "
        "END LOOP; "
        # one that came after SHARED_CHECK looked (it is dropped, with its sessions, instead)
        "IF why IS NULL AND EXISTS (SELECT 1 FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend') THEN "
        "why := 'another session came on it'; END IF; "
        "IF why IS NULL AND EXISTS (SELECT 1 FROM pg_prepared_xacts "
        "WHERE database = current_database()) THEN "
        "why := 'a prepared transaction came on it'; END IF; END;"
    )


#: On the maintenance database, before the check ($1 the used database, $2 the template, $3 the
#: pids of the plugin's own sessions on it): whether another session is still on it, and what
#: of it changed that its
#: own row or the server's shared catalogs show (NULL when nothing did).
SHARED_CHECK = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = $1 "
    "AND backend_type = 'client backend' AND pid <> ALL ($3::int[])) AS busy, "
    "CASE WHEN EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_database d "
    "ON d.oid = s.setdatabase WHERE d.datname = $1) THEN 'a database setting' "
    "WHEN EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = $1) "
    "THEN 'a prepared transaction' "
    "WHEN EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = $1 AND (NOT d.datallowconn "
    "OR d.datistemplate OR d.datconnlimit <> -1 OR d.datacl IS NOT NULL "
    "OR d.datdba <> (SELECT oid FROM pg_roles WHERE rolname = session_user) "
    "OR d.dattablespace <> (SELECT dattablespace FROM pg_database WHERE datname = $2))) "
    "THEN 'the database''s own settings (connections, grants, owner or tablespace)' "
    "END AS why"
)


def _emptied(schema: ThreadSchema) -> str:
    """The schema's tables, which the reset empties, as ``regclass`` literals."""
    return ", ".join(
        _literal(str(_PREPARER.format_table(table))) + "::regclass"
        for table in schema.metadata.sorted_tables
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Recycler:
    """Makes a used database a spare again where it is, under the name it has: :meth:`trim`
    keeps one connection of its store pool open for its next test, :meth:`reclaim` makes sure
    no other session is on it and nothing the shared catalogs hold of it changed, and
    :meth:`check` empties it with ``sql`` (:func:`recycle_call`, or :func:`recycle_sql`) on
    that kept connection, whose catalog caches and prepared statements are warm already."""

    def __init__(
        self, sql: str, connect_to: Callable[[str], Awaitable[Any]], template: str
    ) -> None:
        self.sql = sql
        self._connect_to = connect_to
        self._template = template
        #: why the last database refused was refused (for the tests and a debugger)
        self.last_refusal: str | None = None

    #: a used database's store pool stays open, trimmed to one connection, and serves its next
    #: test: no session ended and begun again per test
    keeps_handles = True

    async def trim(self, name: str, pool: Any) -> bool:
        """Close every connection of the used database ``name``'s store pool but one (what a
        ready spare holds): False, and nothing closed, if one is still in use."""
        size = pool.get_size()
        if size < 1 or size != pool.get_idle_size():
            return False
        taken = [await pool.acquire() for _ in range(size)]
        closed = [conn.get_server_pid() for conn in taken[1:]]
        try:
            for conn in taken[1:]:
                await conn.close(timeout=CHECK_TIMEOUT)
            # their server processes must have left before anyone looks for other sessions
            for _ in range(GONE_POLLS):
                if not closed or not await taken[0].fetchval(_STILL_ON, closed):
                    break
                await asyncio.sleep(0.002)
        finally:
            await pool.release(taken[0])
        return bool(pool.get_size() == 1)

    async def reclaim(self, conn: Any, name: str, handle: Any = None) -> str | None:
        """``name`` when the used database may be checked and emptied for a later test, or None
        (to be dropped) when a session other than the one :meth:`trim` kept in ``handle`` (its
        store pool) is still on it or :data:`SHARED_CHECK` finds it changed; ``conn`` is on the
        maintenance database."""
        self.last_refusal = None
        try:
            own: list[int] = []
            if handle is not None:  # its one connection, free
                async with handle.acquire(timeout=CHECK_TIMEOUT) as kept:
                    own.append(kept.get_server_pid())
            # a closed session leaves the server a moment later
            for _ in range(RECYCLE_POLLS):
                row = await conn.fetchrow(SHARED_CHECK, name, self._template, own)
                if not row["busy"]:
                    break
                await asyncio.sleep(0.002)
            else:
                self.last_refusal = "a session still on it"
                return None  # someone still uses it (a connection the test left open)
            if row["why"] is not None:
                self.last_refusal = str(row["why"])
                return None
        except Exception as exc:
            if conn.is_closed():
                raise
            self.last_refusal = f"{type(exc).__name__}: {exc}"
            return None
        return name

    async def check(self, name: str, pool: Any = None) -> bool:
        """True when the used database ``name`` was unchanged but for the schema's rows and
        is now emptied; on a connection of ``pool`` (its kept store pool), else on one of its
        own. False (an error included) means it is to be dropped."""
        try:
            if pool is not None:
                async with pool.acquire(timeout=CHECK_TIMEOUT) as conn:
                    changed = await conn.fetchval(self.sql, timeout=CHECK_TIMEOUT)
            else:
                conn = await self._connect_to(name)
                try:
                    changed = await conn.fetchval(self.sql, timeout=CHECK_TIMEOUT)
                finally:
                    await conn.close(timeout=CHECK_TIMEOUT)
        except Exception as exc:  # changed, or not to be trusted
            self.last_refusal = str(exc)
            return False
        if changed is not None:  # the first checks found it, before the emptying
            self.last_refusal = f"threadcreator: changed since it was cloned: {changed}"
            return False
        return True
