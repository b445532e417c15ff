"""Dashboard: what the status page at GET / shows, as one dict (the page and its JSON).

Reads only, and cheap on a big database: health and warnings are `reports.status`'s own,
the pool by country and operator and the per-day books come from the tallies
(`free_counts`, `books_daily`), open rentals and the outbox through their partial
indexes, alerts as `rentbox alerts list` reads them. Only the push delays read rows:
the SMS delivered in the window, one column pair each.

Every series covers the last `DAYS` days (UTC) up to and including today, one entry per
day; a day with nothing is a zero day (no delay figures: None), never a gap.
"""

from __future__ import annotations

import datetime as dt

from rentbox import alerts, reports
from rentbox.clock import from_text
from rentbox.db import Database

# The charts' window, in days (today included).
DAYS = 90
# The most open rentals and alerts listed (the counts are always whole).
MAX_RENTALS = 100
MAX_ALERTS = 20
# Rental outcomes, in the order a chart stacks them (books_daily's columns).
OUTCOMES = ("sold", "cancelled", "refunded", "wrong_service", "open")


def overview(db: Database, now: dt.datetime) -> dict:
    """Everything the status page shows, as of `now`."""
    status = reports.status(db, now)
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
        "pool": {"by_state": status["pool"], "presence": _presence(status["presence"]),
                 "by_operator": by_operator(db)},
        "rentals": {**status["operations"],
                    "list": open_rentals(db, now)},
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


def open_rentals(db: Database, now: dt.datetime, limit: int = MAX_RENTALS) -> list[dict]:
    """The open rentals, oldest first: age, SMS count, and whether they are at risk (the
    SIM is offline: presence) or failed their guard window."""
    rows = db.rows(
        "SELECT o.id, n.number, n.country, n.operator, o.created_at, o.failed_at,"
        " o.sms_accepted_at, n.offline,"
        " (SELECT count(*) FROM sms s WHERE s.operation_id = o.id) AS sms"
        " FROM operations o JOIN numbers n ON n.id = o.number_id"
        " WHERE o.state = 'open' ORDER BY o.created_at, o.id LIMIT ?", (limit,))
    return [{
        "id": r["id"], "number": r["number"], "country": r["country"],
        "operator": r["operator"], "started_at": r["created_at"],
        "age_s": round((now - from_text(r["created_at"])).total_seconds()),
        "sms": r["sms"],
        "risk": ("sim_offline" if r["offline"] else
                 "failed" if r["failed_at"] else None),
        "guard_met": r["sms_accepted_at"] is not None,
    } for r in rows]


def _presence(sims: dict) -> dict:
    return {k: v for k, v in sims.items() if isinstance(v, int)} | {
        "at_risk": len(sims["at_risk"])}


def _per_day(db: Database, days: list[str], expression: str) -> dict[str, int]:
    return {r["day"]: r["v"] for r in db.rows(
        f"SELECT day, {expression} AS v FROM books_daily WHERE day >= ? AND day <= ?"
        " GROUP BY day", (days[0], days[-1]))}

