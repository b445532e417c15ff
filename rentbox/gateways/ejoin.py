"""Ejoin (and the Skyline and ACOM boxes that share its firmware): the box's HTTP pushes to
`POST /sms/ejoin`, received SMS and port states.

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
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import re

from rentbox import presence
from rentbox.errors import InvalidInput
from rentbox.gateways.common import (PortState, Row, content_id, decode_text, item, parse_rows,
                                     port_name, receiving_number, text_field)
from rentbox.sms import IncomingSms

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
    """One row of a `recv-sms` push; None for a delivery report."""
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
