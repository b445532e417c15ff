"""The README's screenshots of the status page, on a desktop and on a phone: a demo
database, a real `rentbox serve` on a loopback port, and headless Chromium (Debian's
/usr/bin/chromium, driven by Playwright).

    python examples/screenshot_status_page.py     # docs/status-page.png, -phone.png
    python examples/screenshot_status_page.py --desktop /tmp/d.png --phone /tmp/p.png --dark

The demo: numbers in four countries on two gateways, 90 days of rentals (and vk, wa and
tg activations) with a weekly
rhythm, their SMS and push delays, one rented SIM offline and two free ones, an active
and a cleared alert, and Onlinesim's last calls. Deterministic (a fixed random seed),
relative to today. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rentbox.clock import to_text
from rentbox.db import open_database

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KEY = "demo-key"
PASSWORD = "demo-password"
CHROMIUM = "/usr/bin/chromium"
COUNTRIES = {  # country: (prefix, operators, numbers)
    "germany": ("49151", ("telekom", "vodafone", "o2"), 60),
    "poland": ("48501", ("orange", "play", "plus"), 40),
    "france": ("33612", ("orange", "sfr"), 25),
    "netherlands": ("31612", ("kpn",), 15),
}


def seed(db_path: Path, now: dt.datetime) -> None:
    rng = random.Random(13)
    db = open_database(db_path)
    numbers = []
    with db.transaction():
        for country, (prefix, operators, count) in COUNTRIES.items():
            for i in range(count):
                added = to_text(now - dt.timedelta(days=120, seconds=i))
                number_id = db.execute(
                    "INSERT INTO numbers (number, country, operator, port, idle_since,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (f"{prefix}{i:06d}", country, operators[i % len(operators)],
                     f"{len(numbers) // 32 + 1}.{len(numbers) % 32 + 1:02d}", added, added,
                     added)).lastrowid
                numbers.append((number_id, country))
    with db.transaction():
        for back in range(89, -1, -1):
            day = (now - dt.timedelta(days=back)).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
            growth = 1 + (89 - back) / 60
            weekend = 0.6 if day.weekday() >= 5 else 1.0
            for _ in range(int(rng.gauss(14, 3) * growth * weekend)):
                opened = day + dt.timedelta(seconds=rng.randrange(0, 20 * 3600))
                closed = opened + dt.timedelta(hours=rng.choice((1, 2, 4)))
                if closed >= now:
                    continue
                number_id, country = rng.choice(numbers)
                outcome = rng.random()
                status = 3 if outcome < 0.78 else 4 if outcome < 0.9 else 5 if outcome < 0.97 else 1
                sent = status in (3, 5)
                # About a third are single-service activations, sold for tens of roubles.
                service = rng.choice(("vk", "wa", "tg")) if rng.random() < 0.35 else "rent"
                price = (rng.choice((60000, 87000, 120000)) if service == "rent"
                         else rng.choice((1500, 2000, 3500)))
                operation = db.execute(
                    "INSERT INTO operations (number_id, service, state, finish_status,"
                    " initial_sum_kopecks, final_sum_kopecks, created_at, finished_at,"
                    " sms_accepted_at, failed_at, country)"
                    " VALUES (?, ?, 'closed', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (number_id, service, status, 40000 if service == "rent" else price,
                     price if status == 3 else 0,
                     to_text(opened), to_text(closed),
                     to_text(opened + dt.timedelta(minutes=3)) if sent else None,
                     None if sent or status == 1 else to_text(opened + dt.timedelta(minutes=20)),
                     country)).lastrowid
                if sent:
                    created = opened + dt.timedelta(minutes=3)
                    slow = 1 + (3 if 30 < back < 36 else 0)  # a bad week at the proxy
                    delay = rng.lognormvariate(-0.3, 0.6) * slow
                    _sms(db, created, created + dt.timedelta(seconds=delay), operation)
        # Open rentals now: one meets its window, one waits, one lost its SIM.
        for k, (minutes, with_sms, offline) in enumerate(
                ((170, True, False), (42, True, False), (12, False, False), (95, True, True))):
            number_id, country = numbers[k * 37 % len(numbers)]
            opened = now - dt.timedelta(minutes=minutes)
            accepted = to_text(opened + dt.timedelta(minutes=2)) if with_sms else None
            operation = db.execute(
                "INSERT INTO operations (number_id, state, initial_sum_kopecks, created_at,"
                " sms_accepted_at, country) VALUES (?, 'open', 40000, ?, ?, ?)",
                (number_id, to_text(opened), accepted, country)).lastrowid
            db.execute("UPDATE numbers SET operation_id = ?, seen_by = 'goip', seen_at = ?,"
                       " offline = ?, offline_since = ?, offline_reason = ? WHERE id = ?",
                       (operation, to_text(now - dt.timedelta(minutes=1 if not offline else 30)),
                        int(offline), to_text(now - dt.timedelta(minutes=25)) if offline else None,
                        "silent" if offline else None, number_id))
            if with_sms:
                created = opened + dt.timedelta(minutes=2)
                _sms(db, created, created + dt.timedelta(seconds=0.8), operation)
        db.execute("UPDATE numbers SET banned_until = ?, failures = 3 WHERE id = ?",
                   (to_text(now + dt.timedelta(hours=20)), numbers[-1][0]))
        # Two gateways report the SIMs of their ports; two free SIMs are out of theirs.
        db.execute("UPDATE numbers SET seen_by = CASE WHEN id <= 100 THEN 'goip-1'"
                   " ELSE 'goip-2' END, seen_at = ? WHERE seen_by IS NULL",
                   (to_text(now - dt.timedelta(seconds=40)),))
        for number_id, reason, minutes in ((numbers[5][0], "dropped", 50),
                                           (numbers[120][0], "silent", 190)):
            db.execute("UPDATE numbers SET offline = 1, offline_reason = ?, offline_since = ?,"
                       " seen_at = ? WHERE id = ?",
                       (reason, to_text(now - dt.timedelta(minutes=minutes)),
                        to_text(now - dt.timedelta(minutes=minutes + 1)), number_id))
        at_risk = db.row("SELECT number, operation_id FROM numbers WHERE offline = 1"
                         " AND operation_id IS NOT NULL")
        db.execute("INSERT INTO alerts (key, message, state, started_at) VALUES (?, ?,"
                   " 'active', ?)", (f"sim_offline:{at_risk['number']}",
                                     f"the SIM of +{at_risk['number']} (rental "
                                     f"{at_risk['operation_id']}) is offline since "
                                     f"{_short(now - dt.timedelta(minutes=25))}: put it back "
                                     "into a port", to_text(now - dt.timedelta(minutes=24))))
        db.execute("INSERT INTO alerts (key, message, state, started_at, cleared_at) VALUES"
                   " ('sms_undelivered', ?, 'cleared', ?, ?)",
                   ("3 SMS not taken by Onlinesim, the oldest since "
                    f"{_short(now - dt.timedelta(days=33, hours=2))} (last error: timed out)",
                    to_text(now - dt.timedelta(days=33)),
                    to_text(now - dt.timedelta(days=33) + dt.timedelta(minutes=40))))
    db.execute("ANALYZE")
    db.close()


def _sms(db, created: dt.datetime, delivered: dt.datetime, operation: int) -> None:
    db.execute("INSERT INTO sms (source, number, operation_id, sender, text, received_at,"
               " created_at, push_state, attempts, delivered_at) VALUES ('goip', NULL, ?,"
               " 'Service', 'Your code is 482913', ?, ?, 'delivered', 1, ?)",
               (operation, to_text(created), to_text(created), to_text(delivered)))


def _short(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: bytes | None = None) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--desktop", type=Path, default=ROOT / "docs" / "status-page.png",
                        help="the desktop screenshot (1280 px wide)")
    parser.add_argument("--phone", type=Path, default=ROOT / "docs" / "status-page-phone.png",
                        help="the phone screenshot (390 px wide)")
    parser.add_argument("--dark", action="store_true", help="the dark colour scheme")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    shots = ((args.desktop, 1280, 900), (args.phone, 390, 844))
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "demo.db"
        seed(db_path, dt.datetime.now(dt.timezone.utc))
        port, dead = free_port(), free_port()
        env = {**os.environ, "RENTBOX_API_KEY": KEY, "RENTBOX_DB": str(db_path),
               "RENTBOX_CONSOLE_PASSWORD": PASSWORD,
               # Nothing is pending, so nothing is pushed: the URL only marks the demo
               # as set up the way a partner runs it.
               "RENTBOX_PUSH_URL": f"http://{HOST}:{dead}/pushSmsRent",
               "RENTBOX_SERVICES": "vk,wa,tg",
               "RENTBOX_ACTIVATION_PUSH_URL": f"http://{HOST}:{dead}/v1/PUSH_SMS"}
        server = subprocess.Popen(
            [sys.executable, "-m", "rentbox", "serve", "--host", HOST, "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            until = time.monotonic() + 20
            while True:
                try:
                    if call(port, "GET", "/health") == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > until:
                    raise SystemExit("rentbox serve did not come up")
                time.sleep(0.1)
            # Onlinesim's poll, then a rental: the page shows the last call and the one
            # before it.
            call(port, "POST", "/", json.dumps({"action": "GET_SERVICES", "key": KEY}).encode())
            call(port, "POST", "/getNumberRent", json.dumps({
                "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400,
                "country": "poland"}).encode())
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          "--disable-dev-shm-usage", "--hide-scrollbars"])
                for out, width, height in shots:
                    context = browser.new_context(
                        viewport={"width": width, "height": height},
                        http_credentials={"username": "partner", "password": PASSWORD},
                        color_scheme="dark" if args.dark else "light")
                    page = context.new_page()
                    page.goto(f"http://{HOST}:{port}/", wait_until="load")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(out), full_page=True)
                    context.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    for out, width, _ in shots:
        print(f"{out}: {width} px wide, {out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
