"""Inbound SMS: normalise, de-duplicate, store, and route to the open rental of the number.

Every source (the JSON intake, the gateways' adapters, the CLI) goes through `accept_sms`,
which commits the SMS, durably, before the source is told "accepted". An SMS for a
number held by an open rental belongs to that rental and enters the outbox (`pending`);
any other SMS is kept, marked `unrouted`, and never pushed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from rentbox import events, operations, pool, presence
from rentbox.clock import Clock, from_text, to_text
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("rentbox.sms")

SOURCES = ("api", "smsgate", "cli", "ejoin", "dinstar", "goip")
# Longer than any joined multipart SMS (255 parts of 153 characters is about 39,000).
# Over HTTP the 64 KiB body limit comes first for texts that JSON-escape to several bytes
# per character (about 10,000 Cyrillic characters with \u escapes).
MAX_TEXT_CHARS = 40_000
MAX_SENDER_CHARS = 100
PUSH_STATES = ("unrouted", "pending", "delivered", "failed", "expired")
# How far a source's clock may be behind ours: an SMS received earlier than this before
# a rental started belongs to an earlier renter and is not pushed.
ROUTING_SKEW_S = 300


@dataclasses.dataclass(frozen=True)
class IncomingSms:
    """An SMS as a source hands it over, before rentbox has looked at it."""

    source: str
    sender: str
    text: str
    to: str | None = None            # receiving number, any common notation
    port: str | None = None          # gateway slot, used when `to` is unknown
    source_id: str | None = None     # the source's own message id (for de-duplication)
    received_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The answer to a source: the SMS id, and whether this was a redelivery."""

    sms_id: int
    duplicate: bool      # this source id was stored before; nothing new was stored
    push_state: str


def accept_sms(db: Database, clock: Clock, incoming: IncomingSms, rules: Rules) -> Accepted:
    """Validate and store one SMS, routed to its rental. Idempotent per source id.

    Storing an SMS does not meet a rental's guard window: only Onlinesim accepting it
    does (push.py). The SMS is dated by `clock` once the write lock is held.
    """
    from rentbox import push  # here: read commands import this module, not the pusher

    sender, text = _validate(incoming)
    number = pool.normalize_number(incoming.to) if incoming.to else None
    port = (incoming.port or "").strip() or None
    if number is None and port is None:
        raise InvalidInput("the receiving number is required")
    if incoming.received_at is not None and incoming.received_at.tzinfo is None:
        raise InvalidInput("received_at needs a timezone (e.g. 2026-11-26T10:00:00Z)")
    # A source's ids are only unique per source and receiving line.
    dedupe_key = (f"{incoming.source}:{number or port}:{incoming.source_id}"
                  if incoming.source_id is not None else None)
    with db.transaction():
        now = clock.now()
        received_at = incoming.received_at or now
        if dedupe_key is not None:
            known = db.row("SELECT id, push_state FROM sms WHERE dedupe_key = ?", (dedupe_key,))
            if known:
                return Accepted(known["id"], True, known["push_state"])
        # Rules due by now first: a rental whose guard window has just passed no longer
        # holds its number, and this SMS must not count for it.
        operations.apply_due_rules(db, now, rules)
        if number is not None:
            candidates = db.rows("SELECT id, number, operation_id FROM numbers"
                                 " WHERE number = ?", (number,))
        else:
            candidates = db.rows("SELECT id, number, operation_id FROM numbers"
                                 " WHERE port = ? AND removed_at IS NULL LIMIT 2", (port,))
            if len(candidates) > 1:
                log.warning("SMS on gateway port %s: several numbers have this port, "
                            "so it cannot be routed; give each SIM its own port", port)
                candidates = []
            elif not candidates:
                log.warning("SMS on gateway port %s: no pool number has this port, so it is "
                            "kept unrouted; import the SIM's number with this port", port)
        holder = candidates[0] if candidates else None
        number = holder["number"] if holder else number
        number_id = holder["id"] if holder else None
        operation_id = holder["operation_id"] if holder else None
        holding = (db.row("SELECT created_at, service FROM operations WHERE id = ?",
                          (operation_id,)) if operation_id is not None else None)
        if holding is not None and _before(holding, received_at):
            # A gateway that held an SMS back must not hand the last renter's SMS to the
            # next one.
            log.info("SMS for +%s received before its current rental began: kept unrouted",
                     number)
            operation_id = None
        if number_id is not None:
            presence.note_sms(db, now, rules, number_id)  # its SIM is evidently in a port
        state = "pending" if operation_id is not None else "unrouted"
        stamp = to_text(now)
        sms_id = db.execute(
            "INSERT INTO sms (source, dedupe_key, number, port, number_id, operation_id, sender,"
            " text, received_at, created_at, push_state, next_attempt_at, route)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (incoming.source, dedupe_key, number, port, number_id, operation_id, sender, text,
             to_text(received_at), stamp, state, stamp if state == "pending" else None,
             push.route_of(holding["service"]) if state == "pending" else None),
        ).lastrowid
        events.record(db, now, "sms_received", operation_id=operation_id, number_id=number_id,
                      sms_id=sms_id, source=incoming.source, routed=state == "pending")
    # One line per SMS taken in; never its text (one-time codes do not belong in logs).
    log.info("SMS %d for %s taken in from %s: %s", sms_id,
             f"+{number}" if number else f"port {port}", incoming.source,
             f"queued for operation {operation_id}" if state == "pending"
             else "kept, no open operation holds the number")
    return Accepted(sms_id, False, state)


def _before(operation: dict, received_at: dt.datetime) -> bool:
    """Whether an SMS was received (by the source's clock) before the operation started,
    allowing ROUTING_SKEW_S for clocks that disagree."""
    started = from_text(operation["created_at"])
    return received_at < started - dt.timedelta(seconds=ROUTING_SKEW_S)


def _validate(incoming: IncomingSms) -> tuple[str, str]:
    if incoming.source not in SOURCES:
        raise InvalidInput(f"unknown SMS source {incoming.source!r}")
    if not isinstance(incoming.sender, str) or not incoming.sender.strip():
        raise InvalidInput("the sender ('from') is required")
    if not isinstance(incoming.text, str):
        raise InvalidInput("the text must be a string")
    if len(incoming.sender) > MAX_SENDER_CHARS:
        raise InvalidInput(f"the sender is longer than {MAX_SENDER_CHARS} characters")
    if len(incoming.text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"the text is longer than {MAX_TEXT_CHARS} characters")
    if incoming.source_id is not None and not (0 < len(incoming.source_id) <= 200):
        raise InvalidInput("the source's message id must be 1 to 200 characters")
    # Exactly as received: no stripping or normalising of the text (protocol.md 4.1).
    return incoming.sender.strip(), incoming.text


def parse_time(value: object, field: str) -> dt.datetime | None:
    """An ISO-8601 time with a timezone, as gateways send it, in UTC; None stays None.

    Taken: every RFC 3339 `date-time` written with a year from 2000 to 2999, which is what
    the OpenAPI document allows (`format: date-time`, `pattern: ^2[0-9]{3}-`), and Python's
    other ISO forms (a space for `T`, no seconds) with a zone. The bound is on the year as
    written, in the time's own zone: `2000-01-01T01:00:27+05:48` (1999 in UTC) is taken,
    and no time taken overflows on its conversion to UTC. RFC 3339's lower-case `z` and its
    leap second (`23:59:60` UTC, read as 23:59:59.999999) are taken too.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be an ISO-8601 string")
    text = value.strip()
    # Python reads neither a lower-case `z` nor a 60th second; RFC 3339 allows both.
    if text.endswith("z"):
        text = text[:-1] + "Z"
    is_leap_second = text[13:14] == ":" and text[16:19] == ":60"
    if is_leap_second:
        # The last microsecond of its minute: still in its minute, its day and its year.
        rest = text[19:]
        if rest[:1] in (".", ",") and rest[1:2].isdigit():
            rest = rest[1:].lstrip("0123456789")
        text = f"{text[:16]}:59.999999{rest}"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{field} is not an ISO-8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{field} needs a timezone (e.g. 2026-11-26T10:00:00Z)")
    if not 2000 <= moment.year <= 2999:
        # Before 2000: a clock that was never set. The upper bound keeps the conversion to
        # UTC (an offset under 24 hours) inside what datetime and the stored text hold.
        raise InvalidInput(f"{field} must be written with a year from 2000 to 2999: "
                           f"{value!r}")
    moment = moment.astimezone(dt.timezone.utc)
    if is_leap_second and (moment.hour, moment.minute) != (23, 59):
        raise InvalidInput(f"{field} is not an ISO-8601 time: {value!r} (a leap second is "
                           "23:59:60 in UTC)")
    return moment


# ---------------------------------------------------------------------------------------
# The CLI's view of the SMS
# ---------------------------------------------------------------------------------------


def list_sms(
    db: Database,
    *,
    number: str | None = None,
    operation_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> list[dict]:
    """SMS, newest first, with their delivery state (`rentbox sms list`)."""
    where, params = ["1"], []
    if number is not None:
        where.append("number = ?")
        params.append(pool.normalize_number(number))
    if operation_id is not None:
        where.append("operation_id = ?")
        params.append(operation_id)
    if state is not None:
        if state not in PUSH_STATES:
            raise InvalidInput(f"state must be one of {', '.join(PUSH_STATES)}")
        where.append("push_state = ?")
        params.append(state)
    params.append(limit)
    return db.rows(
        "SELECT id, number, port, operation_id, sender, text, received_at, push_state,"
        " attempts, next_attempt_at, last_error, delivered_at FROM sms"
        f" WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        params,
    )


def retry_sms(db: Database, now: dt.datetime, sms_id: int) -> None:
    """Put an SMS whose push ended in a terminal answer back into the outbox."""
    from rentbox import push

    with db.transaction():
        row = db.row("SELECT sms.id, push_state, operation_id, sms.number_id,"
                     " operations.service, operations.state = 'closed'"
                     " OR operations.failed_at IS NOT NULL"
                     " OR operations.lapsed_at IS NOT NULL AS ended"
                     " FROM sms LEFT JOIN operations ON operations.id = sms.operation_id"
                     " WHERE sms.id = ?", (sms_id,))
        if row is None:
            raise NotFound(f"no SMS {sms_id}")
        if row["push_state"] != "failed":
            raise Conflict(f"SMS {sms_id} is {row['push_state']}; only a failed SMS is retried")
        if row["ended"]:
            # Onlinesim routes a push by the number, which may be another renter's now.
            raise Conflict(f"SMS {sms_id} belongs to rental {row['operation_id']}, which has "
                           "ended: it is never pushed again (the number may be rented to "
                           "someone else)")
        db.execute("UPDATE sms SET push_state = 'pending', next_attempt_at = ?, route = ?"
                   " WHERE id = ? AND push_state = 'failed'",
                   (to_text(now), push.route_of(row["service"]), sms_id))
        events.record(db, now, "sms_requeued", operation_id=row["operation_id"],
                      number_id=row["number_id"], sms_id=sms_id, reason="retried by hand")
