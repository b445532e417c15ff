"""web/console.py: the status page at GET / (auth, negotiation, escaping) beside Onlinesim's
POST /, in process and on a real server."""

from __future__ import annotations

import base64
import gzip
import http.client
import re
import urllib.parse

import pytest

from conftest import API_KEY, START, WsgiClient, add_numbers
from rentbox.web import wsgi
from rentbox.web.console import authorized, wants_html
from test_dashboard import HOSTILE, seed

PASSWORD = "console-pass-3e1b"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def lower(answer) -> dict:
    """Header names are case-insensitive (Bottle sends Www-Authenticate)."""
    return {k.lower(): v for k, v in answer.headers.items()}


def basic(password: str, user: str = "partner") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def console(settings, clock, connections, db):
    import dataclasses

    seed(db, START)
    return WsgiClient(wsgi(dataclasses.replace(settings, console_password=PASSWORD), clock,
                           connections))


def test_off_without_a_password(client):
    answer = client.request("GET", "/", headers={"Authorization": basic(PASSWORD)})
    assert answer.status == 404
    assert answer.json["status"] == "ERROR"
    assert "RENTBOX_CONSOLE_PASSWORD" in answer.json["error"]
    assert "www-authenticate" not in lower(answer)
    # A browser gets a page for a person saying how to turn it on, with the same status.
    answer = client.request("GET", "/", headers={"Accept": BROWSER,
                                                 "Authorization": basic(PASSWORD)})
    assert answer.status == 404
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    html = answer.body.decode()
    assert "<title>rentbox status: the page is off</title>" in html
    assert "set RENTBOX_CONSOLE_PASSWORD in the environment of rentbox serve" in html
    assert "www-authenticate" not in lower(answer)


UNAUTHORIZED = [
    None, basic("wrong"), basic(PASSWORD.upper()), "Bearer " + PASSWORD, "Basic !!!notbase64",
    "Basic " + base64.b64encode(PASSWORD.encode()).decode(),  # no colon
    "Basic " + base64.b64encode(b"\xff\xfe:\xc3\x28" + PASSWORD.encode()).decode(),
    "Basic", "",
    # Only HTTP's spaces and tabs surround the credentials: "\xa0" and "\x85" are not spaces.
    basic(PASSWORD) + "\xa0", "Basic \x85" + basic(PASSWORD)[6:], "\xa0" + basic(PASSWORD),
]


@pytest.mark.parametrize("authorization", UNAUTHORIZED)
def test_401_without_the_password(console, authorization):
    headers = {"Accept": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = console.request("GET", "/", headers=headers)
    assert answer.status == 401
    assert lower(answer)["www-authenticate"] == 'Basic realm="rentbox"'
    assert answer.json == {"status": "ERROR", "error": answer.json["error"]}
    assert PASSWORD not in answer.body.decode()


@pytest.mark.parametrize("authorization", UNAUTHORIZED)
def test_a_browser_without_the_password_gets_a_page_that_says_how(console, authorization):
    headers = {"Accept": BROWSER}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = console.request("GET", "/", headers=headers)
    assert answer.status == 401
    # The challenge stays: the browser asks for the password, and shows this if cancelled.
    assert lower(answer)["www-authenticate"] == 'Basic realm="rentbox"'
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    html = answer.body.decode()
    assert "<title>rentbox status: password needed</title>" in html
    assert "any user name, and as the password the value of RENTBOX_CONSOLE_PASSWORD" in html
    assert "reload the page" in html
    assert PASSWORD not in html and "4915100000003" not in html  # nothing of the page
    assert "<script" not in html and 'http-equiv=refresh' not in html


def test_non_utf8_header_bytes_get_401_not_500(console):
    # WSGI hands headers over as latin-1 text of the raw bytes.
    raw = b"Basic \xff\xfe\x80" + base64.b64encode(b"u:\xff\xfe")
    answer = console.request("GET", "/", headers={"Authorization": raw.decode("latin-1")})
    assert answer.status == 401
    answer = console.request("GET", "/", headers={
        "Authorization": "Basic " + base64.b64encode(b"\xe9t\xe9:\xff" + b"x").decode()})
    assert answer.status == 401


def test_any_user_name_and_a_password_with_a_colon(settings, clock, connections):
    import dataclasses

    app = WsgiClient(wsgi(dataclasses.replace(settings, console_password="a:b é"), clock,
                          connections))
    for user in ("", "admin", "anyone at all"):
        answer = app.request("GET", "/", headers={"Authorization": basic("a:b é", user)})
        assert answer.status == 200, user


def test_a_browser_gets_the_page(console):
    answer = console.request("GET", "/", headers={"Accept": BROWSER,
                                                  "Authorization": basic(PASSWORD)})
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "script" not in csp
    assert answer.headers["Cache-Control"] == "no-store"
    html = answer.body.decode()
    assert "<title>rentbox status</title>" in html
    assert 'name=viewport' in html
    assert '<meta http-equiv=refresh content="30">' in html and "<script" not in html
    # What needs doing first, then the history.
    assert re.findall(r"<section id=([\w-]+)", html) == [
        "attention", "rentals", "offline", "income", "gateways", "onlinesim", "pool",
        "outbox", "health", "income-chart", "rentals-chart", "push-delay", "operators",
        "alerts"]
    points = dict(re.findall(r"data-chart=(\w+) data-points=(\d+)", html))
    assert points == {"income": "90", "rentals": "90", "push_delay": "3"}
    assert html.count("class='pt bar'") == 90 and html.count("<g class=pt>") == 90
    assert html.count("class='pt d50'") == 3
    assert len(answer.body) < 100_000


def section(html: str, ident: str) -> str:
    """One section's HTML."""
    return re.search(rf"<section id={ident}[ >].*?</section>", html).group(0)


def text_of(html: str) -> str:
    """The text a person reads: tags out, entities in."""
    import html as html_module

    inline = re.sub(r"</?(b|i|span)\b[^>]*>", "", html)
    return " ".join(html_module.unescape(re.sub(r"<[^>]+>", " ", inline)).split())


def test_the_page_puts_what_to_do_first(console, db):
    from rentbox import meta

    with db.transaction():
        db.execute("UPDATE numbers SET port = 'gw1:1.03' WHERE id = 3")
    meta.put(db, START, meta.SERVER, {"started_at": "2026-11-01T11:00:00.000000Z",
                                      "push_url_set": False, "version": "x",
                                      "url": "http://127.0.0.1:1"})
    html = console.request("GET", "/", headers={"Accept": BROWSER,
                                                "Authorization": basic(PASSWORD)}).body.decode()
    attention = text_of(section(html, "attention"))
    assert attention.startswith("Needs attention") and "SIM offline" in attention
    rentals = text_of(section(html, "rentals"))
    # The seeded rental: its port, its window (an SMS in time), and its SIM offline.
    assert "+4915100000003 gw1:1.03 SMS in time SIM offline" in rentals
    offline = text_of(section(html, "offline"))
    assert offline.startswith("Offline SIMs (1)")
    assert re.search(r"\+4915100000003 gw1:1.03 goip 60 min rental \d+ at risk", offline)
    # Two sales yesterday (2026-10-31, a Saturday): this week, not today nor this month.
    assert re.findall(r"<b>([^<]*)</b><span>([^<]*)</span>", section(html, "income")) == [
        ("0.00 RUB", "credited today"), ("1 740.00 RUB", "this week, from Monday"),
        ("0.00 RUB", "this month, from 11-01"),
        ("400.00 RUB", "pending: open operations with an SMS in time")]
    assert text_of(section(html, "gateways")) == (
        "Gateways gateway last report SIMs online offline goip 2 d 0 h ago 0 1")
    onlinesim = text_of(section(html, "onlinesim"))
    assert ("Push URL: not set: SMS are stored but Onlinesim never gets them. Set "
            "RENTBOX_PUSH_URL to the push URL Onlinesim gave you and restart rentbox serve."
            ) in onlinesim
    assert "Last call: never." in onlinesim


def test_the_pool_says_offline_of_sims_only(console):
    html = console.request("GET", "/", headers={"Accept": BROWSER,
                                                "Authorization": basic(PASSWORD)}).body.decode()
    pool = section(html, "pool")
    labels = re.findall(r"<span>([^<]*)</span>", pool)
    assert labels == ["numbers", "free", "rented", "banned", "disabled", "waiting for SIM"]
    assert text_of(pool).endswith("SIMs: 0 online, 1 offline (1 of them rented), "
                                  "3 not watched by any gateway")


def test_charts_wait_for_data_and_their_axes_are_whole(settings, clock, connections, db):
    import dataclasses

    app = WsgiClient(wsgi(dataclasses.replace(settings, console_password=PASSWORD), clock,
                          connections))

    def page() -> str:
        return app.request("GET", "/", headers={"Accept": BROWSER,
                                                "Authorization": basic(PASSWORD)}).body.decode()

    empty = page()
    assert "<svg" not in empty and "class=chart" not in empty
    assert "No history yet" in text_of(section(empty, "history"))
    # One sale of 1 RUB today: its bar and its rental, on axes of whole roubles and rentals
    # (not "0 / 0 / 0"); no SMS was delivered, so no delay chart.
    add_numbers(db, START, ("+4915100000001", "germany", "o2"))
    with db.transaction():
        db.execute("INSERT INTO operations (number_id, state, finish_status,"
                   " initial_sum_kopecks, final_sum_kopecks, created_at, finished_at, country)"
                   " VALUES (1, 'closed', 3, 100, 100, ?, ?, 'germany')",
                   ("2026-11-01T10:00:00.000000Z", "2026-11-01T11:00:00.000000Z"))
    html = page()
    assert re.findall(r"<section id=([\w-]+)-chart", html) == ["income", "rentals"]
    assert "push-delay" not in html and "id=history" not in html
    ticks = re.findall(r"<div class=y>(.*?)</div>", html)
    assert [re.findall(r"<span>([^<]*)</span>", t) for t in ticks] == [
        ["2", "1", "0"], ["2", "1", "0"]]


def test_the_page_escapes_what_comes_from_outside(console):
    html = console.request("GET", "/", headers={"Accept": BROWSER,
                                                "Authorization": basic(PASSWORD)}).body.decode()
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;" in html
    # In the operators table, the open rentals and the alert.
    assert html.count("&lt;script&gt;") >= 3


@pytest.mark.parametrize("accept", [None, "application/json", "*/*",
                                    "application/json, text/html;q=0.5",
                                    "text/html;q=0", "text/plain"])
def test_any_other_caller_gets_the_same_data_as_json(console, accept):
    headers = {"Authorization": basic(PASSWORD)}
    if accept is not None:
        headers["Accept"] = accept
    answer = console.request("GET", "/", headers=headers)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    data = answer.json
    assert data["status"] == "SUCCESS"
    assert set(data) >= {"at", "health", "warnings", "income", "push", "pool", "rentals",
                         "offline_sims", "gateways", "outbox", "alerts", "charts"}
    assert data["charts"]["income"]["credited_kopecks"][-2] == 174000
    assert data["rentals"]["list"][0]["operator"] == HOSTILE
    assert data["outbox"]["pending"] == 1


def test_wants_html():
    assert wants_html(BROWSER)
    assert wants_html("text/html")
    assert not wants_html("")
    assert not wants_html("*/*")
    assert not wants_html("application/json;q=0.9, text/html;q=0.8")
    assert wants_html("application/json;q=0.5, text/html")
    assert not wants_html("text/html;q=abc")


def test_authorized_compares_the_password_only():
    assert authorized(basic("pw", "x"), b"pw")
    assert not authorized(basic("pw", "x"), b"pw2")
    assert not authorized(None, b"pw")
    assert not authorized("basic " + base64.b64encode(b"pw").decode(), b"pw")
    assert authorized("basic  " + base64.b64encode(b":pw").decode() + " ", b"pw")


def test_head_answers_like_get_without_a_body(console):
    answer = console.request("HEAD", "/", headers={"Accept": BROWSER,
                                                   "Authorization": basic(PASSWORD)})
    assert answer.status == 200 and answer.body == b""
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert console.request("HEAD", "/").status == 401


def test_post_root_still_answers_onlinesim(console):
    answer = console.post("/", {"action": "GET_SERVICES", "key": API_KEY})
    assert answer.status == 200
    assert answer.json["status"] == "SUCCESS"
    # With a browser's Accept and the console password, POST / is still Onlinesim's.
    answer = console.post("/", {"action": "GET_SERVICES", "key": "wrong"},
                          headers={"Accept": BROWSER, "Authorization": basic(PASSWORD)})
    assert answer.status == 401 and answer.json == {"status": "ERROR", "error": "BAD_KEY"}


def test_health_unchanged(console):
    answer = console.request("GET", "/health")
    assert answer.status == 200 and answer.json["status"] == "SUCCESS"


def test_real_server_page_json_and_onlinesim(start_server, db):
    import datetime as dt

    seed(db, dt.datetime.now(dt.timezone.utc))
    add_numbers(db, START, ("+4915100000009", "germany", "telekom"))
    server = start_server(console_password=PASSWORD)
    parts = urllib.parse.urlsplit(server.url)

    def get(headers):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response, body

    response, body = get({"Accept": BROWSER})
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Basic realm="rentbox"'
    response, body = get({"Accept": BROWSER, "Authorization": basic(PASSWORD),
                          "Accept-Encoding": "gzip"})
    assert response.status == 200 and response.getheader("Content-Encoding") == "gzip"
    html = gzip.decompress(body).decode()
    assert "rentbox status" in html and "&lt;script&gt;" in html
    response, body = get({"Authorization": basic(PASSWORD)})
    assert response.status == 200
    assert b'"status":"SUCCESS"' in body and b'"charts"' in body
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/", body=b'{"action":"GET_SERVICES","key":"%s"}' % API_KEY.encode(),
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 200 and b'"SUCCESS"' in answer.read()
    conn.close()


def test_the_password_never_reaches_the_log(console, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        console.request("GET", "/", headers={"Authorization": basic(PASSWORD)})
        console.request("GET", "/", headers={"Authorization": basic("wrong-" + PASSWORD)})
    text = caplog.text
    assert PASSWORD not in text and base64.b64encode(PASSWORD.encode()).decode() not in text
    assert "GET / 200" in text and "GET / 401" in text


def test_the_last_call_named_is_the_last_call_made(console, clock, db):
    """GET_SERVICES polls, then GET_NUMBER and FINISH: the last call noted is FINISH, not
    the poll, each with its time; a repeat of an action within 30 s of its last write
    waits for the next write."""
    from rentbox import meta

    def call(action: str, **body) -> None:
        answer = console.post("/", {"action": action, "key": API_KEY, **body})
        assert answer.status == 200 and answer.json["status"] == "SUCCESS", answer.json

    def noted() -> dict:
        return meta.get(db, meta.LAST_ONLINESIM_CALL)

    call("GET_SERVICES")
    assert noted() == {"at": "2026-11-01T12:00:00.000000Z", "action": "GET_SERVICES",
                       "actions": {"GET_SERVICES": "2026-11-01T12:00:00.000000Z"}}
    clock.advance(5)
    answer = console.post("/", {"action": "GET_NUMBER", "key": API_KEY, "service": "rent",
                                "sum": 400, "country": "germany"})
    rental = answer.json["activationId"]
    assert noted()["action"] == "GET_NUMBER" and noted()["at"] == "2026-11-01T12:00:05.000000Z"
    clock.advance(5)
    call("FINISH_ACTIVATION", service="rent", activationId=rental, status=3, sum=400)
    assert noted() == {"at": "2026-11-01T12:00:10.000000Z", "action": "FINISH_ACTIVATION",
                       "actions": {"GET_SERVICES": "2026-11-01T12:00:00.000000Z",
                                   "GET_NUMBER": "2026-11-01T12:00:05.000000Z",
                                   "FINISH_ACTIVATION": "2026-11-01T12:00:10.000000Z"}}
    # A poll 20 s after the last written one is not written (a poll is not a write every
    # time); the next one, 30 s after it, is, and brings the entry up to date.
    clock.advance(10)
    call("GET_SERVICES")
    assert noted()["action"] == "FINISH_ACTIVATION"
    clock.advance(10)
    call("GET_SERVICES")
    assert noted()["action"] == "GET_SERVICES" and noted()["at"] == "2026-11-01T12:00:30.000000Z"
    html = console.request("GET", "/", headers={"Accept": BROWSER,
                                                "Authorization": basic(PASSWORD)}).body.decode()
    onlinesim = text_of(section(html, "onlinesim"))
    assert ("Last call: GET_SERVICES, 0 s ago (2026-11-01 12:00 UTC) before it: "
            "FINISH_ACTIVATION 20 s ago (2026-11-01 12:00 UTC); GET_NUMBER 25 s ago "
            "(2026-11-01 12:00 UTC)") in onlinesim


def test_with_other_buyers_the_page_shows_each_buyer_and_its_income_per_currency(
        settings, clock, connections, db):
    """Issue 23: the buyer of each open operation, each buyer's last call and push URL,
    which buyer gets what, and income per buyer and currency, the dollars never added to
    the roubles."""
    import dataclasses

    from test_dashboard import seed_buyers

    from rentbox.db import hold_serving_lock

    held = seed_buyers(db, START)
    app = WsgiClient(wsgi(dataclasses.replace(settings, console_password=PASSWORD), clock,
                          connections))
    lock = hold_serving_lock(db.path)  # as `rentbox serve` does: the server runs
    try:
        html = app.request("GET", "/", headers={"Accept": BROWSER, "Authorization": basic(
            PASSWORD)}).body.decode()
    finally:
        lock.close()
    assert re.findall(r"<section id=([\w-]+)", html)[:10] == [
        "attention", "rentals", "offline", "income", "gateways", "onlinesim", "buyers",
        "products", "buyer-income", "pool"]
    rentals = section(html, "rentals")
    assert "<th class='wrap'>buyer</th>" in rentals
    assert re.search(rf"<td class='head' data-label='rental'>{held} <span class=muted>\(vk\)"
                     r"</span></td>.*?<td class='wrap' data-label='buyer'>smshub</td>",
                     rentals)
    assert text_of(section(html, "buyers")) == (
        "Buyers buyer calls at last call push URL open "
        "onlinesim — never set 1 "
        "smshub /smshub GET_NUMBER, 60 min ago (2026-11-01 11:00 UTC) not set 1 "
        "Which buyer gets what: france reserved for smshub")
    # SMSHub is silent (an hour): its last call in red; its push URL is not set.
    assert "<span class=risk>GET_NUMBER, 60 min ago" in section(html, "buyers")
    assert text_of(section(html, "buyer-income")) == (
        "Income by buyer buyer currency credited this month pending success, all time open "
        "onlinesim RUB 0.00 RUB 400.00 RUB 100% 1 "
        "smshub USD 12.50 USD 0.00 USD - 1 "
        "Each currency apart: a USD income is never added to roubles.")
    income = section(html, "income")
    assert "<b>0.00 RUB</b><span>credited today</span>" in income  # not the 12.50 USD
    assert text_of(income).endswith(
        "Not in these sums: 12.50 USD this month, 0.00 USD pending.")
    warnings = text_of(section(html, "attention"))
    assert "the server runs without a push URL for smshub (RENTBOX_SMSHUB_PUSH_URL)" in warnings
