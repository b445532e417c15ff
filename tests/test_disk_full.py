"""A database on a full disk: writes fail cleanly, nothing is over-reported, and rentbox
recovers on its own once there is room again."""

import pytest

from rentbox import housekeeping, operations
from rentbox.config import Rules
from rentbox.db import JOURNAL_SIZE_LIMIT_BYTES, open_database
from rentbox.errors import Unavailable
from rentbox.protocol import RentRequest

from conftest import START, FakeClock, add_numbers, fill_disk

RULES = Rules(guard_s=60, guard_margin_s=0)


def test_a_full_disk_refuses_writes_advertises_nothing_and_recovers(small_disk):
    clock = FakeClock()
    db = open_database(small_disk / "rentbox.db")
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4915123456790", "germany", "telekom"))
    assert operations.available_counts(db, clock.now(), RULES) == {
        "germany": {"any": 2, "telekom": 2}}
    filler = fill_disk(small_disk)
    with pytest.raises(Unavailable, match="cannot be written now: "):
        operations.open_rent(db, clock, RentRequest(100), RULES)
    assert db.write_problem() is not None
    assert db.row("SELECT count(*) AS n FROM operations")["n"] == 0  # nothing half-done
    # Every GET_NUMBER would fail: GET_SERVICES must not advertise the pool.
    assert operations.available_counts(db, clock.now(), RULES) == {}
    with pytest.raises(Unavailable):
        housekeeping.run_once(db, clock.now(), RULES)
    filler.unlink()
    # The next housekeeping pass finds that writing works again, and everything with it.
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert db.write_problem() is None
    assert operations.available_counts(db, clock.now(), RULES) == {
        "germany": {"any": 2, "telekom": 2}}
    assert operations.open_rent(db, clock, RentRequest(100), RULES) is not None
    db.close()


def test_without_root_a_failed_write_is_reported_until_a_write_succeeds(db, clock):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    db.health.failed("the disk is full")
    assert db.write_problem() == "the disk is full"
    assert operations.available_counts(db, clock.now(), RULES) == {}
    assert housekeeping.run_once(db, clock.now(), RULES) == 0  # the probe write works
    assert db.write_problem() is None
    assert operations.available_counts(db, clock.now(), RULES) == {
        "germany": {"any": 1, "telekom": 1}}


def test_a_lock_held_past_the_busy_timeout_is_unavailable_not_a_crash(db, db_path, clock,
                                                                      monkeypatch):
    import sqlite3

    from rentbox import db as db_module

    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_S", 0.2)
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    other = sqlite3.connect(str(db_path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(Unavailable, match="locked by another process"):
            operations.open_rent(db, clock, RentRequest(100), RULES)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert operations.open_rent(db, clock, RentRequest(100), RULES) is not None
    assert db.write_problem() is None


def test_the_wal_shrinks_back_after_a_checkpoint(db):
    """Without journal_size_limit a WAL that once grew keeps its size for ever, and on a
    full disk freeing a little space would not be enough to write again."""
    wal = db.path.with_name(db.path.name + "-wal")
    with db.transaction():
        db.execute("CREATE TABLE filler (blob BLOB)")
        for _ in range(40):
            db.execute("INSERT INTO filler VALUES (zeroblob(256 * 1024))")  # 10 MiB
    assert wal.stat().st_size > JOURNAL_SIZE_LIMIT_BYTES
    with db.transaction():
        db.execute("DROP TABLE filler")
    # PASSIVE, like SQLite's automatic checkpoints: it never truncates the file itself
    # (TRUNCATE would, and this test could then not fail without the limit).
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    with db.transaction():
        db.execute("CREATE TABLE t (x)")  # a write after the checkpoint resets the WAL
    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT_BYTES


def test_a_presence_report_on_a_full_disk_changes_nothing(small_disk):
    """A gateway's report that cannot be stored is refused whole (the web layer answers
    503, so the gateway sends it again); no number goes offline half-way."""
    from rentbox import presence

    clock = FakeClock()
    db = open_database(small_disk / "rentbox.db")
    add_numbers(db, START, ("+4915123456789", "germany", "o2", "1.01"),
                ("+4915123456790", "germany", "o2", "1.02"))
    presence.report(db, clock, RULES, presence.Report("box", ports=("1.01", "1.02")))
    before = db.rows("SELECT number, offline, seen_at FROM numbers ORDER BY id")
    filler = fill_disk(small_disk)
    clock.advance(5)
    with pytest.raises(Unavailable):
        presence.report(db, clock, RULES, presence.Report("box", ports=("1.01",)))
    assert db.rows("SELECT number, offline, seen_at FROM numbers ORDER BY id") == before
    filler.unlink()
    assert presence.report(db, clock, RULES, presence.Report("box", ports=("1.01",))).online == 1
    db.close()
