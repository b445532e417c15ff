"""Dashboard: what the status page at GET / shows, as one dict (the page and its JSON).

Reads only, and cheap on a big database: health, warnings, the income to date and the
buyers (each one's last call, push URL and open operations, and which buyer gets what) are
`reports.status`'s own, the pool by country and operator and the per-day books come from
the tallies (`free_counts`, `books_daily`, `books_by_service`, `books_by_buyer`: income per
buyer and currency, never added across currencies), open rentals, offline SIMs and the outbox
through their partial indexes, alerts as `rentbox alerts list` reads them. Two read
rows: the push delays (the SMS delivered in the window, one column pair each) and the
gateways (their watched numbers, through `numbers_by_gateway`: about 1 ms per 1,000).

Every series covers the last `DAYS` days (UTC) up to and including today, one entry per
day; a day with nothing is a zero day (no delay figures: None), never a gap.
"""

from __future__ import annotations

import datetime as dt
import json

from rentbox import alerts, meta, presence, reports
from rentbox.clock import from_text, to_text
from rentbox.config import Rules
from rentbox.db import Database

# The charts' window, in days (today included).
DAYS = 90
# The most open rentals, offline SIMs, gateways and alerts listed (the counts are always
# whole).
MAX_RENTALS = 100
MAX_SIMS = 100
MAX_GATEWAYS = 50
MAX_ALERTS = 20
# Rental outcomes, in the order a chart stacks them (books_daily's columns).
OUTCOMES = ("sold", "cancelled", "refunded", "wrong_service", "open")


def overview(db: Database, now: dt.datetime, rules: Rules | None = None) -> dict:
    """Everything the status page shows, as of `now`; `rules` are the server's (by
    default the ones `rentbox serve` last started with), for the rentals' windows."""
    status = reports.status(db, now)
    rules = rules or meta.server_rules(db) or Rules()
    days = window(now)
    return {
        "at": status["at"],
        "health": {
            "ok": not status["warnings"],
            "server": status["server"],
            "last_onlinesim_call": status["last_onlinesim_call"],
            "database": status["database"],
            "backups": status["backups"],
            "replication": status["replication"],
        },
        "warnings": status["warnings"],
        "income": status["income"],
        # Rent and each activation service apart (issue 22): shown once there are any.
        "products": reports.products_to_date(db, now),
        # Each buyer and currency apart (issue 23): shown once there is another buyer.
        "buyer_income": reports.buyers_to_date(db, now),
        "buyers": {"list": status["buyers"], "policy": status["buyer_policy"]},
        "push": push_urls(status["server"]),
        "pool": {"by_state": status["pool"], "presence": _presence(status["presence"]),
                 "by_operator": by_operator(db)},
        "rentals": {**status["operations"],
                    "list": open_rentals(db, now, rules)},
        "offline_sims": {"count": status["presence"]["offline"],
                         "list": offline_sims(db, now)},
        "gateways": gateways(db, now, rules),
        "outbox": {k: status["outbox"][k] for k in
                   ("pending", "retrying", "failed", "expired", "oldest_pending_at",
                    "oldest_pending_age_s", "last_error")},
        "alerts": alerts.recent(db, MAX_ALERTS),
        "charts": {
            "days": days,
            "income": income(db, days),
            "rentals": rentals_by_outcome(db, days),
            "push_delay": push_delay(db, days),
        },
    }


def window(now: dt.datetime, days: int = DAYS) -> list[str]:
    """The days (YYYY-MM-DD, UTC) of the charts, oldest first, ending today."""
    today = now.astimezone(dt.timezone.utc).date()
    return [(today - dt.timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]


def income(db: Database, days: list[str]) -> dict:
    """Credited income per day (kopecks), and pending income now, from `books_daily`."""
    credited = _per_day(db, days, "sum(credited_kopecks)")
    pending = db.row("SELECT coalesce(sum(pending_kopecks), 0) AS k FROM books_daily")["k"]
    return {"credited_kopecks": [credited.get(d, 0) for d in days],
            "credited_total_kopecks": sum(credited.get(d, 0) for d in days),
            "pending_kopecks": pending}


def rentals_by_outcome(db: Database, days: list[str]) -> dict:
    """Rentals per day by outcome (as `books_daily` books them), and the failed ones."""
    columns = (*OUTCOMES, "failed")
    sums = ", ".join(f"sum({c}) AS {c}" for c in columns)
    rows = {r["day"]: r for r in db.rows(
        f"SELECT day, {sums} FROM books_daily WHERE day >= ? AND day <= ? GROUP BY day",
        (days[0], days[-1]))}
    return {c: [(rows[d][c] if d in rows else 0) for d in days] for c in columns}


def push_delay(db: Database, days: list[str]) -> dict:
    """Per day: SMS delivered to Onlinesim, and the p50 and p99 (seconds) of the time from
    storing each to Onlinesim taking it; None on a day without deliveries.

    A day that is over never changes (delivered SMS are kept, retention only blanks their
    text), so its figures are computed once per process and remembered; each page reads
    only today's SMS. They are found through their rentals (`operations_by_booking`): an
    SMS is pushed while its rental is open, so a rental booked (closed, or opened if still
    open) before the day before cannot hold one delivered on the day.
    """
    today = days[-1]
    missing = [d for d in days[:-1] if (db.path, d) not in _CLOSED_DAYS]
    figures = _delays(db, missing[0] if missing else today)
    for day in missing:
        _CLOSED_DAYS[(db.path, day)] = figures.get(day, (0, None, None))
    found = {d: _CLOSED_DAYS[(db.path, d)] for d in days[:-1]}
    found[today] = figures.get(today, (0, None, None))
    return {"count": [found[d][0] for d in days], "p50_s": [found[d][1] for d in days],
            "p99_s": [found[d][2] for d in days]}


# (database path, day) → (count, p50, p99) of the days that are over (push_delay).
_CLOSED_DAYS: dict[tuple, tuple] = {}


def _delays(db: Database, since_day: str) -> dict[str, tuple]:
    """(count, p50, p99) per day of the SMS delivered from `since_day` on: nearest rank,
    ceil(n * share), computed by SQLite."""
    since = since_day + "T00:00:00.000000Z"
    booked = (dt.date.fromisoformat(since_day) - dt.timedelta(days=1)).isoformat()
    rows = db.rows(
        """WITH delays AS (
            SELECT substr(s.delivered_at, 1, 10) AS day, max(0.0, round(
                (julianday(s.delivered_at) - julianday(s.created_at)) * 86400.0, 3)) AS s
            -- CROSS JOIN: the rentals first, through their index, then their SMS.
            FROM operations o CROSS JOIN sms s ON s.operation_id = o.id
            WHERE coalesce(o.finished_at, o.created_at) >= ? AND s.operation_id IS NOT NULL
              AND s.push_state = 'delivered' AND s.delivered_at >= ?),
        ranked AS (
            SELECT day, s, row_number() OVER (PARTITION BY day ORDER BY s) AS rank,
                count(*) OVER (PARTITION BY day) AS n FROM delays)
        SELECT day, n, max(CASE WHEN rank = (n + 1) / 2 THEN s END) AS p50,
            max(CASE WHEN rank = (n * 99 + 99) / 100 THEN s END) AS p99
        FROM ranked GROUP BY day""", (booked, since))
    return {r["day"]: (r["n"], r["p50"], r["p99"]) for r in rows}


def by_operator(db: Database) -> list[dict]:
    """Free (from the `free_counts` tally) and rented numbers per country and operator."""
    found: dict[tuple, dict] = {}
    for row in db.rows("SELECT country, operator, n FROM free_counts WHERE n > 0"):
        found[(row["country"], row["operator"])] = {"free": row["n"], "rented": 0}
    for row in db.rows(
            "SELECT n.country, coalesce(n.operator, '') AS operator, count(*) AS rented"
            " FROM operations o JOIN numbers n ON n.id = o.number_id"
            " WHERE o.state = 'open' GROUP BY 1, 2"):
        found.setdefault((row["country"], row["operator"]), {"free": 0, "rented": 0})[
            "rented"] = row["rented"]
    return [{"country": c, "operator": o, **v} for (c, o), v in sorted(found.items())]


def open_rentals(db: Database, now: dt.datetime, rules: Rules,
                 limit: int = MAX_RENTALS) -> list[dict]:
    """The open rentals (and activations) that need attention first: at risk (the SIM is
    offline: presence), then still waiting for an SMS (the least time left first), then
    failed awaiting FINISH, then the rest; oldest first within each. With their buyer,
    the number's port and how long its window (the guard window of a rental, the time of
    an activation) has left: `window_left_s`, None once it is decided."""
    rows = db.rows(
        "SELECT o.id, o.service, o.buyer, n.number, n.port, n.country, n.operator, o.created_at,"
        " o.failed_at, o.lapsed_at, o.sms_accepted_at,"
        " n.offline = 1 AND n.operation_id = o.id AS sim_offline"
        " FROM operations o JOIN numbers n ON n.id = o.number_id WHERE o.state = 'open'"
        " ORDER BY CASE WHEN n.offline = 1 AND n.operation_id = o.id THEN 0"
        " WHEN o.sms_accepted_at IS NULL AND o.failed_at IS NULL AND o.lapsed_at IS NULL"
        " THEN 1 WHEN o.failed_at IS NOT NULL THEN 2 ELSE 3 END, o.created_at, o.id LIMIT ?",
        (limit,))
    # Counted for the rows shown only (a subquery in the SELECT above would run for every
    # open rental before the sort).
    sms = {r["operation_id"]: r["n"] for r in db.rows(
        "SELECT operation_id, count(*) AS n FROM sms WHERE operation_id IN"
        " (SELECT value FROM json_each(?)) GROUP BY operation_id",
        (json.dumps([r["id"] for r in rows]),))}
    return [_rental(r, now, rules, sms.get(r["id"], 0)) for r in rows]


def _rental(row: dict, now: dt.datetime, rules: Rules, sms: int) -> dict:
    started = from_text(row["created_at"])
    rent = row["service"] == "rent"
    ends = started + dt.timedelta(seconds=rules.guard_s if rent else rules.activation_s)
    if row["failed_at"]:
        window = "failed"
    elif rent and row["sms_accepted_at"]:
        window = "met"
    elif row["lapsed_at"]:
        window = "lapsed"
    elif ends > now:
        window = "open"
    else:
        window = "deciding"  # over; rentbox decides it a margin later (operations.py)
    return {
        "id": row["id"], "service": row["service"], "buyer": row["buyer"],
        "number": row["number"],
        "port": row["port"], "country": row["country"], "operator": row["operator"],
        "started_at": row["created_at"],
        "age_s": round((now - started).total_seconds()),
        "sms": sms,
        "risk": ("sim_offline" if row["sim_offline"] else
                 "failed" if row["failed_at"] else None),
        "guard_met": row["sms_accepted_at"] is not None,
        "window": window, "window_ends_at": to_text(ends),
        "window_left_s": round((ends - now).total_seconds()) if window == "open" else None,
    }


def offline_sims(db: Database, now: dt.datetime, limit: int = MAX_SIMS) -> list[dict]:
    """Pool numbers whose SIM is offline, with their port: the rented ones first (their
    rentals are at risk), then the longest offline (`numbers_offline`)."""
    columns = ("number, port, seen_by, offline_since, offline_reason, operation_id,"
               " enabled, banned_until")
    # In the index's own order (offline_since, then id): a gateway that fell silent puts
    # many SIMs offline at the same time, and a tie broken by another column would sort
    # them all to find the first few.
    rows = db.rows(f"SELECT {columns} FROM numbers WHERE offline = 1 AND removed_at IS NULL"
                   " AND operation_id IS NOT NULL ORDER BY offline_since, id LIMIT ?",
                   (limit,))
    rows += db.rows(f"SELECT {columns} FROM numbers WHERE offline = 1 AND removed_at IS NULL"
                    " AND operation_id IS NULL ORDER BY offline_since, id LIMIT ?",
                    (limit - len(rows),))
    return [{
        "number": r["number"], "port": r["port"], "gateway": r["seen_by"],
        "offline_since": r["offline_since"],
        "offline_s": (round((now - from_text(r["offline_since"])).total_seconds())
                      if r["offline_since"] else None),
        "reason": r["offline_reason"], "rental": r["operation_id"],
        "state": ("rented" if r["operation_id"] is not None else
                  "disabled" if not r["enabled"] else
                  "banned" if r["banned_until"] else "free"),
    } for r in rows]


def gateways(db: Database, now: dt.datetime, rules: Rules,
             limit: int = MAX_GATEWAYS) -> list[dict]:
    """Each source of SIM presence (a gateway, or `cli` for `rentbox numbers online`):
    when it last reported (the last report or SMS that showed one of its SIMs present,
    or a report that dropped one), its SIMs online and offline now, and whether it is
    `silent` (nothing for longer than the presence window: its SIMs go offline)."""
    rows = db.rows(
        "SELECT seen_by AS gateway, max(seen_at) AS seen_at,"
        " max(CASE WHEN offline = 1 AND offline_reason = 'dropped' THEN offline_since END)"
        " AS dropped_at, coalesce(sum(offline = 0), 0) AS online,"
        " coalesce(sum(offline = 1), 0) AS offline"
        " FROM numbers WHERE seen_by IS NOT NULL AND removed_at IS NULL"
        " GROUP BY seen_by ORDER BY seen_by LIMIT ?", (limit,))
    found = []
    for r in rows:
        last = max(filter(None, (r["seen_at"], r["dropped_at"])), default=None)
        age_s = round((now - from_text(last)).total_seconds()) if last else None
        found.append({
            "gateway": r["gateway"], "last_report_at": last, "last_report_age_s": age_s,
            "online": r["online"], "offline": r["offline"],
            "silent": bool(rules.presence and r["gateway"] != presence.BY_HAND
                           and (age_s is None or age_s > rules.presence_s))})
    return found


def push_urls(server: dict | None) -> dict:
    """Whether the server pushes SMS to Onlinesim: RENTBOX_PUSH_URL (and, when it offers
    activations, RENTBOX_ACTIVATION_PUSH_URL) set; None while no server ever ran."""
    if server is None:
        return {"url_set": None, "activation_url_set": None, "services": []}
    return {"url_set": bool(server.get("push_url_set")),
            "activation_url_set": bool(server.get("activation_push_url_set")),
            "services": list(server.get("services") or [])}


def _presence(sims: dict) -> dict:
    return {k: v for k, v in sims.items() if isinstance(v, int)} | {
        "at_risk": len(sims["at_risk"])}


def _per_day(db: Database, days: list[str], expression: str) -> dict[str, int]:
    return {r["day"]: r["v"] for r in db.rows(
        f"SELECT day, {expression} AS v FROM books_daily WHERE day >= ? AND day <= ?"
        " GROUP BY day", (days[0], days[-1]))}

