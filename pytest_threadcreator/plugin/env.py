"""ini ``threadcreator_env``: environment variables naming the worker's ``clean`` database.

For apps that read their settings (``DATABASE_URL``) when their modules are imported: the lines
``NAME={url}`` or ``NAME={sync_url}`` are set at session start, before any test module is
imported, to the database that every ``clean`` test of this worker gets, and restored at exit.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping, Sequence

import pytest

__all__ = ["apply", "parse", "restore"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELDS = ("url", "sync_url")
_HELP = "write lines NAME={url} or NAME={sync_url}, e.g. DATABASE_URL={url}"


def parse(lines: Sequence[str]) -> list[tuple[str, str]]:
    """``(name, template)`` of each line; a malformed line is a UsageError saying what to write."""
    pairs: list[tuple[str, str]] = []
    for line in lines:
        name, sep, template = (part.strip() for part in line.partition("="))
        if not sep or not _NAME.fullmatch(name):
            raise pytest.UsageError(f"threadcreator_env: {line!r} is not NAME=value; {_HELP}")
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(template) if field]
        except ValueError as exc:
            raise pytest.UsageError(f"threadcreator_env: {line!r}: {exc}; {_HELP}") from None
        unknown = [field for field in fields if field not in _FIELDS]
        if unknown or not fields:
            what = f"unknown placeholder {{{unknown[0]}}}" if unknown else "no placeholder"
            raise pytest.UsageError(f"threadcreator_env: {line!r} has {what}; {_HELP}")
        pairs.append((name, template))
    return pairs


def apply(pairs: Sequence[tuple[str, str]], values: Mapping[str, str]) -> dict[str, str | None]:
    """Set each variable; return what they held before (None: unset) for :func:`restore`."""
    saved: dict[str, str | None] = {}
    for name, template in pairs:
        saved.setdefault(name, os.environ.get(name))
        os.environ[name] = template.format(**values)
    return saved


def restore(saved: Mapping[str, str | None]) -> None:
    """Put back what :func:`apply` changed."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
