"""The dashboard in a real browser (headless Chromium, driven by Playwright): the numbers it shows are
/stats's, and it updates itself while events flow. The screenshot is kept in test-artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.harness import Up, event, nats_publish

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
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


def test_the_dashboard_shows_stats_and_updates_itself(up: Up) -> None:
    up.publish([event(f"t{i % 3}", f"first-{i}") for i in range(30)] + [event("t0", "first-0")])
    nats_publish(up.nats_url, [("logs.t1", b"\xff\xfe", None)])
    stats = up.settled_stats(arrived=32)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(up.url + "/")
        page.wait_for_function(f"document.getElementById('arrived').textContent === '{fmt(stats['arrived'])}'")
        assert page.text_content("#status") == "ready"

        # More events while the page is open: it must show them without a reload.
        up.publish([event("t2", f"second-{i}") for i in range(20)])
        stats = up.settled_stats(arrived=52)
        page.wait_for_function(
            f"document.getElementById('unique').textContent === '{fmt(stats['unique_processed'])}'", timeout=10_000
        )
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
        for t in stats["topics"]:
            cells = page.locator(f"#topics tr[data-topic='{t['topic']}'] td").all_text_contents()
            assert cells[:2] == [t["topic"], fmt(t["count"])]
        page.wait_for_function("document.querySelectorAll('#dead-letters tbody tr').length === 1")
        dead_letters = page.text_content("#dead-letters tbody")
        assert dead_letters is not None and "UTF-8" in dead_letters
        page.wait_for_function("document.querySelectorAll('#events tbody tr').length > 0")
        page.select_option("#topic", "t2")
        page.wait_for_function(
            "[...document.querySelectorAll('#events tbody tr td:nth-child(2)')].every(td => td.textContent === 't2')"
        )
        page.fill("#search", "second-7")
        page.wait_for_function("document.querySelectorAll('#events tbody tr').length === 1")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
