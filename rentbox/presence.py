"""SIM presence: which numbers have their SIM in a gateway's port now, and what follows.

Onlinesim allows a partner to report only the numbers whose SIM is physically in a port,
and blocks one that over-reports (protocol.md 3.1); a number issued while its SIM is out
receives nothing, fails its guard window, and three of those ban it. So rentbox offers a
number only while its SIM is known to be online, once a source has reported it:

- *not watched* (`seen_by IS NULL`): no source ever reported this number, and it is on
  the ports of no gateway that has reported (below). It is offered as it always was, so
  nobody is forced to set presence up; `rentbox status` warns while there are any.
- *online* (`seen_by` set, `offline = 0`): a source reported the SIM present within the
  presence window (`rules.presence_s`).
- *offline* (`offline = 1`): the window ended with no new report (`silent`), the
  number's gateway sent a report without it (`dropped`), a gateway reported for the
  number's port or box and did not list it (`not reported`), or the partner said so
  (`by hand`). It is neither counted by GET_SERVICES nor issued by GET_NUMBER: the
  free-number indexes include `offline = 0`, so a pool that is mostly offline costs a
  claim no more than a pool that is all online.

Sources: a gateway's report (`POST /presence`, SMSGate's events, the boxes' port states),
any SMS received for a watched number, and `rentbox numbers online|offline`. A gateway's
report is the list of what it has now: it replaces that gateway's previous one. A rented
number whose SIM goes offline puts its rental *at risk*: the rental stays open (only
Onlinesim's FINISH closes it), and the event, the log and `rentbox status` name it so the
partner brings it back.

A gateway's report is the authority for the pool numbers on its ports (`_take_charge`), so
that a box which lists only the ports that hold a SIM (a SIM bank, a port `No SIM card`)
does not leave the others offered:

- *its own ports*: the gateway's name, without the source a box adapter puts before it
  (`ejoin:`, `dinstar:`, `goip:`, `smsgate:`), is a port, and a prefix of ports before a
  `:` (`box1` owns `box1` and `box1:1`, `box1:2`, …; `ejoin:gw1:1.01` the port `gw1:1.01`;
  `smsgate:<deviceId>` the ports `<deviceId>:<slot>`). Every pool number on them that the
  report does not list online is offline, whoever reported it before.
- *its box*: the part of a port before its last `:` names the box it is on (`gw1:` of
  `gw1:1.01`, `<sn>:` of a Dinstar port). Once any port of a box is reported (by the box's
  own name, a port it lists, or the port of a number it lists), the box's numbers that no
  gateway has reported yet are offline too: a box that reports ports reports the ones
  that matter.

Only numbers on ports of no reporting gateway or box stay *not watched*. Both reads are
ranges of an index on `port` (the box's unwatched numbers: `numbers_unwatched_by_port`,
empty once the box has reported), so a report costs the same on any pool size.

Going offline and coming back are events (`sim_offline`, `sim_online`). With presence
off (`rules.presence` false) nothing is offline: the due-rules pass brings back any
number that still is, and reports are refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re

from rentbox import events, meta, pool
from rentbox.clock import Clock, to_text
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger("rentbox.presence")

# The most numbers or ports one report may list (a 512-card SIM bank lists 512).
MAX_REPORT_ITEMS = 10_000
# Numbers turned offline per transaction when their window ends: a gateway with many
# SIMs that falls silent must not hold the write lock for long in one go.
EXPIRE_BATCH = 500
# How the CLI is named as a source.
BY_HAND = "cli"
_GATEWAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/+-]{0,99}$")

# Online watched numbers whose last report is older than the parameter (the cutoff):
# served by the numbers_presence_due index.
DUE = "offline = 0 AND seen_by IS NOT NULL AND seen_at < ?"
OFF_WHEN_DISABLED = "offline = 1"


class PresenceOff(Conflict):
    """Presence is turned off: reports and hand-set states are not used."""

    def __init__(self):
        super().__init__("presence is off on this server (RENTBOX_PRESENCE=off): every "
                         "number is offered whatever its SIM; turn it on to use reports")


@dataclasses.dataclass(frozen=True)
class Report:
    """What a gateway says is online now. Both lists None: a heartbeat."""

    gateway: str
    numbers: tuple[str, ...] | None = None   # as sent, any common notation
    ports: tuple[str, ...] | None = None     # matched against the pool's `port`
    # An SMSGate device: until its first list of SIMs, its heartbeat stands for every
    # pool port of the device (`<device>` or `<device>:<slot>`).
    device: str | None = None
    # (port, number) pairs a gateway knows: hints for pool numbers that have no port yet.
    port_hints: tuple[tuple[str, str], ...] = ()

    @property
    def heartbeat(self) -> bool:
        return self.numbers is None and self.ports is None


@dataclasses.dataclass
class ReportResult:
    """The answer to a report (numbers as digit strings)."""

    online: int                     # this gateway's numbers online now
    keep: list[str]                 # reported numbers in open rentals: keep them in ports
    missing: list[str]              # rented numbers of this gateway not reported now
    unknown: list[str]              # reported numbers or ports that match no pool number
    ambiguous: list[str] = dataclasses.field(default_factory=list)  # ports of several numbers

    def as_dict(self) -> dict:
        return {"status": "SUCCESS", **dataclasses.asdict(self)}


def check_gateway(name: object) -> str:
    """A gateway's name as it reports itself: short, printable, no surprises in logs."""
    if not isinstance(name, str) or not _GATEWAY_NAME.match(name.strip()):
        raise InvalidInput("gateway must be a name of 1 to 100 letters, digits and . _ : @ / + - "
                           "(e.g. \"box-1\")")
    return name.strip()


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------


def report(db: Database, clock: Clock, rules: Rules, given: Report) -> ReportResult:
    """Apply a gateway's report: what it lists is online now, what it listed before and
    not now is offline now, and so is what it did not list on its ports and its box
    (`_take_charge`). A heartbeat keeps its previous list online. One transaction."""
    if not rules.presence:
        raise PresenceOff()
    gateway = check_gateway(given.gateway)
    unknown: list[str] = []
    digits: dict[str, str] = {}  # normalised -> as sent
    for raw in given.numbers or ():
        try:
            digits.setdefault(pool.normalize_number(raw), raw)
        except InvalidInput:
            unknown.append(raw)
    ports = list(dict.fromkeys(p.strip() for p in given.ports or () if p.strip()))
    ambiguous: list[str] = []
    with db.transaction():
        now = clock.now()
        heartbeat = given.heartbeat
        if heartbeat and given.device is not None and not _knows(db, gateway):
            ports, heartbeat = _device_ports(db, given.device), False
        if heartbeat:
            _heartbeat(db, now, gateway)
            if _knows(db, gateway):
                _take_charge(db, now, gateway, None, ())
        else:
            reported, missed_numbers, missed_ports, ambiguous = _resolve(
                db, list(digits), ports)
            unknown += [digits[d] for d in missed_numbers] + missed_ports
            _replace(db, now, gateway, reported)
            _take_charge(db, now, gateway, reported, ports)
            if given.port_hints:
                _note_port_hints(db, now, gateway, given.port_hints)
        rented = {r["number"]: r["offline"] for r in db.rows(
            "SELECT number, offline FROM numbers WHERE seen_by = ?"
            " AND operation_id IS NOT NULL ORDER BY number", (gateway,))}
        result = ReportResult(
            online=db.execute("SELECT count(*) FROM numbers WHERE seen_by = ? AND offline = 0",
                              (gateway,)).fetchone()[0],
            keep=[n for n, offline in rented.items() if not offline],
            missing=[n for n, offline in rented.items() if offline],
            unknown=unknown,
            ambiguous=ambiguous,
        )
    # Logged once, not at every report of a gateway that repeats the same list.
    seen = frozenset(result.unknown) | frozenset(result.ambiguous)
    if seen and _unknown_logged.get(gateway) != seen:
        log.warning("presence report of %s: %d reported number(s) or port(s) match no pool "
                    "number (%s)%s", gateway, len(result.unknown),
                    ", ".join(_loggable(u) for u in result.unknown[:5]),
                    f"; ports shared by several numbers, so not used: "
                    f"{', '.join(_loggable(a) for a in result.ambiguous[:5])}"
                    if result.ambiguous else "")
    _unknown_logged[gateway] = seen
    return result


# What was last logged as unknown, per gateway (a dict assignment is atomic in CPython).
_unknown_logged: dict[str, frozenset] = {}


def _resolve(db: Database, numbers: list[str], ports: list[str]
             ) -> tuple[dict[int, dict], list[str], list[str], list[str]]:
    """The pool numbers a report names ({id: row}), the numbers and the ports that match
    none, and the ports that match several numbers (a SIM bank's port holds whichever
    card is in it: such a gateway reports numbers)."""
    columns = "id, number, port, operation_id, offline, seen_by"
    found: dict[int, dict] = {}
    missed_numbers: list[str] = []
    missed: list[str] = []
    if numbers:
        rows = db.rows(f"SELECT {columns} FROM numbers WHERE number IN"
                       " (SELECT value FROM json_each(?)) AND removed_at IS NULL",
                       (json.dumps(numbers),))
        found.update((r["id"], r) for r in rows)
        known = {r["number"] for r in rows}
        missed_numbers = [n for n in numbers if n not in known]
    ambiguous: list[str] = []
    if ports:
        by_port: dict[str, list[dict]] = {}
        for row in db.rows(f"SELECT {columns} FROM numbers WHERE port IN"
                           " (SELECT value FROM json_each(?)) AND removed_at IS NULL",
                           (json.dumps(ports),)):
            by_port.setdefault(row["port"], []).append(row)
        for port in ports:
            rows = by_port.get(port, [])
            if len(rows) == 1:
                found[rows[0]["id"]] = rows[0]
            elif rows:
                ambiguous.append(port)
            else:
                missed.append(port)
    return found, missed_numbers, missed, ambiguous


def _replace(db: Database, now: dt.datetime, gateway: str, reported: dict[int, dict]) -> None:
    stamp = to_text(now)
    listed = db.rows("SELECT id, number, operation_id FROM numbers"
                     " WHERE seen_by = ? AND offline = 0", (gateway,))
    for row in listed:
        if row["id"] not in reported:
            _go_offline(db, now, row, "dropped", f"{gateway} no longer reports it")
    unchanged = []
    for row in reported.values():
        if row["offline"] == 0 and row["seen_by"] == gateway:
            unchanged.append(row["id"])
        else:
            _come_online(db, now, row, gateway, f"reported by {gateway}")
    # The usual report repeats the last one: one statement refreshes them all.
    db.execute("UPDATE numbers SET seen_at = ? WHERE id IN (SELECT value FROM json_each(?))",
               (stamp, json.dumps(unchanged)))


# The sources that the box adapters put before a port to name its gateway
# (gateways/: `ejoin:<port>`, `dinstar:<sn>:<port>`, `goip:<line>`, `smsgate:<deviceId>`).
ADAPTER_SOURCES = ("ejoin:", "dinstar:", "goip:", "smsgate:")
# Why a number on a reporting gateway's ports or box is offline.
NOT_REPORTED = "not reported"


def own_ports(gateway: str) -> str:
    """The port a gateway's name makes it the authority for, with every port below it
    (`<port>:…`): its name without an adapter's source (`ejoin:gw1:1.01` → `gw1:1.01`,
    `smsgate:dev1` → `dev1`, `box-1` → `box-1`)."""
    for source in ADAPTER_SOURCES:
        if gateway.startswith(source) and len(gateway) > len(source):
            return gateway[len(source):]
    return gateway


def box_of(port: str | None) -> str | None:
    """The box a port is on: the port up to its last `:`, that included (`gw1:` of
    `gw1:1.01`); None for a port that names no box (`1.01`, `GSM1`)."""
    if not port or ":" not in port.rstrip(":"):
        return None
    return port[:port.rstrip(":").rindex(":") + 1]


def _take_charge(db: Database, now: dt.datetime, gateway: str,
                 reported: dict[int, dict] | None, listed_ports: list[str] | tuple) -> int:
    """The gateway has reported (`reported`: the pool numbers its report names; None for a
    heartbeat, which names what it has online): what it did not name on its own ports goes
    offline, and so do the numbers of its boxes that no gateway ever reported. A port it
    listed that several numbers share (ambiguous) is left as it is: the report does not
    say which card is in it. Returns how many went offline. Inside the caller's
    transaction."""
    if reported is None:
        reported = {r["id"]: r for r in db.rows(
            "SELECT id, port FROM numbers WHERE seen_by = ? AND offline = 0", (gateway,))}
    listed = set(listed_ports)
    taken: list[str] = []
    base = own_ports(gateway)
    # Its own ports (numbers_by_port, two ranges): anything on them not reported now.
    for row in db.rows(
            "SELECT id, number, port, operation_id, seen_by, offline, offline_reason"
            " FROM numbers WHERE (port = ? OR (port > ? AND port < ?)) AND removed_at IS NULL",
            (base, base + ":", base + ";")):
        if row["id"] in reported or row["port"] in listed:
            continue
        if not row["offline"]:
            if _not_reported(db, now, row, gateway, f"{gateway} reports port {row['port']} "
                             "without it"):
                taken.append(row["number"])
        elif row["offline_reason"] == NOT_REPORTED and row["seen_by"] != gateway:
            # Taken offline for its box by another port's gateway: its own port's gateway
            # is the one whose report brings it back (and whose `missing` names it).
            db.execute("UPDATE numbers SET seen_by = ? WHERE id = ?", (gateway, row["id"]))
    # Its boxes (numbers_unwatched_by_port): the numbers nobody has reported yet.
    boxes = {box_of(p) for p in (base, *listed, *(r["port"] for r in reported.values()))}
    for box in sorted(b for b in boxes if b is not None):
        for row in db.rows(
                "SELECT id, number, port, operation_id, seen_by FROM numbers"
                " WHERE seen_by IS NULL AND removed_at IS NULL AND port > ? AND port < ?",
                (box, box[:-1] + ";")):
            if row["id"] not in reported and row["port"] not in listed:
                if _not_reported(db, now, row, gateway, f"its box {box[:-1]} reports, "
                                 f"via {gateway}, without it"):
                    taken.append(row["number"])
    if taken:
        log.info("%d SIM(s) offline: on ports that %s reports for, and not reported (%s)",
                 len(taken), gateway, ", ".join(f"+{n}" for n in taken[:5])
                 + (" …" if len(taken) > 5 else ""))
    return len(taken)


def _not_reported(db: Database, now: dt.datetime, row: dict, gateway: str, why: str) -> bool:
    """Turn a number offline because the gateway in charge of its port did not report it;
    the gateway becomes its source, so that its next report brings it back."""
    db.execute("UPDATE numbers SET seen_by = ? WHERE id = ? AND offline = 0",
               (gateway, row["id"]))
    return _go_offline(db, now, row, NOT_REPORTED, why)


def _knows(db: Database, gateway: str) -> bool:
    return bool(db.execute("SELECT EXISTS (SELECT 1 FROM numbers WHERE seen_by = ?)",
                           (gateway,)).fetchone()[0])


def _device_ports(db: Database, device: str) -> list[str]:
    """The pool ports of one SMSGate device: `<device>` and `<device>:<slot>` (a range of
    the port index: ';' follows ':')."""
    return [r["port"] for r in db.rows(
        "SELECT port FROM numbers WHERE removed_at IS NULL AND (port = ? OR"
        " (port > ? AND port < ?))", (device, device + ":", device + ";"))]


# meta key: pool numbers without a port that a gateway named, with the port it gave.
UNPORTED = "presence.unported"


def _note_port_hints(db: Database, now: dt.datetime, gateway: str,
                     hints: tuple[tuple[str, str], ...]) -> None:
    """A gateway said which number is in which port, and the pool has no port for that
    number: say so (log, `rentbox status`) rather than guess; the partner imports the
    port. Nothing is marked online from such a hint."""
    wanted = {}
    for port, raw in hints:
        try:
            wanted[pool.normalize_number(raw)] = port
        except InvalidInput:
            continue
    rows = db.rows("SELECT number FROM numbers WHERE number IN (SELECT value FROM json_each(?))"
                   " AND port IS NULL AND removed_at IS NULL", (json.dumps(list(wanted)),))
    if not rows:
        return
    noted = meta.get(db, UNPORTED) or {}
    new = {r["number"]: wanted[r["number"]] for r in rows
           if noted.get(r["number"], {}).get("port") != wanted[r["number"]]}
    for number, port in new.items():
        log.warning("%s has the SIM of +%s in port %s, but that number has no port in the "
                    "pool: import it with port %s to let presence govern it", gateway,
                    number, port, port)
        noted[number] = {"port": port, "gateway": gateway, "at": to_text(now)}
    if new:
        meta.put_within(db, now, UNPORTED, noted)


def unported(db: Database) -> dict[str, dict]:
    """Pool numbers that still have no port although a gateway named one for them."""
    noted = meta.get(db, UNPORTED) or {}
    if not noted:
        return {}
    still = {r["number"] for r in db.rows(
        "SELECT number FROM numbers WHERE number IN (SELECT value FROM json_each(?))"
        " AND port IS NULL AND removed_at IS NULL", (json.dumps(list(noted)),))}
    return {n: v for n, v in noted.items() if n in still}


def _heartbeat(db: Database, now: dt.datetime, gateway: str) -> None:
    """Refresh the gateway's previous report: its online numbers stay online, and the
    ones that went offline only because it fell silent come back."""
    db.execute("UPDATE numbers SET seen_at = ? WHERE seen_by = ? AND offline = 0",
               (to_text(now), gateway))
    for row in db.rows("SELECT id, number, operation_id, offline, seen_by FROM numbers"
                       " WHERE seen_by = ? AND offline = 1 AND offline_reason = 'silent'",
                       (gateway,)):
        _come_online(db, now, row, gateway, f"{gateway} reports again")


def _go_offline(db: Database, now: dt.datetime, row: dict, reason: str, why: str) -> bool:
    stamp = to_text(now)
    changed = db.execute(
        "UPDATE numbers SET offline = 1, offline_reason = ?, offline_since = ?, updated_at = ?"
        " WHERE id = ? AND offline = 0", (reason, stamp, stamp, row["id"])).rowcount
    if not changed:
        return False
    rented = row["operation_id"]
    risk = {"at_risk": True} if rented is not None else {}
    events.record(db, now, "sim_offline", number_id=row["id"], operation_id=rented,
                  reason=why, **risk)
    if rented is not None:
        log.warning("the SIM of +%s went offline (%s) during rental %d: bring it back into "
                    "a port; the rental stays open", row["number"], why, rented)
    return True


def _come_online(db: Database, now: dt.datetime, row: dict, source: str, why: str) -> None:
    stamp = to_text(now)
    db.execute("UPDATE numbers SET offline = 0, offline_reason = NULL, offline_since = NULL,"
               " seen_at = ?, seen_by = ?, updated_at = ? WHERE id = ?",
               (stamp, source, stamp, row["id"]))
    if row["offline"]:
        events.record(db, now, "sim_online", number_id=row["id"],
                      operation_id=row["operation_id"], reason=why)
    elif row["seen_by"] is None:
        events.record(db, now, "sim_watched", number_id=row["id"], reason=why)


# ---------------------------------------------------------------------------------------
# SMS and the CLI
# ---------------------------------------------------------------------------------------


def note_sms(db: Database, now: dt.datetime, rules: Rules, number_id: int) -> None:
    """An SMS was received for this number: its SIM is present. Only for a watched number
    (an SMS does not start watching one). Call inside the transaction that stores it."""
    if not rules.presence:
        return
    row = db.row("SELECT id, number, operation_id, offline, seen_by FROM numbers"
                 " WHERE id = ? AND seen_by IS NOT NULL", (number_id,))
    if row is None:
        return
    if row["offline"]:
        _come_online(db, now, row, row["seen_by"], "an SMS arrived for it")
    else:
        db.execute("UPDATE numbers SET seen_at = ? WHERE id = ?", (to_text(now), number_id))


def set_by_hand(db: Database, now: dt.datetime, rules: Rules, numbers: list[str],
                online: bool) -> int:
    """`rentbox numbers online|offline`: report SIMs as the source `cli`. All or nothing;
    returns how many changed state. Online ones count for the presence window like any
    report, so a script repeats them; offline ones stay offline until a source reports
    them again."""
    if not rules.presence:
        raise PresenceOff()
    wanted = list(dict.fromkeys(pool.normalize_number(n) for n in numbers))
    changed = 0
    with db.transaction():
        rows = {r["number"]: r for r in db.rows(
            "SELECT id, number, operation_id, offline, seen_by, removed_at FROM numbers"
            " WHERE number IN (SELECT value FROM json_each(?))", (json.dumps(wanted),))}
        for number in wanted:
            row = rows.get(number)
            if row is None or row["removed_at"] is not None:
                raise NotFound(f"+{number} is not in the pool")
        for number in wanted:
            row = rows[number]
            if online:
                changed += bool(row["offline"])
                _come_online(db, now, row, BY_HAND, "set online by hand")
            else:
                if row["seen_by"] is None:
                    db.execute("UPDATE numbers SET seen_by = ? WHERE id = ?",
                               (BY_HAND, row["id"]))
                changed += _go_offline(db, now, row, "by hand", "set offline by hand")
    return changed


# ---------------------------------------------------------------------------------------
# As time passes (operations.apply_due_rules)
# ---------------------------------------------------------------------------------------


def cutoff(now: dt.datetime, rules: Rules) -> str:
    """Reports older than this are out of the presence window."""
    return to_text(now - dt.timedelta(seconds=rules.presence_s))


def has_due(db: Database, now: dt.datetime, rules: Rules) -> bool:
    """Whether `apply_due` would change anything (an indexed read)."""
    condition, params = due_condition(now, rules)
    return bool(db.execute(f"SELECT {condition}", params).fetchone()[0])


def due_condition(now: dt.datetime, rules: Rules) -> tuple[str, tuple]:
    """An SQL expression true when `apply_due` would change anything, and its
    parameters: for a query that asks this beside other questions."""
    if rules.presence:
        return f"EXISTS (SELECT 1 FROM numbers WHERE {DUE})", (cutoff(now, rules),)
    return f"EXISTS (SELECT 1 FROM numbers WHERE {OFF_WHEN_DISABLED})", ()


def apply_due(db: Database, now: dt.datetime, rules: Rules, limit: int | None = None) -> int:
    """Turn offline (at most `limit`, by default EXPIRE_BATCH) numbers whose presence
    window has ended; with presence off, bring back numbers that are offline. Inside the
    caller's transaction."""
    limit = EXPIRE_BATCH if limit is None else limit
    if not rules.presence:
        rows = db.rows("SELECT id, number, operation_id, offline, seen_by FROM numbers"
                       f" WHERE {OFF_WHEN_DISABLED} LIMIT ?", (limit,))
        for row in rows:
            _come_online(db, now, row, row["seen_by"], "presence is off")
        return len(rows)
    rows = db.rows(f"SELECT id, number, operation_id, seen_at FROM numbers WHERE {DUE}"
                   " ORDER BY seen_at LIMIT ?", (cutoff(now, rules), limit))
    for row in rows:
        _go_offline(db, now, row, "silent",
                    f"not reported for {rules.presence_s:g} s (last {row['seen_at']})")
    if rows:
        log.info("%d SIM(s) offline: not reported for %g s (%s)", len(rows), rules.presence_s,
                 ", ".join(f"+{r['number']}" for r in rows[:5]) + (" …" if len(rows) > 5 else ""))
    return len(rows)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def counts(db: Database) -> dict[str, int]:
    """Numbers in the pool by SIM presence: online, offline, not watched (from the
    `pool_counts` tally: no count of rows)."""
    tally = {r["key"]: r["n"] for r in db.rows(
        "SELECT key, n FROM pool_counts WHERE key LIKE 'sim~_%' ESCAPE '~'")}
    return {"online": tally.get("sim_online", 0), "offline": tally.get("sim_offline", 0),
            "unwatched": tally.get("sim_unwatched", 0)}


def at_risk(db: Database) -> list[dict]:
    """Numbers held by an open rental whose SIM is offline, longest offline first."""
    return db.rows(
        "SELECT number, operation_id, offline_since, offline_reason, seen_by FROM numbers"
        " WHERE offline = 1 AND operation_id IS NOT NULL ORDER BY offline_since, number")


def _loggable(text: str) -> str:
    text = str(text)[:40]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
