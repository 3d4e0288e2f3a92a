"""The pytest layer of pytest-threadcreator: the only modules that import pytest.

This package is the ``pytest11`` entry point, so it exposes every hook and fixture pytest should
find: hooks from :mod:`.hooks`, :mod:`.shake` and :mod:`.leaks`, fixtures from :mod:`.fixtures`.
The run's state lives in :mod:`.state`, the pytest-xdist hooks in :mod:`.xdist` (registered by
``pytest_configure``) and the hook specifications in :mod:`.hookspecs`.
"""

from __future__ import annotations

from .fixtures import (
    db_session,
    fault_injector,
    make_user_context,
    message_factory,
    run_concurrently,
    thread_creator,
    thread_factory,
    threadcreator_db,
    threadcreator_schema,
    threadcreator_setup,
    user_context,
)
from .hooks import (
    pytest_addhooks,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_makereport,
    pytest_sessionstart,
    pytest_terminal_summary,
    pytest_unconfigure,
)
from .leaks import pytest_runtest_call
from .shake import pytest_pyfunc_call, pytest_runtest_protocol

__all__ = [
    "db_session",
    "fault_injector",
    "make_user_context",
    "message_factory",
    "pytest_addhooks",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_pyfunc_call",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_sessionstart",
    "pytest_terminal_summary",
    "pytest_unconfigure",
    "run_concurrently",
    "thread_creator",
    "thread_factory",
    "threadcreator_db",
    "threadcreator_schema",
    "threadcreator_setup",
    "user_context",
]
