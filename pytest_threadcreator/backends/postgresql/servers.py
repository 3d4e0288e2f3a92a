"""Where a PostgreSQL server comes from, and the one check of a server URL.

``--threadcreator-db`` takes ``postgresql`` (the auto chain: ``THREADCREATOR_POSTGRES_URL``,
else local binaries, else Docker), ``postgresql-local``, ``postgresql-docker`` or a server URL.
Every URL, from the option or from ``THREADCREATOR_POSTGRES_URL``, goes through
:func:`async_url`: it gives both the same answer, and its error shows the URL to write.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy.engine import URL, make_url

from ...errors import BackendUnavailableError, ConfigurationError, ThreadCreatorError
from ...store.postgresql import _asyncpg
from ..server import parse_url
from ..server import short_reason as _short_reason
from .docker import DockerServer

if TYPE_CHECKING:
    from .local import LocalCluster

__all__ = [
    "ENV_POSTGRES_URL",
    "MODES",
    "Server",
    "ServerPlan",
    "address",
    "async_url",
    "check_environment",
    "check_url",
    "connect",
    "connect_kwargs",
    "plan_server",
    "reach_server",
    "safe_url",
]

ENV_POSTGRES_URL = "THREADCREATOR_POSTGRES_URL"
_ENV_WHERE = f"environment {ENV_POSTGRES_URL}"

Mode = Literal["url", "local", "docker", "auto"]

#: ``--threadcreator-db`` values of the PostgreSQL backend, and the mode each one means.
MODES: dict[str, Mode] = {
    "postgresql": "auto",
    "postgresql-local": "local",
    "postgresql-docker": "docker",
}

#: The async drivers the plugin can use.
_ASYNC_DRIVERS = ("asyncpg", "psycopg", "psycopg_async")
_EXAMPLE = "postgresql+asyncpg://user@host:5432/postgres"


def async_url(value: str, where: str) -> URL:
    """``value`` as the async SQLAlchemy URL to use, or ConfigurationError saying what to write.

        The one check of a server URL, for ``--threadcreator-db`` and ``THREADCREATOR_POSTGRES_URL``
        alike: ``postgresql+asyncpg://…`` and ``postgresql+psycopg://…`` are taken as given. A URL
        that names no driver (``postgresql://…``, ``postgres://…``) is refused, since SQLAlchemy
        reads it as the sync psycopg2, and so is a sync driver (``psycopg2``, ``pg8000``); the
        error shows the URL to write instead. A MySQL/MariaDB URL is the MySQL backend's (the registry
    hands it there); here, where a PostgreSQL URL is wanted, it is refused.
    """
    url = parse_url(value, where, _EXAMPLE)
    backend, _, driver = url.drivername.partition("+")
    if backend in ("mysql", "mariadb"):
        raise ConfigurationError(
            f"{where}: {safe_url(url)} is a MySQL/MariaDB URL, where a PostgreSQL URL such as "
            f"{_EXAMPLE} is wanted; give a MySQL/MariaDB URL as --threadcreator-db instead"
        )
    if backend not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"{where}: {safe_url(url)} is not a PostgreSQL URL; write one like {_EXAMPLE}"
        )
    if driver in _ASYNC_DRIVERS and backend == "postgresql":
        return url
    if not driver:
        reason = "it names no driver, and SQLAlchemy then uses the sync psycopg2"
    elif driver in _ASYNC_DRIVERS:
        reason = f"SQLAlchemy calls the dialect postgresql, not {backend}"
    else:
        reason = f"the {driver} driver, which is not async"
    fixed = safe_url(url.set(drivername="postgresql+asyncpg"))
    raise ConfigurationError(
        f"{where}: {safe_url(url)} is not an async PostgreSQL URL; use {fixed} instead "
        f"(or postgresql+psycopg://…): {reason}"
    )


def check_url(value: str, where: str) -> str:
    """``value`` if :func:`async_url` takes it (the registry's check of a ``db`` URL)."""
    async_url(value, where)
    return value.strip()


def check_environment(environ: Mapping[str, str]) -> None:
    """Check ``THREADCREATOR_POSTGRES_URL`` if set, as :func:`async_url` checks the option."""
    value = environ.get(ENV_POSTGRES_URL, "").strip()
    if value:
        async_url(value, _ENV_WHERE)


def safe_url(url: URL) -> str:
    """``url`` with its password hidden."""
    return url.render_as_string(hide_password=True)


def connect_kwargs(url: URL) -> dict[str, Any]:
    """asyncpg.connect() arguments for the server (and database) of ``url``."""
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    port: Any = url.port or query.get("port")
    kwargs: dict[str, Any] = {
        "host": url.host or query.get("host"),
        "port": int(port) if port else None,
        "user": url.username,
        "password": url.password,
        "database": url.database,
    }
    ssl = query.get("ssl") or query.get("sslmode")
    if ssl:
        kwargs["ssl"] = ssl
    return {k: v for k, v in kwargs.items() if v is not None}


def settle_ssl(kwargs: Mapping[str, Any], *, on_ssl: bool | None) -> dict[str, Any]:
    """``kwargs`` with SSL decided once for the run.

    Asked for no SSL mode, asyncpg asks the server for SSL first on every new connection (one
    more round trip each, and a refusal); when the first connection (``on_ssl``: whether it
    runs over SSL) found the server without it, the later ones go without at once
    (``ssl=False``). A mode the URL names is kept as it is.
    """
    settled = dict(kwargs)
    if "ssl" not in settled and on_ssl is False:
        settled["ssl"] = False
    return settled


def address(kwargs: Mapping[str, Any]) -> str:
    """``host:port`` of connect arguments."""
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 5432)}"


async def connect(kwargs: Mapping[str, Any]) -> Any:
    """An asyncpg connection; BackendUnavailableError in one line saying what to check (a
    missing database raises asyncpg's InvalidCatalogNameError, for the caller to judge)."""
    asyncpg = _asyncpg()
    try:
        return await asyncpg.connect(
            timeout=10, server_settings={"application_name": "pytest-threadcreator"}, **kwargs
        )
    except asyncpg.InvalidCatalogNameError:
        raise
    except Exception as exc:  # becomes one readable line
        raise BackendUnavailableError(
            f"cannot connect to PostgreSQL at {address(kwargs)} as "
            f"{kwargs.get('user', '(default user)')}: {type(exc).__name__}: "
            f"{_short_reason(exc)}. Check that the server runs and the URL (user, password, "
            "host, port) is right"
        ) from None


@dataclass(frozen=True)
class ServerPlan:
    """What the pytest-xdist controller sets up for a run before its workers start."""

    #: a server named by URL (the ``db`` value, or the environment's in the auto chain): the
    #: controller holds the run's lock there
    url: str | None = None
    #: start one local cluster for all workers
    local: bool = False
    #: start one container for all workers (``fallback``: only when local binaries fail)
    docker: bool = False
    fallback: bool = False


def plan_server(db: str, environ: Mapping[str, str]) -> ServerPlan:
    """The controller's part for ``db``: what each worker's auto chain would pick first."""
    mode = MODES.get(db)
    env_url = environ.get(ENV_POSTGRES_URL)
    if "://" in db:
        return ServerPlan(url=db)
    if mode == "auto" and env_url:
        return ServerPlan(url=env_url)
    if mode == "docker":
        return ServerPlan(docker=True)
    if mode in ("local", "auto"):
        return ServerPlan(local=True, fallback=mode == "auto")
    return ServerPlan()


@dataclass
class Server:
    """A server reached or started for a backend."""

    url: URL
    #: ``"url"``, ``"local"`` or ``"docker"``
    source: str
    cluster: LocalCluster | None = None
    container: DockerServer | None = None


@dataclass(frozen=True)
class ServerOptions:
    """How a backend asks for its server (see :func:`reach_server`)."""

    mode: Mode
    run_id: str
    url: str | None = None
    bindir: str | None = None
    docker_image: str = ""
    docker_network: str = "bridge"
    #: the hand-off of a cluster or container another process of the run started (xdist)
    shared: Mapping[str, str] | None = None


def reach_server(
    options: ServerOptions, environ: Mapping[str, str], probe: Callable[[URL], None]
) -> Server:
    """Reach or start the server ``options`` ask for; BackendUnavailableError if none works.

    ``probe(url)`` connects to a server named by the environment, so the auto chain moves on
    when it is not there.
    """
    shared = options.shared
    if shared is not None and DockerServer.is_handoff(shared):
        container = DockerServer.attach(shared)  # waits while the container still starts
        return Server(async_url(container.url, "the container's URL"), "docker", None, container)
    if shared is not None:
        from .local import LocalCluster  # POSIX-only (pwd, fcntl): imported when needed

        cluster = LocalCluster.attach(shared)  # waits while the controller still starts it
        return Server(make_url(cluster.url), "local", cluster)
    if options.mode == "url":
        assert options.url is not None
        return Server(async_url(options.url, "the PostgreSQL URL"), "url")
    if options.mode == "local":
        return _start_local(options)
    if options.mode == "docker":
        return _start_docker(options)
    return _auto(options, environ, probe)


def _start_local(options: ServerOptions) -> Server:
    from .local import LocalCluster  # POSIX-only (pwd, fcntl): imported when needed

    cluster = LocalCluster(bindir=options.bindir)
    cluster.start()
    return Server(make_url(cluster.url), "local", cluster)


def _start_docker(options: ServerOptions) -> Server:
    container = DockerServer(
        options.docker_image, network=options.docker_network, run_id=options.run_id
    )
    url = container.start()
    return Server(async_url(url, "the container's URL"), "docker", None, container)


def _auto(
    options: ServerOptions, environ: Mapping[str, str], probe: Callable[[URL], None]
) -> Server:
    """The ``postgresql`` chain: the environment's URL, local binaries, Docker."""
    tried: list[str] = []
    env_url = environ.get(ENV_POSTGRES_URL)
    if env_url:
        url = async_url(env_url, _ENV_WHERE)  # a bad URL is an error, not a miss
        try:
            probe(url)
            return Server(url, "url")
        except ThreadCreatorError as exc:
            tried.append(f"{ENV_POSTGRES_URL} ({exc})")
        except Exception as exc:  # reported below
            tried.append(f"{ENV_POSTGRES_URL} ({_short_reason(exc)})")
    else:
        tried.append(f"{ENV_POSTGRES_URL} (not set)")
    try:
        return _start_local(options)
    except BackendUnavailableError as exc:
        tried.append(f"local binaries ({str(exc).removeprefix('postgresql-local: ')})")
    try:
        return _start_docker(options)
    except BackendUnavailableError as exc:
        tried.append(f"Docker ({str(exc).removeprefix('postgresql-docker: ')})")
    raise BackendUnavailableError(
        "postgresql: no PostgreSQL server could be used. Tried: "
        + "; ".join(tried)
        + f". Set {ENV_POSTGRES_URL}={_EXAMPLE}, install "
        "the PostgreSQL server binaries, or start Docker"
    )
