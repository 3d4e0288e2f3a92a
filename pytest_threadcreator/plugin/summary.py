"""The run's report: built from the plugin's state, shown in the terminal summary and written to
``--threadcreator-report``. The xdist controller shows its workers' reports through it too."""

from __future__ import annotations

from typing import Any

import pytest

from ..report.data import ReportData, report_data
from ..report.terminal import summary_lines
from ..report.write import write_report
from .state import state, state_or_none

__all__ = ["run_report", "show_report"]


def run_report(config: pytest.Config) -> ReportData | None:
    """This process's report data (None when the plugin is not configured)."""
    st = state_or_none(config)
    if st is None:
        return None
    return report_data(
        st.runtime,
        st.concurrency_reports,
        settings=st.settings.describe(),
        shaken=st.shaken,
        extra_runtimes=list(st.schema_runtimes.values()),
    )


def show_report(terminalreporter: Any, config: pytest.Config, data: ReportData) -> None:
    """Print the summary and write ``--threadcreator-report``."""
    lines = summary_lines(data, verbose=config.get_verbosity() > 0)
    if lines:
        terminalreporter.write_sep("-", "threadcreator")
        for line in lines:
            terminalreporter.write_line(line)
    report = state(config).settings.report
    if report:
        path = write_report(report, data)
        terminalreporter.write_line(f"threadcreator report written to {path}")
