"""The results as text: the terminal table, and the README's Markdown table between markers.

Run ``.venv/bin/python benchmarks/table.py --readme README.md`` to rewrite the README's
performance table from ``results/latest.json`` (or ``--input PATH``) without measuring again;
``benchmarks/run.py --readme README.md`` does the same right after a run. The README holds the
table between ``<!-- benchmark-table:begin -->`` and ``<!-- benchmark-table:end -->``; the text
around it is never touched, and a README without both markers is an error, not a silent no-op.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from benchlib import RESULTS_DIR, Row

__all__ = ["BEGIN", "END", "number", "render_markdown", "render_table", "rewrite_readme"]

BEGIN = "<!-- benchmark-table:begin -->"
END = "<!-- benchmark-table:end -->"


def number(value: float, unit: str) -> str:
    """``value`` written in ``unit`` the way the tables show it."""
    if unit == "creates/s":
        return f"{value:,.0f}/s"
    if unit == "ms/test":
        return f"{value:.2f} ms"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "MB":
        return f"{value:,.0f} MB"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "count":
        return f"{value:.0f}"
    return f"{value:g} {unit}"


def _cells(row: Row) -> tuple[str, str, str, str, str, str]:
    """figure, ours, baseline, ratio, goal, met? — for a measured or a missing row."""
    goal = row.goal.text if row.goal is not None else "—"
    if not row.available:
        return (row.figure, row.note, "—", "—", goal, "n/a")
    assert row.ours is not None
    baseline = (
        f"{number(row.baseline, row.unit)} {row.baseline_label}".strip()
        if row.baseline is not None
        else (row.baseline_label or "—")
    )
    ratio = f"{row.ratio:.2f}{row.ratio_label}" if row.ratio is not None else "—"
    met = {True: "yes", False: "NO", None: "—"}[row.met]
    figure = f"{row.figure} [!]" if row.warning else row.figure
    return (figure, number(row.ours, row.unit), baseline, ratio, goal, met)


_HEADER = ("figure", "ours", "baseline", "ratio", "goal", "met?")


def render_table(rows: Sequence[Row]) -> str:
    """The results as one plain-text table, with the warnings of partly failed rows below."""
    lines = [_cells(row) for row in rows]
    widths = [
        min(72, max(len(h), *(len(line[i]) for line in lines))) for i, h in enumerate(_HEADER)
    ]

    def fmt(cells: Sequence[str]) -> str:
        out = []
        for cell, width in zip(cells, widths, strict=True):
            text = cell if len(cell) <= width else cell[: width - 1] + "…"
            out.append(text.ljust(width))
        return " | ".join(out).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(_HEADER), rule, *(fmt(line) for line in lines), *_notes(rows)])


def _notes(rows: Sequence[Row]) -> list[str]:
    return [f"[!] {row.figure}: {row.warning}" for row in rows if row.available and row.warning]


def render_markdown(rows: Sequence[Row]) -> str:
    """The results as a Markdown table (pipes in cells escaped), warnings as a list below."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(_HEADER), "|" + "---|" * len(_HEADER)]
    out += [line(_cells(row)) for row in rows]
    notes = _notes(rows)
    if notes:
        out += ["", *(f"- {note}" for note in notes)]
    return "\n".join(out)


def rewrite_readme(readme: Path, rows: Sequence[Row]) -> None:
    """Replace what stands between the README's markers with the Markdown table of ``rows``."""
    text = readme.read_text(encoding="utf-8")
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < begin:
        raise SystemExit(
            f"{readme}: no performance table markers; put {BEGIN} and {END} on lines of their "
            "own where the table goes"
        )
    head, tail = text[: begin + len(BEGIN)], text[end:]
    readme.write_text(f"{head}\n{render_markdown(rows)}\n{tail}", encoding="utf-8")


def load_rows(path: Path) -> list[Row]:
    """The rows of a results JSON written by ``benchmarks/run.py``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Row.from_json(item) for item in data["rows"]]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the Markdown table of a results JSON, or rewrite a README's table with it."""
    parser = argparse.ArgumentParser(prog="benchmarks/table.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--readme", type=Path, default=None, help="rewrite this README's table")
    args = parser.parse_args(argv)
    if not args.input.exists():
        print(f"{args.input}: no results; run benchmarks/run.py first", file=sys.stderr)
        return 2
    rows = load_rows(args.input)
    if args.readme is None:
        print(render_markdown(rows))
    else:
        rewrite_readme(args.readme, rows)
        print(f"rewrote the performance table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
