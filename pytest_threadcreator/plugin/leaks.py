"""Leaked asyncio tasks: a test that ends with tasks of its own still running fails."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

__all__ = ["pytest_runtest_call"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    # The test's event loops are known before it runs (pytest-asyncio's runner is one of its
    # fixtures), so a task it starts before touching the database is seen too; tasks already
    # pending in a shared loop belong to earlier tests.
    loops = _event_loops(getattr(item, "funcargs", None) or {})
    known = {task for loop in loops for task in asyncio.all_tasks(loop)}
    result = yield
    database = getattr(item, "funcargs", {}).get("threadcreator_db")
    if database is not None:
        leaked = database.pending_tasks(loops, known=known)
        if leaked:
            names = ", ".join(sorted({_task_label(t) for t in leaked}))
            pytest.fail(
                f"test left {len(leaked)} asyncio task(s) running: {names}. Await or cancel "
                "them before the test ends (run_concurrently does), or they keep writing into "
                "the next test's database.",
                pytrace=False,
            )
    return result


def _event_loops(funcargs: dict[str, Any]) -> list[asyncio.AbstractEventLoop]:
    """Open event loops among a test's fixture values: loops, and runners (``get_loop()``) such
    as the one pytest-asyncio runs the test in."""
    loops = []
    for value in funcargs.values():
        loop = value
        if not isinstance(value, asyncio.AbstractEventLoop):
            get_loop = getattr(type(value), "get_loop", None)
            if not callable(get_loop) or not type(value).__name__.endswith("Runner"):
                continue
            try:
                loop = value.get_loop()
            except Exception:  # a closed runner
                continue
        if isinstance(loop, asyncio.AbstractEventLoop) and not loop.is_closed():
            loops.append(loop)
    return loops


def _task_label(task: Any) -> str:
    coro = task.get_coro()
    return str(getattr(coro, "__qualname__", None) or task.get_name())
