"""Activations on the pool (services.py and its use in operations.py): which services are
offered, honest counts per service, spent numbers, and FINISH's effects."""

import threading

import pytest

from rentbox import events, housekeeping, operations, services, tallies
from rentbox.config import Rules
from rentbox.db import Connections
from rentbox.errors import InvalidInput, NotFound
from rentbox.protocol import FinishRequest, NumberRequest

from conftest import START, add_numbers, snapshot

NUMBERS = [("+4915123456789", "germany", "telekom"), ("+4915123456790", "germany", "telekom"),
           ("+4917612345678", "germany", "o2"), ("+4917612345679", "germany", None)]
RULES = Rules(services=("vk", "wa"), guard_s=60, guard_margin_s=0, activation_s=120,
              ban_after=3, ban_s=3600)


def activate(db, clock, service="vk", rules=RULES, **kwargs):
    return operations.open_operation(
        db, clock, NumberRequest(sum_kopecks=2000, service=service, **kwargs), rules)


def rent(db, clock, rules=RULES, **kwargs):
    return operations.open_operation(db, clock, NumberRequest(sum_kopecks=40000, **kwargs),
                                     rules)


def finish(db, clock, activation_id, status, sum_kopecks=None, rules=RULES):
    return operations.finish_operation(db, clock, FinishRequest(activation_id, status,
                                                                sum_kopecks), rules)


def counts(db, clock, rules=RULES):
    return operations.available_counts(db, clock.now(), rules)


def spent_for(db, number):
    return [u["service"] for u in db.rows(
        "SELECT service FROM service_uses JOIN numbers ON numbers.id = number_id"
        " WHERE numbers.number = ? AND spent_at IS NOT NULL ORDER BY service", (number,))]


# ---- which services --------------------------------------------------------------------

def test_offered_services_are_parsed_in_order_without_repeats():
    assert services.parse_offered(" vk, WA,tg ,vk,, ") == ("vk", "wa", "tg")
    assert services.parse_offered("") == ()
    assert services.parse_offered(None) == ()


@pytest.mark.parametrize("text, message", [
    ("vk,rent", "rent is always offered"),
    ("vk, what's app", "short service name"),
    ("x" * 33, "short service name"),
])
def test_a_bad_offered_service_is_refused(text, message):
    with pytest.raises(InvalidInput, match=message):
        services.parse_offered(text)


def test_without_offered_services_activations_are_off(db, clock):
    add_numbers(db, START, *NUMBERS)
    off = Rules()
    assert counts(db, clock, off).activations == {}
    before = snapshot(db)
    assert activate(db, clock, "vk", off) is None
    assert snapshot(db) == before


def test_an_unoffered_service_gets_no_number(db, clock):
    add_numbers(db, START, *NUMBERS)
    before = snapshot(db)
    assert activate(db, clock, "tg") is None
    assert snapshot(db) == before


# ---- counts ------------------------------------------------------------------------------

def test_counts_per_service_with_any_carrying_the_sums(db, clock):
    add_numbers(db, START, *NUMBERS)
    assert counts(db, clock).activations == {"germany": {
        "any": {"vk": 4, "wa": 4}, "telekom": {"vk": 2, "wa": 2}, "o2": {"vk": 1, "wa": 1}}}
    assert counts(db, clock).rent == {"germany": {"any": 4, "telekom": 2, "o2": 1}}


def test_one_pool_a_number_in_either_kind_of_operation_is_counted_for_neither(db, clock):
    add_numbers(db, START, *NUMBERS)
    rental = rent(db, clock)
    activation = activate(db, clock, "wa")
    assert {rental.number, activation.number} == {"4915123456789", "4915123456790"}
    both = counts(db, clock)
    assert both.rent["germany"]["any"] == 2
    assert both.activations["germany"]["any"] == {"vk": 2, "wa": 2}
    assert "telekom" not in both.activations["germany"]  # both telekom numbers are taken


def test_a_spent_number_is_not_counted_for_its_service_only(db, clock):
    add_numbers(db, START, *NUMBERS)
    issued = activate(db, clock, "vk", country="germany", operator="o2")
    assert finish(db, clock, issued.activation_id, 3)
    assert spent_for(db, issued.number) == ["vk"]
    found = counts(db, clock)
    assert found.activations["germany"]["o2"] == {"vk": 0, "wa": 1}
    assert found.activations["germany"]["any"] == {"vk": 3, "wa": 4}
    assert found.rent["germany"]["o2"] == 1  # rent is never spent


def test_counts_are_the_tallies_and_the_tallies_equal_a_recount(db, clock):
    add_numbers(db, START, *NUMBERS)
    for status in (3, 1, 4, 5):
        issued = activate(db, clock, "vk")
        finish(db, clock, issued.activation_id, status)
    db.execute("UPDATE numbers SET enabled = 0 WHERE number = '4917612345679'")
    assert tallies.verify(db) == []
    db.execute("UPDATE spent_free_counts SET n = n + 1")
    assert any(d.tally == "spent_free_counts" for d in tallies.verify(db))
    tallies.rebuild(db)
    assert tallies.verify(db) == []


# ---- GET_NUMBER --------------------------------------------------------------------------

def test_an_activation_is_opened_like_a_rental_with_its_service(db, clock):
    add_numbers(db, START, *NUMBERS)
    issued = activate(db, clock, "wa", country="germany", operator="telekom")
    assert issued.activation_id == 1
    op = db.row("SELECT service, state, initial_sum_kopecks FROM operations WHERE id = 1")
    assert op == {"service": "wa", "state": "open", "initial_sum_kopecks": 2000}
    assert [e["kind"] for e in events.for_operation(db, 1)] == ["activation_opened"]
    assert events.for_operation(db, 1)[0]["detail"]["service"] == "wa"


def test_rentals_and_activations_share_one_id_sequence(db, clock):
    add_numbers(db, START, *NUMBERS)
    ids = [rent(db, clock).activation_id, activate(db, clock).activation_id,
           rent(db, clock).activation_id]
    assert ids == [1, 2, 3]


def test_a_spent_number_is_never_issued_for_its_service(db, clock):
    add_numbers(db, START, *NUMBERS[:2])
    first = activate(db, clock, "vk")
    finish(db, clock, first.activation_id, 3)
    # The spent number is now idle longest but one; the other is issued, then nothing.
    second = activate(db, clock, "vk")
    assert second.number != first.number
    finish(db, clock, second.activation_id, 1)
    assert activate(db, clock, "vk") is None
    # Still offered for rent and for another service.
    assert activate(db, clock, "wa") is not None
    assert rent(db, clock) is not None


def test_the_claim_seeks_past_a_head_of_spent_numbers(db, clock):
    """More spent numbers idle longest than the head scan reads: the claim seeks."""
    numbers = [(f"+49151{n:08d}", "germany", "telekom") for n in range(150)]
    add_numbers(db, START, *numbers)
    spent = operations.HEAD_SCAN + 40
    stamp = "2026-11-01T11:00:00.000000Z"
    for row in db.rows("SELECT id FROM numbers ORDER BY idle_since, id LIMIT ?", (spent,)):
        db.execute("INSERT INTO service_uses (number_id, service, tries, spent_at, updated_at)"
                   " VALUES (?, 'vk', 0, ?, ?)", (row["id"], stamp, stamp))
    spent_numbers = {r["number"] for r in db.rows(
        "SELECT number FROM numbers JOIN service_uses ON number_id = numbers.id")}
    issued = [activate(db, clock, "vk") for _ in range(150 - spent)]
    assert all(i is not None and i.number not in spent_numbers for i in issued)
    assert activate(db, clock, "vk") is None
    assert counts(db, clock).activations["germany"]["any"] == {"vk": 0, "wa": spent}


def test_exclusions_and_spent_numbers_together(db, clock):
    add_numbers(db, START, *NUMBERS)
    first = activate(db, clock, "vk", excluded_prefixes=("49151",))
    assert first.number.startswith("49176")
    finish(db, clock, first.activation_id, 3)
    second = activate(db, clock, "vk", excluded_prefixes=("49151",))
    assert second.number.startswith("49176") and second.number != first.number
    finish(db, clock, second.activation_id, 3)
    assert activate(db, clock, "vk", excluded_prefixes=("49151",)) is None


def test_thirty_parallel_requests_for_a_service_never_share_a_number(db, db_path, clock):
    numbers = [(f"+49151{n:08d}", "germany", "telekom") for n in range(20)]
    add_numbers(db, START, *numbers)
    conns = Connections(db_path)
    issued, barrier = [], threading.Barrier(30)

    def one(service):
        barrier.wait()
        got = activate(conns.get(), clock, service)
        if got is not None:
            issued.append(got.number)

    threads = [threading.Thread(target=one, args=("vk" if i % 2 else "wa",))
               for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conns.close_all()
    assert len(issued) == 20 and len(set(issued)) == 20


# ---- FINISH ------------------------------------------------------------------------------

def test_finish_sold_credits_the_finish_sum_or_else_the_get_number_sum(db, clock):
    add_numbers(db, START, *NUMBERS)
    with_sum = activate(db, clock)
    without = activate(db, clock)
    finish(db, clock, with_sum.activation_id, 3, sum_kopecks=2500)
    finish(db, clock, without.activation_id, 3)
    assert [r["final_sum_kopecks"] for r in db.rows(
        "SELECT final_sum_kopecks FROM operations ORDER BY id")] == [2500, 2000]
    assert events.for_operation(db, without.activation_id)[-2]["detail"]["sum_from"]


def test_the_fourth_cancelled_try_spends_the_number(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    for tries in range(1, services.MAX_TRIES + 1):
        assert spent_for(db, "4915123456789") == []
        issued = activate(db, clock, "vk")
        assert issued is not None
        finish(db, clock, issued.activation_id, 4)
        assert db.row("SELECT tries FROM service_uses")["tries"] == tries
        # A cancel without an SMS is a failure: lift the ban that three of them bring.
        db.execute("UPDATE numbers SET banned_until = NULL, failures = 0")
    assert spent_for(db, "4915123456789") == ["vk"]
    assert activate(db, clock, "vk") is None
    assert activate(db, clock, "wa") is not None


def test_finish_refunded_spends_nothing_and_counts_no_try(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    issued = activate(db, clock)
    finish(db, clock, issued.activation_id, 5)
    assert db.rows("SELECT * FROM service_uses") == []
    assert activate(db, clock) is not None


def test_finish_is_idempotent_and_finds_either_kind_by_id(db, clock):
    add_numbers(db, START, *NUMBERS)
    rental, issued = rent(db, clock), activate(db, clock)
    assert finish(db, clock, issued.activation_id, 3)
    before = snapshot(db)
    assert not finish(db, clock, issued.activation_id, 3)
    assert not finish(db, clock, issued.activation_id, 4)
    assert snapshot(db) == before
    assert finish(db, clock, rental.activation_id, 3, sum_kopecks=87000)
    assert [e["kind"] for e in events.for_operation(db, issued.activation_id)] == [
        "activation_opened", "activation_finished", "service_spent"]


def test_cancelled_activations_without_sms_count_toward_the_same_ban(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    rental = rent(db, clock)
    finish(db, clock, rental.activation_id, 4)  # a rental cancelled without an SMS
    for service in ("vk", "wa"):
        issued = activate(db, clock, service)
        finish(db, clock, issued.activation_id, 4)
    assert db.row("SELECT failures, banned_until IS NOT NULL AS banned FROM numbers") == {
        "failures": 3, "banned": 1}
    assert counts(db, clock).activations == {} and counts(db, clock).rent == {}


def test_an_activation_with_an_accepted_sms_resets_the_failures(db, clock):
    from test_operations import sms_for

    add_numbers(db, START, *NUMBERS[:1])
    issued = activate(db, clock)
    finish(db, clock, issued.activation_id, 4)
    issued = activate(db, clock)
    clock.advance(100)  # after a rental's guard window, inside the activation's time
    sms_for(db, clock, "+4915123456789", rules=RULES)
    assert db.row("SELECT failures FROM numbers")["failures"] == 0
    op = db.row("SELECT sms_accepted_at, failed_at FROM operations WHERE id = ?",
                (issued.activation_id,))
    assert op["sms_accepted_at"] is not None and op["failed_at"] is None


# ---- no FINISH in time -----------------------------------------------------------------

def test_an_activation_without_finish_lapses_and_returns_its_number(db, clock):
    from test_operations import sms_for

    add_numbers(db, START, *NUMBERS[:1])
    issued = activate(db, clock)
    clock.advance(10)
    sms_for(db, clock, "+4915123456789", rules=RULES)  # accepted: no failure
    second = sms_for(db, clock, "+4915123456789", rules=RULES, outcome=None)  # waits
    clock.advance(RULES.activation_decided_s - 11)
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    clock.advance(1)
    assert housekeeping.run_once(db, clock.now(), RULES) == 1
    op = db.row("SELECT state, lapsed_at, failed_at FROM operations WHERE id = ?",
                (issued.activation_id,))
    assert op["state"] == "open" and op["lapsed_at"] is not None and op["failed_at"] is None
    assert [r["id"] for r in operations.lapsed_activations(db)] == [issued.activation_id]
    assert db.row("SELECT push_state FROM sms WHERE id = ?",
                  (second.sms_id,))["push_state"] == "expired"
    assert db.row("SELECT failures FROM numbers")["failures"] == 0
    again = activate(db, clock, "wa")
    assert again.number == issued.number
    # The FINISH still comes: booked, the number (another's now) left alone.
    assert finish(db, clock, issued.activation_id, 3)
    assert db.row("SELECT operation_id FROM numbers")["operation_id"] == again.activation_id
    assert operations.lapsed_activations(db) == []


def test_an_activation_without_sms_or_finish_is_a_failure_when_it_lapses(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    issued = activate(db, clock)
    clock.advance(RULES.activation_decided_s)
    housekeeping.run_once(db, clock.now(), RULES)
    op = db.row("SELECT lapsed_at, failed_at, failure FROM operations")
    assert op["lapsed_at"] and op["failed_at"] and op["failure"] == "activation_expired"
    assert db.row("SELECT failures FROM numbers")["failures"] == 1
    operations.close_by_hand(db, clock.now(), issued.activation_id)  # no --force needed
    assert db.row("SELECT state FROM operations")["state"] == "closed"


def test_a_rental_guard_window_does_not_apply_to_an_activation(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    activate(db, clock)
    clock.advance(RULES.guard_decided_s + 1)
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert db.row("SELECT operation_id FROM numbers")["operation_id"] == 1


# ---- unspend -------------------------------------------------------------------------------

def test_unspend_offers_a_number_for_the_service_again(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    issued = activate(db, clock)
    finish(db, clock, issued.activation_id, 3)
    assert activate(db, clock) is None
    services.unspend(db, clock.now(), "+49 151 23456789", "VK")
    assert spent_for(db, "4915123456789") == []
    assert [e["kind"] for e in events.for_number(db, 1)][-1] == "service_unspent"
    assert activate(db, clock) is not None
    with pytest.raises(NotFound, match="is not spent for wa"):
        services.unspend(db, clock.now(), "+4915123456789", "wa")


def test_services_overview(db, clock):
    add_numbers(db, START, *NUMBERS)
    issued = activate(db, clock, "vk")
    finish(db, clock, issued.activation_id, 3)
    activate(db, clock, "wa")
    old = activate(db, clock, "vk")
    finish(db, clock, old.activation_id, 1)
    assert services.overview(db, Rules(services=("wa",))) == [
        {"service": "wa", "offered": True, "available": 3, "spent": 0, "open": 1},
        {"service": "vk", "offered": False, "available": 0, "spent": 2, "open": 0}]


# ---- books per product and service -------------------------------------------------------

@pytest.mark.parametrize("by", ["product", "service"])
def test_report_by_product_and_service_reads_the_tally_and_equals_a_recount(db, clock, by):
    from rentbox import reports

    add_numbers(db, START, *NUMBERS)
    sold_rent = rent(db, clock)
    finish(db, clock, sold_rent.activation_id, 3, sum_kopecks=87000)
    for service, status in (("vk", 3), ("wa", 3), ("vk", 4), ("wa", 5)):
        issued = activate(db, clock, service)
        finish(db, clock, issued.activation_id, status)
    activate(db, clock, "vk")  # open
    rows, totals = reports.income_report(db, by=by)
    assert (rows, totals) == reports.income_report(db, by=by, from_rows=True)
    credited = {r.key: r.credited_kopecks for r in rows}
    if by == "product":
        assert credited == {"activations": 4000, "rent": 87000}
        assert {r.key: r.operations for r in rows} == {"activations": 5, "rent": 1}
    else:
        assert credited == {"rent": 87000, "vk": 2000, "wa": 2000}
        assert {r.key: r.open for r in rows} == {"rent": 0, "vk": 1, "wa": 0}
    assert totals.credited_kopecks == 91000


def test_a_self_test_activation_spends_nothing_and_is_not_booked(db, clock):
    add_numbers(db, START, *NUMBERS[:1])
    issued = activate(db, clock, test=True)
    finish(db, clock, issued.activation_id, 3)
    assert db.rows("SELECT * FROM service_uses") == []
    assert db.rows("SELECT * FROM books_by_service") == []
    assert activate(db, clock) is not None
