"""Services: which activations are offered, their counts, and the numbers spent for each.

A single-service activation (protocol.md 6) sells a number for one service (`vk`, `wa`,
`tg`, …). Once a client has made an account with that service on a number, the number is
worth nothing more for that service: it is *spent* for it, and never offered for it again
(it still is for rent and for every other service). What spends a number for a service
is the FINISH of an activation:

    status 3 (sold)               spent
    status 1 (already used)       spent ("do not offer this number for it again")
    status 4 (cancelled)          one try; the MAX_TRIES-th cancelled try spends it
    status 5 (refunded)           neither

`service_uses` holds a number's tries and spent services. The count GET_SERVICES reports
for (country, operator, service) is the free numbers there (`free_counts`) minus those
spent for the service (`spent_free_counts`): two tallies that triggers keep exact
(db.py m006, m013), so the answer costs the same on 1,000 and 1,000,000 numbers;
each buyer's view of them is buyers.view.
"""

from __future__ import annotations

import datetime as dt
import logging

from rentbox import buyers, events, pool
from rentbox.clock import to_text
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import InvalidInput, NotFound
from rentbox.protocol import CANCELLED, RENT, SOLD, WRONG_SERVICE, service_name

log = logging.getLogger("rentbox.rules")

# A number cancelled this many times for a service is spent for it: SMSHub's rule, which
# Onlinesim's v1 copies ("a cancelled number may be offered up to 3 more times").
MAX_TRIES = 4

# Activations' spent numbers are excluded from a claim by this predicate on `numbers`
# (its one parameter: the service), served by service_uses's primary key.
UNSPENT = ("NOT EXISTS (SELECT 1 FROM service_uses WHERE service_uses.number_id = numbers.id"
           " AND service_uses.service = ? AND service_uses.spent_at IS NOT NULL)")


def parse_offered(text: str | None) -> tuple[str, ...]:
    """RENTBOX_SERVICES: comma-separated service names, in the order given, without
    repeats. Empty or None: no activations. Raises InvalidInput for a bad name."""
    offered: list[str] = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name = service_name(item, "a service in RENTBOX_SERVICES")
        if name == RENT:
            raise InvalidInput("RENTBOX_SERVICES lists activations' services; rent is always "
                               "offered and must not be listed")
        if name not in offered:
            offered.append(name)
    return tuple(offered)


def record_finish(db: Database, now: dt.datetime, operation: dict, status: int) -> None:
    """What an activation's FINISH does to its number's standing with its service (see
    the module's docstring). Inside the FINISH's transaction."""
    service, number_id = operation["service"], operation["number_id"]
    if status in (SOLD, WRONG_SERVICE):
        reason = "sold for it" if status == SOLD else "FINISH 1: already used for it"
        _spend(db, now, number_id, service, operation["id"], reason, tries=0)
    elif status == CANCELLED:
        tries = db.execute(
            "INSERT INTO service_uses (number_id, service, tries, updated_at)"
            " VALUES (?, ?, 1, ?) ON CONFLICT (number_id, service) DO UPDATE"
            " SET tries = tries + 1, updated_at = excluded.updated_at RETURNING tries",
            (number_id, service, to_text(now))).fetchone()[0]
        if tries >= MAX_TRIES:
            _spend(db, now, number_id, service, operation["id"],
                   f"cancelled {tries} times for it", tries=tries)


def _spend(db: Database, now: dt.datetime, number_id: int, service: str, operation_id: int,
           reason: str, *, tries: int) -> None:
    stamp = to_text(now)
    spent = db.execute(
        "INSERT INTO service_uses (number_id, service, tries, spent_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (number_id, service) DO UPDATE"
        " SET spent_at = excluded.spent_at, updated_at = excluded.updated_at"
        " WHERE spent_at IS NULL RETURNING number_id",
        (number_id, service, tries, stamp, stamp)).fetchone()
    if spent:
        events.record(db, now, "service_spent", operation_id=operation_id,
                      number_id=number_id, service=service, reason=reason)


def unspend(db: Database, now: dt.datetime, number: str, service: str,
            rules: Rules | None = None) -> None:
    """`rentbox numbers unspend`: offer a number for a service again (its tries start
    again), whichever of its names is given (`rules`: the partner's aliases). Raises
    NotFound if it is not spent for it."""
    service = buyers.canonical(rules or Rules(), service_name(service, "service"))
    with db.transaction():
        row = pool.find_number(db, number)
        gone = db.execute("DELETE FROM service_uses WHERE number_id = ? AND service = ?"
                          " RETURNING spent_at", (row["id"], service)).fetchone()
        if gone is None or gone[0] is None:
            raise NotFound(f"+{row['number']} is not spent for {service}")
        events.record(db, now, "service_unspent", number_id=row["id"], service=service,
                      reason="by hand")
    log.info("+%s is offered for %s again (by hand)", row["number"], service)


def uses_of(db: Database, number_id: int) -> list[dict]:
    """A number's services: each with its cancelled tries and when it was spent."""
    return db.rows("SELECT service, tries, spent_at FROM service_uses WHERE number_id = ?"
                   " ORDER BY service", (number_id,))


def overview(db: Database, rules: Rules) -> list[dict]:
    """`rentbox services`: each offered service with what can be issued for it now, the
    numbers spent for it, and its open activations. Spent services no longer offered are
    listed too (offered: False). Services are named by their short codes (buyers.py),
    whichever buyer they are offered to."""
    offered = tuple(dict.fromkeys(
        code for buyer in buyers.all_buyers(rules)
        for code in buyers.offered(rules, buyer.name).values()))
    # What any buyer could take, reservations aside: the pool's free numbers not spent for
    # the service (the tallies every buyer's view is made of, buyers.read_stock).
    stock = buyers.read_stock(db, set(offered), shares=False)
    free = sum(stock.free.values())
    available = {service: free for service in offered}
    for (_, _, service), n in stock.spent.items():
        available[service] -= n
    spent = {r["service"]: r["n"] for r in db.rows(
        "SELECT service, count(*) AS n FROM service_uses WHERE spent_at IS NOT NULL"
        " GROUP BY service")}
    open_now = {r["service"]: r["n"] for r in db.rows(
        "SELECT service, count(*) AS n FROM operations WHERE state = 'open'"
        " AND service <> 'rent' GROUP BY service")}
    names = list(offered) + sorted((set(spent) | set(open_now)) - set(offered))
    return [{"service": name, "offered": name in offered,
             "available": available.get(name, 0), "spent": spent.get(name, 0),
             "open": open_now.get(name, 0)} for name in names]

