"""Operations: rentals and activations opened on a free number, their windows, FINISH.

An operation is a long-term rental (service 'rent', protocol.md 3) or a single-service
activation (any other service, protocol.md 6). Both kinds share one id sequence (the
activationId), one pool and `numbers.operation_id`, so a number is in one operation at a
time, whatever its kind.

States and transitions (each a conditional update plus an event row, in one write
transaction):

    (none) --GET_NUMBER--> open --FINISH_ACTIVATION(1|3|4|5)--> closed
                           open --`rentbox ops close` (failed or lapsed; any with --force)--> closed

While an operation is open and has not failed (nor lapsed), it holds its number. What can
happen to an open operation before FINISH:

- Onlinesim accepts an SMS of it (PUSH_SMS answered SUCCESS) before its window is
  decided (`sms_accepted_at`): a success as Onlinesim sees it, and the number's failure
  count starts again. An SMS that was only stored, that Onlinesim refused (BAD_SERVICE)
  or that could not reach it in time does not count: Onlinesim saw no SMS.
- A rental's guard window passes without that (`failed_at`, failure `guard_expired`):
  Onlinesim cancels such a rental on its side, so rentbox frees the number and counts a
  failure, but keeps the operation open in its books until FINISH arrives (protocol.md:
  never close before FINISH). This is decided `rules.guard_margin_s` after the window
  ends: Onlinesim records a rental a moment after rentbox commits it, and a push sent
  just in time may still be on its way; a SUCCESS until then proves the rental was alive
  on Onlinesim's side.
- An activation's time (`rules.activation_s`, plus the same margin) passes without a
  FINISH (`lapsed_at`): its number is offered again and the activation is flagged for
  the operator; it stays open until its FINISH or a close by hand. Without an SMS
  accepted, that is a failure too (`activation_expired`), under the same ban rule.

A FINISH decides its own operation: status 4 with no SMS accepted is a failure
(`cancelled_without_sms`, or `guard_expired` once a rental's window was due); 1, 3 and
5 count none, even when the window was due and not yet applied. An operation counts as
at most one failure. For an activation, FINISH also spends the number for its service
(services.py). A repeated FINISH on a closed operation changes nothing (protocol.md
3.3). When an operation ends (closed, failed or lapsed), its SMS that Onlinesim has not
taken expire: never pushed, since the number can be issued again.

The request's time is read once the write lock is held (functions that take a `clock`):
a request that waited for the lock must not date its operation, or the end of its
window, to before it was served.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random

from rentbox import bans, buyers, events, pool, presence, services
from rentbox.clock import Clock, to_text
from rentbox.config import ONLINESIM, Rules
from rentbox.db import Database
from rentbox.errors import Conflict, InvalidInput, NotFound, TooLate, Unavailable
from rentbox.pool import FREE
from rentbox.protocol import (CANCELLED, FINISH_OUTCOMES, RENT, SOLD, FinishRequest,
                              NoOperation, NumberRequest)

log = logging.getLogger("rentbox.rules")


@dataclasses.dataclass(frozen=True)
class Issued:
    """A number issued by GET_NUMBER, and the operation (activationId) holding it."""

    activation_id: int
    number: str


# ---------------------------------------------------------------------------------------
# What happens as time passes. Each function runs inside the caller's write transaction
# and touches only what is due, through partial indexes, so its cost does not grow with
# history.
# ---------------------------------------------------------------------------------------


# Open rentals whose guard window was decided by the parameter (now - guard - margin)
# without an accepted SMS (served by the operations_awaiting_sms index).
GUARD_DUE = ("state = 'open' AND sms_accepted_at IS NULL AND failed_at IS NULL"
             " AND created_at <= ? AND service = 'rent'")
# Open activations whose time ran out by the parameter (now - activation time - margin)
# without a FINISH (served by the operations_activation_due index).
ACTIVATION_DUE = ("state = 'open' AND service <> 'rent' AND lapsed_at IS NULL"
                  " AND failed_at IS NULL AND created_at <= ?")


def _guard_cutoff(now: dt.datetime, rules: Rules) -> str:
    return to_text(now - dt.timedelta(seconds=rules.guard_decided_s))


def _activation_cutoff(now: dt.datetime, rules: Rules) -> str:
    return to_text(now - dt.timedelta(seconds=rules.activation_decided_s))


def expire_guard_windows(db: Database, now: dt.datetime, rules: Rules,
                         sparing: int | None = None) -> int:
    """Fail every open operation whose guard window passed without an SMS that Onlinesim
    accepted; free its number. `sparing`: an operation whose FINISH is being applied,
    which decides it instead."""
    cutoff = _guard_cutoff(now, rules)
    due = [o for o in db.rows(f"SELECT id, number_id, buyer FROM operations WHERE {GUARD_DUE}",
                              (cutoff,)) if o["id"] != sparing]
    for operation in due:
        _fail(db, now, rules, operation, "guard_expired")
    return len(due)


def lapse_activations(db: Database, now: dt.datetime, rules: Rules,
                      sparing: int | None = None) -> int:
    """Offer again the number of every open activation whose time ran out without a
    FINISH, and flag the activation (`lapsed_at`; it stays open). One that got no SMS
    accepted is a failure too. `sparing` as for expire_guard_windows."""
    due = [o for o in db.rows(f"SELECT id, number_id, sms_accepted_at, service, buyer"
                              f" FROM operations WHERE {ACTIVATION_DUE}",
                              (_activation_cutoff(now, rules),))
           if o["id"] != sparing]
    for operation in due:
        stamp = to_text(now)
        if not db.execute("UPDATE operations SET lapsed_at = ? WHERE id = ?"
                          " AND lapsed_at IS NULL", (stamp, operation["id"])).rowcount:
            continue
        events.record(db, now, "activation_lapsed", operation_id=operation["id"],
                      number_id=operation["number_id"],
                      reason="no FINISH within the activation's time: its number is "
                             "offered again, the activation waits for its FINISH")
        if operation["sms_accepted_at"] is None:
            _fail(db, now, rules, operation, "activation_expired")
            continue
        db.execute("UPDATE numbers SET operation_id = NULL, idle_since = ?"
                   " WHERE operation_id = ?", (stamp, operation["id"]))
        expire_undelivered(db, now, operation, "its activation ran out of time")
        log.warning("activation %d (%s) got no FINISH in time: its number is offered again "
                    "(see `rentbox status`)", operation["id"], operation["service"])
    return len(due)


def apply_due_rules(db: Database, now: dt.datetime, rules: Rules,
                    sparing: int | None = None) -> int:
    """Everything that is due by `now`: guard expiries, activations out of time, ban
    lifts, and SIMs whose presence window ended (at most presence.EXPIRE_BATCH of those).
    Returns the count.

    Called by housekeeping, and at the start of every claim and count, so that an answer
    is right at the moment of the request even if the last pass ran seconds ago. A
    FINISH spares its own operation (`sparing`): its status decides that rental.

    Nothing is due at almost every call: one read (has_due_rules) answers that, where
    the four steps would each run a statement.
    """
    if not has_due_rules(db, now, rules):
        return 0
    return (expire_guard_windows(db, now, rules, sparing)
            + lapse_activations(db, now, rules, sparing) + bans.lift_due_bans(db, now)
            + presence.apply_due(db, now, rules))


def has_due_rules(db: Database, now: dt.datetime, rules: Rules) -> bool:
    """Whether `apply_due_rules` would change anything (one read: no write lock taken)."""
    presence_due, presence_params = presence.due_condition(now, rules)
    row = db.execute(
        f"SELECT EXISTS (SELECT 1 FROM operations WHERE {GUARD_DUE})"
        f" OR EXISTS (SELECT 1 FROM operations WHERE {ACTIVATION_DUE})"
        f" OR EXISTS (SELECT 1 FROM numbers WHERE {bans.BAN_DUE}) OR {presence_due}",
        (_guard_cutoff(now, rules), _activation_cutoff(now, rules), to_text(now),
         *presence_params),
    ).fetchone()
    return bool(row[0])


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
    expire_undelivered(db, now, operation, f"its rental failed ({failure})")
    number = db.execute("SELECT number FROM numbers WHERE id = ?",
                        (operation["number_id"],)).fetchone()[0]
    log.info("operation %d on +%s failed (%s): the number is offered again",
             operation["id"], number, failure)
    if not _is_test(db, operation["id"]):  # a self-test rental never counts as a failure
        bans.record_failure(db, now, rules, number_id=operation["number_id"],
                            operation_id=operation["id"], reason=failure)


def _is_test(db: Database, operation_id: int) -> bool:
    row = db.execute("SELECT test FROM operations WHERE id = ?", (operation_id,)).fetchone()
    return bool(row and row[0])


def expire_undelivered(db: Database, now: dt.datetime, operation: dict, why: str) -> int:
    """Mark the SMS of an operation that ended (closed, or failed its guard window) and
    that its buyer has not taken as `expired` (`operation`: its id and buyer; `why` it
    ended, in words): they are never
    pushed. The buyer routes a push by the phone number alone, and the number may already
    be another renter's: an old code must never reach them. Kept for the operator (`sms
    list --expired`). A push already on its way is not called back; if the buyer takes
    it, that is stored (push.record_answers). Returns how many expired."""
    operation_id, taker = operation["id"], buyers.display(operation["buyer"])
    reason = f"{why} before {taker} took it"
    expired = db.execute(
        "UPDATE sms SET push_state = 'expired', next_attempt_at = NULL, last_error = ?"
        " WHERE operation_id = ? AND push_state = 'pending' RETURNING id, number_id",
        (reason, operation_id)).fetchall()
    for sms_id, number_id in expired:
        events.record(db, now, "sms_expired", operation_id=operation_id, number_id=number_id,
                      sms_id=sms_id, reason=reason)
    if expired:
        log.warning("operation %d: %d SMS not taken by %s will never be pushed (%s): "
                    "see `rentbox sms list --expired`", operation_id, len(expired), taker,
                    reason)
    return len(expired)


def note_accepted(db: Database, now: dt.datetime, rules: Rules, *, operation_id: int,
                  number_id: int | None) -> bool:
    """Onlinesim accepted an SMS of this operation at `now`: if it is open and its window
    not decided yet (`rules.guard_decided_s` after a rental opened, `activation_decided_s`
    after an activation did), it meets the window. Returns whether it did. Call inside the
    transaction that records the delivery.

    Whenever the SMS was sent: Onlinesim records a rental a moment after rentbox commits
    it, so its window ends a moment later too, and its SUCCESS proves the rental was alive
    on its side. An SMS it received in time whose answer was lost, and that is accepted
    again when re-sent, meets the window the same way.
    """
    met = db.execute(
        "UPDATE operations SET sms_accepted_at = ? WHERE id = ? AND state = 'open'"
        " AND sms_accepted_at IS NULL AND failed_at IS NULL AND lapsed_at IS NULL"
        " AND created_at >= CASE service WHEN 'rent' THEN ? ELSE ? END RETURNING id",
        (to_text(now), operation_id, _guard_cutoff(now, rules), _activation_cutoff(now, rules)),
    ).fetchone()
    if met:
        events.record(db, now, "guard_met", operation_id=operation_id, number_id=number_id,
                      reason="Onlinesim accepted an SMS before the window was decided")
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


@dataclasses.dataclass(frozen=True)
class Available:
    """Onlinesim's GET_SERVICES counts: rent's {country: {operator: n}}, and activations'
    {country: {operator: {service: n}}} for the offered services, with 'any' per country
    carrying the sums (protocol.md 3.1, 6)."""

    rent: dict[str, dict[str, int]]
    activations: dict[str, dict[str, dict[str, int]]]


def pool_view(db: Database, now: dt.datetime, rules: Rules, buyer: str = ONLINESIM, *,
              rent: bool = True, activations: bool = True) -> buyers.View:
    """GET_SERVICES: what `buyer` can be issued now, after applying what is due: for rent
    (Onlinesim's alone), and for each service it is offered (`rent` / `activations`: which
    of the two to count). Each protocol shapes it (smshub.py, available_counts).

    Nothing while the database cannot be written: every GET_NUMBER would fail, and
    advertising numbers that cannot be issued is over-reporting (protocol.md 3.1).
    """
    problem = db.write_problem()
    if problem is None:
        try:
            catch_up(db, now, rules)
            db.conn.execute("BEGIN")  # one snapshot: rent's and services' counts agree
            try:
                return buyers.view(db, rules, buyer, rent=rent, activations=activations)
            finally:
                db.conn.execute("ROLLBACK")
        except Unavailable as error:
            problem = str(error)
    log.warning("GET_SERVICES answered with no numbers: the database cannot be written "
                "(%s)", problem)
    return buyers.View({}, {})


def available_counts(db: Database, now: dt.datetime, rules: Rules, *, rent: bool = True,
                     activations: bool = True) -> Available:
    """Onlinesim's GET_SERVICES counts (pool_view, with 'any' per country)."""
    view = pool_view(db, now, rules, ONLINESIM, rent=rent, activations=activations)
    return Available(with_any(view.rent, view.caps), with_any(view.services, view.caps))


def with_any(counts: dict[str, dict], caps: dict[str, int]) -> dict[str, dict]:
    """Counts per country and operator with 'any' added, Onlinesim's way: the sum over
    the country's operators (per service, for activations), capped by what the buyer may
    take of the country; numbers without an operator (operator '') count only there."""
    shaped: dict[str, dict] = {}
    for country, operators in counts.items():
        cap = caps.get(country)
        per_operator = {op: n for op, n in operators.items() if op}
        values = list(operators.values())
        if values and isinstance(values[0], dict):
            total: dict[str, int] = {}
            for per_service in values:
                for service, n in per_service.items():
                    total[service] = total.get(service, 0) + n
            if cap is not None:
                total = {s: min(n, cap) for s, n in total.items()}
        else:
            total = sum(values)
            if cap is not None:
                total = min(total, cap)
        shaped[country] = {"any": total, **per_operator}
    return shaped


# A claim with exclusions first reads this many free numbers in idle order; when every one
# of them is excluded, it seeks in the allowed prefix ranges instead (_seek_allowed).
HEAD_SCAN = 64
# Random starting points per allowed range in that seek; the idlest number found wins.
SAMPLES_PER_RANGE = 2
_random = random.Random()


def open_operation(db: Database, clock: Clock, request: NumberRequest, rules: Rules,
                   deadline: dt.datetime | None = None) -> Issued | None:
    """GET_NUMBER: claim the free number that has been idle longest and open an
    operation on it: a rental, or an activation for `request.service`.

    Returns None when no free number matches (or the service is not offered). Catching
    up on due rules, the read and both writes happen in one IMMEDIATE transaction, so
    concurrent callers can never claim the same number; the conditional update is a
    second line of defence. The operation is dated by `clock` once the write lock is held.

    An activation never gets a number spent for its service (services.py). With
    `exceptionPhoneSet` or a service, the idlest allowed number among the HEAD_SCAN idlest
    free ones is taken. When a client always excludes the same prefixes (or a service has
    spent the numbers idle longest), the numbers it never takes collect at the head of the
    idle order; once all of the head is refused, the claim seeks instead: from random
    points of each prefix range the exclusions allow, the next allowed free number in
    number order, and takes the idlest of those. Either way the cost depends on the
    number of prefixes and the share of numbers spent, never on the size of the pool (and
    a number is found whenever one matches).

    `deadline`: when the caller gives up on the answer (Onlinesim, 10 s after it sent the
    call). Past it, at the moment of the commit, nothing is committed and TooLate is
    raised: an operation nobody receives would fail and count toward a ban.
    """
    if request.is_rent:
        service = RENT
        if request.buyer != ONLINESIM:
            return None  # rent is Onlinesim's alone
    else:
        service = buyers.offers(rules, request.buyer, request.service)
        if service is None:
            log.debug("GET_NUMBER from %s for %s: not a service offered to it",
                      request.buyer, request.service)
            return None
    closed = buyers.closed_countries(rules, request.buyer)
    if request.country in closed:
        return None  # reserved for other buyers
    where = [FREE]
    params: list[object] = []
    if request.country is not None:
        where.append("numbers.country = ?")
        params.append(request.country)
    elif closed:
        where.append("numbers.country NOT IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(sorted(closed)))
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
        if not request.is_rent:
            # Past the head of numbers spent for the service, if one has collected there.
            past = _past_spent(db, request, service, base, params)
            if past is None:
                return None  # every matching free number is spent for it
            base, params = past
        # What the free-number indexes cannot serve: checked row by row on the head.
        refusals, refusal_params = [], []
        if request.excluded_prefixes:
            excluded, excluded_params = _excluded(request.excluded_prefixes)
            refusals.append(excluded)
            refusal_params += excluded_params
        if not request.is_rent:
            refusals.append(services.UNSPENT)
            refusal_params.append(service)
        if not refusals:
            candidate = db.row(f"SELECT id, number, country FROM numbers WHERE {base}"
                               " ORDER BY idle_since, id LIMIT 1", params)
        else:
            candidate = db.row(
                f"SELECT id, number, country FROM (SELECT id, number, country, idle_since"
                f" FROM numbers WHERE {base} ORDER BY idle_since, id LIMIT {HEAD_SCAN:d})"
                f" AS numbers WHERE {' AND '.join(refusals)} ORDER BY idle_since, id LIMIT 1",
                params + refusal_params)
            if candidate is None:
                if not request.is_rent:
                    base += " AND " + services.UNSPENT
                    params.append(service)
                candidate = _seek_allowed(db, request, base, params)
        if candidate is None:
            return None
        if not buyers.may_take(db, rules, request.buyer, candidate["country"]):
            return None  # what is left of the country is kept for other buyers' shares
        activation_id = db.execute(
            "INSERT INTO operations (number_id, service, state, requested_country,"
            " requested_operator, initial_sum_kopecks, created_at, country, test, buyer,"
            " currency) VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?)",
            (candidate["id"], service, request.country, request.operator,
             request.sum_kopecks, stamp, candidate["country"], int(request.test),
             request.buyer, request.currency),
        ).lastrowid
        claimed = db.execute(
            "UPDATE numbers SET operation_id = ? WHERE id = ? AND operation_id IS NULL",
            (activation_id, candidate["id"]),
        ).rowcount
        if claimed != 1:  # impossible under BEGIN IMMEDIATE; refuse rather than double-issue
            raise RuntimeError(f"number {candidate['number']} was claimed concurrently")
        events.record(
            db, now, "rent_opened" if request.is_rent else "activation_opened",
            operation_id=activation_id, number_id=candidate["id"],
            **({} if request.is_rent else {"service": service}),
            **({} if request.buyer == ONLINESIM else {"buyer": request.buyer}),
            **({} if request.currency == "RUB" else {"currency": request.currency}),
            sum_kopecks=request.sum_kopecks, country=request.country,
            operator=request.operator,
            excluded_prefixes=list(request.excluded_prefixes) or None,
        )
        _check_deadline(clock, deadline, "GET_NUMBER")
    log.info("%s %d opened on +%s for %s %s%s%s", _kind(service), activation_id,
             candidate["number"], f"{request.sum_kopecks / 100:.2f}", request.currency,
             "" if request.buyer == ONLINESIM else f" by {request.buyer}",
             " (a self-test)" if request.test else "")
    return Issued(activation_id, candidate["number"])


# Per database, service, country and operator: where the claim's idle order starts to
# have numbers not spent for the service, as (idle_since, id). Every free number before it
# was spent for the service when the claim last looked; a number freed later is dated
# now, at the end. Only a hint: the claim checks each number, and looks from the start
# whenever nothing unspent is found after the mark (a number that came back with an old
# date, a service unspent by hand).
_UNSPENT_FROM: dict[tuple, tuple[str, int]] = {}


def _past_spent(db: Database, request: NumberRequest, service: str, base: str,
                params: list) -> tuple[str, list] | None:
    """`base` and `params` narrowed to the idle order from the first free number not
    spent for the service (None: there is none). The walk over spent numbers happens
    once: later claims start from where it ended, so a service whose numbers idle longest
    are all spent costs no more than one whose are not."""
    key = (str(db.path), service, request.country, request.operator, request.buyer)
    mark = _UNSPENT_FROM.get(key)
    for start in ((mark, None) if mark else (None,)):
        where, values = base, list(params)
        if start is not None:
            where += " AND (numbers.idle_since, numbers.id) >= (?, ?)"
            values += list(start)
        first = db.row(f"SELECT idle_since, id FROM numbers WHERE {where}"
                       f" AND {services.UNSPENT} ORDER BY idle_since, id LIMIT 1",
                       values + [service])
        if first is not None:
            _UNSPENT_FROM[key] = (first["idle_since"], first["id"])
            return (base + " AND (numbers.idle_since, numbers.id) >= (?, ?)",
                    list(params) + [first["idle_since"], first["id"]])
    _UNSPENT_FROM.pop(key, None)
    return None


def _kind(service: str) -> str:
    return "rental" if service == RENT else f"{service} activation"


open_rent = open_operation  # the old name, until every caller says open_operation


def _check_deadline(clock: Clock, deadline: dt.datetime | None, call: str) -> None:
    """Inside the transaction, just before its commit: raise TooLate (and so roll back)
    if the caller's deadline has passed."""
    if deadline is not None and clock.now() > deadline:
        raise TooLate(f"{call} waited past the caller's deadline ({to_text(deadline)}) "
                      "for the database: nothing was changed")


def finish_operation(db: Database, clock: Clock, request: FinishRequest, rules: Rules,
                     deadline: dt.datetime | None = None) -> bool:
    """FINISH_ACTIVATION: close an open operation, rental or activation (found by its id
    alone), and free its number. Returns False if it was already closed.

    The FINISH's status decides the operation: the rules due by now are applied first,
    but never to this operation's own window, so a sale (1, 3 and 5 alike) never counts a
    failure; a cancel (4) with no SMS accepted counts one. A sale without `sum` is
    credited at the GET_NUMBER `sum`, and the event says so. For an activation, the status
    also spends the number for its service, or counts a try (services.record_finish). The
    operation's SMS that Onlinesim has not taken expire (never pushed:
    expire_undelivered).

    Raises NoOperation for an id rentbox never issued. Dated by `clock` once the write
    lock is held; `deadline` as for open_operation.
    """
    with db.transaction():
        now = clock.now()
        stamp = to_text(now)
        operation = db.row(
            "SELECT id, number_id, service, state, finish_status, sms_accepted_at, failed_at,"
            " created_at, initial_sum_kopecks, test, currency, buyer FROM operations"
            " WHERE id = ? AND buyer = ?", (request.activation_id, request.buyer))
        if operation is None:
            # Unknown, or another buyer's: ids are one sequence, and a buyer must never
            # close (or learn of) another's operation.
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
                # Cancelled with no SMS accepted: a failure (one at most per operation).
                overdue = (operation["service"] == RENT
                           and operation["created_at"] <= _guard_cutoff(now, rules))
                _fail(db, now, rules, operation,
                      "guard_expired" if overdue else "cancelled_without_sms")
            _record_finish(db, now, request, operation)
            db.execute(
                "UPDATE numbers SET operation_id = NULL, idle_since = ? WHERE operation_id = ?",
                (stamp, request.activation_id),
            )
            expire_undelivered(db, now, operation,
                               f"its {_kind(operation['service'])} was closed (FINISH "
                               f"status {request.status})")
            closed = True
        _check_deadline(clock, deadline, "FINISH_ACTIVATION")
    if not closed and operation["finish_status"] != request.status:
        log.info("repeated FINISH of operation %d with status %d (closed with %d): ignored",
                 request.activation_id, request.status, operation["finish_status"])
    return closed


finish_rent = finish_operation  # the old name, until every caller says finish_operation


def _record_finish(db: Database, now: dt.datetime, request: FinishRequest, operation: dict,
                   **detail: object) -> None:
    kind = _kind(operation["service"])
    sum_kopecks = request.sum_kopecks
    if sum_kopecks is None and request.status == SOLD:
        # Onlinesim sold it but sent no `sum`: the GET_NUMBER price (a rental's initial
        # period) is the least it was sold for (protocol.md 5, Income). Refusing the
        # FINISH would leave it open for ever, Onlinesim sending it again and again.
        sum_kopecks = operation["initial_sum_kopecks"]
        detail["sum_from"] = "GET_NUMBER: the FINISH had no sum"
        if operation["service"] == RENT:  # an activation's FINISH usually has none
            log.warning("FINISH of rental %d as sold came without a sum: credited the "
                        "GET_NUMBER sum, %s RUB", request.activation_id,
                        f"{sum_kopecks / 100:.2f}")
    db.execute(
        "UPDATE operations SET state = 'closed', finish_status = ?, final_sum_kopecks = ?,"
        " finished_at = ? WHERE id = ? AND finish_status IS NULL",
        (request.status, sum_kopecks, to_text(now), request.activation_id),
    )
    is_rent = operation["service"] == RENT
    events.record(
        db, now, "rent_finished" if is_rent else "activation_finished",
        operation_id=request.activation_id, number_id=operation["number_id"],
        **({} if is_rent else {"service": operation["service"]}), status=request.status,
        outcome=FINISH_OUTCOMES[request.status], sum_kopecks=sum_kopecks, **detail,
    )
    if not is_rent and not operation["test"]:  # a self-test spends nothing
        services.record_finish(db, now, operation, request.status)
    log.info("%s %d closed: %s%s", kind, request.activation_id,
             FINISH_OUTCOMES[request.status].replace("_", " "),
             f", {sum_kopecks / 100:.2f} {operation['currency']} credited"
             if request.status == SOLD else "")


def close_by_hand(db: Database, now: dt.datetime, operation_id: int, *,
                  force: bool = False) -> None:
    """`rentbox ops close`: close an open operation by hand; recorded as such, with no
    income and no failure counted. If Onlinesim's FINISH comes after all, it is recorded
    then (income included).

    Without `force`, only an operation that no longer holds its number (a rental that
    failed its guard window, an activation out of time: ones Onlinesim may never FINISH,
    e.g. their GET_NUMBER answer was lost) is closed: one still holding its number waits
    for Onlinesim's FINISH (protocol.md 3.3). With `force`, any open operation is closed
    and its number freed: for a FINISH that can never be applied. Either way its SMS that
    Onlinesim has not taken expire."""
    with db.transaction():
        operation = db.row("SELECT id, number_id, service, state, failed_at, lapsed_at, buyer"
                           " FROM operations WHERE id = ?", (operation_id,))
        if operation is None:
            raise NotFound(f"no operation {operation_id}")
        if operation["state"] == "closed":
            raise Conflict(f"operation {operation_id} is already closed")
        kind = _kind(operation["service"])
        holding = operation["failed_at"] is None and operation["lapsed_at"] is None
        if holding and not force:
            raise Conflict(f"operation {operation_id} ({kind}) still holds its number until "
                           "Onlinesim's FINISH closes it (--force closes it anyway and "
                           "frees the number)")
        stamp = to_text(now)
        db.execute("UPDATE operations SET state = 'closed', finished_at = ?"
                   " WHERE id = ? AND state = 'open'", (stamp, operation_id))
        if holding:
            db.execute("UPDATE numbers SET operation_id = NULL, idle_since = ?"
                       " WHERE operation_id = ?", (stamp, operation_id))
        if holding:
            reason = "closed by hand while it held its number"
        elif operation["failed_at"] is not None and operation["service"] == RENT:
            reason = "failed its guard window and got no FINISH from Onlinesim"
        else:
            reason = "ran out of time and got no FINISH from Onlinesim"
        events.record(db, now, "closed_by_hand", operation_id=operation_id,
                      number_id=operation["number_id"], **({"forced": True} if holding else {}),
                      reason=reason)
        expire_undelivered(db, now, operation, f"its {kind} was closed by hand")
        log.info("%s %d closed by hand%s", kind, operation_id,
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


def _seek_allowed(db: Database, request: NumberRequest, base: str, params: list
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
    operations.test, operations.service,
    CASE operations.service WHEN 'rent' THEN 'rent' ELSE 'activation' END AS kind,
    operations.lapsed_at, operations.buyer, operations.currency"""

# The two kinds of operation (`ops list --kind`).
KINDS = ("rent", "activation")


def list_operations(
    db: Database,
    *,
    open_only: bool = False,
    number: str | None = None,
    since: dt.datetime | None = None,
    outcome: str | None = None,
    kind: str | None = None,
    service: str | None = None,
    buyer: str | None = None,
    rules: Rules | None = None,
    limit: int = 100,
) -> list[dict]:
    """Operations, newest first, filtered as `rentbox ops list` asks (`kind`: rent or
    activation; `service`: one service, 'rent' included, by any of its names (`rules`:
    the partner's aliases); `buyer`: one buyer's)."""
    where, params = ["1"], []
    if buyer is not None:
        where.append("operations.buyer = ?")
        params.append(buyer.strip().lower())
    if kind is not None:
        if kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        where.append("operations.service = 'rent'" if kind == "rent"
                     else "operations.service <> 'rent'")
    if service is not None:
        where.append("operations.service = ?")
        params.append(buyers.canonical(rules or Rules(), service.strip().lower()))
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
                " AND operations.lapsed_at IS NULL AND operations.failed_at <= ?")


# Activations whose time ran out without a FINISH: flagged for the operator at once.
LAPSED = "operations.state = 'open' AND operations.lapsed_at IS NOT NULL"


def lapsed_activations(db: Database) -> list[dict]:
    """Open activations that ran out of time without a FINISH (their numbers are offered
    again): Onlinesim normally FINISHes them; one it never will is closed by hand."""
    return db.rows(
        f"SELECT {_COLUMNS} FROM operations JOIN numbers ON numbers.id = operations.number_id"
        f" WHERE {LAPSED} ORDER BY +operations.id")


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
