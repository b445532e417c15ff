"""Tallies: figures the database keeps as the rows change, and their check.

GET_SERVICES, `rentbox status` and `rentbox report` read tallies instead of counting
rows, so they cost the same on 1,000 and 1,000,000 numbers or operations:

- `free_counts`: the numbers that can be rented now, per country and operator (operator
  '' for numbers without one), by the definition of pool.FREE;
- `pool_counts`: the pool by state (free, rented, rented_disabled, disabled, banned,
  offline) and by SIM presence (sim_online, sim_offline, sim_unwatched), removed numbers
  left out;
- `books_daily`: each day's and country's rentals and income, as reports.py defines
  them (a closed rental on the day it closed, an open one on the day it began; under the
  country its number had when the rental was issued, `operations.country`);
- `books_by_service`: the same figures per day and service ('rent', or an activation's
  service), for the books per product and per service;
- `books_by_buyer`: the same figures per day, buyer and currency (the two above count
  the money of RUB operations only: a USD income is never added to roubles);
- `held_counts`: numbers held by an operation, per buyer and country (buyers.py);
- `spent_free_counts`: free numbers spent for a service (services.py), per country and
  operator: GET_SERVICES counts a service as free_counts minus this.

Triggers (db.py, m006) update them inside the transaction that changes a row, whatever
code changes it, so they cannot drift from the rows by a missed call. The one exception
is a bulk import, which counts the numbers it inserts once per batch, inside the same
transaction (numbers_inserted_in_bulk, m015). `verify` recounts
each one from the rows, the way it was defined, and reports any difference;
`rentbox housekeep --verify` runs it and repairs what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator

from rentbox.db import Database
from rentbox.pool import FREE

STATE_SQL = """CASE
    WHEN operation_id IS NOT NULL AND enabled = 0 THEN 'rented_disabled'
    WHEN operation_id IS NOT NULL THEN 'rented'
    WHEN enabled = 0 THEN 'disabled'
    WHEN banned_until IS NOT NULL THEN 'banned'
    WHEN offline = 1 THEN 'offline' ELSE 'free' END"""
SIM_SQL = """CASE WHEN offline = 1 THEN 'sim_offline'
    WHEN seen_by IS NULL THEN 'sim_unwatched' ELSE 'sim_online' END"""
BOOKS = ("operations", "sold", "cancelled", "refunded", "wrong_service", "open", "failed",
         "with_sms", "credited_kopecks", "pending_kopecks")

# The books' figures of a group of operations `o` (db.py m006, m013 and m014 keep them
# so); `{money}`: which operations' sums count (the RUB books leave other currencies out).
_FIGURES_OF = """count(*) AS operations,
            coalesce(sum(o.finish_status = 3), 0) AS sold,
            coalesce(sum(o.finish_status = 4), 0) AS cancelled,
            coalesce(sum(o.finish_status = 5), 0) AS refunded,
            coalesce(sum(o.finish_status = 1), 0) AS wrong_service,
            coalesce(sum(o.state = 'open'), 0) AS open,
            coalesce(sum(o.failed_at IS NOT NULL), 0) AS failed,
            coalesce(sum(o.sms_accepted_at IS NOT NULL), 0) AS with_sms,
            coalesce(sum(CASE WHEN o.finish_status = 3 AND {money}
                              THEN o.final_sum_kopecks END), 0) AS credited_{unit},
            coalesce(sum(CASE WHEN o.state = 'open' AND o.sms_accepted_at IS NOT NULL
                              AND o.failed_at IS NULL AND {money}
                              THEN o.initial_sum_kopecks END), 0) AS pending_{unit}"""
_FIGURES = _FIGURES_OF.format(money="o.currency = 'RUB'", unit="kopecks")
BUYER_BOOKS = BOOKS[:-2] + ("credited_minor", "pending_minor")

# Each tally: its key columns, its value columns, and the recount from the rows.
_RECOUNT = {
    "free_counts": (("country", "operator"), ("n",), f"""
        SELECT country, coalesce(operator, '') AS operator, count(*) AS n FROM numbers
        WHERE {FREE} GROUP BY 1, 2"""),
    "pool_counts": (("key",), ("n",), f"""
        SELECT key, count(*) AS n FROM (
            SELECT {STATE_SQL} AS key FROM numbers WHERE removed_at IS NULL
            UNION ALL SELECT {SIM_SQL} FROM numbers WHERE removed_at IS NULL)
        GROUP BY key"""),
    "books_daily": (("day", "country"), BOOKS, f"""
        SELECT substr(coalesce(o.finished_at, o.created_at), 1, 10) AS day,
            coalesce(o.country, n.country) AS country,
            {_FIGURES}
        FROM operations o JOIN numbers n ON n.id = o.number_id
        WHERE o.test = 0 GROUP BY 1, 2"""),
    "spent_free_counts": (("country", "operator", "service"), ("n",), f"""
        SELECT numbers.country, coalesce(numbers.operator, '') AS operator, u.service,
            count(*) AS n
        FROM numbers JOIN service_uses u ON u.number_id = numbers.id
        WHERE u.spent_at IS NOT NULL AND {FREE} GROUP BY 1, 2, 3"""),
    "books_by_service": (("day", "service"), BOOKS, f"""
        SELECT substr(coalesce(o.finished_at, o.created_at), 1, 10) AS day, o.service,
            {_FIGURES}
        FROM operations o WHERE o.test = 0 GROUP BY 1, 2"""),
    "books_by_buyer": (("day", "buyer", "currency"), BUYER_BOOKS, f"""
        SELECT substr(coalesce(o.finished_at, o.created_at), 1, 10) AS day, o.buyer,
            o.currency, {_FIGURES_OF.format(money="true", unit="minor")}
        FROM operations o WHERE o.test = 0 GROUP BY 1, 2, 3"""),
    "held_counts": (("buyer", "country"), ("n",), """
        SELECT o.buyer, n.country, count(*) AS n FROM numbers n
        JOIN operations o ON o.id = n.operation_id GROUP BY 1, 2"""),
}


_LARGEST_ID = 2**63 - 1

# What the numbers inserted since `after_id` add to the pool tallies: the recount above
# over those rows alone (a number's insert trigger adds exactly its own row's figures).
# NOT INDEXED: read the new rows by id, never through a free-number index that FREE
# matches, which would read the whole pool for each batch.
_ADD_INSERTED = (f"""
    INSERT INTO free_counts (country, operator, n)
        SELECT country, coalesce(operator, ''), count(*) FROM numbers NOT INDEXED
        WHERE id > :after_id AND {FREE} GROUP BY 1, 2
        ON CONFLICT (country, operator) DO UPDATE SET n = n + excluded.n""", f"""
    INSERT INTO pool_counts (key, n)
        SELECT key, count(*) FROM (
            SELECT {STATE_SQL} AS key FROM numbers NOT INDEXED
                WHERE id > :after_id AND removed_at IS NULL
            UNION ALL SELECT {SIM_SQL} FROM numbers NOT INDEXED
                WHERE id > :after_id AND removed_at IS NULL)
        WHERE true GROUP BY key
        ON CONFLICT (key) DO UPDATE SET n = n + excluded.n""")


@contextlib.contextmanager
def numbers_inserted_in_bulk(db: Database) -> Iterator[int]:
    """Count the numbers inserted inside this block in the tallies at its end, with one
    statement per tally, rather than row by row by their insert trigger (m015). Yields
    the largest id before the block: the rows it inserts have larger ones.

    Only inside a write transaction, for numbers that the block inserts and then leaves
    alone (an import batch): an update trigger on a row not counted yet would take out
    of the tallies what was never put in. The insert trigger stands aside while
    `tallies_deferred` has its row, which this block puts there and deletes again
    before the transaction can commit.
    If the block raises, the transaction must roll back (db.transaction() does), which
    takes the row back too. New rows are told apart by id: SQLite gives an inserted row
    one more than the largest id (the table has no AUTOINCREMENT), unless the largest
    possible id is taken, when it picks any free one: then this refuses.
    """
    after_id = db.execute("SELECT coalesce(max(id), 0) FROM numbers").fetchone()[0]
    if after_id >= _LARGEST_ID:
        raise RuntimeError("numbers has the largest possible id: new ids would be random")
    db.execute("INSERT INTO tallies_deferred (only) VALUES (1)")
    yield after_id
    db.execute("DELETE FROM tallies_deferred")
    for statement in _ADD_INSERTED:
        db.execute(statement, {"after_id": after_id})


@dataclasses.dataclass(frozen=True)
class Difference:
    """One key whose tally differs from the recount."""

    tally: str
    key: tuple
    stored: dict | None
    recounted: dict | None

    def __str__(self) -> str:
        return (f"{self.tally} {'/'.join(map(str, self.key))}: stored {_show(self.stored)},"
                f" recounted {_show(self.recounted)}")


def _show(figures: dict | None) -> str:
    if not figures:
        return "0"
    if len(figures) == 1:
        return str(next(iter(figures.values())))
    return ", ".join(f"{k} {v}" for k, v in figures.items())


def verify(db: Database) -> list[Difference]:
    """Every key where a tally differs from a recount of the rows (rows of zeros count as
    absent). A read: the recount and the tallies come from one snapshot."""
    differences = []
    db.conn.execute("BEGIN")  # one read transaction: the rows and the tallies agree in time
    try:
        for tally, (keys, values, recount) in _RECOUNT.items():
            stored = _by_key(db.rows(f"SELECT * FROM {tally}"), keys, values)
            expected = _by_key(db.rows(recount), keys, values)
            for key in sorted(set(stored) | set(expected), key=repr):
                if stored.get(key) != expected.get(key):
                    differences.append(Difference(tally, key, stored.get(key),
                                                  expected.get(key)))
    finally:
        db.conn.execute("ROLLBACK")
    return differences


def rebuild(db: Database) -> None:
    """Replace every tally by a recount of the rows (after `verify` found a difference)."""
    with db.transaction():
        for tally, (keys, values, recount) in _RECOUNT.items():
            columns = ", ".join(keys + values)
            db.execute(f"DELETE FROM {tally}")
            db.execute(f"INSERT INTO {tally} ({columns}) SELECT {columns} FROM ({recount})")


def _by_key(rows: list[dict], keys: tuple, values: tuple) -> dict[tuple, dict]:
    found = {}
    for row in rows:
        figures = {v: row[v] for v in values}
        if any(figures.values()):
            found[tuple(row[k] for k in keys)] = figures
    return found
