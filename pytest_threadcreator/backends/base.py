"""Where databases come from: the :class:`Backend` interface and the kinds of backend.

A backend is a server (or, for SQLite, a directory): start/stop it, build the schema template
once, create/drop databases from the template. Each kind of backend describes itself with a
:class:`BackendKind` (its name, the ``--threadcreator-db`` values it takes, how it is built and
which URLs it takes), collected in :mod:`.registry`, so that the code above never asks which
backend it has.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..database import Database
    from ..schema import ThreadSchema

__all__ = ["Backend", "BackendKind", "BackendRequest"]


class Backend(abc.ABC):
    """A place to make databases: a SQLite directory or a PostgreSQL server."""

    #: the name of its kind (:attr:`BackendKind.name`), e.g. for the report
    name: str
    #: where its database files live, when it keeps them on this machine's disk (SQLite); None
    #: for a server, whose disk is the server's
    directory: Path | None = None
    #: the settings that name its server, for the line that says a server went away
    server_settings: str = "--threadcreator-db"

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the report header, e.g. ``postgresql-local (/tmp/tc-xyz, PostgreSQL 15)``."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start or reach the server (no-op for SQLite). Raises BackendUnavailableError."""

    @abc.abstractmethod
    def prepare_template(
        self, schema: ThreadSchema, setup: Callable[[Database], None] | None
    ) -> None:
        """Build the schema once into a template that ``create_database`` clones.

        ``setup`` (the ``pytest_threadcreator_setup_database`` hook) runs once on the template.
        """

    @abc.abstractmethod
    def create_database(self, label: str, *, isolation: str) -> Database:
        """A new database cloned from the template; ``label`` ends up in its name."""

    @abc.abstractmethod
    def drop_database(self, database: Database) -> None:
        """Close and remove a database this backend created."""

    @abc.abstractmethod
    def keep_database(self, database: Database) -> str:
        """Leave a closed database in place after the run (``--threadcreator-keep``).

        Updates its ``name``, ``url`` and ``location`` if it moves; returns its final name.
        """

    @abc.abstractmethod
    def stop(self) -> None:
        """Drop everything this run created and stop what it started (idempotent)."""

    def leftovers(self) -> Sequence[str]:
        """Names of databases of this run still present (for tests and diagnostics)."""
        return ()


@dataclass(frozen=True)
class BackendRequest:
    """What a run asks of a backend kind: everything it needs to build one (not started)."""

    #: the ``--threadcreator-db`` value
    db: str
    #: pytest's temp dir for this run (or worker)
    basetemp: Path
    worker_id: str
    run_id: str
    #: names the schema's template, the same in every worker of the run
    template_key: str
    #: under xdist, a directory all workers of the run see (shared template files)
    shared_dir: Path | None = None
    #: under xdist, the hand-off of a server the controller started for the run
    shared_server: Mapping[str, str] | None = None
    docker_image: str | None = None
    docker_network: str | None = None


@dataclass(frozen=True)
class BackendKind:
    """One kind of backend, as the registry knows it."""

    #: ``Database.backend`` of its databases: ``"sqlite"``, ``"postgresql"``
    name: str
    #: the ``--threadcreator-db`` values that name it
    values: tuple[str, ...]
    #: builds a backend (not started)
    make: Callable[[BackendRequest], Backend]
    #: for a kind that takes server URLs: checks one and returns it as the URL to use, or
    #: raises ConfigurationError saying what to write (``where`` names the setting)
    check_url: Callable[[str, str], str] | None = None
    #: checks the environment variables the kind reads (ConfigurationError if one is bad)
    check_environment: Callable[[Mapping[str, str]], None] | None = None
    #: the URL schemes (SQLAlchemy backend names, before any ``+driver``) whose URLs it takes
    schemes: tuple[str, ...] = ()
    #: the environment variables ``check_environment`` reads: it runs only when one is set
    #: (empty: always)
    environment: tuple[str, ...] = ()
