"""The MySQL/MariaDB URL: the one check of a ``--threadcreator-db`` value, the driver the
tests' engines use, and the connection arguments of the plugin's own connections."""

from __future__ import annotations

import importlib
from typing import Any

from sqlalchemy.engine import URL

from ...errors import BackendUnavailableError, ConfigurationError
from ..server import parse_url

__all__ = ["EXAMPLE", "check_url", "connect_kwargs", "engine_driver", "mysql_url"]

_DRIVERS = ("asyncmy", "aiomysql")
EXAMPLE = "mysql+asyncmy://root@127.0.0.1:3306/"


def mysql_url(value: str, where: str) -> URL:
    """``value`` as the async MySQL URL to use, or ConfigurationError saying what to write."""
    url = parse_url(value, where, EXAMPLE)
    driver = url.drivername.partition("+")[2]
    if driver in _DRIVERS:
        return url.set(drivername=f"mysql+{driver}")
    shown = url.render_as_string(hide_password=True)
    fixed = url.set(drivername="mysql+asyncmy").render_as_string(hide_password=True)
    reason = "it names no driver" if not driver else f"the {driver} driver is not async"
    raise ConfigurationError(
        f"{where}: {shown} is not an async MySQL URL; use {fixed} instead "
        f"(or mysql+aiomysql://…): {reason}"
    )


def engine_driver(url: URL) -> None:
    """The driver the tests' engines use, imported now: BackendUnavailableError naming what to
    install when it is not there (the plugin's own connections use asyncmy either way)."""
    driver = url.get_driver_name()
    try:
        importlib.import_module(driver)
    except ImportError:
        fixed = url.set(drivername="mysql+asyncmy").render_as_string(hide_password=True)
        raise BackendUnavailableError(
            f"{url.render_as_string(hide_password=True)} needs the {driver} driver, which is "
            f"not installed: pip install {driver}, or use {fixed}"
        ) from None


def check_url(value: str, where: str) -> str:
    """``value`` if :func:`mysql_url` takes it (the registry's check of a ``db`` URL)."""
    mysql_url(value, where)
    return value.strip()


def connect_kwargs(url: URL) -> dict[str, Any]:
    """The driver-level connection arguments of ``url`` (asyncmy's names)."""
    kwargs: dict[str, Any] = {
        "host": url.host or "localhost",
        "port": url.port or 3306,
        "user": url.username or "root",
        "password": url.password or "",
    }
    return kwargs
