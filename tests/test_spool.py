"""The spool of the local SMS daemons' hooks (spool.py): files taken in, removed only after
their commit, stored once however often taken, bad ones set aside; its backlog in status;
and, on a real server, no SMS lost while rentbox is down (issue 21, item 11)."""

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from rentbox import reports, sms, spool
from rentbox.config import Rules
from rentbox.errors import InvalidInput, Unavailable

from conftest import (EXAMPLES, START, FakeClock, add_numbers, rent_number, snapshot,
                      wait_until)

RULES = Rules()
NUMBER = "4917612345678"
GAMMU_HOOK = EXAMPLES / "gammu_run_on_receive.py"
SMSTOOLS_HANDLER = EXAMPLES / "smstools3_eventhandler.py"


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "spool"
    path.mkdir()
    return path


def write(folder, name: str, body) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    (folder / name).write_bytes(data)


def stored(db):
    return db.rows("SELECT source, number, port, sender, text, received_at FROM sms ORDER BY id")


def gammu_environment(folder, **more) -> dict:
    """gammu-smsd's environment for one received one-part SMS, as gammu-smsd-run(7) lists it
    (SMS_MESSAGES, DECODED_PARTS, PHONE_ID from 1.38.2, SMS_<n>_CLASS/NUMBER/TEXT), plus the
    hook's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENTBOX_", "PHONE_ID"))}
    return {**env, "SMS_MESSAGES": "1", "DECODED_PARTS": "0", "PHONE_ID": "modem1",
            "SMS_1_CLASS": "-1", "SMS_1_NUMBER": "+79990001122",
            "SMS_1_TEXT": "Ваш код: 5520", "RENTBOX_SPOOL_DIR": str(folder),
            "RENTBOX_NUMBER_modem1": f"+{NUMBER}", **more}


def run_gammu_hook(env: dict, *inbox_ids: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GAMMU_HOOK), *inbox_ids], env=env,
                          capture_output=True, text=True, timeout=30)


# ---- a pass over the spool ---------------------------------------------------------------


def test_a_file_is_stored_then_removed(db, folder):
    add_numbers(db, START, (NUMBER, "germany", "o2"))
    write(folder, "0001-gammu.json", {"to": f"+{NUMBER}", "from": "Google",
                                      "text": "G-123456", "id": "gammu:modem1:IN1",
                                      "received_at": "2026-11-01T11:59:00Z"})
    taken = spool.Spool(folder).take_in(db, FakeClock(), RULES)
    assert (taken.stored, taken.duplicates, taken.bad) == (1, 0, 0)
    assert stored(db) == [{"source": "api", "number": NUMBER, "port": None, "sender": "Google",
                           "text": "G-123456", "received_at": "2026-11-01T11:59:00.000000Z"}]
    assert os.listdir(folder) == []


def test_a_file_taken_in_twice_is_stored_once(db, folder, monkeypatch):
    """A crash between the commit and the removal: the file is there at the next start."""
    add_numbers(db, START, (NUMBER, "germany", "o2"))
    write(folder, "0001.json", {"to": f"+{NUMBER}", "from": "a", "text": "no id"})
    write(folder, "0002.json", {"to": f"+{NUMBER}", "from": "b", "text": "with id", "id": "x"})
    kept = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    spool.Spool(folder).take_in(db, FakeClock(), RULES)
    for name, data in kept.items():  # as if never removed
        (folder / name).write_bytes(data)
    taken = spool.Spool(folder).take_in(db, FakeClock(), RULES)
    assert (taken.stored, taken.duplicates) == (0, 2)
    assert [r["text"] for r in stored(db)] == ["no id", "with id"]
    assert os.listdir(folder) == []


def test_files_are_taken_oldest_name_first_and_files_being_written_are_left(db, folder):
    add_numbers(db, START, (NUMBER, "germany", "o2"))
    for name, text in (("00000000000000000003-gammu.json", "third"),
                       ("00000000000000000001-gammu.json", "first"),
                       ("00000000000000000002-smstools.json", "second")):
        write(folder, name, {"to": NUMBER, "from": "x", "text": text})
    write(folder, ".00000000000000000000-gammu.json.tmp", b'{"to": "49')  # being written
    write(folder, "notes.txt", b"not an SMS file")
    spool.Spool(folder).take_in(db, FakeClock(), RULES)
    assert [r["text"] for r in stored(db)] == ["first", "second", "third"]
    assert sorted(os.listdir(folder)) == [".00000000000000000000-gammu.json.tmp", "notes.txt"]


@pytest.mark.parametrize("data, reason", [
    (b"", "body is not valid JSON"),
    (b"\xff\xfe", "body is not UTF-8"),
    (b"[1]", "body must be a JSON object"),
    (b'{"to": "+4917612345678", "text": "no sender"}', "from is required"),
    (b'{"from": "x", "text": "nowhere"}', "to is required"),
    (b'{"to": "12", "from": "x", "text": "t"}', "is not a valid international number"),
    (b'{"to": "+4917612345678", "from": "x", "text": "t", "received_at": "yesterday"}',
     "received_at is not an ISO-8601 time"),
    (b'{"to": "+4917612345678", "from": "x", "text": "' + b"x" * 70_000 + b'"}',
     "the file is larger than 65536 bytes"),
])
def test_a_file_that_is_no_sms_is_set_aside_with_a_warning(db, folder, caplog, data, reason):
    add_numbers(db, START, (NUMBER, "germany", "o2"))
    write(folder, "0001.json", data)
    before = snapshot(db)
    with caplog.at_level(logging.WARNING, logger="rentbox"):
        taken = spool.Spool(folder).take_in(db, FakeClock(), RULES)
    assert taken.bad == 1 and snapshot(db) == before
    assert os.listdir(folder) == ["bad"] and os.listdir(folder / "bad") == ["0001.json"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"spool file 0001.json cannot be used, moved to {folder}/bad: ")
    assert reason in warning
    assert "x" * 300 not in warning  # never the body
    # Not retried: the next pass has nothing to do.
    assert not spool.Spool(folder).take_in(db, FakeClock(), RULES).did_anything


def test_a_file_set_aside_twice_under_one_name_keeps_both(db, folder):
    for _ in range(2):
        write(folder, "0001.json", b"junk")
        spool.Spool(folder).take_in(db, FakeClock(), RULES)
    assert sorted(os.listdir(folder / "bad")) == ["0001.json", "0001.json.1"]


def test_while_the_database_cannot_be_written_the_files_stay(db, folder, monkeypatch):
    add_numbers(db, START, (NUMBER, "germany", "o2"))
    write(folder, "0001.json", {"to": NUMBER, "from": "x", "text": "t"})

    def full(*args, **kwargs):
        raise Unavailable("the disk is full")

    monkeypatch.setattr(sms, "accept_sms", full)
    with pytest.raises(Unavailable):
        spool.Spool(folder).take_in(db, FakeClock(), RULES)
    assert os.listdir(folder) == ["0001.json"]
    monkeypatch.undo()
    assert spool.Spool(folder).take_in(db, FakeClock(), RULES).stored == 1


def test_a_stored_file_that_cannot_be_removed_is_warned_about_once(db, folder, monkeypatch,
                                                                   caplog):
    add_numbers(db, START, (NUMBER, "germany", "o2"))
    write(folder, "0001.json", {"to": NUMBER, "from": "x", "text": "t"})
    box = spool.Spool(folder)
    real_unlink = type(folder).unlink

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(folder), "unlink", refused)
    with caplog.at_level(logging.WARNING, logger="rentbox"):
        for _ in range(3):
            box.take_in(db, FakeClock(), RULES)
    assert len([r for r in caplog.records if "cannot be removed" in r.getMessage()]) == 1
    assert len(stored(db)) == 1
    monkeypatch.setattr(type(folder), "unlink", real_unlink)
    box.take_in(db, FakeClock(), RULES)
    assert os.listdir(folder) == []


def test_the_reader_refuses_a_folder_it_cannot_use(tmp_path, connections, clock):
    with pytest.raises(InvalidInput, match="RENTBOX_SPOOL_DIR .* is not a folder: create it"):
        spool.SpoolReader(connections, clock, RULES, tmp_path / "missing", 1.0)


# ---- its backlog in rentbox status ------------------------------------------------------


def test_status_shows_the_backlog_and_warns_when_it_is_old(db, folder):
    from rentbox import meta

    now = dt.datetime.now(dt.timezone.utc)
    meta.put(db, now, meta.SERVER, {"started_at": "2026-11-01T12:00:00.000000Z",
                                    "spool_dir": str(folder)})
    assert reports.status(db, now)["spool"] == {
        "dir": str(folder), "waiting": 0, "oldest_at": None, "oldest_age_s": None, "bad": 0,
        "problem": None}
    for name in ("0001.json", "0002.json"):
        write(folder, name, {"to": NUMBER, "from": "x", "text": "t"})
    old = (now - dt.timedelta(minutes=10)).timestamp()
    os.utime(folder / "0001.json", (old, old))
    (folder / "bad").mkdir()
    write(folder / "bad", "0000.json", b"junk")
    facts = reports.status(db, now)
    assert facts["spool"]["waiting"] == 2 and facts["spool"]["bad"] == 1
    assert 599 <= facts["spool"]["oldest_age_s"] <= 601
    spooled = [w for w in facts["warnings"] if "spool" in w]
    assert spooled[0].startswith(f"2 SMS wait in the spool {folder}, the oldest since ")
    assert spooled[1].startswith(f"1 file(s) in {folder}/bad could not be stored")
    # A fresh file is no warning: serve takes it within a second.
    os.remove(folder / "0001.json")
    assert not [w for w in reports.status(db, now)["warnings"] if "SMS wait in the spool" in w]


def test_status_has_no_spool_when_the_server_runs_without_one(db):
    assert reports.status(db, START)["spool"] is None


def test_the_cli_status_shows_the_spool(db_path, db, folder):
    from typer.testing import CliRunner

    from rentbox import meta
    from rentbox.cli import app

    meta.put(db, START, meta.SERVER, {"started_at": "2026-11-01T12:00:00.000000Z",
                                      "version": "x", "pid": 1, "url": "http://127.0.0.1:8080",
                                      "spool_dir": str(folder)})
    write(folder, "0001.json", {"to": NUMBER, "from": "x", "text": "t"})
    result = CliRunner().invoke(app, ["status", "--db", str(db_path)])
    assert result.exit_code == 0
    assert f"Spool:      1 file(s) waiting in {folder}, the oldest for 0 s, 0 set aside in bad/" \
        in result.stdout


# ---- a real server: nothing lost while rentbox is down ----------------------------------


def test_an_sms_the_hook_spools_while_rentbox_is_down_is_pushed_after_the_start(
        start_server, db, folder, onlinesim):
    """gammu-smsd runs the hook once; rentbox is stopped (an upgrade, a crash). Before, the
    hook's POST failed and the SMS was lost; now it waits in the spool and reaches Onlinesim
    once rentbox is back."""
    add_numbers(db, START, (f"+{NUMBER}", "germany", "o2", "modem1"))
    first = start_server(push_url=onlinesim.url, spool_dir=folder, spool_every_s=0.1)
    rental = rent_number(first)
    first.stop()
    done = run_gammu_hook(gammu_environment(folder), "IN20261126_130000_00_+79990001122_00.txt")
    assert done.returncode == 0, done.stderr
    [name] = os.listdir(folder)  # atomically: no temporary file left, readable by the group
    assert spool.is_waiting(name) and (folder / name).stat().st_mode & 0o777 == 0o640
    second = start_server(push_url=onlinesim.url, spool_dir=folder, spool_every_s=0.1)
    onlinesim.wait_for(1)
    assert [(b["phone"], b["phoneFrom"], b["text"]) for b in onlinesim.bodies()] == [
        (NUMBER, "+79990001122", "Ваш код: 5520")]
    assert db.row("SELECT operation_id FROM sms")["operation_id"] == rental
    assert wait_until(lambda: os.listdir(folder) == [])
    assert second.spool is not None


def test_smstools_files_spooled_while_rentbox_is_down_are_stored_once(start_server, db,
                                                                      folder, tmp_path):
    """The smstools3 samples (smstools3's doc/fileformat.html: received files) through the
    handler with RENTBOX_SPOOL_DIR, smsd running it twice on one file."""
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+79123456789", "russia", "megafon", "GSM2"))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RENTBOX_")},
           "RENTBOX_SPOOL_DIR": str(folder),
           "RENTBOX_NUMBER_262011234567890": "+49 151 23456789"}
    for _ in range(2):
        for sample in sorted((EXAMPLES / "smstools").iterdir()):
            copy = tmp_path / sample.name
            shutil.copy(sample, copy)
            done = subprocess.run([sys.executable, str(SMSTOOLS_HANDLER), "RECEIVED", str(copy)],
                                  env=env, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stderr
    assert len(os.listdir(folder)) == 6
    start_server(spool_dir=folder, spool_every_s=0.1)
    assert wait_until(lambda: os.listdir(folder) == [])
    assert [(r["number"], r["sender"], r["text"]) for r in stored(db)] == [
        ("4915123456789", "4915901234567", "Ihr Code: 4711. Gültig 10 Min. Preis 0€"),
        ("79123456789", "79990001122", "Ваш код: 5520. Никому!"),
        ("79123456789", "VK", "VK: 662 901 — код подтверждения 🔐")]
