import io

import pytest

from rentbox import events, pool
from rentbox.errors import InvalidInput

from conftest import START, add_numbers


@pytest.mark.parametrize("raw, digits", [
    ("+49 151 2345 6789", "4915123456789"),
    ("4915123456789", "4915123456789"),
    ("+7 912 345-67-89", "79123456789"),
    ("  +380501234567 ", "380501234567"),
])
def test_normalize_number(raw, digits):
    assert pool.normalize_number(raw) == digits


@pytest.mark.parametrize("raw, reason", [
    ("", "empty"),
    ("+49 (151) 23456789", "characters other than digits"),
    ("49151abc", "characters other than digits"),
    ("123", "not a valid international number"),
    ("+49 1", "not a valid international number"),
    ("4+915123456789", "characters other than digits"),
])
def test_normalize_number_rejects(raw, reason):
    with pytest.raises(InvalidInput, match=reason):
        pool.normalize_number(raw)


def parse(text, **kwargs):
    items = list(pool.check_rows(io.StringIO(text), **kwargs))
    return ([i for i in items if isinstance(i, pool.PoolEntry)],
            [i for i in items if isinstance(i, pool.RowError)])


def test_parse_csv_reads_all_columns():
    entries, errors = parse("number,country,operator,port\n"
                            "+49 151 2345 6789,Germany,Telekom,gw1:1\n")
    assert errors == []
    assert entries == [pool.PoolEntry("4915123456789", "germany", "telekom", "gw1:1", 2)]


def test_parse_csv_fills_missing_columns_from_options():
    entries, errors = parse("number,country\n+49 151 2345 6789,\n\n+7 912 345-67-89,russia\n",
                            country="germany", operator="o2")
    assert errors == []
    assert [(e.number, e.country, e.operator, e.line) for e in entries] == [
        ("4915123456789", "germany", "o2", 2), ("79123456789", "russia", "o2", 4)]


@pytest.mark.parametrize("number, country, reason", [
    # Not one of Onlinesim's names: the name probably meant is suggested.
    ("+4915123456789", "gemany",
     "'gemany' is not one of Onlinesim's country names: did you mean germany?"),
    ("+4915123456789", "de", "'de' is not one of Onlinesim's country names: use "
                             "Onlinesim's country name, e.g. germany"),
    ("+447911123456", "uk", "'uk' is not one of Onlinesim's country names: use "
                            "Onlinesim's country name, e.g. england"),
    ("+4915123456789", "atlantis", "'atlantis' is not one of Onlinesim's country names: if "
                                   "Onlinesim uses it, add it with --country-names or "
                                   "RENTBOX_COUNTRY_NAMES as atlantis=XX, XX being the "
                                   "two-letter ISO code of its numbers' region"),
    # A name that is not the number's country, whatever the calling code shares.
    ("+4915123456789", "russia", "+4915123456789 is a number of germany (DE), not of russia"),
    ("+77011234567", "russia", "+77011234567 is a number of kazakhstan (KZ), not of russia"),
    ("+79123456789", "kazakhstan", "+79123456789 is a number of russia (RU), not of kazakhstan"),
    ("+14165550123", "usa", "+14165550123 is a number of canada (CA), not of usa"),
])
def test_a_row_needs_onlinesims_name_of_its_numbers_country(number, country, reason):
    entries, errors = parse(f"number,country\n{number},{country}\n")
    assert (entries, [(e.line, e.reason) for e in errors]) == ([], [(2, reason)])


@pytest.mark.parametrize("number, country", [
    ("+77011234567", "kazakhstan"), ("+79123456789", "russia"), ("+12025550123", "usa"),
    ("+14165550123", "canada"), ("+447911123456", "england"), ("+447797123456", "england"),
    ("+380501234567", "ukraine"),
])
def test_numbers_sharing_a_calling_code_go_by_their_region(number, country):
    entries, errors = parse(f"number,country\n{number},{country}\n")
    assert (errors, [e.country for e in entries]) == ([], [country])


def test_names_can_be_added_for_numbers_of_a_region():
    from rentbox import countries

    names = countries.table("kosovo=XK, england=IM,kosovo=RS")
    assert names["kosovo"] == ("XK", "RS") and names["england"] == ("GB", "GG", "JE", "IM")
    entries, errors = parse("number,country\n+38344123456,kosovo\n+381601234567,kosovo\n",
                            country_names=names)
    assert (errors, [e.number for e in entries]) == ([], ["38344123456", "381601234567"])
    # The added name does not take over what a number of the region is called.
    _, errors = parse("number,country\n+381601234567,russia\n", country_names=names)
    assert errors[0].reason == "+381601234567 is a number of serbia (RS), not of russia"
    for bad in ("kosovo", "kosovo=", "kosovo=Kosovo", "=XK", "Kosovo Republic=XK"):
        with pytest.raises(InvalidInput, match="must be written name=REGION"):
            countries.table(bad)


def test_the_default_country_is_checked_once():
    with pytest.raises(InvalidInput, match="^--country: 'gemany' is not one of Onlinesim's "
                                           "country names: did you mean germany[?]$"):
        parse("number\n+4915123456789\n", country="gemany")


def test_parse_csv_reports_each_bad_row_with_its_line():
    entries, errors = parse("number,country,operator\n"
                            "+49 151 2345 6789,germany,\n"
                            "12,germany,\n"
                            "+7 912 345-67-89,,\n"
                            "+7 916 123-45-67,russia,any\n")
    assert [e.number for e in entries] == ["4915123456789"]
    assert [(e.line, e.reason.split(":")[0]) for e in errors] == [
        (3, "'12' is not a valid international number (country code first, as in +49 151 2345 6789)"),
        (4, "no country"),
        (5, "operator 'any' is reserved"),
    ]
    assert entries[0].operator is None


def test_parse_csv_needs_a_number_column():
    with pytest.raises(InvalidInput, match="header row with a 'number' column"):
        parse("phone,country\n+4915123456789,germany\n")


def test_import_file_with_a_bad_row_imports_nothing(db, tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("number,country\n+49 151 2345 6789,germany\nbad,germany\n"
                    "+4915123456789,germany\n")
    with pytest.raises(pool.ImportRejected) as caught:
        pool.import_file(db, START, path)
    assert "line 3:" in str(caught.value)
    assert "line 4: 4915123456789 is already on line 2" in str(caught.value)
    assert "nothing imported" in str(caught.value)
    assert pool.list_numbers(db) == []


def test_import_file_skip_invalid_imports_the_rest(db, tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("\ufeffnumber,country\n+49 151 2345 6789,germany\nbad,germany\n")
    result = pool.import_file(db, START, path, skip_invalid=True)
    assert (result.added, result.updated, result.unchanged) == (1, 0, 0)
    assert [str(e) for e in result.rejected] == [
        "line 3: 'bad' has characters other than digits, a leading '+', spaces and dashes"]
    assert [r["number"] for r in pool.list_numbers(db)] == ["4915123456789"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_import_file_unreadable(db, tmp_path, content, message):
    path = tmp_path / "pool.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInput, match=message):
        pool.import_file(db, START, path)


def test_reimport_updates_and_keeps_history(db, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "IMPORT_BATCH_ROWS", 2)  # several batches
    path = tmp_path / "pool.csv"
    path.write_text("number,country,operator,port\n"
                    "+4915123456789,germany,telekom,a\n+4917612345678,germany,o2,b\n"
                    "+79123456789,russia,mts,c\n")
    assert pool.import_file(db, START, path).added == 3
    before = db.row("SELECT id FROM numbers WHERE number = '4915123456789'")["id"]
    path.write_text("number,country,operator,port\n"
                    "+4915123456789,germany,vodafone,a\n+4917612345678,germany,o2,b\n")
    result = pool.import_file(db, START, path)
    assert (result.added, result.updated, result.unchanged) == (0, 1, 1)
    after = db.row("SELECT id, operator FROM numbers WHERE number = '4915123456789'")
    assert after == {"id": before, "operator": "vodafone"}
    kinds = [(e["kind"], e["detail"]) for e in events.for_number(db, before)]
    assert kinds == [
        ("number_added", {"country": "germany", "operator": "telekom", "port": "a"}),
        ("number_updated", {"operator": ["telekom", "vodafone"]}),
    ]


def test_count_available_and_list_states(db):
    add_numbers(db, START,
                ("+4915123456789", "germany", "telekom"),
                ("+4915123456790", "germany", "telekom"),
                ("+4917612345678", "germany", None),
                ("+79123456789", "russia", "mts"))
    db.execute("UPDATE numbers SET enabled = 0 WHERE number = '79123456789'")
    assert pool.count_available(db) == {"germany": {"any": 3, "telekom": 2}}
    states = {r["number"]: r["state"] for r in pool.list_numbers(db)}
    assert states == {"4915123456789": "free", "4915123456790": "free",
                      "4917612345678": "free", "79123456789": "disabled"}


# ---- managing numbers ------------------------------------------------------------------

def test_disable_enable(db, clock):
    from rentbox import operations
    from rentbox.config import Rules
    from rentbox.protocol import FinishRequest, RentRequest

    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4917612345678", "germany", "o2"))
    rental = operations.open_rent(db, clock, RentRequest(100, operator="telekom"), Rules())
    assert pool.set_enabled(db, clock.now(), "+4915123456789", False)
    assert pool.set_enabled(db, clock.now(), "+4917612345678", False)
    assert not pool.set_enabled(db, clock.now(), "4917612345678", False)
    # The open rental is left alone; when it ends the number stays out of the pool.
    assert db.row("SELECT operation_id FROM numbers WHERE number = '4915123456789'")[
        "operation_id"] == rental.activation_id
    assert [r["state"] for r in pool.list_numbers(db)] == ["rented, disabled", "disabled"]
    operations.finish_rent(db, clock, FinishRequest(rental.activation_id, 4), Rules())
    assert pool.count_available(db) == {}
    assert {r["state"] for r in pool.list_numbers(db)} == {"disabled"}
    assert pool.set_enabled(db, clock.now(), "+4917612345678", True)
    assert pool.count_available(db) == {"germany": {"any": 1, "o2": 1}}
    kinds = [e["kind"] for e in events.for_number(db, 2)]
    assert kinds == ["number_added", "number_disabled", "number_enabled"]


def test_remove_keeps_history_and_reimport_restores(db, clock, tmp_path):
    from rentbox import operations
    from rentbox.config import Rules
    from rentbox.errors import Conflict, NotFound
    from rentbox.protocol import FinishRequest, RentRequest

    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    rental = operations.open_rent(db, clock, RentRequest(100), Rules())
    with pytest.raises(Conflict, match="is in open rental 1"):
        pool.remove_number(db, clock.now(), "+4915123456789")
    operations.finish_rent(db, clock, FinishRequest(rental.activation_id, 3, 100), Rules())
    pool.remove_number(db, clock.now(), "+4915123456789")
    assert pool.list_numbers(db) == []
    assert [r["state"] for r in pool.list_numbers(db, include_removed=True)] == ["removed"]
    assert pool.count_available(db) == {}
    with pytest.raises(Conflict, match="already removed"):
        pool.remove_number(db, clock.now(), "+4915123456789")
    with pytest.raises(Conflict, match="was removed; import it again"):
        pool.set_enabled(db, clock.now(), "+4915123456789", True)
    with pytest.raises(NotFound, match=r"\+79123456789 is not in the pool"):
        pool.remove_number(db, clock.now(), "+79123456789")
    path = tmp_path / "pool.csv"
    path.write_text("number,country,operator\n+4915123456789,germany,telekom\n")
    assert pool.import_file(db, clock.now(), path).added == 1
    assert [r["state"] for r in pool.list_numbers(db)] == ["free"]
    kinds = [e["kind"] for e in events.for_number(db, 1)]
    assert kinds == ["number_added", "rent_opened", "rent_finished", "number_removed",
                     "number_restored"]


def test_import_reports_progress_and_caps_the_errors_it_keeps(db, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "MAX_REPORTED_ERRORS", 5)
    path = tmp_path / "pool.csv"
    rows = [f"+491512{i:07d},germany,telekom" for i in range(2500)] + ["bad,germany,x"] * 12
    path.write_text("number,country,operator\n" + "\n".join(rows) + "\n")
    seen = []
    with pytest.raises(pool.ImportRejected) as caught:
        pool.import_file(db, START, path, on_progress=lambda *a: seen.append(a))
    assert len(caught.value.errors) == 5
    assert str(caught.value).startswith("12 invalid rows, nothing imported")
    assert pool.list_numbers(db) == []
    assert seen[0] == ("checking", 1000, 2512)
    assert seen[-1] == ("checking", 2512, 2512)
    seen.clear()
    result = pool.import_file(db, START, path, skip_invalid=True,
                              on_progress=lambda *a: seen.append(a))
    assert (result.added, result.rejected_count, len(result.rejected)) == (2500, 12, 5)
    assert seen[-1] == ("importing", 2500, 2500)
    # Nothing was staged in the pool's database, and its connection is ready to write.
    assert db.execute("SELECT count(*) FROM sqlite_temp_master").fetchone()[0] == 0
    assert not db.conn.in_transaction


@pytest.mark.parametrize("content", [
    None,  # no such file
    b"number,country\n+4915123456789,gemany\n",  # a bad row
    b"number,country\n",  # nothing to import
    b"number,country\n12,germany\n",  # nothing valid, even with --skip-invalid
])
def test_a_failed_or_empty_import_never_opens_the_database(tmp_path, content):
    """The database (`rentbox numbers import` creates it) is opened only for rows to merge."""
    path = tmp_path / "pool.csv"
    if content is not None:
        path.write_bytes(content)

    def open_database():
        raise AssertionError("the database was opened")

    try:
        result = pool.import_file(open_database, START, path, skip_invalid=True)
    except InvalidInput:  # the missing file
        assert content is None
    else:
        assert result.added == 0


def test_an_import_opens_the_database_when_it_has_rows_to_merge(db, tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("number,country\n+4915123456789,germany\n")
    opened = []
    result = pool.import_file(lambda: opened.append(db) or db, START, path)
    assert (result.added, opened) == (1, [db])


def test_count_not_offered_by_reason(db, clock):
    from rentbox import operations
    from rentbox.config import Rules
    from rentbox.protocol import RentRequest

    add_numbers(db, START, *[(f"+491512345678{i}", "germany", "telekom") for i in range(6)])
    assert pool.count_not_offered(db) == {"rented": 0, "banned": 0, "disabled": 0,
                                          "offline": 0}
    first = operations.open_rent(db, clock, RentRequest(100), Rules())
    second = operations.open_rent(db, clock, RentRequest(100), Rules())
    pool.set_enabled(db, clock.now(), second.number, False)  # rented, and disabled
    pool.set_enabled(db, clock.now(), "+4915123456785", False)
    db.execute("UPDATE numbers SET banned_until = '2099-01-01T00:00:00.000000Z'"
               " WHERE number = '4915123456784'")
    db.execute("UPDATE numbers SET offline = 1 WHERE number = '4915123456783'")
    assert first.number != second.number
    assert pool.count_not_offered(db) == {"rented": 2, "banned": 1, "disabled": 1,
                                          "offline": 1}
    assert pool.count_available(db) == {"germany": {"any": 1, "telekom": 1}}


def test_iter_numbers_reads_row_by_row(db):
    add_numbers(db, START, ("+79123456789", "russia", "mts"),
                ("+4915123456789", "germany", "telekom"))
    rows = pool.iter_numbers(db)
    assert not isinstance(rows, list)
    assert next(rows)["number"] == "4915123456789"  # by country, then number
    assert [r["number"] for r in rows] == ["79123456789"]
    assert [r["number"] for r in pool.iter_numbers(db, limit=1)] == ["4915123456789"]
    with pytest.raises(InvalidInput, match="sim must be one of online, offline"):
        pool.iter_numbers(db, sim="maybe")


def test_import_does_not_lock_the_database_while_checking(db_path, db, tmp_path):
    """While rows are checked and staged, another connection can still write."""
    from rentbox.db import Database

    path = tmp_path / "pool.csv"
    path.write_text("number,country\n" + "\n".join(
        f"+491512{i:07d},germany" for i in range(3000)) + "\n")
    other = Database(db_path)
    writes = []

    def on_progress(phase, done, total):
        if phase == "checking":
            with other.transaction():  # would wait (and time out) if the file were locked
                other.execute("INSERT INTO meta VALUES (?, '{}', 'x')", (f"k{len(writes)}",))
            writes.append(done)

    pool.import_file(db, START, path, on_progress=on_progress)
    assert writes == [1000, 2000, 3000, 3000]
    other.close()


def test_a_rental_that_failed_its_guard_window_does_not_block_removal(db, clock):
    from rentbox import housekeeping, operations
    from rentbox.config import Rules
    from rentbox.protocol import FinishRequest, RentRequest

    rules = Rules(guard_s=60, guard_margin_s=0)
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    rental = operations.open_rent(db, clock, RentRequest(100), rules)
    clock.advance(61)
    housekeeping.run_once(db, clock.now(), rules)
    pool.remove_number(db, clock.now(), "+4915123456789")
    # Onlinesim's late FINISH is still booked.
    assert operations.finish_rent(db, clock, FinishRequest(rental.activation_id, 4), rules)
    assert [r["state"] for r in pool.list_numbers(db, include_removed=True)] == ["removed"]


def test_an_import_stopped_while_merging_reports_the_rows_committed(db, tmp_path):
    import datetime as dt

    path = tmp_path / "pool.csv"
    path.write_text("number,country\n" + "".join(
        f"+49151{i:08d},germany\n" for i in range(pool.IMPORT_BATCH_ROWS * 3)))
    batches = []

    def stop_after_two() -> None:
        batches.append(1)
        if len(batches) == 2:
            raise KeyboardInterrupt

    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(pool.ImportInterrupted) as stopped:
        pool.import_file(db, now, path, between_batches=stop_after_two)
    assert (stopped.value.merged, stopped.value.total) == (2 * pool.IMPORT_BATCH_ROWS,
                                                           3 * pool.IMPORT_BATCH_ROWS)
    assert db.execute("SELECT count(*) FROM numbers").fetchone()[0] == 2 * pool.IMPORT_BATCH_ROWS
    again = pool.import_file(db, now, path)
    assert (again.added, again.unchanged) == (pool.IMPORT_BATCH_ROWS, 2 * pool.IMPORT_BATCH_ROWS)
