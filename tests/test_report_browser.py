"""report.html in a real browser: headless Chromium renders the page ``specdec report`` writes.

The page is opened from its ``file://`` address and inspected through the DevTools protocol
(over ``websockets``): the verdict table, the plots, the marked divergence, sorting by a
click, no script error and no request outside the file.  A full-page screenshot is checked
for content and kept for a person to look at: at ``$SPECDEC_SCREENSHOT`` when that is set,
else in the test's temporary folder.

Without chromium these tests are skipped (``apt-get install chromium``, which
``scripts/setup.sh`` runs as root); with ``CI=true`` they fail instead, so CI never skips
them silently.  ``test_report_html.py`` reads the same page's HTML without a browser.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from specdec.report import OVERALL, Report, build_report
from specdec.report_files import write_report

from .test_report_html import CATEGORIES, make_batch, with_divergence

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser")
"""Debian's name for the binary, then the name some other distributions use."""

TIMEOUT = 30.0
"""Seconds any one wait (the browser's start, a reply, the page's load) may take."""

VIEWPORT = (1280, 900)

SETTINGS: tuple[tuple[str, list[str]], ...] = (
    ("none", ["strategy.name=none"]),
    ("ngram-k3", ["strategy.name=ngram", "strategy.num_speculative_tokens=3"]),
    ("ngram-k5", ["strategy.name=ngram", "strategy.num_speculative_tokens=5"]),
    # A hub id is passed to vLLM as it is: nothing is downloaded for the stand-in engine.
    ("draft-k4", ["strategy.name=draft_model", "strategy.model=HuggingFaceTB/SmolLM2-135M",
                  "strategy.num_speculative_tokens=4"]),
)
"""A baseline and three settings of two strategies, one slower than the baseline."""

SPEED_BY_TOKENS = {3: 1.5, 4: 1.2, 5: 0.9}


def _chromium() -> str:
    """The browser's path; a skip naming how to install it (a failure when CI=true)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found is not None:
            return found
    msg = ("no chromium on PATH, so report.html is not checked in a browser: install Debian's "
           "package with `apt-get install chromium` (scripts/setup.sh does it when run as root)")
    if os.environ.get("CI") == "true":
        pytest.fail(f"{msg}. CI=true: CI must run this test, not skip it")
    pytest.skip(msg)


class DevTools:
    """One page's DevTools protocol connection: commands by id, events kept as they arrive."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result, keeping the events that arrive meanwhile."""
        self._last_id += 1
        self._socket.send(orjson.dumps({"id": self._last_id, "method": method,
                                        "params": params}).decode())
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._receive(deadline, f"reply to {method}")
            if message.get("id") == self._last_id:
                if "error" in message:
                    pytest.fail(f"Chromium refused {method}({params}): {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def wait_for(self, event: str, since: int) -> dict[str, Any]:
        """The first ``event`` among the events from index ``since`` on, waiting for it."""
        for seen in self.events[since:]:
            if seen["method"] == event:
                return seen
        deadline = time.monotonic() + TIMEOUT
        while True:
            message = self._receive(deadline, f"event {event}")
            if message.get("method") == event:
                return message

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page; a failure if it throws."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                          awaitPromise=True)
        if "exceptionDetails" in reply:
            pytest.fail(f"the page could not evaluate {expression!r}: "
                        f"{reply['exceptionDetails']}")
        return reply["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real left click at a point of the viewport (CSS pixels), through Chromium's input."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            raw = self._socket.recv(timeout=max(deadline - time.monotonic(), 0))
        except TimeoutError:
            pytest.fail(f"Chromium sent no {what} within {TIMEOUT:.0f} s")
        message: dict[str, Any] = orjson.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the browser and its helpers: its own process group, started for it alone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        return


def _devtools_port(profile: Path, process: subprocess.Popen[bytes], log: Path) -> int:
    """The port Chromium chose, from the ``DevToolsActivePort`` file it writes on start
    (two lines: the port, then the browser socket's path)."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            pytest.fail(f"chromium exited with {process.returncode} on start:\n{tail}")
        lines = active.read_text(encoding="utf-8").split() if active.exists() else []
        if len(lines) >= 2:
            return int(lines[0])
        time.sleep(0.1)
    pytest.fail(f"chromium wrote no {active} within {TIMEOUT:.0f} s (its log: {log})")


def _page_socket(port: int) -> str:
    """The DevTools socket of the browser's one page (it starts on about:blank)."""
    address = f"http://127.0.0.1:{port}/json/list"
    with urllib.request.urlopen(address, timeout=TIMEOUT) as reply:
        targets = orjson.loads(reply.read())
    pages = [t for t in targets if t["type"] == "page"]
    assert pages, f"chromium has no page target: {targets}"
    url: str = pages[0]["webSocketDebuggerUrl"]
    return url


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    """A report written as ``specdec report`` writes it: a baseline, three settings of two
    strategies over three categories, a lossless check with one divergence, the plots."""
    base = tmp_path_factory.mktemp("browser")
    report = with_divergence(build_report([make_batch(base, SETTINGS, SPEED_BY_TOKENS)]),
                             "ngram-k3")
    out = base / "report"
    write_report(report, out)
    return report, out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    """Headless Chromium, ended when the module's tests are done, whatever happened."""
    binary = _chromium()
    folder = tmp_path_factory.mktemp("chromium")
    profile, log = folder / "profile", folder / "chromium.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--no-first-run", "--mute-audio",
             f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            start_new_session=True)
    try:
        address = _page_socket(_devtools_port(profile, process, log))
        with connect(address, open_timeout=TIMEOUT, max_size=None) as socket:
            yield DevTools(socket)
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def page(browser: DevTools, report_dir: tuple[Report, Path]) -> DevTools:
    """The browser showing report.html, loaded, with script errors and requests recorded."""
    for domain in ("Runtime", "Page", "Network"):
        browser.call(f"{domain}.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                 deviceScaleFactor=1, mobile=False)
    since = len(browser.events)
    browser.call("Page.navigate", url=(report_dir[1] / "report.html").as_uri())
    browser.wait_for("Page.loadEventFired", since)
    return browser


def _first_column(page: DevTools, table: str) -> list[str]:
    return list(page.evaluate(
        f"Array.from(document.querySelectorAll('#{table} tbody tr'),"
        " r => r.cells[0].textContent.trim())"))


def _speedups(report: Report) -> dict[str, float]:
    speedups = {}
    for comp in report.comparisons:
        if comp.category == OVERALL and comp.speedup_spec_bench is not None:
            speedups[comp.setting] = comp.speedup_spec_bench
    return speedups


def test_verdict_table_has_one_row_per_setting(page: DevTools,
                                               report_dir: tuple[Report, Path]) -> None:
    """The verdict table is drawn, one row per compared setting, in the report's order."""
    report, _ = report_dir
    shown = [s.display_name() for s in report.shown()]
    assert sorted(shown) == ["draft-k4", "ngram-k3", "ngram-k5"]
    assert _first_column(page, "verdict-table") == shown
    width, height = page.evaluate(
        "(r => [r.width, r.height])(document.getElementById('verdict-table')"
        ".getBoundingClientRect())")
    assert width > 400
    assert height > 60
    assert _first_column(page, "category-table") == [*CATEGORIES, OVERALL]


def test_every_plot_has_loaded(page: DevTools, report_dir: tuple[Report, Path]) -> None:
    """Every plot is an image the browser decoded, one per PNG the report wrote."""
    images = page.evaluate(
        "Array.from(document.images, i => ({alt: i.alt, complete: i.complete,"
        " width: i.naturalWidth, shown: i.getBoundingClientRect().width}))")
    assert len(images) == len(list(report_dir[1].glob("*.png"))) >= 3
    for image in images:
        assert image["complete"], image
        assert image["width"] > 0, image
        assert image["shown"] > 200, image


def test_the_divergence_is_marked(page: DevTools) -> None:
    """Both continuations are shown with the diverging text marked, the markup as text."""
    marks = page.evaluate(
        "Array.from(document.querySelectorAll('.pair mark'), m => [m.className, m.textContent,"
        " getComputedStyle(m).backgroundColor])")
    assert [(kind, text) for kind, text, _ in marks] == [("base", "<b>42</b>"), ("cand", "41")]
    assert marks[0][2] != marks[1][2], "the two sides' marks should differ in colour"
    assert page.evaluate("document.querySelectorAll('.pair b').length") == 0


def test_clicking_a_header_sorts_the_rows(page: DevTools,
                                          report_dir: tuple[Report, Path]) -> None:
    """A click on the speedup header sorts the verdict rows up by speedup; a second, down."""
    speedups = _speedups(report_dir[0])
    ascending = sorted((s.display_name() for s in report_dir[0].shown()),
                       key=lambda name: speedups[name])
    assert ascending == ["ngram-k5", "draft-k4", "ngram-k3"]
    assert page.evaluate("document.getElementById('verdict-table').dataset.sortable") == "ready"
    header = ("Array.from(document.querySelectorAll('#verdict-table thead th'))"
              ".find(h => h.textContent.trim() === 'speedup (Spec-Bench)')")
    since = len(page.events)
    for expected, order in ((ascending, "asc"), (ascending[::-1], "desc")):
        x, y = page.evaluate(f"(h => {{ h.scrollIntoView({{block: 'center'}});"
                             " const r = h.getBoundingClientRect();"
                             f" return [r.x + r.width / 2, r.y + r.height / 2]; }})({header})")
        page.click(x, y)
        assert _first_column(page, "verdict-table") == expected
        assert page.evaluate(f"({header}).dataset.order") == order
    page.evaluate("window.scrollTo(0, 0)")
    thrown = [e for e in page.events[since:] if e["method"] == "Runtime.exceptionThrown"]
    assert thrown == []


def test_the_page_is_self_contained_and_error_free(page: DevTools,
                                                   report_dir: tuple[Report, Path]) -> None:
    """The page asked for nothing but its own file and inline data, and no script failed."""
    requested = [e["params"]["request"]["url"] for e in page.events
                 if e["method"] == "Network.requestWillBeSent"]
    assert (report_dir[1] / "report.html").as_uri() in requested
    outside = [url for url in requested if not url.startswith(("file:", "data:"))]
    assert outside == []
    thrown = [e["params"]["exceptionDetails"] for e in page.events
              if e["method"] == "Runtime.exceptionThrown"]
    assert thrown == []
    errors = [e["params"] for e in page.events if e["method"] == "Runtime.consoleAPICalled"
              and e["params"]["type"] in {"error", "assert"}]
    assert errors == []


def test_the_page_fits_the_window_width(page: DevTools) -> None:
    """Nothing widens the page past the window: a wide table scrolls inside itself."""
    page_width, window = page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]")
    assert page_width <= window
    runs = page.evaluate(
        "(t => [t.clientWidth, t.scrollWidth])(document.getElementById('runs-table'))")
    assert runs[0] <= window


def test_full_page_screenshot_shows_the_page(page: DevTools, tmp_path: Path) -> None:
    """A screenshot of the whole page is large, colourful and mostly not blank; it is kept at
    $SPECDEC_SCREENSHOT (else in tmp_path) for a person to look at."""
    size = page.call("Page.getLayoutMetrics")["cssContentSize"]
    shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                     clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                           "scale": 1})
    data = base64.b64decode(shot["data"])
    target = Path(os.environ.get("SPECDEC_SCREENSHOT") or tmp_path / "report.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    assert width >= VIEWPORT[0] - 20, (width, height, target)
    assert height > 2 * VIEWPORT[1], f"not the full page: {(width, height)} ({target})"
    colours = rgb.getcolors(maxcolors=width * height) or []
    assert len(colours) > 100, f"{len(colours)} colours in {target}"
    grey = np.asarray(rgb.convert("L"))
    assert (grey < 240).mean() > 0.03, f"mostly blank: {target}"
