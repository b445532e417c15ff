"""What makes a large import fast keeps its rules: every number validated as
phonenumbers validates it, tallies exact, all-or-nothing batches (pool.py, m015)."""

import json
import random
import re
import sqlite3

import phonenumbers
import pytest

from rentbox import pool, tallies
from rentbox.errors import InvalidInput

from conftest import START, add_numbers


def reference(raw: str) -> tuple[str, str] | str:
    """What the import made of a number before its fast path: phonenumbers.parse, the
    region, is_valid_number_for_region, E.164. An error as 'unknown code' or 'invalid'."""
    digits = re.sub(r"\D", "", raw)
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException as error:
        if error.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            return "unknown code"
        return "invalid"
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or not phonenumbers.is_valid_number_for_region(parsed, region):
        return "invalid"
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:], region


def ours(raw: str) -> tuple[str, str] | str:
    try:
        return pool._parse_number(raw)
    except InvalidInput as error:
        return "unknown code" if "known country code" in str(error) else "invalid"


def samples() -> list[str]:
    """Numbers of every country code and region: libphonenumber's own examples of every
    type, the same with a digit changed, added or dropped or a 0 or 8 after the country
    code (national prefixes), and random digits of every length after every code."""
    rng = random.Random(25)
    found = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(12):  # every PhoneNumberType that has examples
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = phonenumbers.format_number(
                example, phonenumbers.PhoneNumberFormat.E164)[1:]
            code = str(example.country_code)
            found += [digits, digits[:-1] + str((int(digits[-1]) + 1) % 10), digits + "5",
                      digits[:-1], code + "0" + digits[len(code):],
                      code + "8" + digits[len(code):]]
    for code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for length in range(19):
            for first in ("", "0", "8", "9"):
                found.append(str(code) + first + "".join(
                    rng.choice("0123456789") for _ in range(length)))
    found += ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 22)))
              for _ in range(2000)]
    return found


def test_every_number_is_judged_as_phonenumbers_judges_it():
    numbers = samples()
    differ = [(n, ours("+" + n), reference(n)) for n in numbers
              if ours("+" + n) != reference(n)]
    assert differ == []
    # The samples cover both answers and both paths.
    assert {isinstance(reference(n), tuple) for n in numbers} == {True, False}
    assert {pool._parse_plain(n) is None for n in numbers} == {True, False}


@pytest.mark.parametrize("raw, region", [
    ("+49 151 2345 6789", "DE"), ("+7 912 345-67-89", "RU"), ("+7 701 234 5678", "KZ"),
    ("+1 201 555 0123", "US"), ("380501234567", "UA"),
])
def test_a_plain_international_number_needs_no_full_parse(monkeypatch, raw, region):
    def no_parse(*args, **kwargs):
        raise AssertionError("phonenumbers.parse called")

    monkeypatch.setattr(phonenumbers, "parse", no_parse)
    assert pool._parse_number(raw) == (re.sub(r"\D", "", raw), region)


def test_a_national_prefix_still_goes_through_the_full_parse():
    # +7 8 912 …: Russia's national prefix 8 after the country code, as parse() reads it.
    assert pool._parse_plain("789123456789") is None
    assert ours("+7 8 912 345 67 89") == reference("+7 8 912 345 67 89")


# ---- tallies, counted once per batch --------------------------------------------------

def test_numbers_inserted_while_deferred_are_left_to_the_bulk_count(db):
    with db.transaction():
        db.execute("INSERT INTO tallies_deferred (only) VALUES (1)")
        db.execute("INSERT INTO numbers (number, country, idle_since, created_at,"
                   " updated_at) VALUES ('4915123456789', 'germany', 'x', 'x', 'x')")
        assert db.rows("SELECT * FROM free_counts") == []
        db.execute("DELETE FROM tallies_deferred")
    assert [d.tally for d in tallies.verify(db)] == ["free_counts", "pool_counts",
                                                     "pool_counts"]


def test_the_bulk_count_equals_the_triggers_count(db):
    with db.transaction():
        with tallies.numbers_inserted_in_bulk(db) as after_id:
            assert after_id == 0
            db.execute(
                "INSERT INTO numbers (number, country, operator, idle_since, created_at,"
                " updated_at, enabled, banned_until, offline, seen_by, removed_at) VALUES"
                " ('4915123456789', 'germany', 'o2', 'x', 'x', 'x', 1, NULL, 0, NULL, NULL),"
                " ('4915123456790', 'germany', NULL, 'x', 'x', 'x', 1, NULL, 0, 'gw', NULL),"
                " ('4915123456791', 'germany', 'o2', 'x', 'x', 'x', 0, NULL, 0, NULL, NULL),"
                " ('4915123456792', 'germany', 'o2', 'x', 'x', 'x', 1, 'x', 0, NULL, NULL),"
                " ('4915123456793', 'germany', 'o2', 'x', 'x', 'x', 1, NULL, 1, 'gw', NULL),"
                " ('4915123456794', 'germany', 'o2', 'x', 'x', 'x', 0, NULL, 0, NULL, 'x')")
        assert db.rows("SELECT * FROM tallies_deferred") == []
    assert tallies.verify(db) == []
    assert pool.count_available(db) == {"germany": {"any": 2, "o2": 1}}


def database_before_m015(path):
    """A file as rentbox left it before m015, with a number in the pool."""
    from rentbox.db import Database, migrations

    old = Database(path)
    with old.transaction():
        migrations.apply(old, stop_before="m015_numbers_counted_in_bulk")
    old.execute("INSERT INTO numbers (number, country, operator, idle_since, created_at,"
                " updated_at) VALUES ('4915123456789', 'germany', 'o2', 'x', 'x', 'x')")
    return old


def test_m015_keeps_the_trigger_counting_outside_an_import(tmp_path):
    from rentbox.db import open_database

    database_before_m015(tmp_path / "old.db").close()
    db = open_database(tmp_path / "old.db")
    add_numbers(db, START, ("+4915123456790", "germany", "o2"))
    with db.transaction():
        db.execute("INSERT INTO numbers (number, country, idle_since, created_at, updated_at)"
                   " VALUES ('79123456789', 'russia', 'x', 'x', 'x')")
    assert tallies.verify(db) == []
    assert pool.count_available(db) == {"germany": {"any": 2, "o2": 2}, "russia": {"any": 1}}


def test_m015_refuses_an_insert_trigger_that_does_more_than_m006s(tmp_path):
    from rentbox.db import migrations

    old = database_before_m015(tmp_path / "old.db")
    old.execute("DROP TRIGGER numbers_counted_insert")
    old.execute("CREATE TRIGGER numbers_counted_insert AFTER INSERT ON numbers BEGIN"
                " INSERT INTO free_counts (country, operator, n) SELECT NEW.country, '', 1"
                " WHERE true ON CONFLICT (country, operator) DO UPDATE SET n = n + 1;"
                " INSERT INTO pool_counts (key, n) VALUES ('free', 1)"
                " ON CONFLICT (key) DO UPDATE SET n = n + 1;"
                " UPDATE meta SET value = '1' WHERE key = 'x'; END")
    with pytest.raises(RuntimeError, match="m015: numbers_counted_insert is not"):
        with old.transaction():
            migrations.apply(old)
    old.close()


def reimport_file(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("number,country,operator,port\n"
                    "+4915123456789,germany,vodafone,1.01\n"  # updated
                    "+4915123456790,germany,telekom,1.02\n"  # unchanged
                    "+4915123456791,germany,telekom,1.03\n"  # removed: restored
                    "+4915123456792,germany,o2,1.04\n"  # disabled: updated, not offered
                    + "".join(f"+49176{i:08d},germany,o2,2.{i}\n" for i in range(7))
                    + "+79123456789,russia,,3.01\n")
    return path


def test_a_reimport_in_batches_keeps_the_tallies_exact(db, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "IMPORT_BATCH_ROWS", 3)
    add_numbers(db, START, ("+4915123456789", "germany", "telekom", "1.01"),
                ("+4915123456790", "germany", "telekom", "1.02"),
                ("+4915123456791", "germany", "telekom", "1.03"),
                ("+4915123456792", "germany", "telekom", "1.04"))
    pool.remove_number(db, START, "+4915123456791")
    pool.set_enabled(db, START, "+4915123456792", False)
    result = pool.import_file(db, START, reimport_file(tmp_path))
    assert (result.added, result.updated, result.unchanged) == (9, 2, 1)
    assert tallies.verify(db) == []
    assert db.rows("SELECT * FROM tallies_deferred") == []
    assert pool.count_available(db) == {"germany": {"any": 10, "o2": 7, "vodafone": 1,
                                                    "telekom": 2},
                                        "russia": {"any": 1}}
    # Numbers are added in file order.
    assert [r["number"] for r in db.rows("SELECT number FROM numbers WHERE id > 4"
                                         " ORDER BY id")] == [
        *(f"49176{i:08d}" for i in range(7)), "79123456789"]


def test_added_events_carry_the_detail_events_record_writes(db, tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text('number,country,operator,port\n'
                    '+4915123456789,germany,o2,"slot ""7"" \\ Zelle ü"\n'
                    '+4915123456790,germany,,\n', encoding="utf-8")
    pool.import_file(db, START, path)
    stored = [r["detail"] for r in db.rows("SELECT detail FROM events ORDER BY id")]
    assert stored == [
        json.dumps({"country": "germany", "operator": "o2", "port": 'slot "7" \\ Zelle ü'},
                   ensure_ascii=False, sort_keys=True),
        json.dumps({"country": "germany", "operator": None, "port": None},
                   ensure_ascii=False, sort_keys=True)]


def test_a_batch_that_fails_leaves_nothing_behind(db, tmp_path, monkeypatch):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    path = tmp_path / "pool.csv"
    path.write_text("number,country\n+4915123456790,germany\n+4915123456791,germany\n")
    monkeypatch.setattr(pool, "_ADDED_EVENTS", "INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(sqlite3.OperationalError):
        pool.import_file(db, START, path)
    assert db.execute("SELECT count(*) FROM numbers").fetchone()[0] == 1
    assert db.rows("SELECT * FROM tallies_deferred") == []
    assert "staged" not in [r["name"] for r in db.rows("PRAGMA database_list")]
    monkeypatch.undo()
    # The insert trigger counts again outside an import.
    add_numbers(db, START, ("+4915123456792", "germany", "telekom"))
    assert tallies.verify(db) == []
    assert pool.count_available(db) == {"germany": {"any": 2, "telekom": 2}}


def test_the_staging_file_is_deleted(db, tmp_path, monkeypatch):
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(staging))
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("number,country\n+4915123456790,germany\n")
    bad.write_text("number,country\n+4915123456790,germany\n123,germany\n")
    assert pool.import_file(db, START, good).added == 1
    with pytest.raises(pool.ImportRejected):
        pool.import_file(db, START, bad)
    assert list(staging.iterdir()) == []


# ---- numbers validated in a second process ---------------------------------------------

MIXED = ("number,country,operator\n"
         "+4915123456789,germany,o2\n"
         "\n"
         "+4915123456789,germany,o2\n"  # repeated
         "+49 1,germany,o2\n"  # not valid
         "+7 701 234 5678,russia,\n"  # Kazakh
         "+999 1234 5678,germany,\n"  # unknown code
         "+79123456789,Russia,Any\n"  # reserved operator
         "+79123456790,atlantis,\n"
         "abc,germany,\n"
         + "".join(f"+49176{i:08d},germany,o2\n" for i in range(2500)))


def import_mixed(tmp_path, name, monkeypatch, *, parallel_from):
    from rentbox.db import open_database

    monkeypatch.setattr(pool, "PARALLEL_CHECK_ROWS", parallel_from)
    path = tmp_path / f"{name}.csv"
    path.write_text(MIXED)
    db = open_database(tmp_path / f"{name}.db")
    try:
        result = pool.import_file(db, START, path, skip_invalid=True)
        return result, db.rows("SELECT number, country, operator, port FROM numbers"
                               " ORDER BY id")
    finally:
        db.close()


def test_numbers_checked_in_a_second_process_give_the_same_import(tmp_path, monkeypatch):
    started = []
    start = pool._start_checker
    monkeypatch.setattr(pool, "_start_checker", lambda: started.append(1) or start())
    here = import_mixed(tmp_path, "here", monkeypatch, parallel_from=10**9)
    assert started == []
    there = import_mixed(tmp_path, "there", monkeypatch, parallel_from=1)
    assert started == [1]
    assert there == here
    assert [(e.line, e.value) for e in here[0].rejected] == [
        (4, "4915123456789"), (5, "+49 1"), (6, "+7 701 234 5678"), (7, "+999 1234 5678"),
        (8, "+79123456789"), (9, "+79123456790"), (10, "abc")]
    assert here[0].added == 2501


def test_ctrl_c_while_checking_stops_the_second_process(db, tmp_path, monkeypatch):
    import multiprocessing

    monkeypatch.setattr(pool, "PARALLEL_CHECK_ROWS", 1)
    path = tmp_path / "pool.csv"
    path.write_text(MIXED)

    def interrupt(phase, done, total):
        if phase == "checking" and done >= 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pool.import_file(db, START, path, on_progress=interrupt)
    assert multiprocessing.active_children() == []
    assert db.execute("SELECT count(*) FROM numbers").fetchone()[0] == 0


def test_repeats_are_found_within_and_across_staged_chunks(db, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "_CHECK_CHUNK_ROWS", 2)
    path = tmp_path / "pool.csv"
    path.write_text("number,country\n+4915123456789,germany\n+4915123456790,germany\n"
                    "+4915123456791,germany\n+49 151 2345 6789,germany\n"
                    "+4915123456791,germany\n+4915123456791,germany\n")
    with pytest.raises(pool.ImportRejected) as rejected:
        pool.import_file(db, START, path)
    assert [str(e) for e in rejected.value.errors] == [
        "line 5: 4915123456789 is already on line 2",
        "line 6: 4915123456791 is already on line 4",
        "line 7: 4915123456791 is already on line 4"]
