"""Retention: SMS texts (one-time codes, private messages) are not kept for ever.

`keep_days` after a rental closed, the texts of its SMS are replaced by PRUNED_TEXT and
the SMS marked `pruned_at`; an SMS that belongs to no rental is pruned `keep_days` after
it arrived. The rows stay, with sender, times and delivery facts: the books, `sms list`
and the outbox's history remain whole. An SMS still waiting to be pushed is never pruned.

Housekeeping prunes a small batch at each pass (PRUNE_BATCH), so the write lock is never
held for long; `rentbox prune` does all that is due at once, batch after batch. The
rentals already pruned are remembered by a mark in `meta` (when the last pruned one
closed), so a pass reads only rentals closed since: its cost does not grow with history.
"""

from __future__ import annotations

import datetime as dt
import json

from rentbox import events, meta
from rentbox.clock import to_text
from rentbox.db import Database

PRUNED_TEXT = "(text removed after the retention period)"
# SMS texts pruned per transaction.
PRUNE_BATCH = 200
# meta key: {"closed_through": the closing time of the last rental whose SMS are pruned}.
MARK = "retention.sms"

# Closed rentals by when they closed (operations_by_booking: a closed rental counts at
# `finished_at`), after the mark and up to the cutoff.
_CLOSED_DUE = ("state = 'closed' AND coalesce(finished_at, created_at) > ?"
               " AND coalesce(finished_at, created_at) <= ?")


def prune_due(db: Database, now: dt.datetime, keep_days: float,
              limit: int = PRUNE_BATCH) -> int:
    """Prune one batch of what is due (at most about `limit` SMS). Returns how many SMS
    texts were pruned; 0 when nothing is due (or `keep_days` is 0: keep for ever)."""
    if keep_days <= 0:
        return 0
    cutoff = to_text(now - dt.timedelta(days=keep_days))
    pruned = 0
    with db.transaction():
        mark = (meta.get(db, MARK) or {}).get("closed_through", "")
        rentals = db.rows(
            "SELECT id, coalesce(finished_at, created_at) AS closed_at FROM operations"
            f" WHERE {_CLOSED_DUE} ORDER BY coalesce(finished_at, created_at), id LIMIT ?",
            (mark, cutoff, limit))
        for rental in rentals:
            pruned += _prune(db, now, "operation_id = ?", (rental["id"],))
        if rentals:
            meta.put_within(db, now, MARK, {"closed_through": rentals[-1]["closed_at"]})
        unrouted = db.rows(
            "SELECT id FROM sms WHERE operation_id IS NULL AND pruned_at IS NULL"
            " AND created_at <= ? ORDER BY created_at LIMIT ?", (cutoff, limit))
        if unrouted:
            pruned += _prune(db, now, "id IN (SELECT value FROM json_each(?))",
                             (json.dumps([r["id"] for r in unrouted]),))
    return pruned


def prune_all(db: Database, now: dt.datetime, keep_days: float) -> int:
    """Prune everything that is due, one batch per transaction (`rentbox prune`)."""
    total = 0
    while True:
        done = prune_due(db, now, keep_days)
        if not done and not _more_rentals(db, now, keep_days):
            return total
        total += done


def _more_rentals(db: Database, now: dt.datetime, keep_days: float) -> bool:
    """Whether closed rentals are still due (a batch of rentals without SMS prunes none)."""
    mark = (meta.get(db, MARK) or {}).get("closed_through", "")
    cutoff = to_text(now - dt.timedelta(days=keep_days))
    return bool(db.execute(f"SELECT EXISTS (SELECT 1 FROM operations WHERE {_CLOSED_DUE})",
                           (mark, cutoff)).fetchone()[0])


def _prune(db: Database, now: dt.datetime, where: str, params: tuple) -> int:
    rows = db.rows(f"UPDATE sms SET text = ?, pruned_at = ? WHERE {where}"
                   " AND pruned_at IS NULL AND push_state != 'pending'"
                   " RETURNING id, operation_id, number_id",
                   (PRUNED_TEXT, to_text(now), *params))
    if rows:
        events.record(db, now, "sms_pruned", operation_id=rows[0]["operation_id"],
                      count=len(rows), reason="the retention period ended")
    return len(rows)

