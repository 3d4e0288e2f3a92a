"""Render ``benchmarks/results/chart.png`` from ``latest.json``: each figure's ratio to its goal.

Run: ``.venv/bin/python benchmarks/chart.py [--input results/latest.json] [--output chart.png]``.
Needs matplotlib (the optional ``bench`` extra: ``pip install 'pytest-threadcreator[bench]'``);
without it, prints a note and exits 0.

Every bar is "achieved / required", so 1 is the goal line and the axis is logarithmic: a ratio
goal (≥ 10× lower, ≥ 1.5×) plots ratio / goal; a ceiling (≤ 2 ms) plots ceiling / measured.
Count goals (errors + orphans = 0) and figures that could not be measured are listed below.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import RESULTS_DIR

__all__ = ["main", "render"]


def _value_text(row: dict[str, Any]) -> str:
    unit = row["unit"]
    ours = row["ours"]
    if row["goal"]["kind"] == "max_value":
        return f"{ours:.2f} {unit.split('/')[0]} (goal {row['goal']['text']})"
    ratio = row["ratio"]
    return f"{ratio:.2f}{row['ratio_label']} (goal {row['goal']['text']})"


def render(data: dict[str, Any], output: Path) -> Path:
    """Draw the chart of ``data`` (the parsed latest.json) into ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    scored = [r for r in rows if r.get("goal") and r.get("score") is not None]
    counted = [
        r for r in rows if r.get("goal") and r["goal"]["kind"] == "zero" and r["ours"] is not None
    ]
    missing = [r for r in rows if r["ours"] is None]

    height = max(3.0, 0.55 * len(scored) + 2.2 + 0.22 * (len(counted) + len(missing)))
    fig, ax = plt.subplots(figsize=(13, height))
    labels = [r["figure"] for r in scored][::-1]
    scores = [float(r["score"]) for r in scored][::-1]
    colors = ["#2e7d32" if r["met"] else "#c62828" for r in scored][::-1]
    positions = range(len(scored))
    ax.barh(list(positions), scores, color=colors, height=0.6)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1.2, linestyle="--")
    ax.set_yticks(list(positions))
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlabel("achieved / required  (≥ 1 meets the goal; log scale)")
    low = min([*scores, 1.0]) / 2.5
    high = max([*scores, 1.0]) * 14
    ax.set_xlim(low, high)
    for pos, row in zip(positions, scored[::-1], strict=True):
        ax.text(
            float(row["score"]) * 1.08,
            pos,
            _value_text(row),
            va="center",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
        )
    machine = data.get("machine", {})
    ax.set_title(
        "pytest-threadcreator benchmarks vs goals "
        f"({'quick, ' if data.get('quick') else ''}medians of {data.get('repeats')})\n"
        f"nproc={machine.get('nproc')}, {machine.get('cpu_model')}, Python {machine.get('python')}"
        f", {data.get('generated_at', '')}",
        fontsize=10,
    )
    notes = [
        f"{r['figure']}: {r['ours']:.0f} (goal {r['goal']['text']}) {'met' if r['met'] else 'NOT met'}"
        for r in counted
    ]
    notes += [f"{r['figure']}: {r['note']}" for r in missing]
    if notes:
        fig.text(
            0.01, 0.01, "\n".join(notes), fontsize=7.5, va="bottom", ha="left", family="monospace"
        )
    bottom = min(0.5, 0.06 + 0.028 * len(notes) * 10 / height)
    fig.subplots_adjust(left=0.44, right=0.97, top=1 - 0.9 / height, bottom=bottom)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description="Chart of benchmark ratios against their goals")
    parser.add_argument("--input", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "chart.png")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("matplotlib") is None:
        print(
            "chart: matplotlib is not installed, no chart drawn "
            "(pip install 'pytest-threadcreator[bench]' or pip install matplotlib)"
        )
        return 0
    try:
        data = json.loads(args.input.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(
            f"chart: cannot read {args.input}: {exc}; run benchmarks/run.py first", file=sys.stderr
        )
        return 1
    print(f"wrote {render(data, args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
