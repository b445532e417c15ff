"""SMSGate (the open-source android-sms-gateway app and its AT-modem daemon): its signed
webhook (`POST /sms/smsgate`).

`sms:received`: when its payload has no `recipient`, the receiving number is the pool
number whose `port` is `<deviceId>:<simNumber>` (or just `<deviceId>` for a single-SIM
device that sends no simNumber). `system:ping` and `app:started` report SIM presence for
the device (gateway `smsgate:<deviceId>`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math

from rentbox import presence
from rentbox.errors import InvalidInput
from rentbox.gateways.common import item, optional_id, port_name
from rentbox.sms import IncomingSms, parse_time


class BadSignature(Exception):
    """A webhook whose signature or timestamp does not check out."""


def verify_smsgate_signature(raw: bytes, *, signature: str | None, timestamp: str | None,
                             key: bytes, now: dt.datetime, max_skew_s: float) -> None:
    """X-Signature is the hex HMAC-SHA256 of the raw body followed by X-Timestamp."""
    if not signature or not timestamp:
        raise BadSignature("BAD_SIGNATURE: X-Signature and X-Timestamp are required")
    # Header values arrive as latin-1 text; compare bytes, so that any character is
    # simply a mismatch (compare_digest refuses non-ASCII str).
    # Only HTTP's own white space: str.strip() would also take \xa0 and \x85 off a
    # latin-1 header, and a signature with them around it would pass.
    stamp = timestamp.strip(" \t").encode("latin-1", "replace")
    expected = hmac.new(key, raw + stamp, hashlib.sha256).hexdigest().encode("ascii")
    presented = signature.strip(" \t").lower().encode("latin-1", "replace")
    if not hmac.compare_digest(expected, presented):
        raise BadSignature("BAD_SIGNATURE")
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise BadSignature("BAD_SIGNATURE: X-Timestamp is not a Unix time") from None
    if not math.isfinite(sent_at):
        raise BadSignature("BAD_SIGNATURE: X-Timestamp is not a Unix time")
    # Checked after the signature, so an attacker learns nothing from the difference.
    if abs(now.timestamp() - sent_at) > max_skew_s:
        raise BadSignature("STALE_TIMESTAMP")


def parse_smsgate(envelope: dict) -> IncomingSms | None:
    """An SMSGate webhook envelope; None for events other than `sms:received`."""
    if envelope.get("event") != "sms:received":
        if not isinstance(envelope.get("event"), str):
            raise InvalidInput("event is required")
        return None
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise InvalidInput("payload must be an object")
    event_id = optional_id(envelope.get("id"), "id")
    device = optional_id(envelope.get("deviceId"), "deviceId")
    if device is not None:  # it names the port: a port's characters (found by schemathesis)
        device = port_name(device, "deviceId")
    sender = payload.get("sender", payload.get("phoneNumber"))  # older apps: phoneNumber
    if not isinstance(sender, str) or not sender.strip():
        raise InvalidInput("payload.sender is required")
    text = payload.get("message")
    if not isinstance(text, str):
        raise InvalidInput("payload.message is required and must be a string")
    recipient = payload.get("recipient")
    if recipient is not None and not isinstance(recipient, str):
        raise InvalidInput("payload.recipient must be a string or null")
    sim = payload.get("simNumber")
    if sim is not None and (isinstance(sim, bool) or not isinstance(sim, int)):
        raise InvalidInput("payload.simNumber must be an integer or null")
    port = None
    if device is not None:
        port = f"{device}:{sim}" if sim is not None else device
    if not (recipient or "").strip() and port is None:
        raise InvalidInput("payload.recipient is null and there is no deviceId to route by")
    return IncomingSms(
        source="smsgate", to=(recipient or "").strip() or None, port=port,
        sender=sender, text=text,
        source_id=f"{device}:{event_id}" if event_id is not None else None,
        received_at=parse_time(payload.get("receivedAt"), "payload.receivedAt"),
    )


SMSGATE_PRESENCE_EVENTS = ("system:ping", "app:started")


def parse_smsgate_presence(envelope: dict) -> presence.Report | None:
    """SMSGate's presence events; None for any other event.

    `system:ping` (the app is alive): a heartbeat of the device, which stands for every
    pool port of the device until an `app:started` has listed its SIMs. `app:started`
    lists the device's SIM cards (`payload.simCards`, or `sims`): each card's slot
    (`simNumber`, or `slot`) makes the port `<deviceId>:<slot>`, as in `sms:received`,
    and a card's `phoneNumber`, when the app knows it, only serves as a hint where the
    pool number has no port yet.
    """
    event = envelope.get("event")
    if event not in SMSGATE_PRESENCE_EVENTS:
        return None
    device = optional_id(envelope.get("deviceId"), "deviceId")
    if device is None:
        raise InvalidInput(f"deviceId is required for {event}")
    gateway = presence.check_gateway(f"smsgate:{device}"[:100])
    payload = envelope.get("payload")
    if payload is not None and not isinstance(payload, dict):
        raise InvalidInput("payload must be an object")
    cards = (payload or {}).get("simCards", (payload or {}).get("sims"))
    if event == "system:ping" or cards is None:
        return presence.Report(gateway, device=device)
    if not isinstance(cards, list) or len(cards) > presence.MAX_REPORT_ITEMS:
        raise InvalidInput("payload.simCards must be a list of SIM cards")
    ports, hints = [], []
    for card in cards:
        if not isinstance(card, dict):
            raise InvalidInput("each of payload.simCards must be an object")
        slot = card.get("simNumber", card.get("slot"))
        if isinstance(slot, bool) or not isinstance(slot, int) or not 0 <= slot < 1000:
            raise InvalidInput("each SIM card needs its slot: simNumber, an integer")
        port = f"{device}:{slot}"
        ports.append(port)
        phone = card.get("phoneNumber", card.get("number"))
        if phone is not None:
            hints.append((port, item(phone, "phoneNumber")))
    return presence.Report(gateway, ports=tuple(ports), device=device,
                           port_hints=tuple(hints))
