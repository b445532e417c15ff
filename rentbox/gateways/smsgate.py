"""SMSGate (the open-source android-sms-gateway app and its AT-modem daemon): its signed
webhook (`POST /sms/smsgate`).

`sms:received`: the SMS arrived on the port `<deviceId>:<simNumber>` (or just `<deviceId>`
for a device that sends no simNumber). When a pool number has that port, the port decides
where the SMS goes: the payload's `recipient` is only the number the phone has stored for
its SIM (often national, `89161234503`, or stale) and serves as a cross-check. Otherwise
the recipient routes it if it is an international number. The app posts some SMS twice
with a new envelope `id` (its issues #288, #291, #310, #372): the same `payload.messageId`
on the same device is the same SMS.

`system:ping` and `app:started` report SIM presence for the device (gateway
`smsgate:<deviceId>`). A device that sends SMS but no ping is noted, so that `rentbox
status` can say that its SIMs go offline (the app's Ping is off by default).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import re

from rentbox import meta, presence, sms
from rentbox.clock import Clock, from_text, to_text
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import InvalidInput
from rentbox.gateways.common import (content_id, item, note_port_number, optional_id,
                                     receiving_number)
from rentbox.gateways.notes import DEVICES, MAX_DEVICES, NOTE_EVERY_S
from rentbox.sms import IncomingSms, parse_time

log = logging.getLogger("rentbox.gateways")

# A device's id becomes its ports and its presence gateway's name. Cloud and private-server
# devices have a 21-character NanoID (A-Za-z0-9_-: about 3% of them start with _ or -),
# local-server ones 16 or 32 hex digits; the other characters of a port are taken as before.
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:@/+-]{0,63}$")


class BadSignature(Exception):
    """A webhook whose signature or timestamp does not check out."""


def verify_smsgate_signature(raw: bytes, *, signature: str | None, timestamp: str | None,
                             key: bytes, now: dt.datetime, max_skew_s: float) -> None:
    """X-Signature is the hex HMAC-SHA256 of the raw body followed by X-Timestamp."""
    import hashlib  # here: OpenSSL's hashlib is not needed by the commands importing this
    import hmac

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


def device_id(value: object) -> str | None:
    """The envelope's `deviceId` (it names the device's ports); None when absent."""
    device = optional_id(value, "deviceId")
    # A port's characters, so that no control character reaches a stored port or a log
    # line (found by schemathesis).
    if device is not None and not _DEVICE_ID.match(device):
        raise InvalidInput("deviceId must be 1 to 64 letters, digits and _ - . : @ / + "
                           "(starting with a letter, a digit, _ or -)")
    return device


@dataclasses.dataclass(frozen=True)
class SmsgateSms(IncomingSms):
    """An `sms:received` as the app sends it: `to` is the payload's `recipient` as sent
    (any notation), which `accept_smsgate_sms` weighs against the port."""

    device: str | None = None


def parse_smsgate(envelope: dict) -> SmsgateSms | None:
    """An SMSGate webhook envelope; None for events other than `sms:received`."""
    if envelope.get("event") != "sms:received":
        if not isinstance(envelope.get("event"), str):
            raise InvalidInput("event is required")
        return None
    payload = envelope.get("payload")
    if not isinstance(payload, dict):
        raise InvalidInput("payload must be an object")
    event_id = optional_id(envelope.get("id"), "id")
    device = device_id(envelope.get("deviceId"))
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
    try:
        message_id = optional_id(payload.get("messageId"), "payload.messageId")
    except InvalidInput:  # not the app's (always a hex string): the envelope id serves
        message_id = None
    received_at = parse_time(payload.get("receivedAt"), "payload.receivedAt")
    port = None
    if device is not None:
        port = f"{device}:{sim}" if sim is not None else device
    if not (recipient or "").strip() and port is None:
        raise InvalidInput("payload.recipient is null and there is no deviceId to route by")
    if message_id is not None:
        # The app's messageId is a 32-bit hash of the SMS (sender, time, SIM, text), the
        # same in every post of it. A hash that short repeats for two SMS of one busy
        # device now and then, so what it hashes is part of the id: two different SMS
        # never share it, and every post of one SMS does.
        source_id = f"{device}:" + content_id("messageId", message_id, sender, text,
                                              received_at, sim)
    else:  # an app that sends no messageId: its envelope id, as before
        source_id = f"{device}:{event_id}" if event_id is not None else None
    return SmsgateSms(
        source="smsgate", to=(recipient or "").strip() or None, port=port,
        sender=sender, text=text, source_id=source_id, received_at=received_at,
        device=device,
    )


def accept_smsgate_sms(db: Database, clock: Clock, incoming: SmsgateSms,
                       rules: Rules) -> sms.Accepted:
    """Route an `sms:received` and store it (`sms.accept_sms`, the one durable path).

    When exactly one pool number has the SMS's port, the port decides: a recipient that
    is another number (a stale one the phone keeps for its SIM) is logged and shown by
    `rentbox status`, never followed. Otherwise an international recipient routes it, as
    it always did, and any other recipient (the phone's national notation) leaves it
    unrouted with a warning that says which port to import, rather than refusing it: the
    app would post it again for days (15 attempts by default) and then drop it."""
    recipient, port = incoming.to, incoming.port
    routed = incoming
    on_pool_port = False
    if port is not None:
        on_pool_port = len(db.rows("SELECT id FROM numbers WHERE port = ?"
                                   " AND removed_at IS NULL LIMIT 2", (port,))) == 1
        if on_pool_port:
            routed = dataclasses.replace(incoming, to=None)
        elif recipient is not None:
            routed = dataclasses.replace(incoming, to=receiving_number(recipient))
            if routed.to is None:
                log.warning("SMSGate device %s: an SMS on port %s names its recipient as %s, "
                            "which is no international number, and the pool has no single "
                            "number on that port: kept unrouted; give the SIM's number the "
                            "port %s in the pool CSV", incoming.device, port,
                            _loggable(recipient), port)
    accepted = sms.accept_sms(db, clock, routed, rules)
    # After the commit: a note that cannot be written never costs the SMS.
    if on_pool_port and recipient is not None and not accepted.duplicate:
        note_port_number(db, clock, f"smsgate:{incoming.device}"[:100], port, recipient)
    if incoming.device is not None:
        _note_device(db, clock.now(), incoming.device, "sms_at")
    return accepted


# ---------------------------------------------------------------------------------------
# Presence
# ---------------------------------------------------------------------------------------


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
    device = device_id(envelope.get("deviceId"))
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


def note_smsgate_ping(db: Database, clock: Clock, envelope: dict) -> None:
    """A `system:ping` was received (and parsed): note it for its device."""
    if envelope.get("event") == "system:ping":
        device = device_id(envelope.get("deviceId"))
        if device is not None:
            _note_device(db, clock.now(), device, "ping_at")


def _note_device(db: Database, now: dt.datetime, device: str, what: str) -> None:
    noted = (meta.get(db, DEVICES) or {}).get(device, {})
    if what in noted and (now - from_text(noted[what])).total_seconds() < NOTE_EVERY_S:
        return
    with db.transaction():
        devices = meta.get(db, DEVICES) or {}
        devices.setdefault(device, {})[what] = to_text(now)
        if len(devices) > MAX_DEVICES:
            devices = dict(sorted(devices.items(), key=lambda d: max(d[1].values()),
                                  reverse=True)[:MAX_DEVICES])
        meta.put_within(db, now, DEVICES, devices)


def _loggable(text: str) -> str:
    text = str(text)[:40]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
