"""Meant for ``pytest -n 2`` (pytest-xdist): every worker gets databases of its own.

The schema template is built once for the run and shared; each worker's databases are cloned
from it and named after the worker id, so tests on different workers never see each other's
rows.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("n", range(20))
async def test_each_test_starts_empty_on_its_workers_database(
    n, worker_id, thread_creator, make_user_context, run_concurrently, threadcreator_db
):
    assert await threadcreator_db.count_threads() == 0
    assert await threadcreator_db.count_messages() == 0
    # worker_id (a pytest-xdist fixture) is "gw0", "gw1", ... or "master" without -n
    assert worker_id in threadcreator_db.name

    users = make_user_context.many(10)
    report = await run_concurrently(
        lambda user: thread_creator.create_thread_with_message(user, f"test {n}"), users
    )

    report.raise_errors()
    assert await threadcreator_db.count_threads() == 10
    await threadcreator_db.check_integrity()
    await threadcreator_db.assert_user_isolation(users)
