"""A database on a full disk: writes fail cleanly, nothing is over-reported, and rentbox
recovers on its own once there is room again."""

import pytest

from rentbox import housekeeping, operations
from rentbox.config import Rules
from rentbox.db import (JOURNAL_SIZE_LIMIT_BYTES, MIN_FREE_BYTES,
                        SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES, open_database)
from rentbox.errors import Unavailable
from rentbox.protocol import NumberRequest

from conftest import (API_KEY, START, FakeClock, add_numbers, fill_disk, http_post,
                      rent_number, wait_until)

RULES = Rules(guard_s=60, guard_margin_s=0)


def test_a_full_disk_refuses_writes_advertises_nothing_and_recovers(small_disk):
    clock = FakeClock()
    db = open_database(small_disk / "rentbox.db")
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4915123456790", "germany", "telekom"))
    assert operations.available_counts(db, clock.now(), RULES).rent == {
        "germany": {"any": 2, "telekom": 2}}
    filler = fill_disk(small_disk)
    with pytest.raises(Unavailable, match="cannot be written now: "):
        operations.open_operation(db, clock, NumberRequest(100), RULES)
    assert db.write_problem() is not None
    assert db.row("SELECT count(*) AS n FROM operations")["n"] == 0  # nothing half-done
    # Every GET_NUMBER would fail: GET_SERVICES must not advertise the pool.
    assert operations.available_counts(db, clock.now(), RULES).rent == {}
    with pytest.raises(Unavailable):
        housekeeping.run_once(db, clock.now(), RULES)
    filler.unlink()
    # The next housekeeping pass finds that writing works again, and everything with it.
    assert housekeeping.run_once(db, clock.now(), RULES) == 0
    assert db.write_problem() is None
    assert operations.available_counts(db, clock.now(), RULES).rent == {
        "germany": {"any": 2, "telekom": 2}}
    assert operations.open_operation(db, clock, NumberRequest(100), RULES) is not None
    db.close()


def test_without_root_a_failed_write_is_reported_until_a_write_succeeds(db, clock):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    db.health.failed("the disk is full")
    assert db.write_problem() == "the disk is full"
    assert operations.available_counts(db, clock.now(), RULES).rent == {}
    assert housekeeping.run_once(db, clock.now(), RULES) == 0  # the probe write works
    assert db.write_problem() is None
    assert operations.available_counts(db, clock.now(), RULES).rent == {
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
            operations.open_operation(db, clock, NumberRequest(100), RULES)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert operations.open_operation(db, clock, NumberRequest(100), RULES) is not None
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


# ---- The WAL on a small disk ------------------------------------------------------------

def wal_bytes(path) -> int:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_write_that_fails_for_lack_of_space_gives_the_wal_space_back(small_disk):
    """The failing write truncates the WAL (it may be what filled the disk), so the space
    the WAL held is free again once the write has been refused."""
    import os

    db = open_database(small_disk / "rentbox.db")
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    assert db.truncate_wal()  # the database file has every page: a checkpoint needs no room
    with db.transaction():  # a few frames, for pages the database file already has
        db.execute("UPDATE numbers SET operator = 'o2'")
    assert wal_bytes(db.path) > 0
    fill_disk(small_disk)
    with pytest.raises(Unavailable, match="the disk is full"):
        with db.transaction():
            db.execute("UPDATE numbers SET operator = 'vodafone'")
    assert wal_bytes(db.path) == 0
    assert os.statvfs(small_disk).f_bfree > 0
    assert db.row("SELECT operator FROM numbers")["operator"] == "o2"  # nothing half-done
    db.close()


def test_a_checkpoint_that_fails_for_lack_of_space_is_unavailable_not_a_crash(small_disk):
    """Copying the WAL back must grow the database file here, which the full disk refuses:
    the write is still Unavailable, the WAL is kept whole, and nothing is lost."""
    clock = FakeClock()
    db = open_database(small_disk / "rentbox.db")
    add_numbers(db, START, *[(f"+49151234567{i:02d}", "germany", "telekom") for i in range(40)])
    before = wal_bytes(db.path)
    filler = fill_disk(small_disk)
    with pytest.raises(Unavailable, match="the disk is full"):
        operations.open_operation(db, clock, NumberRequest(100), RULES)
    assert not db.truncate_wal()
    assert wal_bytes(db.path) >= before
    filler.unlink()
    assert db.truncate_wal()
    assert wal_bytes(db.path) == 0
    assert db.row("SELECT count(*) AS n FROM numbers")["n"] == 40
    db.close()


GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}


def get_status(url: str) -> int:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def rent_and_sell(server) -> None:
    """One rental from GET_NUMBER to FINISH (sold), as Onlinesim does it."""
    activation_id = rent_number(server)
    answer = http_post(server.url + "/finishActivationRent", {
        "action": "FINISH_ACTIVATION", "key": API_KEY, "service": "rent",
        "activationId": activation_id, "status": 3, "sum": 400})
    assert answer.json["status"] == "SUCCESS", answer.json


def fill_pool(path, count: int) -> None:
    """Numbers for the server, put in from another connection, as `rentbox numbers import`."""
    db = open_database(path)
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom") for i in range(count)])
    db.close()


def test_a_fresh_database_does_not_fill_a_small_disk_by_itself(small_disk, start_server):
    """SQLite's default automatic checkpoint comes only at 1,000 pages (~4 MiB): a WAL that
    size filled this whole disk within about 25 rentals. On a small disk the WAL stays
    under SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES, and the disk keeps MIN_FREE_BYTES free
    (/health stays 200)."""
    import os

    path = small_disk / "rentbox.db"
    server = start_server(db=path)
    fill_pool(path, 50)
    largest = 0
    for _ in range(200):  # about 32 MiB of WAL frames in all
        rent_and_sell(server)
        largest = max(largest, wal_bytes(path))
    assert largest <= SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES
    stat = os.statvfs(small_disk)
    assert stat.f_bfree * stat.f_frsize >= MIN_FREE_BYTES
    assert get_status(server.url + "/health") == 200


def test_a_server_on_a_full_disk_answers_503_and_recovers_once_there_is_room(
        small_disk, start_server, caplog):
    """The issue, end to end: on a full disk GET_NUMBER and /health answer 503; once space
    is freed, housekeeping truncates the WAL, its probe write succeeds, and both answer
    again within a few passes, for good. No traceback is logged: a full disk is a state."""
    import logging

    path = small_disk / "rentbox.db"
    server = start_server(db=path, housekeeping_s=0.05)
    fill_pool(path, 100)
    rent_and_sell(server)
    with caplog.at_level(logging.INFO):
        filler = fill_disk(small_disk)
        # A GET_NUMBER can still fit where the WAL gave space back; soon none does.
        assert wait_until(lambda: http_post(server.url + "/getNumberRent",
                                            GET_NUMBER).status == 503)
        assert get_status(server.url + "/health") == 503
        filler.unlink()
        assert wait_until(lambda: get_status(server.url + "/health") == 200)
        for _ in range(20):  # and the WAL does not take the space again
            rent_and_sell(server)
        assert get_status(server.url + "/health") == 200
    assert "the database can be written again" in caplog.text
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_stopping_on_a_full_disk_logs_one_warning_and_no_traceback(small_disk, start_server,
                                                                   caplog):
    import logging

    path = small_disk / "rentbox.db"
    server = start_server(db=path, housekeeping_s=3600)  # no background writes
    fill_pool(path, 100)
    rent_and_sell(server)
    fill_disk(small_disk)
    assert wait_until(lambda: http_post(server.url + "/getNumberRent",
                                        GET_NUMBER).status == 503)
    # Take what the refused writes' truncated WAL gave back: now nothing can be written.
    fill_disk(small_disk)
    assert http_post(server.url + "/getNumberRent", GET_NUMBER).status == 503
    with caplog.at_level(logging.INFO):
        server.stop()
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [r.getMessage() for r in caplog.records if "server's stop" in r.getMessage()] == [
        "could not record the server's stop: the database cannot be written now: "
        "the disk is full"]
