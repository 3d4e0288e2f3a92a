"""pytest-threadcreator benchmarks: the command line.

Run from the repository root:

    .venv/bin/python benchmarks/run.py [--quick] [--only NAME,...] [--backends sqlite,postgresql,mysql]

Figures (``--only``): overhead, throughput, concurrent, xdist, startup, engine, shake; each lives in its
own module under ``benchmarks/figures/``. Prints one table (figure, ours, baseline, ratio, goal,
met?), writes ``benchmarks/results/latest.json`` and, with ``--readme``, rewrites the README's
performance table. See ``benchmarks/README.md`` for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib import (
    DEFAULT_MYSQL_URL,
    DEFAULT_PG_URL,
    RESULTS_DIR,
    Row,
    RowSpec,
    machine_info,
    short_reason,
)
from figures import FIGURES
from harness import Context, FigureFunction, label_db, log
from suites import Workspace
from table import BEGIN, END, render_table, rewrite_readme

BACKENDS = ("sqlite", "postgresql", "mysql")


def render_machine(machine: dict[str, Any]) -> str:
    """A few lines describing where the figures were measured."""
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    load = machine.get("loadavg_start")
    load_end = machine.get("loadavg_end")

    def fmt_load(values: list[float] | None) -> str:
        return "/".join(f"{x:.2f}" for x in values) if values else "?"

    return "\n".join(
        [
            f"machine: nproc={machine['nproc']}, {machine['cpu_model']}, "
            f"{machine['memory_gb']} GB RAM, {machine['platform']}",
            f"python {machine['python']}; {packages}",
            f"load average (1/5/15 min): start {fmt_load(load)}, end {fmt_load(load_end)}",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description="pytest-threadcreator benchmarks"
    )
    parser.add_argument("--quick", action="store_true", help="one repeat instead of three")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="overhead and throughput at reduced sizes, to check that they run (not figures)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 3)")
    parser.add_argument(
        "--only", default=",".join(FIGURES), help=f"comma list of {', '.join(FIGURES)}"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma list of {', '.join(BACKENDS)} (mysql: overhead, throughput and 10k-concurrent rows only)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("THREADCREATOR_POSTGRES_URL", DEFAULT_PG_URL),
        help="server for the PostgreSQL figures (default $THREADCREATOR_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("THREADCREATOR_MYSQL_URL", DEFAULT_MYSQL_URL),
        help="server for the MySQL/MariaDB figures (default $THREADCREATOR_MYSQL_URL or "
        "%(default)s)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--keep-workspace", action="store_true", help="keep the generated suites")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="rewrite the performance table between the markers in this README from the run",
    )
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    backends = [x.strip() for x in args.backends.split(",") if x.strip()]
    for value, valid, option in (
        (only, tuple(FIGURES), "--only"),
        (backends, BACKENDS, "--backends"),
    ):
        bad = [v for v in value if v not in valid]
        if bad:
            parser.error(f"{option}: unknown {', '.join(bad)}; valid: {', '.join(valid)}")
    args.only, args.backends = only, backends
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats: must be 1 or more")
    if args.readme is not None:
        # Checked before measuring, so a long run does not end in this error.
        text = args.readme.read_text(encoding="utf-8") if args.readme.is_file() else ""
        if BEGIN not in text or END not in text:
            parser.error(
                f"--readme {args.readme}: no performance table markers; put {BEGIN} and {END} "
                "on lines of their own where the table goes"
            )
    return args


def run_figure(name: str, function: FigureFunction, ctx: Context) -> list[Row]:
    """The rows of one figure function; a crash becomes one ``not available`` row."""
    try:
        return function(ctx)
    except Exception as exc:  # e.g. the package does not import right now
        log(f"--- {name} FAILED:\n{traceback.format_exc()}")
        module = function.__module__.rsplit(".", 1)[-1]
        label = name if len(FIGURES[name]) == 1 else module
        spec = RowSpec(f"{label}.error", name, f"{label} (all figures)", "")
        return [spec.missing(short_reason(f"{type(exc).__name__}: {exc}"))]


def measure(args: argparse.Namespace) -> list[Row]:
    """Every chosen figure's rows, in table order."""
    workspace = Workspace(keep=args.keep_workspace)
    ctx = Context(
        repeats=args.repeats,
        backends=frozenset(args.backends),
        pg_url=args.pg_url,
        workspace=workspace,
        mysql_url=args.mysql_url,
        smoke=args.smoke,
    )
    log(f"workspace {workspace.root}; repeats={args.repeats}; figures={','.join(args.only)}")
    rows: list[Row] = []
    try:
        for name, functions in FIGURES.items():
            if name not in args.only:
                continue
            log(f"--- {name}")
            began = time.perf_counter()
            for function in functions:
                rows.extend(run_figure(name, function, ctx))
            log(f"--- {name} took {time.perf_counter() - began:.0f} s")
    finally:
        workspace.close()
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected figures, print the table and write the JSON (and the README table)."""
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info()
    rows = measure(args)
    machine["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    duration = time.perf_counter() - started
    table = render_table(rows)
    print(render_machine(machine))
    print(f"repeats: {args.repeats} (medians); took {duration:.0f} s\n")
    print(table)
    met = [r.met for r in rows if r.met is not None]
    print(
        f"\n{sum(met)} of {len(met)} goals met; "
        f"{sum(1 for r in rows if not r.available)} figure(s) not available"
    )
    payload = {
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "quick": args.quick,
        "smoke": args.smoke,
        "repeats": args.repeats,
        "figures": args.only,
        "backends": args.backends,
        "pg_url": label_db(args.pg_url),
        "mysql_url": label_db(args.mysql_url),
        "duration_s": round(duration, 1),
        "machine": machine,
        "rows": [row.to_json() for row in rows],
        "table": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {args.output}")
    if args.readme is not None:
        rewrite_readme(args.readme, rows)
        print(f"rewrote the performance table in {args.readme}")
    if args.output == RESULTS_DIR / "latest.json":
        import chart

        chart.main(["--input", str(args.output)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
