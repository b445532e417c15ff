"""Rent operations: opening one on a free number, finishing it, and their event rows.

States and transitions (one writer per transition, each a conditional update plus an
event row in the same transaction):

    (none) --GET_NUMBER--> open --FINISH_ACTIVATION(1|3|4|5)--> closed

While an operation is open it holds its number (`numbers.operation_id`); FINISH releases
it. A repeated FINISH on a closed operation changes nothing (protocol.md 3.3).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging

from rentbox import events
from rentbox.clock import to_text
from rentbox.db import Database
from rentbox.pool import FREE
from rentbox.protocol import FINISH_OUTCOMES, FinishRequest, NoOperation, RentRequest

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Rental:
    activation_id: int
    number: str


def open_rent(db: Database, now: dt.datetime, request: RentRequest) -> Rental | None:
    """Claim the free number that has been idle longest and open an operation on it.

    Returns None when no free number matches. The read and both writes happen in one
    IMMEDIATE transaction, so concurrent callers can never claim the same number; the
    conditional update is a second line of defence.
    """
    where = [FREE]
    params: list[object] = []
    if request.country is not None:
        where.append("numbers.country = ?")
        params.append(request.country)
    if request.operator is not None:
        where.append("numbers.operator = ?")
        params.append(request.operator)
    # exceptionPhoneSet: one NOT IN per prefix length, each over a JSON array that SQLite
    # reads once per query (a correlated subquery would re-parse it for every row: 5x
    # slower when most of the pool is excluded). Numbers and prefixes are ASCII digits.
    by_length: dict[int, list[str]] = {}
    for prefix in request.excluded_prefixes:
        by_length.setdefault(len(prefix), []).append(prefix)
    for length, prefixes in sorted(by_length.items()):
        where.append(f"substr(numbers.number, 1, {length:d})"
                     " NOT IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(prefixes))
    stamp = to_text(now)
    with db.transaction():
        candidate = db.row(
            f"SELECT id, number FROM numbers WHERE {' AND '.join(where)}"
            " ORDER BY idle_since, id LIMIT 1",
            params,
        )
        if candidate is None:
            return None
        activation_id = db.execute(
            "INSERT INTO operations (number_id, state, requested_country, requested_operator,"
            " initial_sum_kopecks, created_at) VALUES (?, 'open', ?, ?, ?, ?)",
            (candidate["id"], request.country, request.operator, request.sum_kopecks, stamp),
        ).lastrowid
        claimed = db.execute(
            "UPDATE numbers SET operation_id = ? WHERE id = ? AND operation_id IS NULL",
            (activation_id, candidate["id"]),
        ).rowcount
        if claimed != 1:  # impossible under BEGIN IMMEDIATE; refuse rather than double-issue
            raise RuntimeError(f"number {candidate['number']} was claimed concurrently")
        events.record(
            db, now, "rent_opened", operation_id=activation_id, number_id=candidate["id"],
            sum_kopecks=request.sum_kopecks, country=request.country,
            operator=request.operator,
            excluded_prefixes=list(request.excluded_prefixes) or None,
        )
    return Rental(activation_id, candidate["number"])


def finish_rent(db: Database, now: dt.datetime, request: FinishRequest) -> bool:
    """Close an open operation and free its number. Returns False if it was already closed.

    Raises NoOperation for an id rentbox never issued.
    """
    stamp = to_text(now)
    with db.transaction():
        operation = db.row(
            "SELECT id, number_id, state, finish_status FROM operations WHERE id = ?",
            (request.activation_id,),
        )
        if operation is None:
            raise NoOperation(request.activation_id)
        if operation["state"] == "closed":
            closed = False
        else:
            db.execute(
                "UPDATE operations SET state = 'closed', finish_status = ?,"
                " final_sum_kopecks = ?, finished_at = ? WHERE id = ? AND state = 'open'",
                (request.status, request.sum_kopecks, stamp, request.activation_id),
            )
            db.execute(
                "UPDATE numbers SET operation_id = NULL, idle_since = ? WHERE operation_id = ?",
                (stamp, request.activation_id),
            )
            events.record(
                db, now, "rent_finished", operation_id=request.activation_id,
                number_id=operation["number_id"], status=request.status,
                outcome=FINISH_OUTCOMES[request.status], sum_kopecks=request.sum_kopecks,
            )
            closed = True
    if not closed and operation["finish_status"] != request.status:
        log.info("repeated FINISH of operation %d with status %d (closed with %d): ignored",
                 request.activation_id, request.status, operation["finish_status"])
    return closed
