import logging
import threading

from rentbox import housekeeping, operations
from rentbox.config import Rules
from rentbox.db import Connections
from rentbox.protocol import NumberRequest

from conftest import START, add_numbers, snapshot

RULES = Rules(guard_s=60, ban_after=1, ban_s=120, guard_margin_s=0)


def test_run_once_expires_guards_then_lifts_bans(db, clock):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    operations.open_operation(db, clock, NumberRequest(100), RULES)
    before = snapshot(db)
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert snapshot(db) == before  # nothing due, nothing written
    clock.advance(60)
    assert housekeeping.run_once(db, clock.now(), RULES) == 1
    assert db.row("SELECT banned_until FROM numbers")["banned_until"] is not None
    clock.advance(120)
    assert housekeeping.run_once(db, clock.now(), RULES) == 1
    assert db.row("SELECT banned_until, failures FROM numbers") == {"banned_until": None,
                                                                     "failures": 0}


def test_the_pass_reads_only_through_indexes(db, clock):
    # A pass must not scan history: each of its queries (the real ones, not copies)
    # searches an index.
    from rentbox import bans, push

    cutoff = "2026-11-01T12:00:00.000000Z"
    queries = [
        (f"SELECT id, number_id FROM operations WHERE {operations.GUARD_DUE}", (cutoff,),
         "operations_awaiting_sms"),
        (f"SELECT id, number_id FROM operations WHERE {operations.ACTIVATION_DUE}", (cutoff,),
         "operations_activation_due"),
        (f"SELECT id FROM numbers WHERE {bans.BAN_DUE}", (cutoff,), "numbers_banned"),
        (push.NEXT_DUE_SQL, ("activation", cutoff), "sms_outbox_by_route"),
    ]
    for sql, params, index in queries:
        plan = " ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, (
            sql, plan)


class FlakyClock:
    """The first reading fails, as a pass can fail; later ones work."""

    def __init__(self, clock):
        self.clock, self.calls = clock, 0
        self.second_pass = threading.Event()

    def now(self):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("simulated failure")
        self.second_pass.set()
        return self.clock.now()


def test_thread_survives_a_failing_pass_and_stops_promptly(db_path, db, clock, caplog):
    conns = Connections(db_path)
    flaky = FlakyClock(clock)
    keeper = housekeeping.Housekeeper(conns, flaky, RULES, interval_s=0.01)
    with caplog.at_level(logging.ERROR, logger="rentbox.housekeeping"):
        keeper.start()
        assert flaky.second_pass.wait(5)
        keeper.stop(timeout_s=2)
    conns.close_all()
    assert not keeper._thread.is_alive()
    assert keeper._thread.name == "rentbox-housekeeping"
    assert "housekeeping pass failed" in caplog.text


def test_a_full_disk_is_logged_once_not_at_every_pass(db_path, db, clock, caplog,
                                                      monkeypatch):
    from rentbox.db import Database

    conns = Connections(db_path)
    conns.health.failed("the disk is full")
    passes = threading.Event()
    calls = {"n": 0}

    class CountingClock:
        def now(self):
            calls["n"] += 1
            if calls["n"] >= 20:
                passes.set()
            return clock.now()

    def failing_probe(self, stamp):
        from rentbox.errors import Unavailable

        raise Unavailable("the database cannot be written now: the disk is full")

    monkeypatch.setattr(Database, "probe_write", failing_probe)
    keeper = housekeeping.Housekeeper(conns, CountingClock(), RULES, interval_s=0.005)
    with caplog.at_level(logging.INFO, logger="rentbox.housekeeping"):
        keeper.start()
        assert passes.wait(5)
        keeper.stop(timeout_s=2)
    conns.close_all()
    assert [r.getMessage() for r in caplog.records] == [
        "housekeeping pass skipped: the database cannot be written now: the disk is full; "
        "trying every 0.005 s"]


def wal_bytes(db) -> int:
    wal = db.path.with_name(db.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_on_a_nearly_full_disk_the_pass_gives_the_wal_space_back(db, clock, monkeypatch):
    from rentbox.db import Database

    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    assert wal_bytes(db) > 0
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert wal_bytes(db) > 0  # room enough: SQLite's own checkpoints do
    monkeypatch.setattr(Database, "free_bytes", lambda self: 1024)
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert wal_bytes(db) == 0


def test_while_writes_fail_the_probe_truncates_the_wal_before_it_writes(db, clock):
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom") for i in range(500)])
    grown = wal_bytes(db)
    db.health.failed("the disk is full")
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert not db.health.failing
    # Only the probe's own frames are left: the WAL was emptied before it wrote.
    assert 0 < wal_bytes(db) < grown / 10
