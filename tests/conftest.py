"""Test-suite setup."""

from __future__ import annotations

# pytester's in-process runs unload modules they imported; asyncpg's C extension must not be
# imported twice in one process, so load it once here, before any inner run.
import asyncpg  # noqa: F401
