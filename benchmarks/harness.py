"""What every figure module shares: the run's options and workspace, and interleaved repeats.

Pytest-free and package-free like :mod:`benchlib`; figures import it, ``run.py`` builds the
:class:`Context` from the command line.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import Row, median, short_reason
from suites import Workspace, ours_create_suite

__all__ = [
    "BACKEND_NAMES",
    "EXTRA_CHEAP_REPEATS",
    "SMOKE_WARNING",
    "Context",
    "FigureFunction",
    "Plan",
    "Samples",
    "label_db",
    "log",
    "mysql_parts",
    "pg_parts",
    "run_plan",
]

#: How the table names each backend.
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MySQL"}

#: The backends of the figures that have no MySQL rows yet (``Context.targets``' default).
SQLITE_AND_POSTGRESQL = ("sqlite", "postgresql")

#: The warning every row of a ``--smoke`` run carries.
SMOKE_WARNING = "smoke run: reduced sizes, not a figure"

#: Suites faster than a figure's ``cheap_s`` get this many more runs in a full run.
EXTRA_CHEAP_REPEATS = 2


def log(line: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {line}", file=sys.stderr, flush=True)


def label_db(db: str) -> str:
    """``db`` as it may be printed: a URL without its password."""
    if "://" not in db:
        return db
    from sqlalchemy.engine import make_url

    return make_url(db).render_as_string(hide_password=True)


def pg_parts(url: str) -> tuple[str, int, str, str | None]:
    """Host, port, user and password of a PostgreSQL URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return (
        parsed.host or "127.0.0.1",
        parsed.port or 5432,
        parsed.username or "postgres",
        parsed.password,
    )


def mysql_parts(url: str) -> tuple[str, int, str, str | None]:
    """Host, port, user and password of a MySQL/MariaDB URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return (
        parsed.host or "127.0.0.1",
        parsed.port or 3306,
        parsed.username or "root",
        parsed.password,
    )


def _pytest_mysql_reason(url: str) -> str | None:
    try:
        import pymysql
        import pytest_mysql  # noqa: F401
    except ImportError as exc:
        return f"pip install 'pytest-threadcreator[bench]' ({exc})"
    host, port, user, password = mysql_parts(url)
    try:
        pymysql.connect(
            host=host, port=port, user=user, password=password or "", connect_timeout=5
        ).close()
    except Exception as exc:
        return short_reason(f"{type(exc).__name__}: {exc}")
    return None


def _pytest_postgresql_reason(url: str) -> str | None:
    try:
        import psycopg
        import pytest_postgresql  # noqa: F401
    except ImportError as exc:
        return f"pip install 'pytest-threadcreator[bench]' ({exc})"
    host, port, user, password = pg_parts(url)
    try:
        psycopg.connect(
            host=host, port=port, user=user, password=password, dbname="postgres", connect_timeout=5
        ).close()
    except Exception as exc:
        return short_reason(f"{type(exc).__name__}: {exc}")
    return None


@dataclass
class Context:
    """What every figure needs: options, the workspace, and cached availability probes."""

    repeats: int
    backends: frozenset[str]
    pg_url: str
    workspace: Workspace
    mysql_url: str = ""
    #: ``--smoke``: the overhead and throughput figures at reduced sizes (checks that they run)
    smoke: bool = False
    _probes: dict[str, str | None] = field(default_factory=dict)

    @property
    def smoke_warning(self) -> str:
        """:data:`SMOKE_WARNING` in a ``--smoke`` run, else empty."""
        return SMOKE_WARNING if self.smoke else ""

    @property
    def full(self) -> bool:
        """True in a full run (3 repeats or more): the noisiest figures get extra repeats."""
        return self.repeats >= 3

    def repeat_order(self, names: Sequence[str], rep: int) -> list[str]:
        """``names`` rotated by ``rep``, so no suite always runs first or last."""
        if not names:
            return []
        shift = rep % len(names)
        return [*names[shift:], *names[:shift]]

    def plugin_backend_reason(self, db: str) -> str | None:
        """None if a 1-test suite passes on ``--threadcreator-db=db``; else why not."""
        if db not in self._probes:
            directory = self.workspace.suite("probe-create-1", ours_create_suite(1))
            run = self.workspace.run(directory, [f"--threadcreator-db={db}"], timeout=180)
            self._probes[db] = None if run.ok(1) else short_reason(run.reason())
            log(f"probe --threadcreator-db={label_db(db)}: {self._probes[db] or 'ok'}")
        return self._probes[db]

    def pg_reason(self) -> str | None:
        """Why the plugin's PostgreSQL backend (by URL) cannot be measured, or None."""
        return self.plugin_backend_reason(self.pg_url)

    def pytest_postgresql_reason(self) -> str | None:
        """Why the pytest-postgresql baseline cannot run, or None."""
        key = "pytest-postgresql"
        if key not in self._probes:
            self._probes[key] = _pytest_postgresql_reason(self.pg_url)
            log(f"probe pytest-postgresql: {self._probes[key] or 'ok'}")
        return self._probes[key]

    def mysql_reason(self) -> str | None:
        """Why the plugin's MySQL/MariaDB backend cannot be measured, or None."""
        return self.plugin_backend_reason(self.mysql_url)

    def pytest_mysql_reason(self) -> str | None:
        """Why the pytest-mysql baseline cannot run, or None."""
        key = "pytest-mysql"
        if key not in self._probes:
            self._probes[key] = _pytest_mysql_reason(self.mysql_url)
            log(f"probe pytest-mysql: {self._probes[key] or 'ok'}")
        return self._probes[key]

    def targets(
        self, kinds: Sequence[str] = SQLITE_AND_POSTGRESQL
    ) -> list[tuple[str, str, str | None]]:
        """(backend, ``--threadcreator-db`` value, why not available) of each chosen backend
        among ``kinds`` (the backends the figure has rows for)."""
        out: list[tuple[str, str, str | None]] = []
        if "sqlite" in self.backends and "sqlite" in kinds:
            out.append(("sqlite", "sqlite", None))
        if "postgresql" in self.backends and "postgresql" in kinds:
            out.append(("postgresql", self.pg_url, self.pg_reason()))
        if "mysql" in self.backends and "mysql" in kinds:
            out.append(("mysql", self.mysql_url, self.mysql_reason()))
        return out


@dataclass
class Samples:
    """Wall times per suite over the repeats, and the reasons of runs that failed."""

    values: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    #: CPU seconds (user + system) of each successful run, same order as ``values``
    cpu: dict[str, list[float]] = field(default_factory=dict)
    #: the repeat each successful run belongs to, same order as ``values``
    reps: dict[str, list[int]] = field(default_factory=dict)

    def ok(self, *names: str) -> bool:
        """True when every named suite has at least one successful run."""
        return all(self.values.get(name) for name in names)

    def median(self, name: str) -> float:
        """Median of the successful runs of ``name``."""
        return median(self.values[name])

    def paired_difference(self, name: str, base: str, *, cpu: bool = False) -> float:
        """Median over the repeats of ``name``'s run less ``base``'s run of the same repeat
        (wall seconds, or CPU seconds): the two ran minutes apart at most, so a machine that
        speeds up or slows down during the whole run moves both alike. Falls back to the
        difference of the medians when no repeat has both."""
        runs = self.cpu if cpu else self.values
        mine = dict(zip(self.reps.get(name, []), runs[name], strict=False))
        theirs = dict(zip(self.reps.get(base, []), runs[base], strict=False))
        common = sorted(mine.keys() & theirs.keys())
        if not common:
            return median(runs[name]) - median(runs[base])
        return median([mine[rep] - theirs[rep] for rep in common])

    def reason(self, *names: str) -> str:
        """Why one of ``names`` has no successful run."""
        for name in names:
            if not self.values.get(name):
                failed = self.failures.get(name)
                return failed[0] if failed else f"{name}: no successful run"
        return "no successful run"

    def warning(self, *names: str) -> str:
        """'k of n runs of X failed: reason' for the named suites that failed sometimes."""
        parts = []
        for name in names:
            failed = self.failures.get(name, [])
            if failed:
                total = len(failed) + len(self.values.get(name, []))
                parts.append(f"{len(failed)} of {total} runs of {name} failed: {failed[0]}")
        return "; ".join(parts)

    def gave_up(self, name: str) -> bool:
        """True once ``name`` failed twice: it is not retried any more."""
        return len(self.failures.get(name, [])) >= 2

    def fail(self, name: str, reason: str) -> None:
        """Record a failed run of ``name``."""
        self.failures.setdefault(name, []).append(reason)


Plan = dict[str, tuple[Path, list[str]]]


def run_plan(
    ctx: Context,
    plan: Plan,
    expected: int,
    label: str,
    *,
    cheap_s: float = 0.0,
) -> Samples:
    """Run every suite of ``plan`` once per repeat, interleaved and rotated.

    In a full run, suites whose median so far is under ``cheap_s`` seconds get
    :data:`EXTRA_CHEAP_REPEATS` more: they are the ones whose figures sit closest to the noise.
    A failed run is retried next repeat (the package may be mid-edit), at most twice.
    """
    samples = Samples(
        {name: [] for name in plan}, {}, {name: [] for name in plan}, {name: [] for name in plan}
    )
    extra = EXTRA_CHEAP_REPEATS if ctx.full and cheap_s > 0 else 0
    for rep in range(ctx.repeats + extra):
        for name in ctx.repeat_order(list(plan), rep):
            if samples.gave_up(name):
                continue
            if rep >= ctx.repeats and not (samples.values[name] and samples.median(name) < cheap_s):
                continue
            run = ctx.workspace.run(*plan[name])
            if run.ok(expected):
                samples.values[name].append(run.wall_s)
                samples.cpu[name].append(run.cpu_s)
                samples.reps[name].append(rep)
                log(f"{label} {name}: {run.wall_s:.2f} s (cpu {run.cpu_s:.2f} s)")
            else:
                reason = short_reason(run.reason())
                samples.fail(name, reason)
                log(f"{label} {name}: FAILED after {run.wall_s:.1f} s: {reason}")
    return samples


#: A figure: the rows it measured (or could not) for the run's options.
FigureFunction = Callable[[Context], list[Row]]
