"""Hooks other plugins and conftest files can implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..database import Database


def pytest_threadcreator_setup_database(database: Database) -> None:
    """Run once per template database, after the schema was created and before any test copies it.

    The place for migrations (run Alembic against ``database.url``) and seed rows; every
    per-test database starts from the result. Called synchronously, outside any event loop:
    use ``asyncio.run(...)`` for async work.
    """
