"""PostgreSQL backend: per-test databases cloned from a template, on any reachable server.

Where the server comes from is :mod:`.servers` (a URL, local binaries, Docker, or the first of
those that works); what the plugin owns on a shared server, how it tells and when it drops it
is :mod:`.janitor`; pool sizes are :mod:`..pools`; ``fresh`` databases cloned ahead and
dropped behind are :mod:`..spares`; the data path of each database is
:class:`~pytest_threadcreator.store.postgresql.PgStore`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..._background import BackgroundLoop
from ...database import Database
from ...errors import BackendUnavailableError, ConfigurationError, DatabaseError
from ...store.postgresql import ADMIN_TIMEOUT, PgStore, _asyncpg, close_pool, open_pool
from ...store.postgresql_reset import _quote, copy_seed, reset_function_sql
from ..naming import normalise_worker_id
from ..pools import PoolPlan, plan_pools, worker_count
from ..server import ServerBackend
from ..server import short_reason as _short_reason
from ..spares import SpareTender
from .docker import DEFAULT_IMAGE, KEPT_SUFFIX, DockerServer
from .janitor import (
    DB_PREFIX,
    TEMPLATE_NOTE,
    WATCHED_NOTE,
    comment_sql,
    create_marked,
    database_name,
    drop_if_ours,
    drop_run_if_last,
    finished_template_seed,
    kept_note,
    marked_databases,
    ownership_mark,
    remove_dead_runs,
    run_lock_key,
    template_lock_key,
    template_name,
)
from .recycle import Recycler, install_watch, recycle_call
from .servers import (
    Mode,
    ServerOptions,
    address,
    connect,
    connect_kwargs,
    reach_server,
    safe_url,
    settle_ssl,
)

if TYPE_CHECKING:
    from ...schema import ThreadSchema
    from .local import LocalCluster

__all__ = ["NAME", "PostgresBackend"]

T = TypeVar("T")

#: The backend's name, as ``Database.backend`` reports it.
NAME = "postgresql"

#: How long a worker waits for another worker of its run to build the shared template (the
#: setup hook may run migrations).
TEMPLATE_WAIT_TIMEOUT = 600.0


class PostgresBackend(ServerBackend):
    """Databases on a PostgreSQL server: per test ``CREATE DATABASE … TEMPLATE`` (for
    ``fresh``, cloned ahead and dropped behind by a :class:`~..spares.SpareTender`).

    ``mode``: ``"url"`` (``url`` required), ``"local"``, ``"docker"`` or ``"auto"`` (the
    environment's URL, then local binaries, then Docker). Build it with
    :func:`make_postgres_backend`; then :meth:`start`, :meth:`prepare_template`,
    :meth:`create_database`/:meth:`drop_database`, :meth:`stop`.
    """

    name = "postgresql"
    label = "PostgreSQL"
    admin_timeout = ADMIN_TIMEOUT
    server_settings = "THREADCREATOR_POSTGRES_URL/--threadcreator-db"

    def __init__(
        self,
        mode: Mode,
        *,
        run_id: str,
        worker_id: str = "master",
        url: str | None = None,
        pool_size: int | None = None,
        workers: int | None = None,
        bindir: str | None = None,
        docker_image: str = DEFAULT_IMAGE,
        docker_network: str = "bridge",
        environ: Mapping[str, str] | None = None,
        template_key: str | None = None,
        shared_cluster: Mapping[str, str] | None = None,
    ) -> None:
        if mode == "url" and not url:
            raise ConfigurationError("PostgresBackend(mode='url') needs a url")
        self.mode: Mode = mode
        self.run_id = run_id
        self.worker_id = normalise_worker_id(worker_id)
        template_name(run_id, self.worker_id)  # validates both ids
        #: with a key, one template per run and schema, shared by the run's workers
        self.shared_template = template_key is not None
        self.template = template_name(run_id, template_key or self.worker_id)
        #: LocalCluster.handoff() of a cluster another process of the run started (xdist)
        self._shared_cluster = dict(shared_cluster) if shared_cluster is not None else None
        self.pool_size = pool_size
        self.workers = workers if workers is not None else worker_count()
        self._given_url = url
        self._bindir = bindir
        self._docker_image = docker_image
        self._docker_network = docker_network
        self._environ = environ if environ is not None else os.environ
        #: which source was used ("url", "local", "docker") once started
        self.source = ""
        self.version = ""
        self.plan: PoolPlan | None = None
        self.cluster: LocalCluster | None = None
        self.container: DockerServer | None = None
        self._url: URL | None = None
        self._connect: dict[str, Any] = {}
        self._init_server(BackgroundLoop(f"threadcreator-pg-{self.worker_id}"))
        self._admin_database = "postgres"
        self._schema: ThreadSchema | None = None
        self._template_ready = False
        self._seeded: list[str] = []
        #: whether the template watches for schema changes, so used clones can be recycled
        self._watched = False
        self._keep_cluster = False
        self._keep_container = False
        #: the test label of each database handed out from the spares (named ``…_fresh``)
        self._labels: dict[str, str] = {}
        #: the tender may clone with STRATEGY FILE_COPY (PostgreSQL 15+; see the tender's clone)
        self._file_copy = False
        self._counter = 0

    def __repr__(self) -> str:
        return f"<PostgresBackend {self.mode} run={self.run_id} worker={self.worker_id}>"

    # -- description -------------------------------------------------------------------------
    def describe(self) -> str:
        """E.g. ``postgresql-local (/tmp/tc-ab12cd34, PostgreSQL 15.20)``."""
        label = {"url": "postgresql", "local": "postgresql-local", "docker": "postgresql-docker"}
        name = label.get(self.source, "postgresql")
        where = self.cluster.socket_dir if self.cluster is not None else self.address
        return f"{name} ({where}, PostgreSQL {self.version or '?'})"

    @property
    def address(self) -> str:
        """``host:port`` of the server (the socket directory for a local cluster)."""
        return address(self._connect) if self._connect else "(not started)"

    @property
    def url(self) -> str:
        """The server URL the engines use (password included; use :attr:`safe_url` to show)."""
        if self._url is None:
            raise BackendUnavailableError("the PostgreSQL backend was not started")
        return self._url.render_as_string(hide_password=False)

    @property
    def safe_url(self) -> str:
        """The server URL with the password hidden."""
        return safe_url(self._url) if self._url is not None else "(not started)"

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Reach or start the server, take the run's lock, remove dead runs' databases."""
        if self._started:
            return
        if self._stopped:
            raise BackendUnavailableError("this PostgreSQL backend was stopped; make a new one")
        _asyncpg()
        try:
            self._start_server()
            self._background.run(self._open_admin(), timeout=ADMIN_TIMEOUT)
        except BaseException:
            self._shutdown(strict=False)
            raise
        self._started = True
        atexit.register(self._stop_at_exit)

    def _start_server(self) -> None:
        options = ServerOptions(
            mode=self.mode,
            run_id=self.run_id,
            url=self._given_url,
            bindir=self._bindir,
            docker_image=self._docker_image,
            docker_network=self._docker_network,
            shared=self._shared_cluster,
        )
        server = reach_server(options, self._environ, self._probe_url)
        self.cluster, self.container = server.cluster, server.container
        self._url, self._connect, self.source = (
            server.url,
            connect_kwargs(server.url),
            server.source,
        )

    def _probe_url(self, url: URL) -> None:
        """Connect to ``url``'s server once (the auto chain's test of the environment's URL)."""
        self._connect = connect_kwargs(url)
        try:
            self._background.run(self._probe(), timeout=ADMIN_TIMEOUT)
        finally:
            self._connect = {}

    async def _probe(self) -> None:
        conn = await self._connect_to("postgres")
        await conn.close()

    async def _connect_to(self, database: str) -> Any:
        return await connect(dict(self._connect, database=database))

    async def _open_admin(self) -> None:
        """Admin connection to the maintenance database; the run's lock; dead runs' cleanup."""
        asyncpg = _asyncpg()
        self._admin_lock = asyncio.Lock()
        try:
            conn = await self._connect_to("postgres")
        except asyncpg.InvalidCatalogNameError:
            # No "postgres" database: fall back to the URL's own (locks are per database, so
            # every run against this server then has to use the same one).
            conn = await self._connect_to(str(self._connect.get("database") or "template1"))
        self._admin = conn
        row = await conn.fetchrow(
            "SELECT current_setting('server_version') AS version, current_database() AS db, "
            "current_setting('max_connections')::int AS max_connections, "
            "current_setting('superuser_reserved_connections')::int AS reserved, "
            "current_setting('server_version_num')::int AS version_num, "
            "(SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user) AS can, "
            "(SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()) AS ssl"
        )
        self._connect = settle_ssl(self._connect, on_ssl=row["ssl"])
        self.version = str(row["version"]).split()[0]
        self._admin_database = str(row["db"])  # where the tender's connections go too
        self._file_copy = int(row["version_num"]) >= 150000
        if not row["can"]:
            raise BackendUnavailableError(
                f"PostgreSQL at {self.address}: role {self._connect.get('user')!r} may not "
                "create databases; grant it (ALTER ROLE … CREATEDB) or use another user"
            )
        self.plan = plan_pools(
            int(row["max_connections"]),
            reserved=int(row["reserved"]),
            workers=self.workers,
            requested=self.pool_size,
        )
        await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(self.run_id))
        await remove_dead_runs(conn, self.run_id)

    # -- admin helpers ---------------------------------------------------------------------
    async def _admin_ready(self) -> None:
        if self._admin is None or self._admin.is_closed():
            await self._reopen_admin()

    async def _reopen_admin(self) -> None:
        self._admin = await self._locked_connection()

    async def _locked_connection(self) -> Any:
        """A connection to the maintenance database holding the run's lock (shared)."""
        conn = await self._connect_to(self._admin_database)
        try:
            await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", *run_lock_key(self.run_id))
        except BaseException:
            conn.terminate()
            raise
        return conn

    # -- template ------------------------------------------------------------------------------
    def prepare_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Build the template (``create_all``, ``setup``, sealed), or reuse the run's one.

        A shared template (``template_key``) is built by whichever worker of the run takes its
        build lock first; the others wait on the lock and then find it finished.
        """
        self._template_ready = False
        self._schema = schema
        self._retire_spares()  # clones of an earlier template must not be handed out
        if not self.shared_template:
            self._build_template(schema, setup)
            self._template_ready = True
            return
        key = template_lock_key(self.template)

        async def claim(conn: Any) -> Any:
            await conn.execute("SELECT pg_advisory_lock($1, $2)", *key)
            return await conn.fetchrow(
                "SELECT datallowconn, shobj_description(oid, 'pg_database') AS note "
                "FROM pg_database WHERE datname = $1",
                self.template,
            )

        async def release(conn: Any) -> None:
            await conn.execute("SELECT pg_advisory_unlock($1, $2)", *key)

        row = self._admin_run(claim, timeout=TEMPLATE_WAIT_TIMEOUT)
        try:
            seeded = finished_template_seed(row, self.run_id)
            if seeded is None:  # not there, or left half-built by a worker that died
                self._build_template(schema, setup)
            else:
                self._seeded = seeded
                self._watched = str(row["note"]).endswith(WATCHED_NOTE)
        finally:
            self._admin_run(release)
        self._template_ready = True

    def _build_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Create the template, ``create_all`` into it, run ``setup``, close it."""
        tpl = _quote(self.template)

        async def create(conn: Any) -> None:
            # left half-built by a worker of this run that died: ours if marked, else not ours
            await drop_if_ours(conn, self.template, self.run_id)
            if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.template):
                raise DatabaseError(
                    f"PostgreSQL at {self.address}: a database named {self.template} exists but "
                    "carries no pytest-threadcreator mark, so it is not the plugin's to drop; "
                    "if it is a leftover of a run that died while creating it, drop it by hand "
                    f'(DROP DATABASE "{self.template}") and run again'
                )
            await create_marked(conn, self.template, self.run_id)

        self._admin_run(create)
        self._background.run(self._create_all(schema), timeout=ADMIN_TIMEOUT)
        if setup is not None:
            database = self._open(self.template, label="template", isolation="template")
            try:
                setup(database)
            finally:
                database.close()
        finish = self._finish_template(schema, seeded=setup is not None)
        self._seeded, self._watched = self._background.run(finish, timeout=ADMIN_TIMEOUT)
        note = ownership_mark(self.run_id) + TEMPLATE_NOTE + json.dumps(self._seeded)
        note += WATCHED_NOTE if self._watched else ""

        async def seal(conn: Any) -> None:
            # Still the run's mark, now also "finished" to the other workers, and what was seeded.
            await conn.execute(comment_sql(self.template, note))
            # No session may stay on a template (CREATE DATABASE … TEMPLATE would wait and
            # fail), and none may come back later.
            await conn.execute(f"ALTER DATABASE {tpl} ALLOW_CONNECTIONS false")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.template,
            )

        self._admin_run(seal)

    async def _finish_template(
        self, schema: ThreadSchema, *, seeded: bool
    ) -> tuple[list[str], bool]:
        """On one connection to the template: keep the rows the setup hook left in it (if it
        ``seeded`` any), add the reset function, and last install the watch for schema changes
        (from then on every schema change in a clone is seen, see recycle.py). Returns the
        seeded tables and whether the watch is installed."""
        conn = await self._connect_to(self.template)
        try:
            tables = await copy_seed(conn, schema) if seeded else []
            function = reset_function_sql(schema, tables)
            if function is not None:
                await conn.execute(function)
            return tables, await install_watch(conn, schema, tables)
        finally:
            await conn.close()

    async def _create_all(self, schema: ThreadSchema) -> None:
        assert self._url is not None
        url = self._url.set(drivername="postgresql+asyncpg", database=self.template)
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(schema.metadata.create_all)
        finally:
            await engine.dispose()

    # -- databases -----------------------------------------------------------------------------
    def create_database(self, label: str, *, isolation: str) -> Database:
        """``CREATE DATABASE tc_<run>_<worker>_<n>_<label> TEMPLATE <template>``.

        A ``fresh`` database comes from the spares the tender cloned ahead (named
        ``…_<n>_fresh``), with its store's pool already connected, when one is ready; it is
        cloned on demand otherwise (named ``…_<n>_fresh`` too: it may serve a later test).
        """
        if not self._template_ready:
            raise ConfigurationError("prepare_template() must run before create_database()")
        name, pool, spare, spares = None, None, None, None
        if isolation == "fresh":
            spares = self._tender()
            spare = spares.take() if spares is not None else None
            if spare is not None:
                name, pool = spare
        if name is None:
            # a fresh one may be handed to a later test: named like the spares, not after its test
            name = self._next_name("fresh" if isolation == "fresh" else label)
            template = self.template

            async def create(conn: Any) -> None:  # the test waits: the quicker one alone
                await create_marked(conn, name, self.run_id, template=template)

            self._admin_run(create)
        if isolation == "fresh":
            self._labels[name] = label  # what a kept copy is named after
        try:
            database = self._open(name, label=label, isolation=isolation, pool=pool)
        except BaseException:
            if spares is not None and spare is not None:
                spares.forget(name)  # not coming back: stop() sweeps what the run marked
            raise
        self._databases[name] = database
        return database

    def _next_name(self, label: str) -> str:
        with self._state_lock:
            self._counter += 1
            return database_name(self.run_id, self.worker_id, self._counter, label)

    def _tender(self) -> SpareTender | None:
        """The spares' tender, started on the first ``fresh`` database; None when the pool plan
        leaves no connection for it."""
        spares = self._spares
        if spares is None:
            assert self.plan is not None
            if self.plan.spares < 1 or self._stopped:
                return None
            template, file_copy = self.template, self._file_copy

            async def clone(conn: Any, name: str) -> None:
                # While used databases come back, clones are few and a test may wait for one:
                # the quicker one alone (WAL_LOG); once they stop coming back (the tests change
                # the schema), clones are made back to back: FILE_COPY (see create_marked).
                tender = self._spares
                one_off = tender is not None and tender.coming_back
                await create_marked(
                    conn, name, self.run_id, template=template, file_copy=file_copy and not one_off
                )

            schema, connect, plan = self._schema, self._connect, self.plan
            assert schema is not None

            async def warm(name: str) -> Any:  # the store's pool, as _open() would size it
                kwargs = dict(connect, database=name)
                return await open_pool(kwargs, max_size=plan.store_max, schema=schema)

            next_name = functools.partial(self._next_name, "fresh")
            recycle = Recycler(recycle_call(schema), self._connect_to, self.template)
            spares = self._spares = SpareTender(
                background=self._background,
                target=self.plan.spares,
                connect=self._locked_connection,
                disconnect=_disconnect,
                is_closed=_is_closed,
                make_name=next_name,
                clone=clone,
                drop=self._drop_owned,
                warm=warm if plan.warm_spares else None,
                unwarm=close_pool,
                recycle=recycle if self._watched else None,
            )
        spares.start()
        return spares

    async def _drop_owned(self, conn: Any, name: str) -> bool:
        return await drop_if_ours(conn, name, self.run_id)

    def _open(self, name: str, *, label: str, isolation: str, pool: Any = None) -> Database:
        assert self._url is not None and self._schema is not None and self.plan is not None
        url = self._url.set(database=name)
        plan = self.plan
        store = PgStore(
            schema=self._schema,
            connect_kwargs=dict(self._connect, database=name),
            background=self._background,
            max_size=plan.store_max,
            name=name,
            seeded=self._seeded,
            pool=pool,
            reset_function=True,  # every template holds it (see _finish_template)
        )

        # SSL as the run decided it (asyncpg only: a psycopg URL's engines keep their own)
        engine_args = (
            {"ssl": False}
            if self._connect.get("ssl") is False and url.drivername == "postgresql+asyncpg"
            else {}
        )

        def engine_factory() -> AsyncEngine:
            return create_async_engine(
                url,
                pool_size=plan.engine_pool_size,
                max_overflow=plan.engine_max_overflow,
                connect_args=engine_args,
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
            connect_args=engine_args,
        )

    def drop_database(self, database: Database) -> None:
        """Close the database's pools and ``DROP DATABASE … WITH (FORCE)`` if it carries this
        run's mark (a database without it is left alone, whatever its name).

        With the tender running, both happen in the background: it closes the store's pool and
        then drops the database, off the test's path."""
        self._labels.pop(database.name, None)
        self._release(database, self._drop_owned, close_pool)

    def keep_database(self, database: Database) -> str:
        """Keep a database after the run (``--threadcreator-keep``); returns its final name.

        Its mark gives way to a note saying it was kept (no run drops a database without the
        mark), then it is renamed ``tk_…``; its ``name``, ``url`` and ``location`` are updated.
        Drop it by hand when done.
        """
        if self._spares is not None:
            self._spares.forget(database.name)  # the tender's no more, if it handed it out
        database.close()
        self._databases.pop(database.name, None)
        label = self._labels.pop(database.name, None)
        # a spare is named ``…_fresh``: the kept copy is named after its test instead
        base = database.name if label is None else self._next_name(label)
        kept = "tk_" + base.removeprefix(DB_PREFIX)
        old, new = _quote(database.name), _quote(kept)

        async def rename(conn: Any) -> None:
            await conn.execute(comment_sql(database.name, kept_note(self.run_id, kept)))
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database.name,
            )
            await conn.execute(f"ALTER DATABASE {old} RENAME TO {new}")

        self._admin_run(rename)
        database.location = database.location.removesuffix(database.name) + kept
        if self.cluster is not None:
            # A throwaway cluster would vanish at exit: keep its files and say how to start it.
            self._keep_cluster = True
            database.location += f" (cluster kept; start it with: {self.cluster.start_command()})"
        if self.container is not None:
            # The container would be removed at exit: keep it running, out of later runs' sweeps.
            self._keep_container = True
            name = self.container.name + KEPT_SUFFIX
            database.location += f" (container {name} kept; remove it with: docker rm -f -v {name})"
        database.url = make_url(database.url).set(database=kept).render_as_string(False)
        database.name = kept
        return kept

    def leftovers(self) -> list[str]:
        """Databases of this run and worker still on the server (marked as the run's own),
        once the background drops are done; the spares not handed out yet are not counted."""
        if not self._started or self._stopped:
            return []
        prefix = f"{DB_PREFIX}{self.run_id}_{self.worker_id}_"
        spares = self._spares

        async def names(conn: Any) -> list[str]:
            if spares is None:
                return await marked_databases(conn, prefix, self.run_id)
            await spares.drained()
            stock = spares.stock()
            names = await marked_databases(conn, prefix, self.run_id)
            stock |= spares.stock()  # a clone begun and made while the server was asked
            return [n for n in names if n not in stock]

        return self._admin_run(names)

    # -- stop ------------------------------------------------------------------------------------
    async def _drop_all(self, databases: list[Database], problems: list[str]) -> None:
        names = [d.name for d in databases]
        if not self.shared_template:
            names.append(self.template)
        spares, self._spares = self._spares, None
        prefix = f"{DB_PREFIX}{self.run_id}_{self.worker_id}_"
        # a shared cluster (xdist) goes with everything in it once the controller stops it
        attached = self.cluster is not None and self.cluster.attached
        assert self._admin_lock is not None
        if spares is not None:
            names.extend(await spares.stop())
        async with self._admin_lock:
            # and whatever else of this worker carries the run's mark (a clone that failed to
            # drop in the background, one cut short by a cancel)
            with contextlib.suppress(Exception):
                names.extend(await marked_databases(self._admin, prefix, self.run_id))
            for name in dict.fromkeys(names):
                try:
                    await drop_if_ours(self._admin, name, self.run_id)
                except Exception as exc:  # collected and reported
                    problems.append(f"dropping {name}: {_short_reason(exc)}")
            if self.shared_template and not attached:
                problems.extend(await drop_run_if_last(self._admin, self.run_id))
            await self._admin.close(timeout=5)  # releases the run's advisory lock

    def _abort_admin(self) -> None:
        with contextlib.suppress(Exception):
            self._admin.terminate()

    def _after_stop(self) -> None:
        self._spares = None
        if self.cluster is not None:
            # an attached cluster (xdist) is the controller's to stop; its stop() does nothing
            self.cluster.stop(keep_data=self._keep_cluster)
        if self.container is not None:
            # an attached container (xdist) is the controller's to remove
            self.container.stop(keep=self._keep_container)


async def _disconnect(conn: Any) -> None:
    """Close a tender's connection (releasing the run's lock with it), however it went."""
    try:
        await conn.close(timeout=5)
    except Exception:  # the server is gone: nothing to release there
        conn.terminate()


def _is_closed(conn: Any) -> bool:
    return bool(conn.is_closed())
