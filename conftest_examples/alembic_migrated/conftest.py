"""Run the team's Alembic migrations once per template database.

pytest-threadcreator builds each template from the ThreadSchema's tables (``create_all``),
then calls ``pytest_threadcreator_setup_database`` on it; every per-test database is a copy of
the result, so the migrations run once per template, not once per test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent

#: URLs of the template databases migrated in this process (one per template).
MIGRATED: list[str] = []


def pytest_threadcreator_setup_database(database):
    """Upgrade the template to the newest migration (called outside any event loop)."""
    config = Config(HERE / "alembic.ini")
    # database.url is async (sqlite+aiosqlite://..., postgresql+asyncpg://...): env.py is async.
    # configparser treats "%" as interpolation, so a password with "%" must be doubled.
    config.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    command.upgrade(config, "head")
    MIGRATED.append(database.url)


@pytest.fixture
def migrated_templates():
    """URLs of the template databases the migrations ran on so far in this run."""
    return list(MIGRATED)
