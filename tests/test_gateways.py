import datetime as dt
import hashlib
import hmac
import json

import pytest

from rentbox import gateways
from rentbox.errors import InvalidInput
from rentbox.sms import IncomingSms

KEY = b"smsgate-signing-key"
NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc)


def sign(raw: bytes, timestamp: str, key: bytes = KEY) -> str:
    return hmac.new(key, raw + timestamp.encode(), hashlib.sha256).hexdigest()


def test_json_sms():
    parsed = gateways.parse_json_sms({"to": 4915123456789, "from": "Bank", "text": "hi",
                                      "id": 17, "received_at": "2026-11-26T10:00:00+03:00"})
    assert parsed == IncomingSms(source="api", to="4915123456789", sender="Bank", text="hi",
                                 source_id="17",
                                 received_at=dt.datetime(2026, 11, 26, 7, tzinfo=dt.timezone.utc))


@pytest.mark.parametrize("body, message", [
    ({"from": "a", "text": "b"}, "to is required"),
    ({"to": "+4915123456789", "text": "b"}, "from is required"),
    ({"to": "+4915123456789", "from": "a"}, "text is required"),
    ({"to": "+4915123456789", "from": "a", "text": "b", "id": [1]}, "id must be"),
    ({"to": "+4915123456789", "from": "a", "text": "b", "received_at": "soon"}, "ISO-8601"),
])
def test_json_sms_rejects(body, message):
    with pytest.raises(InvalidInput, match=message):
        gateways.parse_json_sms(body)


def envelope(**payload):
    body = {"messageId": "abc", "message": "Code 1234", "sender": "+79990001122",
            "recipient": "+4915123456789", "simNumber": 2,
            "receivedAt": "2024-06-22T15:46:11.000+07:00"}
    body.update(payload)
    return {"deviceId": "dev1", "event": "sms:received", "id": "evt-9", "webhookId": "w",
            "payload": body}


def test_smsgate_envelope():
    parsed = gateways.parse_smsgate(envelope())
    assert parsed.to == "+4915123456789" and parsed.port == "dev1:2"
    assert parsed.sender == "+79990001122" and parsed.text == "Code 1234"
    # De-duplicated on the SMS's own messageId, per device (not on the envelope's id).
    assert parsed.source_id.startswith("dev1:h:")
    assert parsed.received_at == dt.datetime(2024, 6, 22, 8, 46, 11, tzinfo=dt.timezone.utc)


def test_smsgate_older_app_and_missing_recipient():
    old = envelope(recipient=None, simNumber=None)
    del old["payload"]["sender"]
    old["payload"]["phoneNumber"] = "+79990001122"
    parsed = gateways.parse_smsgate(old)
    assert (parsed.to, parsed.port, parsed.sender) == (None, "dev1", "+79990001122")


def test_smsgate_other_events_are_ignored():
    assert gateways.parse_smsgate({"event": "system:ping", "payload": {}}) is None
    with pytest.raises(InvalidInput):
        gateways.parse_smsgate({"payload": {}})


def test_signature_good_bad_and_stale():
    raw = json.dumps(envelope()).encode()
    stamp = str(int(NOW.timestamp()))
    gateways.verify_smsgate_signature(raw, signature=sign(raw, stamp), timestamp=stamp, key=KEY,
                                      now=NOW, max_skew_s=300)
    cases = [
        (sign(raw, stamp, b"other"), stamp, "BAD_SIGNATURE"),
        (sign(raw + b" ", stamp), stamp, "BAD_SIGNATURE"),
        (None, stamp, "BAD_SIGNATURE"),
        (sign(raw, str(int(NOW.timestamp()) - 301)), str(int(NOW.timestamp()) - 301),
         "STALE_TIMESTAMP"),
        (sign(raw, "soon"), "soon", "not a Unix time"),
        (sign(raw, "nan"), "nan", "not a Unix time"),
        ("ä" * 64, stamp, "BAD_SIGNATURE"),
    ]
    for signature, timestamp, message in cases:
        with pytest.raises(gateways.BadSignature, match=message):
            gateways.verify_smsgate_signature(raw, signature=signature, timestamp=timestamp,
                                              key=KEY, now=NOW, max_skew_s=300)


def test_json_sms_by_port_when_the_number_is_unknown():
    parsed = gateways.parse_json_sms({"port": "GSM1", "from": "Bank", "text": "hi"})
    assert (parsed.to, parsed.port) == (None, "GSM1")
    both = gateways.parse_json_sms({"to": "+4915123456789", "port": "GSM1", "from": "a",
                                    "text": "b"})
    assert (both.to, both.port) == ("+4915123456789", "GSM1")
    with pytest.raises(InvalidInput, match="port must be"):
        gateways.parse_json_sms({"port": "GSM 1", "from": "a", "text": "b"})


def test_integral_floats_are_the_integers_they_equal():
    # Found by schemathesis: JSON Schema's integer includes 5.0, and a port or id sent
    # as 7416043816.0 is the JSON number 7416043816.
    from rentbox.gateways import common

    assert common.item(7416043816.0, "port") == "7416043816"
    assert common.optional_id(12.0, "id") == "12"
    with pytest.raises(InvalidInput, match="must be a string"):
        common.item(1.5, "port")
    with pytest.raises(InvalidInput, match="string or an integer"):
        common.optional_id(float("nan"), "id")


def test_smsgate_device_id_must_be_a_port_name():
    # Found by schemathesis: a deviceId of control characters became a stored port.
    envelope = {"event": "sms:received", "deviceId": "\x12dev\x19",
                "payload": {"sender": "Google", "message": "1234"}}
    with pytest.raises(InvalidInput, match="deviceId must be 1 to 64"):
        gateways.parse_smsgate(envelope)
    assert gateways.parse_smsgate({**envelope, "deviceId": " dev1 "}).port == "dev1"


# The envelope of SMSGate's `sms:received` as the app builds it: WebHookEventDTO (id,
# webhookId, event, deviceId, payload) around SmsEventPayload.SmsReceived (messageId,
# sender, recipient, simNumber, phoneNumber, message, receivedAt), in
# capcom6/android-sms-gateway app/src/main/java/me/capcom/smsgateway/modules/webhooks/
# (domain/WebHookEventDTO.kt, payload/SmsEventPayload.kt, payload/MessageEventPayload.kt).
# The two posts of one SMS are those of its issue #310 (app 1.52.1): the same messageId,
# message, simNumber and receivedAt, a new envelope id; #291 (1.51.2), #301 and #372
# (1.65.0) report the same.
REPOST_FIRST = {
    "deviceId": "ffffffff80e797f10000019bd20a3c07", "event": "sms:received",
    "id": "xs-fiN26jLEONA899qe-a", "webhookId": "e9yFh4Wh-Znmj05FmFpKW",
    "payload": {"messageId": "83be51e4", "message": "Ein mal geht's noch",
                "phoneNumber": "+43664xxxxxxxx", "simNumber": 1,
                "receivedAt": "2026-01-19T21:11:52+01:00"}}
REPOST_SECOND = {**REPOST_FIRST, "id": "az75fdnE6t9aQY7nRVVXy"}


def test_smsgate_the_same_sms_posted_again_with_a_new_envelope_id_has_the_same_id():
    first = gateways.parse_smsgate(REPOST_FIRST)
    second = gateways.parse_smsgate(REPOST_SECOND)
    assert first.source_id == second.source_id
    assert first.source_id.startswith("ffffffff80e797f10000019bd20a3c07:h:")
    # The same envelope again (the app retrying a post) too, as before.
    assert gateways.parse_smsgate(REPOST_FIRST).source_id == first.source_id


def test_smsgate_message_ids_are_per_device_and_a_repeated_hash_is_not_a_repeat():
    first = gateways.parse_smsgate(REPOST_FIRST)
    other_device = gateways.parse_smsgate({**REPOST_FIRST, "deviceId": "rGukPBIlo9Y063wg730UC"})
    assert other_device.source_id != first.source_id
    # messageId is a 32-bit hash of the SMS (ReceiverService.kt: InboxMessage.hashCode()):
    # another SMS with the same one is another SMS.
    other_sms = gateways.parse_smsgate({**REPOST_SECOND, "payload": {
        **REPOST_FIRST["payload"], "message": "Code 1234"}})
    assert other_sms.source_id != first.source_id


def test_smsgate_without_a_message_id_deduplicates_on_the_envelope_id_as_before():
    old = envelope()
    del old["payload"]["messageId"]
    assert gateways.parse_smsgate(old).source_id == "dev1:evt-9"
    # A messageId that is not the app's (an object, an empty string) is not a reason to
    # refuse the SMS: the envelope id serves.
    for odd in ({"x": 1}, "", "  "):
        assert gateways.parse_smsgate(envelope(messageId=odd)).source_id == "dev1:evt-9"


@pytest.mark.parametrize("device", [
    "_x3kPq9RmT2vLw8ZyB4nC",             # Cloud/Private: a 21-character NanoID, A-Za-z0-9_-
    "-Rk0LmS8wq2ZpYb1XcV7t",
    "rGukPBIlo9Y063wg730UC",             # issue #264 (Cloud)
    "ffffffff80e797f10000019bd20a3c07",  # issue #310 (Local: 32 hex digits)
    "ffffffffceb0b1db",                  # Local, older apps: 16 hex digits
])
def test_smsgate_takes_every_kind_of_device_id(device):
    # Cloud and Private servers give a device nanoid.Standard(21) (android-sms-gateway/
    # server internal/sms-gateway/modules/db/module.go, devices/service.go); the app's
    # Local server hashes its model and install time into hex (LocalServerService.kt
    # getDeviceId).
    parsed = gateways.parse_smsgate({**envelope(), "deviceId": device})
    assert parsed.port == f"{device}:2" and parsed.device == device
    ping = gateways.parse_smsgate_presence({"deviceId": device, "event": "system:ping",
                                            "payload": {}})
    assert (ping.gateway, ping.device) == (f"smsgate:{device}", device)


@pytest.mark.parametrize("device", ["", "\x12dev", "dev 1", ".dev", ":1", "a" * 65, "dév"])
def test_smsgate_still_refuses_device_ids_that_are_no_port_name(device):
    with pytest.raises(InvalidInput):
        gateways.parse_smsgate({**envelope(), "deviceId": device})
    with pytest.raises(InvalidInput):
        gateways.parse_smsgate_presence({"deviceId": device, "event": "system:ping"})


def test_smsgate_keeps_a_national_recipient_as_sent_for_the_route_to_weigh():
    parsed = gateways.parse_smsgate(envelope(recipient=" 89161234503 "))
    assert (parsed.to, parsed.port) == ("89161234503", "dev1:2")
