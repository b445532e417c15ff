"""POST /presence and SMSGate's presence events, in process and on a real server."""

import dataclasses
import gzip
import json

import pytest

from rentbox.config import Rules
from rentbox.web import wsgi

from conftest import (API_KEY, GATEWAY_TOKEN, START, WsgiClient, add_numbers, http_post,
                      snapshot, wait_until)
from test_web_sms import smsgate_post

AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
A, B = "4915123456789", "4917612345678"


@pytest.fixture
def pool_of_two(db):
    add_numbers(db, START, (A, "germany", "telekom", "1.01"), (B, "germany", "vodafone", "1.02"))
    return db


def services(client) -> int:
    answer = client.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY}).json
    return sum(c["operatorMap"]["any"]["rent"] for c in answer["countryList"])


def test_a_report_is_answered_with_what_to_keep_and_what_is_unknown(client, pool_of_two):
    rented = client.post("/getNumberRent", {"action": "GET_NUMBER", "key": API_KEY,
                                            "service": "rent", "sum": 400}).json
    assert rented["number"] == int(A)
    answer = client.post("/presence", {"gateway": "box-1", "numbers": [int(A), "+1 202 555 0100"],
                                       "ports": ["1.02", "9.99"]}, headers=AUTH)
    assert (answer.status, answer.json) == (200, {
        "status": "SUCCESS", "online": 2, "keep": [A], "missing": [],
        "unknown": ["+1 202 555 0100", "9.99"], "ambiguous": []})
    answer = client.post("/presence", {"gateway": "box-1", "ports": ["1.02"]}, headers=AUTH)
    assert answer.json["missing"] == [A] and answer.json["keep"] == []
    assert services(client) == 1
    # A heartbeat: the gateway's name only.
    assert client.post("/presence", {"gateway": "box-1"}, headers=AUTH).json["online"] == 1


def test_a_gzipped_report_of_thousands_of_numbers_fits(client, db):
    numbers = [f"+49151{n:08d}" for n in range(5000)]
    raw = gzip.compress(json.dumps({"gateway": "bank", "numbers": numbers}).encode())
    answer = client.post("/presence", raw=raw, headers={**AUTH, "Content-Encoding": "gzip"})
    assert answer.status == 200 and len(answer.json["unknown"]) == 5000


@pytest.mark.parametrize("body, message", [
    (b"[1]", "body must be a JSON object"),
    ({"numbers": [A]}, "gateway must be"),
    ({"gateway": "box 1\u0000", "numbers": [A]}, "gateway must be"),
    ({"gateway": "box-1", "numbers": A}, "numbers must be a list"),
    ({"gateway": "box-1", "ports": [1.5]}, "each item of ports must be a string"),
    ({"gateway": "box-1", "numbers": [{"n": 1}]}, "each item of numbers must be a string"),
    ({"gateway": "box-1", "numbers": ["1" * 65]}, "each item of numbers must be a string"),
    ({"gateway": "box-1", "ports": ["1"] * 10_001}, "ports lists more than 10000 items"),
])
def test_a_malformed_report_is_a_400_and_changes_nothing(client, pool_of_two, body, message):
    client.post("/presence", {"gateway": "box-1", "ports": ["1.01"]}, headers=AUTH)
    before = snapshot(pool_of_two)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post("/presence", raw=raw, headers=AUTH)
    assert answer.status == 400, answer.json
    assert answer.json["status"] == "ERROR" and answer.json["error"].startswith(message)
    assert snapshot(pool_of_two) == before


def test_reports_need_the_gateway_token(client, pool_of_two):
    before = snapshot(pool_of_two)
    for headers in ({}, {"Authorization": f"Bearer {API_KEY}"}):
        answer = client.post("/presence", {"gateway": "box-1", "ports": ["1.01"]},
                             headers=headers)
        assert (answer.status, answer.json["error"]) == (401, "BAD_TOKEN")
    assert snapshot(pool_of_two) == before


def test_with_presence_off_a_report_is_refused(settings, clock, connections, pool_of_two):
    off = dataclasses.replace(settings, rules=Rules(presence=False))
    client = WsgiClient(wsgi(off, clock, connections))
    answer = client.post("/presence", {"gateway": "box-1", "ports": ["1.01"]}, headers=AUTH)
    assert answer.status == 409 and "presence is off" in answer.json["error"]
    ping = smsgate_post(client, clock, {"deviceId": "1", "event": "system:ping", "id": "p",
                                        "payload": {"health": {"status": "pass"}}})
    assert ping.json == {"status": "SUCCESS", "ignored": True}


def test_smsgate_ping_and_app_started(client, clock, db):
    add_numbers(db, START, (A, "germany", "o2", "dev1:1"), (B, "germany", "o2", "dev1:2"))
    ping = {"deviceId": "dev1", "event": "system:ping", "id": "p1", "webhookId": "w",
            "payload": {"health": {"status": "pass", "checks": {}}}}
    assert smsgate_post(client, clock, ping).json["online"] == 2
    started = {"deviceId": "dev1", "event": "app:started", "id": "s1", "webhookId": "w",
               "payload": {"simCards": [{"simNumber": 2, "phoneNumber": "+" + B},
                                        {"simNumber": 3, "phoneNumber": None}]}}
    answer = smsgate_post(client, clock, started)
    assert answer.json == {"status": "SUCCESS", "online": 1, "keep": [], "missing": [],
                           "unknown": ["dev1:3"], "ambiguous": []}
    assert services(client) == 1
    bad = dict(started, payload={"simCards": [{"phoneNumber": "+" + B}]})
    answer = smsgate_post(client, clock, bad)
    assert answer.status == 400 and "simNumber" in answer.json["error"]
    no_device = {k: v for k, v in ping.items() if k != "deviceId"}
    assert smsgate_post(client, clock, no_device).status == 400


def test_a_real_server_follows_a_gateway_going_silent_and_coming_back(start_server, db):
    """Presence window 1 s, housekeeping every 0.2 s: GET_SERVICES falls to 0 within an
    interval of the window ending, no number is issued while offline, and it rises
    again at the gateway's next heartbeat."""
    add_numbers(db, START, (A, "germany", "telekom", "1.01"), (B, "germany", "vodafone", "1.02"))
    server = start_server(rules=Rules(presence_s=1.0), housekeeping_s=0.2)

    def call(path, body, headers=None):
        return http_post(server.url + path, body, headers=headers).json

    def counted():
        answer = call("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
        return sum(c["operatorMap"]["any"]["rent"] for c in answer["countryList"])

    assert counted() == 2  # nothing reported yet: offered as before
    assert call("/presence", {"gateway": "box-1", "ports": ["1.01", "1.02"]}, AUTH)["online"] == 2
    assert counted() == 2
    # Silence: the housekeeping pass turns both offline once the window ends.
    assert wait_until(lambda: db.execute("SELECT count(*) FROM numbers WHERE offline = 1"
                                       ).fetchone()[0] == 2)
    assert counted() == 0
    get_number = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}
    assert call("/getNumberRent", get_number) == {"status": "NO_NUMBERS"}
    # The gateway is back: its heartbeat restores its previous list.
    assert call("/presence", {"gateway": "box-1"}, AUTH)["online"] == 2
    assert counted() == 2
    assert call("/getNumberRent", get_number)["status"] == "SUCCESS"
    kinds = [r["kind"] for r in db.rows("SELECT kind FROM events WHERE kind LIKE 'sim_%'"
                                        " ORDER BY id")]
    assert kinds == ["sim_watched"] * 2 + ["sim_offline"] * 2 + ["sim_online"] * 2


# ---- a box's report is the authority for its ports (issue 21, items 6 and 10) ------------

# An Ejoin/Skyline `dev-status` push as the box sends it to its status URL: the header of the
# "Dev-Status Message (pushed by device)" and the port fields (port, sim, seq, st, bal, opr,
# sn, imei, active, imsi, iccid, inserted, slot_active, sig) and status codes (0 "No SIM
# card", 3 "Registered") of ZMAWline/incomingsms .claude/skills/SkyLine-API/
# skyline_api_reference.md (Skyline HTTP API 2.4.0). With the status URL's default
# `all_sims=0` a 4-slot box lists only each port's active card: 1.02 to 1.04 are not listed.
# The numbers, IMSIs and ICCIDs are examples.
EJOIN_DEV_STATUS = {
    "type": "dev-status", "seq": 1, "expires": 180, "mac": "00-30-f1-01-02-03",
    "ip": "192.168.1.67", "max-ports": 2, "max-slots": 4,
    "status": [
        {"port": "1.01", "sim": "", "seq": 18566, "st": "3 Registered", "bal": "0.00",
         "opr": "26201 Telekom.de", "sn": "+4915123456789", "imei": "862032045299211",
         "active": 1, "imsi": "262011234567890", "iccid": "89490200001234567890",
         "inserted": 1, "slot_active": 1, "sig": 23},
        {"port": "2.01", "sim": "", "seq": 2124, "st": "0 No SIM card", "imei": "862032045299252",
         "active": 1, "inserted": 0, "slot_active": 1, "sig": 0},
    ]}
C, D = "4915211111111", "4915222222222"


def test_a_real_server_takes_the_box_s_unreported_and_empty_ports_offline(start_server, db):
    add_numbers(db, START, (A, "germany", "telekom", "gw1:1.01"),
                (B, "germany", "telekom", "gw1:1.02"),    # slot 2 of port 1: not listed
                (C, "germany", "o2", "gw1:2.01"),          # port 2: "0 No SIM card"
                (D, "germany", "o2", "gw2:1.01"))          # another box, never reported
    server = start_server()

    def counted():
        answer = http_post(server.url + "/getServicesRent",
                           {"action": "GET_SERVICES", "key": API_KEY}).json
        return sum(c["operatorMap"]["any"]["rent"] for c in answer["countryList"])

    assert counted() == 4  # nothing reported yet: offered as before
    pushed = http_post(f"{server.url}/sms/ejoin?box=gw1&token={GATEWAY_TOKEN}",
                       EJOIN_DEV_STATUS).json
    assert pushed == {"status": "SUCCESS", "ports": 2, "online": 1}
    # Before: B and C stayed "not watched" and were offered (4 numbers), though the box has
    # no SIM in port 2 and card 2 of port 1 is not the active one.
    assert counted() == 2
    sims = {r["number"]: (r["offline"], r["offline_reason"]) for r in db.rows(
        "SELECT number, offline, offline_reason FROM numbers")}
    assert sims == {A: (0, None), B: (1, "not reported"), C: (1, "not reported"),
                    D: (0, None)}
    # The box switches port 1 to its card 2: a port-status push for 1.02.
    switched = {"type": "port-status", "port": "1.02", "seq": 18570, "st": "3 Registered",
                "sn": "+4917612345678", "active": 1}
    http_post(f"{server.url}/sms/ejoin?box=gw1&token={GATEWAY_TOKEN}", switched)
    assert db.row("SELECT offline FROM numbers WHERE number = ?", (B,))["offline"] == 0


def test_a_presence_report_of_a_sim_bank_takes_its_other_numbers_offline(client, db):
    """`POST /presence` of a SIM-bank controller that lists the numbers it has in ports: the
    bank's other numbers (its box `bank1:`) are offline, not offered."""
    add_numbers(db, START, (A, "germany", "o2", "bank1:1"), (B, "germany", "o2", "bank1:2"),
                (C, "germany", "o2", "bank1:3"), (D, "germany", "o2", "gw9:1"))
    answer = client.post("/presence", {"gateway": "bank1", "numbers": [f"+{A}"]},
                         headers=AUTH)
    assert answer.json["online"] == 1
    assert services(client) == 2  # A, and D on no reporting gateway's ports
