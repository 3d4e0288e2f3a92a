"""The requirement floors in pyproject.toml admit only driver versions that have what the plugin
calls."""

from __future__ import annotations

import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_every_asyncpg_floor_has_the_pool_reset_hook() -> None:
    # The store's pool passes create_pool(reset=...), which asyncpg added in 0.30; under 0.29
    # it reached asyncpg.connect() as an unknown argument and every store pool failed.
    floors = re.findall(r'"asyncpg>=([0-9.]+)"', PYPROJECT.read_text())
    assert floors, "no asyncpg requirement found in pyproject.toml"
    assert all(_version(floor) >= (0, 30) for floor in floors), floors
