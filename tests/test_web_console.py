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
    answer = client.request("GET", "/", headers={"Accept": BROWSER,
                                                 "Authorization": basic(PASSWORD)})
    assert answer.status == 404
    assert answer.json["status"] == "ERROR"
    assert "RENTBOX_CONSOLE_PASSWORD" in answer.json["error"]
    assert "www-authenticate" not in lower(answer)


@pytest.mark.parametrize("authorization", [
    None, basic("wrong"), basic(PASSWORD.upper()), "Bearer " + PASSWORD, "Basic !!!notbase64",
    "Basic " + base64.b64encode(PASSWORD.encode()).decode(),  # no colon
    "Basic " + base64.b64encode(b"\xff\xfe:\xc3\x28" + PASSWORD.encode()).decode(),
    "Basic", "",
    # Only HTTP's spaces and tabs surround the credentials: "\xa0" and "\x85" are not spaces.
    basic(PASSWORD) + "\xa0", "Basic \x85" + basic(PASSWORD)[6:], "\xa0" + basic(PASSWORD),
])
def test_401_without_the_password(console, authorization):
    headers = {"Accept": BROWSER}
    if authorization is not None:
        headers["Authorization"] = authorization
    answer = console.request("GET", "/", headers=headers)
    assert answer.status == 401
    assert lower(answer)["www-authenticate"] == 'Basic realm="rentbox"'
    assert answer.json == {"status": "ERROR", "error": answer.json["error"]}
    assert PASSWORD not in answer.body.decode()


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
    for section in ("health", "pool", "outbox", "income", "rentals-chart", "push-delay",
                    "rentals", "operators", "alerts"):
        assert f"<section id={section}" in html
    points = dict(re.findall(r"data-chart=(\w+) data-points=(\d+)", html))
    assert points == {"income": "90", "rentals": "90", "push_delay": "3"}
    assert html.count("class='pt bar'") == 90 and html.count("<g class=pt>") == 90
    assert html.count("class='pt d50'") == 3
    assert len(answer.body) < 100_000


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
    assert set(data) >= {"at", "health", "warnings", "pool", "rentals", "outbox", "alerts",
                         "charts"}
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
