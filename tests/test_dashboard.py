"""The dashboard in a real browser (headless Chromium, driven by Playwright): the numbers it shows are
/stats's, it updates itself while events flow, and it does all that under the Content-Security-Policy
every answer carries, without one violation. The screenshot is kept in the test's directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Response, sync_playwright

from tests.harness import Up, event, nats_publish

pytestmark = pytest.mark.timeout(120)

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


def test_the_dashboard_shows_stats_and_updates_itself(up: Up, tmp_path: Path) -> None:
    up.publish([event(f"t{i % 3}", f"first-{i}") for i in range(30)] + [event("t0", "first-0")])
    nats_publish(up.nats_url, [("logs.t1", b"\xff\xfe", None)])
    stats = up.settled_stats(arrived=32)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
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
        # Every wait_for_function below gets a function: an expression string would be run with eval
        # in the page, which the policy forbids.
        loaded = page.goto(up.url + "/")
        assert loaded is not None
        policy = loaded.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy, policy
        page.wait_for_function(f"() => document.getElementById('arrived').textContent === '{fmt(stats['arrived'])}'")
        assert page.text_content("#status") == "ready"

        # More events while the page is open: it must show them without a reload.
        up.publish([event("t2", f"second-{i}") for i in range(20)])
        stats = up.settled_stats(arrived=52)
        unique = fmt(stats["unique_processed"])
        page.wait_for_function(f"() => document.getElementById('unique').textContent === '{unique}'", timeout=10_000)
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
        for selector in ("#arrived", "#received", "#unique", "#dup-window", "#invalid"):
            assert page.text_content(selector) not in ("0", "\N{EN DASH}"), selector
        for t in stats["topics"]:
            cells = page.locator(f"#topics tr[data-topic='{t['topic']}'] td").all_text_contents()
            assert cells[:2] == [t["topic"], fmt(t["count"])]
        page.wait_for_function("() => document.querySelectorAll('#dead-letters tbody tr').length === 1")
        assert "UTF-8" in (page.text_content("#dead-letters tbody") or "")
        page.wait_for_function("() => document.querySelectorAll('#events tbody tr').length > 0")
        page.select_option("#topic", "t2")
        page.wait_for_function(
            "() => [...document.querySelectorAll('#events tbody tr td:nth-child(2)')]"
            ".every(td => td.textContent === 't2')"
        )
        page.fill("#search", "second-7")
        page.wait_for_function("() => document.querySelectorAll('#events tbody tr').length === 1")

        # The stylesheet applied (the page background), and the chart drew both series in their colours.
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(246, 247, 249)"
        page.wait_for_function("() => document.querySelectorAll('#chart polyline').length === 2")
        strokes = page.evaluate(
            "[...document.querySelectorAll('#chart polyline')].map(l => getComputedStyle(l).stroke)"
        )
        assert strokes == ["rgb(47, 111, 237)", "rgb(30, 142, 62)"]
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        assert page.evaluate("window.cspViolations") == []
        assert console_errors == []
        assert failed == []

        # The policy is enforced and the recorder works: an injected inline script is refused, and reported.
        page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
            " document.body.append(s); }"
        )
        page.wait_for_function("() => window.cspViolations.length > 0")
        assert page.evaluate("window.cspViolations") == ["script-src-elem blocked inline"]
        assert page.evaluate("window.injected") is None
        browser.close()
