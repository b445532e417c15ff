import contextlib
import os
import re
import sqlite3
import threading
import types
from pathlib import Path

import pytest

from rentbox.db import Connections, Database, migrate, migrations, open_database
from rentbox.errors import DatabaseError


def test_first_use_creates_and_migrates(tmp_path):
    path = tmp_path / "new.db"
    db = open_database(path)
    assert path.exists()
    assert {"numbers", "operations", "events"} <= set(db.table_names())
    applied = [m.name for m in migrations.applied(db)]
    assert applied == [m.name for m in migrations._migrations]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_every_connection_is_durable_against_power_loss(db):
    # synchronous is per connection: 2 is FULL (fsync at every commit).
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    other = Database(db.path)
    assert other.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_migrating_again_keeps_the_data(db_path):
    db = open_database(db_path)
    db.execute("INSERT INTO numbers (number, country, idle_since, created_at, updated_at)"
               " VALUES ('4915123456789', 'germany', 'a', 'a', 'a')")
    db.close()
    again = open_database(db_path)
    migrate(again)
    assert again.execute("SELECT count(*) FROM numbers").fetchone()[0] == 1


def test_transaction_rolls_back_on_error(db):
    with pytest.raises(ZeroDivisionError):
        with db.transaction():
            db.execute("INSERT INTO numbers (number, country, idle_since, created_at, "
                       "updated_at) VALUES ('1', 'x', 'a', 'a', 'a')")
            1 / 0
    assert db.execute("SELECT count(*) FROM numbers").fetchone()[0] == 0
    assert not db.conn.in_transaction


def test_not_a_database(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not SQLite " * 100)
    with pytest.raises(DatabaseError, match="cannot open .* as a rentbox database"):
        open_database(path)


def test_missing_folder(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        open_database(tmp_path / "nowhere" / "rentbox.db")


def test_connections_are_per_thread_and_share_one_lock(db_path, db):
    conns = Connections(db_path)
    mine = conns.get()
    assert conns.get() is mine
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(conns.get()))
    thread.start()
    thread.join()
    assert theirs[0] is not mine
    assert theirs[0].write_lock is mine.write_lock
    conns.close_all()
    with pytest.raises(sqlite3.ProgrammingError):
        mine.execute("SELECT 1")


def test_backup_is_a_consistent_copy_taken_while_writing(db_path, db, tmp_path):
    from rentbox.db import backup
    from rentbox.errors import Conflict

    stop = threading.Event()

    def writer():
        other = Database(db_path)
        i = 0
        while not stop.is_set():
            with other.transaction():
                other.execute("INSERT INTO meta VALUES (?, '{}', 'x')", (f"k{i}",))
                other.execute("INSERT INTO meta VALUES (?, '{}', 'x')", (f"j{i}",))
            i += 1
        other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        target = tmp_path / "copy.db"
        assert backup(db, target) > 0
    finally:
        stop.set()
        thread.join()
    copy = open_database(target)
    keys = [r["key"] for r in copy.rows("SELECT key FROM meta")]
    # Both rows of every transaction, or neither: a snapshot, not a torn copy.
    assert sorted(k[1:] for k in keys if k[0] == "k") == sorted(k[1:] for k in keys if k[0] == "j")
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # reopened by rentbox
    with pytest.raises(Conflict, match="already exists"):
        backup(db, target)
    with pytest.raises(Conflict, match="does not exist"):
        backup(db, tmp_path / "no" / "copy.db")
    assert not (tmp_path / "copy.db.partial").exists()


def test_backup_never_writes_through_or_removes_a_file_in_its_way(db, tmp_path):
    from rentbox.db import backup
    from rentbox.errors import Conflict

    other_app = tmp_path / "other-app.db"
    with contextlib.closing(sqlite3.connect(other_app)) as conn:
        conn.executescript("CREATE TABLE mine (x); INSERT INTO mine VALUES (42);")
    before = other_app.read_bytes()
    target = tmp_path / "copy.db"
    for planted in ("copy.db.partial", "copy.db.partial-journal", "copy.db.partial-wal"):
        (tmp_path / planted).symlink_to(other_app)
        with pytest.raises(Conflict, match=re.escape(f"{tmp_path / planted} already exists")):
            backup(db, target)
        assert (tmp_path / planted).is_symlink()  # not the backup's: left where it was
        (tmp_path / planted).unlink()
    assert other_app.read_bytes() == before
    left = tmp_path / "copy.db.partial"
    left.write_bytes(b"someone's file")
    with pytest.raises(Conflict, match="remove it and run the backup again"):
        backup(db, target)
    assert left.read_bytes() == b"someone's file"
    left.unlink()
    assert backup(db, target) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "other-app.db",
                                                          "rentbox.db", "rentbox.db-shm",
                                                          "rentbox.db-wal"]


def test_backup_never_replaces_a_file_created_while_it_ran(db, tmp_path):
    from rentbox.db import backup
    from rentbox.errors import Conflict

    target = tmp_path / "copy.db"

    def someone_takes_the_name(copy):
        target.write_bytes(b"theirs")
        db.conn.backup(copy)

    racing = types.SimpleNamespace(conn=types.SimpleNamespace(backup=someone_takes_the_name))
    with pytest.raises(Conflict, match="already exists; choose a new name"):
        backup(racing, target)
    assert target.read_bytes() == b"theirs"
    assert not (tmp_path / "copy.db.partial").exists()  # its own partial is removed


def test_backup_works_where_files_cannot_be_hard_linked(db, tmp_path, monkeypatch):
    from rentbox.db import backup

    def no_hard_links(*args, **kwargs):  # as on FAT or some network shares
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    assert backup(db, tmp_path / "copy.db") > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "rentbox.db",
                                                          "rentbox.db-shm", "rentbox.db-wal"]


def test_one_server_per_database_whatever_name_it_is_started_with(db_path, db, tmp_path):
    from rentbox.db import hold_serving_lock, is_being_served
    from rentbox.errors import Conflict

    link = tmp_path / "elsewhere" / "link.db"
    link.parent.mkdir()
    link.symlink_to(db_path)
    assert not is_being_served(link)
    lock = hold_serving_lock(db_path)
    try:
        assert is_being_served(link)
        with pytest.raises(Conflict, match="run one server per database"):
            hold_serving_lock(link)
    finally:
        lock.close()
    assert not is_being_served(link)
    hold_serving_lock(link).close()


def test_a_symlink_planted_as_the_lock_file_is_refused_not_truncated(db_path, db, tmp_path):
    from rentbox.db import hold_serving_lock, is_being_served
    from rentbox.errors import Conflict

    victim = tmp_path / "victim.txt"
    victim.write_text("another program's data")
    Path(str(db_path) + ".serve.lock").symlink_to(victim)
    with pytest.raises(Conflict, match="is a symbolic link"):
        hold_serving_lock(db_path)
    with pytest.raises(Conflict, match="is a symbolic link"):
        is_being_served(db_path)
    assert victim.read_text() == "another program's data"


OLD_STAMP = "2026-01-01T00:00:00.000000Z"


def older_database(path, stop_before: str) -> Database:
    """A file as an older rentbox left it: migrated up to `stop_before`, with one number."""
    old = Database(path)
    with old.transaction():
        migrations.apply(old, stop_before=stop_before)
    old.execute("INSERT INTO numbers (number, country, operator, idle_since, created_at,"
                " updated_at) VALUES ('4915123456789', 'germany', 'o2', ?, ?, ?)",
                (OLD_STAMP,) * 3)
    return old


def test_a_database_from_the_first_release_is_migrated_not_rebuilt(tmp_path):
    """A file written by rentbox 0.1's first schema (m001 only) keeps its rows."""
    path = tmp_path / "old.db"
    old = older_database(path, "m002_sms_outbox_and_rent_rules")
    old.execute("INSERT INTO operations (number_id, state, initial_sum_kopecks, created_at)"
                " VALUES (1, 'open', 40000, ?)", (OLD_STAMP,))
    old.execute("UPDATE numbers SET operation_id = 1")
    old.close()

    db = open_database(path)
    assert [m.name for m in migrations.applied(db)] == [m.name for m in migrations._migrations]
    assert db.row("SELECT number, operator, operation_id, failures, banned_until, removed_at"
                  " FROM numbers") == {"number": "4915123456789", "operator": "o2",
                                       "operation_id": 1, "failures": 0, "banned_until": None,
                                       "removed_at": None}
    assert db.row("SELECT id, state, sms_accepted_at, failed_at FROM operations") == {
        "id": 1, "state": "open", "sms_accepted_at": None, "failed_at": None}
    # The rebuilt free-number indexes know the new predicate.
    indexes = {r["name"]: r["sql"] for r in db.rows(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'numbers_free%'")}
    assert all("banned_until IS NULL" in sql for sql in indexes.values())
    assert len(indexes) == 6  # by idle order (m001), by number order (m006)


def test_m010_expires_what_an_older_rentbox_left_waiting_for_ended_rentals(tmp_path):
    """Before m010 an SMS of a closed (or failed) rental stayed pending and was pushed when
    pushing resumed, by phone number, perhaps to the number's next renter. The upgrade
    expires those, keeps every other SMS as it was, the indexes, and the smsId sequence
    (an id is never reused, even one whose row is gone)."""
    path = tmp_path / "old.db"
    old = older_database(path, "m010_expired_sms")
    stamp = OLD_STAMP
    for state, failed_at in (("closed", None), ("open", stamp), ("open", None)):
        old.execute("INSERT INTO operations (number_id, state, initial_sum_kopecks, created_at,"
                    " failed_at) VALUES (1, ?, 40000, ?, ?)", (state, stamp, failed_at))
    old.execute("UPDATE numbers SET operation_id = 3")
    for operation_id in (1, 2, 3, 3, None):
        old.execute("INSERT INTO sms (source, number, number_id, operation_id, sender, text,"
                    " received_at, created_at, push_state, next_attempt_at) VALUES ('api',"
                    " '4915123456789', 1, ?, 'x', 'code', ?, ?, ?, ?)",
                    (operation_id, stamp, stamp, "pending" if operation_id else "unrouted",
                     stamp if operation_id else None))
    old.execute("DELETE FROM sms WHERE id = 5")  # the sequence stays at 5
    old.conn.commit()
    old.close()

    db = open_database(path)
    assert [(r["id"], r["push_state"]) for r in db.rows(
        "SELECT id, push_state FROM sms ORDER BY id")] == [
        (1, "expired"), (2, "expired"), (3, "pending"), (4, "pending")]
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    indexes = {r["name"] for r in db.rows("SELECT name FROM sqlite_master WHERE type ="
                                          " 'index' AND tbl_name = 'sms' AND sql IS NOT NULL")}
    assert indexes == {"sms_outbox", "sms_by_operation", "sms_by_number", "sms_failed",
                       "sms_unrouted_unpruned", "sms_expired", "sms_outbox_by_route"}
    db.execute("INSERT INTO sms (source, sender, text, received_at, created_at, push_state)"
               " VALUES ('api', 'x', 'y', ?, ?, 'unrouted')", (stamp, stamp))
    assert db.row("SELECT max(id) AS id FROM sms")["id"] == 6
    db.close()


def test_a_failed_commit_leaves_no_transaction_open(db):
    # A deferred foreign key makes COMMIT itself fail.
    db.execute("PRAGMA foreign_keys = ON")
    with pytest.raises(sqlite3.IntegrityError):
        with db.transaction():
            db.execute("PRAGMA defer_foreign_keys = ON")
            db.execute("INSERT INTO operations (number_id, state, initial_sum_kopecks,"
                       " created_at) VALUES (999, 'open', 1, 'x')")
    assert not db.conn.in_transaction
    with db.transaction():  # and the next write works
        db.execute("INSERT INTO meta VALUES ('k', '{}', 'x')")


def test_opening_an_up_to_date_database_takes_no_write_lock(db_path, db):
    with db.transaction():  # another writer holds the lock
        again = open_database(db_path)  # would wait and fail if it needed the lock
        again.close()


def test_an_urgent_writer_goes_ahead_and_the_others_in_the_order_they_came():
    """The pusher stores Onlinesim's acknowledgements with urgent=True: until they are
    committed, a crash would push those SMS again, so they must not queue behind the web
    requests waiting for the write lock."""
    import threading

    from conftest import wait_until
    from rentbox.db import WriteLock

    lock, order = WriteLock(), []

    def writer(name, urgent=False):
        lock.acquire(urgent)
        order.append(name)
        lock.release()

    lock.acquire()
    threads = []
    for i in range(3):  # each waiting before the next comes: a known order
        threads.append(threading.Thread(target=writer, args=(f"request {i}",)))
        threads[-1].start()
        assert wait_until(lambda: lock.waiting() == i + 1)
    threads.append(threading.Thread(target=writer, args=("acknowledgements", True)))
    threads[-1].start()
    assert wait_until(lambda: lock.waiting() == 4)
    lock.release()
    for thread in threads:
        thread.join(5)
    # The urgent one first, then first come, first served: under steady load the writer
    # thread, which takes the lock again at once, never keeps another writer waiting.
    assert order == ["acknowledgements", "request 0", "request 1", "request 2"]
    with lock:  # free again, and usable as a context manager
        assert lock.waiting() == 0


# ---- The WAL's size: automatic checkpoints, and truncating ones on a full disk ----------

def wal_bytes(db: Database) -> int:
    wal = db.path.with_name(db.path.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


def note(db: Database, value: str) -> None:
    with db.transaction():
        db.execute("INSERT INTO meta (key, value, updated_at) VALUES ('t', ?, 'x')"
                   " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (value,))


def test_every_connection_bounds_its_wal_and_more_tightly_on_a_small_disk(db_path, db,
                                                                          monkeypatch):
    from rentbox.db import (JOURNAL_SIZE_LIMIT_BYTES, SMALL_DISK_BYTES,
                            SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES, SMALL_DISK_WAL_PAGES,
                            WAL_AUTOCHECKPOINT_PAGES)

    def bounds(connection):
        return (connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0],
                connection.execute("PRAGMA journal_size_limit").fetchone()[0])

    for connection in (db, Database(db_path)):
        assert bounds(connection) == (WAL_AUTOCHECKPOINT_PAGES, JOURNAL_SIZE_LIMIT_BYTES)
        assert connection.owns_checkpoints
    monkeypatch.setattr(Database, "free_bytes", lambda self: SMALL_DISK_BYTES - 1)
    assert bounds(Database(db_path)) == (SMALL_DISK_WAL_PAGES,
                                         SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES)


def test_truncate_wal_empties_the_wal_file_and_keeps_every_change(db):
    note(db, "kept")
    assert wal_bytes(db) > 0
    assert db.truncate_wal()
    assert wal_bytes(db) == 0
    assert db.row("SELECT value FROM meta WHERE key = 't'") == {"value": "kept"}
    note(db, "again")  # and writing goes on
    assert db.row("SELECT value FROM meta WHERE key = 't'") == {"value": "again"}


def test_no_checkpoint_of_any_kind_while_litestream_owns_them(db_path, db):
    replicated = Connections(db_path, autocheckpoint=False)
    try:
        connection = replicated.get()
        assert not connection.owns_checkpoints
        assert connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        note(connection, "replicated")
        before = wal_bytes(connection)
        assert before > 0
        assert not connection.truncate_wal()
        connection.health.failed("the disk is full")
        connection.probe_write("2026-11-01T12:00:00.000000Z")  # no truncation first
        assert wal_bytes(connection) >= before
    finally:
        replicated.close_all()


def test_truncate_wal_gives_up_behind_a_reader_and_never_runs_inside_a_transaction(db_path,
                                                                                 db):
    note(db, "one")
    reader = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM meta").fetchall()  # holds a snapshot
        note(db, "two")
        # It waits CHECKPOINT_BUSY_TIMEOUT_S for the reader, then leaves the WAL as it is.
        assert not db.truncate_wal()
        assert wal_bytes(db) > 0
        reader.execute("COMMIT")
    finally:
        reader.close()
    db.conn.execute("BEGIN")
    db.execute("SELECT count(*) FROM meta").fetchall()
    assert not db.truncate_wal()  # this connection's own transaction
    assert db.conn.in_transaction
    db.conn.execute("COMMIT")
    # The busy timeout that writes of other processes get is back.
    from rentbox.db import BUSY_TIMEOUT_S

    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == int(BUSY_TIMEOUT_S * 1000)
    assert db.truncate_wal()
    assert wal_bytes(db) == 0


def test_a_checkpoint_off_the_write_path_never_waits_for_the_write_lock(db_path, db):
    """serve's Checkpointer copies the WAL back without the write lock, so no request and
    no acknowledgement waits for a checkpoint; the connections' own automatic checkpoint
    is then only a backstop."""
    from rentbox.db import BACKSTOP_WAL_PAGES

    served = Connections(db_path, checkpointed_elsewhere=True)
    try:
        connection = served.get()
        assert connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == \
            BACKSTOP_WAL_PAGES
        note(connection, "one")
        note(connection, "two")
        served.write_lock.acquire()  # a writer of this process is mid-transaction
        try:
            assert connection.checkpoint()  # every frame copied back all the same
        finally:
            served.write_lock.release()
        _, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames == copied
    finally:
        served.close_all()
    replicated = Connections(db_path, autocheckpoint=False, checkpointed_elsewhere=True)
    try:
        assert not replicated.get().checkpoint()  # Litestream owns them
    finally:
        replicated.close_all()
