"""Names of the databases the plugin makes on a server (every server kind).

Every name is ``tc_<run>_<worker>_<suffix>`` and at most 63 bytes (PostgreSQL silently
truncates longer identifiers, MySQL allows 64): see :mod:`.postgresql.janitor` for what each
part means. A name is never proof of ownership; each server kind marks what it made its own way.
Kept apart from the backends, so that using one loads no other.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import ConfigurationError
from .run_id import BASE36

__all__ = [
    "DB_PREFIX",
    "MAX_IDENTIFIER_BYTES",
    "MAX_RUN_ID",
    "MAX_WORKER_ID",
    "ParsedName",
    "check_token",
    "database_name",
    "normalise_worker_id",
    "parse_database_name",
    "template_name",
]

DB_PREFIX = "tc_"
MAX_IDENTIFIER_BYTES = 63
MAX_RUN_ID = 20
MAX_WORKER_ID = 12
#: Room the label must keep at the least, so the name still says which test it belongs to.
_MIN_LABEL = 10
_TOKEN = re.compile(r"[a-z0-9]+")
_NAME = re.compile(r"tc_([a-z0-9]+)_([a-z0-9]+)_(template|[0-9a-z]+_[a-z0-9_]*)")


@dataclass(frozen=True, slots=True)
class ParsedName:
    """The parts of a name made by :func:`database_name` or :func:`template_name`."""

    run_id: str
    worker_id: str
    is_template: bool


def check_token(value: str, what: str, limit: int) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value) or len(value) > limit:
        raise ConfigurationError(
            f"database names: the {what} {value!r} must be 1-{limit} lowercase "
            "letters or digits (it is part of every database name and is never shortened)"
        )
    return value


def normalise_worker_id(worker_id: str) -> str:
    """``gw3`` stays ``gw3``; anything else is lowercased with non-alphanumerics removed."""
    cleaned = re.sub(r"[^a-z0-9]", "", str(worker_id).lower())
    return cleaned or "master"


def template_name(run_id: str, scope: str) -> str:
    """Name of a template database: ``scope`` is the worker id for a worker's own template, or
    the token that the workers of a run sharing one template agree on."""
    run = check_token(run_id, "run id", MAX_RUN_ID)
    token = check_token(scope, "worker id", MAX_WORKER_ID)
    return f"{DB_PREFIX}{run}_{token}_template"


def database_name(run_id: str, worker_id: str, number: int, label: str) -> str:
    """Name of the ``number``-th database of this worker, at most 63 bytes.

    Unique per (run, worker, number) whatever the label; the label is reduced to lowercase
    letters, digits and ``_`` and cut (with an 8-hex hash of the whole label) when too long.
    """
    run = check_token(run_id, "run id", MAX_RUN_ID)
    worker = check_token(worker_id, "worker id", MAX_WORKER_ID)
    if number < 0:
        raise ConfigurationError(f"database number must be >= 0, got {number}")
    head = f"{DB_PREFIX}{run}_{worker}_{_b36(number)}_"
    room = MAX_IDENTIFIER_BYTES - len(head)
    if room < _MIN_LABEL:  # cannot happen with the limits above; kept as a guard
        raise ConfigurationError(f"run id and worker id leave no room for a label in {head!r}")
    cleaned = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "db"
    if len(cleaned) > room:
        digest = hashlib.blake2b(label.encode(), digest_size=4).hexdigest()
        cleaned = cleaned[: room - len(digest) - 1].rstrip("_") + "_" + digest
    name = head + cleaned
    assert len(name.encode()) <= MAX_IDENTIFIER_BYTES
    return name


def _b36(value: int) -> str:
    out = []
    while value:
        value, digit = divmod(value, 36)
        out.append(BASE36[digit])
    return "".join(reversed(out)) or "0"


def parse_database_name(name: str) -> ParsedName | None:
    """The run and worker of a plugin database name, or None for any other database."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    run, worker, rest = match.groups()
    return ParsedName(run_id=run, worker_id=worker, is_template=rest == "template")
