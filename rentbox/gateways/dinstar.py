"""Dinstar (DWG and UC gateways): the box's pushes to `POST /sms/dinstar` (Push SMS and
Push Register Status), its clock, and the answer of its `query_incoming_sms` (catch-up
polling, gateways/poll.py).

Push SMS: `{"sn": "<serial>", "sms": [{"incoming_sms_id", "port", "number" (the sender),
"smsc", "timestamp", "text", "imsi"?}, …]}`. The receiving number is not included: an SMS
goes to the pool number whose `port` is `<sn>:<port>` (`dbd2-0325-0044-0088:1`), with
`port` as the push carries it. De-duplicated on (sn, incoming_sms_id), which the answer of
`query_incoming_sms` carries too: an SMS pushed and polled is stored once.

Time: `timestamp` ("YYYY-MM-DD HH:MM:SS") is the box's local time, read in the time zone
RENTBOX_DINSTAR_TZ (UTC unless set); a row whose timestamp does not parse is dated on
arrival rather than lost. A push leaves the box as the SMS arrives, so a pushed SMS whose
time is more than CLOCK_SKEW_S away from rentbox's clock says that the box's clock, or
RENTBOX_DINSTAR_TZ, is wrong, not that the SMS is old: it is dated on arrival, and the
box's offset is noted (`note_clock`, once per box, with a warning naming the setting).
Otherwise a box west of UTC read as UTC would have every SMS kept unrouted as "received
before the rental began" (sms.ROUTING_SKEW_S). SMS taken by the catch-up poll may be old
by design, so they keep their time, corrected by the offset the box's pushes showed.

Push Register Status: `{"sn": …, "register": [{"port", "iccid", "imsi", "number",
"status": "up"|"down", "sequence", "slot"?}, …]}` (ICCID and IMSI are the text `<NULL>`
when down), sent when a port's SIM registers or drops. Each port is its own presence
gateway (`dinstar:<sn>:<port>`): online while `up`, offline at once when `down`; the
number of an `up` SIM is checked against the pool. The box does not repeat it, so these
states count for the presence window like any report: the catch-up poll reads the ports'
states (`get_port_info`) every pass and keeps them current.

The box's other pushes (SMS results, delivery states, USSD, CDR, device state) are
acknowledged and ignored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import zoneinfo

from rentbox import meta, presence
from rentbox.clock import Clock
from rentbox.db import Database
from rentbox.errors import InvalidInput
from rentbox.gateways.common import (PortState, Row, content_id, item, optional_id,
                                     parse_rows, port_name, text_field)
from rentbox.sms import ROUTING_SKEW_S, IncomingSms

log = logging.getLogger("rentbox.gateways")

SOURCE = "dinstar"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# How far a pushed SMS's time may be from rentbox's clock before the box's clock (or the
# time zone it is read in) counts as wrong. No more than sms.ROUTING_SKEW_S: an SMS dated
# by a box that far behind would be kept unrouted as received before its rental began.
# A push leaves the box within seconds of the SMS, so more than minutes is the clock.
CLOCK_SKEW_S = ROUTING_SKEW_S
# What a down SIM's ICCID and IMSI say in a register push.
NULL = "<NULL>"
# Port states of `get_port_info` in which the SIM receives SMS.
REGISTERED = "REGISTER_OK"
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


@dataclasses.dataclass(frozen=True)
class Push:
    """One push of the box: its SMS rows (Push SMS), or its ports' states (Push Register
    Status), or neither (a push rentbox does not use)."""

    serial: str | None = None
    rows: list[Row] | None = None
    ports: list[PortState] | None = None
    # How far the box's clock is ahead of rentbox's (negative: behind), by the newest
    # dated SMS of the push; None when no row had a usable time.
    clock_offset_s: float | None = None


def parse_push(body: dict, tz: dt.tzinfo, now: dt.datetime) -> Push:
    """A push of the box, received at `now`."""
    if "sms" in body:
        serial = serial_of(body)
        rows = body["sms"]
        if not isinstance(rows, list):
            raise InvalidInput("sms must be a list of SMS")
        stamps: list[dt.datetime] = []

        def live(row: object) -> IncomingSms:
            incoming = parse_row(row, serial, tz)
            if incoming.received_at is None:
                return incoming
            stamps.append(incoming.received_at)
            if abs((incoming.received_at - now).total_seconds()) <= CLOCK_SKEW_S:
                return incoming
            return dataclasses.replace(incoming, received_at=None)  # dated on arrival

        parsed = parse_rows(rows, live)
        offset = (max(stamps) - now).total_seconds() if stamps else None
        return Push(serial, rows=parsed, clock_offset_s=offset)
    if "register" in body:
        serial = serial_of(body)
        return Push(serial, ports=register_states(body["register"], serial))
    return Push()


def parse_incoming(body: dict, tz: dt.tzinfo, now: dt.datetime,
                   clock_offset_s: float | None) -> tuple[str, list[Row], int | None]:
    """The answer of `query_incoming_sms` (`{"error_code": 200, "sn", "sms": [rows as
    pushed], "read", "unread"}`): (serial, rows, highest incoming_sms_id). The box held
    these SMS, so each keeps its time, less `clock_offset_s` (the box's offset as its
    pushes showed it, `known_clock_offset`); a time still in the future beyond
    CLOCK_SKEW_S is a clock nobody measured yet, and dated on arrival."""
    serial = serial_of(body)
    rows = body.get("sms") or []
    if not isinstance(rows, list):
        raise InvalidInput("sms must be a list of SMS")
    shift = dt.timedelta(seconds=clock_offset_s or 0)

    def held(row: object) -> IncomingSms:
        incoming = parse_row(row, serial, tz)
        if incoming.received_at is None:
            return incoming
        at = incoming.received_at - shift
        if (at - now).total_seconds() > CLOCK_SKEW_S:
            at = None
        return dataclasses.replace(incoming, received_at=at)

    ids = [int(i) for i in (str(r.get("incoming_sms_id", "")).strip()
                            for r in rows if isinstance(r, dict)) if i.isdigit()]
    return serial, parse_rows(rows, held), max(ids, default=None)


def parse_row(row: object, serial: str, tz: dt.tzinfo) -> IncomingSms:
    """One SMS of a push (or of the answer of `query_incoming_sms`), dated as the box
    stamped it."""
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


def register_states(events: object, serial: str) -> list[PortState]:
    """The ports' states of a Push Register Status, in the order the box numbered them."""
    if not isinstance(events, list) or len(events) > presence.MAX_REPORT_ITEMS:
        raise InvalidInput("register must be a list of port states")
    states = [_register_state(event, serial) for event in events]
    sequences = [e.get("sequence") for e in events]
    if all(isinstance(s, int) and not isinstance(s, bool) for s in sequences):
        # Two events of one port in one push: the later one is the state now.
        states = [s for _, s in sorted(zip(sequences, states), key=lambda pair: pair[0])]
    return states


def _register_state(event: object, serial: str) -> PortState:
    if not isinstance(event, dict):
        raise InvalidInput("a port state must be an object")
    port = port_name(f"{serial}:{port_name(event.get('port'))}")
    status = event.get("status")
    if not isinstance(status, str) or status.strip().lower() not in ("up", "down"):
        raise InvalidInput("status must be up or down")
    return port_state(port, online=status.strip().lower() == "up",
                      number=event.get("number"))


def port_states(body: dict, serial: str) -> list[PortState]:
    """The ports' states in the answer of `get_port_info` (`{"error_code": 200, "sn",
    "info": [{"port", "reg", "number", …}, …]}`): a port is online while its `reg` is
    REGISTER_OK (NO_SIM, POWER_OFF, UNREGISTER, SEARCHING_NETWORK, … are not)."""
    info = body.get("info")
    if not isinstance(info, list) or len(info) > presence.MAX_REPORT_ITEMS:
        raise InvalidInput("info must be a list of ports")
    states = []
    for entry in info:
        if not isinstance(entry, dict):
            raise InvalidInput("a port's information must be an object")
        port = port_name(f"{serial}:{port_name(entry.get('port'))}")
        reg = entry.get("reg")
        states.append(port_state(port, online=isinstance(reg, str) and (
            reg.strip().upper() == REGISTERED), number=entry.get("number")))
    return states


def warn_register_only(serial: str) -> None:
    """Register pushes alone do not keep a box's SIMs online: say how to (once a box)."""
    log.warning("dinstar box %s pushes its ports' register states only when they change, "
                "and each counts for RENTBOX_PRESENCE_S like any report: list the box in "
                "RENTBOX_POLL_BOXES so that rentbox reads its ports' states every "
                "RENTBOX_POLL_EVERY_S, or its SIMs go offline when that window ends", serial)


def port_state(port: str, *, online: bool, number: object) -> PortState:
    """A port's state as its own presence gateway `dinstar:<sn>:<port>`; the SIM's number
    (when the box knows it) is checked against the pool while it is online."""
    number = text_field(number, "number").strip()
    known = online and number and number.upper() != NULL
    return PortState(presence.Report(presence.check_gateway(f"{SOURCE}:{port}"),
                                     ports=(port,) if online else ()),
                     port, item(number, "number") if known else None)


def serial_of(body: dict) -> str:
    """The box's serial number (`sn`), which every push and answer of the box carries."""
    serial = optional_id(body.get("sn"), "sn")
    if serial is None:
        raise InvalidInput("sn is required: the serial number of the box")
    return port_name(serial, "sn")


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


# ---------------------------------------------------------------------------------------
# The box's clock
# ---------------------------------------------------------------------------------------

# meta key: boxes whose clock (read in RENTBOX_DINSTAR_TZ) is off: {sn: {offset_s, tz, at}}.
CLOCK_OFF = "gateways.dinstar_clock"


def note_clock(db: Database, clock: Clock, serial: str | None, offset_s: float | None,
               tz_name: str) -> None:
    """A push of box `serial` showed its clock `offset_s` ahead of rentbox's. Beyond
    CLOCK_SKEW_S, say so once (a WARNING naming RENTBOX_DINSTAR_TZ) and keep the offset
    for the catch-up poll; said again only when the offset changes by as much, and
    cleared once the box agrees again. Writes only when what is noted changes."""
    if serial is None or offset_s is None:
        return
    off = abs(offset_s) > CLOCK_SKEW_S
    noted = (meta.get(db, CLOCK_OFF) or {}).get(serial)
    if off and noted and abs(noted["offset_s"] - offset_s) <= CLOCK_SKEW_S:
        return
    if not off and not noted:
        return
    meta.put_entry(db, clock, CLOCK_OFF, serial,
                   {"offset_s": round(offset_s), "tz": tz_name} if off else None)
    if off:
        log.warning("dinstar box %s stamps its SMS %s %s rentbox's clock, read in "
                    "RENTBOX_DINSTAR_TZ=%s: its SMS are dated on arrival instead; set "
                    "RENTBOX_DINSTAR_TZ to the box's time zone (e.g. Europe/Moscow or "
                    "-05:00) or correct the box's clock", serial, _duration(abs(offset_s)),
                    "ahead of" if offset_s > 0 else "behind", tz_name or "UTC")
    else:
        log.info("dinstar box %s: its clock agrees with rentbox's again", serial)


def known_clock_offset(db: Database, serial: str) -> float | None:
    """The offset of box `serial`'s clock as its pushes last showed it, when it is off."""
    noted = (meta.get(db, CLOCK_OFF) or {}).get(serial)
    return float(noted["offset_s"]) if noted else None


def clocks_off(db: Database) -> dict[str, dict]:
    """Boxes whose clock is off (see `note_clock`): {sn: {offset_s, tz, at}}."""
    return meta.get(db, CLOCK_OFF) or {}


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
