"""The tallies equal a recount of the rows after every kind of state change (tallies.py)."""

import dataclasses

import pytest

from rentbox import bans, housekeeping, operations, pool, presence, reports, tallies
from rentbox.config import Rules
from rentbox.pool import PoolEntry
from rentbox.protocol import FinishRequest, NumberRequest
from rentbox.sms import IncomingSms, accept_sms

from conftest import START, add_numbers

RULES = Rules(guard_s=60, guard_margin_s=0, ban_after=2, ban_s=600, presence_s=120)
A, B, C, D = "4915123456789", "4917612345678", "79123456789", "380501234567"


def test_every_state_change_keeps_the_tallies_exact(db, clock):
    steps = []

    def check(step: str) -> None:
        steps.append(step)
        assert tallies.verify(db) == [], step

    def rent(**request):
        return operations.open_operation(db, clock,
                                         NumberRequest(sum_kopecks=40000, **request), RULES)

    def finish(rental, status, rub=400):
        operations.finish_operation(db, clock, FinishRequest(activation_id=rental.activation_id,
                                                        status=status, sum_kopecks=rub * 100),
                               RULES)

    check("empty")
    add_numbers(db, START, (A, "germany", "telekom", "1.01"), (B, "germany", None, "1.02"),
                (C, "russia", "mts", "2.01"), (D, "ukraine", "kyivstar", "2.02"))
    check("import")
    pool.import_entries(db, clock.now(), [PoolEntry(B, "germany", "o2", "1.02", 2),
                                          PoolEntry(D, "poland", "orange", "2.02", 3)])
    check("import changes operator and country")
    pool.set_enabled(db, clock.now(), C, False)
    check("disable")
    pool.set_enabled(db, clock.now(), C, True)
    check("enable")
    pool.remove_number(db, clock.now(), D)
    check("remove")
    pool.import_entries(db, clock.now(), [PoolEntry(D, "poland", "orange", "2.02", 2)])
    check("import brings a removed number back")

    sold = rent(country="germany", operator="telekom")
    check("claim")
    accept_sms(db, clock, IncomingSms(source="api", to=A, sender="x", text="code"), RULES)
    with db.transaction():
        operations.note_accepted(db, clock.now(), RULES, operation_id=sold.activation_id,
                                 number_id=pool.find_number(db, A)["id"])
    check("guard met")
    pool.set_enabled(db, clock.now(), A, False)
    check("a rented number disabled")
    finish(sold, 3, 870)
    check("sold")
    pool.set_enabled(db, clock.now(), A, True)
    # A country corrected later: past rentals stay booked where they were issued.
    pool.import_entries(db, clock.now(), [PoolEntry(A, "austria", "telekom", "1.01", 2)])
    check("country corrected after a rental")
    pool.import_entries(db, clock.now(), [PoolEntry(A, "germany", "telekom", "1.01", 2)])
    check("country corrected back")

    for status in (1, 5):
        rental = rent(country="russia")
        check(f"claim for {status}")
        finish(rental, status)
        check(f"finish {status}")

    failing = rent(country="germany", operator="o2")
    clock.advance(61)
    housekeeping.run_once(db, clock.now(), RULES)
    check("guard expired")
    operations.close_by_hand(db, clock.now(), failing.activation_id)
    check("closed by hand")
    cancelled = rent(country="germany", operator="o2")
    finish(cancelled, 4)
    check("cancelled without SMS: banned after two failures")
    assert pool.find_number(db, B)["state"] == "banned"
    clock.advance(601)
    operations.catch_up(db, clock.now(), RULES)
    check("ban ended")
    twice = [rent(country="poland") for _ in range(2)]
    for rental in twice:
        if rental:
            finish(rental, 4)
    check("banned again")
    bans.lift_ban(db, clock.now(), D)
    check("ban lifted by hand")

    presence.report(db, clock, RULES, presence.Report("box-1", ports=("1.01", "1.02")))
    check("presence: watched")
    presence.report(db, clock, RULES, presence.Report("box-1", ports=("1.01",)))
    check("presence: dropped")
    at_risk = rent(country="germany")
    presence.report(db, clock, RULES, presence.Report("box-1", ports=()))
    check("presence: a rented SIM offline")
    finish(at_risk, 3)
    clock.advance(121)
    presence.set_by_hand(db, clock.now(), RULES, [C], online=False)
    check("presence: offline by hand")
    presence.set_by_hand(db, clock.now(), RULES, [C], online=True)
    check("presence: online by hand")
    housekeeping.run_once(db, clock.now(), RULES)
    check("presence: window ended")
    operations.catch_up(db, clock.now(), dataclasses.replace(RULES, presence=False))
    check("presence turned off")
    assert len(steps) == 30


def test_reads_use_the_tallies(db, clock):
    add_numbers(db, START, (A, "germany", "telekom"), (B, "germany", None), (C, "russia", "mts"))
    assert pool.count_available(db) == {"germany": {"any": 2, "telekom": 1},
                                        "russia": {"any": 1, "mts": 1}}
    facts = reports.status(db, clock.now())
    assert (facts["pool"]["free"], facts["presence"]["unwatched"]) == (3, 3)


def test_verify_finds_a_tally_that_drifted_and_rebuild_repairs_it(db, clock):
    add_numbers(db, START, (A, "germany", "telekom"), (C, "russia", "mts"))
    operations.open_operation(db, clock, NumberRequest(sum_kopecks=100), RULES)
    with db.transaction():
        db.execute("UPDATE free_counts SET n = n + 5 WHERE country = 'russia'")
        db.execute("DELETE FROM books_daily")
    found = tallies.verify(db)
    assert [(d.tally, d.key) for d in found] == [
        ("free_counts", ("russia", "mts")), ("books_daily", (START.date().isoformat(), "germany"))]
    assert str(found[0]) == "free_counts russia/mts: stored 6, recounted 1"
    tallies.rebuild(db)
    assert tallies.verify(db) == []


@pytest.mark.parametrize("by", ["day", "week", "month", "country"])
def test_the_report_from_the_tallies_equals_the_report_from_the_rows(db, clock, by):
    import datetime as dt

    add_numbers(db, START, (A, "germany", "telekom"), (C, "russia", "mts"))
    for day in range(40):
        clock.current = START + dt.timedelta(days=day, hours=13)
        rental = operations.open_operation(db, clock, NumberRequest(sum_kopecks=100 * day), RULES)
        if day % 3:
            operations.finish_operation(db, clock, FinishRequest(
                activation_id=rental.activation_id, status=3 if day % 2 else 5,
                sum_kopecks=250 * day), RULES)
    for since, until in [(None, None), (START + dt.timedelta(days=3), None),
                         (START.replace(hour=0) + dt.timedelta(days=5),
                          START.replace(hour=0) + dt.timedelta(days=20))]:
        fast = reports.income_report(db, by=by, since=since, until=until)
        slow = reports.income_report(db, by=by, since=since, until=until, from_rows=True)
        assert fast == slow
        assert fast[1].operations > 0


def test_test_rentals_keep_the_tallies_exact_and_stay_out_of_the_books(db, clock):
    """Self-test rentals (X-Rentbox-Test) through every state: the tally equals the recount
    after each, and neither holds them; failures and bans never move."""
    add_numbers(db, START, (A, "germany", "telekom", "1.01"), (C, "russia", "mts", "2.01"))
    books = db.rows("SELECT * FROM books_daily ORDER BY day, country")

    def rent():
        return operations.open_operation(db, clock,
                                         NumberRequest(sum_kopecks=40000, test=True), RULES)

    def finish(rental, status):
        operations.finish_operation(db, clock, FinishRequest(activation_id=rental.activation_id,
                                                        status=status, sum_kopecks=87000),
                               RULES)

    def check(step: str) -> None:
        assert tallies.verify(db) == [], step
        assert db.rows("SELECT * FROM books_daily ORDER BY day, country") == books, step
        assert bans.list_bans(db) == [], step

    met = rent()
    check("claim")
    number = pool.find_number(db, met.number)
    with db.transaction():
        operations.note_accepted(db, clock.now(), RULES, operation_id=met.activation_id,
                                 number_id=number["id"])
    check("guard met")
    finish(met, 3)
    check("sold")
    for status in (1, 4, 5, 4, 4):  # cancellations without SMS: would ban after two
        finish(rent(), status)
        check(f"finish {status}")
    expiring = [rent(), rent()]
    clock.advance(61)
    housekeeping.run_once(db, clock.now(), RULES)
    check("guard expired")
    for rental in expiring:
        finish(rental, 4)
        check("failed rental finished")
    assert db.rows("SELECT count(*) AS n FROM operations WHERE test = 1") == [{"n": 8}]
    real = operations.open_operation(db, clock, NumberRequest(sum_kopecks=40000), RULES)
    finish(real, 3)
    assert tallies.verify(db) == []
    assert sum(r["credited_kopecks"] for r in db.rows("SELECT * FROM books_daily")) == 87000
