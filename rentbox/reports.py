"""Reports: the figures a partner reads — status at a glance, income, one number's history.

Reads only. Every figure is computed from the operations, numbers and SMS tables with the
same definitions everywhere:

- credited income: the FINISH `sum` of operations closed with status 3;
- pending income: open operations that met their guard window (Onlinesim accepted an SMS
  sent within it), at their initial GET_NUMBER `sum` (protocol.md 5);
- success rate: of the rentals whose guard window is decided, the share that met it (a
  rental still waiting is not counted either way). An SMS only stored, or refused by
  Onlinesim, does not meet the window: Onlinesim saw no SMS in that rental.

Money is in minor units of an operation's currency (kopecks for RUB, cents for USD) and is
never added across currencies: every figure in roubles counts RUB operations only (as the
tallies do, tallies.py), and the books per buyer keep each currency apart.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from rentbox import meta
from rentbox.clock import from_text, to_text
from rentbox.config import ONLINESIM, SMSHUB, Rules
from rentbox.db import Database, is_being_served
from rentbox.errors import InvalidInput

# Each report imports the modules it reads when it runs: `rentbox report` needs none of
# those behind `status` (backups, gateways, the spool), and the CLI imports this module
# on every start (issue 25).

# A warning when this share of the pool (or more) is banned.
BANNED_SHARE_WARNING = 0.2
# Onlinesim polls GET_SERVICES every 2 minutes, SMSHub-protocol buyers every 10-20 s: this
# long without a call means trouble (unless the server recorded its RENTBOX_ALERT_SILENCE_S).
SILENCE_WARNING_S = 10 * 60
# An SMS waiting this long in the outbox is worth a warning.
STUCK_SMS_WARNING_S = 5 * 60
# A rental that failed its guard window and got no FINISH for this long will most likely
# never get one (its GET_NUMBER answer was lost): the operator closes it by hand.
STALE_FAILED_S = 24 * 3600
# Less free space than this beside the database is worth a warning before writes fail.
LOW_DISK_WARNING_BYTES = 100 * 1024 * 1024
# A running server takes a spooled SMS in within RENTBOX_SPOOL_EVERY_S (a second): one
# that has waited this long is stuck (serve is down, or may not read the file).
SPOOL_WARNING_S = 60


# ---------------------------------------------------------------------------------------
# rentbox status
# ---------------------------------------------------------------------------------------


def status(db: Database, now: dt.datetime) -> dict:
    """Pool, open operations, outbox, the server, each buyer's last call, and warnings."""
    from rentbox import backups, bans, buyers, operations, presence, replication, spool
    from rentbox.gateways import notes

    stamp = to_text(now)
    # Each number counts once, in the first state that applies: rented, disabled, banned,
    # offline (free but for its SIM), free; `rented_disabled` are rented numbers that leave
    # the pool when their rental ends. From the `pool_counts` tally (tallies.py), so the
    # cost does not grow with the pool; a ban that has ended counts as free (or offline)
    # even before housekeeping lifts it.
    tally = {r["key"]: r["n"] for r in db.rows("SELECT key, n FROM pool_counts")}
    counts = {k: tally.get(k, 0) for k in ("free", "banned", "disabled", "offline",
                                           "rented_disabled")}
    counts["rented"] = tally.get("rented", 0) + counts["rented_disabled"]
    counts["total"] = sum(counts[k] for k in ("free", "rented", "banned", "disabled",
                                              "offline"))
    ended = db.row(f"SELECT count(*) AS n, coalesce(sum(offline), 0) AS offline FROM numbers"
                   f" WHERE {bans.BAN_DUE} AND operation_id IS NULL AND enabled = 1"
                   " AND removed_at IS NULL", (stamp,))
    counts["banned"] -= ended["n"]
    counts["offline"] += ended["offline"]
    counts["free"] += ended["n"] - ended["offline"]
    ops = db.row(
        "SELECT count(*) AS open,"
        " coalesce(sum(failed_at IS NOT NULL), 0) AS failed_awaiting_finish,"
        " coalesce(sum(sms_accepted_at IS NOT NULL AND failed_at IS NULL), 0) AS with_sms,"
        " coalesce(sum(sms_accepted_at IS NULL AND failed_at IS NULL), 0) AS awaiting_sms"
        " FROM operations WHERE state = 'open' AND service = 'rent'")
    # Single-service activations (protocol.md 6), open now.
    ops["activations_open"] = db.row(
        "SELECT count(*) AS n FROM operations WHERE state = 'open' AND service <> 'rent'")["n"]
    # Open operations (rentals and activations) per buyer: through operations_open.
    ops["by_buyer"] = {r["buyer"]: r["n"] for r in db.rows(
        "SELECT buyer, count(*) AS n FROM operations WHERE state = 'open'"
        " GROUP BY buyer ORDER BY buyer <> 'onlinesim', buyer")}
    ops["stale_failed"] = [r["id"] for r in operations.stale_failed(db, now, STALE_FAILED_S)]
    # Activations out of time without a FINISH: flagged at once (operations.py).
    ops["lapsed_activations"] = [r["id"] for r in operations.lapsed_activations(db)]
    outbox = db.row(
        "SELECT count(*) AS pending, coalesce(sum(attempts > 0), 0) AS retrying,"
        " min(created_at) AS oldest_pending_at FROM sms WHERE push_state = 'pending'")
    outbox["failed"] = db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'failed'")["n"]
    # Never pushed: their rental ended first (operations.expire_undelivered).
    outbox["expired"] = db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'expired'")["n"]
    last_error = db.row("SELECT last_error FROM sms WHERE push_state = 'pending'"
                        " AND last_error IS NOT NULL ORDER BY next_attempt_at DESC LIMIT 1")
    outbox["last_error"] = last_error["last_error"] if last_error else None
    outbox["oldest_pending_age_s"] = (
        round((now - from_text(outbox["oldest_pending_at"])).total_seconds())
        if outbox["oldest_pending_at"] else None)
    server = meta.get(db, meta.SERVER)
    if server is not None:
        # The serving lock, not the recorded pid: a backup or a copy of the file carries
        # the record of a server that is not serving it.
        server["running"] = is_being_served(db.path)
    sims = presence.counts(db)
    sims["at_risk"] = presence.at_risk(db)
    sims["unported"] = presence.unported(db)
    sims["port_mismatch"] = notes.port_mismatches(db)
    report = {
        "at": stamp,
        "pool": counts,
        "presence": sims,
        "operations": ops,
        "outbox": outbox,
        "database": db.storage(),
        "server": server,
        "last_onlinesim_call": meta.get(db, meta.LAST_ONLINESIM_CALL),
        "income": income_to_date(db, now),
        # Onlinesim first, then the buyers the server started with (and any other that
        # still holds an open operation), and which buyer gets what.
        "buyers": buyers_status(db, now, server, ops["by_buyer"]),
        "buyer_policy": buyers.policy(meta.server_rules(db) or Rules()),
    }
    # Scheduled backups and the replica (None when the server takes none).
    report["backups"], backup_warnings = backups.status(meta.get(db, meta.BACKUPS), server, now)
    report["replication"], replica_warnings = replication.status(
        meta.get(db, meta.REPLICATION), server, now)
    # The hooks' spool (None unless the last server started with RENTBOX_SPOOL_DIR).
    report["spool"] = (spool.backlog(server["spool_dir"], now)
                       if server is not None and server.get("spool_dir") else None)
    report["warnings"] = (_warnings(report, now) + _buyer_warnings(report)
                          + backup_warnings + replica_warnings
                          + _smsgate_ping_warnings(db, now) + _unwatched_warnings(db, sims)
                          + _spool_warnings(report["spool"]))
    return report


def income_to_date(db: Database, now: dt.datetime) -> dict:
    """Income credited today, this week (from Monday) and this month, all UTC, and
    pending now, in kopecks, from the `books_daily` tally: a month of days per country
    to add up, whatever the number of operations."""
    today = now.astimezone(dt.timezone.utc).date()
    week = today - dt.timedelta(days=today.weekday())
    month = today.replace(day=1)
    days = {"today": today.isoformat(), "week_from": week.isoformat(),
            "month_from": month.isoformat()}
    credited = db.row(
        "SELECT coalesce(sum(CASE WHEN day >= :today THEN credited_kopecks END), 0) AS today,"
        " coalesce(sum(CASE WHEN day >= :week_from THEN credited_kopecks END), 0) AS week,"
        " coalesce(sum(CASE WHEN day >= :month_from THEN credited_kopecks END), 0) AS month"
        " FROM books_daily WHERE day >= min(:week_from, :month_from) AND day <= :today", days)
    # Open rentals are booked on the day they began, which may be long ago: all days.
    pending = db.row("SELECT coalesce(sum(pending_kopecks), 0) AS k FROM books_daily")["k"]
    # Income in other currencies (SMSHub-protocol buyers may pay in USD), never added to
    # the roubles above: from `books_by_buyer`, each currency with anything to show.
    others = db.rows(
        "SELECT currency,"
        " coalesce(sum(CASE WHEN day >= :today THEN credited_minor END), 0)"
        "  AS credited_today_minor,"
        " coalesce(sum(CASE WHEN day >= :week_from THEN credited_minor END), 0)"
        "  AS credited_week_minor,"
        " coalesce(sum(CASE WHEN day >= :month_from THEN credited_minor END), 0)"
        "  AS credited_month_minor,"
        " coalesce(sum(pending_minor), 0) AS pending_minor"
        " FROM books_by_buyer WHERE currency <> 'RUB' AND day <= :today"
        " GROUP BY currency ORDER BY currency", days)
    return {**days, "credited_today_kopecks": credited["today"],
            "credited_week_kopecks": credited["week"],
            "credited_month_kopecks": credited["month"], "pending_kopecks": pending,
            "other_currencies": [r for r in others
                                 if r["credited_week_minor"] or r["credited_month_minor"]
                                 or r["pending_minor"]]}


def buyers_status(db: Database, now: dt.datetime, server: dict | None,
                  open_by_buyer: dict[str, int]) -> list[dict]:
    """Each buyer: Onlinesim, the buyers of the server facts (their protocol, path and
    whether their push URL is set; never a key), then any other buyer that still holds an
    open operation (`configured` False: the server no longer serves it). With its open
    operations, its last call ({at, action, actions}, None if it never called), how long
    ago, and `silent`: the server runs and the buyer never called, or not for longer than
    the silence threshold (`silence_s`)."""
    facts = [b for b in (server or {}).get("buyers", []) if b.get("name") != ONLINESIM]
    found = [{"name": ONLINESIM, "protocol": ONLINESIM, "path": None, "configured": True,
              "push_url_set": None if server is None else bool(server.get("push_url_set"))}]
    found += [{"name": b["name"], "protocol": b.get("protocol", SMSHUB), "path": b.get("path"),
               "configured": True, "push_url_set": bool(b.get("push_url_set"))} for b in facts]
    named = {b["name"] for b in found}
    found += [{"name": name, "protocol": None, "path": None, "configured": False,
               "push_url_set": None} for name in open_by_buyer if name not in named]
    calls = meta.last_calls(db, [b["name"] for b in found])
    running = server is not None and bool(server.get("running"))
    threshold = silence_s(server)
    for buyer in found:
        call = calls[buyer["name"]]
        age = round((now - from_text(call["at"])).total_seconds()) if call else None
        buyer.update(open=open_by_buyer.get(buyer["name"], 0), last_call=call,
                     last_call_age_s=age,
                     silent=running and buyer["configured"] and (age is None or age > threshold))
    return found


def silence_s(server: dict | None) -> float:
    """How long a buyer may stay silent before `status` warns: the server's
    RENTBOX_ALERT_SILENCE_S if it recorded it, else SILENCE_WARNING_S."""
    return float((server or {}).get("alert_silence_s") or SILENCE_WARNING_S)


def buyers_to_date(db: Database, now: dt.datetime) -> list[dict]:
    """Per buyer and currency, from the `books_by_buyer` tally: income credited this month
    (UTC) and pending now, in minor units of the currency, and the operations' success rate
    of all time: Onlinesim first. Money is never added across currencies."""
    month = now.astimezone(dt.timezone.utc).date().replace(day=1).isoformat()
    rows = db.rows(
        "SELECT buyer, currency,"
        " coalesce(sum(CASE WHEN day >= ? THEN credited_minor END), 0) AS credited_month_minor,"
        " sum(pending_minor) AS pending_minor, sum(operations) AS operations,"
        " sum(with_sms) AS with_sms, sum(failed) AS failed, sum(open) AS open"
        " FROM books_by_buyer GROUP BY buyer, currency"
        " ORDER BY buyer <> 'onlinesim', buyer, currency", (month,))
    for row in rows:
        decided = row["with_sms"] + row["failed"]
        row["success_rate"] = row["with_sms"] / decided if decided else None
    return rows


def products_to_date(db: Database, now: dt.datetime) -> list[dict]:
    """Per product and service, from the `books_by_service` tally: income credited this
    month (UTC), pending now, and the success rate of all time (operations that met their
    window, of those decided): rent first, then each service of the activations."""
    month = now.astimezone(dt.timezone.utc).date().replace(day=1).isoformat()
    rows = db.rows(
        "SELECT service, coalesce(sum(CASE WHEN day >= ? THEN credited_kopecks END), 0)"
        " AS credited_month_kopecks, sum(pending_kopecks) AS pending_kopecks,"
        " sum(with_sms) AS with_sms, sum(failed) AS failed, sum(open) AS open"
        " FROM books_by_service GROUP BY service ORDER BY service <> 'rent', service",
        (month,))
    for row in rows:
        row["product"] = "rent" if row["service"] == "rent" else "activations"
        decided = row["with_sms"] + row["failed"]
        row["success_rate"] = row["with_sms"] / decided if decided else None
    return rows


def _warnings(report: dict, now: dt.datetime) -> list[str]:
    warnings = []
    server, pool_counts, outbox = report["server"], report["pool"], report["outbox"]
    # Who takes the outbox's SMS: Onlinesim alone, or each SMS's own buyer.
    taker = "their buyers" if server and server.get("buyers") else "Onlinesim"
    if server is None:
        warnings.append("rentbox serve has never run on this database")
    elif not server["running"]:
        warnings.append("rentbox serve is not running (last started "
                        f"{_short_time(server['started_at'])})")
    else:
        if not server.get("push_url_set"):
            warnings.append("the server runs without RENTBOX_PUSH_URL: SMS are stored but "
                            "not pushed to Onlinesim")
        if server.get("services") and not server.get("activation_push_url_set"):
            warnings.append(f"the server offers activations ({', '.join(server['services'])})"
                            " without RENTBOX_ACTIVATION_PUSH_URL: their SMS are stored but "
                            "not pushed to Onlinesim")
    if pool_counts["total"] == 0:
        warnings.append("the pool is empty: import numbers with `rentbox numbers import`")
    elif pool_counts["free"] == 0:
        warnings.append("no number can be rented now")
    if pool_counts["total"] and pool_counts["banned"] >= max(
            1, BANNED_SHARE_WARNING * pool_counts["total"]):
        warnings.append(f"{pool_counts['banned']} of {pool_counts['total']} numbers are banned "
                        "after failed rentals: check that their SMS reach rentbox")
    sims = report["presence"]
    if sims["at_risk"]:
        shown = ", ".join(f"+{r['number']} (rental {r['operation_id']})"
                          for r in sims["at_risk"][:10])
        more = " …" if len(sims["at_risk"]) > 10 else ""
        warnings.append(f"{len(sims['at_risk'])} rented number(s) have their SIM offline: "
                        f"{shown}{more}; put them back into a port (their rentals stay open)")
    if sims["unported"]:
        shown = ", ".join(f"+{n} (port {v['port']})"
                          for n, v in list(sims["unported"].items())[:10])
        warnings.append(f"a gateway reports SIMs whose pool numbers have no port: {shown}; "
                        "import them with that port so that presence can follow them")
    if sims["port_mismatch"]:
        shown = ", ".join(f"port {port}: {v['reported']} reported, +{v['pool']} in the pool"
                          for port, v in list(sims["port_mismatch"].items())[:10])
        warnings.append(f"a gateway reports other numbers than the pool on its ports ({shown}): "
                        "SMS there go to the pool's number; correct the pool CSV or the box")
    storage = report["database"]
    if storage["write_problem"]:
        warnings.append(f"the database cannot be written: {storage['write_problem']} "
                        f"({_mib(storage['free_bytes'])} free): rentals and SMS are refused "
                        "until there is room")
    elif storage["free_bytes"] is not None and storage["free_bytes"] < LOW_DISK_WARNING_BYTES:
        warnings.append(f"only {_mib(storage['free_bytes'])} free on the database's disk")
    if outbox["retrying"]:
        warnings.append(f"{outbox['retrying']} SMS not yet accepted by {taker}, retrying; "
                        f"the oldest waits since {_short_time(outbox['oldest_pending_at'])} "
                        f"(last error: {outbox['last_error'] or 'unknown'})")
    elif outbox["oldest_pending_at"] and (
            now - from_text(outbox["oldest_pending_at"])).total_seconds() > STUCK_SMS_WARNING_S:
        warnings.append(f"{outbox['pending']} SMS waiting in the outbox since "
                        f"{_short_time(outbox['oldest_pending_at'])}")
    stale = report["operations"]["stale_failed"]
    if stale:
        shown = ", ".join(str(i) for i in stale[:5]) + (" …" if len(stale) > 5 else "")
        warnings.append(f"{len(stale)} rental(s) failed their guard window over a day ago and "
                        f"got no FINISH from Onlinesim ({shown}): close each with "
                        "`rentbox ops close ID`")
    lapsed = report["operations"]["lapsed_activations"]
    if lapsed:
        shown = ", ".join(str(i) for i in lapsed[:5]) + (" …" if len(lapsed) > 5 else "")
        warnings.append(f"{len(lapsed)} activation{'s' if len(lapsed) > 1 else ''} ran out "
                        f"of time without a FINISH from Onlinesim ({shown}): their numbers "
                        "are offered again; close one Onlinesim will not finish with "
                        "`rentbox ops close ID`")
    if outbox["failed"]:
        warnings.append(f"{outbox['failed']} SMS refused by {taker} for good "
                        "(`rentbox sms list --failed`)")
    last_call = report["last_onlinesim_call"]
    if server is not None and server["running"]:
        if last_call is None:
            warnings.append("Onlinesim has never called this server")
        elif (now - from_text(last_call["at"])).total_seconds() > silence_s(server):
            warnings.append(f"Onlinesim has not called since {_short_time(last_call['at'])}: "
                            "check the URL it was given and the reverse proxy")
    return warnings


def _buyer_warnings(report: dict) -> list[str]:
    """Buyers beside Onlinesim (whose own warnings are above) that the running server
    cannot push SMS to, or that are silent."""
    server = report["server"]
    if server is None or not server["running"]:
        return []
    warnings = []
    for buyer in report["buyers"]:
        if buyer["name"] == ONLINESIM or not buyer["configured"]:
            continue
        name, where = buyer["name"], buyer["path"] or "its path"
        if not buyer["push_url_set"]:
            setting = ("RENTBOX_SMSHUB_PUSH_URL" if name == SMSHUB
                       else f"push_url in [buyers.{name}] of the buyers file")
            warnings.append(f"the server runs without a push URL for {name} ({setting}): "
                            "its SMS are stored but never pushed to it")
        if buyer["last_call"] is None:
            warnings.append(f"{name} has never called this server: check the agent URL it "
                            f"was given (ending in {where}) and its key")
        elif buyer["silent"]:
            warnings.append(f"{name} has not called since "
                            f"{_short_time(buyer['last_call']['at'])} (it polls every 10-20 s):"
                            f" check the agent URL it was given (ending in {where}), its key "
                            "and the reverse proxy")
    return warnings


def _smsgate_ping_warnings(db: Database, now: dt.datetime) -> list[str]:
    """SMSGate devices that send SMS but no ping: the app's Ping is off by default, and
    without it their SIMs go offline a presence window after each report."""
    from rentbox.gateways import notes

    rules = meta.server_rules(db) or Rules()
    if not rules.presence:
        return []
    devices = notes.devices_without_ping(db, now, rules.presence_s)
    if not devices:
        return []
    shown = ", ".join(devices[:10]) + (" …" if len(devices) > 10 else "")
    return [f"SMSGate device(s) {shown} send SMS but no ping, so their SIMs go offline "
            f"{rules.presence_s:g} s after each report: in the app set Settings → Ping → "
            f"Interval (seconds) to {notes.ping_interval_s(rules.presence_s)} and add a "
            "system:ping webhook to /sms/smsgate"]


def _spool_warnings(spooled: dict | None) -> list[str]:
    """SMS that the gammu-smsd or smstools3 hook spooled and serve has not stored, and
    files it set aside."""
    from rentbox import spool

    if spooled is None:
        return []
    warnings = []
    if spooled["problem"]:
        warnings.append(f"the spool {spooled['dir']} cannot be read here "
                        f"({spooled['problem']}): its backlog is unknown")
    age = spooled["oldest_age_s"]
    if spooled["waiting"] and age is not None and age > SPOOL_WARNING_S:
        warnings.append(f"{spooled['waiting']} SMS wait in the spool {spooled['dir']}, the "
                        f"oldest since {_short_time(spooled['oldest_at'])}: rentbox serve "
                        "stores them within seconds while it runs; start it, or let it read "
                        "and remove the files there")
    if spooled["bad"]:
        warnings.append(f"{spooled['bad']} file(s) in {spooled['dir']}/{spool.BAD} could not be "
                        "stored (the log says why): correct each and move it back, or remove "
                        "it")
    return warnings


def _unwatched_warnings(db: Database, sims: dict) -> list[str]:
    """Numbers that no reporting gateway's ports hold, while presence is on: they are
    offered whatever their SIM, which Onlinesim blocks when a SIM is not in a port."""
    rules = meta.server_rules(db) or Rules()
    if not rules.presence or not sims["unwatched"]:
        return []
    return [f"{sims['unwatched']} number(s) not watched: no gateway reports their ports, so "
            "they are offered even when their SIM is not in a port (Onlinesim blocks a "
            "partner who over-reports); have their gateway report presence (README, SIM "
            "presence), or set RENTBOX_PRESENCE=off if none ever will"]


def _mib(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1024 / 1024:.1f} MiB"


def _short_time(text: str) -> str:
    return f"{text[:10]} {text[11:16]} UTC"


# ---------------------------------------------------------------------------------------
# rentbox report
# ---------------------------------------------------------------------------------------

GROUPINGS = ("day", "week", "month", "country", "number", "product", "service", "buyer")

# When an operation counts: closed ones when they closed (that is when income is
# credited), open ones when they started.
_WHEN = "coalesce(operations.finished_at, operations.created_at)"
_GROUP_SQL = {
    "day": f"substr({_WHEN}, 1, 10)",
    "week": f"date({_WHEN}, 'weekday 0', '-6 days')",  # the Monday of the week
    "month": f"substr({_WHEN}, 1, 7)",
    "country": "coalesce(operations.country, numbers.country)",
    "number": "numbers.number",
    # Rent, or single-service activations (any other service); and each service.
    "product": "CASE operations.service WHEN 'rent' THEN 'rent' ELSE 'activations' END",
    "service": "operations.service",
    "buyer": "operations.buyer",
}
# The order of the rows: by key; by buyer, Onlinesim first, then each buyer's currencies.
_ORDER_SQL = {"buyer": "key <> 'onlinesim', key, currency"}


@dataclasses.dataclass(frozen=True)
class ReportRow:
    """One group of a report (a day, week, month, country, number, product, service, or a
    buyer and currency), or the totals. Its sums are in minor units of `currency`
    (kopecks, cents); by anything but buyer they are RUB operations' only (a USD income is
    never added to roubles), while the counts take in every operation."""

    key: str
    operations: int
    sold: int
    cancelled: int
    refunded: int
    wrong_service: int
    open: int
    failed: int
    with_sms: int
    credited_kopecks: int
    pending_kopecks: int
    currency: str = "RUB"

    @property
    def success_rate(self) -> float | None:
        """Rentals with an SMS in time, of those decided; None when none is decided."""
        decided = self.with_sms + self.failed
        return self.with_sms / decided if decided else None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "success_rate": self.success_rate}


# The same groups over the tallies (tallies.py): `books_daily` has a row per day and
# country, `books_by_service` per day and service (either serves day, week and month).
_TALLY_GROUP_SQL = {
    "day": "day",
    "week": "date(day, 'weekday 0', '-6 days')",
    "month": "substr(day, 1, 7)",
    "country": "country",
    "product": "CASE service WHEN 'rent' THEN 'rent' ELSE 'activations' END",
    "service": "service",
    "buyer": "buyer",
}
_TALLY_OF = {"product": "books_by_service", "service": "books_by_service",
             "buyer": "books_by_buyer"}


def income_report(db: Database, *, by: str = "day", since: dt.datetime | None = None,
                  until: dt.datetime | None = None, from_rows: bool = False,
                  ) -> tuple[list[ReportRow], ReportRow]:
    """Operations and income grouped by day, week, month, country, number, product (rent,
    activations), service, or buyer and currency (a row each), with totals: every
    operation counted, and the income of RUB operations (the same totals, however the
    operations are grouped; `currency_totals` has each currency's own).

    `since` is inclusive, `until` exclusive, both on when an operation counts (above).
    Grouped by anything but number over whole days (the usual case), it reads the
    `books_daily` or `books_by_service` tally: a year's report costs the same on 1,000
    and 1,000,000 operations.
    By buyer it reads `books_by_buyer`.
    By number, or from a time of day, it reads the operations themselves (`from_rows`
    forces that, to check the tally against them).
    """
    if by not in GROUPINGS:
        raise InvalidInput(f"report by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    whole_days = all(t is None or t.astimezone(dt.timezone.utc).time() == dt.time()
                     for t in (since, until))
    if by in _TALLY_GROUP_SQL and whole_days and not from_rows:
        rows = _report_from_tally(db, by, since, until)
    else:
        rows = _report_from_rows(db, by, since, until)
    report = [ReportRow(**row) for row in rows]
    return report, _total(report, "RUB", counts_of=report)


_MONEY = ("credited_kopecks", "pending_kopecks")


def _total(rows: list[ReportRow], currency: str, counts_of: list[ReportRow]) -> ReportRow:
    """A totals row: the counts of `counts_of`, the money of `rows` in `currency`."""
    counts = [f.name for f in dataclasses.fields(ReportRow)
              if f.name not in ("key", "currency") + _MONEY]
    return ReportRow("total", **{f: sum(getattr(r, f) for r in counts_of) for f in counts},
                     **{f: sum(getattr(r, f) for r in rows if r.currency == currency)
                        for f in _MONEY}, currency=currency)


def currency_totals(rows: list[ReportRow]) -> list[ReportRow]:
    """The totals of each currency among `rows` (a report by buyer): its operations and
    its money, RUB first. Never a sum across currencies."""
    found = sorted({r.currency for r in rows}, key=lambda c: (c != "RUB", c))
    return [_total(rows, c, counts_of=[r for r in rows if r.currency == c]) for c in found]


def other_currencies(db: Database, *, since: dt.datetime | None = None,
                     until: dt.datetime | None = None) -> list[ReportRow]:
    """Each currency but RUB with income in the period (credited or pending): what a
    report in roubles leaves out, so that it can say so."""
    rows, _ = income_report(db, by="buyer", since=since, until=until)
    return [t for t in currency_totals(rows)
            if t.currency != "RUB" and (t.credited_kopecks or t.pending_kopecks)]


def _report_from_tally(db: Database, by: str, since: dt.datetime | None,
                       until: dt.datetime | None) -> list[dict]:
    from rentbox import tallies

    where, params = ["1"], []
    if since is not None:
        where.append("day >= ?")
        params.append(to_text(since)[:10])
    if until is not None:
        where.append("day < ?")
        params.append(to_text(until)[:10])
    if by == "buyer":  # each currency apart, its money under the ReportRow's names
        names = dict(zip(tallies.BUYER_BOOKS, tallies.BOOKS))
        sums = "currency, " + ", ".join(f"sum({name}) AS {names[name]}"
                                        for name in tallies.BUYER_BOOKS)
        group = "key, currency"
    else:
        sums = ", ".join(f"sum({name}) AS {name}" for name in tallies.BOOKS)
        group = "key"
    return db.rows(
        f"SELECT {_TALLY_GROUP_SQL[by]} AS key, {sums} FROM {_TALLY_OF.get(by, 'books_daily')}"
        f" WHERE {' AND '.join(where)} GROUP BY {group} HAVING sum(operations) > 0"
        f" ORDER BY {_ORDER_SQL.get(by, 'key')}", params)


def _report_from_rows(db: Database, by: str, since: dt.datetime | None,
                      until: dt.datetime | None) -> list[dict]:
    where, params = ["operations.test = 0"], []  # self-test rentals are not in the books
    if since is not None:
        where.append(f"{_WHEN} >= ?")
        params.append(to_text(since))
    if until is not None:
        where.append(f"{_WHEN} < ?")
        params.append(to_text(until))
    # Money in roubles counts RUB operations only, as the tallies do (tallies._FIGURES);
    # by buyer, each currency is a group of its own and keeps its money.
    by_buyer = by == "buyer"
    money = "true" if by_buyer else "operations.currency = 'RUB'"
    currency = " operations.currency AS currency," if by_buyer else ""
    return db.rows(
        f"""SELECT {_GROUP_SQL[by]} AS key,{currency}
            count(*) AS operations,
            coalesce(sum(finish_status = 3), 0) AS sold,
            coalesce(sum(finish_status = 4), 0) AS cancelled,
            coalesce(sum(finish_status = 5), 0) AS refunded,
            coalesce(sum(finish_status = 1), 0) AS wrong_service,
            coalesce(sum(state = 'open'), 0) AS open,
            coalesce(sum(failed_at IS NOT NULL), 0) AS failed,
            coalesce(sum(sms_accepted_at IS NOT NULL), 0) AS with_sms,
            coalesce(sum(CASE WHEN finish_status = 3 AND {money}
                              THEN final_sum_kopecks END), 0) AS credited_kopecks,
            coalesce(sum(CASE WHEN state = 'open' AND sms_accepted_at IS NOT NULL
                              AND failed_at IS NULL AND {money}
                              THEN initial_sum_kopecks END), 0) AS pending_kopecks
        FROM operations JOIN numbers ON numbers.id = operations.number_id
        WHERE {' AND '.join(where)}
        GROUP BY key{", currency" if by_buyer else ""}
        ORDER BY {_ORDER_SQL.get(by, 'key')}""",
        params,
    )


# ---------------------------------------------------------------------------------------
# rentbox numbers show
# ---------------------------------------------------------------------------------------


def number_history(db: Database, number: str, *, limit: int = 50) -> dict:
    """One number: its row and state, its rentals, SMS and events (bans and failures)."""
    from rentbox import events, operations, pool, services, sms

    row = pool.find_number(db, number)
    rentals = operations.list_operations(db, number=row["number"], limit=limit)
    return {
        "number": row["number"], "country": row["country"], "operator": row["operator"],
        "port": row["port"], "state": row["state"], "enabled": bool(row["enabled"]),
        "failures": row["failures"], "banned_until": row["banned_until"],
        "removed_at": row["removed_at"], "added_at": row["created_at"],
        "sim": row["sim"], "seen_at": row["seen_at"], "seen_by": row["seen_by"],
        "offline_since": row["offline_since"], "offline_reason": row["offline_reason"],
        "rentals": rentals,
        # The services it was sold for as an activation: tries, and when it was spent.
        "services": services.uses_of(db, row["id"]),
        "sms": sms.list_sms(db, number=row["number"], limit=limit),
        "events": events.for_number(db, row["id"])[-limit:],
    }
