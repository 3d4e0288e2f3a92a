"""Smoke tests of the benchmark command line (``benchmarks/run.py``).

They run the real command in a subprocess (# subprocess: the benchmarks are a script run from
the repository root, with ``benchmarks/`` on its path, not an importable package) on the
fastest figures with one repeat, and check what it writes, never how fast anything was.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ..helpers import (
    MYSQL_SERVER_URL,
    PG_SERVER_URL,
    REPO_ROOT,
    mysql_server_missing,
    needs,
    pg_server_missing,
)

#: The benchmark picks its own backends: run once per test.sh, not on every backend.
pytestmark = pytest.mark.suite_independent

ROOT = REPO_ROOT
RUN = ROOT / "benchmarks" / "run.py"
BEGIN = "<!-- benchmark-table:begin -->"
END = "<!-- benchmark-table:end -->"

PAYLOAD_KEYS = {
    "generated_at",
    "command",
    "quick",
    "repeats",
    "figures",
    "backends",
    "pg_url",
    "duration_s",
    "machine",
    "rows",
    "table",
}
ROW_KEYS = {
    "key",
    "group",
    "figure",
    "unit",
    "ours",
    "baseline",
    "baseline_label",
    "ratio",
    "ratio_label",
    "goal",
    "note",
    "warning",
    "samples",
    "extra",
    "met",
    "score",
}


def run_benchmark(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``benchmarks/run.py ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, str(RUN), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_startup_figure_writes_json_and_rewrites_only_the_readme_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text(encoding="utf-8")
    assert BEGIN in original and END in original
    readme.write_text(original, encoding="utf-8")
    output = tmp_path / "results.json"

    proc = run_benchmark(
        "--only=startup",
        "--backends=sqlite",
        "--repeats=1",
        f"--output={output}",
        f"--readme={readme}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    data = load(output)
    assert PAYLOAD_KEYS <= data.keys()
    assert data["figures"] == ["startup"] and data["backends"] == ["sqlite"]
    assert data["repeats"] == 1
    [row] = data["rows"]
    assert ROW_KEYS <= row.keys()
    assert row["key"] == "startup.sqlite"
    assert row["group"] == "startup"
    assert row["note"] == "", row["note"]
    assert row["baseline"] > 0
    # ours is the time the plugin adds: time to the first test minus plain pytest's
    first = row["samples"]["first_test_s"][0]
    assert row["ours"] == pytest.approx(first - row["baseline"])
    assert row["ratio"] == pytest.approx(first / row["baseline"])
    assert row["goal"] == {"kind": "max_value", "value": 0.1, "text": "≤ 0.1 s over plain"}
    assert row["ratio_label"] == "× plain"
    assert len(row["samples"]["first_test_s"]) == 1
    assert "Start-up, SQLite: time added before the first test" in data["table"]
    assert "Start-up, SQLite: time added before the first test" in proc.stdout

    rewritten = readme.read_text(encoding="utf-8")
    head, tail = original[: original.index(BEGIN)], original[original.index(END) :]
    assert rewritten.startswith(head + BEGIN + "\n")
    assert rewritten.endswith(tail)
    table = rewritten[len(head) + len(BEGIN) : len(rewritten) - len(tail)].strip().splitlines()
    assert table[0] == "| figure | ours | baseline | ratio | goal | met? |"
    assert len(table) == 3  # header, rule, the one row
    assert table[2].startswith("| Start-up, SQLite: time added before the first test | ")


def test_readme_without_markers_fails_before_measuring(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# A README without a performance table\n", encoding="utf-8")
    output = tmp_path / "results.json"

    proc = run_benchmark(
        "--only=startup", "--backends=sqlite", f"--output={output}", f"--readme={readme}"
    )

    assert proc.returncode == 2
    assert f"--readme {readme}: no performance table markers; put {BEGIN} and {END}" in proc.stderr
    assert not output.exists()
    assert readme.read_text(encoding="utf-8") == "# A README without a performance table\n"


def test_unknown_figure_is_a_usage_error_naming_the_valid_ones(tmp_path: Path) -> None:
    proc = run_benchmark("--only=overhead,nonsense", f"--output={tmp_path / 'r.json'}")

    assert proc.returncode == 2
    assert (
        "--only: unknown nonsense; valid: overhead, throughput, concurrent, xdist, startup, engine"
        in proc.stderr
    )


def check_engine_figure(tmp_path: Path, backend: str) -> None:
    """The engine figure on ``backend``: one measured row, both sides, every round."""
    output = tmp_path / "results.json"

    proc = run_benchmark(
        "--only=engine",
        f"--backends={backend}",
        f"--pg-url={PG_SERVER_URL}",
        "--repeats=1",
        f"--output={output}",
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    [row] = load(output)["rows"]
    assert row["key"] == f"engine.{backend}"
    assert row["note"] == "", row["note"]
    assert row["goal"] == {"kind": "min_ratio", "value": 0.9, "text": "≥ 0.90× plain"}
    assert row["met"] is (row["ratio"] >= 0.9)
    rounds = row["extra"]["rounds"]
    assert len(row["samples"]["instrumented"]) == len(row["samples"]["plain"]) == rounds >= 4
    assert len(row["extra"]["ratio_per_round"]) == rounds
    assert row["extra"]["chunk_pairs"] == rounds * row["extra"]["inserts_per_round"] // 10


def test_app_engine_figure_on_sqlite(tmp_path: Path) -> None:
    check_engine_figure(tmp_path, "sqlite")


@needs(pg_server_missing())
def test_app_engine_figure_on_postgresql(tmp_path: Path) -> None:
    check_engine_figure(tmp_path, "postgresql")


def run_mysql_figure(tmp_path: Path, figure: str) -> list[dict[str, Any]]:
    """``figure`` on ``--backends=mysql``, one repeat at ``--smoke`` sizes: its rows, every one
    measured and marked as a smoke run."""
    output = tmp_path / "results.json"

    proc = run_benchmark(
        f"--only={figure}",
        "--backends=mysql",
        f"--mysql-url={MYSQL_SERVER_URL}",
        "--repeats=1",
        "--smoke",
        f"--output={output}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    data = load(output)
    assert data["backends"] == ["mysql"] and data["smoke"] is True
    rows: list[dict[str, Any]] = data["rows"]
    for row in rows:
        assert row["note"] == "", row["note"]
        assert row["warning"] == "smoke run: reduced sizes, not a figure", row["warning"]
        assert f"{row['figure']} [!]" in data["table"]
    return rows


@needs(mysql_server_missing())
def test_overhead_figure_on_mysql_against_pytest_mysql(tmp_path: Path) -> None:
    rows = run_mysql_figure(tmp_path, "overhead")

    assert [row["key"] for row in rows] == [
        "overhead.mysql.clean",
        "overhead.mysql.fresh",
        "overhead.mysql.rollback",
    ]
    if importlib.util.find_spec("pytest_mysql") is None:
        # the test extra leaves the peer out (the bench extra brings it): the rows say so
        for row in rows:
            assert row["baseline_label"].startswith(
                "pytest-mysql n/a: pip install 'pytest-threadcreator[bench]'"
            ), row["baseline_label"]
            assert row["baseline"] is None and row["ratio"] is None and row["ours"] is not None
        return
    for row in rows:
        assert row["baseline_label"] == "pytest-mysql"
        assert row["goal"] == {"kind": "min_ratio", "value": 10.0, "text": "≥ 10× lower"}
        # At smoke sizes a suite can come out as fast as the empty one: no ratio then.
        expected = row["baseline"] / row["ours"] if row["ours"] > 0 else None
        assert row["ratio"] == expected
        assert row["met"] is (None if expected is None else expected >= 10.0)
        assert len(row["samples"]["suite_s"]) == len(row["samples"]["pytest_mysql_suite_s"]) == 1
        assert len(row["samples"]["empty_sync_suite_s"]) == 1


@needs(mysql_server_missing())
def test_throughput_figure_on_mysql_against_raw_asyncmy(tmp_path: Path) -> None:
    rows = run_mysql_figure(tmp_path, "throughput")

    assert [row["key"] for row in rows] == [
        "throughput.mysql.sequential",
        "throughput.mysql.concurrent",
        "throughput.mysql.ceiling",
    ]
    sequential, concurrent, ceiling = rows
    assert sequential["goal"] is None and sequential["baseline_label"] == "raw asyncmy seq"
    assert concurrent["goal"] == {"kind": "min_ratio", "value": 1.0, "text": "≥ 1.0×"}
    assert concurrent["baseline_label"] == "raw asyncmy conc"
    assert concurrent["met"] is (concurrent["ratio"] >= 1.0)
    # the same gathered creates, set against the plugin's design written bare in asyncmy
    assert ceiling["goal"] is None and ceiling["met"] is None
    assert ceiling["ours"] == concurrent["ours"]
    assert ceiling["baseline_label"] == "raw asyncmy, the same packets"
    assert set(ceiling["samples"]) == {"ours-concurrent", "ceiling"}
    assert ceiling["extra"]["ratio_per_repeat"] == [ceiling["ratio"]]
    assert ceiling["ratio"] == ceiling["ours"] / ceiling["baseline"]
    for row in rows[:2]:
        assert set(row["samples"]) == {
            "ours-sequential",
            "raw-sequential",
            "ours-concurrent",
            "raw-concurrent",
            "ceiling-asyncmy",
        }
        assert all(len(values) == 1 for values in row["samples"].values())
        assert row["extra"]["ratio_per_repeat"] == [row["ratio"]]
        assert row["extra"]["pool_size"] >= 1
        assert row["extra"]["server"]


_PAIRED = """
import sys
sys.path.insert(0, sys.argv[1])
from harness import Samples

def samples(suite, empty, reps_empty=(0, 1, 2)):
    return Samples(
        {"suite": list(suite), "empty": list(empty)},
        {},
        {"suite": [x / 2 for x in suite], "empty": [x / 2 for x in empty]},
        {"suite": [0, 1, 2], "empty": list(reps_empty)},
    )

# the machine slowed down during the run: each repeat's suite is 1-2 s over its empty suite,
# while the difference of the medians (3.1 - 3.0) says 0.1
s = samples([3.0, 3.1, 9.0], [1.0, 3.0, 8.0])
print(s.paired_difference("suite", "empty"), s.paired_difference("suite", "empty", cpu=True))
# a repeat the empty suite has no run of is left out, not compared with another repeat's
s = samples([3.0, 3.1, 9.0], [1.0, 8.0], reps_empty=(0, 2))
print(s.paired_difference("suite", "empty"))
"""


def test_per_test_figures_pair_each_suite_with_the_empty_suite_of_its_repeat() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PAIRED, str(ROOT / "benchmarks")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1.0", "0.5", "1.5"]
