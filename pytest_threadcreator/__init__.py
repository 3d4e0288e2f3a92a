"""pytest-threadcreator: isolated databases, user contexts and an atomic ThreadCreator for tests."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .concurrency import ConcurrencyReport, run_concurrently
from .context import UserExecutionContext
from .creator import ThreadCreator, ThreadWithMessage
from .database import Database
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    DatabaseError,
    InjectedFault,
    InvalidContextError,
    InvalidMessageError,
    NoDatabaseError,
    ThreadCreatorError,
    ThreadExistsError,
    ThreadNotFoundError,
    ThreadOwnershipError,
)
from .faults import FaultInjector, FaultRule
from .fixture_types import RunConcurrently
from .queries import QueryCounter
from .schema import NewThread, ThreadSchema
from .users import UserContextMaker

try:
    __version__ = version("pytest-threadcreator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "BackendUnavailableError",
    "ConcurrencyReport",
    "ConfigurationError",
    "Database",
    "DatabaseError",
    "FaultInjector",
    "FaultRule",
    "InjectedFault",
    "InvalidContextError",
    "InvalidMessageError",
    "NewThread",
    "NoDatabaseError",
    "QueryCounter",
    "RunConcurrently",
    "ThreadCreator",
    "ThreadCreatorError",
    "ThreadExistsError",
    "ThreadNotFoundError",
    "ThreadOwnershipError",
    "ThreadSchema",
    "ThreadWithMessage",
    "UserContextMaker",
    "UserExecutionContext",
    "__version__",
    "run_concurrently",
]
