"""The kinds of backend, looked up by ``--threadcreator-db`` value.

Everything above the backends asks this registry (or a backend, or a store) instead of comparing
backend names: adding a kind means adding it to :data:`KINDS`. A server kind's code (its driver's
SQLAlchemy dialect, its store, its janitor) loads when a run first uses it, not with the plugin:
a SQLite run never imports them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigurationError
from .base import Backend, BackendKind, BackendRequest
from .sqlite import KIND as SQLITE

__all__ = [
    "BACKEND_NAMES",
    "KINDS",
    "kind_of",
    "make_backend",
    "validate_db",
    "validate_environment",
]


def _later(module: str, name: str) -> Callable[..., Any]:
    """``module.name`` (relative to this package), imported on the first call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module, __package__), name)(*args, **kwargs)

    call.__qualname__ = f"{module.lstrip('.')}.{name}"
    return call


#: ``--threadcreator-db=postgresql``, ``postgresql-local``, ``postgresql-docker`` or a server URL
#: (``postgresql.servers.MODES`` and ``ENV_POSTGRES_URL``; a unit test keeps them the same)
POSTGRESQL = BackendKind(
    name="postgresql",
    values=("postgresql", "postgresql-local", "postgresql-docker"),
    make=_later(".postgresql.kind", "make"),
    check_url=_later(".postgresql.servers", "check_url"),
    check_environment=_later(".postgresql.servers", "check_environment"),
    environment=("THREADCREATOR_POSTGRES_URL",),
)
#: ``--threadcreator-db=mysql+asyncmy://…`` (or ``mysql+aiomysql://…``, ``mariadb+…``)
MYSQL = BackendKind(
    name="mysql",
    values=(),
    make=_later(".mysql.backend", "make"),
    check_url=_later(".mysql.urls", "check_url"),
    schemes=("mysql", "mariadb"),
)
#: Every kind, the default first.
KINDS: tuple[BackendKind, ...] = (SQLITE, POSTGRESQL, MYSQL)
#: The ``--threadcreator-db`` values that name a backend (a server URL is the other kind).
BACKEND_NAMES: tuple[str, ...] = tuple(value for kind in KINDS for value in kind.values)
_URL_EXAMPLE = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
_MYSQL_EXAMPLE = "mysql+asyncmy://root@127.0.0.1:3306/"


def _url_kind(url: str) -> BackendKind:
    """The kind whose schemes name ``url``'s (else the first that takes URLs: it says what to
    write)."""
    scheme = url.strip().partition("://")[0].partition("+")[0].lower()
    takes_urls = [kind for kind in KINDS if kind.check_url is not None]
    return next((kind for kind in takes_urls if scheme in kind.schemes), takes_urls[0])


def validate_db(value: object, where: str) -> str:
    """``value`` if it names a backend or a server URL a kind takes; else ConfigurationError
    listing the valid values (``where`` names the setting)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: expected a str, got {type(value).__name__}")
    value = value.strip()
    if value in BACKEND_NAMES:
        return value
    if "://" in value:
        check = _url_kind(value).check_url
        assert check is not None
        return check(value, where)
    raise ConfigurationError(
        f"{where}: {value!r} is not a valid database; valid values: "
        + ", ".join(BACKEND_NAMES)
        + f", or an async SQLAlchemy URL such as {_URL_EXAMPLE} or {_MYSQL_EXAMPLE}"
    )


def validate_environment(environ: Mapping[str, str]) -> None:
    """Check the environment variables every kind reads (ConfigurationError if one is bad)."""
    for kind in KINDS:
        if kind.check_environment is None:
            continue
        if not kind.environment or any(environ.get(name, "").strip() for name in kind.environment):
            kind.check_environment(environ)


def kind_of(db: str) -> BackendKind:
    """The kind of backend a validated ``db`` value names."""
    for kind in KINDS:
        if db in kind.values:
            return kind
    return _url_kind(db)


def make_backend(request: BackendRequest) -> Backend:
    """A backend (not started) for ``request.db``."""
    return kind_of(request.db).make(request)
