"""Per-test overhead per backend and isolation mode: (200 one-create tests − empty suite) / 200,
the median over the repeats of each repeat's difference (the two run side by side in it).

Baselines: on SQLite a hand-rolled fixture (a file per test, ``metadata.create_all``, one ORM
insert); on PostgreSQL the pytest-postgresql peer (:mod:`figures.pytest_postgresql_peer`); on
MySQL/MariaDB the pytest-mysql peer (:mod:`figures.pytest_mysql_peer`). All suites of the
figure run interleaved in one plan.
"""

from __future__ import annotations

from benchlib import Goal, Row, RowSpec
from harness import BACKEND_NAMES, Context, Plan, Samples, run_plan
from suites import create_all_suite, empty_suite, ours_create_suite

from figures import pytest_mysql_peer as mysql_peer
from figures import pytest_postgresql_peer as peer

__all__ = ["MYSQL_OVERHEAD_GOAL", "PG_OVERHEAD_GOAL", "SQLITE_OVERHEAD_GOAL", "measure"]

TESTS = 200
#: Tests per suite in a ``--smoke`` run.
SMOKE_TESTS = 40
ISOLATIONS = ("clean", "fresh", "rollback")
SQLITE_OVERHEAD_GOAL = Goal("max_value", 2.0, "≤ 2 ms")
PG_OVERHEAD_GOAL = Goal("min_ratio", 10.0, "≥ 10× lower")
MYSQL_OVERHEAD_GOAL = Goal("min_ratio", 10.0, "≥ 10× lower")
GOALS = {
    "sqlite": SQLITE_OVERHEAD_GOAL,
    "postgresql": PG_OVERHEAD_GOAL,
    "mysql": MYSQL_OVERHEAD_GOAL,
}
#: Suites faster than this get extra repeats in a full run (closest to the noise).
CHEAP_SUITE_S = 3.0

EMPTY_ASYNC = "empty-async"
CREATE_ALL = "create_all"
#: Suite-name prefix of each backend's runs of the plugin's suite.
PREFIX = {"sqlite": "sqlite", "postgresql": "pg", "mysql": "my"}
#: The backends this figure has rows for.
BACKENDS = ("sqlite", "postgresql", "mysql")
#: PostgreSQL ``fresh`` where each test also changes the schema (what ``fresh`` is for): its
#: database cannot be recycled and is dropped, so every test waits for a new clone.
PG_FRESH_DDL = "pg-fresh-ddl"


def schema_change_suite(n: int) -> str:
    """``n`` tests, each creating one thread and then adding a column to the thread table."""
    return f"""\
import pytest
from sqlalchemy import text


@pytest.mark.asyncio
@pytest.mark.parametrize("i", range({n}))
async def test_create_then_alter(thread_creator, user_context, threadcreator_db, i):
    await thread_creator.create_thread_with_message(user_context, "Hello")
    async with threadcreator_db.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE threads ADD COLUMN extra text"))
"""


def _spec(backend: str, isolation: str) -> RowSpec:
    return RowSpec(
        key=f"overhead.{backend}.{isolation}",
        group="overhead",
        figure=f"Per-test overhead, {BACKEND_NAMES[backend]} {isolation}",
        unit="ms/test",
        goal=GOALS[backend],
        ratio_label="× lower",
    )


class _PerTest:
    """Per-test milliseconds of a suite over its empty suite, in wall and CPU time: the median
    over the repeats of the suite's run less the empty suite's run of the same repeat."""

    def __init__(self, samples: Samples, tests: int) -> None:
        self.samples = samples
        self.tests = tests

    def wall(self, name: str, empty: str) -> float | None:
        if not self.samples.ok(name, empty):
            return None
        return self.samples.paired_difference(name, empty) / self.tests * 1000

    def cpu(self, name: str, empty: str) -> float | None:
        if not self.samples.ok(name, empty):
            return None
        return self.samples.paired_difference(name, empty, cpu=True) / self.tests * 1000


def _row(
    spec: RowSpec,
    per_test: _PerTest,
    suite: str,
    base_suite: str,
    base_empty: str,
    base_label: str,
    smoke_warning: str,
) -> Row:
    """One isolation mode's row: ``suite`` minus the empty async suite, per test."""
    samples = per_test.samples
    ours = per_test.wall(suite, EMPTY_ASYNC)
    if ours is None:
        return spec.missing(samples.reason(suite, EMPTY_ASYNC))
    base = per_test.wall(base_suite, base_empty)
    base_key = base_suite.replace("-", "_")
    return spec.measured(
        ours,
        baseline=base,
        baseline_label=base_label,
        ratio=base / ours if base is not None and ours > 0 else None,
        warning="; ".join(
            w
            for w in (smoke_warning, samples.warning(suite, EMPTY_ASYNC, base_suite, base_empty))
            if w
        ),
        extra={
            "cpu_ms_per_test": per_test.cpu(suite, EMPTY_ASYNC),
            f"{base_key}_cpu_ms_per_test": per_test.cpu(base_suite, base_empty),
        },
        samples={
            "suite_s": samples.values[suite],
            "empty_suite_s": samples.values[EMPTY_ASYNC],
            f"{base_key}_suite_s": samples.values.get(base_suite, []),
            f"{base_empty.replace('-', '_')}_suite_s": samples.values.get(base_empty, []),
        },
    )


def measure(ctx: Context) -> list[Row]:
    """Per-test overhead of every chosen backend and isolation mode against its baseline."""
    ws = ctx.workspace
    tests = SMOKE_TESTS if ctx.smoke else TESTS
    plan: Plan = {EMPTY_ASYNC: (ws.suite("empty-async", empty_suite(tests, is_async=True)), [])}
    ours_dir = ws.suite("ours-create", ours_create_suite(tests))
    reasons: dict[str, str | None] = {}
    for backend, db, reason in ctx.targets(BACKENDS):
        reasons[backend] = reason
        if reason is None:
            for iso in ISOLATIONS:
                plan[f"{PREFIX[backend]}-{iso}"] = (
                    ours_dir,
                    [f"--threadcreator-db={db}", f"--threadcreator-isolation={iso}"],
                )
        if backend == "sqlite":
            plan[CREATE_ALL] = (ws.suite("create-all", create_all_suite(tests)), [])
        if backend == "postgresql" and reason is None:
            plan[PG_FRESH_DDL] = (
                ws.suite("schema-change", schema_change_suite(tests)),
                [f"--threadcreator-db={db}", "--threadcreator-isolation=fresh"],
            )
    peer_reasons = {
        "postgresql": peer.add_to_plan(ctx, plan, tests) if "postgresql" in reasons else None,
        "mysql": mysql_peer.add_to_plan(ctx, plan, tests) if "mysql" in reasons else None,
    }

    ws.run(*plan[EMPTY_ASYNC])  # warm the OS caches once, untimed
    samples = run_plan(ctx, plan, tests, "overhead", cheap_s=CHEAP_SUITE_S)
    per_test = _PerTest(samples, tests)

    rows: list[Row] = []
    for backend, reason in reasons.items():
        if backend == "sqlite":
            base_suite, base_empty, base_label = CREATE_ALL, EMPTY_ASYNC, "create_all/test"
        else:
            base_suite = peer.SUITE if backend == "postgresql" else mysql_peer.SUITE
            base_empty, peer_reason = peer.EMPTY, peer_reasons[backend]
            measured = peer_reason is None and per_test.wall(base_suite, base_empty) is not None
            base_label = (
                base_suite
                if measured
                else f"{base_suite} n/a: "
                + (peer_reason or per_test.samples.reason(base_suite, base_empty))
            )
        for iso in ISOLATIONS:
            spec = _spec(backend, iso)
            if reason is not None:
                rows.append(spec.missing(reason))
                continue
            suite = f"{PREFIX[backend]}-{iso}"
            rows.append(
                _row(spec, per_test, suite, base_suite, base_empty, base_label, ctx.smoke_warning)
            )
        if backend == "postgresql":
            spec = RowSpec(
                key="overhead.postgresql.fresh_schema_change",
                group="overhead",
                figure="Per-test overhead, PostgreSQL fresh, each test changing the schema",
                unit="ms/test",
                ratio_label="× lower",
            )
            rows.append(
                spec.missing(reason)
                if reason is not None
                else _row(
                    spec,
                    per_test,
                    PG_FRESH_DDL,
                    base_suite,
                    base_empty,
                    base_label,
                    ctx.smoke_warning,
                )
            )
    return rows
