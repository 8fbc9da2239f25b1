"""The dashboard in a real browser (headless Chromium, driven by Playwright), while events flow: the
rate chart shows the minutes before the page was opened (from ``/stats/history``), with labelled
axes; the layout holds at 1400 px and at 390 px wide; lag, sink state and dead letters are readable
at a glance; the numbers are /stats's; every time is ISO 8601 UTC; and all of it runs under the
Content-Security-Policy every answer carries, without one violation.

The screenshots at both widths are kept in ``test-artifacts/`` at the repository root."""

from __future__ import annotations

import itertools
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import ConsoleMessage, Page, Response, ViewportSize, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from logmesh.common.secrets_store import QUERY_TOKEN
from tests.harness import Up, event, nats_publish, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WIDE: ViewportSize = {"width": 1400, "height": 1000}
NARROW: ViewportSize = {"width": 390, "height": 844}
ISO_UTC = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$"

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "this test needs Chromium: apt-get install chromium (.ci/run installs it)"
    return found


def fmt(n: int) -> str:
    return f"{n:,}"


# Runs in the page before its own script (Playwright's init scripts are not subject to the policy):
# records every violation the browser reports, with what was blocked.
RECORD_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
    e => window.cspViolations.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}`));
"""

# Every page.evaluate / wait_for_function below gets a function: an expression string would be run
# with eval in the page, which the policy forbids.

# What the page looks like, in numbers: horizontal overflow, whether the search placeholder fits its
# box, the empty space at the bottom of each box, and where the main boxes are.
LAYOUT = """() => {
  const search = document.getElementById("search"), cs = getComputedStyle(search);
  const pen = document.createElement("canvas").getContext("2d");
  pen.font = cs.font;
  const room = search.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const box = id => { const r = document.getElementById(id).getBoundingClientRect();
                      return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const slack = {};
  for (const section of document.querySelectorAll("main > section:not(.tiles)")) {
    const inner = section.getBoundingClientRect().bottom - parseFloat(getComputedStyle(section).paddingBottom);
    slack[section.id] = Math.round(inner - section.lastElementChild.getBoundingClientRect().bottom);
  }
  return {
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    placeholder: {needs: pen.measureText(search.placeholder).width, room},
    slack,
    tiles: [...document.querySelectorAll(".tile")].map(t => t.getBoundingClientRect().top),
    chart: box("chart"), rates: box("rates-box"), health: box("health"), topics: box("topics-box"),
  };
}"""

# The rate chart: how many points it was given and the oldest one's time (Unix s), its tick labels,
# and its lines' colours and extent.
CHART = """() => {
  const chart = document.getElementById("chart");
  const xs = [...chart.querySelectorAll("polyline")].flatMap(
      l => l.getAttribute("points").split(" ").map(p => parseFloat(p)));
  return {
    points: Number(chart.dataset.points), oldest: Number(chart.dataset.oldest),
    xTicks: [...chart.querySelectorAll("text.tick.x")].map(t => t.textContent),
    yTicks: [...chart.querySelectorAll("text.tick.y")].map(t => t.textContent),
    titles: [...chart.querySelectorAll("text.axis-title")].map(t => t.textContent),
    strokes: Object.fromEntries([...chart.querySelectorAll("polyline")].map(
        l => [l.getAttribute("class"), getComputedStyle(l).stroke])),
    width: chart.clientWidth, height: chart.clientHeight, left: Math.min(...xs), right: Math.max(...xs),
  };
}"""

# Every time shown: <time> elements and the events table's first column.
TIMES = """() => [...document.querySelectorAll("time, #events tbody td:first-child")]
    .map(t => t.textContent).filter(t => t !== "\N{EN DASH}")"""


@pytest.fixture
def flowing(up: Up) -> Iterator[Callable[[], None]]:
    """Events arriving all along, over HTTP (with repeats the JetStream window drops) and straight
    into NATS (repeats without a message id, which the store drops), until the function it gives
    is called; that returns once the last batch is published."""
    stop = threading.Event()

    def publish() -> None:
        with httpx.Client(base_url=up.url, timeout=30, auth=up.auth) as client:
            for tick in itertools.count():
                if stop.wait(0.2):
                    return
                batch = [event(f"t{i % 3}", f"flow-{tick}-{i}", payload={"tick": tick}) for i in range(12)]
                batch += [event("t0", f"flow-{max(0, tick - 1)}-0", payload={"tick": tick})] * 2
                client.post("/publish", content=orjson.dumps(batch), headers={"content-type": "application/json"})
                if tick % 4 == 0:
                    again = event("t1", f"flow-{tick}-1", payload={"tick": tick})
                    nats_publish(up.nats_url, [("logs.t1", orjson.dumps(again), None)])

    thread = threading.Thread(target=publish, name="dashboard-flow")
    thread.start()

    def stop_flow() -> None:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()

    yield stop_flow
    stop_flow()


def history_points(up: Up) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = up.http.get("/stats/history").json()["points"]
    return points


def check_layout(page: Page, width: int) -> dict[str, Any]:
    layout: dict[str, Any] = page.evaluate(LAYOUT)
    assert layout["overflow"] <= 0, f"the page scrolls sideways at {width} px"
    placeholder = layout["placeholder"]
    assert placeholder["needs"] <= placeholder["room"], f"the search placeholder is cut off at {width} px"
    for box, slack in layout["slack"].items():
        assert slack < 24, f"{box} ends in {slack} px of empty space at {width} px"
    chart = page.evaluate(CHART)
    assert chart["width"] <= width and chart["height"] >= 200, chart
    # The lines use the plot's width: from the value axis (46 px in) to the right edge (10 px in).
    assert chart["left"] < 47 and chart["right"] > chart["width"] - 11, chart
    return layout


def test_the_dashboard_shows_history_lag_and_dead_letters_while_events_flow(
    up: Up, flowing: Callable[[], None]
) -> None:
    up.publish([event(f"t{i % 3}", f"first-{i}") for i in range(30)] + [event("t0", "first-0")])
    nats_publish(up.nats_url, [("logs.t1", b"\xff\xfe", None)])
    # The server's history has minutes the page never saw: wait for a few samples with traffic.
    wait_for(lambda: len([p for p in history_points(up) if p["arrived"] > 0]) >= 2, 20, "rate samples")
    opened = time.time()
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport=WIDE)
        page.add_init_script(RECORD_VIOLATIONS)
        console_errors: list[str] = []
        failed: list[str] = []

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                console_errors.append(msg.text)

        def on_response(resp: Response) -> None:
            if resp.status >= 400:
                failed.append(f"{resp.status} {resp.url}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: console_errors.append(f"uncaught: {exc}"))
        page.on("response", on_response)
        # A person opens the dashboard with the read token once: a cookie, and a clean URL.
        loaded = page.goto(f"{up.url}/?token={up.secret(QUERY_TOKEN)}")
        assert loaded is not None and page.url == up.url + "/", page.url
        policy = loaded.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy, policy

        # At once, the chart holds the server's history from before the page was opened.
        page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) >= 3")
        chart = page.evaluate(CHART)
        assert chart["oldest"] < opened - 2, f"the chart starts at {chart['oldest']}, the page opened at {opened}"
        assert len(chart["xTicks"]) >= 2 and all(t.endswith("Z") for t in chart["xTicks"]), chart["xTicks"]
        assert len(chart["yTicks"]) >= 2 and chart["yTicks"][0] == "0", chart["yTicks"]
        assert chart["titles"] == ["events/s", "UTC"]
        assert chart["strokes"]["arrived"] == "rgb(47, 111, 237)"
        assert chart["strokes"]["committed"] == "rgb(30, 142, 62)"
        assert set(chart["strokes"]) == {
            "appended",
            "arrived",
            "committed",
            "duplicates_window",
            "duplicates_store",
            "invalid",
        }
        for key in ("appended", "arrived", "committed", "invalid"):
            assert re.fullmatch(r"[0-9][0-9,.]*", page.text_content(f"#rate-{key}") or ""), key

        # Lag and sink state at a glance.
        page.wait_for_function("() => document.getElementById('status').textContent === 'ready'")
        assert page.text_content("#sink-state") == "ready"
        assert page.text_content("#last-error") == "none"
        for selector in ("#pending", "#ack-pending", "#redelivered"):
            assert (page.text_content(selector) or "").replace(",", "").isdigit(), selector
        page.wait_for_function("() => document.querySelectorAll('#lag-chart polyline').length >= 2")

        # A dead letter opens to its reason, subject, headers and body.
        page.wait_for_function("() => document.querySelectorAll('#dead-letters details').length === 1")
        assert "UTF-8" in (page.text_content("#dead-letters summary .reason") or "")
        assert not page.is_visible("#dead-letters pre.body")
        page.click("#dead-letters summary")
        assert page.is_visible("#dead-letters pre.body")
        facts = page.locator("#dead-letters details dl").inner_text()
        assert "logs.t1" in facts and "UTF-8" in facts and "2 bytes" in facts, facts

        page.wait_for_function("() => document.querySelectorAll('#events tbody tr').length > 0")
        times = page.evaluate(TIMES)
        assert len(times) > 3 and all(re.match(ISO_UTC, t) for t in times), times

        wide = check_layout(page, WIDE["width"])
        assert len(set(wide["tiles"])) == 1, "the totals are not one row at 1400 px"
        assert wide["health"]["left"] > wide["rates"]["right"], "lag and sink state are not beside the chart"
        # The chart grows to the height of the two boxes beside it: no hole on either side.
        assert wide["topics"]["left"] == wide["health"]["left"] and wide["topics"]["top"] > wide["health"]["bottom"]
        assert abs(wide["topics"]["bottom"] - wide["rates"]["bottom"]) < 1
        assert wide["chart"]["bottom"] - wide["chart"]["top"] > 300
        page.screenshot(path=str(ARTIFACTS / "dashboard-1400.png"), full_page=True)

        page.set_viewport_size(NARROW)
        page.wait_for_function(f"() => document.getElementById('chart').clientWidth < {NARROW['width']}")
        page.wait_for_function(
            "() => { const c = document.getElementById('chart'); return c.getAttribute('viewBox') === "
            "`0 0 ${c.clientWidth} ${c.clientHeight}`; }"
        )
        check_layout(page, NARROW["width"])
        page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)

        # The flow stops; the page settles on /stats's numbers without a reload.
        flowing()
        up.publish([event("t2", f"last-{i}") for i in range(20)])
        stats = wait_for(lambda: _settled_after_flow(up), 30, "the sink to settle")
        assert stats is not None
        unique = fmt(stats["unique_processed"])
        try:
            page.wait_for_function(
                f"() => document.getElementById('unique').textContent === '{unique}'", timeout=10_000
            )
        except PlaywrightTimeout:
            shown_now = page.evaluate(
                "() => [document.getElementById('unique').textContent, document.getElementById('status').textContent]"
            )
            raise AssertionError(f"the page shows {shown_now}, /stats says {unique}: {stats}") from None
        shown = {
            "#arrived": stats["arrived"],
            "#received": stats["received"],
            "#unique": stats["unique_processed"],
            "#dup-window": stats["duplicates"]["window"],
            "#dup-store": stats["duplicates"]["store"],
            "#invalid": stats["invalid"],
        }
        for selector, value in shown.items():
            assert page.text_content(selector) == fmt(value), selector
            assert value > 0, selector
        for t in stats["topics"]:
            cells = page.locator(f"#topics tr[data-topic='{t['topic']}'] td").all_text_contents()
            assert cells[:2] == [t["topic"], fmt(t["count"])]
        page.select_option("#topic", "t2")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#events tbody tr td:nth-child(2)')]"
            ".every(td => td.textContent === 't2')"
        )
        page.fill("#search", "last-7")
        page.wait_for_function("() => document.querySelectorAll('#events tbody tr').length === 1")

        assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
        assert page.evaluate("() => window.cspViolations") == []
        assert console_errors == []
        assert failed == []

        # The policy is enforced and the recorder works: an injected inline script is refused, and reported.
        page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
            " document.body.append(s); }"
        )
        page.wait_for_function("() => window.cspViolations.length > 0")
        assert page.evaluate("() => window.cspViolations") == ["script-src-elem blocked inline"]
        assert page.evaluate("() => window.injected") is None
        browser.close()


def _settled_after_flow(up: Up) -> dict[str, Any] | None:
    """/stats once the last batch is stored and the sink has acked everything: a snapshot the query
    service took after the batch's last event could be read back (/stats is at most a second old, so
    one taken before would still show the counters without that batch)."""
    if up.http.get("/events/t2/last-19").status_code != 200:
        return None
    stored_by = time.time()
    s = wait_for(lambda: (fresh := up.stats())["as_of"] > stored_by and fresh, 10, "a /stats snapshot after it")
    consumer = s.get("consumer") or {}
    return s if consumer.get("pending") == 0 and consumer.get("ack_pending") == 0 else None
