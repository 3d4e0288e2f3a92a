"""Shake mode (``--threadcreator-shake``/``--threadcreator-seed``): each database test runs once
per seed, each repetition a whole run of it under a seeded perturbation of the schedule."""

from __future__ import annotations

from typing import Any

import pytest

from ..shake import Shaker, activate, repetition_seeds
from .state import REPETITION_KEY, state, state_or_none

__all__ = ["pytest_pyfunc_call", "pytest_runtest_protocol"]


def _shake_seeds(item: pytest.Item) -> list[int] | None:
    """Seeds to run ``item`` under, or None when it is not shaken (no database or no shake)."""
    st = state_or_none(item.config)
    if st is None or not isinstance(item, pytest.Function):
        return None
    if "threadcreator_db" not in item.fixturenames:
        return None
    settings = st.settings_for(item)
    if settings.seed is not None:
        return [settings.seed]
    if settings.shake:
        return repetition_seeds(item.nodeid, settings.shake)
    return None


#: Replays of a failing repetition's seed, in the same run, before the seed is reported as one
#: that replays: a race decided by a thin margin (jitter, not the seed's pauses) fails only now
#: and then, and the hunt goes on for a seed whose schedule decides it.
CONFIRMATIONS = 2


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Shake mode: run the test once per seed, each repetition a whole run of it (function
    fixtures set up and torn down again, on an emptied database); reported once.

    A failing repetition is replayed :data:`CONFIRMATIONS` times under its seed. The first seed
    that fails every replay is reported; when none does, the first failure is, with how often
    its seed failed again.
    """
    seeds = _shake_seeds(item)
    if seeds is None:
        return None
    assert isinstance(item, pytest.Function)
    st = state(item.config)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    runs = 0

    def repetition(number: int, seed: int) -> list[pytest.TestReport]:
        nonlocal runs
        if runs:  # the previous repetition's request and fixture values are spent
            item._initrequest()
            item._report_sections.clear()
        runs += 1
        item.stash[REPETITION_KEY] = (number, len(seeds), seed)
        reports = _run_once(item, seed)
        # between repetitions only the test's own (function-scoped) fixtures are torn down
        reports.append(_run_phase(item, "teardown", nextitem=item.parent))
        return reports

    reports: list[pytest.TestReport] = []
    reported: tuple[int, int, list[pytest.TestReport], int] | None = None
    replaying = len(seeds) > 1  # a replay (--threadcreator-seed) runs its one seed once
    for number, seed in enumerate(seeds, 1):
        reports = repetition(number, seed)
        if all(r.passed for r in reports):
            continue
        call_failed = any(r.when == "call" and r.failed for r in reports)
        if not call_failed or not replaying:  # setup or teardown: no schedule to confirm
            reported = (number, seed, reports, -1)
            break
        again = 0
        for _ in range(CONFIRMATIONS):
            if not all(r.passed for r in repetition(number, seed)):
                again += 1
        if reported is None or again == CONFIRMATIONS:
            reported = (number, seed, reports, again)
        if again == CONFIRMATIONS:
            break
    del item.stash[REPETITION_KEY]
    failed_seed: int | None = None
    if reported is not None:
        _number, failed_seed, reports, again = reported
        if again >= 0:
            note = (
                f"its schedule failed again in {again} of {CONFIRMATIONS} replays in this run"
                if again == CONFIRMATIONS
                else f"its schedule failed again in only {again} of {CONFIRMATIONS} replays in "
                "this run (no seed failed every replay): the race is decided by a thin margin "
                "there, so a replay may pass"
            )
            for report in reports:
                if report.when == "call" and report.failed:
                    report.sections.append(("threadcreator shake replays", note))
    reports += _finish_teardown(item, nextitem)
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    st.shaken.append((item.nodeid, runs, failed_seed))
    if failed_seed is None:
        item.user_properties.append(
            ("threadcreator_shake", f"{len(seeds)} repetition(s) passed, seeds {seeds[0]}…")
        )
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _finish_teardown(
    item: pytest.Function, nextitem: pytest.Item | None
) -> list[pytest.TestReport]:
    """Tear down the scopes above the test that ``nextitem`` does not share, after the last
    repetition's teardown (its hooks ran already: only pytest's setup state is left)."""
    setup_state = item.session._setupstate
    call = pytest.CallInfo.from_call(
        lambda: setup_state.teardown_exact(nextitem),
        when="teardown",
        reraise=(pytest.exit.Exception, KeyboardInterrupt),
    )
    if call.excinfo is None:
        return []
    return [item.ihook.pytest_runtest_makereport(item=item, call=call)]


def _run_once(item: pytest.Function, seed: int) -> list[pytest.TestReport]:
    """Setup and call of one repetition, under the shaker of ``seed``."""
    reports = [_run_phase(item, "setup")]
    if reports[0].passed and not item.config.getoption("setuponly", False):
        with activate(Shaker(seed)):
            reports.append(_run_phase(item, "call"))
    return reports


def _run_phase(item: pytest.Function, when: str, **kwargs: Any) -> pytest.TestReport:
    """One phase through the public hooks, as pytest runs it (its report not logged yet)."""
    hook = getattr(item.ihook, f"pytest_runtest_{when}")
    reraise: tuple[type[BaseException], ...] = (pytest.exit.Exception,)
    if not item.config.getoption("usepdb", False):
        reraise += (KeyboardInterrupt,)
    call = pytest.CallInfo.from_call(
        lambda: hook(item=item, **kwargs),
        when=when,  # type: ignore[arg-type]
        reraise=reraise,
    )
    report: pytest.TestReport = item.ihook.pytest_runtest_makereport(item=item, call=call)
    if (
        call.excinfo is not None
        and report.failed
        and not call.excinfo.errisinstance(pytest.skip.Exception)
    ):
        item.ihook.pytest_exception_interact(node=item, call=call, report=report)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A shaken test needs a database emptied before each repetition: not rollback isolation."""
    if REPETITION_KEY not in pyfuncitem.stash:
        return None
    database: Any = pyfuncitem.funcargs.get("threadcreator_db")
    if database is not None and database.isolation == "rollback":
        pytest.fail(
            "shake mode needs clean or fresh isolation (each repetition starts on an emptied "
            "database); this test runs in rollback isolation",
            pytrace=False,
        )
    return None
