"""Ejoin's pushes (rentbox/gateways/ejoin.py): parsing every variant, the route, a real server."""

import base64
import datetime as dt
import json
import logging
import time

import pytest

from rentbox import presence, reports
from rentbox.errors import InvalidInput
from rentbox.gateways import common, ejoin

from conftest import (API_KEY, EXAMPLES, GATEWAY_TOKEN, START, add_numbers, http_post,
                      rent_number, snapshot, wait_until)

A, B = "4915123456789", "4915123456790"
AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
SAMPLE = json.loads((EXAMPLES / "gateways" / "ejoin-recv-sms.json").read_text())
T = 1795687200  # 2026-11-26 10:00:00 UTC


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode("utf-8") if isinstance(data, str) else data).decode()


def row(content, *, port="1.01", sender="+79990001122", recipient="", kind=0, at=T):
    return [kind, port, at, sender, recipient, b64(content)]


def push(*rows) -> dict:
    return {"type": "recv-sms", "sms_num": len(rows), "sms": list(rows)}


# ---- parsing -----------------------------------------------------------------------------


def test_the_sample_push_header_block_plain_text_and_a_delivery_report():
    first, second, report = ejoin.parse_push(SAMPLE).rows
    assert (first.to, first.port, first.sender, first.source) == ("+4915123456789", "1.01",
                                                                 "Google", "ejoin")
    assert first.text == "G-123456 is your Google verification code."
    assert first.received_at == dt.datetime(2026, 11, 26, 10, tzinfo=dt.timezone.utc)
    assert (second.to, second.port, second.sender) == (None, "1.02", "+79990001122")
    assert second.text == "Ваш код: 5520. Никому его не сообщайте."
    assert report is None  # a delivery report: acknowledged, not stored


def test_the_box_name_in_the_url_prefixes_the_ports():
    first, second, _ = ejoin.parse_push(SAMPLE, box="gw1").rows
    assert (first.port, second.port) == ("gw1:1.01", "gw1:1.02")
    with pytest.raises(InvalidInput, match="box must be"):
        ejoin.parse_push(SAMPLE, box="gw 1")


@pytest.mark.parametrize("content, recipient, to, text", [
    # base64 of the text itself, the recipient in the row
    ("Your code is 4242", "+4915123456789", "+4915123456789", "Your code is 4242"),
    # the header block with CRLF, the number only in Receiver:
    ('Sender: +79990001122\r\nReceiver: "1.01" 4915123456789\r\nSMSC: 1\r\nSCTS: 2\r\n\r\n'
     "Code 1", "", "4915123456789", "Code 1"),
    # the header block with LF only, and a Slot: line
    ('Sender: +79990001122\nReceiver: "1.01" +4915123456789\nSlot: "01"\n\nCode 2', "",
     "+4915123456789", "Code 2"),
    # the header block whose Receiver has no number (as on SIM banks): routed by the port
    ('Sender: Google\r\nReceiver: "24.01" \r\nSMSC: 34607008077\r\nSCTS: 25110914563088\r\n'
     'Slot: "01"\r\n\r\nG-666266 is your code.', "", None, "G-666266 is your code."),
    # a row recipient wins over Receiver:
    ('Sender: x\r\nReceiver: "1.01" +4915123456790\r\n\r\nhi', "+4915123456789",
     "+4915123456789", "hi"),
    # a recipient that is no international number (a short code): routed by the port
    ("hello", "10010", None, "hello"),
    # text that only looks like a header: kept whole
    ("Code: 1234\r\n\r\nThanks", "", None, "Code: 1234\r\n\r\nThanks"),
])
def test_content_with_and_without_the_header_block(content, recipient, to, text):
    [sms] = ejoin.parse_push(push(row(content, recipient=recipient))).rows
    assert (sms.to, sms.port, sms.text) == (to, "1.01", text)


def test_cyrillic_text_in_ucs2_with_and_without_the_header_block():
    text = "Ваш код подтверждения: 8812"
    plain = base64.b64encode(text.encode("utf-16-be")).decode()
    headed = base64.b64encode(("Sender: MTS\r\nReceiver: \"1.01\" \r\n\r\n" + text)
                              .encode("utf-16-be")).decode()
    rows = ejoin.parse_push(push([0, "1.01", T, "MTS", "", plain],
                                 [0, "1.01", T, "", "", headed])).rows
    assert [(r.sender, r.text) for r in rows] == [("MTS", text), ("MTS", text)]


def test_the_same_sms_has_the_same_id_and_another_sms_another():
    one, again, other, later = ejoin.parse_push(push(
        row("Code 1"), row("Code 1"), row("Code 2"), row("Code 1", at=T + 60))).rows
    assert one.source_id == again.source_id
    assert len({one.source_id, other.source_id, later.source_id}) == 3


@pytest.mark.parametrize("bad, reason", [
    ("not a list", "an SMS must be a list"),
    ([0, "1.01", T, "x", ""], "an SMS must be a list"),
    ([0, "1.01", T, "x", "", "%%% not base64"], "content is not base64"),
    ([2, "1.01", T, "x", "", b64("a")], "kind must be 0"),
    ([0, "1.01", "soon", "x", "", b64("a")], "time must be an integer"),
    ([0, "", T, "x", "", b64("a")], "port must be"),
    ([0, "1.01", T, "", "", b64("no sender anywhere")], "the sender is missing"),
    ([0, "1.01", T, "x", "", base64.b64encode(b"\xff\xfe\xfd").decode()], "neither UTF-8"),
])
def test_a_bad_row_is_a_bad_row_not_a_bad_push(bad, reason):
    first, second = ejoin.parse_push(push(bad, row("fine"))).rows
    assert isinstance(first, common.BadRow) and reason in first.reason
    assert second.text == "fine"


@pytest.mark.parametrize("body, message", [
    ({"sms": []}, "type is required"),
    ({"type": "recv-sms", "sms": {}}, "sms must be a list"),
    ({"type": "dev-status", "status": "all"}, "status must be a list"),
    ({"type": "port-status", "st": "3"}, "port must be"),
])
def test_a_push_of_the_wrong_shape_is_refused(body, message):
    with pytest.raises(InvalidInput, match=message):
        ejoin.parse_push(body)


def test_other_push_types_are_acknowledged_and_ignored():
    assert ejoin.parse_push({"type": "status-report", "rpts": []}) == ejoin.Push()


def test_port_states():
    sample = json.loads((EXAMPLES / "gateways" / "ejoin-dev-status.json").read_text())
    online, empty = ejoin.parse_push(sample, box="gw1").ports
    assert online.report == presence.Report("ejoin:gw1:1.01", ports=("gw1:1.01",))
    assert (online.port, online.number) == ("gw1:1.01", "+4915123456789")
    assert empty.report == presence.Report("ejoin:gw1:1.02", ports=())
    for state, is_online in [({"st": 3}, True), ({"st": "4 Call connected"}, True),
                             ({"status": "5 No balance"}, True), ({"st": "2 Registering"}, False),
                             ({"st": "3 Registered", "active": 0}, False), ({}, False)]:
        [parsed] = ejoin.parse_push({"type": "port-status", "port": "2A", **state}).ports
        assert bool(parsed.report.ports) is is_online, state


# ---- the route, in process -------------------------------------------------------------


@pytest.fixture
def rented(client, db):
    add_numbers(db, START, (A, "germany", "telekom", "gw1:1.01"),
                (B, "germany", "telekom", "gw1:1.02"))
    get = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}
    return [client.post("/getNumberRent", get).json["activationId"] for _ in range(2)]


def stored(db):
    return db.rows("SELECT number, port, sender, text, source, push_state FROM sms ORDER BY id")


def test_a_push_with_one_bad_row_stores_the_others_once(client, clock, db, rented, caplog):
    at = int(clock.now().timestamp())
    body = push(row("first", port="1.01", at=at), ["broken"], row("Код 1", port="1.02", at=at),
                row("0 261126", kind=1, at=at))
    with caplog.at_level(logging.WARNING, logger="rentbox.gateways"):
        answer = client.post("/sms/ejoin?box=gw1", body, headers=AUTH)
    assert (answer.status, answer.json) == (200, {
        "status": "SUCCESS", "accepted": 2, "duplicates": 0, "skipped": 1, "ignored": 1,
        "smsIds": [1, 2]})
    assert ["ejoin push: SMS 2 of 4 skipped: an SMS must be a list: kind, port, time, sender, "
            "recipient, content"] == [r.getMessage() for r in caplog.records]
    # The box sends the push again: nothing new is stored.
    again = client.post("/sms/ejoin?box=gw1", body, headers=AUTH)
    assert again.json == {"status": "SUCCESS", "accepted": 0, "duplicates": 2, "skipped": 1,
                          "ignored": 1, "smsIds": [1, 2]}
    assert stored(db) == [
        {"number": A, "port": "gw1:1.01", "sender": "+79990001122", "text": "first",
         "source": "ejoin", "push_state": "pending"},
        {"number": B, "port": "gw1:1.02", "sender": "+79990001122", "text": "Код 1",
         "source": "ejoin", "push_state": "pending"}]


@pytest.mark.parametrize("path, headers", [
    ("/sms/ejoin", {}),
    ("/sms/ejoin?token=wrong", {}),
    ("/sms/ejoin?token=", {}),
    (f"/sms/ejoin?token={API_KEY}", {}),
    (f"/sms/ejoin?token={GATEWAY_TOKEN}", {"Authorization": "Bearer wrong"}),
    ("/sms/ejoin?token=wrong", AUTH),
    ("/sms/ejoin", {"Authorization": f"Basic {GATEWAY_TOKEN}"}),
])
def test_the_token_in_the_header_or_the_url_must_match(client, db, rented, path, headers):
    before = snapshot(db)
    answer = client.post(path, SAMPLE, headers=headers)
    assert (answer.status, answer.json) == (401, {"status": "ERROR", "error": "BAD_TOKEN"})
    assert snapshot(db) == before


def test_the_token_in_the_url_is_enough(client, db, rented):
    answer = client.post(f"/sms/ejoin?box=gw1&token={GATEWAY_TOKEN}", SAMPLE)
    assert answer.json["accepted"] == 2


@pytest.mark.parametrize("raw, message", [
    (b"[]", "body must be a JSON object"),
    (b"{", "body is not valid JSON"),
    (json.dumps({"type": "recv-sms", "sms": "x"}).encode(), "sms must be a list of SMS"),
])
def test_a_bad_body_is_a_400_and_changes_nothing(client, db, rented, raw, message):
    before = snapshot(db)
    answer = client.post("/sms/ejoin", raw=raw, headers=AUTH)
    assert (answer.status, answer.json) == (400, {"status": "ERROR", "error": message})
    assert snapshot(db) == before and db.rows("SELECT id FROM sms") == []


def test_port_states_feed_presence(client, db, caplog):
    add_numbers(db, START, (A, "germany", "telekom", "gw1:1.01"),
                (B, "germany", "telekom", "gw1:1.02"))
    sample = json.loads((EXAMPLES / "gateways" / "ejoin-dev-status.json").read_text())
    answer = client.post("/sms/ejoin?box=gw1", sample, headers=AUTH)
    assert answer.json == {"status": "SUCCESS", "ports": 2, "online": 1}
    sims = {r["number"]: (r["offline"], r["seen_by"]) for r in db.rows(
        "SELECT number, offline, seen_by FROM numbers")}
    # Port 1.02 has no SIM: its number is not online (a port that never had it online does
    # not start watching it).
    assert sims == {A: (0, "ejoin:gw1:1.01"), B: (0, None)}
    # A port-status push when port 1.01 loses its network:
    lost = {"type": "port-status", "port": "1.01", "st": "6 Register failed"}
    assert client.post("/sms/ejoin?box=gw1", lost, headers=AUTH).json["online"] == 0
    assert db.row("SELECT offline FROM numbers WHERE number = ?", (A,))["offline"] == 1


def test_port_states_are_ignored_with_presence_off(settings, clock, connections, db):
    import dataclasses

    from rentbox.config import Rules
    from rentbox.web import wsgi

    from conftest import WsgiClient

    add_numbers(db, START, (A, "germany", "telekom", "1.01"))
    off = dataclasses.replace(settings, rules=Rules(presence=False))
    client = WsgiClient(wsgi(off, clock, connections))
    before = snapshot(db)
    answer = client.post("/sms/ejoin", {"type": "port-status", "port": "1.01", "st": "3"},
                         headers=AUTH)
    assert answer.json == {"status": "SUCCESS", "ignored": True}
    assert snapshot(db) == before


def test_a_sim_number_other_than_the_pool_is_shown_in_status(client, clock, db):
    add_numbers(db, START, (A, "germany", "telekom", "1.01"))
    state = {"type": "port-status", "port": "1.01", "st": "3", "sn": "+4915111111111"}
    client.post("/sms/ejoin", state, headers=AUTH)
    [warning] = [w for w in reports.status(db, clock.now())["warnings"] if "port 1.01" in w]
    assert warning == ("a gateway reports other numbers than the pool on its ports (port 1.01: "
                       f"+4915111111111 reported, +{A} in the pool): SMS there go to the "
                       "pool's number; correct the pool CSV or the box")
    client.post("/sms/ejoin", {**state, "sn": "015123456789"}, headers=AUTH)  # national: agrees
    assert not [w for w in reports.status(db, clock.now())["warnings"] if "port 1.01" in w]


# ---- a real server ---------------------------------------------------------------------


def test_a_real_server_pushes_each_sms_of_a_repeated_push_once(start_server, db, onlinesim,
                                                                caplog):
    add_numbers(db, START, (A, "germany", "telekom", "gw1:1.01"),
                (B, "germany", "telekom", "gw1:1.02"))
    server = start_server(push_url=onlinesim.url)
    rentals = [rent_number(server), rent_number(server)]
    body = json.loads(json.dumps(SAMPLE))
    for sms_row in body["sms"]:
        sms_row[2] = int(time.time())  # received now, after the rentals began
    url = f"{server.url}/sms/ejoin?box=gw1&token={GATEWAY_TOKEN}"
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):  # the box did not see the first answer and sends the push again
            assert http_post(url, body).json["smsIds"] == [1, 2]
        onlinesim.wait_for(2)
        assert wait_until(lambda: db.row("SELECT count(*) AS n FROM sms WHERE push_state = "
                                         "'delivered'")["n"] == 2)
    assert sorted((b["phone"], b["phoneFrom"], b["text"]) for b in onlinesim.bodies()) == [
        (A, "Google", "G-123456 is your Google verification code."),
        (B, "+79990001122", "Ваш код: 5520. Никому его не сообщайте.")]
    assert len(onlinesim.requests) == 2 and len(rentals) == 2
    access = [r.getMessage() for r in caplog.records if r.name == "rentbox.access"]
    assert [line.split()[:3] for line in access if "/sms/ejoin" in line] == [
        ["POST", "/sms/ejoin", "200"]] * 2
    assert GATEWAY_TOKEN not in caplog.text and "token=" not in caplog.text
