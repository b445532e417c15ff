"""The status page in a real headless Chromium (Debian's, driven by Playwright) against a
real `rentbox serve` on a loopback port, on a seeded database: on a desktop (1280 px) and
on a phone (390 px), nothing cut off; and the screenshot script that makes docs/*.png.

Skipped only when /usr/bin/chromium is absent and RENTBOX_REQUIRE_BROWSER is unset; CI
sets it, so there a missing browser fails the test instead."""

from __future__ import annotations

import datetime as dt
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from rentbox.clock import to_text
from test_dashboard import HOSTILE, seed

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "browser-pass-44aa"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]
DESKTOP, PHONE = (1280, 900), (390, 844)
# Long texts without a space, as a gateway or an alert may bring: they must wrap.
LONG_GATEWAY = "smsgate:" + "a1b2c3d4e5f6" * 5
LONG_MESSAGE = "push failed: https://onlinesim.example/" + "x" * 90 + " did not answer"

if not CHROMIUM.exists() and not os.environ.get("RENTBOX_REQUIRE_BROWSER"):
    pytest.skip("no /usr/bin/chromium (apt-get install chromium; set "
                "RENTBOX_REQUIRE_BROWSER=1 to make this a failure)", allow_module_level=True)

# Every element of every section that sticks out of its section, or whose content is
# wider than its box (cut off, or scrolled in a box of its own), and the page itself
# wider than the window. SVG shapes are left to their <svg>.
OVERFLOW = """() => {
  const found = [];
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) {
    found.push(`the page is ${root.scrollWidth} px wide in ${root.clientWidth}`);
  }
  for (const section of document.querySelectorAll('section')) {
    const box = section.getBoundingClientRect();
    if (section.scrollWidth > section.clientWidth + 1) found.push(`${section.id} scrolls`);
    for (const el of section.querySelectorAll('*')) {
      if (el instanceof SVGElement && el.tagName !== 'svg') continue;
      const r = el.getBoundingClientRect();
      if (!r.width && !r.height) continue;
      const what = `${section.id}: <${el.tagName.toLowerCase()}> ` +
                   JSON.stringify(el.textContent.slice(0, 40));
      if (r.left < box.left - 0.5 || r.right > box.right + 0.5) found.push(`${what} sticks out`);
      if (!(el instanceof SVGElement) && getComputedStyle(el).display !== 'inline'
          && el.scrollWidth > el.clientWidth + 1) found.push(`${what} is cut off`);
    }
  }
  return found;
}"""


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "RENTBOX_REQUIRE_BROWSER is set but /usr/bin/chromium is absent"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              args=LAUNCH_ARGS)
        yield launched
        launched.close()


def open_page(browser, url: str, *, password: str | None, viewport=DESKTOP):
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


def seed_long_texts(db, now: dt.datetime) -> None:
    """A gateway with a long name and an alert with a long word, beside `seed`'s data."""
    with db.transaction():
        db.execute("UPDATE numbers SET seen_by = ?, seen_at = ?, port = 'gw1:1.01' WHERE id = 1",
                   (LONG_GATEWAY, to_text(now)))
        db.execute("INSERT INTO alerts (key, message, state, started_at) VALUES"
                   " ('sms_undelivered', ?, 'active', ?)", (LONG_MESSAGE, to_text(now)))


def test_the_page_puts_action_first_then_its_charts(start_server, db, browser):
    expected = seed(db, dt.datetime.now(dt.timezone.utc))
    server = start_server(console_password=PASSWORD)
    page, problems, answer = open_page(browser, server.url + "/", password=PASSWORD)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert page.title() == "rentbox status"
    assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "30"
    assert page.locator("h1").inner_text().startswith("rentbox status")
    # What needs doing comes first, in this order; the charts after it.
    assert page.eval_on_selector_all("section", "s => s.map(e => e.id)") == [
        "attention", "rentals", "offline", "income", "gateways", "onlinesim", "pool",
        "outbox", "health", "income-chart", "rentals-chart", "push-delay", "operators",
        "alerts"]
    for section, title in (("attention", "Needs attention"), ("rentals", "Open rentals (1)"),
                           ("offline", "Offline SIMs (1)"), ("income", "Income (RUB)"),
                           ("gateways", "Gateways"), ("onlinesim", "Onlinesim"),
                           ("income-chart", "Income credited"),
                           ("push-delay", "SMS push delay")):
        assert page.locator(f"section#{section} h2").inner_text().startswith(title)
    assert page.locator("section#attention li").count() >= 1  # the SIM offline warning
    risk = page.locator("section#rentals td[data-label=risk]")
    assert risk.inner_text() == "SIM offline"
    # Each chart draws as many points as the seeded data has, and says so.
    charts = {"income": ("rect.pt", expected["income_points"]),
              "rentals": ("g.pt", expected["rentals_points"]),
              "push_delay": ("path.pt", expected["delay_points"])}
    for name, (selector, count) in charts.items():
        svg = page.locator(f"svg[data-chart={name}]")
        assert svg.get_attribute("data-points") == str(count), name
        assert svg.locator(selector).count() == count, name
        box = svg.bounding_box()
        assert box and box["width"] > 600 and box["height"] > 100, name
    # Hostile text is shown as text, never run or parsed.
    assert HOSTILE in page.locator("section#operators").inner_text()
    assert HOSTILE in page.locator("section#rentals").inner_text()
    assert page.locator("script").count() == 0
    assert problems == []


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_nothing_is_cut_off(start_server, db, browser, viewport):
    now = dt.datetime.now(dt.timezone.utc)
    seed(db, now)
    seed_long_texts(db, now)
    server = start_server(console_password=PASSWORD)
    page, problems, _ = open_page(browser, server.url + "/", password=PASSWORD,
                                  viewport=viewport)
    assert page.evaluate(OVERFLOW) == []
    # The cells that were cut at 390 px: the rentals' risk and the alerts' messages, and
    # now the long gateway name, wholly inside the window.
    for cell in ("section#rentals td[data-label=risk]", "section#alerts td[data-label=message]",
                 "section#gateways td[data-label=gateway]"):
        for box in (c.bounding_box() for c in page.locator(cell).all()):
            assert box and 0 <= box["x"] and box["x"] + box["width"] <= viewport[0], cell
    assert LONG_GATEWAY in page.locator("section#gateways").inner_text().replace("\n", "")
    if viewport == PHONE:  # tables stack: the risk is said under its name
        assert page.locator("section#rentals tr").nth(1).inner_text().count("\n") >= 6
    assert problems == []


def test_a_fresh_database_has_no_empty_charts(start_server, browser):
    server = start_server(console_password=PASSWORD)
    page, problems, _ = open_page(browser, server.url + "/", password=PASSWORD,
                                  viewport=PHONE)
    assert page.locator("svg").count() == 0
    assert page.locator("section#history").inner_text().startswith("No history yet")
    assert page.locator("section#rentals").inner_text().endswith("No open rentals.")
    assert page.evaluate(OVERFLOW) == []
    assert problems == []


def test_without_the_password_a_browser_gets_a_page_for_a_person(start_server, db, browser):
    server = start_server(console_password=PASSWORD)
    context = browser.new_context()
    # Headless Chromium cannot show the password dialog: navigating fails on the challenge.
    with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
        context.new_page().goto(server.url + "/")
    answer = context.request.get(server.url + "/", headers={"Accept": "application/json"})
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Basic realm="rentbox"'
    assert answer.json()["status"] == "ERROR"
    context.close()
    # A wrong password (or a cancelled dialog): the browser shows the answer's page.
    page, problems, answer = open_page(browser, server.url + "/", password="wrong",
                                       viewport=PHONE)
    assert answer.status == 401
    assert page.title() == "rentbox status: password needed"
    text = page.locator("body").inner_text()
    assert "the value of RENTBOX_CONSOLE_PASSWORD in the environment of rentbox serve" in text
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE[0]
    assert problems == [f"HTTP 401: {server.url}/", "console error: Failed to load resource: "
                        "the server responded with a status of 401 (Unauthorized)"]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_screenshot_script_shoots_both_widths(tmp_path):
    desktop, phone = tmp_path / "desktop.png", tmp_path / "phone.png"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "screenshot_status_page.py"),
                           "--desktop", str(desktop), "--phone", str(phone)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    width, height = png_size(desktop)
    assert width == DESKTOP[0] and height > DESKTOP[1]  # the whole page, not the window
    width, height = png_size(phone)
    assert width == PHONE[0] and height > 3 * PHONE[1]
