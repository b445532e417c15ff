"""Scheduled backups (written, checked, pruned, reported) and `rentbox restore`."""

import datetime as dt
import json
import sqlite3

import pytest
from typer.testing import CliRunner

from conftest import START, add_numbers, rent_number, wait_until
from rentbox import backups, meta, operations, sms
from rentbox.cli import app
from rentbox.clock import to_text
from rentbox.config import Rules
from rentbox.settings import BackupPlan
from rentbox.db import backup, open_database
from rentbox.errors import Conflict, InvalidInput, NotFound
from rentbox.protocol import RentRequest

RULES = Rules()
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def books(path) -> dict:
    """Ids and states of the rentals and SMS in a database file (read-only)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {"operations": conn.execute("SELECT id FROM operations ORDER BY id").fetchall(),
                "sms": conn.execute("SELECT id FROM sms ORDER BY id").fetchall(),
                "check": conn.execute("PRAGMA integrity_check").fetchone()[0]}
    finally:
        conn.close()


# ---- scheduled backups: names, pruning, when they are due --------------------------------

def test_backup_names_sort_by_time_and_pruning_touches_only_backups(tmp_path):
    times = [START + dt.timedelta(hours=h) for h in (0, 1, 2, 10)]
    for moment in times:
        (tmp_path / backups.backup_name(moment)).write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "rentbox-manual.db").write_bytes(b"mine")
    (tmp_path / "rentbox-manual.db.partial").write_bytes(b"mine")
    # A scheduled backup killed mid-copy left its partial copy and a side file.
    died = backups.backup_name(START + dt.timedelta(hours=5))
    for leftover in (f"{died}.partial", f"{died}.partial-journal"):
        (tmp_path / leftover).write_bytes(b"half")
    assert backups.backup_name(START) == "rentbox-2026-11-01T12-00-00Z.db"
    deleted = backups.prune(tmp_path, keep=2)
    assert [p.name for p in deleted] == [backups.backup_name(t) for t in times[:2]] + [
        f"{died}.partial", f"{died}.partial-journal"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "rentbox-2026-11-01T14-00-00Z.db", "rentbox-2026-11-01T22-00-00Z.db",
        "rentbox-manual.db", "rentbox-manual.db.partial"]


def test_write_backup_checks_prunes_and_notes(db, clock, tmp_path):
    add_numbers(db, clock.now(), ("+4915123456789", "germany", "telekom"))
    plan = BackupPlan(folder=tmp_path, every_s=3600, keep=2)
    notes = []
    for _ in range(3):
        notes.append(backups.write_backup(db, plan, clock.now()))
        clock.advance(3600)
    assert [n["pruned"] for n in notes] == [0, 0, 1]
    assert notes[-1]["kept"] == 2 and notes[-1]["verified"] == "quick_check ok"
    assert meta.get(db, meta.BACKUPS) == notes[-1]
    kept = backups.scheduled_backups(tmp_path)
    assert [p.name for p in kept] == ["rentbox-2026-11-01T13-00-00Z.db",
                                      "rentbox-2026-11-01T14-00-00Z.db"]
    assert notes[-1]["last_bytes"] == kept[-1].stat().st_size


def test_the_next_backup_is_a_period_after_the_last_one_in_the_same_folder(tmp_path):
    plan = BackupPlan(folder=tmp_path, every_s=3600, keep=2)
    assert backups.next_backup_at(None, plan, START) == START
    note = {"folder": str(tmp_path), "last_at": "2026-11-01T11:30:00.000000Z"}
    assert backups.next_backup_at(note, plan, START) == START + dt.timedelta(minutes=30)
    assert backups.next_backup_at(note, plan, START + dt.timedelta(hours=5)) == \
        START + dt.timedelta(hours=5)
    elsewhere = {**note, "folder": str(tmp_path / "other")}
    assert backups.next_backup_at(elsewhere, plan, START) == START


def test_a_paced_backup_copies_one_snapshot_while_writes_go_on(db, db_path, clock, tmp_path,
                                                               monkeypatch):
    """Copied one page per step, with a write by another connection in every pause: the
    copy is not restarted by the writes, and holds the books as they were when it began."""
    import rentbox.db

    add_numbers(db, clock.now(), *[(f"+4915123{i:06d}", "germany", "telekom")
                                   for i in range(300)])
    monkeypatch.setattr(rentbox.db, "BACKUP_STEP_BYTES", 1)  # one page per step
    writer = open_database(db_path)
    pauses = []

    def wait(seconds):
        pauses.append(seconds)
        with writer.transaction():
            writer.execute("UPDATE numbers SET port = ? WHERE id = ?", (str(len(pauses)), 1))
        add_numbers(writer, clock.now(), (f"+4916012{len(pauses):06d}", "germany", "o2"))

    try:
        # A second a page: no step of one page ever takes that long, however loaded the
        # machine, so every step pauses (`wait` only records it, and writes).
        backup(db, tmp_path / "paced.db", bytes_per_s=4096, wait=wait)
    finally:
        writer.close()
    copy = sqlite3.connect(tmp_path / "paced.db")
    # A pause between every two steps of one page: the copy was never restarted.
    assert len(pauses) == copy.execute("PRAGMA page_count").fetchone()[0] - 1 >= 10
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*), max(port) FROM numbers").fetchone() == (300, None)
    copy.close()
    assert db.execute("SELECT count(*) FROM numbers").fetchone()[0] == 300 + len(pauses)


def test_a_failed_backup_is_noted_and_the_last_good_one_kept(db, connections, clock, tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir()
    plan = BackupPlan(folder=folder, every_s=60, keep=3)
    scheduler = backups.BackupScheduler(connections, clock, plan)
    good = scheduler.run_once(clock.now())
    # The name of the next backup is taken by something else: never overwritten.
    clock.advance(60)
    (folder / backups.backup_name(clock.now())).write_text("someone else's")
    assert scheduler.run_once(clock.now()) is None
    note = meta.get(db, meta.BACKUPS)
    assert note["last_at"] == good["last_at"] and note["failed_at"] == to_text(clock.now())
    assert "already exists" in note["last_error"]
    server = {"backup_every_s": 60, "running": True, "started_at": good["last_at"]}
    facts, warnings = backups.status(note, server, clock.now())
    assert facts["last_age_s"] == 60
    assert warnings == [f"the last scheduled backup failed at 2026-11-01 12:01 UTC: "
                        f"{note['last_error']}"]


def test_status_warns_when_the_last_backup_is_older_than_twice_the_period():
    note = {"last_at": "2026-11-01T12:00:00.000000Z", "folder": "/b", "every_s": 600}
    server = {"backup_every_s": 600, "running": True, "started_at": "2026-11-01T11:00:00.000000Z"}
    assert backups.status(note, server, START + dt.timedelta(seconds=1200))[1] == []
    assert backups.status(note, server, START + dt.timedelta(seconds=1201))[1] == [
        "the last scheduled backup is from 2026-11-01 12:00 UTC, over twice "
        "RENTBOX_BACKUP_EVERY_S ago"]
    assert backups.status(None, server, START + dt.timedelta(hours=1))[1] == [
        "no scheduled backup has been written, over twice RENTBOX_BACKUP_EVERY_S ago"]
    stopped = {**server, "running": False}
    assert backups.status(note, stopped, START + dt.timedelta(days=1))[1] == []
    assert backups.status(note, {"backup_every_s": None}, START) == (None, [])


def test_a_missing_backup_folder_stops_serve_at_start(settings, db, tmp_path):
    import dataclasses

    from rentbox.server import Server

    with pytest.raises(Conflict, match="the backup folder .* does not exist"):
        Server(dataclasses.replace(settings, backups=BackupPlan(folder=tmp_path / "nowhere")))


def test_serve_writes_checks_and_prunes_backups_and_status_shows_them(start_server, db,
                                                                        db_path, tmp_path):
    """A real server with a one-second period: its backup thread writes, checks and
    prunes, and `rentbox status` reports the last backup without a warning about it."""
    folder = tmp_path / "backups"
    folder.mkdir()
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    server = start_server(backups=BackupPlan(folder=folder, every_s=1, keep=2))
    rent_number(server)

    def pruned() -> bool:
        note = meta.get(db, meta.BACKUPS)
        return bool(note and note["pruned"] >= 1)

    assert wait_until(pruned, timeout_s=30), meta.get(db, meta.BACKUPS)
    kept = backups.scheduled_backups(folder)
    assert len(kept) == 2
    for path in kept:
        assert books(path) == {"operations": [(1,)], "sms": [], "check": "ok"}
    assert not list(folder.glob("*.partial"))
    status = run("status", "--db", db_path)
    line = next(x for x in status.stdout.splitlines() if x.startswith("Backups:"))
    assert line.startswith(f"Backups:    every 1 s into {folder}: last ")
    assert line.endswith(", quick_check ok), 2 kept")
    facts = json.loads(run("status", "--json", "--db", db_path).stdout)
    assert facts["backups"]["every_s"] == 1 and facts["backups"]["last_error"] is None
    assert not [w for w in facts["warnings"] if "backup" in w]


# ---- restore --------------------------------------------------------------------------

@pytest.fixture
def lost_books(db, db_path, clock, tmp_path):
    """A database backed up after two rentals and one SMS, which then went on to a third
    and fourth rental and a second SMS before it was lost. Returns the backup's path."""
    add_numbers(db, clock.now(), *[(f"+49151234567{i:02d}", "germany", "telekom")
                                   for i in range(10)])

    def rent_and_sms():
        rental = operations.open_rent(db, clock, RentRequest(40000), RULES)
        sms.accept_sms(db, clock, sms.IncomingSms(source="api", sender="x", text="code",
                                                  to=rental.number), RULES)

    rent_and_sms()
    operations.open_rent(db, clock, RentRequest(40000), RULES)
    copy = tmp_path / "kept.db"
    backup(db, copy)
    clock.advance(600)
    rent_and_sms()
    operations.open_rent(db, clock, RentRequest(40000), RULES)
    db.close()
    return copy


def test_restore_keeps_the_old_database_and_continues_ids_past_the_lost_ones(
        lost_books, db_path, clock):
    assert books(db_path)["operations"] == [(1,), (2,), (3,), (4,)]
    now = clock.advance(3600)  # the restore, an hour after the last rental
    result = backups.restore(str(lost_books), db_path, now)
    # The restored point is the backup's last change; its age, the time since then.
    assert result["restored_point_at"] == "2026-11-01T12:00:00.000000Z"
    assert result["age_s"] == 4200
    # 4 is the highest id anywhere (the old file can still be read); the jump covers
    # 10,000 ids a second over the age plus an hour, rounded up to a whole million.
    assert result["next_activation_id"] == 79_000_001 == result["next_sms_id"]
    assert (result["last_activation_id"], result["last_sms_id"]) == (2, 1)
    assert result["open_rentals"] == 2
    aside = result["kept_aside"]
    assert aside == f"{db_path}.before-restore-2026-11-01T13-10-00Z"
    assert books(aside)["operations"] == [(1,), (2,), (3,), (4,)]
    assert books(db_path) == {"operations": [(1,), (2,)], "sms": [(1,)], "check": "ok"}
    restored = open_database(db_path)
    try:
        rental = operations.open_rent(restored, clock, RentRequest(40000), RULES)
        assert rental.activation_id == 79_000_001
        event = restored.row("SELECT * FROM events WHERE kind = 'database_restored'")
        assert json.loads(event["detail"])["next_activation_id"] == 79_000_001
    finally:
        restored.close()


def test_restore_refuses_while_a_server_runs(start_server, lost_books, db_path, clock):
    start_server()
    with pytest.raises(Conflict, match="a rentbox serve is running on"):
        backups.restore(str(lost_books), db_path, clock.now())
    result = run("restore", lost_books, "--db", db_path)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"Error: a rentbox serve is running on {db_path}: stop it first "
                             "(restore replaces the database it holds)\n")


def test_restore_refuses_what_is_not_a_rentbox_database(lost_books, db_path, clock, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InvalidInput, match="cannot be read as a SQLite database"):
        backups.restore(str(junk), db_path, clock.now())
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(InvalidInput, match="is not a rentbox database"):
        backups.restore(str(other), db_path, clock.now())
    with pytest.raises(NotFound):
        backups.restore(str(tmp_path / "missing.db"), db_path, clock.now())
    # Nothing changed, and nothing was left behind.
    assert books(db_path)["operations"] == [(1,), (2,), (3,), (4,)]
    assert not [p.name for p in tmp_path.iterdir() if "restor" in p.name]


def test_restore_command_says_what_may_be_missing(lost_books, db_path):
    result = run("restore", lost_books, "--db", db_path)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Restored {db_path} from {lost_books}: the books as of "
                               "2026-11-01 12:00 UTC, ")
    assert lines[1].startswith(f"The database it replaced is kept as {db_path}.before-restore-")
    assert lines[2].startswith("New activationIds continue from ")
    assert lines[3] == "What changed after 2026-11-01 12:00 UTC is not in these books. Check:"
    assert lines[4].startswith("- rentals opened after it (activationIds above 2) are unknown")
    assert len(lines) == 9
    again = json.loads(run("restore", lost_books, "--json", "--db", db_path).stdout)
    assert again["last_activation_id"] == 2 and again["kept_aside"]


# ---- rentbox backup by hand ----------------------------------------------------------------

def test_a_backup_by_hand_into_a_folder_is_named_by_its_time(db, tmp_path):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    target, size = backups.backup_by_hand(db, tmp_path, START)
    assert target == tmp_path / "rentbox-2026-11-01T12-00-00Z-by-hand.db"
    assert size == target.stat().st_size and books(target)["check"] == "ok"
    # A second one in the same second is refused, never written over the first.
    with pytest.raises(Conflict, match="already exists; choose a new name"):
        backups.backup_by_hand(db, tmp_path, START)
    # A folder written with a trailing slash must exist: nothing is created.
    with pytest.raises(Conflict, match="the folder .*new does not exist"):
        backups.backup_by_hand(db, f"{tmp_path / 'new'}/", START)
    assert not (tmp_path / "new").exists()
    # A file name is taken as it is.
    assert backups.backup_by_hand(db, tmp_path / "copy.db", START)[0] == tmp_path / "copy.db"
    # Beside scheduled backups it sorts by time, and their pruning leaves it alone.
    later = START + dt.timedelta(hours=1)
    for moment in (START, later):
        backup(db, tmp_path / backups.backup_name(moment))
    assert sorted(p.name for p in tmp_path.glob("rentbox-*")) == [
        "rentbox-2026-11-01T12-00-00Z-by-hand.db", "rentbox-2026-11-01T12-00-00Z.db",
        "rentbox-2026-11-01T13-00-00Z.db"]
    assert backups.prune(tmp_path, keep=1) == [tmp_path / backups.backup_name(START)]
    assert target.exists()


def test_the_restore_checklist_counts_open_rentals_in_words():
    facts = {"last_activation_id": 9, "last_sms_id": 4}
    assert "the 1 rental open in these books" in backups.what_to_check(
        {**facts, "open_rentals": 1})[1]
    assert "the 2 rentals open in these books" in backups.what_to_check(
        {**facts, "open_rentals": 2})[1]
