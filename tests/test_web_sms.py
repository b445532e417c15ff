"""The SMS intakes of web.py: POST /sms and POST /sms/smsgate."""

import dataclasses
import hashlib
import hmac
import json

import pytest

from rentbox.web import wsgi

from conftest import (API_KEY, EXAMPLES, GATEWAY_TOKEN, SMSGATE_KEY, START, WsgiClient,
                      add_numbers, snapshot)
from test_gateways_ejoin import FORWARD_BODY, FORWARD_HEADERS, forward_url

GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}
AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}


@pytest.fixture
def rented(client, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom", "dev1:1"))
    return client.post("/getNumberRent", GET_NUMBER).json


def test_json_intake_stores_routes_and_wakes_the_pusher(settings, clock, connections, db,
                                                        rented):
    woken = []
    client = WsgiClient(wsgi(settings, clock, connections, on_sms=lambda: woken.append(1)))
    body = {"to": "+49 151 23456789", "from": "WhatsApp", "text": "Код: 123-456 🔐", "id": "a1"}
    answer = client.post("/sms", body, headers=AUTH)
    assert (answer.status, answer.json) == (200, {"status": "SUCCESS", "smsId": 1})
    assert woken == [1]
    again = client.post("/sms", body, headers=AUTH)
    assert again.json == {"status": "SUCCESS", "smsId": 1}
    assert woken == [1]  # a redelivery is not pushed twice
    row = db.row("SELECT operation_id, text, push_state FROM sms")
    assert row == {"operation_id": rented["activationId"], "text": "Код: 123-456 🔐",
                   "push_state": "pending"}


@pytest.mark.parametrize("headers, status, error", [
    ({}, 401, "BAD_TOKEN"),
    ({"Authorization": "Bearer wrong"}, 401, "BAD_TOKEN"),
    ({"Authorization": f"Bearer {API_KEY}"}, 401, "BAD_TOKEN"),  # not the Onlinesim key
    ({"Authorization": f"Basic {GATEWAY_TOKEN}"}, 401, "BAD_TOKEN"),
])
def test_json_intake_needs_the_gateway_token(client, db, rented, headers, status, error):
    before = snapshot(db)
    answer = client.post("/sms", {"to": "4915123456789", "from": "a", "text": "b"},
                         headers=headers)
    assert (answer.status, answer.json) == (status, {"status": "ERROR", "error": error})
    assert snapshot(db) == before


def test_json_intake_is_off_without_a_token(settings, clock, connections, db):
    off = dataclasses.replace(settings, gateway_token=None, smsgate_key=None)
    client = WsgiClient(wsgi(off, clock, connections))
    answer = client.post("/sms", {"to": "4915123456789", "from": "a", "text": "b"},
                         headers=AUTH)
    assert answer.status == 503
    assert answer.json["error"] == "/sms is off: set RENTBOX_GATEWAY_TOKEN on the server to " \
                                   "turn it on"
    assert client.post("/sms/smsgate", {}).json["error"].startswith("/sms/smsgate is off")


@pytest.mark.parametrize("body, message", [
    (b"{", "body is not valid JSON"),
    ({"from": "a", "text": "b"}, "to is required: the receiving number"),
    ({"to": "12", "from": "a", "text": "b"}, "'12' is not a valid international number"),
    ({"to": "4915123456789", "from": "a", "text": 5}, "text is required and must be a string"),
])
def test_json_intake_bad_input(client, db, rented, body, message):
    before = snapshot(db)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post("/sms", raw=raw, headers=AUTH)
    assert answer.status == 400
    assert answer.json["error"].startswith(message)
    assert snapshot(db) == before


def smsgate_post(client, clock, envelope, *, key=SMSGATE_KEY, skew_s=0):
    raw = json.dumps(envelope).encode()
    stamp = str(int(clock.now().timestamp() + skew_s))
    signature = hmac.new(key.encode(), raw + stamp.encode(), hashlib.sha256).hexdigest()
    return client.post("/sms/smsgate", raw=raw,
                       headers={"X-Signature": signature, "X-Timestamp": stamp})


ENVELOPE = {"deviceId": "dev1", "event": "sms:received", "id": "evt-1", "webhookId": "w1",
            "payload": {"messageId": "m1", "message": "Your code is 4242", "sender": "Google",
                        "recipient": None, "simNumber": 1,
                        "receivedAt": "2026-11-01T14:59:58.000+03:00"}}


def test_smsgate_webhook_routes_by_port_and_deduplicates(client, clock, db, rented):
    answer = smsgate_post(client, clock, ENVELOPE)
    assert (answer.status, answer.json) == (200, {"status": "SUCCESS", "smsId": 1})
    assert smsgate_post(client, clock, ENVELOPE).json == {"status": "SUCCESS", "smsId": 1}
    row = db.row("SELECT number, port, operation_id, received_at, source FROM sms")
    assert row == {"number": "4915123456789", "port": "dev1:1",
                   "operation_id": rented["activationId"],
                   "received_at": "2026-11-01T11:59:58.000000Z", "source": "smsgate"}
    assert db.execute("SELECT count(*) FROM sms").fetchone()[0] == 1


@pytest.mark.parametrize("key, skew_s, error", [
    ("wrong-key", 0, "BAD_SIGNATURE"),
    (SMSGATE_KEY, -301, "STALE_TIMESTAMP"),
    (SMSGATE_KEY, 301, "STALE_TIMESTAMP"),
])
def test_smsgate_bad_or_stale_signature(client, clock, db, rented, key, skew_s, error):
    before = snapshot(db)
    answer = smsgate_post(client, clock, ENVELOPE, key=key, skew_s=skew_s)
    assert (answer.status, answer.json) == (401, {"status": "ERROR", "error": error})
    assert snapshot(db) == before


def test_smsgate_other_events_are_acknowledged_and_ignored(client, clock, db):
    before = snapshot(db)
    answer = smsgate_post(client, clock, {"deviceId": "dev1", "event": "sms:sent", "id": "x",
                                          "payload": {}})
    assert answer.json == {"status": "SUCCESS", "ignored": True}
    assert snapshot(db) == before


def test_a_token_in_the_url_works_and_never_reaches_the_log(live_server, db, caplog):
    import logging

    from conftest import http_post

    add_numbers(db, START, ("+4915123456789", "germany", "telekom", "GSM1"))
    with caplog.at_level(logging.DEBUG):
        answer = http_post(f"{live_server.url}/sms?token={GATEWAY_TOKEN}",
                           {"port": "GSM1", "from": "a", "text": "b"})
        refused = http_post(f"{live_server.url}/sms?token=wrong-{GATEWAY_TOKEN}",
                            {"port": "GSM1", "from": "a", "text": "b"})
    assert (answer.status, answer.json) == (200, {"status": "SUCCESS", "smsId": 1})
    assert (refused.status, refused.json) == (401, {"status": "ERROR", "error": "BAD_TOKEN"})
    access = [r.getMessage().split()[:3] for r in caplog.records if r.name == "rentbox.access"]
    assert access == [["POST", "/sms", "200"], ["POST", "/sms", "401"]]
    assert GATEWAY_TOKEN not in caplog.text and "token=" not in caplog.text


@pytest.mark.parametrize("received_at, stored", [
    # Found by CI's fuzz run: 1999 in UTC only because of its offset, refused although
    # the document allowed it.
    ("2000-01-01T01:00:27+05:48", "1999-12-31T19:12:27.000000Z"),
    ("2999-12-31T23:59:59-05:00", "3000-01-01T04:59:59.000000Z"),
])
def test_both_intakes_take_a_received_time_whose_utc_year_is_another(client, clock, db,
                                                                    received_at, stored):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom", "dev1:1"))
    sms = {"to": "+4915123456789", "from": "a", "text": "b", "received_at": received_at}
    assert client.post("/sms", sms, headers=AUTH).status == 200
    envelope = {**ENVELOPE, "payload": {**ENVELOPE["payload"], "receivedAt": received_at}}
    assert smsgate_post(client, clock, envelope).status == 200
    assert [row["received_at"] for row in db.rows("SELECT received_at FROM sms")] == [
        stored, stored]


@pytest.mark.parametrize("received_at", ["1999-12-31T23:59:59Z", "3000-01-01T00:00:00Z",
                                         "9999-12-31T23:59:59-05:00"])
def test_both_intakes_refuse_a_received_time_written_outside_2000_to_2999(client, clock, db,
                                                                          received_at):
    """`9999-12-31T23:59:59-05:00` overflowed on its conversion to UTC."""
    add_numbers(db, START, ("+4915123456789", "germany", "telekom", "dev1:1"))
    before = snapshot(db)
    sms = {"to": "+4915123456789", "from": "a", "text": "b", "received_at": received_at}
    answer = client.post("/sms", sms, headers=AUTH)
    assert (answer.status, answer.json["error"]) == (
        400, f"received_at must be written with a year from 2000 to 2999: {received_at!r}")
    envelope = {**ENVELOPE, "payload": {**ENVELOPE["payload"], "receivedAt": received_at}}
    answer = smsgate_post(client, clock, envelope)
    assert (answer.status, answer.json["error"]) == (
        400, "payload.receivedAt must be written with a year from 2000 to 2999: "
             f"{received_at!r}")
    assert snapshot(db) == before


# -- SMSGate as the app really posts ------------------------------------------------------

# examples/gateways/smsgate-sms-received.json: the envelope the app builds (WebHookEventDTO
# around SmsEventPayload.SmsReceived, capcom6/android-sms-gateway app/src/main/java/me/
# capcom/smsgateway/modules/webhooks/), from a Cloud device whose NanoID starts with `_`,
# and with the `recipient` the app fills in: SubscriptionInfo.number, the number stored on
# the SIM, here in Russia's national notation (ReceiverService.kt, SubscriptionsHelper.kt).
SAMPLE = json.loads((EXAMPLES / "gateways" / "smsgate-sms-received.json").read_text())
DEVICE = SAMPLE["deviceId"]
NUMBER = "79161234503"            # the SIM's number; the sample's recipient is 89161234503


def rent_on_port(client, db, number=NUMBER, port=f"{DEVICE}:1"):
    add_numbers(db, START, (f"+{number}", "russia", "mts", port))
    return client.post("/getNumberRent", {**GET_NUMBER, "country": "russia"}).json


def test_smsgate_the_same_sms_posted_again_with_a_new_envelope_id_is_pushed_once(
        settings, clock, connections, db):
    """Issues #291, #310, #372: the app posts one SMS twice, the same payload.messageId
    under a new envelope id."""
    woken = []
    client = WsgiClient(wsgi(settings, clock, connections, on_sms=lambda: woken.append(1)))
    rented = rent_on_port(client, db)
    first = smsgate_post(client, clock, SAMPLE)
    again = smsgate_post(client, clock, {**SAMPLE, "id": "xs-fiN26jLEONA899qe-a"})
    retried = smsgate_post(client, clock, SAMPLE)  # the same envelope again, as before
    assert first.json == again.json == retried.json == {"status": "SUCCESS", "smsId": 1}
    assert woken == [1]
    assert db.rows("SELECT number, port, operation_id, push_state FROM sms") == [
        {"number": NUMBER, "port": f"{DEVICE}:1", "operation_id": rented["activationId"],
         "push_state": "pending"}]


def test_smsgate_two_sms_with_one_message_id_are_two_sms(client, clock, db):
    rent_on_port(client, db)
    smsgate_post(client, clock, SAMPLE)
    other = {**SAMPLE, "id": "n3w", "payload": {**SAMPLE["payload"], "message": "Code 9"}}
    assert smsgate_post(client, clock, other).json == {"status": "SUCCESS", "smsId": 2}


@pytest.mark.parametrize("device", ["_x3kPq9RmT2vLw8ZyB4nC", "-Rk0LmS8wq2ZpYb1XcV7t"])
def test_smsgate_a_device_whose_nanoid_starts_with_underscore_or_dash_is_taken(
        client, clock, db, device):
    """About 3% of Cloud devices: refused with 400 on every SMS until this version."""
    rented = rent_on_port(client, db, port=f"{device}:1")
    answer = smsgate_post(client, clock, {**SAMPLE, "deviceId": device})
    assert (answer.status, answer.json) == (200, {"status": "SUCCESS", "smsId": 1})
    assert db.row("SELECT operation_id FROM sms")["operation_id"] == rented["activationId"]
    ping = {"deviceId": device, "event": "system:ping", "id": "p", "payload": {}}
    assert smsgate_post(client, clock, ping).json["online"] == 1


def test_smsgate_a_national_recipient_is_routed_by_the_port(client, clock, db, caplog):
    rented = rent_on_port(client, db)
    with caplog.at_level("WARNING", logger="rentbox"):
        answer = smsgate_post(client, clock, SAMPLE)
    assert (answer.status, answer.json) == (200, {"status": "SUCCESS", "smsId": 1})
    assert db.row("SELECT number, operation_id FROM sms") == {
        "number": NUMBER, "operation_id": rented["activationId"]}
    assert caplog.records == []  # 89161234503 is the pool's +79161234503


def test_smsgate_a_stale_recipient_never_beats_the_port(client, clock, db, caplog):
    """The SIM's stored number is another valid number (an old SIM's, a pool number even):
    the port decides, and the mismatch is logged once and shown by `rentbox status`."""
    from rentbox import gateways

    rented = rent_on_port(client, db)
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    stale = {**SAMPLE, "payload": {**SAMPLE["payload"], "recipient": "+4915123456789"}}
    with caplog.at_level("WARNING", logger="rentbox"):
        smsgate_post(client, clock, stale)
        smsgate_post(client, clock, {**stale, "id": "again", "payload": {
            **stale["payload"], "message": "second SMS"}})
    assert [r["operation_id"] for r in db.rows("SELECT operation_id FROM sms")] == [
        rented["activationId"]] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"smsgate:{DEVICE} says the SIM in port {DEVICE}:1 has the number "
                        f"+4915123456789, but the pool has +{NUMBER} on that port: SMS on "
                        f"this port go to +{NUMBER}; correct the port in the pool CSV or the "
                        "number in the box"]
    assert gateways.port_mismatches(db)[f"{DEVICE}:1"]["reported"] == "+4915123456789"


def test_smsgate_a_national_recipient_on_a_port_not_in_the_pool_is_kept_unrouted(
        client, clock, db, caplog):
    add_numbers(db, START, (f"+{NUMBER}", "russia", "mts"))  # no port in the pool
    with caplog.at_level("WARNING", logger="rentbox"):
        answer = smsgate_post(client, clock, SAMPLE)
    assert (answer.status, answer.json) == (200, {"status": "SUCCESS", "smsId": 1})
    assert db.row("SELECT number, port, push_state FROM sms") == {
        "number": None, "port": f"{DEVICE}:1", "push_state": "unrouted"}
    assert (f"SMSGate device {DEVICE}: an SMS on port {DEVICE}:1 names its recipient as "
            "89161234503, which is no international number, and the pool has no single "
            f"number on that port: kept unrouted; give the SIM's number the port {DEVICE}:1 "
            "in the pool CSV") in caplog.text


def test_smsgate_an_international_recipient_on_a_port_not_in_the_pool_routes_as_before(
        client, clock, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    rented = client.post("/getNumberRent", GET_NUMBER).json
    envelope = {**SAMPLE, "payload": {**SAMPLE["payload"], "recipient": "+49 151 23456789"}}
    assert smsgate_post(client, clock, envelope).json == {"status": "SUCCESS", "smsId": 1}
    assert db.row("SELECT number, operation_id FROM sms") == {
        "number": "4915123456789", "operation_id": rented["activationId"]}


def test_smsgate_without_a_device_a_national_recipient_is_still_a_400(client, clock, db):
    """Nothing to route by: the envelope has no deviceId (never so from the app)."""
    envelope = {k: v for k, v in SAMPLE.items() if k != "deviceId"}
    answer = smsgate_post(client, clock, envelope)
    assert (answer.status, answer.json["error"]) == (
        400, "'89161234503' does not start with a known country code")


def test_smsgate_as_the_app_posts_on_a_real_server(start_server, db):
    """The sample envelope signed as the app signs it (PayloadSingingPlugin.kt), posted
    twice under two envelope ids: one SMS, routed by its port to the rental."""
    import time

    from conftest import http_post

    add_numbers(db, START, (f"+{NUMBER}", "russia", "mts", f"{DEVICE}:1"))
    server = start_server()
    rented = http_post(f"{server.url}/getNumberRent", {**GET_NUMBER, "country": "russia"}).json
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime())
    envelope = {**SAMPLE, "payload": {**SAMPLE["payload"], "receivedAt": now}}
    answers = []
    for envelope_id in ("az75fdnE6t9aQY7nRVVXy", "xs-fiN26jLEONA899qe-a"):
        raw = json.dumps({**envelope, "id": envelope_id}).encode()
        stamp = str(int(time.time()))
        signature = hmac.new(SMSGATE_KEY.encode(), raw + stamp.encode(),
                             hashlib.sha256).hexdigest()
        answers.append(http_post(f"{server.url}/sms/smsgate", raw=raw, headers={
            "X-Signature": signature, "X-Timestamp": stamp}))
    assert [(a.status, a.json) for a in answers] == [
        (200, {"status": "SUCCESS", "smsId": 1})] * 2
    assert db.rows("SELECT number, operation_id FROM sms") == [
        {"number": NUMBER, "operation_id": rented["activationId"]}]


@pytest.mark.parametrize("envelope, status", [
    (SAMPLE, 200),                                              # national recipient, `_` id
    ({**SAMPLE, "deviceId": "-Rk0LmS8wq2ZpYb1XcV7t"}, 200),
    ({**SAMPLE, "deviceId": -5}, 200),                          # "-5": a device id now
    ({**SAMPLE, "payload": {**SAMPLE["payload"], "messageId": {"odd": 1}}}, 200),
    ({**SAMPLE, "deviceId": "dev 1"}, 400),
    ({**SAMPLE, "deviceId": ".dev"}, 400),
    ({"deviceId": "_x3kPq9RmT2vLw8ZyB4nC", "event": "system:ping", "payload": {}}, 200),
    ({"deviceId": "dev 1", "event": "system:ping", "payload": {}}, 400),
])
def test_smsgate_the_document_and_the_server_agree_on_device_ids_and_recipients(
        client, clock, db, envelope, status):
    """What the OpenAPI document allows is taken and what it refuses is refused (its
    fuzz run checks both ways)."""
    import jsonschema_rs

    from rentbox.web import docs

    document = json.loads(docs.document())
    allowed = jsonschema_rs.Draft202012Validator(
        {"allOf": [{"$ref": "#/components/schemas/SmsgateEvent"}],
         "components": document["components"]}).is_valid(envelope)
    assert allowed is (status == 200)
    assert smsgate_post(client, clock, envelope).status == status


# ---- every refused gateway call is one WARNING, limited per gateway (issue 21, item 14) ---

# The boxes' own payloads (their sources are named where the samples are used in
# tests/test_gateways_dinstar.py, test_gateways_ejoin.py and above).
DINSTAR_PUSH = json.loads((EXAMPLES / "gateways" / "dinstar-push-sms.json").read_text())


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and r.name == "rentbox.web"]


def test_a_refused_call_is_one_warning_with_its_reason_and_never_the_token_or_body(
        start_server, db, caplog):
    import logging
    import time

    from conftest import http_post

    server = start_server()
    with caplog.at_level(logging.INFO, logger="rentbox"):
        # A Dinstar box with another token (its push, as its manual shows it).
        wrong = http_post(f"{server.url}/sms/dinstar?token=not-{GATEWAY_TOKEN}",
                          DINSTAR_PUSH)
        # The same box's push with one row where the list of rows belongs: the box names
        # itself (`sn`) in it.
        cut = http_post(f"{server.url}/sms/dinstar?token={GATEWAY_TOKEN}",
                        {**DINSTAR_PUSH, "sms": DINSTAR_PUSH["sms"][0]})
        # Ejoin's web forward sent where only its API push is taken (`?box=` names it).
        forward = http_post(f"{server.url}/sms/ejoin?box=gw1&token={GATEWAY_TOKEN}",
                            raw=FORWARD_BODY, headers=FORWARD_HEADERS)
        # SMSGate's envelope with a signature made with another key.
        stamp = str(int(time.time()))
        raw = json.dumps(SAMPLE).encode()
        signed = http_post(f"{server.url}/sms/smsgate", raw=raw, headers={
            "X-Timestamp": stamp, "X-Signature": hmac.new(
                b"another-key", raw + stamp.encode(), hashlib.sha256).hexdigest()})
        # The same forward to its own path (the token in it) is taken: no warning.
        taken = http_post(server.url + forward_url(), raw=FORWARD_BODY,
                          headers=FORWARD_HEADERS)
    assert [a.status for a in (wrong, cut, forward, signed, taken)] == [401, 400, 400, 401,
                                                                       200]
    assert refusals(caplog) == [
        "POST /sms/dinstar refused (401) for 127.0.0.1: BAD_TOKEN",
        "POST /sms/dinstar refused (400) for box dbd2-0325-0044-0088 at 127.0.0.1: "
        + cut.json["error"],
        "POST /sms/ejoin refused (400) for box gw1 at 127.0.0.1: the body is not JSON; the "
        "web UI's \"SMS to HTTP\" forward is taken at /sms/ejoin/<token>",
        f"POST /sms/smsgate refused (401) for device {DEVICE} at 127.0.0.1: BAD_SIGNATURE"]
    assert GATEWAY_TOKEN not in caplog.text
    for secret_or_body in ("Ваш код", "7781", "another-key", "Sender:", "552013"):
        assert secret_or_body not in caplog.text


def test_refusals_are_limited_per_gateway_with_the_count_held_back(client, clock, db, caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="rentbox"):
        for _ in range(50):  # a box set up with an old token, and another one
            client.post("/sms/ejoin?box=gw1&token=old", raw=b"{}")
            client.post("/sms/ejoin?box=gw2&token=old", raw=b"{}")
        assert refusals(caplog) == [
            "POST /sms/ejoin refused (401) for box gw1 at ?: BAD_TOKEN",
            "POST /sms/ejoin refused (401) for box gw2 at ?: BAD_TOKEN"]
        caplog.clear()
        clock.advance(61)
        client.post("/sms/ejoin?box=gw1&token=old", raw=b"{}")
    # gw1 again, a minute on: logged with its count; gw2, quiet since, has its count alone.
    held = "s not logged (at most one per 60 s per gateway)"
    assert refusals(caplog) == [
        "POST /sms/ejoin refused (401) for box gw1 at ?: BAD_TOKEN; 49 more warning(s) about "
        "refused calls from box gw1 in the last 61 " + held,
        "gateway intake: 49 more warning(s) about refused calls from box gw2 in the last 61 "
        + held]
