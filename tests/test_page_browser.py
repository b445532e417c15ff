"""The status page in a real headless Chromium (Debian's, driven by Playwright) against a
real `rentbox serve` on a loopback port, on a seeded database.

Skipped only when /usr/bin/chromium is absent and RENTBOX_REQUIRE_BROWSER is unset; CI
sets it, so there a missing browser fails the test instead."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from test_dashboard import HOSTILE, seed

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "browser-pass-44aa"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]

if not CHROMIUM.exists() and not os.environ.get("RENTBOX_REQUIRE_BROWSER"):
    pytest.skip("no /usr/bin/chromium (apt-get install chromium; set "
                "RENTBOX_REQUIRE_BROWSER=1 to make this a failure)", allow_module_level=True)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "RENTBOX_REQUIRE_BROWSER is set but /usr/bin/chromium is absent"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=LAUNCH_ARGS)
        yield launched
        launched.close()


def open_page(browser, url: str, *, password: str | None, viewport=(1200, 900)):
    """A new page with console and request failures recorded; returns (page, problems,
    the main answer)."""
    credentials = {"username": "partner", "password": password} if password else None
    context = browser.new_context(http_credentials=credentials,
                                  viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}")
            if r.status >= 400 else None)
    answer = page.goto(url, wait_until="load")
    return page, problems, answer


def test_the_page_renders_with_its_charts_and_no_errors(start_server, db, browser):
    expected = seed(db, dt.datetime.now(dt.timezone.utc))
    server = start_server(console_password=PASSWORD)
    page, problems, answer = open_page(browser, server.url + "/", password=PASSWORD)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert page.title() == "rentbox status"
    assert page.locator("h1").inner_text().startswith("rentbox status")
    for section, title in (("health", "Health"), ("pool", "Pool"), ("outbox", "Outbox"),
                           ("rentals", "Open rentals"), ("alerts", "Recent alerts"),
                           ("income", "Income credited"), ("push-delay", "SMS push delay")):
        assert page.locator(f"section#{section} h2").inner_text().startswith(title)
    # Each chart draws as many points as the seeded data has, and says so.
    charts = {"income": ("rect.pt", expected["income_points"]),
              "rentals": ("g.pt", expected["rentals_points"]),
              "push_delay": ("circle.pt", expected["delay_points"])}
    for name, (selector, count) in charts.items():
        svg = page.locator(f"svg[data-chart={name}]")
        assert svg.get_attribute("data-points") == str(count), name
        assert svg.locator(selector).count() == count, name
        box = svg.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 50, name
    # Hostile text is shown as text, never run or parsed.
    assert HOSTILE in page.locator("section#operators").inner_text()
    assert page.locator("section#operators script").count() == 0
    assert page.locator("section#health li").count() >= 1  # the SIM offline warning
    assert problems == []


def test_the_page_fits_a_phone(start_server, db, browser):
    seed(db, dt.datetime.now(dt.timezone.utc))
    server = start_server(console_password=PASSWORD)
    page, problems, _ = open_page(browser, server.url + "/", password=PASSWORD,
                                  viewport=(390, 800))
    # No sideways scrolling of the whole page: wide tables scroll in their own box.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert problems == []


def test_without_the_password_the_browser_is_asked_for_it(start_server, db, browser):
    server = start_server(console_password=PASSWORD)
    context = browser.new_context()
    # Headless Chromium cannot show the password dialog: navigating fails on the challenge.
    with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
        context.new_page().goto(server.url + "/")
    answer = context.request.get(server.url + "/", headers={"Accept": "text/html"})
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Basic realm="rentbox"'
    assert answer.json()["status"] == "ERROR"
    context.close()
