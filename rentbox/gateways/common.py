"""What the gateway adapters share: ids, a push of several SMS, the state of a box's ports,
and a limit on the warnings that anyone who can reach a gateway's way in can cause."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from typing import Callable, Iterable, Union

from rentbox import meta, pool, presence, sms
from rentbox.clock import Clock
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import InvalidInput
from rentbox.gateways.notes import PORT_MISMATCH

log = logging.getLogger("rentbox.gateways")

# Longest number or port accepted from a box.
MAX_ITEM_CHARS = 64
# What a port may look like: it becomes part of a presence gateway name and of log lines.
_PORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,63}$")
# A reported number agrees with the pool's when their last this-many digits agree, so that a
# box showing a national notation (8 916 …, 0176 …) is not taken for another SIM.
SAME_NUMBER_DIGITS = 9


def optional_id(value: object, field: str) -> str | None:
    """An id a box sends as a string or an integer; None when absent."""
    if value is None:
        return None
    value = _integral(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(f"{field} must be a string or an integer")
    text = str(value).strip()
    if not text:
        raise InvalidInput(f"{field} must not be empty")
    return text


def _integral(value: object) -> object:
    """`5.0` as `5`: the same JSON number (JSON Schema's integer); anything else as is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def item(value: object, field: str) -> str:
    """One number or port: a string (or an integer, as numbers are often sent), kept as
    sent."""
    value = _integral(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or len(value) > MAX_ITEM_CHARS:
        raise InvalidInput(f"each item of {field} must be a string of at most "
                           f"{MAX_ITEM_CHARS} characters")
    return value


def port_name(value: object, field: str = "port") -> str:
    """A box's port (or line) name, as the pool's `port` column holds it."""
    text = item(value, field).strip()
    if not _PORT.match(text):
        raise InvalidInput(f"{field} must be 1 to 64 letters, digits and . _ : @ / + -")
    return text


def text_field(value: object, field: str) -> str:
    """A text a box sends as a string (numbers as integers too); '' when absent."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    return value


def content_id(*parts: object) -> str:
    """A message id made of what a box sends, for boxes that send none: the same SMS sent
    again has the same id, so a retransmitted push stores nothing twice."""
    import hashlib  # here: OpenSSL's hashlib is not needed by the many commands importing this

    joined = "\x1f".join(str(p) for p in parts)
    return "h:" + hashlib.sha256(joined.encode("utf-8", "replace")).hexdigest()[:32]


def decode_text(raw: bytes) -> str:
    """The text of an SMS as a box hands over its bytes: UTF-8, or UCS2 (UTF-16, big-endian
    unless a byte-order mark says otherwise), as boxes do for Cyrillic and other scripts.

    UCS2 of Latin or Cyrillic letters is valid UTF-8 too (of control characters), so bytes
    below a tab, which no text has and every such UCS2 text has (its high bytes), mark it."""
    bom = raw[:2] in (b"\xfe\xff", b"\xff\xfe")
    ucs2_codec = "utf-16" if bom else "utf-16-be"
    ucs2 = len(raw) % 2 == 0 and (bom or any(byte < 0x09 for byte in raw))
    for codec in (ucs2_codec, "utf-8") if ucs2 else ("utf-8", ucs2_codec):
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            continue
    raise InvalidInput("the text is neither UTF-8 nor UCS2")


def receiving_number(*candidates: str | None) -> str | None:
    """The first candidate that is a valid international number, as sent; None if none is
    (the SMS is then routed by its port)."""
    for candidate in candidates:
        if candidate and candidate.strip():
            try:
                pool.normalize_number(candidate)
            except InvalidInput:
                continue
            return candidate.strip()
    return None


# ---------------------------------------------------------------------------------------
# A push of several SMS
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadRow:
    """One SMS of a push that cannot be used: logged and skipped, never the whole push."""

    reason: str


# One row of a push: an SMS, a bad row, or None for a row that is not an SMS (a delivery
# report) and is acknowledged without being stored.
Row = Union[sms.IncomingSms, BadRow, None]


def parse_rows(items: Iterable[object], parse_one: Callable[[object], sms.IncomingSms | None]
               ) -> list[Row]:
    """Each row of a push parsed on its own: a row that does not parse becomes a BadRow."""
    rows: list[Row] = []
    for row in items:
        try:
            rows.append(parse_one(row))
        except InvalidInput as error:
            rows.append(BadRow(str(error)))
    return rows


@dataclasses.dataclass
class PushResult:
    """What became of a push's rows."""

    accepted: list[sms.Accepted] = dataclasses.field(default_factory=list)
    skipped: int = 0     # bad rows, logged
    ignored: int = 0     # rows that are no SMS (delivery reports)

    @property
    def has_new_for_rentals(self) -> bool:
        """Whether an SMS new to rentbox entered the outbox (the pusher should wake)."""
        return any(a.push_state == "pending" and not a.duplicate for a in self.accepted)

    def as_dict(self) -> dict:
        return {"status": "SUCCESS",
                "accepted": sum(not a.duplicate for a in self.accepted),
                "duplicates": sum(a.duplicate for a in self.accepted),
                "skipped": self.skipped, "ignored": self.ignored,
                "smsIds": [a.sms_id for a in self.accepted]}


def accept_push(db: Database, clock: Clock, rules: Rules, source: str,
                rows: list[Row]) -> PushResult:
    """Store each SMS of a multi-SMS push on its own (`sms.accept_sms`, one commit each):
    a bad row is logged and skipped and never costs the others. Returns once every good
    row is committed, so the box is answered only then. `Unavailable` (the disk is full)
    is raised as is: the box retries the push, and what was stored is not stored twice."""
    result = PushResult()
    for number, row in enumerate(rows, start=1):
        if row is None:
            result.ignored += 1
            continue
        if isinstance(row, sms.IncomingSms):
            try:
                result.accepted.append(sms.accept_sms(db, clock, row, rules))
                continue
            except InvalidInput as error:
                row = BadRow(str(error))
        result.skipped += 1
        log.warning("%s push: SMS %d of %d skipped: %s", source, number, len(rows),
                    row.reason)
    return result


# ---------------------------------------------------------------------------------------
# The state of a box's ports
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PortState:
    """What a box says about one of its ports: whether its SIM is online (as a presence
    report of the port's own gateway name) and, when it says, the SIM's number."""

    report: presence.Report
    port: str
    number: str | None = None


def report_ports(db: Database, clock: Clock, rules: Rules, states: list[PortState]) -> dict:
    """Apply a box's port states to SIM presence, one port at a time, and check the
    numbers it gives against the pool (`note_port_number`). With presence off, nothing
    is applied and the box is simply acknowledged."""
    if not rules.presence:
        return {"status": "SUCCESS", "ignored": True}
    online = 0
    for state in states:
        online += bool(presence.report(db, clock, rules, state.report).online)
        if state.number:
            note_port_number(db, clock, state.report.gateway, state.port, state.number)
    return {"status": "SUCCESS", "ports": len(states), "online": online}


def note_port_number(db: Database, clock: Clock, gateway: str, port: str,
                     reported: str) -> None:
    """A box says the SIM in `port` has the number `reported`. When the pool has another
    number on that port, say so once (log, `rentbox status`): an SMS on this port is routed
    to the pool's number, so one of the two is wrong. Cleared once they agree again.
    Writes only when what is noted changes."""
    rows = db.rows("SELECT number FROM numbers WHERE port = ? AND removed_at IS NULL LIMIT 2",
                   (port,))
    pool_number = rows[0]["number"] if len(rows) == 1 else None
    wrong = pool_number is not None and not _same_number(pool_number, reported)
    wanted = {"reported": reported, "pool": pool_number, "gateway": gateway} if wrong else None
    noted = (meta.get(db, PORT_MISMATCH) or {}).get(port)
    if (noted and {k: v for k, v in noted.items() if k != "at"}) == wanted:
        return
    meta.put_entry(db, clock, PORT_MISMATCH, port, wanted)
    if wanted:
        log.warning("%s says the SIM in port %s has the number %s, but the pool has +%s on "
                    "that port: SMS on this port go to +%s; correct the port in the pool CSV "
                    "or the number in the box", gateway, port, _loggable(reported),
                    pool_number, pool_number)
    else:
        log.info("%s: port %s and the pool agree again", gateway, port)


def _same_number(pool_number: str, reported: str) -> bool:
    digits = re.sub(r"\D", "", reported)
    if len(digits) < SAME_NUMBER_DIGITS:
        return digits == pool_number
    return pool_number[-SAME_NUMBER_DIGITS:] == digits[-SAME_NUMBER_DIGITS:]


def _loggable(text: str) -> str:
    text = str(text)[:40]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


# ---------------------------------------------------------------------------------------
# Warnings anyone can cause
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Held:
    """One source's warnings: when the last was logged, when the last of any came, and
    how many were held back since the last logged."""

    logged_at: dt.datetime
    last_at: dt.datetime
    held: int = 0


class WarningLimit:
    """Which warnings about one source (an address, a box) to log: the first, then at most
    one per `every_s`, which tells how many were held back since the last one logged. At
    most `max_sources` sources are tracked; warnings about others share one budget.
    `about` and `per` name them in that count (GoIP: "datagrams", per "address"). Not
    thread-safe: a caller with several threads holds its own lock around it."""

    def __init__(self, every_s: float = 60.0, max_sources: int = 100, *,
                 about: str = "datagrams", per: str = "address",
                 others: str = "other addresses"):
        self._every = dt.timedelta(seconds=every_s)
        self._max_sources = max_sources
        self._about, self._per, self._others = about, per, others
        self._sources: dict[str, _Held] = {}  # `others` included, past max_sources
        self._swept_at: dt.datetime | None = None

    @property
    def tracked(self) -> int:
        """How many sources are remembered (bounded: max_sources, plus `others`)."""
        return len(self._sources)

    def admit(self, source: str, now: dt.datetime) -> str | None:
        """None: hold this warning back. Otherwise log it, followed by the text returned:
        "" or how many warnings about `source` were held back since the last logged."""
        if source not in self._sources and len(self._sources) >= self._max_sources:
            source = self._others
        entry = self._sources.get(source)
        if entry is not None and now < entry.logged_at + self._every:
            entry.held += 1
            entry.last_at = now
            return None
        self._sources[source] = _Held(now, now)
        if entry is None or not entry.held:
            return ""
        return f"; {self._held_back(source, entry, now)}"

    def sweep(self, now: dt.datetime) -> list[str]:
        """What to log about sources gone quiet for `every_s` with warnings held back (the
        next warning would have told them); and forget sources with nothing held back.
        Looks at every source, so it does so at most once a second, however often called."""
        if self._swept_at is not None and now < self._swept_at + dt.timedelta(seconds=1):
            return []
        self._swept_at = now
        lines = []
        for source, entry in list(self._sources.items()):
            if now < entry.last_at + self._every:
                continue  # still sending, or logged too recently
            if entry.held:
                lines.append(self._held_back(source, entry, now))
                # Kept (and forgotten at a later sweep): this line counts as its minute's.
                self._sources[source] = _Held(now, now)
            else:
                del self._sources[source]
        return lines

    def _held_back(self, source: str, entry: _Held, now: dt.datetime) -> str:
        seconds = (now - entry.logged_at).total_seconds()
        return (f"{entry.held} more warning(s) about {self._about} from {source} in the last "
                f"{seconds:.0f} s not logged (at most one per "
                f"{self._every.total_seconds():g} s per {self._per})")
