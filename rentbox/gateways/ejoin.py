"""Ejoin (and the Skyline and ACOM boxes that share its firmware): the box's HTTP pushes to
`POST /sms/ejoin`, received SMS and port states, and its web UI's "SMS to HTTP" forward.

Received SMS: `{"type": "recv-sms", "sms_num": N, "sms": [[kind, port, unix_time, sender,
recipient, content_b64, …], …]}`. `kind` 0 is an SMS, 1 a delivery report (acknowledged,
not stored); extra trailing elements (ICCID, IMSI, an id on some firmware) are ignored.
`content_b64` decodes to the text itself, or to a CRLF header block (`Sender:`,
`Receiver: "<port>" <number>`, `SMSC:`, `SCTS:`, sometimes `Slot:`), a blank line, then the
text. The receiving number is the row's `recipient`, else the header block's `Receiver:`
number; when neither is a valid number, the SMS goes to the pool number whose `port` is
the row's port exactly as the box sends it (`1.01`, `1A`, `12.sp256.101`), prefixed with
`<box>:` when the push URL names the box (`/sms/ejoin?box=gw1`: ports `gw1:1.01`), which
tells several boxes apart. The box sends no message id: an SMS is known again by its port,
time, sender and content, so a retransmitted push stores nothing twice.

Port states: `{"type": "port-status", "port": …, "st": "3 …", "sn": …}` when a port
changes, and `{"type": "dev-status", "status": [<port states>]}` periodically. Each port
is its own presence gateway (`ejoin:<pool port>`): online while its state is registered
(3), in a call (4) or without balance (5) and its card is the active one; otherwise its
number goes offline. A state's `sn` (the SIM's number, when the box knows it) is checked
against the pool. Any other push type is acknowledged and ignored.

The web UI's forward (`POST /sms/ejoin/<token>`, see `parse_forward`): one SMS per request,
the header block and text as the body's plain text, `?port=61A&sender=…&mac=…&iccid=…`
appended to the configured URL. Its port is named in the web UI's letter notation (`61A`)
where the pushes above say `61.01`: it goes to whichever of the two the pool uses.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import re

from rentbox import presence
from rentbox.clock import Clock
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import InvalidInput
from rentbox.gateways.common import (PortState, Row, content_id, decode_text, item, parse_rows,
                                     port_name, receiving_number, text_field)
from rentbox.sms import Accepted, IncomingSms, accept_sms

SOURCE = "ejoin"
# Port states in which the SIM is registered on its network and receives SMS.
ONLINE_STATES = frozenset({3, 4, 5})
# The header block that some firmware puts before the text (keys as the box writes them).
_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z_-]*):[ \t]?(.*)$")
_RECEIVER = re.compile(r'^"([^"]*)"\s*(.*)$')
_BOX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


@dataclasses.dataclass(frozen=True)
class Push:
    """One push of the box: its SMS rows (a `recv-sms` push) or its port states."""

    rows: list[Row] | None = None
    ports: list[PortState] = dataclasses.field(default_factory=list)


def check_box(box: str | None) -> str | None:
    """The box name from the push URL (`?box=`), if any."""
    if box is None:
        return None
    if not _BOX.match(box):
        raise InvalidInput("box must be 1 to 40 letters, digits and . _ - (e.g. gw1)")
    return box


def parse_push(body: dict, box: str | None = None) -> Push:
    """A push of the box, by its `type`."""
    box = check_box(box)
    kind = body.get("type")
    if kind == "recv-sms":
        rows = body.get("sms")
        if not isinstance(rows, list):
            raise InvalidInput("sms must be a list of SMS")
        return Push(rows=parse_rows(rows, lambda row: parse_row(row, box)))
    if kind == "port-status":
        return Push(ports=[port_state(body, box)])
    if kind == "dev-status":
        states = body.get("status")
        if not isinstance(states, list) or len(states) > presence.MAX_REPORT_ITEMS:
            raise InvalidInput("status must be a list of port states")
        return Push(ports=[port_state(s, box) for s in states])
    if not isinstance(kind, str):
        raise InvalidInput("type is required (recv-sms, port-status or dev-status)")
    return Push()


def parse_row(row: object, box: str | None) -> IncomingSms | None:
    """One row of a `recv-sms` push; None for a delivery report. A row is the same for a
    part of a long SMS as for a whole one (nothing names its message, place or count): each
    part is an SMS of its own (README, "Long SMS")."""
    if not isinstance(row, list) or len(row) < 6:
        raise InvalidInput("an SMS must be a list: kind, port, time, sender, recipient, "
                           "content")
    kind = _integer(row[0], "kind")
    if kind == 1:
        return None
    if kind != 0:
        raise InvalidInput(f"kind must be 0 (an SMS) or 1 (a delivery report), not {kind}")
    port = _pool_port(port_name(row[1]), box)
    sent_at = _integer(row[2], "time")
    sender = text_field(row[3], "sender").strip()
    recipient = text_field(row[4], "recipient").strip()
    content = text_field(row[5], "content")
    try:
        raw = base64.b64decode("".join(content.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("content is not base64") from None
    headers, text = split_header_block(decode_text(raw))
    receiver = _RECEIVER.match(headers.get("Receiver", ""))
    to = receiving_number(recipient, receiver.group(2) if receiver else None)
    sender = sender or headers.get("Sender", "").strip()
    if not sender:
        raise InvalidInput("the sender is missing")
    return IncomingSms(
        source=SOURCE, to=to, port=port, sender=sender[:100], text=text,
        source_id=content_id(port, sent_at, sender, content),
        received_at=(dt.datetime.fromtimestamp(sent_at, dt.timezone.utc)
                     if 0 < sent_at < 2**32 else None),
    )


def split_header_block(decoded: str) -> tuple[dict[str, str], str]:
    """({header: value}, text) when the content starts with the box's header block (first
    line `Sender: …`, then `Key: value` lines up to a blank line); else ({}, content)."""
    head, blank, text = decoded.partition("\r\n\r\n")
    if not blank:
        head, blank, text = decoded.partition("\n\n")
    if not blank or not head.startswith("Sender:"):
        return {}, decoded
    headers = {}
    for line in head.splitlines():
        match = _HEADER_LINE.match(line)
        if not match:
            return {}, decoded  # not a header block after all: the text is all content
        headers[match.group(1)] = match.group(2).strip()
    return headers, text


def port_state(state: object, box: str | None) -> PortState:
    """One port's state (a `port-status` push, or an item of `dev-status`)."""
    if not isinstance(state, dict):
        raise InvalidInput("a port state must be an object")
    port = _pool_port(port_name(state.get("port")), box)
    code = _state_code(state.get("st", state.get("status")))
    active = state.get("active", 1) not in (0, "0")
    number = text_field(state.get("sn"), "sn").strip() if state.get("sn") is not None else ""
    online = code in ONLINE_STATES and active
    gateway = presence.check_gateway(f"{SOURCE}:{port}")
    return PortState(presence.Report(gateway, ports=(port,) if online else ()), port,
                     item(number, "sn") if online and number else None)


def _pool_port(port: str, box: str | None) -> str:
    return f"{box}:{port}" if box else port


def _state_code(value: object) -> int | None:
    """`st` is a code with its meaning (`"3 Registered"`), or the bare code."""
    match = re.match(r"^\s*(\d+)", str(value)) if isinstance(value, (str, int)) else None
    return int(match.group(1)) if match else None


def _integer(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{field} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise InvalidInput(f"{field} must be an integer")


# ---------------------------------------------------------------------------------------
# The web UI's "SMS to HTTP" forward
# ---------------------------------------------------------------------------------------

# A port in the box's two notations: `61.01` (port 61, slot 1: its API pushes, port states
# and the `Receiver:` line) and `61A` (the forward's `?port=`, the web UI's port list).
_DOT_PORT = re.compile(r"^(\d{1,3})\.(\d{2})$")
_LETTER_PORT = re.compile(r"^(\d{1,3})([A-Za-z])$")


@dataclasses.dataclass(frozen=True)
class Forward:
    """One SMS of the web UI's forward, and every name the box gives its port (pool ports,
    with the box's prefix), the preferred first."""

    sms: IncomingSms
    ports: tuple[str, ...]


def is_forward(raw: bytes, content_type: str | None) -> bool:
    """Whether a body is the web UI's forward (a text block, sent as
    `application/octet-stream`) rather than an API push (a JSON object)."""
    if (content_type or "").split(";")[0].strip().lower() == "application/json":
        return False
    return raw.lstrip()[:1] not in (b"{", b"[")


def mended_query(query_string: str) -> str:
    """The query string as the configured URL meant it. The forward appends
    `?port=…&sender=…&mac=…&iccid=…` to the URL as configured, even when it has a query
    already: `?box=gw1` becomes `?box=gw1?port=61A&…`, and `box` would read `gw1?port=61A`.
    A `?` inside a query string is that seam (a `?` in a value arrives as `%3F`)."""
    return query_string.replace("?", "&")


def parse_forward(raw: bytes, *, port: str | None, sender: str | None,
                  box: str | None = None) -> Forward:
    """The web UI's "SMS to HTTP" forward: the body is the SMS as a text block (UTF-8, or
    UCS2): `Sender: <sender>`, `Receiver: "<port>" <number>` (the number often left out),
    `SMSC:`, `SCTS: <the SMS centre's time stamp>`, sometimes `Slot:`, each line ending in
    CRLF, a blank line, then the text; the box appends `port` (`61A`) and `sender` (and
    `mac`, `iccid`) to the URL's query.

    The sender is the header block's (the query's `+` may arrive as a space), else the
    query's; the receiving number is `Receiver:`'s when it is a valid international number,
    and wins over the port, as in the API push. The port is the query's, else the one
    `Receiver:` names, in both the box's notations (`accept_forward` takes the one the pool
    uses). No message id comes with it: the SMS is known again by its port, sender, `SCTS:`
    and text. The forward goes out as the SMS arrives, so rentbox dates it on arrival
    rather than read `SCTS:`, the SMS centre's local time in a notation that varies by
    firmware."""
    box = check_box(box)
    if not raw.strip():
        raise InvalidInput("the body is empty: the forward sends the SMS as a text block")
    headers, text = split_header_block(decode_text(raw).removeprefix("\ufeff"))
    receiver = headers.get("Receiver", "").strip()
    quoted = _RECEIVER.match(receiver)
    receiver_port, number = (quoted.group(1).strip(), quoted.group(2)) if quoted else ("",
                                                                                     receiver)
    names: list[str] = []
    for given, field in ((port, "port"), (receiver_port, "Receiver")):
        if given and given.strip():
            try:
                names += _port_notations(port_name(given, field))
            except InvalidInput:
                if field == "port":
                    raise
                # A `Receiver:` port that names no port rentbox can take: the query's decides.
    if not names:
        raise InvalidInput("the port is missing: the box appends ?port=… to the URL, and "
                           "the text has no Receiver: \"<port>\" line")
    sender_name = headers.get("Sender", "").strip() or (sender or "").strip()
    if not sender_name:
        raise InvalidInput("the sender is missing: no Sender: line and no ?sender=")
    ports = tuple(dict.fromkeys(_pool_port(name, box) for name in names))
    return Forward(
        sms=IncomingSms(source=SOURCE, to=receiving_number(number), port=ports[0],
                        sender=sender_name[:100], text=text,
                        source_id=content_id("forward", ports[0], sender_name,
                                             headers.get("SCTS", ""), text)),
        ports=ports)


def accept_forward(db: Database, clock: Clock, forward: Forward, rules: Rules) -> Accepted:
    """Store a forwarded SMS (`sms.accept_sms`) on the pool port that the pool names it by:
    the first of its names that a pool number has, else its first (dot notation, as the
    box's API pushes and port states name it), under which `rentbox sms list` shows it
    unrouted."""
    marks = ", ".join("?" * len(forward.ports))
    known = {row["port"] for row in db.rows(
        f"SELECT port FROM numbers WHERE removed_at IS NULL AND port IN ({marks})",
        forward.ports)}
    port = next((name for name in forward.ports if name in known), forward.ports[0])
    return accept_sms(db, clock, dataclasses.replace(forward.sms, port=port), rules)


def _port_notations(port: str) -> list[str]:
    """A port's names, the box's dot notation first: `61A` → `61.01`, `61A`; `06.01` →
    `6.01`, `06.01`, `6A`; any other port (`12.sp256.101`) as it is."""
    letter = _LETTER_PORT.match(port)
    if letter:
        return [f"{int(letter.group(1))}.{ord(letter.group(2).upper()) - 64:02d}", port]
    dot = _DOT_PORT.match(port)
    if dot and 1 <= int(dot.group(2)) <= 26:
        number, slot = int(dot.group(1)), int(dot.group(2))
        return [f"{number}.{slot:02d}", port, f"{number}{chr(64 + slot)}"]
    return [port]
