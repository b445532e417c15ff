import pytest

from rentbox import bans, events
from rentbox.config import Rules
from rentbox.errors import Conflict, NotFound

from conftest import START, add_numbers

RULES = Rules(guard_s=60, ban_after=2, ban_s=600)


def number_id(db, number="4915123456789"):
    return db.row("SELECT id FROM numbers WHERE number = ?", (number,))["id"]


def fail(db, clock, n=1):
    for _ in range(n):
        with db.transaction():
            bans.record_failure(db, clock.now(), RULES, number_id=number_id(db),
                                operation_id=None, reason="guard_expired")


@pytest.fixture
def pooled(db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4917612345678", "germany", "o2"))
    return db


def test_ban_after_consecutive_failures_and_lift_when_due(pooled, clock):
    db = pooled
    fail(db, clock)
    assert bans.list_bans(db) == [{"number": "4915123456789", "country": "germany",
                                   "operator": "telekom", "failures": 1, "banned_until": None}]
    fail(db, clock)
    assert bans.list_bans(db)[0]["banned_until"] == "2026-11-01T12:10:00.000000Z"
    clock.advance(599)
    with db.transaction():
        assert bans.lift_due_bans(db, clock.now()) == 0
    clock.advance(1)
    with db.transaction():
        assert bans.lift_due_bans(db, clock.now()) == 1
    assert bans.list_bans(db) == []
    kinds = [e["kind"] for e in events.for_number(db, number_id(db))]
    assert kinds == ["number_added", "number_banned", "ban_lifted"]


def test_success_resets_the_count(pooled, clock):
    db = pooled
    fail(db, clock)
    with db.transaction():
        bans.record_success(db, clock.now(), number_id=number_id(db), operation_id=None)
        bans.record_success(db, clock.now(), number_id=number_id(db), operation_id=None)
    assert bans.list_bans(db) == []
    kinds = [e["kind"] for e in events.for_number(db, number_id(db))]
    assert kinds.count("failures_reset") == 1  # only a real change leaves an event


def test_lift_by_hand(pooled, clock):
    db = pooled
    fail(db, clock, 2)
    bans.lift_ban(db, clock.now(), "4915123456789")
    assert bans.list_bans(db) == []
    lifted = events.for_number(db, number_id(db))[-1]
    assert lifted["kind"] == "ban_lifted"
    assert lifted["detail"] == {"reason": "lifted by hand",
                                "was_until": "2026-11-01T12:10:00.000000Z"}
    with pytest.raises(Conflict, match="is not banned and has no failed rentals"):
        bans.lift_ban(db, clock.now(), "4915123456789")
    with pytest.raises(NotFound, match="not in the pool"):
        bans.lift_ban(db, clock.now(), "79123456789")


def test_lift_by_hand_resets_the_count_of_a_number_that_is_not_banned(pooled, clock):
    db = pooled
    fail(db, clock)
    bans.lift_ban(db, clock.now(), "4915123456789")
    assert bans.list_bans(db) == []
    reset = events.for_number(db, number_id(db))[-1]
    assert (reset["kind"], reset["detail"]) == ("failures_reset",
                                                {"reason": "reset by hand", "failures": 1})


def test_failed_test_rentals_never_count(pooled, clock):
    from rentbox import housekeeping, operations
    from rentbox.protocol import FinishRequest, NumberRequest

    for _ in range(3):  # guard windows that expire, then cancellations without an SMS
        rentals = [operations.open_operation(pooled, clock,
                                             NumberRequest(sum_kopecks=100, test=True),
                                             RULES) for _ in range(2)]
        clock.advance(61)
        housekeeping.run_once(pooled, clock.now(), RULES)
        for rental in rentals:
            operations.finish_operation(pooled, clock, FinishRequest(
                activation_id=rental.activation_id, status=4, sum_kopecks=0), RULES)
    assert bans.list_bans(pooled) == []
    assert pooled.rows("SELECT failures, banned_until FROM numbers") == [
        {"failures": 0, "banned_until": None}] * 2
