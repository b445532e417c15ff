"""Dinstar (DWG and UC gateways): the box's "Push SMS" to `POST /sms/dinstar`.

`{"sn": "<serial>", "sms": [{"incoming_sms_id", "port", "number" (the sender), "smsc",
"timestamp", "text", "imsi"?}, …]}`. The receiving number is not included: an SMS goes to
the pool number whose `port` is `<sn>:<port>` (`dbd2-0325-0044-0088:1`), with `port` as
the push carries it. `timestamp` ("YYYY-MM-DD HH:MM:SS") is the box's local time, read in
the time zone RENTBOX_DINSTAR_TZ (UTC unless set); a row whose timestamp does not parse is
dated on arrival rather than lost. De-duplicated on (sn, incoming_sms_id). Other pushes of
the box (SMS results, delivery states, USSD, device state) are acknowledged and ignored.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zoneinfo

from rentbox.errors import InvalidInput
from rentbox.gateways.common import (Row, content_id, optional_id, parse_rows, port_name,
                                     text_field)
from rentbox.sms import IncomingSms

log = logging.getLogger("rentbox.gateways")

SOURCE = "dinstar"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_OFFSET = re.compile(r"^(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?$")


def time_zone(name: str) -> dt.tzinfo:
    """RENTBOX_DINSTAR_TZ: an IANA name (`Europe/Moscow`), `UTC`, or a fixed offset
    (`+03:00`, `UTC+3`)."""
    text = (name or "").strip()
    if text.upper() in ("", "UTC", "GMT", "Z"):
        return dt.timezone.utc
    offset = _OFFSET.match(text)
    if offset:
        sign, hours, minutes = offset.groups()
        delta = dt.timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta >= dt.timedelta(hours=24):
            raise InvalidInput(f"RENTBOX_DINSTAR_TZ {text!r} is not a valid offset")
        return dt.timezone(-delta if sign == "-" else delta)
    try:
        return zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"RENTBOX_DINSTAR_TZ {text!r} is not a time zone: give a name "
                           "such as Europe/Moscow, UTC, or an offset such as +03:00") from None


def parse_push(body: dict, tz: dt.tzinfo) -> list[Row] | None:
    """The SMS rows of a Push SMS; None for the box's other pushes."""
    rows = body.get("sms")
    if rows is None:
        return None
    serial = optional_id(body.get("sn"), "sn")
    if serial is None:
        raise InvalidInput("sn is required: the serial number of the box")
    serial = port_name(serial, "sn")
    if not isinstance(rows, list):
        raise InvalidInput("sms must be a list of SMS")
    return parse_rows(rows, lambda row: parse_row(row, serial, tz))


def parse_row(row: object, serial: str, tz: dt.tzinfo) -> IncomingSms:
    """One SMS of a push."""
    if not isinstance(row, dict):
        raise InvalidInput("an SMS must be an object")
    port = port_name(f"{serial}:{port_name(row.get('port'))}")
    sender = text_field(row.get("number"), "number").strip()
    if not sender:
        raise InvalidInput("number (the sender) is required")
    text = row.get("text")
    if not isinstance(text, str):
        raise InvalidInput("text is required and must be a string")
    stamp = text_field(row.get("timestamp"), "timestamp")
    sms_id = optional_id(row.get("incoming_sms_id"), "incoming_sms_id")
    return IncomingSms(
        source=SOURCE, port=port, sender=sender, text=text,
        source_id=(f"{serial}:{sms_id}" if sms_id is not None
                   else content_id(port, stamp, sender, text)),
        received_at=_local_time(stamp, tz, port),
    )


def _local_time(stamp: str, tz: dt.tzinfo, port: str) -> dt.datetime | None:
    if not stamp.strip():
        return None
    try:
        local = dt.datetime.strptime(stamp.strip(), TIME_FORMAT)
    except ValueError:
        local = None
    # A box with its clock unset says 0001-01-01 or 9999-12-31, which do not even convert
    # to UTC (OverflowError): the same years that POST /sms accepts (sms.parse_time).
    if local is None or not 2000 <= local.year <= 2999:
        log.warning("dinstar SMS on port %s: timestamp %r is not YYYY-MM-DD HH:MM:SS of a "
                    "year from 2000 to 2999; dated on arrival", port, stamp[:40])
        return None
    return local.replace(tzinfo=tz).astimezone(dt.timezone.utc)
