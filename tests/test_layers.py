"""The house layering: the logic lives in modules that never import pytest."""

from __future__ import annotations

import subprocess
import sys

import pytest_threadcreator

CORE_MODULES = [
    "pytest_threadcreator",
    "pytest_threadcreator.backends.postgresql",
    "pytest_threadcreator.backends.sqlite",
    "pytest_threadcreator.concurrency",
    "pytest_threadcreator.config",
    "pytest_threadcreator.context",
    "pytest_threadcreator.creator",
    "pytest_threadcreator.database",
    "pytest_threadcreator.errors",
    "pytest_threadcreator.factories",
    "pytest_threadcreator.faults",
    "pytest_threadcreator.report.html",
    "pytest_threadcreator.models",
    "pytest_threadcreator.queries",
    "pytest_threadcreator.report.data",
    "pytest_threadcreator.report.terminal",
    "pytest_threadcreator.report.write",
    "pytest_threadcreator.rollback",
    "pytest_threadcreator.runtime",
    "pytest_threadcreator.schema",
    "pytest_threadcreator.shake",
    "pytest_threadcreator.users",
]


def test_core_modules_pull_in_no_pytest() -> None:
    # subprocess: this process has pytest loaded already; only a fresh interpreter can tell.
    code = (
        "import importlib, sys\n"
        f"for name in {CORE_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'pytest' or m.startswith('_pytest'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_public_api_is_sorted_and_complete() -> None:
    names = pytest_threadcreator.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(pytest_threadcreator, name), name
    for name in (
        "Database",
        "ConcurrencyReport",
        "FaultInjector",
        "ThreadCreator",
        "UserExecutionContext",
    ):
        assert name in names
    from pytest_threadcreator.factories import MessageFactory, ThreadFactory, UserContextFactory

    assert ThreadFactory and MessageFactory and UserContextFactory
