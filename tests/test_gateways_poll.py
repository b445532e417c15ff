"""Catch-up polling (rentbox/gateways/poll.py): the boxes' file, asking a box over HTTP
(Digest or Basic, no redirect, a timeout), a pass with the fake clock, a real server.

The boxes are fakes on loopback that serve their API's real answers:
- Dinstar `GET /api/query_incoming_sms` (flag, incoming_sms_id; answer error_code, sn,
  sms, read, unread): Dinstar's "GSM Gateway HTTP API" v201910, "Receive SMS", as
  published at wiki.ultiroam.com/index.php/HTTP_API_-_Receive_SMS, with
  ZodicSlanser/dinstar-client (model/QueryIncomingSmsRequest.java: flag=all and a rising
  incoming_sms_id, since `unread` marks SMS read; internal/DinstarHttp.java: Digest as the
  vendor uses, or Basic). Its example answer is examples/gateways/dinstar-query-incoming-
  sms.json (the manual's, without its stray trailing comma).
- Dinstar `GET /api/get_port_info` (info_type; answer error_code, sn, info[port, reg,
  number]): the same manual, "Get Port Information of Gateway", whose field table gives
  the `reg` values (REGISTER_OK, NO_SIM, ...); examples/gateways/dinstar-get-port-info.json
  is built from that table (no verbatim answer was found).
- Ejoin `GET /goip_get_sms.html` (username, password, sms_id, sms_num, sms_del; answer
  code, reason, ssrc, sms_num, next_sms, data rows as in the recv-sms push): the Skyline
  HTTP API reference v2.4.0, section 8 "Query SMS", in ZMAWline/incomingsms
  (.claude/skills/SkyLine-API/skyline_api_reference.md); examples/gateways/ejoin-get-sms.json.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import http.server
import json
import logging
import os
import threading
import time
import urllib.parse

import pytest

from rentbox import meta
from rentbox.config import Rules
from rentbox.errors import InvalidInput
from rentbox.gateways import dinstar, poll

from conftest import (EXAMPLES, GATEWAY_TOKEN, START, add_numbers, http_post, rent_number,
                      wait_until)

UTC = dt.timezone.utc
SAMPLES = EXAMPLES / "gateways"
INCOMING = json.loads((SAMPLES / "dinstar-query-incoming-sms.json").read_text())
PORT_INFO = json.loads((SAMPLES / "dinstar-get-port-info.json").read_text())
EJOIN_SMS = json.loads((SAMPLES / "ejoin-get-sms.json").read_text())
EJOIN_PUSH = json.loads((SAMPLES / "ejoin-recv-sms.json").read_text())
DINSTAR_PUSH = json.loads((SAMPLES / "dinstar-push-sms.json").read_text())
SN = INCOMING["sn"]  # xxxx-xxxx-xxxx-xxxx, as the manual writes it
USER, PASSWORD = "admin", "box-secret-7731"
REALM = "Web Server"  # what a UC box's Digest challenge names
AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}


class FakeBox:
    """A Dinstar or Ejoin box's web interface on loopback.

    `auth`: "digest" or "basic" (Dinstar: the login is checked as HTTP auth) or "query"
    (Ejoin: username and password in the query). `sms`: the rows the box holds (Dinstar:
    objects with incoming_sms_id; Ejoin: row arrays, numbered from 1). `answer`: a
    function (path, query) -> (status, headers, body) that replaces the box's API.
    """

    def __init__(self, kind: str, auth: str = "digest"):
        self.kind, self.auth = kind, auth
        self.sms: list = []
        self.ssrc = "0123456789abcdef"
        self.ports = json.loads(json.dumps(PORT_INFO))
        self.answer = None
        self.requests: list[dict] = []
        box = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parts.query))
                box.requests.append({"path": parts.path, "query": query,
                                     "authorization": self.headers.get("Authorization")})
                if box.answer is not None:
                    status, headers, body = box.answer(parts.path, query)
                elif not box._authorised(self.headers.get("Authorization"), self.path, query):
                    status, body = 401, b"Unauthorized"
                    headers = {"WWW-Authenticate": (
                        f'Digest realm="{REALM}", nonce="{os.urandom(8).hex()}", '
                        'qop="auth", algorithm=MD5' if box.auth == "digest"
                        else f'Basic realm="{REALM}"')} if box.auth != "query" else {}
                    if box.auth == "query":
                        status, body = 200, json.dumps({"code": 1, "reason": "Login failed"}
                                                       ).encode()
                else:
                    status, headers, body = 200, {}, json.dumps(box._api(parts.path, query)
                                                                ).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _authorised(self, header: str | None, uri: str, query: dict) -> bool:
        if self.auth == "query":
            return query.get("username") == USER and query.get("password") == PASSWORD
        if self.auth == "basic":
            expected = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            return header == f"Basic {expected}"
        if not header or not header.startswith("Digest "):
            return False
        fields = dict((k, v.strip('"')) for k, v in (
            part.strip().split("=", 1) for part in header[7:].split(",")))
        md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
        ha1, ha2 = md5(f"{USER}:{REALM}:{PASSWORD}"), md5(f"GET:{uri}")
        expected = md5(f"{ha1}:{fields.get('nonce')}:{fields.get('nc')}:{fields.get('cnonce')}:"
                       f"auth:{ha2}")
        return fields.get("uri") == uri and fields.get("response") == expected

    def _api(self, path: str, query: dict) -> dict:
        if self.kind == "dinstar" and path == "/api/query_incoming_sms":
            after = int(query.get("incoming_sms_id", 0))
            return {"error_code": 200, "sn": SN,
                    "sms": [r for r in self.sms if r["incoming_sms_id"] > after],
                    "read": len(self.sms), "unread": 0}
        if self.kind == "dinstar" and path == "/api/get_port_info":
            return self.ports
        if self.kind == "ejoin" and path == "/goip_get_sms.html":
            start, count = int(query["sms_id"]), int(query["sms_num"])
            page = self.sms[start - 1:start - 1 + count]
            return {"code": 0, "reason": "OK", "ssrc": self.ssrc, "sms_num": len(page),
                    "next_sms": start + len(page), "data": page}
        return {"error_code": 404} if self.kind == "dinstar" else {"code": 404}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def boxes():
    made = []

    def make(kind: str, auth: str = "digest") -> FakeBox:
        made.append(FakeBox(kind, auth))
        return made[-1]

    yield make
    for box in made:
        box.close()


def dinstar_box(fake: FakeBox, name: str = "dwg1") -> poll.Box:
    return poll.Box(name=name, kind="dinstar", url=fake.url, user=USER, password=PASSWORD)


def ejoin_box(fake: FakeBox, name: str = "ejoin1", prefix: str | None = None) -> poll.Box:
    return poll.Box(name=name, kind="ejoin", url=fake.url, user=USER, password=PASSWORD,
                    prefix=prefix)


def catch_up(*boxes: poll.Box, rules: Rules = Rules(), timeout_s: float = 5,
             tz: str = "UTC") -> poll.CatchUp:
    return poll.CatchUp(list(boxes), rules, tz, poll.HttpFetcher(timeout_s))


def dinstar_row(n: int, at: dt.datetime, text: str = "Код 1", port: int = 2) -> dict:
    """A row of the box's list, as the manual's example answer has it."""
    return {**INCOMING["sms"][0], "incoming_sms_id": n, "port": port, "text": text,
            "timestamp": at.astimezone(UTC).strftime(dinstar.TIME_FORMAT)}


def stored(db) -> list[dict]:
    return db.rows("SELECT source, number, port, sender, text, received_at, push_state"
                   " FROM sms ORDER BY id")


# ---- the boxes' file --------------------------------------------------------------------


def write(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "poll-boxes.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_example_file_loads(caplog):
    boxes = poll.load_boxes(SAMPLES / "poll-boxes.toml")
    assert [(b.name, b.kind, b.url, b.user, b.verify_tls, b.prefix) for b in boxes] == [
        ("dwg1", "dinstar", "https://192.168.1.20", "admin", False, None),
        ("ejoin1", "ejoin", "http://192.168.1.30", "root", True, "gw1")]
    assert "change-me" not in repr(boxes)


def test_a_file_others_can_read_is_warned_about(tmp_path, caplog):
    path = write(tmp_path, '[[box]]\nname = "a"\nkind = "dinstar"\nurl = "http://10.0.0.1"\n'
                 'user = "admin"\npassword = "pw-1234"\n', mode=0o644)
    poll.load_boxes(path)
    assert "can be read by other users (mode 644)" in caplog.text
    assert "pw-1234" not in caplog.text


@pytest.mark.parametrize("text, message", [
    ("", "must list boxes as [[box]] tables"),
    ("[box]\nname = 'a'", "must list boxes as [[box]] tables"),
    ("[[box]]\nname = 'a'\nkind = 'goip'", "kind must be one of dinstar, ejoin"),
    ("[[box]]\nname = 'a b'", "name must be 1 to 40 letters"),
    ("[[box]]\nname = 'a'\nkind = 'dinstar'\nurl = 'ftp://x'", "url must be the box's"),
    ("[[box]]\nname = 'a'\nkind = 'dinstar'\nurl = 'http://admin:pw-1234@x'", "url must be"),
    ("[[box]]\nname = 'a'\nkind = 'dinstar'\nurl = 'http://x/?token=pw-1234'", "url must be"),
    ("[[box]]\nname = 'a'\nkind = 'dinstar'\nurl = 'http://x'\nuser = 'u'",
     "password is required"),
    ("[[box]]\nname = 'a'\nkind = 'dinstar'\nurl = 'http://x'\nuser = 'u'\npassword = "
     "'pw-1234'\nbox = 'gw1'", "box (the name in the push URL) is for Ejoin boxes"),
    ("[[box]]\nname = 'a'\nkind = 'ejoin'\nurl = 'http://x'\nuser = 'u'\npassword = "
     "'pw-1234'\nbox = 'g w'", "box must be 1 to 40 letters"),
    ("[[box]]\nname = 'a'\nkind = 'ejoin'\nurl = 'http://x'\nuser = 'u'\npassword = "
     "'pw-1234'\npasword = 'x'", "unknown key(s) pasword"),
    ("[[box]]\nname = 'a'\nkind = 'ejoin'\nurl = 'http://x'\nuser = 'u'\npassword = "
     "'pw-1234'\n[[box]]\nname = 'a'\nkind = 'ejoin'\nurl = 'http://y'\nuser = 'u'\n"
     "password = 'pw-1234'", "two boxes"),
    ("password = 'pw-1234", "is not a TOML file"),
])
def test_a_bad_file_is_refused_without_its_passwords(tmp_path, text, message):
    with pytest.raises(InvalidInput, match="RENTBOX_POLL_BOXES") as refused:
        poll.load_boxes(write(tmp_path, text))
    assert message in str(refused.value) and "pw-1234" not in str(refused.value)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read"):
        poll.load_boxes(tmp_path / "nope.toml")


def test_serve_does_not_start_with_a_bad_file(settings, tmp_path):
    from rentbox.db import hold_serving_lock
    from rentbox.server import Server

    path = write(tmp_path, "[[box]]\nname = 'a'\nkind = 'nokia'")
    with pytest.raises(InvalidInput, match="kind must be one of"):
        Server(dataclasses.replace(settings, poll_boxes=path))
    hold_serving_lock(settings.db).close()  # released: a corrected server can start


# ---- asking a box -----------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["digest", "basic"])
def test_a_dinstar_box_is_asked_with_the_auth_it_asks_for(boxes, auth):
    fake = boxes("dinstar", auth)
    fake.sms = INCOMING["sms"]
    answer = poll.HttpFetcher(5)(dinstar_box(fake), poll.DINSTAR_SMS,
                                 {"flag": "all", "incoming_sms_id": 0})
    assert answer == {**INCOMING, "read": 1}
    assert fake.requests[-1]["authorization"].startswith(auth.title())
    assert fake.requests[-1]["query"] == {"flag": "all", "incoming_sms_id": "0"}


@pytest.mark.parametrize("answer, reason", [
    (lambda p, q: (302, {"Location": "http://127.0.0.2/steal"}, b""), "HTTP 302"),
    (lambda p, q: (500, {}, b"oops"), "HTTP 500"),
    (lambda p, q: (200, {}, b"<html>login</html>"), "the answer is not JSON"),
    (lambda p, q: (200, {}, b"[1]"), "the answer is not a JSON object"),
    (lambda p, q: (200, {}, b"[" * 100_000), "the answer is not JSON"),
])
def test_a_box_that_answers_otherwise_is_a_poll_error(boxes, answer, reason):
    fake = boxes("dinstar")
    fake.answer = answer
    with pytest.raises(poll.PollError, match=reason):
        poll.HttpFetcher(5)(dinstar_box(fake), poll.DINSTAR_SMS, {"flag": "all"})
    assert len(fake.requests) == 1  # the redirect was not followed


def test_a_wrong_password_and_a_silent_box_are_poll_errors(boxes):
    fake = boxes("dinstar", "basic")
    wrong = dataclasses.replace(dinstar_box(fake), password="wrong-one")
    with pytest.raises(poll.PollError, match="HTTP 401 .*check user and password"):
        poll.HttpFetcher(5)(wrong, poll.DINSTAR_SMS, {})
    fake.answer = lambda p, q: (time.sleep(1.5), (200, {}, b"{}"))[1]  # the fake is slow
    with pytest.raises(poll.PollError, match="no answer within 0.3 s"):
        poll.HttpFetcher(0.3)(dinstar_box(fake), poll.DINSTAR_SMS, {})


def test_a_closed_port_is_a_poll_error():
    from conftest import refused_url

    url = refused_url().removesuffix("/pushSmsRent")
    box = poll.Box(name="gone", kind="dinstar", url=url, user=USER, password=PASSWORD)
    with pytest.raises(poll.PollError, match="Connection refused"):
        poll.HttpFetcher(2)(box, poll.DINSTAR_SMS, {})


# ---- a pass: Dinstar --------------------------------------------------------------------


@pytest.fixture
def dinstar_pool(db):
    add_numbers(db, START, ("+8613714637674", "china", "cmcc", f"{SN}:2"),
                ("+8613714637675", "china", "cmcc", f"{SN}:0"))
    return db


def test_the_first_pass_marks_where_the_list_ends_and_takes_nothing(boxes, db, clock,
                                                                    dinstar_pool, caplog):
    fake = boxes("dinstar")
    fake.sms = [dinstar_row(1, START - dt.timedelta(days=3)), dinstar_row(2, START)]
    pass_ = catch_up(dinstar_box(fake), rules=Rules(presence=False))
    with caplog.at_level(logging.INFO, logger="rentbox.gateways"):
        assert pass_.run_once(db, clock) == 0
    assert stored(db) == []
    assert meta.get(db, "poll.dwg1") == {"kind": "dinstar", "sn": SN, "last_id": 2}
    assert ("catch-up poll of dwg1 (dinstar xxxx-xxxx-xxxx-xxxx): from the box's SMS 2 on; "
            "the 2 it held before are not taken") in caplog.text


def test_an_sms_both_pushed_and_polled_is_stored_once(boxes, client, db, clock, dinstar_pool):
    fake = boxes("dinstar")
    pass_ = catch_up(dinstar_box(fake), rules=Rules(presence=False))
    pass_.run_once(db, clock)                       # the mark: an empty list
    # SMS 1: pushed, then polled. SMS 2: the push was lost; polled, then pushed again.
    fake.sms = [dinstar_row(1, clock.now(), "pushed first"),
                dinstar_row(2, clock.now(), "polled first")]
    client.post("/sms/dinstar", {"sn": SN, "sms": [fake.sms[0]]}, headers=AUTH)
    clock.advance(10)
    assert pass_.run_once(db, clock) == 0           # no open rental: kept, not pushed
    answer = client.post("/sms/dinstar", {"sn": SN, "sms": fake.sms}, headers=AUTH).json
    assert (answer["accepted"], answer["duplicates"]) == (0, 2)
    assert pass_.run_once(db, clock) == 0
    assert [(r["text"], r["port"], r["received_at"]) for r in stored(db)] == [
        ("pushed first", f"{SN}:2", "2026-11-01T12:00:00.000000Z"),
        ("polled first", f"{SN}:2", "2026-11-01T12:00:00.000000Z")]
    assert meta.get(db, "poll.dwg1")["last_id"] == 2
    asked = [r["query"].get("incoming_sms_id") for r in fake.requests
             if r["authorization"] and r["path"] == poll.DINSTAR_SMS]
    assert asked == ["0", "0", "2"]                 # only what comes after the mark


def test_a_polled_sms_reaches_its_rental(boxes, db, clock, dinstar_pool):
    from rentbox import operations
    from rentbox.protocol import NumberRequest

    fake = boxes("dinstar")
    pass_ = catch_up(dinstar_box(fake), rules=Rules(presence=False))
    pass_.run_once(db, clock)
    rental = operations.open_operation(db, clock, NumberRequest(40000, country="china"), Rules())
    clock.advance(120)
    port = 2 if rental.number == "8613714637674" else 0
    fake.sms = [dinstar_row(1, clock.now() - dt.timedelta(seconds=90), "G-1234", port)]
    assert pass_.run_once(db, clock) == 1
    assert stored(db)[0]["push_state"] == "pending"


def test_an_sms_held_across_the_rental_start_is_still_kept_from_it(boxes, client, db, clock,
                                                                  dinstar_pool):
    """A box 5 hours behind (RENTBOX_DINSTAR_TZ unset) whose pushes showed it: the SMS it
    held from before the rental began is dated by the box, corrected, and kept unrouted."""
    from rentbox import operations
    from rentbox.protocol import NumberRequest

    fake = boxes("dinstar")
    pass_ = catch_up(dinstar_box(fake), rules=Rules(presence=False))
    pass_.run_once(db, clock)
    behind = dt.timedelta(hours=5)
    client.post("/sms/dinstar", {"sn": SN, "sms": [dinstar_row(1, clock.now() - behind)]},
                headers=AUTH)
    old = clock.now()
    clock.advance(3600)
    operations.open_operation(db, clock, NumberRequest(40000, country="china"), Rules())
    fake.sms = [dinstar_row(1, old - behind), *(dinstar_row(n, old - behind, "old", p)
                                                for n, p in ((2, 2), (3, 0)))]
    pass_.run_once(db, clock)
    assert [(r["text"], r["received_at"], r["push_state"]) for r in stored(db)[1:]] == [
        ("old", "2026-11-01T12:00:00.000000Z", "unrouted")] * 2


def test_the_ports_states_are_presence(boxes, db, clock, caplog):
    """The register states the box pushes only on a change are read every pass, so a SIM
    that is up stays online, and one whose "down" push was lost goes offline."""
    add_numbers(db, START, ("+8613714637674", "china", "cmcc", f"{SN}:0"),
                ("+8613714637675", "china", "cmcc", f"{SN}:1"))
    fake = boxes("dinstar")
    pass_ = catch_up(dinstar_box(fake), rules=Rules(presence_s=300))

    def sims():
        return {r["number"]: (r["offline"], r["seen_by"]) for r in db.rows(
            "SELECT number, offline, seen_by FROM numbers ORDER BY number")}

    for _ in range(10):  # 10 minutes: longer than the presence window
        pass_.run_once(db, clock)
        clock.advance(60)
        # Port 1 is NO_SIM: its number is offline (issue 21, item 6).
        assert sims() == {"8613714637674": (0, f"dinstar:{SN}:0"),
                          "8613714637675": (1, f"dinstar:{SN}:1")}
    assert [r["query"] for r in fake.requests if r["path"] == poll.DINSTAR_PORTS][-1] == {
        "info_type": "reg,number"}
    fake.ports["info"][0]["reg"] = "NO_SIM"  # port 0 loses its SIM
    pass_.run_once(db, clock)
    assert db.row("SELECT offline, offline_reason FROM numbers WHERE number = ?",
                  ("8613714637674",)) == {"offline": 1, "offline_reason": "dropped"}
    assert "failed" not in caplog.text


def test_a_failing_box_is_logged_when_it_starts_and_every_five_minutes(boxes, db, clock,
                                                                       dinstar_pool, caplog):
    broken, working = boxes("dinstar", "basic"), boxes("ejoin", "query")
    wrong = dataclasses.replace(dinstar_box(broken), password="wrong-pass-99")
    pass_ = catch_up(wrong, ejoin_box(working), rules=Rules(presence=False))
    with caplog.at_level(logging.INFO, logger="rentbox.gateways"):
        for _ in range(12):          # a pass a minute for 11 minutes
            pass_.run_once(db, clock)
            clock.advance(60)
        pass_._fetch = poll.HttpFetcher(5)  # (its opener holds the wrong password)
        pass_.boxes[0] = dinstar_box(broken)  # the password corrected
        pass_.run_once(db, clock)
    lines = [r.getMessage() for r in caplog.records if "dwg1" in r.getMessage()]
    assert lines == [
        "catch-up poll of dwg1 (dinstar SMS) failed: HTTP 401 Unauthorized: check user and "
        "password",
        "catch-up poll of dwg1 (dinstar SMS) fails since 2026-11-01T12:00:00.000000Z "
        "(6 passes): HTTP 401 Unauthorized: check user and password",
        "catch-up poll of dwg1 (dinstar SMS) fails since 2026-11-01T12:00:00.000000Z "
        "(11 passes): HTTP 401 Unauthorized: check user and password",
        "catch-up poll of dwg1 (dinstar xxxx-xxxx-xxxx-xxxx): from the box's SMS 0 on; "
        "the 0 it held before are not taken",
        "catch-up poll of dwg1 (dinstar SMS) works again after 12 failed pass(es)"]
    # The other box was polled at every pass all along.
    assert len([r for r in working.requests if r["path"] == poll.EJOIN_SMS]) == 13
    assert "wrong-pass-99" not in caplog.text and PASSWORD not in caplog.text


def test_a_box_that_breaks_in_an_unexpected_way_never_stops_the_others(boxes, db, clock,
                                                                      caplog):
    strange, working = boxes("dinstar"), boxes("ejoin", "query")
    strange.answer = lambda p, q: (200, {}, json.dumps(
        {"error_code": 200, "sn": SN, "sms": 5}).encode())
    pass_ = catch_up(dinstar_box(strange), ejoin_box(working), rules=Rules(presence=False))
    pass_.run_once(db, clock)
    assert "catch-up poll of dwg1 (dinstar SMS) failed: sms must be a list of SMS" in caplog.text
    assert meta.get(db, "poll.ejoin1")["next"] == 1


def test_a_box_replaced_at_its_url_is_read_from_its_end(boxes, db, clock, caplog):
    fake = boxes("dinstar")
    pass_ = catch_up(dinstar_box(fake), rules=Rules(presence=False))
    meta.put(db, START, "poll.dwg1", {"kind": "dinstar", "sn": "other-box", "last_id": 900})
    fake.sms = [dinstar_row(1, START)]
    pass_.run_once(db, clock)
    assert "the box at its url is now xxxx-xxxx-xxxx-xxxx, not other-box" in caplog.text
    pass_.run_once(db, clock)
    assert meta.get(db, "poll.dwg1")["last_id"] == 1 and stored(db) == []


# ---- a pass: Ejoin ----------------------------------------------------------------------


def ejoin_rows(n: int) -> list[list]:
    return [[0, "1.01", 1795687200 + i, "+79990001122", "", base64.b64encode(
        f"code {i}".encode()).decode()] for i in range(n)]


def test_ejoin_pages_are_read_after_the_first_pass_skips_the_history(boxes, db, clock,
                                                                     monkeypatch):
    monkeypatch.setattr(poll, "EJOIN_PAGE", 3)
    monkeypatch.setattr(poll, "MAX_PAGES", 2)
    fake = boxes("ejoin", "query")
    fake.sms = ejoin_rows(8)
    pass_ = catch_up(ejoin_box(fake, prefix="gw1"))
    pass_.run_once(db, clock)           # pages 1-3, 4-6: still history
    assert meta.get(db, "poll.ejoin1")["skipping"] is True
    pass_.run_once(db, clock)           # 7-8: the end
    assert meta.get(db, "poll.ejoin1") == {"kind": "ejoin", "ssrc": "0123456789abcdef",
                                           "next": 9, "skipping": False}
    assert stored(db) == []
    fake.sms += ejoin_rows(12)[8:]      # four new SMS: two pages
    pass_.run_once(db, clock)
    assert [r["text"] for r in stored(db)] == ["code 8", "code 9", "code 10", "code 11"]
    assert {r["port"] for r in stored(db)} == {"gw1:1.01"}
    queries = [r["query"] for r in fake.requests]
    assert queries[-1] == {"username": USER, "password": PASSWORD, "sms_id": "12",
                           "sms_num": "3", "sms_del": "0"}


def test_an_ejoin_box_that_restarts_its_list_is_read_from_its_start(boxes, db, clock, caplog):
    fake = boxes("ejoin", "query")
    pass_ = catch_up(ejoin_box(fake))
    fake.sms = ejoin_rows(2)
    pass_.run_once(db, clock)
    fake.sms, fake.ssrc = ejoin_rows(5)[2:], "fedcba9876543210"   # rebooted: a new list
    with caplog.at_level(logging.INFO, logger="rentbox.gateways"):
        pass_.run_once(db, clock)
    assert [r["text"] for r in stored(db)] == ["code 2", "code 3", "code 4"]
    assert "the box restarted its SMS list (ssrc fedcba9876543210): read from its start" in (
        caplog.text)


def test_an_ejoin_sms_pushed_and_polled_is_stored_once(boxes, client, db, clock):
    """The sample push's second row is the second row of the sample poll answer."""
    add_numbers(db, START, ("+79161234567", "russia", "mts", "1.02"))
    fake = boxes("ejoin", "query")
    pass_ = catch_up(ejoin_box(fake))
    pass_.run_once(db, clock)
    fake.sms = EJOIN_SMS["data"]
    pushed = client.post("/sms/ejoin", EJOIN_PUSH, headers=AUTH).json
    assert pushed["accepted"] == 2
    pass_.run_once(db, clock)
    assert [(r["port"], r["sender"]) for r in stored(db)] == [
        ("1.01", "Google"), ("1.02", "+79990001122"), ("1B", "10010")]
    answer = client.post("/sms/ejoin", {"type": "recv-sms", "sms": fake.sms}, headers=AUTH)
    assert (answer.json["accepted"], answer.json["duplicates"]) == (0, 2)


@pytest.mark.parametrize("answer, reason", [
    ({"code": 1, "reason": "Login failed"}, "the box answered code 1: Login failed"),
    ({"code": 0, "reason": "OK", "data": []}, "next_sms is missing"),
    ({"code": 0, "data": {}, "next_sms": 2}, "data is not a list of SMS"),
])
def test_an_ejoin_answer_that_is_not_its_api_is_logged(boxes, db, clock, caplog, answer,
                                                       reason):
    fake = boxes("ejoin", "query")
    fake.answer = lambda p, q: (200, {}, json.dumps(answer).encode())
    catch_up(ejoin_box(fake)).run_once(db, clock)
    assert f"catch-up poll of ejoin1 (ejoin SMS) failed: {reason}" in caplog.text
    assert meta.get(db, "poll.ejoin1") is None


# ---- a real server ----------------------------------------------------------------------


def test_a_real_server_catches_up_on_an_sms_whose_push_was_lost(start_server, boxes, db,
                                                                 onlinesim, tmp_path):
    add_numbers(db, START, ("+8613714637674", "china", "cmcc", f"{SN}:2"))
    fake = boxes("dinstar")
    # The box has that SIM in port 2 (its list of ports is the authority for its ports).
    fake.ports["info"].append({"port": 2, "reg": "REGISTER_OK", "number": "13714637674"})
    fake.sms = [dinstar_row(1, dt.datetime.now(UTC) - dt.timedelta(days=2), "history")]
    path = write(tmp_path, f'[[box]]\nname = "dwg1"\nkind = "dinstar"\nurl = "{fake.url}"\n'
                 f'user = "{USER}"\npassword = "{PASSWORD}"\n')
    server = start_server(push_url=onlinesim.url, poll_boxes=path, poll_every_s=0.2)
    assert wait_until(lambda: (meta.get(db, "poll.dwg1") or {}).get("last_id") == 1)
    rent_number(server)
    now = dt.datetime.now(UTC)
    # SMS 2 reaches rentbox by its push and by the poll; SMS 3's push was lost.
    fake.sms += [dinstar_row(2, now, "pushed: G-1111"), dinstar_row(3, now, "lost: G-2222")]
    pushed = http_post(f"{server.url}/sms/dinstar?token={GATEWAY_TOKEN}",
                       {"sn": SN, "sms": [fake.sms[1]]})
    assert pushed.json["accepted"] == 1
    onlinesim.wait_for(2)
    assert wait_until(lambda: (meta.get(db, "poll.dwg1") or {}).get("last_id") == 3)
    time.sleep(0.5)  # a few more passes: nothing more may reach Onlinesim
    assert sorted(b["text"] for b in onlinesim.bodies()) == ["lost: G-2222", "pushed: G-1111"]
    assert [r["text"] for r in stored(db)] == ["pushed: G-1111", "lost: G-2222"]
