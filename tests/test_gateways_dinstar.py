"""Dinstar's Push SMS (rentbox/gateways/dinstar.py): parsing, time zones, the route, a server."""

import dataclasses
import datetime as dt
import json
import logging

import pytest

from rentbox.errors import InvalidInput
from rentbox.gateways import common, dinstar
from rentbox.web import wsgi

from conftest import (EXAMPLES, GATEWAY_TOKEN, START, WsgiClient, add_numbers, http_post,
                      rent_number, snapshot, wait_until)

SN = "dbd2-0325-0044-0088"
A, B = "79123456789", "79161234567"
AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
SAMPLE = json.loads((EXAMPLES / "gateways" / "dinstar-push-sms.json").read_text())
UTC = dt.timezone.utc


def sms_row(**fields):
    return {"incoming_sms_id": 7, "port": 1, "number": "+79990001122", "smsc": "+79168999100",
            "timestamp": "2026-11-26 13:00:00", "text": "Код 1", **fields}


def test_the_sample_push():
    first, second = dinstar.parse_push(SAMPLE, dinstar.time_zone("Europe/Moscow"))
    assert (first.port, first.to, first.sender, first.text, first.source_id, first.source) == (
        f"{SN}:1", None, "+79990001122", "Ваш код: 7781", f"{SN}:41", "dinstar")
    assert first.received_at == dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # 13:00 MSK
    assert (second.port, second.sender, second.source_id) == (f"{SN}:2", "Telegram", f"{SN}:42")


@pytest.mark.parametrize("name, utc", [
    ("UTC", "13:00"), ("", "13:00"), ("Europe/Moscow", "10:00"), ("+03:00", "10:00"),
    ("UTC+3", "10:00"), ("-0530", "18:30"), ("Asia/Kolkata", "07:30"),
])
def test_timestamps_are_read_in_the_configured_time_zone(name, utc):
    [row] = dinstar.parse_push({"sn": SN, "sms": [sms_row()]}, dinstar.time_zone(name))
    assert row.received_at == dt.datetime.fromisoformat(f"2026-11-26T{utc}+00:00")


@pytest.mark.parametrize("zone, stamp", [
    ("+03:00", "0001-01-01 00:00:00"), ("-05:00", "9999-12-31 23:59:59"),
    ("UTC", "0999-06-01 00:00:00"), ("UTC", "1999-12-31 23:59:59"),
])
def test_a_box_clock_out_of_range_dates_the_sms_on_arrival(zone, stamp, caplog):
    """A box with its clock unset: the SMS is kept and dated on arrival, never a 500 (the
    conversion to UTC overflows) and never a year that sorts wrongly as text."""
    [row] = dinstar.parse_push({"sn": SN, "sms": [sms_row(timestamp=stamp)]},
                               dinstar.time_zone(zone))
    assert row.received_at is None
    assert f"timestamp {stamp!r} is not YYYY-MM-DD HH:MM:SS of a year from 2000" in caplog.text


@pytest.mark.parametrize("name", ["Mars/Olympus", "+25:00", "3 hours", "../../etc/passwd"])
def test_an_unknown_time_zone_is_refused(name):
    with pytest.raises(InvalidInput, match="RENTBOX_DINSTAR_TZ"):
        dinstar.time_zone(name)


def test_a_server_with_an_unknown_time_zone_does_not_start(settings, clock, connections):
    with pytest.raises(InvalidInput, match="is not a time zone"):
        wsgi(dataclasses.replace(settings, dinstar_tz="Mars/Olympus"), clock, connections)


def test_variants_of_a_row(caplog):
    rows = dinstar.parse_push({"sn": SN, "sms": [
        sms_row(port="3", incoming_sms_id="12", imsi="250011234567890"),
        sms_row(timestamp="yesterday"),       # dated on arrival, not lost
        sms_row(timestamp=None),
        sms_row(incoming_sms_id=None),         # no id: known again by its content
        sms_row(number=12345),                 # a short number sent as an integer
    ]}, UTC)
    assert [(r.port, r.source_id, r.received_at is None) for r in rows[:3]] == [
        (f"{SN}:3", f"{SN}:12", False), (f"{SN}:1", f"{SN}:7", True), (f"{SN}:1", f"{SN}:7", True)]
    assert rows[3].source_id.startswith("h:") and rows[4].sender == "12345"
    assert "timestamp 'yesterday' is not YYYY-MM-DD HH:MM:SS" in caplog.text


@pytest.mark.parametrize("bad, reason", [
    ("x", "an SMS must be an object"),
    (sms_row(number=""), "number (the sender) is required"),
    (sms_row(text=None), "text is required"),
    (sms_row(port=None), "port must be a string"),
    (sms_row(port=[1]), "port must be a string"),
    (sms_row(incoming_sms_id=[1]), "incoming_sms_id must be"),
])
def test_a_bad_row_is_a_bad_row_not_a_bad_push(bad, reason):
    first, second = dinstar.parse_push({"sn": SN, "sms": [bad, sms_row()]}, UTC)
    assert isinstance(first, common.BadRow) and reason in first.reason
    assert second.text == "Код 1"


@pytest.mark.parametrize("body, message", [
    ({"sms": []}, "sn is required"),
    ({"sn": "a b", "sms": []}, "sn must be"),
    ({"sn": SN, "sms": {}}, "sms must be a list"),
])
def test_a_push_of_the_wrong_shape_is_refused(body, message):
    with pytest.raises(InvalidInput, match=message):
        dinstar.parse_push(body, UTC)


def test_other_pushes_are_not_sms():
    assert dinstar.parse_push({"sn": SN, "sms_result": [{"port": 1}]}, UTC) is None


# ---- the route -------------------------------------------------------------------------


@pytest.fixture
def pool(db):
    add_numbers(db, START, (A, "russia", "megafon", f"{SN}:1"), (B, "russia", "mts", f"{SN}:2"))
    return db


def test_a_push_with_one_bad_row_stores_the_others_once(client, db, pool, caplog):
    body = {"sn": SN, "sms": [sms_row(incoming_sms_id=1), sms_row(incoming_sms_id=2, text=5),
                              sms_row(incoming_sms_id=3, port=2, text="second")]}
    with caplog.at_level(logging.WARNING, logger="rentbox.gateways"):
        answer = client.post("/sms/dinstar", body, headers=AUTH)
    assert answer.json == {"status": "SUCCESS", "accepted": 2, "duplicates": 0, "skipped": 1,
                           "ignored": 0, "smsIds": [1, 2]}
    assert [r.getMessage() for r in caplog.records] == [
        "dinstar push: SMS 2 of 3 skipped: text is required and must be a string"]
    assert client.post("/sms/dinstar", body, headers=AUTH).json["duplicates"] == 2
    assert db.rows("SELECT number, port, text, received_at FROM sms ORDER BY id") == [
        {"number": A, "port": f"{SN}:1", "text": "Код 1",
         "received_at": "2026-11-26T13:00:00.000000Z"},
        {"number": B, "port": f"{SN}:2", "text": "second",
         "received_at": "2026-11-26T13:00:00.000000Z"}]


def test_other_pushes_are_acknowledged_and_ignored(client, db, pool):
    before = snapshot(db)
    answer = client.post(f"/sms/dinstar?token={GATEWAY_TOKEN}",
                         {"sn": SN, "ussd": [{"port": 1, "text": "Balance 10"}]})
    assert answer.json == {"status": "SUCCESS", "ignored": True}
    assert snapshot(db) == before


def test_the_time_zone_setting_reaches_the_route(settings, clock, connections, db, pool):
    moscow = WsgiClient(wsgi(dataclasses.replace(settings, dinstar_tz="Europe/Moscow"), clock,
                             connections))
    moscow.post("/sms/dinstar", {"sn": SN, "sms": [sms_row()]}, headers=AUTH)
    assert db.row("SELECT received_at FROM sms")["received_at"] == "2026-11-26T10:00:00.000000Z"


def test_a_bad_token_or_body_changes_nothing(client, db, pool):
    before = snapshot(db)
    assert client.post("/sms/dinstar?token=nope", SAMPLE).status == 401
    answer = client.post("/sms/dinstar", {"sn": SN, "sms": "x"}, headers=AUTH)
    assert (answer.status, answer.json) == (400, {"status": "ERROR",
                                                  "error": "sms must be a list of SMS"})
    assert snapshot(db) == before and db.rows("SELECT id FROM sms") == []


def test_a_real_server_pushes_each_sms_once(start_server, db, pool, onlinesim):
    server = start_server(push_url=onlinesim.url)
    rent_number(server), rent_number(server)
    now = dt.datetime.now(UTC).strftime(dinstar.TIME_FORMAT)  # the box's clock, in UTC
    body = json.loads(json.dumps(SAMPLE))
    for row in body["sms"]:
        row["timestamp"] = now
    for _ in range(2):  # a push the box sends again
        answer = http_post(f"{server.url}/sms/dinstar?token={GATEWAY_TOKEN}", body).json
        assert answer["smsIds"] == [1, 2]
    onlinesim.wait_for(2)
    assert wait_until(lambda: db.row("SELECT count(*) AS n FROM sms WHERE push_state = "
                                     "'delivered'")["n"] == 2)
    assert sorted((b["phone"], b["phoneFrom"], b["text"]) for b in onlinesim.bodies()) == [
        (A, "+79990001122", "Ваш код: 7781"), (B, "Telegram", "Telegram code: 90210")]
    assert len(onlinesim.requests) == 2


def test_an_sms_on_a_port_the_pool_lacks_is_logged_and_listed_with_its_port(client, db, pool,
                                                                            db_path, caplog):
    from typer.testing import CliRunner

    from rentbox.cli import app

    with caplog.at_level(logging.WARNING, logger="rentbox.sms"):
        client.post("/sms/dinstar", {"sn": SN, "sms": [sms_row(port=7)]}, headers=AUTH)
    assert [r.getMessage() for r in caplog.records] == [
        f"SMS on gateway port {SN}:7: no pool number has this port, so it is kept unrouted; "
        "import the SIM's number with this port"]
    listed = CliRunner().invoke(app, ["sms", "list", "--db", str(db_path)])
    assert f"port {SN}:7" in listed.stdout and "unrouted" in listed.stdout
