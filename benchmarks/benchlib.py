"""Shared pieces of the benchmarks: result rows, goals, statistics and the machine description.

Pytest-free and package-free, so every benchmark script (and the chart) can import it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "DEFAULT_MYSQL_URL",
    "DEFAULT_PG_URL",
    "RESULTS_DIR",
    "Goal",
    "Row",
    "RowSpec",
    "machine_info",
    "median",
    "short_reason",
]

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_MYSQL_URL = "mysql+asyncmy://root@127.0.0.1:3306/"

#: Packages whose versions decide the figures; reported with every run.
PACKAGES = (
    "pytest-threadcreator",
    "pytest",
    "pytest-asyncio",
    "pytest-xdist",
    "pytest-postgresql",
    "pytest-mysql",
    "SQLAlchemy",
    "aiosqlite",
    "asyncpg",
    "psycopg",
    "asyncmy",
    "PyMySQL",
    "matplotlib",
)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def short_reason(text: str, limit: int = 160) -> str:
    """One line of ``text``, cut to ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True)
class Goal:
    """What a figure must reach.

    ``max_value``: ours ≤ value; ``min_ratio``: ratio ≥ value; ``zero``: ours == 0.
    """

    kind: Literal["max_value", "min_ratio", "zero"]
    value: float
    text: str

    def met(self, ours: float | None, ratio: float | None) -> bool | None:
        """Whether the goal is met (None when the figure is missing)."""
        if self.kind == "max_value":
            return None if ours is None else ours <= self.value
        if self.kind == "zero":
            return None if ours is None else ours == 0
        return None if ratio is None else ratio >= self.value

    def score(self, ours: float | None, ratio: float | None) -> float | None:
        """Achieved / required, so that ≥ 1 means met (for the chart); None if not a ratio."""
        if self.kind == "max_value" and ours is not None and ours > 0:
            return self.value / ours
        if self.kind == "min_ratio" and ratio is not None:
            return ratio / self.value
        return None


@dataclass
class Row:
    """One line of the results table."""

    key: str
    group: str
    figure: str
    unit: str
    ours: float | None = None
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    ratio_label: str = "×"
    goal: Goal | None = None
    #: why the figure is missing ("not available: …"); empty when measured
    note: str = ""
    #: a problem that did not stop the measurement (e.g. "1 of 3 runs failed: …")
    warning: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (None without a goal or a figure)."""
        return None if self.goal is None else self.goal.met(self.ours, self.ratio)

    @property
    def available(self) -> bool:
        """False when the figure could not be measured (``note`` says why)."""
        return self.ours is not None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """A row back from :meth:`to_json` (the derived ``met`` and ``score`` are dropped)."""
        fields = {k: v for k, v in data.items() if k not in ("met", "score")}
        goal = fields.get("goal")
        if goal is not None:
            fields["goal"] = Goal(**goal)
        return cls(**fields)

    def to_json(self) -> dict[str, Any]:
        """The row as plain JSON data (with ``met`` and the chart's ``score``)."""
        data = asdict(self)
        data["met"] = self.met
        data["score"] = None if self.goal is None else self.goal.score(self.ours, self.ratio)
        return data


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        mem_kb = 0
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        mem_kb = 0
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "packages": _versions(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


@dataclass(frozen=True)
class RowSpec:
    """What names a row of the table (key, group, title, unit, goal): a row measured or missing.

    Every figure module declares its rows as specs and builds them with :meth:`measured` or
    :meth:`missing`, so that a row's names are written once whether or not it could be measured.
    """

    key: str
    group: str
    figure: str
    unit: str
    goal: Goal | None = None
    ratio_label: str = "×"

    def missing(self, reason: str) -> Row:
        """The row of a figure that could not be measured: ``not available: reason``."""
        return Row(
            key=self.key,
            group=self.group,
            figure=self.figure,
            unit=self.unit,
            goal=self.goal,
            ratio_label=self.ratio_label,
            note=f"not available: {reason}",
        )

    def measured(
        self,
        ours: float,
        *,
        baseline: float | None = None,
        baseline_label: str = "",
        ratio: float | None = None,
        warning: str = "",
        samples: dict[str, list[float]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Row:
        """The row of a measured figure."""
        return Row(
            key=self.key,
            group=self.group,
            figure=self.figure,
            unit=self.unit,
            ours=ours,
            baseline=baseline,
            baseline_label=baseline_label,
            ratio=ratio,
            ratio_label=self.ratio_label,
            goal=self.goal,
            warning=warning,
            samples=samples if samples is not None else {},
            extra=extra if extra is not None else {},
        )
