import threading

import pytest

from rentbox import events, operations, pool
from rentbox.db import Connections
from rentbox.protocol import FinishRequest, NoOperation, RentRequest

from conftest import START, add_numbers, snapshot

GERMANY = [("+4915123456789", "germany", "telekom"), ("+4915123456790", "germany", "telekom"),
           ("+4917612345678", "germany", "o2"), ("+4917612345679", "germany", None)]


def rent(db, clock, **kwargs):
    return operations.open_rent(db, clock.now(), RentRequest(sum_kopecks=40000, **kwargs))


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
    operations.finish_rent(db, clock.now(), FinishRequest(first.activation_id, 4))
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
    clock.advance(3600)
    assert operations.finish_rent(db, clock.now(), FinishRequest(rental.activation_id, 3, 87000))
    op = db.row("SELECT state, finish_status, final_sum_kopecks, finished_at FROM operations")
    assert op == {"state": "closed", "finish_status": 3, "final_sum_kopecks": 87000,
                  "finished_at": "2026-11-01T13:00:00.000000Z"}
    number = db.row("SELECT operation_id, idle_since FROM numbers")
    assert number == {"operation_id": None, "idle_since": "2026-11-01T13:00:00.000000Z"}
    before = snapshot(db)
    clock.advance(10)
    for status in (3, 4):
        assert not operations.finish_rent(db, clock.now(),
                                          FinishRequest(rental.activation_id, status, 1))
    assert snapshot(db) == before
    kinds = [(e["kind"], e["detail"].get("outcome")) for e in
             events.for_operation(db, rental.activation_id)]
    assert kinds == [("rent_opened", None), ("rent_finished", "sold")]


def test_finish_unknown_operation(db, clock):
    before = snapshot(db)
    with pytest.raises(NoOperation):
        operations.finish_rent(db, clock.now(), FinishRequest(99, 3, 100))
    assert snapshot(db) == before


def test_activation_ids_are_never_reused(db, clock):
    add_numbers(db, START, *GERMANY[:1])
    first = rent(db, clock)
    operations.finish_rent(db, clock.now(), FinishRequest(first.activation_id, 4))
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
