"""The HTML report: its data from real runs, a page that loads nothing, escaping, and charts that
render in a real headless browser (Debian's chromium).

Runs are real ``run_concurrently`` runs. Where a test needs exact bar lengths it puts the runner
on a fake clock, so nothing here depends on how fast the machine is; the only real waits are the
runs' own timeouts, which is what they test.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_threadcreator import concurrency
from pytest_threadcreator.concurrency import ConcurrencyReport, LatencyStats, run_concurrently
from pytest_threadcreator.report.data import run_data
from pytest_threadcreator.report.html import COLOURS, render_html

from ..helpers import FakeClock

pytestmark = pytest.mark.suite_independent

# Safety nets so a broken runner or browser fails the test instead of hanging it; never asserted.
HANG_GUARD_S = 30.0
BROWSER_GUARD_S = 120.0

MALICIOUS_ID = "tests/test_evil.py::test_x[<script>alert(1)</script>]"
ATTRIBUTE_BREAKER = '"><img src=x onerror=alert(2)>'

IN_FLIGHT_ON_WHITE = (0xAF, 0x8D, 0xCE)  # the in-flight chart's #9467bd at 0.75 opacity


# --- runs to draw ---------------------------------------------------------------------------


async def staircase_run(clock: FakeClock) -> ConcurrencyReport[int]:
    """40 calls that all start at fake time 0; call i ends at i + 1 s.

    Calls 0-19 succeed, 20-35 raise, 36-39 never finish and are stopped by the timeout at 36 s.
    The timeline is a staircase of long bars whose areas are known in advance.
    """
    count, first_error, first_hung = 40, 20, 36
    all_in = asyncio.Event()
    gates = [asyncio.Event() for _ in range(count)]
    entered = 0

    async def fn(item: int) -> int:
        nonlocal entered
        entered += 1
        if entered == count:
            all_in.set()
        await all_in.wait()
        if item == 0:
            gates[0].set()
        await gates[item].wait()  # hung calls' gates never open
        clock.now += 1
        if item + 1 < first_hung:
            gates[item + 1].set()
        if item >= first_error:
            raise ValueError(f"call {item} fails")
        return item

    return await asyncio.wait_for(run_concurrently(fn, count, timeout=0.05), HANG_GUARD_S)


async def mixed_run() -> ConcurrencyReport[int]:
    """200 real calls: some raise, two hang until the timeout stops them."""
    never = asyncio.Event()

    async def fn(item: int) -> int:
        for _ in range(item % 5):
            await asyncio.sleep(0)  # yield to the loop: calls interleave; not a wait for time
        if item % 9 == 0:
            raise ValueError(f"bad item {item}")
        if item in (150, 170):
            await never.wait()
        return item

    return await asyncio.wait_for(
        run_concurrently(fn, 200, max_concurrency=20, timeout=0.05), HANG_GUARD_S
    )


async def starved_run() -> ConcurrencyReport[int]:
    """Six calls, two slots: odd calls hang, so two calls never get a slot before the timeout."""
    never = asyncio.Event()

    async def fn(item: int) -> int:
        if item % 2:
            await never.wait()
        return item

    return await asyncio.wait_for(
        run_concurrently(fn, 6, max_concurrency=2, timeout=0.05), HANG_GUARD_S
    )


async def big_run() -> ConcurrencyReport[int]:
    """10,000 real calls that all overlap; every 1,000th raises."""

    async def fn(item: int) -> int:
        await asyncio.sleep(0)
        if item % 1000 == 0:
            raise KeyError(item)
        return item

    return await run_concurrently(fn, 10_000)


def page_data(*runs: tuple[str, ConcurrencyReport[Any]]) -> dict[str, Any]:
    """The report data as report.data.report_data builds it, with run_data for the runs."""
    return {
        "settings": "threadcreator: db=sqlite (from default), isolation=clean (from default)",
        "backends": ["sqlite (files under /tmp/pytest-of-root)"],
        "databases_created": 1,
        "setup": [
            {
                "test": f"tests/test_a.py::test_{n}",
                "backend": "sqlite",
                "isolation": "clean",
                "ms": ms,
            }
            for n, ms in enumerate([85.0, 4.5, 3.9, 5.2])
        ],
        "concurrency_runs": [run_data(nodeid, report) for nodeid, report in runs],
        "kept_databases": [],
    }


class PageParser(HTMLParser):
    """Collects the tags, attributes and text of a page as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


# --- the data -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_run_data_adds_timings_and_outcomes_to_the_json_report_fields(
    fake_clock: FakeClock,
) -> None:
    never = asyncio.Event()

    async def fn(item: int) -> int:
        if item % 2:
            await never.wait()
        fake_clock.now += 1
        return item

    report = await asyncio.wait_for(
        run_concurrently(fn, 6, max_concurrency=2, timeout=0.05), HANG_GUARD_S
    )
    data = run_data("tests/test_a.py::test_load", report)

    assert data == {
        "test": "tests/test_a.py::test_load",
        "calls": 6,
        "succeeded": 2,
        "failed": 4,
        "timed_out": 4,
        "elapsed_s": 2.0,
        "throughput": 1.0,
        "latency_ms": {"p50": 1000.0, "p95": 1000.0, "p99": 1000.0, "max": 1000.0, "mean": 750.0},
        "errors": ["TimeoutError"],
        "error_counts": {"TimeoutError": 4},
        "timings": [[0.0, 1.0], [1.0, 2.0], [1.0, 2.0], [2.0, 2.0], None, None],
        "outcomes": ["ok", "timeout", "ok", "timeout", "timeout", "timeout"],
    }
    assert json.loads(json.dumps(data)) == data


@pytest.mark.asyncio
async def test_run_data_rounds_timings_to_microseconds(fake_clock: FakeClock) -> None:
    fake_clock.now = 10.0

    async def fn(item: int) -> None:
        fake_clock.now += 0.123456789

    report = await run_concurrently(fn, 1)

    assert run_data("t", report)["timings"] == [[0.0, 0.123457]]


def test_run_data_of_a_report_built_without_outcomes_tells_errors_by_identity() -> None:
    error = ValueError("boom")
    report: ConcurrencyReport[int] = ConcurrencyReport(
        results=[1, error, 3],
        succeeded=2,
        failed=1,
        errors=[error],
        elapsed_s=0.0,
        throughput=0.0,
        latency_ms=LatencyStats.from_samples([]),
    )

    data = run_data("t", report)

    assert (data["outcomes"], data["timings"]) == (["ok", "error", "ok"], [])
    assert "No per-call timings in this report." in render_html({"concurrency_runs": [data]})


# --- the page -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs_page() -> str:
    """A page of four runs: the staircase (on a fake clock), mixed, starved and 10,000 calls."""
    clock = FakeClock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(concurrency, "_clock", clock)
        staircase = asyncio.run(staircase_run(clock))

    async def real_runs() -> list[tuple[str, ConcurrencyReport[Any]]]:
        return [
            ("tests/test_a.py::test_staircase", staircase),
            ("tests/test_a.py::test_mixed", await mixed_run()),
            ("tests/test_a.py::test_starved", await starved_run()),
            ("tests/test_a.py::test_big", await big_run()),
        ]

    return render_html(page_data(*asyncio.run(real_runs())))


def test_the_page_loads_nothing_from_anywhere(real_runs_page: str) -> None:
    page = parse(real_runs_page)

    assert "http://" not in real_runs_page and "https://" not in real_runs_page
    loaders = {"script", "link", "img", "iframe", "object", "embed", "audio", "video", "image"}
    assert not loaders & set(page.tags)
    assert [
        (tag, name, value)
        for tag, name, value in page.attributes
        if name in {"src", "srcset", "href", "xlink:href", "action", "poster", "data"}
        and not value.startswith("#")  # links to a run further down the same page
    ] == []
    assert not any(name.startswith("on") for _, name, _ in page.attributes)
    css = "".join(page.styles)
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert (
        "meta",
        "content",
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    ) in page.attributes


def test_the_page_shows_every_run_with_its_charts(real_runs_page: str) -> None:
    page = parse(real_runs_page)
    text = " ".join(page.text)

    for name in ("test_staircase", "test_mixed", "test_starved", "test_big"):
        assert f"tests/test_a.py::{name}" in text
    assert text.count("timeline: calls, sorted by start") == 4
    assert "timeline: calls, sorted by start, 25 per row" in text  # the 10,000-call run
    assert "2 call(s) never started" in text  # the starved run
    assert "errors: 4 × TimeoutError, 16 × ValueError" in text  # the staircase run
    assert "latency of 40 started call(s) (log scale)" in text  # 1 s … 36 s
    assert page.tags["svg"] == 1 + 4 * 3  # the setup chart, and three charts per run
    for colour in COLOURS.values():
        assert f'<g fill="{colour}"' in real_runs_page


def test_a_ten_thousand_call_run_keeps_the_page_small(real_runs_page: str) -> None:
    size = len(real_runs_page.encode())

    assert size < 1_000_000, f"page of {size:,} bytes"


@pytest.mark.asyncio
async def test_user_text_is_escaped() -> None:
    async def fn(item: int) -> int:
        if item:
            raise ValueError("boom")
        return item

    data = page_data((MALICIOUS_ID, await run_concurrently(fn, 3)))
    data["settings"] += ATTRIBUTE_BREAKER
    data["backends"].append(ATTRIBUTE_BREAKER)
    data["setup"][0]["test"] = MALICIOUS_ID
    data["kept_databases"] = [ATTRIBUTE_BREAKER]
    data["concurrency_runs"].append(dict(data["concurrency_runs"][0]))  # the runs table too

    html = render_html(data)
    page = parse(html)

    assert "script" not in page.tags and "img" not in page.tags
    assert not any(name.startswith("on") for _, name, _ in page.attributes)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    text = "".join(page.text)
    assert text.count(MALICIOUS_ID) == 5  # setup table, runs table twice, two run headings
    assert text.count(ATTRIBUTE_BREAKER) == 3  # settings, backends, kept databases


def test_a_report_without_timings_or_anything_still_renders() -> None:
    old_run = {  # what the JSON report held before timings existed
        "test": "tests/test_a.py::test_old",
        "calls": 3,
        "succeeded": 3,
        "failed": 0,
        "timed_out": 0,
        "elapsed_s": 0.01,
        "throughput": 300.0,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 2.0, "max": 2.0},
        "errors": [],
    }

    text = " ".join(parse(render_html({"concurrency_runs": [old_run]})).text)
    empty = " ".join(parse(render_html({})).text)

    assert "tests/test_a.py::test_old" in text
    assert "No per-call timings in this report." in text
    assert "No test used a database." in empty
    assert "No test called run_concurrently." in empty


def test_junk_in_the_data_renders_instead_of_raising() -> None:
    junk_run = {
        "test": 42,
        "timings": [[float("nan"), "x"], None, [1], "no", [0.5, 0.25]],
        "outcomes": ["weird"],
        "latency_ms": "none",
        "error_counts": {"ValueError": "many"},
    }

    page = render_html(
        {
            "settings": None,
            "backends": "sqlite",
            "setup": ["junk", {"ms": "slow"}],
            "concurrency_runs": [junk_run, 7],
        }
    )

    text = " ".join(parse(page).text)
    assert "3 call(s) never started" in text  # None, [1] and "no" are no timings
    assert "errors: 0 × ValueError" in text


# --- in a real browser ----------------------------------------------------------------------


def decode_png(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """Width and RGB pixels (row by row) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, compressed, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, "unsupported PNG layout"
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(compressed))
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous, strict=True))
        elif kind in (1, 3, 4):
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                if kind == 1:
                    line[i] = (line[i] + left) & 255
                elif kind == 3:
                    line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
                else:
                    up, up_left = previous[i], previous[i - channels] if i >= channels else 0
                    guess = left + up - up_left
                    pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - up_left)
                    best = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                    line[i] = (line[i] + best) & 255
        else:
            assert kind == 0, f"bad PNG filter {kind}"
        pixels += zip(line[0::channels], line[1::channels], line[2::channels], strict=True)
        previous = line
    return width, pixels


def encode_png(width: int, rows: list[bytes], filters: list[int]) -> bytes:
    """An RGB PNG whose row y is stored with filter ``filters[y]`` (to test the decoder)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    raw = bytearray()
    previous = bytes(width * 3)
    for row, kind in zip(rows, filters, strict=True):
        out = bytearray()
        for i, value in enumerate(row):
            left = row[i - 3] if i >= 3 else 0
            up, up_left = previous[i], previous[i - 3] if i >= 3 else 0
            guess = left + up - up_left
            pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - up_left)
            paeth = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
            predictor = [0, left, up, (left + up) >> 1, paeth][kind]
            out.append((value - predictor) & 255)
        raw += bytes([kind]) + out
        previous = row
    header = struct.pack(">IIBBBBB", width, len(rows), 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw)))
        + chunk(b"IEND", b"")
    )


def test_the_png_decoder_undoes_every_filter() -> None:
    width = 7
    rows = [
        bytes((y * 37 + x * 11 + c * 101) % 256 for x in range(width) for c in range(3))
        for y in range(10)
    ]
    filters = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]

    decoded_width, pixels = decode_png(encode_png(width, rows, filters))

    assert decoded_width == width
    assert pixels == [tuple(row[x * 3 : x * 3 + 3]) for row in rows for x in range(width)]


def chromium() -> str:
    """The chromium binary, or a failure that says how to install it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "the HTML report's browser tests need Debian's chromium: "
        "run `apt-get update && apt-get install chromium`, "
        "or deselect these tests with `-m 'not browser'`",
        pytrace=False,
    )


def screenshot(page: str, directory: Path) -> list[Counter[tuple[int, int, int]]]:
    """Open ``page`` in headless chromium at 1200×1600; count the colours of each pixel row."""
    browser = chromium()
    html_file, png = directory / "report.html", directory / "screenshot.png"
    html_file.write_text(page, encoding="utf-8")
    # subprocess: the browser is a separate program
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={directory / 'profile'}",
            "--window-size=1200,1600",
            f"--screenshot={png}",
            html_file.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=BROWSER_GUARD_S,
        check=False,
    )
    assert png.is_file(), (
        f"chromium wrote no screenshot (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    width, pixels = decode_png(png.read_bytes())
    assert (width, len(pixels) // width) == (1200, 1600)
    return [Counter(pixels[y : y + width]) for y in range(0, len(pixels), width)]


def near(colours: Counter[tuple[int, int, int]], colour: str | tuple[int, int, int]) -> int:
    """How many pixels are within 12 per channel of ``colour`` (hex or RGB)."""
    if isinstance(colour, str):
        colour = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16))
    return sum(
        count
        for pixel, count in colours.items()
        if all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True))
    )


LEGEND_SWATCH_PX = 11 * 11


@pytest.mark.browser
def test_the_charts_render_in_headless_chromium(fake_clock: FakeClock, tmp_path: Path) -> None:
    report = asyncio.run(staircase_run(fake_clock))
    page = render_html(page_data(("tests/test_a.py::test_staircase", report)))

    rows = screenshot(page, tmp_path)

    # The staircase timeline is 900 px wide for 36 s: 25 px per second. Its 40 bars are 9 px
    # high, so each shows up as 9 pixel rows holding one bar of its outcome's colour and nothing
    # else as long (the histogram and the legend are never wider than 430 px).
    def rows_with_a_bar(outcome: str, seconds: int) -> int:
        length = seconds * 25
        return sum(1 for row in rows if abs(near(row, COLOURS[outcome]) - length) <= 2)

    for ok_call in range(20):  # calls 0-19 succeed at 1..20 s
        assert rows_with_a_bar("ok", ok_call + 1) >= 9, f"no bar for call {ok_call}"
    for failed_call in range(20, 36):  # calls 20-35 fail at 21..36 s
        assert rows_with_a_bar("error", failed_call + 1) >= 9, f"no bar for call {failed_call}"
    assert rows_with_a_bar("timeout", 36) == 4 * 9  # calls 36-39 run until stopped at 36 s
    # The histogram (and the legend) paint the outcome colours beyond the timeline's bars.
    painted = sum(near(row, colour) for row in rows for colour in COLOURS.values())
    timeline = 9 * 25 * (sum(range(1, 37)) + 4 * 36)
    assert painted - timeline > 3 * LEGEND_SWATCH_PX + 40 * 20, "no histogram bars"
    assert sum(near(row, IN_FLIGHT_ON_WHITE) for row in rows) > 5_000


@pytest.mark.browser
def test_a_ten_thousand_call_run_renders_in_headless_chromium(tmp_path: Path) -> None:
    page = render_html(page_data(("tests/test_a.py::test_big", asyncio.run(big_run()))))

    rows = screenshot(page, tmp_path)

    # At least the histogram's tallest bin (170 × 9 px) and a bar in each of the 400 rows.
    assert sum(near(row, COLOURS["ok"]) for row in rows) > 1_500 + LEGEND_SWATCH_PX
    assert sum(near(row, COLOURS["error"]) for row in rows) >= 10  # a bar per failed call
    assert sum(near(row, IN_FLIGHT_ON_WHITE) for row in rows) > 1_000
