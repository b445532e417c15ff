"""Dinstar's pushes (rentbox/gateways/dinstar.py): Push SMS, the box's clock, Push Register
Status as presence, the route, a real server.

The payloads are the box's own, from Dinstar's "GSM Gateway HTTP API" (v201910), section
"Push Event" (wiki.ultiroam.com/index.php/HTTP_API_-_Push_Event, which publishes the
manual), whose SMS push igor-podpalchenko/dinstar-push-gateway's README quotes too, and
whose register push ZodicSlanser/dinstar-client models
(src/main/java/io/github/zodicslanser/dinstar/push/RegisterEvent.java: `<NULL>` ICCID and
IMSI when down, `slot` on multi-SIM gateways); samples in examples/gateways/.
"""

import dataclasses
import datetime as dt
import json
import logging

import pytest

from rentbox import meta, operations
from rentbox.config import Rules
from rentbox.errors import InvalidInput
from rentbox.gateways import common, dinstar, notes
from rentbox.protocol import NumberRequest
from rentbox.web import wsgi

from conftest import (EXAMPLES, GATEWAY_TOKEN, START, WsgiClient, add_numbers, http_post,
                      rent_number, snapshot, wait_until)

SN = "dbd2-0325-0044-0088"
A, B = "79123456789", "79161234567"
AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
SAMPLE = json.loads((EXAMPLES / "gateways" / "dinstar-push-sms.json").read_text())
# The manual's Push SMS example, as the box sends it (Push Event, "Incoming sms").
MANUAL_PUSH = {"sn": "da00-0030-1901-2817", "sms": [
    {"incoming_sms_id": 1, "port": 1, "number": "6717", "smsc": "+8613800757511",
     "timestamp": "2016-07-12 15:46:18", "text": "test"}]}
# The manual's "SIM Register Status" examples: port 8 (slot 2) up, then down.
REGISTER_UP, REGISTER_DOWN = json.loads(
    (EXAMPLES / "gateways" / "dinstar-register.json").read_text())
MANUAL_SN = "xxxx-xxxx-xxxx-xxxx"
UTC = dt.timezone.utc
# When the sample's SMS arrive: 13:00 Moscow time, as its box stamps them.
SAMPLE_AT = dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def sms_row(**fields):
    return {"incoming_sms_id": 7, "port": 1, "number": "+79990001122", "smsc": "+79168999100",
            "timestamp": "2026-11-26 13:00:00", "text": "Код 1", **fields}


def stamp(at: dt.datetime) -> str:
    return at.astimezone(UTC).strftime(dinstar.TIME_FORMAT)


def test_the_sample_push():
    push = dinstar.parse_push(SAMPLE, dinstar.time_zone("Europe/Moscow"), SAMPLE_AT)
    first, second = push.rows
    assert (first.port, first.to, first.sender, first.text, first.source_id, first.source) == (
        f"{SN}:1", None, "+79990001122", "Ваш код: 7781", f"{SN}:41", "dinstar")
    assert first.received_at == dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)  # 13:00 MSK
    assert (second.port, second.sender, second.source_id) == (f"{SN}:2", "Telegram", f"{SN}:42")
    assert (push.serial, push.clock_offset_s, push.ports) == (SN, 4.0, None)


@pytest.mark.parametrize("name, utc", [
    ("UTC", "13:00"), ("", "13:00"), ("Europe/Moscow", "10:00"), ("+03:00", "10:00"),
    ("UTC+3", "10:00"), ("-0530", "18:30"), ("Asia/Kolkata", "07:30"),
])
def test_timestamps_are_read_in_the_configured_time_zone(name, utc):
    row = dinstar.parse_row(sms_row(), SN, dinstar.time_zone(name))
    assert row.received_at == dt.datetime.fromisoformat(f"2026-11-26T{utc}+00:00")


@pytest.mark.parametrize("zone, text", [
    ("+03:00", "0001-01-01 00:00:00"), ("-05:00", "9999-12-31 23:59:59"),
    ("UTC", "0999-06-01 00:00:00"), ("UTC", "1999-12-31 23:59:59"),
])
def test_a_box_clock_out_of_range_dates_the_sms_on_arrival(zone, text, caplog):
    """A box with its clock unset: the SMS is kept and dated on arrival, never a 500 (the
    conversion to UTC overflows) and never a year that sorts wrongly as text."""
    [row] = dinstar.parse_push({"sn": SN, "sms": [sms_row(timestamp=text)]},
                               dinstar.time_zone(zone), SAMPLE_AT).rows
    assert row.received_at is None
    assert f"timestamp {text!r} is not YYYY-MM-DD HH:MM:SS of a year from 2000" in caplog.text


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
    ]}, UTC, dt.datetime(2026, 11, 26, 13, 0, tzinfo=UTC)).rows
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
    first, second = dinstar.parse_push({"sn": SN, "sms": [bad, sms_row()]}, UTC, START).rows
    assert isinstance(first, common.BadRow) and reason in first.reason
    assert second.text == "Код 1"


@pytest.mark.parametrize("body, message", [
    ({"sms": []}, "sn is required"),
    ({"sn": "a b", "sms": []}, "sn must be"),
    ({"sn": SN, "sms": {}}, "sms must be a list"),
    ({"register": []}, "sn is required"),
    ({"sn": SN, "register": {}}, "register must be a list"),
    ({"sn": SN, "register": ["up"]}, "a port state must be an object"),
    ({"sn": SN, "register": [{"port": 1, "status": "maybe"}]}, "status must be up or down"),
    ({"sn": SN, "register": [{"status": "up"}]}, "port must be a string"),
])
def test_a_push_of_the_wrong_shape_is_refused(body, message):
    with pytest.raises(InvalidInput, match=message):
        dinstar.parse_push(body, UTC, START)


def test_other_pushes_are_not_used():
    for body in ({"sn": SN, "sms_result": [{"port": 1}]}, {"sn": SN, "ussd": []}, {}):
        assert dinstar.parse_push(body, UTC, START) == dinstar.Push()


# ---- the box's clock (issue 21, item 8) ------------------------------------------------


def test_a_pushed_sms_far_from_rentbox_clock_is_dated_on_arrival():
    """A push leaves the box as the SMS arrives: a time minutes away is the box's clock
    (or RENTBOX_DINSTAR_TZ) being wrong, whichever way."""
    for off_s, dated in [(-299, True), (-301, False), (299, True), (301, False),
                         (-5 * 3600, False), (3 * 3600, False)]:
        body = {"sn": SN, "sms": [sms_row(timestamp=stamp(START + dt.timedelta(seconds=off_s)))]}
        push = dinstar.parse_push(body, UTC, START)
        assert push.clock_offset_s == off_s
        assert push.rows[0].received_at == (
            START + dt.timedelta(seconds=off_s) if dated else None), off_s


def test_a_box_five_hours_behind_has_its_sms_routed_and_the_setting_named_once(client, db,
                                                                               clock, caplog):
    """The manual's push from a box at UTC-5 (New York) with RENTBOX_DINSTAR_TZ left at
    UTC: its times read as 5 hours ago. Before, its SMS was kept unrouted as "received
    before the rental began"; now it reaches the rental, and the log says once which
    setting is wrong."""
    add_numbers(db, START, (A, "russia", "megafon", "da00-0030-1901-2817:1"))
    rental = operations.open_operation(db, clock, NumberRequest(40000), Rules())
    clock.advance(60)
    new_york = clock.now() - dt.timedelta(hours=5)
    with caplog.at_level(logging.INFO, logger="rentbox"):
        for n in (1, 2):
            body = json.loads(json.dumps(MANUAL_PUSH))
            body["sms"][0] |= {"incoming_sms_id": n, "timestamp": stamp(new_york)}
            answer = client.post("/sms/dinstar", body, headers=AUTH)
            assert answer.json["accepted"] == 1
            clock.advance(30)
            new_york += dt.timedelta(seconds=30)
    assert db.rows("SELECT operation_id, push_state, received_at FROM sms ORDER BY id") == [
        {"operation_id": rental.activation_id, "push_state": "pending",
         "received_at": "2026-11-01T12:01:00.000000Z"},
        {"operation_id": rental.activation_id, "push_state": "pending",
         "received_at": "2026-11-01T12:01:30.000000Z"}]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "dinstar box da00-0030-1901-2817 stamps its SMS 5 h 00 min behind rentbox's clock, "
        "read in RENTBOX_DINSTAR_TZ=UTC: its SMS are dated on arrival instead; set "
        "RENTBOX_DINSTAR_TZ to the box's time zone (e.g. Europe/Moscow or -05:00) or correct "
        "the box's clock"]
    assert dinstar.known_clock_offset(db, "da00-0030-1901-2817") == -5 * 3600


def test_a_box_whose_clock_agrees_again_is_said_so_once(client, db, clock, caplog):
    add_numbers(db, START, (A, "russia", "megafon", f"{SN}:1"))
    behind = stamp(clock.now() - dt.timedelta(hours=5))
    client.post("/sms/dinstar", {"sn": SN, "sms": [sms_row(timestamp=behind)]}, headers=AUTH)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rentbox.gateways"):
        for n in (8, 9):
            client.post("/sms/dinstar", {"sn": SN, "sms": [sms_row(
                incoming_sms_id=n, timestamp=stamp(clock.now()))]}, headers=AUTH)
    assert [r.getMessage() for r in caplog.records] == [
        f"dinstar box {SN}: its clock agrees with rentbox's again"]
    assert dinstar.clocks_off(db) == {}
    assert db.rows("SELECT received_at FROM sms WHERE id > 1") == [
        {"received_at": "2026-11-01T12:00:00.000000Z"}] * 2


def test_held_sms_keep_their_time_corrected_by_the_offset_the_pushes_showed():
    """The catch-up poll's SMS may be old by design: their time is kept, shifted by the
    box's offset as its pushes measured it, so an SMS held across a rental's start is
    still known as older than the rental."""
    answer = {"error_code": 200, "sn": SN, "sms": [
        sms_row(incoming_sms_id=5, timestamp="2026-11-01 06:40:00"),   # 20 min ago at UTC-5
        sms_row(incoming_sms_id=6, timestamp="2026-11-01 14:00:00"),   # 2 h ahead: unmeasured
        "junk"], "read": 3, "unread": 0}
    serial, rows, last = dinstar.parse_incoming(answer, UTC, START, -5 * 3600)
    assert (serial, last) == (SN, 6)
    assert rows[0].received_at == START - dt.timedelta(minutes=20)
    assert rows[1].received_at is None and isinstance(rows[2], common.BadRow)
    _, [row], _ = dinstar.parse_incoming(
        {"sn": SN, "sms": [sms_row(timestamp="2026-11-01 11:40:00")]}, UTC, START, None)
    assert row.received_at == START - dt.timedelta(minutes=20)  # a right clock: kept


# ---- Push Register Status (issue 21, item 7) -------------------------------------------


def test_the_manual_register_pushes_are_port_states():
    up = dinstar.parse_push(REGISTER_UP, UTC, START)
    down = dinstar.parse_push(REGISTER_DOWN, UTC, START)
    gateway = f"dinstar:{MANUAL_SN}:8"
    assert up.ports == [common.PortState(dinstar.presence.Report(
        gateway, ports=(f"{MANUAL_SN}:8",)), f"{MANUAL_SN}:8", "13714637674")]
    assert down.ports == [common.PortState(dinstar.presence.Report(gateway, ports=()),
                                           f"{MANUAL_SN}:8", None)]
    assert up.rows is None and up.serial == MANUAL_SN


def test_events_of_one_port_in_one_push_are_taken_in_the_box_order():
    both = {"sn": SN, "register": [
        {**REGISTER_UP["register"][0], "sequence": 4},
        {**REGISTER_DOWN["register"][0], "sequence": 3}]}
    states = dinstar.parse_push(both, UTC, START).ports
    assert [bool(s.report.ports) for s in states] == [False, True]  # down (3), then up (4)


@pytest.fixture
def register_pool(db):
    add_numbers(db, START, ("+8613714637674", "china", "cmcc", f"{MANUAL_SN}:8"),
                ("+8613714637675", "china", "cmcc", f"{MANUAL_SN}:9"))
    return db


def sims(db):
    return {r["number"]: (r["offline"], r["seen_by"], r["offline_reason"]) for r in db.rows(
        "SELECT number, offline, seen_by, offline_reason FROM numbers ORDER BY number")}


def test_register_pushes_take_a_sim_online_and_offline(client, register_pool, caplog):
    with caplog.at_level(logging.WARNING):
        up = client.post("/sms/dinstar", REGISTER_UP, headers=AUTH)
    assert (up.status, up.json) == (200, {"status": "SUCCESS", "ports": 1, "online": 1})
    gateway = f"dinstar:{MANUAL_SN}:8"
    # Port 9 of the same box, which the box has not reported: offline (issue 21, item 10).
    assert sims(register_pool) == {"8613714637674": (0, gateway, None),
                                   "8613714637675": (1, gateway, "not reported")}
    down = client.post("/sms/dinstar", REGISTER_DOWN, headers=AUTH)
    assert down.json == {"status": "SUCCESS", "ports": 1, "online": 0}
    assert sims(register_pool)["8613714637674"] == (1, gateway, "dropped")
    client.post("/sms/dinstar", REGISTER_UP, headers=AUTH)
    assert sims(register_pool)["8613714637674"] == (0, gateway, None)
    # Register pushes alone expire: the log says once how to keep them current.
    told = [r.getMessage() for r in caplog.records if "RENTBOX_POLL_BOXES" in r.getMessage()]
    assert told == [
        f"dinstar box {MANUAL_SN} pushes its ports' register states only when they change, "
        "and each counts for RENTBOX_PRESENCE_S like any report: list the box in "
        "RENTBOX_POLL_BOXES so that rentbox reads its ports' states every "
        "RENTBOX_POLL_EVERY_S, or its SIMs go offline when that window ends"]


def test_a_register_number_other_than_the_pool_is_noted(client, db, caplog):
    add_numbers(db, START, ("+8613900000001", "china", "cmcc", f"{MANUAL_SN}:8"))
    client.post("/sms/dinstar", REGISTER_UP, headers=AUTH)
    assert notes.port_mismatches(db)[f"{MANUAL_SN}:8"]["reported"] == "13714637674"


def test_register_pushes_are_ignored_with_presence_off(settings, clock, connections,
                                                       register_pool):
    off = WsgiClient(wsgi(dataclasses.replace(settings, rules=Rules(presence=False)), clock,
                          connections))
    before = snapshot(register_pool)
    answer = off.post("/sms/dinstar", REGISTER_UP, headers=AUTH)
    assert answer.json == {"status": "SUCCESS", "ignored": True}
    assert snapshot(register_pool) == before


def test_a_bad_register_push_changes_nothing(client, register_pool):
    before = snapshot(register_pool)
    bad = {"sn": MANUAL_SN, "register": [REGISTER_UP["register"][0], {"port": 9}]}
    answer = client.post("/sms/dinstar", bad, headers=AUTH)
    assert (answer.status, answer.json) == (400, {"status": "ERROR",
                                                  "error": "status must be up or down"})
    assert snapshot(register_pool) == before


def test_a_real_server_reads_register_pushes_as_presence(start_server, register_pool):
    from test_openapi import check_answer

    server = start_server()
    for body, online in ((REGISTER_UP, 1), (REGISTER_DOWN, 0)):
        answer = http_post(f"{server.url}/sms/dinstar?token={GATEWAY_TOKEN}", body)
        check_answer("POST", "/sms/dinstar", answer)
        assert answer.json == {"status": "SUCCESS", "ports": 1, "online": online}
    assert sims(register_pool)["8613714637674"][:2] == (1, f"dinstar:{MANUAL_SN}:8")


# ---- the route -------------------------------------------------------------------------


@pytest.fixture
def pool(db):
    add_numbers(db, START, (A, "russia", "megafon", f"{SN}:1"), (B, "russia", "mts", f"{SN}:2"))
    return db


def test_a_push_with_one_bad_row_stores_the_others_once(client, db, clock, pool, caplog):
    clock.current = dt.datetime(2026, 11, 26, 13, 0, tzinfo=UTC)  # the box's clock agrees
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
    clock.current = SAMPLE_AT
    moscow = WsgiClient(wsgi(dataclasses.replace(settings, dinstar_tz="Europe/Moscow"), clock,
                             connections))
    moscow.post("/sms/dinstar", {"sn": SN, "sms": [sms_row()]}, headers=AUTH)
    assert db.row("SELECT received_at FROM sms")["received_at"] == "2026-11-26T10:00:00.000000Z"
    assert dinstar.clocks_off(db) == {}


def test_a_bad_token_or_body_changes_nothing(client, db, pool):
    before = snapshot(db)
    assert client.post("/sms/dinstar?token=nope", SAMPLE).status == 401
    answer = client.post("/sms/dinstar", {"sn": SN, "sms": "x"}, headers=AUTH)
    assert (answer.status, answer.json) == (400, {"status": "ERROR",
                                                  "error": "sms must be a list of SMS"})
    assert snapshot(db) == before and db.rows("SELECT id FROM sms") == []
    assert meta.get(db, dinstar.CLOCK_OFF) is None


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


def test_a_real_server_pushes_the_sms_of_a_box_five_hours_behind(start_server, db, onlinesim):
    add_numbers(db, START, (A, "russia", "megafon", "da00-0030-1901-2817:1"))
    server = start_server(push_url=onlinesim.url)
    rent_number(server)
    body = json.loads(json.dumps(MANUAL_PUSH))
    body["sms"][0]["timestamp"] = stamp(dt.datetime.now(UTC) - dt.timedelta(hours=5))
    assert http_post(f"{server.url}/sms/dinstar?token={GATEWAY_TOKEN}", body).json[
        "accepted"] == 1
    [pushed] = onlinesim.wait_for(1)
    assert json.loads(pushed["body"])["text"] == "test"


def test_an_sms_on_a_port_the_pool_lacks_is_logged_and_listed_with_its_port(client, db, pool,
                                                                            db_path, caplog):
    from typer.testing import CliRunner

    from rentbox.cli import app

    with caplog.at_level(logging.WARNING, logger="rentbox.sms"):
        client.post("/sms/dinstar", {"sn": SN, "sms": [sms_row(port=7)]}, headers=AUTH)
    assert [r.getMessage() for r in caplog.records if r.name == "rentbox.sms"] == [
        f"SMS on gateway port {SN}:7: no pool number has this port, so it is kept unrouted; "
        "import the SIM's number with this port"]
    listed = CliRunner().invoke(app, ["sms", "list", "--db", str(db_path)])
    assert f"port {SN}:7" in listed.stdout and "unrouted" in listed.stdout
