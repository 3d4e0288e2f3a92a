"""xdist speed-up: 400-test suites serial against ``-n 2``, ten users per test and a hundred.

An empty 400-test suite runs the same two ways, so the fixed cost of starting xdist workers can
be told apart from how the plugin's test work scales ("test work only" rows). With little work
per test that fixed cost decides the speed-up; the heavier suite shows how the work scales.
"""

from __future__ import annotations

from benchlib import Goal, Row, RowSpec
from harness import BACKEND_NAMES, Context, Plan, Samples, run_plan
from suites import empty_suite, ten_users_suite

__all__ = ["XDIST_GOAL", "measure"]

TESTS = 400
XDIST_GOAL = Goal("min_ratio", 1.6, "≥ 1.6×")
MODES = {"serial": ["-p", "no:xdist"], "n2": ["-n", "2"]}
#: Variant label → (suite directory, users per test).
VARIANTS = {"10 users/test": ("ten-users-400", 10), "100 users/test": ("hundred-users-400", 100)}


def _specs(backend: str, index: int, variant: str) -> tuple[RowSpec, RowSpec]:
    """The speed-up row and its "test work only" row."""
    name = BACKEND_NAMES[backend]
    key = f"xdist.{backend}" + (f".{index}" if index else "")
    figure = f"xdist speed-up, {name}: {TESTS} tests × {variant}, -n 2 vs serial"
    work_figure = f"xdist speed-up, {name}, {variant}: test work only"
    return (
        RowSpec(key, "xdist", figure, "s", XDIST_GOAL, "× faster"),
        RowSpec(f"{key}.work", "xdist", work_figure, "s", None, "× faster"),
    )


def _rows(samples: Samples, tag: str, spec: RowSpec, work_spec: RowSpec) -> list[Row]:
    if not samples.ok(f"{tag}-serial", f"{tag}-n2"):
        problem = samples.reason(f"{tag}-serial", f"{tag}-n2")
        return [spec.missing(problem), work_spec.missing(problem)]
    serial, parallel = samples.median(f"{tag}-serial"), samples.median(f"{tag}-n2")
    raw = {
        "serial_s": samples.values[f"{tag}-serial"],
        "n2_s": samples.values[f"{tag}-n2"],
        "empty_serial_s": samples.values["empty-serial"],
        "empty_n2_s": samples.values["empty-n2"],
    }
    warning = samples.warning(f"{tag}-serial", f"{tag}-n2")
    rows = [
        spec.measured(
            parallel,
            baseline=serial,
            baseline_label="serial",
            ratio=serial / parallel,
            warning=warning,
            samples=raw,
        )
    ]
    if not samples.ok("empty-serial", "empty-n2"):
        return [*rows, work_spec.missing(samples.reason("empty-serial", "empty-n2"))]
    work_serial = serial - samples.median("empty-serial")
    work_parallel = parallel - samples.median("empty-n2")
    rows.append(
        work_spec.measured(
            work_parallel,
            baseline=work_serial,
            baseline_label="serial",
            ratio=work_serial / work_parallel if work_parallel > 0 else None,
            warning=warning or samples.warning("empty-serial", "empty-n2"),
            samples=raw,
        )
    )
    return rows


def measure(ctx: Context) -> list[Row]:
    """Speed-up of ``-n 2`` over serial, per backend and variant, and of the test work alone."""
    ws = ctx.workspace
    dirs = {
        variant: ws.suite(name, ten_users_suite(TESTS, users=users))
        for variant, (name, users) in VARIANTS.items()
    }
    empty_dir = ws.suite("empty-async-400", empty_suite(TESTS, is_async=True))
    plan: Plan = {f"empty-{mode}": (empty_dir, args) for mode, args in MODES.items()}
    reasons: dict[str, str | None] = {}
    for backend, db, reason in ctx.targets():
        reasons[backend] = reason
        if reason is None:
            for variant, suite_dir in dirs.items():
                for mode, args in MODES.items():
                    plan[f"{backend}-{variant}-{mode}"] = (
                        suite_dir,
                        [f"--threadcreator-db={db}", *args],
                    )
    samples = run_plan(ctx, plan, TESTS, "xdist")
    rows: list[Row] = []
    for backend, reason in reasons.items():
        for index, variant in enumerate(VARIANTS):
            spec, work_spec = _specs(backend, index, variant)
            if reason is not None:
                rows += [spec.missing(reason), work_spec.missing(reason)]
            else:
                rows += _rows(samples, f"{backend}-{variant}", spec, work_spec)
    return rows
