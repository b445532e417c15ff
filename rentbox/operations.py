"""Rent operations: opening one on a free number, the guard window, finishing it.

States and transitions (each a conditional update plus an event row, in one write
transaction):

    (none) --GET_NUMBER--> open --FINISH_ACTIVATION(1|3|4|5)--> closed
                           open --`rentbox ops close` (failed rentals; any with --force)--> closed

While an operation is open and has not failed, it holds its number
(`numbers.operation_id`). Two things can happen to an open operation before FINISH:

- Onlinesim accepts an SMS of the rental (PUSH_SMS answered SUCCESS) before rentbox
  decides its guard window (`sms_accepted_at`): the rental is a success, as Onlinesim
  sees it, and the number's failure count starts again. An SMS that was only stored,
  that Onlinesim refused (BAD_SERVICE) or that could not reach it in time does not
  count: Onlinesim saw no SMS in that rental.
- the guard window passes without that (`failed_at`, failure `guard_expired`):
  Onlinesim cancels such a rental on its side, so rentbox frees the number and counts
  a failure, but keeps the operation open in its books until FINISH arrives
  (protocol.md: never close before FINISH). This is decided `rules.guard_margin_s`
  after the window ends: Onlinesim records a rental a moment after rentbox commits it,
  and a push sent just in time may still be on its way; a SUCCESS until then proves
  the rental was alive on Onlinesim's side.

A FINISH decides its own rental: a FINISH with status 4 for a rental with no SMS
accepted is a failure (`cancelled_without_sms`, or `guard_expired` once the window was
due); 1, 3 and 5 count none, even when the window was due and not yet applied. An
operation counts as at most one failure. A repeated FINISH on a closed operation
changes nothing (protocol.md 3.3). When an operation ends (closed, or failed), its SMS
that Onlinesim has not taken expire: never pushed, since the number can be rented
again.

The request's time is read once the write lock is held (functions that take a `clock`):
a request that waited for the lock must not date its rental, or the end of its guard
window, to before it was served.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random

from rentbox import bans, events, pool, presence
from rentbox.clock import Clock, to_text
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import Conflict, InvalidInput, NotFound, TooLate, Unavailable
from rentbox.pool import FREE
from rentbox.protocol import (CANCELLED, FINISH_OUTCOMES, SOLD, FinishRequest, NoOperation,
                              RentRequest)

log = logging.getLogger("rentbox.rules")



@dataclasses.dataclass(frozen=True)
class Rental:
    """A number issued by GET_NUMBER, and the operation (activationId) holding it."""

    activation_id: int
    number: str


# ---------------------------------------------------------------------------------------
# What happens as time passes. Each function runs inside the caller's write transaction
# and touches only what is due, through partial indexes, so its cost does not grow with
# history.
# ---------------------------------------------------------------------------------------


# Open operations whose guard window was decided by the parameter (now - guard - margin)
# without an accepted SMS (served by the operations_awaiting_sms index).
GUARD_DUE = ("state = 'open' AND sms_accepted_at IS NULL AND failed_at IS NULL"
             " AND created_at <= ?")


def _guard_cutoff(now: dt.datetime, rules: Rules) -> str:
    return to_text(now - dt.timedelta(seconds=rules.guard_decided_s))


def expire_guard_windows(db: Database, now: dt.datetime, rules: Rules,
                         sparing: int | None = None) -> int:
    """Fail every open operation whose guard window passed without an SMS that Onlinesim
    accepted; free its number. `sparing`: an operation whose FINISH is being applied,
    which decides it instead."""
    cutoff = _guard_cutoff(now, rules)
    due = [o for o in db.rows(f"SELECT id, number_id FROM operations WHERE {GUARD_DUE}",
                              (cutoff,)) if o["id"] != sparing]
    for operation in due:
        _fail(db, now, rules, operation, "guard_expired")
    return len(due)


def apply_due_rules(db: Database, now: dt.datetime, rules: Rules,
                    sparing: int | None = None) -> int:
    """Everything that is due by `now`: guard expiries, ban lifts, and SIMs whose presence
    window ended (at most presence.EXPIRE_BATCH of those). Returns the count.

    Called by housekeeping, and at the start of every claim and count, so that an answer
    is right at the moment of the request even if the last pass ran seconds ago. A
    FINISH spares its own operation (`sparing`): its status decides that rental.
    """
    return (expire_guard_windows(db, now, rules, sparing) + bans.lift_due_bans(db, now)
            + presence.apply_due(db, now, rules))


def has_due_rules(db: Database, now: dt.datetime, rules: Rules) -> bool:
    """Whether `apply_due_rules` would change anything (a read: no write lock taken)."""
    cutoff = _guard_cutoff(now, rules)
    row = db.execute(
        f"SELECT EXISTS (SELECT 1 FROM operations WHERE {GUARD_DUE})"
        f" OR EXISTS (SELECT 1 FROM numbers WHERE {bans.BAN_DUE})",
        (cutoff, to_text(now)),
    ).fetchone()
    return bool(row[0]) or presence.has_due(db, now, rules)


def _fail(db: Database, now: dt.datetime, rules: Rules, operation: dict, failure: str) -> None:
    stamp = to_text(now)
    changed = db.execute(
        "UPDATE operations SET failed_at = ?, failure = ?"
        " WHERE id = ? AND failed_at IS NULL AND sms_accepted_at IS NULL",
        (stamp, failure, operation["id"]),
    ).rowcount
    if not changed:
        return
    db.execute("UPDATE numbers SET operation_id = NULL, idle_since = ? WHERE operation_id = ?",
               (stamp, operation["id"]))
    events.record(db, now, failure, operation_id=operation["id"],
                  number_id=operation["number_id"])
    expire_undelivered(db, now, operation["id"], f"its rental failed ({failure}) before "
                       "Onlinesim took it")
    number = db.execute("SELECT number FROM numbers WHERE id = ?",
                        (operation["number_id"],)).fetchone()[0]
    log.info("rental %d on +%s failed (%s): the number is offered again", operation["id"],
             number, failure)
    if not _is_test(db, operation["id"]):  # a self-test rental never counts as a failure
        bans.record_failure(db, now, rules, number_id=operation["number_id"],
                            operation_id=operation["id"], reason=failure)


def _is_test(db: Database, operation_id: int) -> bool:
    row = db.execute("SELECT test FROM operations WHERE id = ?", (operation_id,)).fetchone()
    return bool(row and row[0])


def expire_undelivered(db: Database, now: dt.datetime, operation_id: int, reason: str) -> int:
    """Mark the SMS of an operation that ended (closed, or failed its guard window) and
    that Onlinesim has not taken as `expired`: they are never pushed. Onlinesim routes a
    push by the phone number alone, and the number may already be another renter's: an
    old code must never reach them. Kept for the operator (`sms list --expired`).
    A push already on its way is not called back; if Onlinesim takes it, that is stored
    (push.record_answers). Returns how many expired."""
    expired = db.execute(
        "UPDATE sms SET push_state = 'expired', next_attempt_at = NULL, last_error = ?"
        " WHERE operation_id = ? AND push_state = 'pending' RETURNING id, number_id",
        (reason, operation_id)).fetchall()
    for sms_id, number_id in expired:
        events.record(db, now, "sms_expired", operation_id=operation_id, number_id=number_id,
                      sms_id=sms_id, reason=reason)
    if expired:
        log.warning("rental %d: %d SMS not taken by Onlinesim will never be pushed (%s): "
                    "see `rentbox sms list --expired`", operation_id, len(expired),
                    reason)
    return len(expired)


def note_accepted(db: Database, now: dt.datetime, rules: Rules, *, operation_id: int,
                  number_id: int | None) -> bool:
    """Onlinesim accepted an SMS of this rental at `now`: if the rental is open and its
    guard window not decided yet (`rules.guard_decided_s` after it opened), it meets the
    window. Returns whether it did. Call inside the transaction that records the delivery.

    Whenever the SMS was sent: Onlinesim records a rental a moment after rentbox commits
    it, so its window ends a moment later too, and its SUCCESS proves the rental was alive
    on its side. An SMS it received in time whose answer was lost, and that is accepted
    again when re-sent, meets the window the same way.
    """
    decided_before = to_text(now - dt.timedelta(seconds=rules.guard_decided_s))
    met = db.execute(
        "UPDATE operations SET sms_accepted_at = ? WHERE id = ? AND state = 'open'"
        " AND sms_accepted_at IS NULL AND failed_at IS NULL AND created_at >= ? RETURNING id",
        (to_text(now), operation_id, decided_before),
    ).fetchone()
    if met:
        events.record(db, now, "guard_met", operation_id=operation_id, number_id=number_id,
                      reason="Onlinesim accepted an SMS before the guard window was decided")
        if number_id is not None and not _is_test(db, operation_id):
            bans.record_success(db, now, number_id=number_id, operation_id=operation_id)
    return bool(met)


# ---------------------------------------------------------------------------------------
# Onlinesim's calls
# ---------------------------------------------------------------------------------------


def catch_up(db: Database, now: dt.datetime, rules: Rules) -> int:
    """Apply what is due by `now` in its own transaction; returns how many changes.

    The common case, nothing due, is one indexed read and takes no write lock. Many SIMs
    going offline at once are applied in batches, each its own transaction, so that
    Onlinesim's calls get the lock in between.
    """
    changed = 0
    while has_due_rules(db, now, rules):
        with db.transaction():
            done = apply_due_rules(db, now, rules)
        changed += done
        if not done:
            break
    return changed


def available_counts(db: Database, now: dt.datetime, rules: Rules) -> dict[str, dict[str, int]]:
    """GET_SERVICES: the pool that can be rented now, after applying what is due.

    Nothing while the database cannot be written: every GET_NUMBER would fail, and
    advertising numbers that cannot be issued is over-reporting (protocol.md 3.1).
    """
    problem = db.write_problem()
    if problem is None:
        try:
            catch_up(db, now, rules)
            return pool.count_available(db)
        except Unavailable as error:
            problem = str(error)
    log.warning("GET_SERVICES answered with no numbers: the database cannot be written "
                "(%s)", problem)
    return {}


# A claim with exclusions first reads this many free numbers in idle order; when every one
# of them is excluded, it seeks in the allowed prefix ranges instead (_seek_allowed).
HEAD_SCAN = 64
# Random starting points per allowed range in that seek; the idlest number found wins.
SAMPLES_PER_RANGE = 2
_random = random.Random()


def open_rent(db: Database, clock: Clock, request: RentRequest, rules: Rules,
              deadline: dt.datetime | None = None) -> Rental | None:
    """Claim the free number that has been idle longest and open an operation on it.

    Returns None when no free number matches. Catching up on due rules, the read and
    both writes happen in one IMMEDIATE transaction, so concurrent callers can never
    claim the same number; the conditional update is a second line of defence. The
    rental is dated by `clock` once the write lock is held.

    With `exceptionPhoneSet`, the idlest allowed number among the HEAD_SCAN idlest free
    ones is taken. When a client always excludes the same prefixes, the numbers it never
    takes collect at the head of the idle order; once all of the head is excluded, the
    claim seeks instead: from random points of each prefix range the exclusions allow, the
    next free number in number order, and takes the idlest of those. Either way the cost
    depends on the number of prefixes, never on the size of the pool (and a number is
    found whenever one matches).

    `deadline`: when the caller gives up on the answer (Onlinesim, 10 s after it sent the
    call). Past it, at the moment of the commit, nothing is committed and TooLate is
    raised: a rental nobody receives would fail its guard window and count toward a ban.
    """
    where = [FREE]
    params: list[object] = []
    if request.country is not None:
        where.append("numbers.country = ?")
        params.append(request.country)
    if request.operator is not None:
        where.append("numbers.operator = ?")
        params.append(request.operator)
    with db.transaction():
        now = clock.now()
        stamp = to_text(now)
        apply_due_rules(db, now, rules)
        if rules.presence:
            # Exact even when more SIMs went silent at once than one batch turns
            # offline: a number out of its presence window is never issued. Normally
            # none is left, and this is one check on the candidate row the index gives.
            where.append("NOT (numbers.seen_by IS NOT NULL AND numbers.seen_at < ?)")
            params.append(presence.cutoff(now, rules))
        base = " AND ".join(where)
        if not request.excluded_prefixes:
            candidate = db.row(f"SELECT id, number, country FROM numbers WHERE {base}"
                               " ORDER BY idle_since, id LIMIT 1", params)
        else:
            excluded, excluded_params = _excluded(request.excluded_prefixes)
            candidate = db.row(
                f"SELECT id, number, country FROM (SELECT id, number, country, idle_since"
                f" FROM numbers WHERE {base} ORDER BY idle_since, id LIMIT {HEAD_SCAN:d})"
                f" WHERE {excluded} ORDER BY idle_since, id LIMIT 1",
                params + excluded_params)
            if candidate is None:
                candidate = _seek_allowed(db, request, base, params)
        if candidate is None:
            return None
        activation_id = db.execute(
            "INSERT INTO operations (number_id, state, requested_country, requested_operator,"
            " initial_sum_kopecks, created_at, country, test)"
            " VALUES (?, 'open', ?, ?, ?, ?, ?, ?)",
            (candidate["id"], request.country, request.operator, request.sum_kopecks, stamp,
             candidate["country"], int(request.test)),
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
        _check_deadline(clock, deadline, "GET_NUMBER")
    return Rental(activation_id, candidate["number"])


def _check_deadline(clock: Clock, deadline: dt.datetime | None, call: str) -> None:
    """Inside the transaction, just before its commit: raise TooLate (and so roll back)
    if the caller's deadline has passed."""
    if deadline is not None and clock.now() > deadline:
        raise TooLate(f"{call} waited past the caller's deadline ({to_text(deadline)}) "
                      "for the database: nothing was changed")


def finish_rent(db: Database, clock: Clock, request: FinishRequest, rules: Rules,
                deadline: dt.datetime | None = None) -> bool:
    """Close an open operation and free its number. Returns False if it was already closed.

    The FINISH's status decides the rental: the rules due by now are applied first, but
    never to this rental's own guard window, so a sale (1, 3 and 5 alike) never counts a
    failure; a cancel (4) with no SMS accepted counts one. A sale without `sum` is
    credited at the GET_NUMBER `sum`, and the event says so. The rental's SMS that
    Onlinesim has not taken expire (never pushed: expire_undelivered).

    Raises NoOperation for an id rentbox never issued. Dated by `clock` once the write
    lock is held; `deadline` as for open_rent.
    """
    with db.transaction():
        now = clock.now()
        stamp = to_text(now)
        operation = db.row(
            "SELECT id, number_id, state, finish_status, sms_accepted_at, failed_at,"
            " created_at, initial_sum_kopecks FROM operations WHERE id = ?",
            (request.activation_id,),
        )
        if operation is None:
            raise NoOperation(request.activation_id)
        apply_due_rules(db, now, rules, sparing=operation["id"])
        if operation["state"] == "closed" and operation["finish_status"] is None:
            # Closed by hand, then Onlinesim's FINISH came after all: its word is what
            # the books keep (income included). The number was freed at the hand-close.
            _record_finish(db, now, request, operation, note="after a close by hand")
            closed = True
        elif operation["state"] == "closed":
            closed = False
        else:
            if request.status == CANCELLED and operation["sms_accepted_at"] is None:
                # Cancelled with no SMS accepted: a failure (one at most per rental).
                overdue = operation["created_at"] <= _guard_cutoff(now, rules)
                _fail(db, now, rules, operation,
                      "guard_expired" if overdue else "cancelled_without_sms")
            _record_finish(db, now, request, operation)
            db.execute(
                "UPDATE numbers SET operation_id = NULL, idle_since = ? WHERE operation_id = ?",
                (stamp, request.activation_id),
            )
            expire_undelivered(db, now, request.activation_id,
                               f"its rental was closed (FINISH status {request.status}) "
                               "before Onlinesim took it")
            closed = True
        _check_deadline(clock, deadline, "FINISH_ACTIVATION")
    if not closed and operation["finish_status"] != request.status:
        log.info("repeated FINISH of operation %d with status %d (closed with %d): ignored",
                 request.activation_id, request.status, operation["finish_status"])
    return closed


def _record_finish(db: Database, now: dt.datetime, request: FinishRequest, operation: dict,
                   **detail: object) -> None:
    sum_kopecks = request.sum_kopecks
    if sum_kopecks is None and request.status == SOLD:
        # Onlinesim sold it but sent no `sum`: the initial period's price is the least
        # it was sold for (protocol.md 5, Income). Refusing the FINISH would leave the
        # rental open for ever, Onlinesim sending it again and again.
        sum_kopecks = operation["initial_sum_kopecks"]
        detail["sum_from"] = "GET_NUMBER: the FINISH had no sum"
        log.warning("FINISH of rental %d as sold came without a sum: credited the "
                    "GET_NUMBER sum, %s RUB", request.activation_id,
                    f"{sum_kopecks / 100:.2f}")
    db.execute(
        "UPDATE operations SET state = 'closed', finish_status = ?, final_sum_kopecks = ?,"
        " finished_at = ? WHERE id = ? AND finish_status IS NULL",
        (request.status, sum_kopecks, to_text(now), request.activation_id),
    )
    events.record(
        db, now, "rent_finished", operation_id=request.activation_id,
        number_id=operation["number_id"], status=request.status,
        outcome=FINISH_OUTCOMES[request.status], sum_kopecks=sum_kopecks, **detail,
    )


def close_by_hand(db: Database, now: dt.datetime, operation_id: int, *,
                  force: bool = False) -> None:
    """`rentbox ops close`: close an open rental by hand; recorded as such, with no
    income and no failure counted. If Onlinesim's FINISH comes after all, it is recorded
    then (income included).

    Without `force`, only a rental that failed its guard window (one Onlinesim will never
    FINISH, e.g. its GET_NUMBER answer was lost) is closed: a rental still holding its
    number waits for Onlinesim's FINISH (protocol.md 3.3). With `force`, any open rental
    is closed and its number freed: for a FINISH that can never be applied. Either way
    its SMS that Onlinesim has not taken expire."""
    with db.transaction():
        operation = db.row("SELECT id, number_id, state, failed_at FROM operations"
                           " WHERE id = ?", (operation_id,))
        if operation is None:
            raise NotFound(f"no operation {operation_id}")
        if operation["state"] == "closed":
            raise Conflict(f"operation {operation_id} is already closed")
        holding = operation["failed_at"] is None
        if holding and not force:
            raise Conflict(f"operation {operation_id} has not failed its guard window: it "
                           "holds its number until Onlinesim's FINISH closes it (--force "
                           "closes it anyway and frees the number)")
        stamp = to_text(now)
        db.execute("UPDATE operations SET state = 'closed', finished_at = ?"
                   " WHERE id = ? AND state = 'open'", (stamp, operation_id))
        if holding:
            db.execute("UPDATE numbers SET operation_id = NULL, idle_since = ?"
                       " WHERE operation_id = ?", (stamp, operation_id))
        events.record(db, now, "closed_by_hand", operation_id=operation_id,
                      number_id=operation["number_id"], **({"forced": True} if holding else {}),
                      reason=("closed by hand while it held its number" if holding else
                              "failed its guard window and got no FINISH from Onlinesim"))
        expire_undelivered(db, now, operation_id, "its rental was closed by hand before "
                           "Onlinesim took it")
        log.info("rental %d closed by hand%s", operation_id,
                 ": its number is offered again" if holding else "")


def _excluded(prefixes: tuple[str, ...]) -> tuple[str, list[str]]:
    """SQL that is true for a number matching none of the prefixes: one NOT IN per prefix
    length, each over a JSON array that SQLite reads once per query. Numbers and prefixes
    are ASCII digits."""
    by_length: dict[int, list[str]] = {}
    for prefix in prefixes:
        by_length.setdefault(len(prefix), []).append(prefix)
    terms, params = [], []
    for length, group in sorted(by_length.items()):
        terms.append(f"substr(number, 1, {length:d}) NOT IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(group))
    return " AND ".join(terms), params


def allowed_ranges(prefixes: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """The ranges of number strings, [low, high) (high None: no end), that start with none
    of the prefixes. In string order, the numbers with prefix P are [P, P + ':'), since ':'
    follows '9'; a prefix that extends another adds nothing."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not (kept and prefix.startswith(kept[-1])):
            kept.append(prefix)
    ranges, low = [], ""
    for prefix in kept:
        if low < prefix:
            ranges.append((low, prefix))
        low = prefix + ":"
    ranges.append((low, None))
    return ranges


_SEEK_INDEX = {(False, False): "numbers_free_by_number",
               (True, False): "numbers_free_by_country_number",
               (True, True): "numbers_free_by_operator_number"}


def _seek_allowed(db: Database, request: RentRequest, base: str, params: list
                  ) -> dict | None:
    """The idlest of a few free numbers sampled from each allowed prefix range: for each
    sample, the first free number at or after a random point of the range (wrapping
    round to its start), through a free-number index in number order."""
    index = _SEEK_INDEX[(request.country is not None,
                         request.country is not None and request.operator is not None)]

    def first(low: str, high: str | None) -> dict | None:
        bound = " AND number < ?" if high is not None else ""
        return db.row(f"SELECT id, number, country, idle_since FROM numbers INDEXED BY {index}"
                      f" WHERE {base} AND number >= ?{bound} ORDER BY number LIMIT 1",
                      params + [low] + ([high] if high is not None else []))

    found: dict[int, dict] = {}
    for low, high in allowed_ranges(request.excluded_prefixes):
        for _ in range(SAMPLES_PER_RANGE):
            start = _random_point(low, high)
            row = first(start, high) or (first(low, start) if start > low else None)
            if row is None:
                break  # nothing free in this range
            found[row["id"]] = row
    if not found:
        return None
    return min(found.values(), key=lambda r: (r["idle_since"], r["id"]))


_DIGITS = 15  # the longest international number (ITU E.164)


def _random_point(low: str, high: str | None) -> str:
    """A random digit string in [low, high), roughly uniform over the numbers' space."""
    def value(text: str) -> int:
        # Bounds longer than a number (protocol.py refuses such prefixes) are cut to its
        # length: the point is then only approximate, and checked below.
        if text.endswith(":"):
            stem = text[:-1][:_DIGITS]
            return int(stem.ljust(_DIGITS, "0")) + 10 ** (_DIGITS - len(stem))
        return int(text[:_DIGITS].ljust(_DIGITS, "0")) if text else 0

    top = value(high) if high is not None else 10 ** _DIGITS
    bottom = value(low)
    point = str(_random.randrange(bottom, top) if bottom < top else bottom).zfill(_DIGITS)
    if point < low or (high is not None and point >= high):
        return low
    return point


# ---------------------------------------------------------------------------------------
# Reading operations
# ---------------------------------------------------------------------------------------

# `failed` selects rentals that failed their guard window (or were cancelled in it without
# an SMS), whatever FINISH said later; the others are FINISH's outcome, or still open.
OUTCOMES = ("open", "failed", *FINISH_OUTCOMES.values(), "closed_by_hand")

_OUTCOME_SQL = """CASE operations.finish_status
    WHEN 1 THEN 'wrong_service' WHEN 3 THEN 'sold' WHEN 4 THEN 'cancelled'
    WHEN 5 THEN 'refunded'
    ELSE CASE operations.state WHEN 'closed' THEN 'closed_by_hand' ELSE 'open' END END"""

_COLUMNS = f"""operations.id, numbers.number, numbers.country, operations.state,
    {_OUTCOME_SQL} AS outcome, operations.failure, operations.created_at,
    operations.sms_accepted_at, operations.failed_at, operations.finished_at,
    operations.initial_sum_kopecks, operations.final_sum_kopecks,
    (SELECT count(*) FROM sms WHERE sms.operation_id = operations.id) AS sms_count,
    (numbers.operation_id IS operations.id AND numbers.offline = 1) AS at_risk,
    operations.test"""


def list_operations(
    db: Database,
    *,
    open_only: bool = False,
    number: str | None = None,
    since: dt.datetime | None = None,
    outcome: str | None = None,
    limit: int = 100,
) -> list[dict]:
    """Operations, newest first, filtered as `rentbox ops list` asks."""
    where, params = ["1"], []
    if open_only:
        where.append("operations.state = 'open'")
    if number is not None:
        where.append("numbers.number = ?")
        params.append(pool.normalize_number(number))
    if since is not None:
        where.append("operations.created_at >= ?")
        params.append(to_text(since))
    if outcome is not None:
        if outcome not in OUTCOMES:
            raise InvalidInput(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        if outcome == "failed":
            where.append("operations.failed_at IS NOT NULL")
        else:
            where.append(f"{_OUTCOME_SQL} = ?")
            params.append(outcome)
    params.append(limit)
    # The open ones are few: find them through operations_open and sort them (`+`), rather
    # than walk all history newest first looking for them.
    order = "+operations.id" if open_only else "operations.id"
    return db.rows(
        f"SELECT {_COLUMNS} FROM operations JOIN numbers ON numbers.id = operations.number_id"
        f" WHERE {' AND '.join(where)} ORDER BY {order} DESC LIMIT ?",
        params,
    )


# Rentals that failed their guard window and got no FINISH: Onlinesim normally closes
# them, but one whose GET_NUMBER answer was lost (a crash before the answer left) is
# unknown to Onlinesim and would stay open for ever (status flags them after a day).
STALE_FAILED = ("operations.state = 'open' AND operations.failed_at IS NOT NULL"
                " AND operations.failed_at <= ?")


def stale_failed(db: Database, now: dt.datetime, older_than_s: float) -> list[dict]:
    """Open rentals that failed their guard window more than `older_than_s` ago."""
    return db.rows(
        f"SELECT {_COLUMNS} FROM operations JOIN numbers ON numbers.id = operations.number_id"
        # `+`: sort the few open ones found through operations_open, rather than walk
        # every operation in id order (0.16 s at 1,000,000 operations).
        f" WHERE {STALE_FAILED} ORDER BY +operations.id",
        (to_text(now - dt.timedelta(seconds=older_than_s)),),
    )


def show_operation(db: Database, operation_id: int) -> dict:
    """One operation with its events and SMS (`rentbox ops show`)."""
    found = db.rows(
        f"SELECT {_COLUMNS}, operations.requested_country, operations.requested_operator"
        " FROM operations JOIN numbers ON numbers.id = operations.number_id"
        " WHERE operations.id = ?",
        (operation_id,),
    )
    if not found:
        raise NotFound(f"no operation {operation_id}")
    operation = found[0]
    operation["events"] = events.for_operation(db, operation_id)
    operation["sms"] = db.rows(
        "SELECT id, sender, text, received_at, push_state, attempts, last_error"
        " FROM sms WHERE operation_id = ? ORDER BY id",
        (operation_id,),
    )
    return operation
