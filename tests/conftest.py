"""The suite's shared fixtures; the plain helpers behind them are in ``helpers.py``.

Importing ``helpers`` here, at collection and before any pytester run, also imports the
database drivers once for the whole process (see ``helpers.POSTGRESQL_IMPORT_ERROR``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from pytest_threadcreator import concurrency
from pytest_threadcreator._background import BackgroundLoop

from .helpers import PG_SERVER_URL, FakeClock, pg_fetch, pg_server_missing

if TYPE_CHECKING:
    from pytest_threadcreator.backends.postgresql.backend import PostgresBackend


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The concurrency runner's clock, moved only by the test."""
    clock = FakeClock()
    monkeypatch.setattr(concurrency, "_clock", clock)
    yield clock


@pytest.fixture
def background() -> Iterator[BackgroundLoop]:
    """A running :class:`BackgroundLoop` of its own, closed after the test."""
    loop = BackgroundLoop("test-background")
    yield loop
    loop.close()


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inner runs choose their backend by ini or option, and are no xdist workers even when this
    suite is (their own workers get these variables from their controller). Use it with
    ``pytestmark = pytest.mark.usefixtures("clean_environment")``."""
    for name in ("THREADCREATOR_DB", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pg_backend() -> Iterator[PostgresBackend]:
    """A started backend on the suite's server with the default schema's template, one per
    module; skipped without a server on a developer's machine (never under CI). When it stops,
    nothing of its run may be left on the server."""
    from pytest_threadcreator.backends.postgresql.backend import PostgresBackend
    from pytest_threadcreator.backends.postgresql.janitor import new_run_id
    from pytest_threadcreator.schema import default_schema

    if (reason := pg_server_missing()) is not None and not os.environ.get("CI"):
        pytest.skip(reason)
    backend = PostgresBackend("url", url=PG_SERVER_URL, run_id=new_run_id(), worker_id="gw7")
    backend.start()
    backend.prepare_template(default_schema(), None)
    yield backend
    backend.stop()
    pattern = f"tc_{backend.run_id}_".replace("_", "\\_") + "%"
    left = asyncio.run(pg_fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", pattern))
    assert left == [], f"the backend's stop left databases behind: {left}"
