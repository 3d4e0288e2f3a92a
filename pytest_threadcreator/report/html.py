"""The ``--threadcreator-report PATH.html`` page: one self-contained HTML file.

This module never imports pytest. The page loads nothing from anywhere: CSS is inline, the charts
are inline SVG drawn here in Python (no script runs), and a Content-Security-Policy meta tag
forbids every fetch, so it opens the same from a CI artifact, an e-mail or a laptop offline.
Every piece of user text (test ids, settings, error names) is HTML-escaped.

Big runs are drawn at a bounded cost: the timeline packs calls into at most ``_MAX_ROWS`` rows
and merges bars that touch at pixel resolution, the histogram has at most ``_MAX_BINS`` bins and
the other charts at most a few hundred columns, so a run adds at most a few hundred kilobytes to
the page however many calls it made.

The data :func:`render_html` reads is the report data of :mod:`.data`, whose docstring shows it.
Every key is optional for :func:`render_html` (a JSON report written before timings existed
renders without timelines); values are read defensively, since the data may come from a file.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["COLOURS", "render_html"]

#: Fill colour of each outcome in the histogram and the timeline (matplotlib's tab10 palette).
COLOURS: dict[str, str] = {"ok": "#1f77b4", "error": "#d62728", "timeout": "#ff7f0e"}
_IN_FLIGHT_COLOUR = "#9467bd"
_SETUP_COLOUR = "#2ca02c"
_OUTCOME_LABELS = {"ok": "succeeded", "error": "failed", "timeout": "timed out"}

_MAX_ROWS = 400  # timeline rows; more calls share a row
_MAX_BINS = 40  # latency histogram bins
_LOG_SCALE_RATIO = 20.0  # slowest / fastest call above which the histogram's axis is logarithmic
_MAX_COLUMNS = 300  # columns of the in-flight and setup charts
_SLOWEST_SETUPS = 50  # rows of the setup table

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       margin: 24px auto; max-width: 1080px; padding: 0 16px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 6px; word-break: break-all; font-family: ui-monospace, monospace; }
.settings, code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.settings { background: #f5f5f5; padding: 6px 10px; border-radius: 4px; word-break: break-all; }
.muted { color: #666; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 3px 10px 3px 0; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.test { font-family: ui-monospace, monospace; word-break: break-all; max-width: 640px; }
section.run { border: 1px solid #ddd; border-radius: 6px; padding: 12px 14px; margin: 16px 0; }
.numbers { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 6px 0 10px; }
.numbers b { font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 11px; height: 11px; margin-right: 4px;
            vertical-align: -1px; }
svg { display: block; overflow: visible; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
.failed { color: #b21f1f; }
"""


# --- small helpers --------------------------------------------------------------------------


def _e(value: object) -> str:
    """``value`` as escaped HTML text, safe in element content and quoted attributes."""
    return html.escape(str(value), quote=True)


def _px(value: float) -> str:
    """An SVG coordinate with at most one decimal."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _number(value: object, default: float = 0.0) -> float:
    """A finite float from untrusted data, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    number = float(value)
    return number if math.isfinite(number) else default


def _count(value: object) -> int:
    return int(_number(value))


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _ms(value: float) -> str:
    """A duration given in milliseconds, with a unit and precision that suit its size."""
    if value >= 10_000:
        return f"{value / 1000:,.1f} s"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 1:
        return f"{value:.2f} ms"
    return f"{value:.3f} ms"


def _seconds_label(seconds: float, span: float) -> str:
    """An axis label for ``seconds`` on an axis ``span`` seconds long."""
    if span >= 2:
        return f"{seconds:.2f} s" if span < 20 else f"{seconds:.1f} s"
    ms = seconds * 1000
    if span >= 0.2:
        return f"{ms:.0f} ms"
    if span >= 0.02:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms" if span >= 0.002 else f"{ms:.3f} ms"


def _legend(outcomes: Iterable[str]) -> str:
    present = set(outcomes)
    items = [
        f'<span><i style="background:{COLOURS[outcome]}"></i>{_OUTCOME_LABELS[outcome]}</span>'
        for outcome in COLOURS
        if outcome in present
    ]
    return f'<div class="legend">{"".join(items)}</div>' if items else ""


def _svg(width: float, height: float, label: str, body: Sequence[str]) -> str:
    return (
        f'<svg width="{_px(width)}" height="{_px(height)}" viewBox="0 0 {_px(width)} '
        f'{_px(height)}" role="img" aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def _bucket_max(values: Sequence[float], columns: int) -> list[float]:
    """``values`` shrunk to at most ``columns`` by taking each consecutive group's maximum."""
    if len(values) <= columns:
        return list(values)
    size = math.ceil(len(values) / columns)
    return [max(values[i : i + size]) for i in range(0, len(values), size)]


# --- setup costs ----------------------------------------------------------------------------


def _setup_section(setup: list[Any]) -> str:
    rows = [_mapping(entry) for entry in setup]
    if not rows:
        return "<h2>Database setup per test</h2><p class=muted>No test used a database.</p>"
    ms = [_number(row.get("ms")) for row in rows]
    mean = math.fsum(ms) / len(ms)
    parts = [
        "<h2>Database setup per test</h2>",
        f"<p>{len(rows):,} test database(s) handed out; setup mean <b>{_ms(mean)}</b>, "
        f"max <b>{_ms(max(ms))}</b>, total {_ms(math.fsum(ms))}.</p>",
        _setup_chart(ms),
    ]
    slowest = sorted(range(len(rows)), key=lambda i: -ms[i])[:_SLOWEST_SETUPS]
    title = (
        "Slowest setups" if len(rows) > _SLOWEST_SETUPS else "Setups, slowest first"
    ) + f" ({len(slowest)} of {len(rows):,})"
    parts.append(
        f"<details{' open' if len(rows) <= 10 else ''}><summary>{title}</summary>"
        "<table><tr><th>#</th><th>test</th><th>backend</th><th>isolation</th>"
        "<th class=num>setup</th></tr>"
    )
    for index in slowest:
        row = rows[index]
        parts.append(
            f"<tr><td class=num>{index + 1}</td><td class=test>{_e(row.get('test', ''))}</td>"
            f"<td>{_e(row.get('backend', ''))}</td><td>{_e(row.get('isolation', ''))}</td>"
            f"<td class=num>{_ms(ms[index])}</td></tr>"
        )
    parts.append("</table></details>")
    return "".join(parts)


def _setup_chart(ms: list[float]) -> str:
    """Columns of setup time per test in run order (the first one usually builds a template)."""
    columns = _bucket_max(ms, _MAX_COLUMNS)
    left, top, width, height = 60.0, 8.0, 900.0, 110.0
    peak = max(columns) or 1.0
    step = width / len(columns)
    bar = max(step * 0.8, 0.6)
    body = [
        f'<text x="{_px(left - 6)}" y="{_px(top + 4)}" text-anchor="end">{_ms(peak)}</text>',
        f'<text x="{_px(left - 6)}" y="{_px(top + height)}" text-anchor="end">0</text>',
        f'<line x1="{_px(left)}" x2="{_px(left + width)}" y1="{_px(top + height)}" '
        f'y2="{_px(top + height)}" stroke="#999"/>',
        f'<g fill="{_SETUP_COLOUR}" shape-rendering="crispEdges">',
    ]
    for index, value in enumerate(columns):
        h = max(value / peak * height, 1.0 if value > 0 else 0.0)
        body.append(
            f'<rect x="{_px(left + index * step)}" y="{_px(top + height - h)}" '
            f'width="{_px(bar)}" height="{_px(h)}"/>'
        )
    per = math.ceil(len(ms) / len(columns))
    caption = "tests in run order" + (f" (max of each {per})" if per > 1 else "")
    body.append(
        f'</g><text x="{_px(left + width / 2)}" y="{_px(top + height + 16)}" '
        f'text-anchor="middle">{caption}</text>'
    )
    return _svg(left + width + 20, top + height + 24, "setup time per test", body)


# --- concurrency runs -----------------------------------------------------------------------


class _Call:
    """One started call of a run, as read from the data."""

    __slots__ = ("end", "index", "outcome", "start")

    def __init__(self, index: int, start: float, end: float, outcome: str) -> None:
        self.index = index
        self.start = start
        self.end = end
        self.outcome = outcome


def _calls(run: Mapping[str, Any]) -> tuple[list[_Call], int]:
    """The started calls of ``run`` sorted by start, and how many never started."""
    timings = _list(run.get("timings"))
    outcomes = _list(run.get("outcomes"))
    calls: list[_Call] = []
    never_started = 0
    for index, timing in enumerate(timings):
        outcome = outcomes[index] if index < len(outcomes) else "ok"
        if outcome not in COLOURS:
            outcome = "error"
        pair = _list(timing)
        if len(pair) != 2:
            never_started += 1
            continue
        start = max(0.0, _number(pair[0]))
        calls.append(_Call(index, start, max(start, _number(pair[1])), outcome))
    calls.sort(key=lambda call: (call.start, call.index))
    return calls, never_started


def _peak_in_flight(calls: Sequence[_Call]) -> int:
    """The most calls running at one instant (ends before starts at equal times)."""
    events = sorted([(c.start, 1) for c in calls] + [(c.end, -1) for c in calls])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return max(peak, 1) if calls else 0


def _runs_section(runs: list[Any]) -> str:
    parts = [f"<h2>Concurrency runs ({len(runs):,})</h2>"]
    if not runs:
        parts.append("<p class=muted>No test called run_concurrently.</p>")
        return "".join(parts)
    if len(runs) > 1:
        parts.append(
            "<table><tr><th>#</th><th>test</th><th class=num>calls</th>"
            "<th class=num>failed</th><th class=num>ops/s</th><th class=num>p95</th>"
            "<th class=num>p99</th></tr>"
        )
        for number, raw in enumerate(runs, 1):
            run = _mapping(raw)
            latency = _mapping(run.get("latency_ms"))
            failed = _count(run.get("failed"))
            parts.append(
                f'<tr><td class=num><a href="#run-{number}">{number}</a></td>'
                f"<td class=test>{_e(run.get('test', ''))}</td>"
                f"<td class=num>{_count(run.get('calls')):,}</td>"
                f'<td class="num{" failed" if failed else ""}">{failed:,}</td>'
                f"<td class=num>{_number(run.get('throughput')):,.0f}</td>"
                f"<td class=num>{_ms(_number(latency.get('p95')))}</td>"
                f"<td class=num>{_ms(_number(latency.get('p99')))}</td></tr>"
            )
        parts.append("</table>")
    parts += [_run_section(number, _mapping(run)) for number, run in enumerate(runs, 1)]
    return "".join(parts)


def _run_section(number: int, run: Mapping[str, Any]) -> str:
    calls, never_started = _calls(run)
    latency = _mapping(run.get("latency_ms"))
    failed = _count(run.get("failed"))
    timed_out = _count(run.get("timed_out"))
    error_counts = _mapping(run.get("error_counts"))
    if error_counts:
        errors = ", ".join(f"{_count(n)} × {_e(name)}" for name, n in error_counts.items())
    else:
        errors = ", ".join(_e(name) for name in _list(run.get("errors")))
    numbers = [
        ("calls", f"{_count(run.get('calls')):,}"),
        ("succeeded", f"{_count(run.get('succeeded')):,}"),
        ("failed", f"{failed:,}" + (f" ({timed_out:,} timed out)" if timed_out else "")),
        ("elapsed", f"{_number(run.get('elapsed_s')):.3f} s"),
        ("throughput", f"{_number(run.get('throughput')):,.1f} ops/s"),
    ]
    if calls:
        numbers.append(("peak in flight", f"{_peak_in_flight(calls):,}"))
    numbers += [
        (name, _ms(_number(latency.get(name))))
        for name in ("p50", "p95", "p99", "max", "mean")
        if name in latency
    ]
    parts = [
        f'<section class=run id="run-{number}"><h3>{_e(run.get("test", ""))}</h3>',
        '<div class="numbers">',
        *(
            f"<span{' class=failed' if label == 'failed' and failed else ''}>"
            f"{label} <b>{_e(value)}</b></span>"
            for label, value in numbers
        ),
        "</div>",
    ]
    if errors:
        parts.append(f"<p class=failed>errors: {errors}</p>")
    if not calls:
        parts.append("<p class=muted>No per-call timings in this report.</p></section>")
        return "".join(parts)
    span = max(call.end for call in calls)
    parts += [
        _legend(call.outcome for call in calls),
        '<div class="charts">',
        _histogram(calls, latency),
        _in_flight_chart(calls, span),
        "</div>",
        _timeline(calls, span),
    ]
    if never_started:
        parts.append(
            f"<p class=muted>{never_started:,} call(s) never started: they were still waiting "
            "for a slot when the timeout expired.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


class _LatencyScale:
    """Places a latency (ms) along the histogram's axis: logarithmic when the tail is long."""

    def __init__(self, low: float, high: float) -> None:
        if high <= low:  # one distinct value: centre it
            low, high = max(0.0, low - 0.5), low + 0.5
        self.log = low > 0 and high / low > _LOG_SCALE_RATIO
        if not self.log and low < 0.2 * high:
            low = 0.0  # close enough to zero: start the axis there, as readers expect
        self.low, self.high = low, high

    def fraction(self, ms: float) -> float:
        """Where ``ms`` lies on the axis, from 0.0 (left) to 1.0 (right)."""
        if self.log:
            position = math.log(max(ms, self.low) / self.low) / math.log(self.high / self.low)
        else:
            position = (ms - self.low) / (self.high - self.low)
        return min(1.0, max(0.0, position))

    def at(self, fraction: float) -> float:
        """The latency at ``fraction`` of the axis."""
        if self.log:
            return self.low * math.pow(self.high / self.low, fraction)
        return self.low + fraction * (self.high - self.low)


def _histogram(calls: Sequence[_Call], latency: Mapping[str, Any]) -> str:
    """Latency distribution of the started calls, bars stacked by outcome."""
    samples = [((call.end - call.start) * 1000, call.outcome) for call in calls]
    positive = [ms for ms, _ in samples if ms > 0]  # timings are rounded: 0 is "below 1 µs"
    scale = _LatencyScale(min(positive, default=0.0), max(positive, default=0.0))
    bins = min(_MAX_BINS, max(1, math.ceil(2 * math.sqrt(len(samples)))))
    counts = [dict.fromkeys(COLOURS, 0) for _ in range(bins)]
    for ms, outcome in samples:
        counts[min(bins - 1, int(scale.fraction(ms) * bins))][outcome] += 1
    peak = max(sum(counts_of_bin.values()) for counts_of_bin in counts)
    left, top, width, height = 44.0, 18.0, 400.0, 170.0
    step = width / bins
    order = list(COLOURS)  # stacking order, bottom up
    axis = " (log scale)" if scale.log else ""
    body = [
        f'<text x="{_px(left)}" y="11">latency of {len(samples):,} started call(s){axis}</text>',
        f'<text x="{_px(left - 6)}" y="{_px(top + 4)}" text-anchor="end">{peak:,}</text>',
        f'<text x="{_px(left - 6)}" y="{_px(top + height)}" text-anchor="end">0</text>',
    ]
    for outcome, colour in COLOURS.items():
        rects = []
        for index, counts_of_bin in enumerate(counts):
            count = counts_of_bin[outcome]
            if not count:
                continue
            below = sum(counts_of_bin[o] for o in order[: order.index(outcome)])
            h = max(count / peak * height, 1.0)  # a lone call in the tail stays visible
            y = top + height - below / peak * height - h
            rects.append(
                f'<rect x="{_px(left + index * step + 0.5)}" y="{_px(y)}" '
                f'width="{_px(max(step - 1, 0.8))}" height="{_px(h)}"/>'
            )
        if rects:
            body.append(f'<g fill="{colour}" shape-rendering="crispEdges">{"".join(rects)}</g>')
    for row, name in enumerate(("p50", "p95", "p99")):
        if name not in latency:
            continue
        value = _number(latency.get(name))
        x = left + scale.fraction(value) * width
        body.append(
            f'<line x1="{_px(x)}" x2="{_px(x)}" y1="{_px(top)}" y2="{_px(top + height)}" '
            f'stroke="#333" stroke-dasharray="3 3"><title>{name} {_ms(value)}</title></line>'
            # Near the right edge the label goes left of its line, so the svg does not clip it.
            + (
                f'<text x="{_px(x - 2)}" y="{_px(top + 10 + 11 * row)}" '
                f'text-anchor="end">{name}</text>'
                if x > left + width - 30
                else f'<text x="{_px(x + 2)}" y="{_px(top + 10 + 11 * row)}">{name}</text>'
            )
        )
    body += _x_axis(left, top + height, width, [(f, _ms(scale.at(f))) for f in (0, 0.5, 1)])
    return _svg(left + width + 30, top + height + 30, "latency histogram", body)


def _x_axis(left: float, y: float, width: float, ticks: Sequence[tuple[float, str]]) -> list[str]:
    body = [
        f'<line x1="{_px(left)}" x2="{_px(left + width)}" y1="{_px(y)}" y2="{_px(y)}" '
        'stroke="#999"/>'
    ]
    for fraction, label in ticks:
        x = left + fraction * width
        anchor = "start" if fraction == 0 else "end" if fraction == 1 else "middle"
        body.append(
            f'<line x1="{_px(x)}" x2="{_px(x)}" y1="{_px(y)}" y2="{_px(y + 4)}" stroke="#999"/>'
            f'<text x="{_px(x)}" y="{_px(y + 16)}" text-anchor="{anchor}">{_e(label)}</text>'
        )
    return body


def _in_flight_chart(calls: Sequence[_Call], span: float) -> str:
    """How many calls ran at once over the run (the most in each column)."""
    columns = min(_MAX_COLUMNS, max(1, len(calls)))
    scale = span if span > 0 else 1.0
    events = sorted([(c.start, 1) for c in calls] + [(c.end, -1) for c in calls])
    levels: list[int] = []
    current = position = 0
    for column in range(columns):
        column_end = (column + 1) / columns * scale
        level = current
        while position < len(events) and (
            events[position][0] < column_end or column == columns - 1
        ):
            current += events[position][1]
            level = max(level, current)
            position += 1
        levels.append(level)
    peak = max(max(levels), 1)
    left, top, width, height = 44.0, 18.0, 400.0, 170.0
    step = width / columns
    points = [f"M{_px(left)} {_px(top + height)}"]
    for column, level in enumerate(levels):
        y = top + height - level / peak * height
        points.append(f"L{_px(left + column * step)} {_px(y)}H{_px(left + (column + 1) * step)}")
    points.append(f"V{_px(top + height)}Z")
    body = [
        f'<text x="{_px(left)}" y="11">calls in flight</text>',
        f'<text x="{_px(left - 6)}" y="{_px(top + 4)}" text-anchor="end">{peak:,}</text>',
        f'<text x="{_px(left - 6)}" y="{_px(top + height)}" text-anchor="end">0</text>',
        f'<path d="{"".join(points)}" fill="{_IN_FLIGHT_COLOUR}" fill-opacity="0.75"/>',
    ]
    body += _x_axis(
        left, top + height, width, [(f, _seconds_label(f * span, span)) for f in (0, 0.5, 1)]
    )
    return _svg(left + width + 30, top + height + 30, "calls in flight over time", body)


def _timeline(calls: Sequence[_Call], span: float) -> str:
    """Each call as a bar from its start to its end, sorted by start, coloured by outcome.

    Up to ``_MAX_ROWS`` calls get a row each (with a tooltip); more share rows, and bars of
    one outcome in a row that touch or lie within a pixel of each other are merged. That bounds
    the bars whatever the number of calls: starts only grow down the rows, so a row's second or
    later bar of an outcome starts at least 2 px right of the one before it, which happens at
    most ``width / 2`` times per outcome across all rows; add one bar per row and outcome.
    """
    per_row = math.ceil(len(calls) / _MAX_ROWS)
    rows = math.ceil(len(calls) / per_row)
    row_height = min(12.0, max(1.0, 400.0 / rows))
    bar_height = row_height - 1 if row_height > 3 else row_height  # a gap between tall rows
    left, top, width = 60.0, 18.0, 900.0
    height = rows * row_height
    scale = width / span if span > 0 else 0.0

    merged: dict[str, list[tuple[int, float, float]]] = {outcome: [] for outcome in COLOURS}
    for row in range(rows):
        for call in calls[row * per_row : (row + 1) * per_row]:  # sorted by start
            x0 = call.start * scale
            x1 = max(call.end * scale, x0 + 1.0)  # an instant call is still a 1 px bar
            bars = merged[call.outcome]
            if bars and bars[-1][0] == row and x0 <= bars[-1][2] + 1.0:
                bars[-1] = (row, bars[-1][1], max(bars[-1][2], x1))
            else:
                bars.append((row, x0, x1))

    label = "calls, sorted by start" + (f", {per_row} per row" if per_row > 1 else "")
    body = [f'<text x="{_px(left)}" y="11">timeline: {label}</text>']
    for fraction in (0.25, 0.5, 0.75):
        x = left + fraction * width
        body.append(
            f'<line x1="{_px(x)}" x2="{_px(x)}" y1="{_px(top)}" y2="{_px(top + height)}" '
            'stroke="#eee"/>'
        )
    for outcome, colour in COLOURS.items():
        if not merged[outcome]:
            continue
        rects = []
        for row, x0, x1 in merged[outcome]:
            rect = (
                f'<rect x="{_px(left + x0)}" y="{_px(top + row * row_height)}" '
                f'width="{_px(x1 - x0)}" height="{_px(bar_height)}"'
            )
            if per_row == 1:
                call = calls[row]
                rect += (
                    f"><title>call {call.index}: {_e(_OUTCOME_LABELS[outcome])}, "
                    f"{_seconds_label(call.start, span)} → {_seconds_label(call.end, span)} "
                    f"({_ms((call.end - call.start) * 1000)})</title></rect>"
                )
            else:
                rect += "/>"
            rects.append(rect)
        body.append(f'<g fill="{colour}" shape-rendering="crispEdges">{"".join(rects)}</g>')
    body.append(
        f'<text x="{_px(left - 6)}" y="{_px(top + 9)}" text-anchor="end">first</text>'
        f'<text x="{_px(left - 6)}" y="{_px(top + height)}" text-anchor="end">last</text>'
    )
    body += _x_axis(
        left,
        top + height,
        width,
        [(f, _seconds_label(f * span, span)) for f in (0, 0.25, 0.5, 0.75, 1)],
    )
    return _svg(left + width + 30, top + height + 30, "timeline of concurrent calls", body)


# --- the page -------------------------------------------------------------------------------


def render_html(data: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML page (see the module docstring for ``data``)."""
    backends = [str(backend) for backend in _list(data.get("backends"))]
    kept = [str(location) for location in _list(data.get("kept_databases"))]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>pytest-threadcreator report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>pytest-threadcreator report</h1>",
        f'<p class="settings">{_e(data.get("settings", ""))}</p>',
    ]
    facts = [f"databases created: <b>{_count(data.get('databases_created')):,}</b>"]
    if backends:
        facts.append("backends: " + ", ".join(f"<code>{_e(b)}</code>" for b in backends))
    parts.append(f"<p>{'; '.join(facts)}</p>")
    if kept:
        parts.append(
            "<p>kept databases of failed tests:</p><ul>"
            + "".join(f"<li><code>{_e(location)}</code></li>" for location in kept)
            + "</ul>"
        )
    parts.append(_setup_section(_list(data.get("setup"))))
    parts.append(_runs_section(_list(data.get("concurrency_runs"))))
    parts.append("</body></html>\n")
    return "\n".join(parts)
