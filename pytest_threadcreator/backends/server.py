"""What the server backends (PostgreSQL, MySQL/MariaDB) share: :class:`ServerBackend`.

A server backend keeps one admin connection on a private :class:`BackgroundLoop`, runs admin
jobs on it one at a time, remembers the databases it handed out, and stops once: the
databases are closed, what the run made on the server is dropped, the admin connection goes
(the server releases the run's lock with it) and the loop stops. A stop at interpreter exit
does the same quietly; a stop called by the plugin reports what it could not do.
"""

from __future__ import annotations

import abc
import asyncio
import atexit
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .._background import BackgroundLoop
from ..errors import BackendUnavailableError, ConfigurationError, DatabaseError, short_reason
from .base import Backend

if TYPE_CHECKING:
    from ..database import Database
    from .spares import SpareTender

__all__ = ["ServerBackend", "parse_url", "short_reason"]

T = TypeVar("T")


def parse_url(value: str, where: str, example: str) -> URL:
    """``value`` as a SQLAlchemy URL, or ConfigurationError naming what is wrong and ``example``."""
    try:
        return make_url(value.strip())
    except (ArgumentError, ValueError) as exc:  # ValueError: SQLAlchemy's int() of the port
        why = "its port is not a number" if isinstance(exc, ValueError) else str(exc)
        raise ConfigurationError(
            f"{where}: {value!r} is not a valid URL ({why}); write one like {example}"
        ) from None


class ServerBackend(Backend):
    """A backend on a database server, reached through one admin connection.

    Subclasses call :meth:`_init_server` in ``__init__``, set ``_started`` and register
    :meth:`_stop_at_exit` once started, and fill in :meth:`_drop_all`.
    """

    #: the server's name in messages: ``"PostgreSQL"``, ``"MySQL"``
    label: str
    #: how long an admin job (and the drops at stop) may take, in seconds
    admin_timeout: float
    _background: BackgroundLoop
    _admin: Any
    _admin_lock: asyncio.Lock | None
    _databases: dict[str, Database]
    _started: bool
    _stopped: bool
    _state_lock: threading.Lock
    #: the tender of ``fresh`` databases made ahead, once a ``fresh`` test asked for one
    _spares: SpareTender | None

    def _init_server(self, background: BackgroundLoop) -> None:
        self._background = background
        self._spares = None
        self._admin = None
        self._admin_lock = None
        self._databases = {}
        self._started = False
        self._stopped = False
        self._state_lock = threading.Lock()

    # -- databases given back ------------------------------------------------------------------
    def _release(
        self,
        database: Database,
        drop: Callable[[Any, str], Coroutine[Any, Any, object]],
        close_pool: Callable[[Any], Coroutine[Any, Any, None]],
    ) -> None:
        """Close ``database`` and ``drop(conn, name)`` it on the admin connection.

        With the tender running, both happen in the background instead: the store's pool goes
        to the tender (:meth:`~..store.base.Store.detach`), which closes it with ``close_pool``
        and then drops or recycles the database, off the test's path."""
        spares = self._spares
        # the store's pool goes to whoever drops the database (closed by database.close() else)
        pool = database.store.detach() if spares is not None else None
        database.close()
        self._databases.pop(database.name, None)
        name = database.name
        if spares is not None and spares.discard(name, pool):
            return  # closed and dropped in the background by the tender
        if pool is not None:
            self._background.run(close_pool(pool), timeout=self.admin_timeout)

        async def dropping(conn: Any) -> None:
            await drop(conn, name)

        self._admin_run(dropping)

    # -- admin jobs ----------------------------------------------------------------------------
    def _admin_run(
        self, make: Callable[[Any], Coroutine[Any, Any, T]], *, timeout: float | None = None
    ) -> T:
        """Run ``make(admin_connection)`` on the background loop, one admin job at a time."""
        if not self._started:
            raise BackendUnavailableError(f"start() the {self.label} backend first")

        async def job() -> T:
            assert self._admin_lock is not None
            async with self._admin_lock:
                await self._admin_ready()
                return await make(self._admin)

        return self._background.run(
            job(), timeout=self.admin_timeout if timeout is None else timeout
        )

    async def _admin_ready(self) -> None:
        """Called before each admin job, under the admin lock (e.g. to reconnect)."""

    @abc.abstractmethod
    async def _drop_owned(self, conn: Any, name: str) -> bool:
        """Drop ``name`` if it carries this run's mark; False (nothing done) else."""

    def _retire_spares(self) -> None:
        """Stop the tender and drop what it made (the template is about to change)."""
        spares, self._spares = self._spares, None
        if spares is None or not self._started:
            return

        async def retire(conn: Any) -> None:
            for name in await spares.stop():
                await self._drop_owned(conn, name)

        self._admin_run(retire)

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drop this run's databases and template, release the lock, stop what we started.

        Idempotent. Raises DatabaseError after finishing all the cleanup it could do when
        something failed on the way.
        """
        self._shutdown(strict=True)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self._shutdown(strict=False)

    def _shutdown(self, *, strict: bool) -> None:
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self._stop_at_exit)
        problems: list[str] = []
        databases = list(self._databases.values())
        self._databases.clear()
        for database in databases:
            try:
                database.close()
            except Exception as exc:  # collected and reported
                problems.append(f"closing {database.name}: {short_reason(exc)}")
        if self._admin is not None and not self._background.closed:
            try:
                self._background.run(
                    self._drop_all(databases, problems), timeout=self.admin_timeout
                )
            except Exception as exc:  # collected and reported
                problems.append(f"dropping databases: {short_reason(exc)}")
                self._abort_admin()
        self._admin = None
        self._background.close()
        self._after_stop()
        if problems and strict:
            raise DatabaseError(
                f"stopping the {self.label} backend left work undone: " + "; ".join(problems)
            )

    @abc.abstractmethod
    async def _drop_all(self, databases: list[Database], problems: list[str]) -> None:
        """On the background loop: drop what this run made on the server (``databases`` were
        handed out and are closed), close the admin connection; failures go to ``problems``."""

    def _abort_admin(self) -> None:
        """The drop failed: cut the admin connection off (it may be mid-statement)."""

    def _after_stop(self) -> None:
        """After the loop stopped: stop whatever else the backend started."""
