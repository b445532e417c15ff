"""What the gateway adapters note in the books for `rentbox status`: ports where a box
reports another number than the pool has, and the SMSGate devices heard from.

The adapters write these notes (`common.note_port_number`, `smsgate`); this module holds
their keys and reads them. It imports none of the adapters, so that `status` loads no
SMS parser (issue 25)."""

from __future__ import annotations

import datetime as dt

from rentbox import meta
from rentbox.clock import from_text
from rentbox.db import Database

# meta key: ports where a box reports another number than the pool has there.
PORT_MISMATCH = "gateways.port_mismatch"

# meta key: the SMSGate devices heard from, {device: {"sms_at": …, "ping_at": …}}, so that
# `rentbox status` can name a device that sends SMS but no ping.
DEVICES = "smsgate.devices"
# A device's last SMS or ping is rewritten at most this often: a ping every minute or two
# of every device must not each become a write.
NOTE_EVERY_S = 600
# Devices remembered; the one heard from longest ago is forgotten first.
MAX_DEVICES = 200
# A device that has sent no SMS for this long is no longer warned about.
FORGET_AFTER_S = 7 * 24 * 3600


def port_mismatches(db: Database) -> dict[str, dict]:
    """Ports where a box reported another number than the pool has (see
    `common.note_port_number`): {port: {reported, pool, gateway, at}}."""
    return meta.get(db, PORT_MISMATCH) or {}


def devices_without_ping(db: Database, now: dt.datetime, presence_s: float) -> list[str]:
    """SMSGate devices that sent SMS in the last week but no ping (`system:ping`) since
    well before their last SMS: the app's Ping is off (its default), so their SIMs count
    as offline `presence_s` after each report. Sorted."""
    late_s = NOTE_EVERY_S + presence_s
    found = []
    for device, noted in (meta.get(db, DEVICES) or {}).items():
        if "sms_at" not in noted:
            continue
        sms_at = from_text(noted["sms_at"])
        if (now - sms_at).total_seconds() > FORGET_AFTER_S:
            continue
        ping_at = from_text(noted["ping_at"]) if "ping_at" in noted else None
        if ping_at is None or (sms_at - ping_at).total_seconds() > late_s:
            found.append(device)
    return sorted(found)


def ping_interval_s(presence_s: float) -> int:
    """SMSGate's Ping interval that keeps its SIMs online: a third of the presence window,
    so that two pings in a row may be late or lost (the app delivers webhooks through
    Android's job scheduler, which may hold them back)."""
    return max(1, int(presence_s // 3))
