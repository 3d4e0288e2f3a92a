"""Start-up: time from spawning pytest to the first line of a 1-test suite's test body.

The test requests ``threadcreator_db`` (backend start, template and first database included);
the baseline is the same test without the fixture (plain pytest).
"""

from __future__ import annotations

from pathlib import Path

from benchlib import Row, RowSpec, short_reason
from harness import Context, Samples, log
from suites import startup_suite

__all__ = ["measure"]

PLAIN = "plain"


def _targets(ctx: Context) -> dict[str, tuple[str, Path, list[str]]]:
    """Target key → (label, suite directory, pytest arguments); ``plain`` first."""
    ws = ctx.workspace
    plain = ws.suite("startup-plain", startup_suite(with_database=False))
    with_db = ws.suite("startup-db", startup_suite(with_database=True))
    targets: dict[str, tuple[str, Path, list[str]]] = {PLAIN: ("plain pytest", plain, [])}
    if "sqlite" in ctx.backends:
        targets["sqlite"] = ("SQLite", with_db, ["--threadcreator-db=sqlite"])
    if "postgresql" in ctx.backends:
        targets["postgresql-url"] = (
            "PostgreSQL URL",
            with_db,
            [f"--threadcreator-db={ctx.pg_url}"],
        )
        targets["postgresql-local"] = (
            "postgresql-local",
            with_db,
            ["--threadcreator-db=postgresql-local"],
        )
    return targets


def measure(ctx: Context) -> list[Row]:
    """Seconds to the first test's body, per backend, against plain pytest."""
    ws = ctx.workspace
    targets = _targets(ctx)
    samples = Samples({k: [] for k in targets}, {})
    for rep in range(ctx.repeats):
        for key in ctx.repeat_order(list(targets), rep):
            if samples.gave_up(key):
                continue
            _, directory, args = targets[key]
            out = ws.root / f"startup-{key}-{rep}.txt"
            run = ws.run(directory, args, env={"BENCH_OUT": str(out)}, timeout=300)
            try:
                first: float | None = float(out.read_text(encoding="utf-8")) - run.spawned_at
            except (OSError, ValueError):
                first = None
            if first is None or not run.ok(1):
                reason = short_reason(run.reason())
                samples.fail(key, reason)
                log(f"startup {key}: FAILED {reason}")
                continue
            samples.values[key].append(first)
            log(f"startup {key}: {first:.2f} s to first test ({run.wall_s:.2f} s total)")
    base = samples.median(PLAIN) if samples.ok(PLAIN) else None
    rows: list[Row] = []
    for key, (label, _, _) in targets.items():
        if key == PLAIN:
            continue
        spec = RowSpec(
            f"startup.{key}",
            "startup",
            f"Start-up, {label}: time to first test",
            "s",
            None,
            "× plain",
        )
        if not samples.ok(key):
            rows.append(spec.missing(samples.reason(key)))
            continue
        ours = samples.median(key)
        rows.append(
            spec.measured(
                ours,
                baseline=base,
                baseline_label="plain pytest",
                ratio=ours / base if base else None,
                warning=samples.warning(key, PLAIN),
                samples={"first_test_s": samples.values[key], "plain_s": samples.values[PLAIN]},
            )
        )
    return rows
