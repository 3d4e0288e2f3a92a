"""What the throughput figures share: running :mod:`throughput` and its per-repeat rates.

The measurement itself lives in ``benchmarks/throughput.py`` (importable and runnable alone);
the figure modules turn its :class:`throughput.ThroughputResult` into rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from benchlib import Goal, Row, RowSpec, median, short_reason
from harness import BACKEND_NAMES, Context, log

if TYPE_CHECKING:
    import throughput

__all__ = [
    "BATCH",
    "CREATES",
    "MODES",
    "SMOKE_CREATES",
    "ceiling_row",
    "common_extra",
    "creates",
    "missing_all",
    "paired",
    "run_measure",
    "server_rows",
    "specs",
]

CREATES = 5_000
#: Timed creates per measurement in a ``--smoke`` run.
SMOKE_CREATES = 400
BATCH = 200
MODES = ("sequential", "concurrent")
_SHORT = {"sequential": "seq", "concurrent": "conc"}


def creates(ctx: Context) -> int:
    """Timed creates per measurement: :data:`CREATES`, or :data:`SMOKE_CREATES` with ``--smoke``."""
    return SMOKE_CREATES if ctx.smoke else CREATES


def specs(backend: str, goals: dict[str, Goal | None]) -> dict[str, RowSpec]:
    """The sequential and the gathered row of ``backend``, with each mode's goal."""
    name = BACKEND_NAMES[backend]
    titles = {
        "sequential": f"Throughput {name}, sequential awaits",
        "concurrent": f"Throughput {name}, gather ×{BATCH}",
    }
    return {
        mode: RowSpec(f"throughput.{backend}.{mode}", "throughput", titles[mode], "creates/s", goal)
        for mode, goal in goals.items()
    }


def run_measure(
    backend: str, measure: Callable[[], throughput.ThroughputResult]
) -> tuple[throughput.ThroughputResult | None, str | None]:
    """The result of ``measure()``, or None and why it could not be measured."""
    import throughput

    try:
        result = measure()
    except throughput.BenchmarkError as exc:
        return None, f"benchmark error: {exc}"
    except Exception as exc:  # the package failed (it may be mid-edit): report, go on
        reason = f"{type(exc).__name__}: {exc}"
        log(f"throughput {backend}: FAILED {reason}")
        return None, reason
    if result.reason is not None:
        return None, result.reason
    return result, None


def paired(ours: Sequence[float], base: Sequence[float]) -> list[float]:
    """Per repeat, ours divided by the baseline run next to it."""
    return [a / b for a, b in zip(ours, base, strict=False)]


def common_extra(result: throughput.ThroughputResult) -> dict[str, Any]:
    """The JSON details every throughput row carries: sizes, raw medians, the better raw loop."""
    rates = result.rates
    reps = range(min(len(v) for v in rates.values()))
    seq_wins = sum(rates["raw-sequential"][i] >= rates["raw-concurrent"][i] for i in reps)
    return {
        "creates": result.creates,
        "batch": result.batch,
        "raw_medians": {mode: result.median(f"raw-{mode}") for mode in MODES},
        "raw_sequential_was_best": f"{seq_wins} of {len(reps)} repeats",
    }


def missing_all(row_specs: dict[str, RowSpec], reason: str | None) -> list[Row]:
    """Every row of the figure, not available for ``reason``."""
    return [spec.missing(short_reason(reason or "no result")) for spec in row_specs.values()]


def server_rows(
    ctx: Context,
    backend: str,
    goal: Goal,
    driver: str,
    reason: Callable[[], str | None],
    measure: Callable[[], throughput.ThroughputResult],
) -> list[Row]:
    """The sequential and gathered rows of a server backend: ThreadCreator against the raw
    ``driver`` loop of the same mode, ratios paired per repeat; only the gathered row has a goal.

    ``reason()``: why the server cannot be measured (then every row says so), or None.
    """
    if backend not in ctx.backends:
        return []
    row_specs = specs(backend, {"sequential": None, "concurrent": goal})
    why = reason()
    if why is not None:
        return missing_all(row_specs, why)
    result, why = run_measure(backend, measure)
    if result is None:
        return missing_all(row_specs, why)
    rates = result.rates
    extra = {**common_extra(result), **result.extra}
    rows: list[Row] = []
    for mode, spec in row_specs.items():
        ours, base = rates[f"ours-{mode}"], rates[f"raw-{mode}"]
        ratios = paired(ours, base)
        rows.append(
            spec.measured(
                median(ours),
                baseline=median(base),
                baseline_label=f"raw {driver} {_SHORT[mode]}",
                ratio=median(ratios),
                samples={k: list(v) for k, v in rates.items()},
                extra={**extra, "ratio_per_repeat": ratios},
                warning=ctx.smoke_warning,
            )
        )
    return rows


def ceiling_row(
    ctx: Context, spec: RowSpec, rates: dict[str, list[float]], ceiling: str, label: str
) -> Row | None:
    """The gathered creates against the ``ceiling`` variant's rates, paired per repeat (None
    when it was not measured)."""
    base = rates.get(ceiling)
    if not base:
        return None
    ours = rates["ours-concurrent"]
    ratios = paired(ours, base)
    return spec.measured(
        median(ours),
        baseline=median(base),
        baseline_label=label,
        ratio=median(ratios),
        samples={"ours-concurrent": list(ours), "ceiling": list(base)},
        extra={"ratio_per_repeat": ratios},
        warning=ctx.smoke_warning,
    )
