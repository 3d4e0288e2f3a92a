"""Leak checks: a task a test leaves running fails that test, whenever the test started it."""

from __future__ import annotations

import pytest

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

LEAKS = """
import asyncio
import pytest

# The leaked tasks are kept referenced, as a real leak's are (by a list, a callback, a client):
# asyncio holds tasks weakly, and an unreferenced pending task may be garbage collected first.
KEPT = []

async def forgotten():
    await asyncio.Event().wait()

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_leaks_before_any_database_call(threadcreator_db):
    KEPT.append(asyncio.get_running_loop().create_task(forgotten()))

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_leaks_then_writes(thread_creator, user_context):
    KEPT.append(asyncio.get_running_loop().create_task(forgotten()))
    await thread_creator.create_thread_with_message(user_context, "hi")

@pytest.mark.asyncio(loop_scope="{scope}")
async def test_clean(threadcreator_db):
    await asyncio.sleep(0)
"""


@pytest.mark.parametrize("scope", ["function", "module"])
def test_a_task_leaked_before_the_first_database_call_fails_the_test(
    pytester: pytest.Pytester, scope: str
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(LEAKS.replace("{scope}", scope))
    result = pytester.runpytest("-p", "no:cacheprovider")
    # test_clean runs after both leaks on the module loop: their tasks are not its own
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test left 1 asyncio task(s) running: forgotten. Await or cancel them*",
            "*test left 1 asyncio task(s) running: forgotten. Await or cancel them*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "FAILED *::test_leaks_before_any_database_call*",
            "FAILED *::test_leaks_then_writes*",
        ]
    )


def test_a_task_a_test_without_the_database_leaks_is_not_blamed_on_the_next(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        KEPT = []  # referenced, so garbage collection cannot end it before the next test

        async def forgotten():
            await asyncio.Event().wait()

        @pytest.mark.asyncio(loop_scope="module")
        async def test_without_the_plugin():
            KEPT.append(asyncio.get_running_loop().create_task(forgotten()))

        @pytest.mark.asyncio(loop_scope="module")
        async def test_with_the_database(threadcreator_db):
            assert await threadcreator_db.count_threads() == 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
