import threading

import pytest

from rentbox import events, housekeeping, operations, pool
from rentbox.config import Rules
from rentbox.db import Connections
from rentbox.errors import Conflict, InvalidInput, NotFound
from rentbox.protocol import FinishRequest, NoOperation, NumberRequest

from conftest import START, add_numbers, snapshot

GERMANY = [("+4915123456789", "germany", "telekom"), ("+4915123456790", "germany", "telekom"),
           ("+4917612345678", "germany", "o2"), ("+4917612345679", "germany", None)]


RULES = Rules()


def rent(db, clock, **kwargs):
    return operations.open_operation(db, clock, NumberRequest(sum_kopecks=40000, **kwargs), RULES)


def finish(db, clock, activation_id, status, sum_kopecks=None):
    return operations.finish_operation(db, clock, FinishRequest(activation_id, status,
                                                                 sum_kopecks), RULES)


def test_rent_issues_a_number_and_records_the_operation(db, clock):
    add_numbers(db, START, *GERMANY)
    rental = rent(db, clock, country="germany")
    assert rental.activation_id == 1
    op = db.row("SELECT * FROM operations WHERE id = 1")
    assert op["state"] == "open"
    assert op["initial_sum_kopecks"] == 40000
    assert op["created_at"] == "2026-11-01T12:00:00.000000Z"
    number = db.row("SELECT operation_id FROM numbers WHERE number = ?", (rental.number,))
    assert number["operation_id"] == 1
    assert [e["kind"] for e in events.for_operation(db, 1)] == ["rent_opened"]


def test_rent_prefers_the_number_idle_longest(db, clock):
    add_numbers(db, START, *GERMANY[:3])
    first = rent(db, clock)
    clock.advance(60)
    finish(db, clock, first.activation_id, 4)
    issued = [rent(db, clock).number for _ in range(3)]
    # The number just returned is the last one offered again.
    assert issued[-1] == first.number
    assert len(set(issued)) == 3


@pytest.mark.parametrize("filters, expected", [
    ({"country": "germany", "operator": "telekom"}, {"4915123456789", "4915123456790"}),
    ({"country": "germany", "operator": "o2"}, {"4917612345678"}),
    ({"country": "germany"}, {n[0][1:] for n in GERMANY}),
    ({"country": "russia"}, set()),
    ({"operator": "o2"}, {"4917612345678"}),
    ({"excluded_prefixes": ("4915",)}, {"4917612345678", "4917612345679"}),
    ({"excluded_prefixes": ("49176123456", "4915123456789")},
     {"4915123456790"}),
    ({"excluded_prefixes": ("49",)}, set()),
])
def test_rent_honours_filters(db, clock, filters, expected):
    add_numbers(db, START, *GERMANY)
    issued = set()
    while (rental := rent(db, clock, **filters)) is not None:
        issued.add(rental.number)
    assert issued == expected


def test_no_numbers_changes_nothing(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    rent(db, clock)
    before = snapshot(db)
    assert rent(db, clock) is None
    assert snapshot(db) == before


def test_finish_frees_the_number_and_is_idempotent(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    rental = rent(db, clock)
    clock.advance(600)  # inside the guard window
    assert finish(db, clock, rental.activation_id, 3, 87000)
    op = db.row("SELECT state, finish_status, final_sum_kopecks, finished_at FROM operations")
    assert op == {"state": "closed", "finish_status": 3, "final_sum_kopecks": 87000,
                  "finished_at": "2026-11-01T12:10:00.000000Z"}
    number = db.row("SELECT operation_id, idle_since FROM numbers")
    assert number == {"operation_id": None, "idle_since": "2026-11-01T12:10:00.000000Z"}
    before = snapshot(db)
    clock.advance(10)
    for status in (3, 4):
        assert not finish(db, clock, rental.activation_id, status, 1)
    assert snapshot(db) == before
    kinds = [(e["kind"], e["detail"].get("outcome")) for e in
             events.for_operation(db, rental.activation_id)]
    assert kinds == [("rent_opened", None), ("rent_finished", "sold")]


def test_finish_unknown_operation(db, clock):
    before = snapshot(db)
    with pytest.raises(NoOperation):
        finish(db, clock, 99, 3, 100)
    assert snapshot(db) == before


def test_activation_ids_are_never_reused(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    first = rent(db, clock)
    finish(db, clock, first.activation_id, 4)
    db.execute("DELETE FROM events")
    db.execute("DELETE FROM operations")
    assert rent(db, clock).activation_id == first.activation_id + 1


def test_concurrent_claims_never_issue_a_number_twice(db_path, db, clock):
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom") for i in range(200)])
    conns = Connections(db_path)
    issued, misses, errors = [], [], []
    barrier = threading.Barrier(8)

    def worker():
        try:
            database = conns.get()
            barrier.wait()
            for _ in range(40):
                rental = rent(database, clock)
                (issued if rental else misses).append(rental)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conns.close_all()
    assert errors == []
    assert len(issued) == 200 and len(misses) == 120
    assert len({r.number for r in issued}) == 200
    assert len({r.activation_id for r in issued}) == 200
    assert pool.count_available(db) == {}


# ---- the guard window and failures (protocol.md 5) ------------------------------------

SHORT = Rules(guard_s=60, ban_after=3, ban_s=3600, guard_margin_s=0)


def sms_for(db, clock, number, rules=SHORT, outcome="delivered", sent_at=None):
    """An SMS for `number`, stored, then one push attempt that came to `outcome`
    (delivered, BAD_SERVICE, retry, or None: not pushed), sent at `sent_at` (default now)."""
    from rentbox import push
    from rentbox.sms import IncomingSms, accept_sms

    accepted = accept_sms(db, clock, IncomingSms(source="cli", to=number, sender="bank",
                                                 text="code 1234"), rules)
    if outcome is not None and accepted.push_state == "pending":
        result = {"delivered": push.Outcome("delivered"),
                  "BAD_SERVICE": push.Outcome("terminal", "BAD_SERVICE"),
                  "retry": push.Outcome("retry", "cannot connect", unreachable=True)}[outcome]
        row = db.row("SELECT * FROM sms WHERE id = ?", (accepted.sms_id,))
        push.record(db, clock.now(), row, result, 10, sent_at=sent_at or clock.now(),
                    rules=rules)
    return accepted


def test_guard_window_passing_without_sms_frees_the_number_but_keeps_the_operation_open(
        db, clock):
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    clock.advance(59)
    assert housekeeping.run_once(db, clock.now(), SHORT) == 0
    clock.advance(1)
    assert housekeeping.run_once(db, clock.now(), SHORT) == 1
    op = db.row("SELECT state, failed_at, failure FROM operations")
    assert op == {"state": "open", "failed_at": "2026-11-01T12:01:00.000000Z",
                  "failure": "guard_expired"}
    assert db.row("SELECT operation_id, failures FROM numbers") == {"operation_id": None,
                                                                     "failures": 1}
    # The number is offered again at once; the old operation still waits for its FINISH.
    again = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    assert again.number == rental.number
    assert operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 4), SHORT)
    # ... which neither counts a second failure nor frees the number's new rental.
    assert db.row("SELECT operation_id, failures FROM numbers") == {
        "operation_id": again.activation_id, "failures": 1}


@pytest.mark.parametrize("presence", [True, False])
def test_with_nothing_due_the_rules_cost_one_read_and_each_due_kind_is_seen(db, clock,
                                                                          presence):
    import dataclasses

    from rentbox.clock import to_text

    rules = dataclasses.replace(SHORT, presence=presence)
    add_numbers(db, START, *GERMANY[:2])
    operations.open_operation(db, clock, NumberRequest(100), rules)
    seen = []
    db.conn.set_trace_callback(seen.append)
    try:
        assert operations.apply_due_rules(db, clock.now(), rules) == 0
    finally:
        db.conn.set_trace_callback(None)
    assert len(seen) == 1 and seen[0].startswith("SELECT EXISTS")  # every call's cost
    # Each kind of due rule is seen by that one read: a guard window that passed ...
    clock.advance(60)
    assert operations.has_due_rules(db, clock.now(), rules)
    assert operations.apply_due_rules(db, clock.now(), rules) == 1
    assert not operations.has_due_rules(db, clock.now(), rules)
    # ... a ban that ends ...
    db.execute("UPDATE numbers SET banned_until = ? WHERE id = 2", (to_text(clock.now()),))
    assert operations.has_due_rules(db, clock.now(), rules)
    assert operations.apply_due_rules(db, clock.now(), rules) == 1
    # ... and a SIM out of its presence window (or, presence off, one still offline).
    if presence:
        db.execute("UPDATE numbers SET seen_by = 'gw', seen_at = ? WHERE id = 2",
                   ("2026-10-01T00:00:00.000000Z",))
    else:
        db.execute("UPDATE numbers SET offline = 1 WHERE id = 2")
    assert operations.has_due_rules(db, clock.now(), rules)
    assert operations.apply_due_rules(db, clock.now(), rules) == 1
    assert not operations.has_due_rules(db, clock.now(), rules)


def test_sms_inside_the_window_keeps_the_rental_and_resets_the_count(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    db.execute("UPDATE numbers SET failures = 2")
    rental = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    clock.advance(30)
    assert sms_for(db, clock, "+4915123456789").push_state == "pending"
    clock.advance(3600)
    assert housekeeping.run_once(db, clock.now(), SHORT) == 0
    assert db.row("SELECT operation_id, failures FROM numbers") == {
        "operation_id": rental.activation_id, "failures": 0}
    kinds = [e["kind"] for e in events.for_operation(db, rental.activation_id)]
    assert kinds == ["rent_opened", "sms_received", "sms_delivered", "guard_met",
                     "failures_reset"]


@pytest.mark.parametrize("outcome", ["BAD_SERVICE", "retry", None])
def test_an_sms_onlinesim_did_not_accept_does_not_meet_the_window(db, clock, outcome):
    """Refused for good (a bank SMS), Onlinesim unreachable, or no push URL at all:
    Onlinesim saw no SMS in these rentals, so three of them ban the number."""
    add_numbers(db, START, *GERMANY[:1])
    for _ in range(3):
        rental = operations.open_operation(db, clock, NumberRequest(100), SHORT)
        clock.advance(10)
        sms_for(db, clock, "+4915123456789", outcome=outcome)
        clock.advance(60)  # past the window
        operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 4), SHORT)
    assert db.row("SELECT failures, banned_until IS NOT NULL AS banned FROM numbers") == {
        "failures": 3, "banned": 1}
    assert operations.available_counts(db, clock.now(), SHORT).rent == {}


def test_a_finish_4_in_the_window_is_a_failure_when_nothing_was_accepted(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    clock.advance(10)
    sms_for(db, clock, "+4915123456789", outcome="BAD_SERVICE")
    operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 4), SHORT)
    assert db.row("SELECT failure FROM operations")["failure"] == "cancelled_without_sms"
    assert db.row("SELECT failures FROM numbers")["failures"] == 1


MARGIN = Rules(guard_s=60, ban_after=3, ban_s=3600, guard_margin_s=15)


def test_an_sms_accepted_after_the_window_but_before_it_is_decided_meets_it(db, clock):
    """Onlinesim records a rental a moment after rentbox commits it: a SUCCESS 0.45 s
    after rentbox's window ended proves the rental was alive on its side."""
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(100), MARGIN)
    clock.advance(60.45)
    sms_for(db, clock, "+4915123456789", MARGIN)
    clock.advance(3600)
    housekeeping.run_once(db, clock.now(), MARGIN)
    assert db.row("SELECT sms_accepted_at, failed_at FROM operations WHERE id = ?",
                  (rental.activation_id,)) == {"sms_accepted_at": "2026-11-01T12:01:00.450000Z",
                                               "failed_at": None}
    assert db.row("SELECT failures FROM numbers")["failures"] == 0


def test_an_sms_whose_answer_was_lost_meets_the_window_when_accepted_on_the_resend(db, clock):
    """Received by Onlinesim inside the window, its answer lost (a timeout); the re-send
    10 s later, after the window but before it is decided, is answered SUCCESS."""
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(100), MARGIN)
    clock.advance(55)
    accepted = sms_for(db, clock, "+4915123456789", MARGIN, outcome="retry")
    clock.advance(10)
    from rentbox import push

    row = db.row("SELECT * FROM sms WHERE id = ?", (accepted.sms_id,))
    push.record(db, clock.now(), row, push.Outcome("delivered"), 10, sent_at=clock.now(),
                rules=MARGIN)
    clock.advance(3600)
    housekeeping.run_once(db, clock.now(), MARGIN)
    assert db.row("SELECT failed_at FROM operations WHERE id = ?",
                  (rental.activation_id,))["failed_at"] is None


def test_an_sms_accepted_after_the_window_was_decided_does_not_meet_it(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(100), MARGIN)
    clock.advance(60 + 15 + 0.001)  # decided; housekeeping has not run yet
    sms_for(db, clock, "+4915123456789", MARGIN)
    assert db.row("SELECT sms_accepted_at FROM operations")["sms_accepted_at"] is None
    housekeeping.run_once(db, clock.now(), MARGIN)
    assert db.row("SELECT failure FROM operations WHERE id = ?",
                  (rental.activation_id,))["failure"] == "guard_expired"


@pytest.mark.parametrize("status", [1, 3, 5])
def test_a_finish_that_is_not_a_cancel_counts_no_failure_even_past_the_window(db, clock,
                                                                              status):
    """FINISH 1, 3 or 5 after the window was due, before housekeeping applied it: the
    FINISH decides the rental. No failure, no ban (at two failures already), and a sale
    is credited."""
    add_numbers(db, START, *GERMANY[:1])
    db.execute("UPDATE numbers SET failures = 2")
    rental = operations.open_operation(db, clock, NumberRequest(400), MARGIN)
    clock.advance(60 + 15 + 5)
    assert operations.finish_operation(db, clock, FinishRequest(rental.activation_id, status,
                                                           87000), MARGIN)
    assert db.row("SELECT failures, banned_until FROM numbers") == {"failures": 2,
                                                                    "banned_until": None}
    assert db.row("SELECT failed_at, failure, finish_status FROM operations") == {
        "failed_at": None, "failure": None, "finish_status": status}
    kinds = [e["kind"] for e in events.for_operation(db, rental.activation_id)]
    assert kinds == ["rent_opened", "rent_finished"]
    assert operations.available_counts(db, clock.now(), MARGIN).rent == {
        "germany": {"any": 1, "telekom": 1}}


def test_a_finish_4_past_the_window_counts_one_failure_and_bans_at_the_threshold(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    db.execute("UPDATE numbers SET failures = 2")
    rental = operations.open_operation(db, clock, NumberRequest(400), MARGIN)
    clock.advance(60 + 15 + 5)
    operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 4), MARGIN)
    assert db.row("SELECT failures, banned_until IS NOT NULL AS banned FROM numbers") == {
        "failures": 3, "banned": 1}
    assert db.row("SELECT failure FROM operations")["failure"] == "guard_expired"


def test_a_sale_without_sum_is_credited_at_the_get_number_sum_and_says_so(db, clock, caplog):
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(40000), SHORT)
    assert operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 3), SHORT)
    assert db.row("SELECT state, final_sum_kopecks FROM operations") == {
        "state": "closed", "final_sum_kopecks": 40000}
    [finished] = [e for e in events.for_operation(db, rental.activation_id)
                  if e["kind"] == "rent_finished"]
    assert finished["detail"]["sum_from"] == "GET_NUMBER: the FINISH had no sum"
    assert finished["detail"]["sum_kopecks"] == 40000
    assert "came without a sum: credited the GET_NUMBER sum, 400.00 RUB" in caplog.text
    # A repeat changes nothing; a cancel without sum credits nothing.
    assert not operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 3), SHORT)
    other = operations.open_operation(db, clock, NumberRequest(40000), SHORT)
    operations.finish_operation(db, clock, FinishRequest(other.activation_id, 5), SHORT)
    assert db.row("SELECT final_sum_kopecks FROM operations WHERE id = ?",
                  (other.activation_id,))["final_sum_kopecks"] is None


def test_a_call_past_its_deadline_changes_nothing(db, clock):
    """GET_NUMBER or FINISH that got the write lock after the caller gave up: rolled back,
    so no rental is left that nobody receives."""
    import datetime as dt

    from rentbox.errors import TooLate

    add_numbers(db, START, *GERMANY[:1])
    before = snapshot(db)
    with pytest.raises(TooLate, match="GET_NUMBER waited past the caller's deadline"):
        operations.open_operation(db, clock, NumberRequest(100), SHORT,
                             deadline=clock.now() - dt.timedelta(seconds=0.001))
    assert snapshot(db) == before
    rental = operations.open_operation(db, clock, NumberRequest(100), SHORT, deadline=clock.now())
    before = snapshot(db)
    with pytest.raises(TooLate, match="FINISH_ACTIVATION waited"):
        operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 3, 100), SHORT,
                               deadline=clock.now() - dt.timedelta(seconds=1))
    assert snapshot(db) == before


def test_an_sms_sent_in_time_and_accepted_inside_the_margin_meets_the_window(db, clock):
    rules = Rules(guard_s=60, ban_after=3, ban_s=3600, guard_margin_s=15)
    add_numbers(db, START, *GERMANY[:1])
    rental = operations.open_operation(db, clock, NumberRequest(100), rules)
    sent = clock.advance(59)
    clock.advance(10)  # Onlinesim took 10 s to answer SUCCESS: 69 s, inside the margin
    sms_for(db, clock, "+4915123456789", rules, sent_at=sent)
    clock.advance(3600)
    housekeeping.run_once(db, clock.now(), rules)
    assert db.row("SELECT sms_accepted_at, failed_at FROM operations WHERE id = ?",
                  (rental.activation_id,)) == {"sms_accepted_at": "2026-11-01T12:01:09.000000Z",
                                               "failed_at": None}


def test_a_guard_expired_number_is_offered_again_only_after_the_margin(db, clock):
    rules = Rules(guard_s=60, ban_after=3, ban_s=3600, guard_margin_s=15)
    add_numbers(db, START, *GERMANY[:1])
    operations.open_operation(db, clock, NumberRequest(100), rules)
    clock.advance(60 + 14)
    assert operations.available_counts(db, clock.now(), rules).rent == {}
    assert operations.open_operation(db, clock, NumberRequest(100), rules) is None
    clock.advance(1)
    assert operations.available_counts(db, clock.now(), rules).rent == {
        "germany": {"any": 1, "telekom": 1}}
    assert operations.open_operation(db, clock, NumberRequest(100), rules) is not None


def test_the_rental_is_dated_when_the_write_lock_is_held(db, db_path, clock):
    """Another process holds the write lock while GET_NUMBER waits: the rental must be
    dated when it is served, not when the request came in, or its guard window would
    end early by the wait."""
    import sqlite3
    import time

    add_numbers(db, START, *GERMANY[:1])
    other = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    holding = threading.Event()

    def release_later():
        holding.set()
        time.sleep(0.3)  # the other process, not rentbox, is slow
        clock.advance(3)  # three seconds pass while the lock is held
        other.execute("COMMIT")

    thread = threading.Thread(target=release_later)
    thread.start()
    holding.wait(5)
    rental = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    thread.join(5)
    other.close()
    created = db.row("SELECT created_at FROM operations WHERE id = ?", (rental.activation_id,))
    assert created["created_at"] == "2026-11-01T12:00:03.000000Z"


def test_cancel_inside_the_window_without_sms_is_a_failure(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    for status, counted in [(4, 1), (5, 1), (1, 1), (3, 1), (4, 2)]:
        rental = operations.open_operation(db, clock, NumberRequest(100), SHORT)
        clock.advance(10)
        operations.finish_operation(db, clock, FinishRequest(rental.activation_id, status, 0),
                               SHORT)
        assert db.row("SELECT failures FROM numbers")["failures"] == counted, status


def test_three_failures_ban_the_number_until_the_ban_ends(db, clock):
    add_numbers(db, START, *GERMANY[:2])
    target = "4915123456789"
    for _ in range(3):
        rental = operations.open_operation(db, clock, NumberRequest(100, excluded_prefixes=(
            "4915123456790",)), SHORT)
        assert rental.number == target
        clock.advance(61)
    assert pool.count_available(db) == {"germany": {"any": 1, "telekom": 1}}  # not yet applied
    assert operations.available_counts(db, clock.now(), SHORT).rent == {
        "germany": {"any": 1, "telekom": 1}}
    banned = db.row("SELECT failures, banned_until FROM numbers WHERE number = ?", (target,))
    assert banned == {"failures": 3, "banned_until": "2026-11-01T13:03:03.000000Z"}
    # Neither offered nor counted while banned; the other number still is.
    assert [r["state"] for r in pool.list_numbers(db)] == ["banned", "free"]
    assert operations.open_operation(db, clock, NumberRequest(100, country="germany",
                                                             operator="telekom", excluded_prefixes=(
        "4915123456790",)), SHORT) is None
    clock.advance(3600)
    # A claim right after the ban ended gets the number, even before housekeeping ran.
    rental = operations.open_operation(db, clock, NumberRequest(100, excluded_prefixes=(
        "4915123456790",)), SHORT)
    assert rental.number == target
    assert db.row("SELECT failures, banned_until FROM numbers WHERE number = ?", (target,)) == {
        "failures": 0, "banned_until": None}
    number_id = db.row("SELECT id FROM numbers WHERE number = ?", (target,))["id"]
    kinds = [e["kind"] for e in events.for_number(db, number_id)]
    assert kinds.count("number_banned") == 1 and kinds.count("ban_lifted") == 1
    ban = [e for e in events.for_number(db, number_id) if e["kind"] == "number_banned"][0]
    assert ban["detail"]["reason"] == "3 consecutive failed rentals, the last: guard_expired"


def test_a_success_between_failures_restarts_the_count(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    for got_sms in (False, False, True, False, False):
        operations.open_operation(db, clock, NumberRequest(100), SHORT)
        if got_sms:
            sms_for(db, clock, "+4915123456789")
            rental = db.row("SELECT operation_id FROM numbers")["operation_id"]
            operations.finish_operation(db, clock, FinishRequest(rental, 3, 100), SHORT)
        clock.advance(61)
        housekeeping.run_once(db, clock.now(), SHORT)
    assert db.row("SELECT failures, banned_until FROM numbers") == {"failures": 2,
                                                                     "banned_until": None}


def test_list_and_show_operations(db, clock):
    add_numbers(db, START, *GERMANY[:2])
    first = operations.open_operation(db, clock, NumberRequest(40000), SHORT)
    sms_for(db, clock, "+" + first.number)
    clock.advance(1)
    operations.finish_operation(db, clock, FinishRequest(first.activation_id, 3, 87000), SHORT)
    second = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    rows = operations.list_operations(db)
    assert [(r["id"], r["outcome"], r["sms_count"]) for r in rows] == [
        (second.activation_id, "open", 0), (first.activation_id, "sold", 1)]
    assert [r["id"] for r in operations.list_operations(db, open_only=True)] == [2]
    assert [r["id"] for r in operations.list_operations(db, outcome="sold")] == [1]
    assert [r["id"] for r in operations.list_operations(db, number="+" + first.number)] == [1]
    shown = operations.show_operation(db, first.activation_id)
    assert [e["kind"] for e in shown["events"]] == [
        "rent_opened", "sms_received", "sms_delivered", "guard_met", "rent_finished"]
    assert [m["text"] for m in shown["sms"]] == ["code 1234"]
    with pytest.raises(NotFound):
        operations.show_operation(db, 99)
    with pytest.raises(InvalidInput, match="outcome must be one of"):
        operations.list_operations(db, outcome="great")


def test_close_by_hand_only_for_a_failed_rental_and_a_late_finish_is_still_booked(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    held = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    with pytest.raises(Conflict, match="still holds its number until Onlinesim.s FINISH"):
        operations.close_by_hand(db, clock.now(), held.activation_id)
    clock.advance(61)
    housekeeping.run_once(db, clock.now(), SHORT)
    operations.close_by_hand(db, clock.now(), held.activation_id)
    with pytest.raises(Conflict, match="already closed"):
        operations.close_by_hand(db, clock.now(), held.activation_id)
    with pytest.raises(NotFound):
        operations.close_by_hand(db, clock.now(), 99)
    assert operations.list_operations(db, outcome="closed_by_hand")[0]["id"] == \
        held.activation_id
    # The number was re-rented meanwhile; a FINISH that comes after all is booked, and
    # leaves the new rental alone.
    again = operations.open_operation(db, clock, NumberRequest(100), SHORT)
    assert operations.finish_operation(db, clock, FinishRequest(held.activation_id, 3, 500), SHORT)
    assert operations.show_operation(db, held.activation_id)["outcome"] == "sold"
    assert db.row("SELECT operation_id FROM numbers")["operation_id"] == again.activation_id
    kinds = [e["kind"] for e in events.for_operation(db, held.activation_id)]
    assert kinds[-2:] == ["closed_by_hand", "rent_finished"]
    # ... and only once.
    assert not operations.finish_operation(db, clock, FinishRequest(held.activation_id, 3, 900),
                                      SHORT)
    assert operations.show_operation(db, held.activation_id)["final_sum_kopecks"] == 500


# ---------------------------------------------------------------------------------------
# The claim under exclusions (exceptionPhoneSet)
# ---------------------------------------------------------------------------------------


def test_allowed_ranges_are_the_complement_of_the_prefixes():
    assert operations.allowed_ranges(("4915",)) == [("", "4915"), ("4915:", None)]
    assert operations.allowed_ranges(("4916", "4915", "49150", "7")) == [
        ("", "4915"), ("4915:", "4916"), ("4916:", "7"), ("7:", None)]
    assert operations.allowed_ranges(("0",)) == [("", "0"), ("0:", None)]


def test_a_claim_whose_exclusions_cover_the_whole_idle_head_seeks_the_allowed_ranges(db, clock):
    """The worst case of the idle order: every number idle longer than the one allowed
    number is excluded."""
    rows = [(f"+4915{i:09d}", "germany", "o2") for i in range(operations.HEAD_SCAN * 3)]
    add_numbers(db, START, *rows)
    add_numbers(db, clock.advance(60), ("+4917612345678", "germany", "vodafone"),
                ("+4916012345678", "germany", "o2"))
    rentals = [rent(db, clock, country="germany", excluded_prefixes=("4915",))
               for _ in range(2)]
    assert sorted(r.number for r in rentals) == ["4916012345678", "4917612345678"]
    assert rent(db, clock, country="germany", excluded_prefixes=("4915",)) is None
    # The operator filter holds on the seek too.
    for rental in rentals:
        finish(db, clock, rental.activation_id, 3)
    assert rent(db, clock, country="germany", operator="vodafone",
                excluded_prefixes=("4915", "4916")).number == "4917612345678"
    assert rent(db, clock, operator="o2", country="germany",
                excluded_prefixes=("4915", "4917")).number == "4916012345678"


def test_claims_with_random_exclusions_agree_with_a_brute_force_search(db, clock):
    import random

    chooser = random.Random(7)
    numbers = sorted({f"+49{chooser.choice(['151', '152', '160', '176'])}{chooser.randrange(10**7, 10**8)}"
                      for _ in range(300)})
    add_numbers(db, START, *[(n, "germany", chooser.choice(["o2", "telekom"])) for n in numbers])
    for trial in range(60):
        prefixes = tuple({f"49{chooser.choice(['151', '152', '160', '176', '1', '15'])}"
                          f"{chooser.randrange(0, 10) if chooser.random() < .5 else ''}"
                          for _ in range(chooser.randrange(1, 5))})
        operator = chooser.choice([None, "o2"])
        free = db.rows("SELECT number, operator FROM numbers WHERE operation_id IS NULL")
        allowed = {r["number"] for r in free if not r["number"].startswith(prefixes)
                   and operator in (None, r["operator"])}
        rental = rent(db, clock, country="germany", operator=operator,
                      excluded_prefixes=prefixes)
        if not allowed:
            assert rental is None, (trial, prefixes)
        else:
            assert rental is not None and rental.number in allowed, (trial, prefixes)
            if chooser.random() < .7:
                finish(db, clock, rental.activation_id, 3)


def test_a_test_rental_is_marked_and_listed_as_one(db, clock):
    add_numbers(db, START, ("4915123456789", "germany", "telekom"))
    rental = operations.open_operation(db, clock, NumberRequest(sum_kopecks=0, test=True), RULES)
    assert [r["test"] for r in operations.list_operations(db)] == [1]
    operations.finish_operation(db, clock, FinishRequest(activation_id=rental.activation_id,
                                                    status=1, sum_kopecks=0), RULES)
    operations.finish_operation(db, clock, FinishRequest(activation_id=rental.activation_id,
                                                    status=1, sum_kopecks=0), RULES)
    assert pool.find_number(db, "4915123456789")["state"] == "free"
    real = operations.open_operation(db, clock, NumberRequest(sum_kopecks=0), RULES)
    assert real is not None
    assert [r["test"] for r in operations.list_operations(db)] == [0, 1]


def test_a_seek_point_between_bounds_longer_than_a_number_stays_between_them():
    """protocol.py refuses prefixes longer than a number; the claim's seek must not fail
    on one anyway (it raised ValueError before)."""
    from rentbox.operations import _random_point

    for low, high in [("1234567890123456789", None), ("12", "1234567890123456789:"),
                      ("12345678901234567", "12345678901234567:")]:
        point = _random_point(low, high)
        assert point >= low and (high is None or point < high)
