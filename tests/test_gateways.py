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
    assert parsed.source_id == "dev1:evt-9"
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
