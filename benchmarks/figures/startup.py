"""Start-up: time from spawning pytest to the first line of a 1-test suite's test body.

The test requests ``threadcreator_db`` (backend start, template and first database included);
the baseline is the same test without the fixture (plain pytest). A row's figure is the time the
plugin adds: the median time to the first test minus plain pytest's, measured interleaved. The
``postgresql-docker`` row is measured when a Docker daemon answers; it uses the image and network
of ``THREADCREATOR_DOCKER_IMAGE`` / ``THREADCREATOR_DOCKER_NETWORK`` when they are set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from benchlib import Goal, Row, RowSpec, short_reason
from harness import Context, Samples, log
from suites import startup_suite

__all__ = ["measure"]

PLAIN = "plain"

#: Issue goals: the time the plugin adds before the first test, per backend.
GOALS = {
    "sqlite": Goal("max_value", 0.1, "≤ 0.1 s over plain"),
    "postgresql-local": Goal("max_value", 0.6, "≤ 0.6 s over plain"),
}
DOCKER_ENV = ("THREADCREATOR_DOCKER_IMAGE", "THREADCREATOR_DOCKER_NETWORK")


def _docker_answers() -> bool:
    """Whether a Docker daemon answers ``docker info`` within a few seconds."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


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
        if _docker_answers():
            targets["postgresql-docker"] = (
                "postgresql-docker",
                with_db,
                ["--threadcreator-db=postgresql-docker"],
            )
    return targets


def measure(ctx: Context) -> list[Row]:
    """Seconds the plugin adds before the first test's body, per backend, over plain pytest."""
    ws = ctx.workspace
    targets = _targets(ctx)
    samples = Samples({k: [] for k in targets}, {})
    for rep in range(ctx.repeats):
        for key in ctx.repeat_order(list(targets), rep):
            if samples.gave_up(key):
                continue
            _, directory, args = targets[key]
            out = ws.root / f"startup-{key}-{rep}.txt"
            env = {"BENCH_OUT": str(out)}
            env.update({k: os.environ[k] for k in DOCKER_ENV if k in os.environ})
            run = ws.run(directory, args, env=env, timeout=300)
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
            f"Start-up, {label}: time added before the first test",
            "s",
            GOALS.get(key),
            "× plain",
        )
        if not samples.ok(key):
            rows.append(spec.missing(samples.reason(key)))
            continue
        first = samples.median(key)
        rows.append(
            spec.measured(
                first - base if base else first,
                baseline=base,
                baseline_label="plain pytest",
                ratio=first / base if base else None,
                warning=samples.warning(key, PLAIN),
                samples={"first_test_s": samples.values[key], "plain_s": samples.values[PLAIN]},
            )
        )
    return rows
