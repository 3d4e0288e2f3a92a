"""MySQL/MariaDB backend: per-test databases on a server named by URL.

``--threadcreator-db=mysql+asyncmy://user@host:3306/`` (or ``mysql+aiomysql://``,
``mariadb+asyncmy://``; checked by :mod:`.urls`). What the plugin owns on the server, and how
it tells (:mod:`.janitor`):

* Names are shared with PostgreSQL (:func:`~..naming.database_name`: ``tc_<run>_<worker>_…``,
  at most 63 characters, within MySQL's 64).
* MySQL has no database comments, so the *mark* is a row in a registry the plugin owns,
  written in the same round trip right after the ``CREATE DATABASE``. Nothing is ever dropped
  without its row; a database whose name merely looks like the plugin's is never touched
  (should a process die between the two, an unregistered database of the plugin's stays: the
  price of never dropping a user's; with ``fresh`` tests the tender makes databases ahead all
  the time, so a SIGKILL in the middle of one is the likely way to leave one). A kept database
  loses its row.
* Each backend holds a named lock (``GET_LOCK``) for its run and worker on its admin connection
  for its whole life; the server frees it when the process dies. At start a backend drops the
  registered databases of every (run, worker) whose lock is free (a crashed or killed run),
  taking that lock itself while it does so that two sweepers never race (and, since the dead
  process's tender connections held no lock, after any statement of theirs still running on
  the server has ended: the registry is read again then).
* The schema is built once per worker into a template database (``create_all`` and the setup
  hook); its DDL (``SHOW CREATE TABLE``) is captured and replayed into every new database in
  the same round trip as its ``CREATE DATABASE`` (``CREATE TABLE … LIKE`` would lose the
  foreign keys). Every database is ``utf8mb4`` with InnoDB tables.
* ``fresh`` databases are made ahead by a :class:`~..spares.SpareTender` on connections of its
  own (registered like any other: a killed run's spares are swept too), each with its store's
  pool connected, so a ``fresh`` test takes one that is ready. MySQL cannot rename a database,
  so the tender moves a used one's tables into a new database, empties them and checks them
  against the template (:mod:`.recycle`): one the test changed beyond its rows is dropped. A
  kept ``fresh`` database keeps its spare's name (``…_fresh``).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..._background import BackgroundLoop
from ...database import Database
from ...errors import BackendUnavailableError, ConfigurationError, DatabaseError
from ...store.mysql import (
    ADMIN_TIMEOUT,
    MULTI_STATEMENTS,
    MySqlStore,
    asyncmy_module,
    close_pool,
    open_pool,
    quote,
)
from ..base import BackendRequest
from ..naming import database_name, normalise_worker_id, template_name
from ..pools import PoolPlan, plan_pools, worker_count
from ..server import ServerBackend, short_reason
from ..spares import SpareTender
from .janitor import (
    CHARSET,
    OWNED,
    REGISTER,
    REGISTRY,
    create_registry,
    drop_if_ours,
    foreign_keys_view,
    is_closed,
    lock_name,
    query,
    remove_dead_runs,
    results,
    routine_tables_readable,
)
from .recycle import LOCK_WAIT, Recycler
from .urls import connect_kwargs, engine_driver, mysql_url

if TYPE_CHECKING:
    from ...schema import ThreadSchema

__all__ = ["NAME", "MySqlBackend", "make"]

#: ``Database.backend`` of its databases
NAME = "mysql"


class MySqlBackend(ServerBackend):
    """Databases on a MySQL/MariaDB server, from a per-worker template's DDL."""

    name = "mysql"
    label = "MySQL"
    admin_timeout = ADMIN_TIMEOUT

    def __init__(
        self,
        url: str,
        *,
        run_id: str,
        worker_id: str = "master",
        pool_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        self._url = mysql_url(url, "--threadcreator-db")
        self.run_id = run_id
        self.worker_id = normalise_worker_id(worker_id)
        self.template = template_name(run_id, self.worker_id)  # validates both ids
        self.pool_size = pool_size
        self.workers = workers if workers is not None else worker_count()
        self._connect = connect_kwargs(self._url)
        self._init_server(BackgroundLoop(f"threadcreator-mysql-{self.worker_id}"))
        self.plan: PoolPlan | None = None
        self.version = ""
        self._schema: ThreadSchema | None = None
        self._ddl = ""
        #: the template's tables, each with its ``SHOW CREATE TABLE``
        self._tables: dict[str, str] = {}
        self._seeded: list[str] = []
        #: whether the template holds a system-versioned table (MariaDB): never recycled
        self._versioned = False
        #: InnoDB's list of foreign keys, if this user may read it (see :func:`foreign_keys_view`)
        self._foreign_keys: str | None = None
        #: whether ``mysql.proc`` and ``mysql.event`` are readable (MariaDB; see .recycle)
        self._routine_tables = False
        self._counter = 0
        #: names dropped by this backend's sweep of dead runs at start
        self.swept: list[str] = []

    def __repr__(self) -> str:
        return f"<MySqlBackend run={self.run_id} worker={self.worker_id}>"

    @property
    def address(self) -> str:
        return f"{self._connect['host']}:{self._connect['port']}"

    def describe(self) -> str:
        """E.g. ``mysql (127.0.0.1:3306, 10.11.6-MariaDB)``."""
        return f"mysql ({self.address}, {self.version or '?'})"

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Reach the server, take the run's lock, remove dead runs' databases."""
        if self._started:
            return
        if self._stopped:
            raise BackendUnavailableError("this MySQL backend was stopped; make a new one")
        asyncmy_module()
        engine_driver(self._url)
        try:
            self._background.run(self._open_admin(), timeout=ADMIN_TIMEOUT)
        except BaseException:
            self._shutdown(strict=False)
            raise
        self._started = True
        atexit.register(self._stop_at_exit)

    async def _connect_admin(self) -> Any:
        try:
            return await asyncmy_module().connect(
                autocommit=True,
                charset="utf8mb4",
                client_flag=MULTI_STATEMENTS,
                connect_timeout=10,
                **self._connect,
            )
        except Exception as exc:  # becomes one readable line
            raise BackendUnavailableError(
                f"cannot connect to MySQL/MariaDB at {self.address} as {self._connect['user']}: "
                f"{type(exc).__name__}: {exc}. Check that the server runs and the URL (user, "
                "password, host, port) is right"
            ) from None

    async def _open_admin(self) -> None:
        self._admin_lock = asyncio.Lock()
        conn = self._admin = await self._connect_admin()
        rows = await query(conn, "SELECT VERSION(), @@max_connections")
        self.version = str(rows[0][0])
        self.plan = plan_pools(
            int(rows[0][1]),
            reserved=1,
            workers=self.workers,
            requested=self.pool_size,
            server="MySQL",
            remedy="or use another server (SET GLOBAL max_connections raises it until a restart)",
        )
        held = await query(conn, "SELECT GET_LOCK(%s, 0)", (self._lock,))
        if held[0][0] != 1:
            raise BackendUnavailableError(
                f"MySQL at {self.address}: the lock {self._lock} is held by another session; "
                "two backends of one run and worker cannot share a server"
            )
        await create_registry(conn)
        self.swept = await remove_dead_runs(conn, self.run_id, self.worker_id)
        self._foreign_keys = await foreign_keys_view(conn)
        self._routine_tables = await routine_tables_readable(conn)

    @property
    def _lock(self) -> str:
        return lock_name(self.run_id, self.worker_id)

    # -- template ------------------------------------------------------------------------------
    def prepare_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Build the worker's template (``create_all``, ``setup``) and capture its DDL."""
        self._retire_spares()  # copies of an earlier template must not be handed out
        self._schema = schema
        self._ddl = ""

        async def create(conn: Any) -> None:
            await drop_if_ours(conn, self.template, self.run_id)
            await self._create_registered(conn, self.template, "")

        self._admin_run(create)
        self._background.run(self._create_all(schema), timeout=ADMIN_TIMEOUT)
        if setup is not None:
            database = self._open(self.template, label="template", isolation="template")
            try:
                setup(database)
            finally:
                database.close()

        async def capture(conn: Any) -> None:
            tables = await query(
                conn,
                "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = %s AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') "
                "ORDER BY TABLE_NAME",
                (self.template,),
            )
            created: dict[str, str] = {}
            seeded: list[str] = []
            # MariaDB's system-versioned tables: their history would survive a recycle's emptying
            self._versioned = any(kind == "SYSTEM VERSIONED" for _, kind in tables)
            for table, _ in tables:
                full = f"{quote(self.template)}.{quote(str(table))}"
                created[str(table)] = str((await query(conn, f"SHOW CREATE TABLE {full}"))[0][1])
                if await query(conn, f"SELECT 1 FROM {full} LIMIT 1"):
                    seeded.append(str(table))
            # foreign key checks stay off for the seed's copy
            self._ddl = "; ".join(["SET FOREIGN_KEY_CHECKS = 0", *created.values()])
            self._tables = created
            self._seeded = seeded

        self._admin_run(capture)

    async def _create_all(self, schema: ThreadSchema) -> None:
        url = self._url.set(database=self.template, query={"charset": "utf8mb4"})
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(schema.metadata.create_all)
                names = await conn.run_sync(lambda c: sa_inspect(c).get_table_names())
                for table in names:  # whatever the schema says, InnoDB (foreign keys) and utf8mb4
                    await conn.exec_driver_sql(
                        f"ALTER TABLE {quote(table)} ENGINE=InnoDB, CONVERT TO {CHARSET}"
                    )
                for table, column, nullable in _json_columns(schema):
                    shown = await conn.exec_driver_sql(f"SHOW CREATE TABLE {quote(table)}")
                    if f"json_valid({quote(column)})" not in str(list(shown.one())[1]):
                        continue  # MySQL's own JSON type: nesting up to 100 levels
                    # MariaDB's JSON is LONGTEXT CHECK (json_valid(…)), which refuses more than
                    # 32 levels of nesting; the plugin promises 100 on every backend (it writes
                    # only JSON it serialised itself), so the column keeps LONGTEXT without it.
                    await conn.exec_driver_sql(
                        f"ALTER TABLE {quote(table)} MODIFY {quote(column)} LONGTEXT "
                        f"CHARACTER SET utf8mb4 COLLATE utf8mb4_bin {'NULL' if nullable else 'NOT NULL'}"
                    )
        finally:
            await engine.dispose()

    async def _create_registered(self, conn: Any, name: str, then: str) -> None:
        """``CREATE DATABASE``, its registry row, then ``then``, in one round trip."""
        if await query(
            conn, "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (name,)
        ):
            raise DatabaseError(
                f"MySQL at {self.address}: a database named {name} exists but is not in "
                f"{REGISTRY}, so it is not the plugin's to drop; if it is a leftover of a run "
                f"that died while creating it, drop it by hand (DROP DATABASE `{name}`) and run "
                "again"
            )
        sql = REGISTER.format(name=quote(name))
        if then:  # sent with parameters: a % of its own (a comment's, a default's) is doubled;
            # back on the registry's database after: a session on the new one keeps the tender
            # from recycling it when its test is done
            sql += f"; USE {quote(name)}; {then.replace('%', '%%')}; USE {quote(REGISTRY)}"
        await query(conn, sql, (name, self.run_id, self.worker_id))

    # -- databases -----------------------------------------------------------------------------
    def create_database(self, label: str, *, isolation: str) -> Database:
        """``CREATE DATABASE tc_<run>_<worker>_<n>_<label>`` with the template's tables.

        A ``fresh`` database is one the tender made ahead (named ``…_<n>_fresh``), with its
        store's pool already connected, when one is ready or being made; it is made on demand
        otherwise (named ``…_<n>_fresh`` too: it may serve a later test)."""
        if self._schema is None:
            raise ConfigurationError("prepare_template() must run before create_database()")
        spares = self._tender() if isolation == "fresh" else None
        spare = spares.take() if spares is not None else None
        pool = None
        if spare is not None:
            name, pool = spare
        else:
            name = self._next_name("fresh" if isolation == "fresh" else label)
            ddl = self._copy_ddl()

            async def create(conn: Any) -> None:
                await self._create_registered(conn, name, ddl)

            self._admin_run(create)
        database = self._open(name, label=label, isolation=isolation, pool=pool)
        self._databases[name] = database
        return database

    def _next_name(self, label: str) -> str:
        with self._state_lock:
            self._counter += 1
            return database_name(self.run_id, self.worker_id, self._counter, label)

    def _copy_ddl(self) -> str:
        """What makes a new database the template's copy: its DDL, then its seed rows."""
        ddl = self._ddl
        for table in self._seeded:
            ddl += (
                f"; INSERT INTO {quote(table)} SELECT * FROM {quote(self.template)}.{quote(table)}"
            )
        return ddl + "; SET FOREIGN_KEY_CHECKS = 1"

    def _tender(self) -> SpareTender | None:
        """The spares' tender, started on the first ``fresh`` database; None when the pool plan
        leaves no connection for it."""
        spares = self._spares
        if spares is None:
            assert self.plan is not None
            if self.plan.spares < 1 or self._stopped:
                return None
            ddl = self._copy_ddl()

            async def clone(conn: Any, name: str) -> None:
                await self._create_registered(conn, name, ddl)

            recycler = Recycler(
                query=results,
                owned=OWNED,
                run_id=self.run_id,
                template=self.template,
                tables=self._tables,
                seeded=self._seeded,
                foreign_keys=self._foreign_keys,
                routine_tables=self._routine_tables,
            )
            connect, plan = self._connect, self.plan

            async def warm(name: str) -> Any:  # the store's pool, as _open() would size it
                return await open_pool(connect, name=name, max_size=plan.store_max)

            spares = self._spares = SpareTender(
                background=self._background,
                target=self.plan.spares,
                connect=self._connect_tender,
                disconnect=_disconnect,
                is_closed=is_closed,
                make_name=functools.partial(self._next_name, "fresh"),
                clone=clone,
                drop=self._drop_owned,
                warm=warm if plan.warm_spares else None,
                unwarm=close_pool,
                recycle=None if self._versioned else recycler,
            )
        spares.start()
        return spares

    async def _connect_tender(self) -> Any:
        """A connection of the tender's: its statements wait at most :data:`LOCK_WAIT` seconds
        for a table's metadata lock or a row's lock (a session the test left inside a
        transaction): an emptying that gives up drops the database instead, and a drop that
        gives up is done again when the run ends."""
        conn = await self._connect_admin()
        try:
            await query(
                conn,
                f"SET SESSION lock_wait_timeout = {LOCK_WAIT}, "
                f"innodb_lock_wait_timeout = {LOCK_WAIT}",
            )
        except BaseException:
            conn.close()
            raise
        return conn

    async def _drop_owned(self, conn: Any, name: str) -> bool:
        return await drop_if_ours(conn, name, self.run_id)

    def _open(self, name: str, *, label: str, isolation: str, pool: Any = None) -> Database:
        assert self._schema is not None and self.plan is not None
        url = self._url.set(database=name, query={"charset": "utf8mb4"})
        plan = self.plan
        store = MySqlStore(
            schema=self._schema,
            connect_kwargs=self._connect,
            background=self._background,
            max_size=plan.store_max,
            name=name,
            template=self.template,
            seeded=self._seeded if name != self.template else (),
            pool=pool,
        )

        def engine_factory() -> AsyncEngine:
            return create_async_engine(
                url, pool_size=plan.engine_pool_size, max_overflow=plan.engine_max_overflow
            )

        return Database(
            url=url.render_as_string(hide_password=False),
            backend=NAME,
            schema=self._schema,
            store=store,
            engine_factory=engine_factory,
            isolation=isolation,
            name=name,
            location=f"{self.address}/{name}",
        )

    def drop_database(self, database: Database) -> None:
        """Close the database's pools and drop it if the registry says it is this run's.

        With the tender running, both happen in the background: it closes the store's pool and
        then drops (or recycles) the database, off the test's path."""
        self._release(database, self._drop_owned, close_pool)

    def keep_database(self, database: Database) -> str:
        """Keep a database after the run: its registry row goes, so no run drops it (drop it by
        hand when done: ``DROP DATABASE `name```)."""
        if self._spares is not None:
            self._spares.forget(database.name)  # the tender's no more, if it handed it out
        database.close()
        self._databases.pop(database.name, None)

        async def forget(conn: Any) -> None:
            await query(conn, f"DELETE FROM {OWNED} WHERE name = %s", (database.name,))

        self._admin_run(forget)
        return database.name

    def leftovers(self) -> list[str]:
        """Registered databases of this run and worker still on the server, once the background
        drops are done; the spares not handed out yet are not counted."""
        if not self._started or self._stopped:
            return []
        spares = self._spares

        async def names(conn: Any) -> list[str]:
            if spares is not None:
                await spares.drained()
            stock = spares.stock() if spares is not None else set()
            rows = await query(
                conn,
                f"SELECT o.name FROM {OWNED} o JOIN information_schema.SCHEMATA s "
                "ON s.SCHEMA_NAME = o.name WHERE o.run_id = %s AND o.worker_id = %s "
                "ORDER BY o.name",
                (self.run_id, self.worker_id),
            )
            if spares is not None:
                stock |= spares.stock()  # a clone begun and made while the server was asked
            return [str(row[0]) for row in rows if str(row[0]) not in stock]

        return self._admin_run(names)

    # -- stop ------------------------------------------------------------------------------------
    async def _drop_all(self, databases: list[Database], problems: list[str]) -> None:
        conn = self._admin
        spares, self._spares = self._spares, None
        if spares is not None:  # stopped first: nothing is made after the rows are read (its
            await spares.stop()  # failed drops are retried below with every other row)
        rows = await query(
            conn,
            f"SELECT name FROM {OWNED} WHERE run_id = %s AND worker_id = %s",
            (self.run_id, self.worker_id),
        )
        for (name,) in rows:
            try:
                await drop_if_ours(conn, str(name), self.run_id)
            except Exception as exc:  # collected and reported
                problems.append(f"dropping {name}: {short_reason(exc)}")
        # Released here, not left to the session's end: the server handles a closed socket
        # on its own time, and a sweeper or a check that asks just after would find it held.
        try:
            await query(conn, "SELECT RELEASE_LOCK(%s)", (self._lock,))
        finally:
            conn.close()


def _json_columns(schema: ThreadSchema) -> list[tuple[str, str, bool]]:
    """(table, column, nullable) of every JSON column of the schema without a server default."""
    return [
        (table.name, column.name, bool(column.nullable))
        for table in schema.metadata.sorted_tables
        if table.schema is None
        for column in table.columns
        if isinstance(column.type, JSON) and column.server_default is None
    ]


async def _disconnect(conn: Any) -> None:
    """Close a tender's connection, however it went."""
    try:
        await asyncio.wait_for(conn.ensure_closed(), 5)
    except Exception:  # the server is gone: nothing to say goodbye to
        conn.close()


def make(request: BackendRequest) -> MySqlBackend:
    """The backend for a request (the registry's entry, which loads this module on first use)."""
    return MySqlBackend(request.db, run_id=request.run_id, worker_id=request.worker_id)
