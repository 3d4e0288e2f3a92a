"""Writing ``--threadcreator-report``: JSON, or the HTML page when the path says so."""

from __future__ import annotations

import json
from pathlib import Path

from .data import ReportData
from .html import render_html

__all__ = ["write_report"]


def write_report(path: str, data: ReportData) -> Path:
    """Write the report, an HTML page if ``path`` ends in .html or .htm, else JSON; return it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix.lower() in (".html", ".htm"):
        target.write_text(render_html(data), encoding="utf-8")
    else:
        target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return target
