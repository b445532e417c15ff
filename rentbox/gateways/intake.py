"""The generic intakes: JSON SMS for any forwarder or script (`POST /sms`), and presence
reports (`POST /presence`)."""

from __future__ import annotations

from rentbox import presence
from rentbox.errors import InvalidInput
from rentbox.gateways.common import item, optional_id, port_name
from rentbox.sms import IncomingSms, parse_time


def parse_json_sms(body: dict) -> IncomingSms:
    """`POST /sms`: `to` (the receiving number) or `port` (the pool port it arrived on, for
    a forwarder that knows its modem but not its number), `from`, `text`, and optionally
    `id` and `received_at`."""
    to = body.get("to")
    if isinstance(to, int) and not isinstance(to, bool):
        to = str(to)
    port = body.get("port")
    if port is not None:
        port = port_name(port)
    if to is None and port is not None:
        to = ""
    elif not isinstance(to, str) or not to.strip():
        raise InvalidInput("to is required: the receiving number (or port: the pool port "
                           "it arrived on)")
    sender = body.get("from")
    if not isinstance(sender, str) or not sender.strip():
        raise InvalidInput("from is required: the sender's name or number")
    text = body.get("text")
    if not isinstance(text, str):
        raise InvalidInput("text is required and must be a string")
    return IncomingSms(
        source="api", to=to.strip() or None, port=port, sender=sender, text=text,
        source_id=optional_id(body.get("id"), "id"),
        received_at=parse_time(body.get("received_at"), "received_at"),
    )


def parse_presence(body: dict) -> presence.Report:
    """`POST /presence`: `{"gateway": "box-1", "numbers": [...], "ports": [...]}`, either
    list or both (a list replaces the gateway's previous report), or neither (a
    heartbeat). Numbers and ports that match nothing are answered back, not refused; a
    body of the wrong shape is."""
    gateway = presence.check_gateway(body.get("gateway"))
    lists = {}
    for field in ("numbers", "ports"):
        value = body.get(field)
        if value is None:
            lists[field] = None
            continue
        if not isinstance(value, list):
            raise InvalidInput(f"{field} must be a list")
        if len(value) > presence.MAX_REPORT_ITEMS:
            raise InvalidInput(f"{field} lists more than {presence.MAX_REPORT_ITEMS} items")
        lists[field] = tuple(item(entry, field) for entry in value)
    return presence.Report(gateway, numbers=lists["numbers"], ports=lists["ports"])
