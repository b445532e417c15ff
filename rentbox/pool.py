"""The number pool: validating numbers, importing them from CSV, listing and counting them."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import itertools
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Literal, Mapping, TextIO

from rentbox import countries, events
from rentbox.clock import to_text
from rentbox.db import Database
from rentbox.errors import Conflict, InvalidInput, NotFound, RentboxError

if TYPE_CHECKING:
    import csv
    from concurrent.futures import Executor

# csv, tempfile and shutil are imported by the import's functions: the commands that only
# read the pool (`rentbox status`) do without them (issue 25).

# The one definition of "can be rented now" (a column alias-free SQL predicate on
# `numbers`). GET_NUMBER's claim and GET_SERVICES's counts both use it, so the pool
# Onlinesim is told about is exactly the pool it can get: over-reporting is punished
# with a 30-minute block (protocol.md 3.1). The partial indexes in db.py match it.
# `offline` is SIM presence (presence.py): 1 only for a SIM a gateway no longer reports.
FREE = ("numbers.operation_id IS NULL AND numbers.enabled = 1"
        " AND numbers.banned_until IS NULL AND numbers.offline = 0")

# Rows per write transaction during an import: small enough that a running server's
# writers never wait long for the lock (a batch of new numbers holds it ~25 ms), large
# enough to amortise the commit's fsync and the pause between batches (cli.py).
IMPORT_BATCH_ROWS = 2000

_NUMBER_CHARS = re.compile(r"^\+?[0-9][0-9 \-]*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9 ._()'&+-]*$")


def normalize_number(raw: str) -> str:
    """Validate an international number and return its digits without '+'.

    Accepts '+', spaces and dashes (`+49 151-2345 6789`); the country code is required,
    with or without the '+'. Raises InvalidInput with the reason.
    """
    return _parse_number(raw)[0]


@functools.lru_cache(maxsize=4096)
def _parse_number(raw: str) -> tuple[str, str]:
    """A valid international number's digits and its region, as libphonenumber names it
    (DE, RU, KZ, US, CA, ...; 001 for an international network). Raises InvalidInput.

    Remembered for the last few thousand numbers: every SMS names its number, and
    libphonenumber takes about 0.1 ms to check one (a failure is not remembered)."""
    text = raw.strip()
    if not text:
        raise InvalidInput("the number is empty")
    if not _NUMBER_CHARS.match(text):
        raise InvalidInput(
            f"{text!r} has characters other than digits, a leading '+', spaces and dashes"
        )
    digits = _NOT_DIGITS.sub("", text)
    invalid = InvalidInput(
        f"{text!r} is not a valid international number "
        f"(country code first, as in +49 151 2345 6789)"
    )
    found = _parse_plain(digits)
    if found is None:
        found = _parse_any(digits, text)
    if not found:
        raise invalid
    return found


_NOT_DIGITS = re.compile(r"\D")


@functools.cache
def _phonenumbers():
    """The phonenumbers module, imported on first use: its metadata costs ~40 ms of every
    command's start, and `status` or `report` never need it. Its compiled patterns are
    kept (enable_pattern_cache, where the version has it) rather than looked up in the
    re module's cache on each use: a fifth of a number's validation."""
    import phonenumbers

    getattr(phonenumbers, "enable_pattern_cache", lambda: None)()
    return phonenumbers


def _parse_any(digits: str, text: str) -> tuple[str, str] | None:
    """'+' followed by `digits` as phonenumbers.parse reads it: its E.164 digits and
    region if it is valid, None if not. Raises InvalidInput for an unknown country code."""
    phonenumbers = _phonenumbers()
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException as error:
        if error.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            raise InvalidInput(f"{text!r} does not start with a known country code") from None
        return None
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or not phonenumbers.is_valid_number_for_region(parsed, region):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:], region


def _parse_plain(digits: str) -> tuple[str, str] | None | Literal[False]:
    """_parse_any's answer for the usual number, at half its cost (False where it says
    None); None for any number whose parsing would do more than split off the country
    code (then ask _parse_any).

    For '+' and ASCII digits, phonenumbers.parse() only takes the country code off the
    front (the first 1, 2 or 3 digits that are one), unless the rest is shorter than 2
    or longer than 17 digits, starts with 0 (kept as leading zeros), or starts with
    what the country's metadata takes for a national prefix: those go to _parse_any.
    What remains is built into the same PhoneNumber and validated by phonenumbers
    itself, so every row is still checked by libphonenumber's rules
    (tests/test_import_speed_rules.py compares both ways on numbers of every country
    code).
    """
    if not 2 < len(digits) <= 20 or digits[0] == "0":
        return None
    phonenumbers = _phonenumbers()
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    national = digits[size:]
    if not 2 <= len(national) <= 17 or national[0] == "0":
        return None
    prefix = _national_prefix(code)
    if prefix is None or prefix.match(national):
        return None
    number = phonenumbers.PhoneNumber(country_code=code, national_number=int(national))
    region = phonenumbers.region_code_for_number(number)
    if region is None or not phonenumbers.is_valid_number_for_region(number, region):
        return False
    # Its E.164 form, '+', the code and the national number, is `digits` itself.
    return digits, region


def _national_prefix(code: int) -> "re.Pattern[str] | None":
    """The pattern phonenumbers.parse() tries as a national prefix after country code
    `code` (one that never matches where the country has none), or None where
    phonenumbers has no metadata for the code. Compiled once per country code."""
    if code not in _NATIONAL_PREFIXES:
        phonenumbers = _phonenumbers()
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(
            code, phonenumbers.region_code_for_country_code(code))
        if metadata is None:
            _NATIONAL_PREFIXES[code] = None
        else:
            _NATIONAL_PREFIXES[code] = re.compile(
                metadata.national_prefix_for_parsing or "(?!)")
    return _NATIONAL_PREFIXES[code]


_NATIONAL_PREFIXES: dict[int, "re.Pattern[str] | None"] = {}


def normalize_name(raw: str | None, what: str) -> str | None:
    """Lower-case a country or operator name as Onlinesim writes them; '' becomes None."""
    text = (raw or "").strip().lower()
    if not text:
        return None
    if not _NAME.match(text):
        raise InvalidInput(f"{what} {raw!r} is not a plain name (letters, digits, spaces)")
    return text


# ---------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------

COLUMNS = ("number", "country", "operator", "port")


@dataclasses.dataclass(frozen=True)
class PoolEntry:
    """One valid row of an import file."""

    number: str
    country: str
    operator: str | None
    port: str | None
    line: int


@dataclasses.dataclass(frozen=True)
class RowError:
    """A rejected row of an import file: its line, its number cell and why."""

    line: int
    value: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclasses.dataclass
class ImportResult:
    """What an import did, row by row."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = dataclasses.field(default_factory=list)  # the first ones
    rejected_count: int = 0


class ImportRejected(InvalidInput):
    """The file has bad rows and --skip-invalid was not given: nothing was imported."""

    def __init__(self, errors: list[RowError], count: int):
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  … and {count - 20} more" if count > 20 else ""
        super().__init__(
            f"{count} invalid {'row' if count == 1 else 'rows'}, nothing imported "
            f"(fix them, or pass --skip-invalid to import the valid rows):\n{shown}{more}"
        )


# Errors kept for the report; a file of garbage still gets an exact count.
MAX_REPORTED_ERRORS = 1000


def check_rows(
    stream: TextIO, *, country: str | None = None, operator: str | None = None,
    country_names: Mapping[str, tuple[str, ...]] | None = None,
) -> Iterator[PoolEntry | RowError]:
    """Read a pool CSV (header row; columns number, country, operator, port), one row at a
    time: a PoolEntry for each valid row, a RowError (with its line number) for each bad one.

    `country` and `operator` fill the column where the file lacks it or a cell is empty.
    A row's country must be one of `country_names` (countries.table(): Onlinesim's names
    and the regions of their numbers), and its number a number of that country's regions.
    Numbers repeated within the file are found by the caller.
    """
    return _check_rows(stream, country=country, operator=operator,
                       country_names=country_names, checker=None)


# Rows whose numbers are validated together: by one call in this process, or one task
# of the checking process (import_file), of which a few are in flight at a time.
_CHECK_CHUNK_ROWS = 1000
_CHUNKS_IN_FLIGHT = 4


def _check_rows(
    stream: TextIO, *, country: str | None, operator: str | None,
    country_names: Mapping[str, tuple[str, ...]] | None, checker: Executor | None,
) -> Iterator[PoolEntry | RowError]:
    """check_rows, with the numbers validated by `checker` (a process of its own, while
    this one reads the file and checks the rest of each row) if one is given."""
    import csv

    names = countries.table() if country_names is None else country_names
    default_country = normalize_name(country, "country")
    if default_country is not None and default_country not in names:
        raise InvalidInput(f"--country: {countries.unknown_name(default_country, names)}")
    default_operator = normalize_name(operator, "operator")
    if default_operator == "any":
        raise InvalidInput("operator 'any' is reserved: leave the operator empty instead")
    first = stream.readline()
    delimiter = _delimiter(first)
    reader = csv.DictReader(itertools.chain([first], stream), delimiter=delimiter)
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    if "number" not in header:
        shown = {",": "commas", ";": "semicolons", "\t": "tabs"}[delimiter]
        raise InvalidInput(
            "the file needs a header row with a 'number' column "
            f"(columns understood: {', '.join(COLUMNS)}, separated by commas or "
            f"semicolons; this header, read as separated by {shown}, is "
            f"{first.strip()[:80]!r})"
        )
    reader.fieldnames = header
    # A file repeats the same few countries and operators: each is checked once.
    name_of = _NameCache()
    for chunk, numbers in _with_numbers(_record_chunks(reader), checker):
        for (line, raw, record), number in zip(chunk, numbers):
            try:
                if isinstance(number, str):
                    raise InvalidInput(number)
                number, region = number
                row_country = name_of(record.get("country"), "country") or default_country
                if row_country is None:
                    raise InvalidInput("no country: add a 'country' column or pass --country")
                if row_country not in names:
                    raise InvalidInput(countries.unknown_name(row_country, names))
                if region not in names[row_country]:
                    raise InvalidInput(countries.wrong_region(number, region, row_country,
                                                              names))
                row_operator = name_of(record.get("operator"), "operator") or default_operator
                if row_operator == "any":
                    raise InvalidInput(
                        "operator 'any' is reserved: leave the cell empty instead")
            except InvalidInput as error:
                yield RowError(line, raw, str(error))
                continue
            port = (record.get("port") or "").strip() or None
            yield PoolEntry(number, row_country, row_operator, port, line)


def _record_chunks(reader: csv.DictReader) -> Iterator[list[tuple[int, str, dict]]]:
    """The file's rows, blank lines left out, _CHECK_CHUNK_ROWS at a time: each as its
    line number, its number cell and its record."""
    chunk = []
    for record in reader:
        if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
            continue  # blank line
        chunk.append((reader.line_num, (record.get("number") or "").strip(), record))
        if len(chunk) == _CHECK_CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _with_numbers(chunks: Iterator[list[tuple[int, str, dict]]], checker: Executor | None
                  ) -> Iterator[tuple[list[tuple[int, str, dict]], list]]:
    """Each chunk with its numbers validated (_check_numbers), in file order. With a
    checker, up to _CHUNKS_IN_FLIGHT chunks are validated there while this process reads
    and checks the ones before them."""
    if checker is None:
        for chunk in chunks:
            yield chunk, _check_numbers([raw for _, raw, _ in chunk])
        return
    pending: collections.deque = collections.deque()
    for chunk in chunks:
        pending.append((chunk, checker.submit(_check_numbers, [raw for _, raw, _ in chunk])))
        if len(pending) > _CHUNKS_IN_FLIGHT:
            done, future = pending.popleft()
            yield done, future.result()
    while pending:
        done, future = pending.popleft()
        yield done, future.result()


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """`items` in lists of `size` (the last one shorter)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _check_numbers(raws: list[str]) -> list[tuple[str, str] | str]:
    """Each number cell's digits and region (_parse_number), or why it is not valid."""
    found: list[tuple[str, str] | str] = []
    for raw in raws:
        try:
            found.append(_parse_number(raw))
        except InvalidInput as error:
            found.append(str(error))
    return found


class _NameCache:
    """normalize_name, remembered for the first few thousand distinct cells."""

    def __init__(self, size: int = 4096):
        self.known: dict[tuple[str | None, str], str | None | InvalidInput] = {}
        self.size = size

    def __call__(self, raw: str | None, what: str) -> str | None:
        key = (raw, what)
        found = self.known.get(key, self)
        if found is self:
            try:
                found = normalize_name(raw, what)
            except InvalidInput as error:
                found = error
            if len(self.known) < self.size:
                self.known[key] = found
        if isinstance(found, InvalidInput):
            raise InvalidInput(str(found))
        return found


def _delimiter(header: str) -> str:
    """The header row's delimiter: ',' as CSV has it, or ';' as spreadsheets write CSV in
    the many locales where ',' is the decimal mark, or a tab."""
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


class ImportInterrupted(RentboxError):
    """The import was stopped (Ctrl-C) while merging: `merged` of `total` rows are in."""

    def __init__(self, merged: int, total: int):
        self.merged, self.total = merged, total
        super().__init__(
            f"interrupted: {merged} of {total} rows were imported (each batch is committed "
            "whole); run the same import again to complete it, rows already in are "
            "counted as unchanged")


def import_entries(
    db: Database,
    now: dt.datetime,
    entries: Iterable[PoolEntry],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> ImportResult:
    """Add new numbers and update known ones, in batches of IMPORT_BATCH_ROWS.

    `on_batch(rows)` runs after each batch's commit, outside any transaction. A number
    given twice counts once, as first given (import_file reports repeats as bad rows).

    A known number keeps its id, so its rentals and events stay attached to it; only
    country, operator and port are updated, each change recorded as an event. A removed
    number that is imported again is back in the pool.
    """
    staging = _Staging()
    try:
        for entry in entries:
            staging.add(entry)
        staging.finish()
        return _merge(db, now, staging, on_batch)
    finally:
        staging.close()


def _merge(db: Database, now: dt.datetime, staging: "_Staging",
           on_batch: Callable[[int], None] | None) -> ImportResult:
    """Merge the staged rows into the pool, IMPORT_BATCH_ROWS per write transaction.

    The staging file is attached to the pool's connection for the merge, so that a
    batch's new numbers (nearly every row of a first import) go in by one INSERT …
    SELECT, with their events and tally counts, and never pass through Python."""
    result = ImportResult()
    db.execute("ATTACH DATABASE ? AS staged", (str(staging.path),))
    try:
        for after_rowid, last_rowid, size in staging.batches():
            with db.transaction():
                _merge_batch(db, now, after_rowid, last_rowid, result)
            if on_batch:
                on_batch(size)
    finally:
        db.execute("DETACH DATABASE staged")
    return result


# A batch's staged rows: those whose number is in the pool already (updated, restored,
# or unchanged one by one), and the others (added together).
_STAGED_KNOWN = """
    SELECT s.number, s.country AS new_country, s.operator AS new_operator,
        s.port AS new_port, n.id, n.country, n.operator, n.port, n.removed_at
    FROM staged.import_staging AS s JOIN numbers AS n ON n.number = s.number
    WHERE s.rowid > :after AND s.rowid <= :last ORDER BY s.rowid"""
_STAGED_NEW = """
    INSERT INTO numbers (number, country, operator, port, idle_since, created_at, updated_at)
    SELECT s.number, s.country, s.operator, s.port, :stamp, :stamp, :stamp
    FROM staged.import_staging AS s
    WHERE s.rowid > :after AND s.rowid <= :last
        AND NOT EXISTS (SELECT 1 FROM numbers AS n WHERE n.number = s.number)
    ORDER BY s.rowid"""
# The event events.record writes for each number added, its detail the same JSON text
# (keys sorted, ", " and ": " between them).
_ADDED_EVENTS = """
    INSERT INTO events (at, kind, number_id, detail)
    SELECT :stamp, 'number_added', id, '{"country": ' || json_quote(country)
        || ', "operator": ' || json_quote(operator) || ', "port": ' || json_quote(port) || '}'
    FROM numbers WHERE id > :after_id ORDER BY id"""


def _merge_batch(db: Database, now: dt.datetime, after_rowid: int, last_rowid: int,
                 result: ImportResult) -> None:
    """One batch of staged rows (rowids after_rowid < rowid <= last_rowid), inside the
    caller's write transaction."""
    stamp = to_text(now)
    batch = {"after": after_rowid, "last": last_rowid, "stamp": stamp}
    known = db.rows(_STAGED_KNOWN, batch)
    # Imported here: tallies reads pool.FREE at its import.
    from rentbox import tallies

    with tallies.numbers_inserted_in_bulk(db) as after_id:
        result.added += db.execute(_STAGED_NEW, batch).rowcount
        db.execute(_ADDED_EVENTS, {"stamp": stamp, "after_id": after_id})
    for old in known:
        new = {"country": old["new_country"], "operator": old["new_operator"],
               "port": old["new_port"]}
        changes = {field: [old[field], new[field]] for field in ("country", "operator", "port")
                   if old[field] != new[field]}
        if old["removed_at"] is not None:
            db.execute(
                "UPDATE numbers SET country = ?, operator = ?, port = ?, updated_at = ?,"
                " removed_at = NULL, enabled = 1, idle_since = ? WHERE id = ?",
                (new["country"], new["operator"], new["port"], stamp, stamp, old["id"]))
            events.record(db, now, "number_restored", number_id=old["id"], **changes)
            result.added += 1
            continue
        if not changes:
            result.unchanged += 1
            continue
        db.execute(
            "UPDATE numbers SET country = ?, operator = ?, port = ?, updated_at = ?"
            " WHERE id = ?",
            (new["country"], new["operator"], new["port"], stamp, old["id"]),
        )
        events.record(db, now, "number_updated", number_id=old["id"], **changes)
        result.updated += 1


def import_file(
    db: Database | Callable[[], Database],
    now: dt.datetime,
    path: Path,
    *,
    country: str | None = None,
    operator: str | None = None,
    country_names: Mapping[str, tuple[str, ...]] | None = None,
    skip_invalid: bool = False,
    on_progress: Callable[[str, int, int], None] | None = None,
    between_batches: Callable[[], None] | None = None,
) -> ImportResult:
    """Import a pool CSV: all of it, or (with bad rows) nothing unless `skip_invalid`.

    `db` is the database, or a function that opens it: called only once there are valid
    rows to merge, so that a failed import (a missing file, bad rows, an empty file)
    creates no database file. `country_names` as check_rows takes them.

    Two phases, so that a file of any size needs little memory and a running server
    keeps answering: every row is checked and staged in a private temporary database
    (which takes no lock on the pool's; from PARALLEL_CHECK_ROWS rows on, the numbers
    are validated in a second process meanwhile), then merged in batches of IMPORT_BATCH_ROWS,
    each its own short write transaction. `on_progress(phase, done, total)` reports rows;
    `between_batches()` runs between two merge transactions, with the lock free (the CLI
    pauses there, so that a server waiting for the lock gets in: see db.LOCK_POLL_MAX_S).
    """
    import csv

    try:
        with open(path, "rb") as raw:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: raw.read(1 << 20), b""))
        total = max(0, lines - 1)  # rows, without the header
        stream = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a folder, not a CSV file") from None
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror}") from None
    errors: list[RowError] = []
    error_count = 0
    staging = _Staging()
    checker = None
    try:
        with stream:
            try:
                if total >= PARALLEL_CHECK_ROWS:
                    checker = _start_checker()
                done = 0
                checked = _check_rows(stream, country=country, operator=operator,
                                      country_names=country_names, checker=checker)
                # Staged a chunk at a time (one executemany), then reported in file order.
                for chunk in _chunks(checked, _CHECK_CHUNK_ROWS):
                    repeated = staging.add_all([i for i in chunk if isinstance(i, PoolEntry)])
                    for item in chunk:
                        done += 1
                        if isinstance(item, PoolEntry) and item.line in repeated:
                            item = RowError(item.line, item.number, f"{item.number} is "
                                            f"already on line {repeated[item.line]}")
                        if isinstance(item, RowError):
                            error_count += 1
                            if len(errors) < MAX_REPORTED_ERRORS:
                                errors.append(item)
                        if on_progress and done % 1000 == 0:
                            on_progress("checking", done, total)
                if on_progress:
                    on_progress("checking", done, done)
            except UnicodeDecodeError:
                raise InvalidInput(f"{path} is not UTF-8 text") from None
            except csv.Error as error:
                raise InvalidInput(f"{path} is not a readable CSV file: {error}") from None
            finally:
                if checker:
                    checker.shutdown(cancel_futures=True)
        staging.finish()
        if error_count and not skip_invalid:
            raise ImportRejected(errors, error_count)
        result = ImportResult()
        if staging.count:
            database = db if isinstance(db, Database) else db()
            merged = 0

            def merged_batch(size: int) -> None:
                nonlocal merged
                merged += size
                if on_progress:
                    on_progress("importing", merged, staging.count)
                if between_batches:
                    between_batches()

            try:
                result = _merge(database, now, staging, merged_batch)
            except KeyboardInterrupt:
                raise ImportInterrupted(merged, staging.count) from None
    finally:
        staging.close()
    result.rejected = errors
    result.rejected_count = error_count
    return result


# A file of at least this many rows has its numbers validated in a second process while
# this one reads the file, checks the other cells and stages the rows: validation is
# half of the check's work, so on two cores the check takes about half as long. A
# smaller file is not worth starting a process for.
PARALLEL_CHECK_ROWS = 20_000


def _start_checker() -> "Executor":
    """The process that validates numbers (_check_numbers) during an import. It ignores
    Ctrl-C: this process handles it, and stops the checker on its way out."""
    from concurrent.futures import ProcessPoolExecutor

    _phonenumbers()  # loaded (and its patterns kept) before a fork passes it on
    return ProcessPoolExecutor(max_workers=1, initializer=_ignore_interrupts)


def _ignore_interrupts() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Staging:
    """The checked rows of one import, in a private temporary database.

    A file of its own in a private temporary folder, deleted at close(): staging a
    million rows neither takes a lock on the pool's database (nor creates it: see
    import_file) nor needs the memory, and the merge attaches it to the pool's
    connection (_merge).
    """

    def __init__(self):
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="rentbox-import-"))
        self.path = self.folder / "staging.db"
        self.conn = sqlite3.connect(self.path)
        self.count = 0
        # Thrown away at the end anyway: no journal, no fsync.
        self.conn.execute("PRAGMA journal_mode = OFF")
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute(
            "CREATE TABLE import_staging (number TEXT PRIMARY KEY, country TEXT,"
            " operator TEXT, port TEXT, line INTEGER)")
        self.conn.execute("BEGIN")

    def add(self, entry: PoolEntry) -> int | None:
        """Stage a row; for a number already staged, return the line it was first on."""
        added = self.conn.execute(
            "INSERT OR IGNORE INTO import_staging VALUES (?, ?, ?, ?, ?)",
            (entry.number, entry.country, entry.operator, entry.port, entry.line)).rowcount
        if added:
            self.count += 1
            return None
        return self.conn.execute("SELECT line FROM import_staging WHERE number = ?",
                                 (entry.number,)).fetchone()[0]

    def add_all(self, entries: list[PoolEntry]) -> dict[int, int]:
        """Stage rows (add, for many at once); for each row whose number was already
        staged, its line and the line that number was first on."""
        before = self.conn.total_changes
        self.conn.executemany(
            "INSERT OR IGNORE INTO import_staging VALUES (?, ?, ?, ?, ?)",
            [(e.number, e.country, e.operator, e.port, e.line) for e in entries])
        added = self.conn.total_changes - before
        self.count += added
        if added == len(entries):
            return {}
        # Some were staged already, or repeated among these: the row staged for each
        # number is its first (INSERT OR IGNORE keeps it), any other is a repeat.
        first_line: dict[str, int] = {}
        numbers = list({e.number for e in entries})
        for start in range(0, len(numbers), 500):
            part = numbers[start:start + 500]
            first_line.update(self.conn.execute(
                "SELECT number, line FROM import_staging WHERE number IN"
                f" ({', '.join('?' for _ in part)})", part).fetchall())
        return {e.line: first_line[e.number] for e in entries
                if first_line[e.number] != e.line}

    def finish(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def batches(self) -> Iterator[tuple[int, int, int]]:
        """The staged rows in file order, IMPORT_BATCH_ROWS at a time: for each batch,
        the rowid before its first row, its last row's rowid, and its number of rows."""
        after = 0
        while True:
            last, size = self.conn.execute(
                "SELECT max(rowid), count(*) FROM (SELECT rowid FROM import_staging"
                " WHERE rowid > ? ORDER BY rowid LIMIT ?)", (after, IMPORT_BATCH_ROWS)
            ).fetchone()
            if not size:
                return
            yield after, last, size
            after = last

    def close(self) -> None:
        import shutil

        self.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Reading the pool
# ---------------------------------------------------------------------------------------

STATE_SQL = """CASE
    WHEN numbers.removed_at IS NOT NULL THEN 'removed'
    WHEN numbers.operation_id IS NOT NULL AND numbers.offline = 1 THEN 'rented, at risk'
    WHEN numbers.operation_id IS NOT NULL AND numbers.enabled = 0 THEN 'rented, disabled'
    WHEN numbers.operation_id IS NOT NULL THEN 'rented'
    WHEN numbers.enabled = 0 THEN 'disabled'
    WHEN numbers.banned_until IS NOT NULL THEN 'banned'
    WHEN numbers.offline = 1 THEN 'offline'
    ELSE 'free' END"""

# SIM presence as people read it: online, offline, or '-' when no gateway reports it.
SIM_SQL = """CASE WHEN numbers.offline = 1 THEN 'offline'
    WHEN numbers.seen_by IS NOT NULL THEN 'online' ELSE '-' END"""
_SIM_FILTERS = {"online": "numbers.offline = 0 AND numbers.seen_by IS NOT NULL",
                "offline": "numbers.offline = 1"}


def list_numbers(db: Database, *, include_removed: bool = False,
                 sim: str | None = None, limit: int | None = None) -> list[dict]:
    """The pool with each number's state (free, rented, banned, disabled, offline;
    "rented, disabled" for one that leaves the pool when its rental ends, "rented, at
    risk" for a rented one whose SIM is offline; removed ones only when asked) and its SIM
    presence (`sim`: online, offline or '-'; the filter takes online or offline), by
    country and number."""
    return list(iter_numbers(db, include_removed=include_removed, sim=sim, limit=limit))


def iter_numbers(db: Database, *, include_removed: bool = False,
                 sim: str | None = None, limit: int | None = None) -> Iterator[dict]:
    """list_numbers, one row at a time as SQLite reads it: `rentbox numbers list` prints
    the first rows of a pool of any size at once. The read transaction stays open until
    the iterator is exhausted or closed: use it for one command's output, never in the
    server (an open read stops WAL checkpoints)."""
    where = ["1" if include_removed else "numbers.removed_at IS NULL"]
    if sim is not None:
        if sim not in _SIM_FILTERS:
            raise InvalidInput(f"sim must be one of {', '.join(_SIM_FILTERS)}")
        where.append(_SIM_FILTERS[sim])
    return db.query(
        f"SELECT number, country, operator, port, {STATE_SQL} AS state, {SIM_SQL} AS sim,"
        f" seen_at, seen_by, offline_since FROM numbers WHERE {' AND '.join(where)}"
        " ORDER BY country, number LIMIT ?", (-1 if limit is None else limit,)
    )


def find_number(db: Database, number: str) -> dict:
    """One number's row, by any common notation. Raises NotFound."""
    digits = normalize_number(number)
    row = db.row(f"SELECT *, {STATE_SQL} AS state, {SIM_SQL} AS sim FROM numbers"
                 " WHERE number = ?", (digits,))
    if row is None:
        raise NotFound(f"+{digits} is not in the pool")
    return row


def set_enabled(db: Database, now: dt.datetime, number: str, enabled: bool) -> bool:
    """Enable or disable a number. A disabled number is neither issued nor counted; an open
    rental on it is left alone. Returns False if it already was so."""
    with db.transaction():
        row = find_number(db, number)
        if row["removed_at"] is not None:
            raise Conflict(f"+{row['number']} was removed; import it again to bring it back")
        changed = db.execute("UPDATE numbers SET enabled = ?, updated_at = ? WHERE id = ?"
                             " AND enabled = ?", (int(enabled), to_text(now), row["id"],
                                                   int(not enabled))).rowcount
        if changed:
            events.record(db, now, "number_enabled" if enabled else "number_disabled",
                          number_id=row["id"], reason="by hand")
    return bool(changed)


def remove_number(db: Database, now: dt.datetime, number: str) -> None:
    """Take a number out of the pool for good; its history stays readable. Refused while
    a rental holds it. (A rental that failed its guard window no longer holds its number:
    its FINISH, when it comes, is booked as usual.)"""
    with db.transaction():
        row = find_number(db, number)
        if row["removed_at"] is not None:
            raise Conflict(f"+{row['number']} is already removed")
        if row["operation_id"] is not None:
            raise Conflict(f"+{row['number']} is in open rental {row['operation_id']}; "
                           "remove it after Onlinesim has finished that rental "
                           "(`rentbox numbers disable` stops new rentals now)")
        db.execute("UPDATE numbers SET removed_at = ?, enabled = 0, updated_at = ? WHERE id = ?",
                   (to_text(now), to_text(now), row["id"]))
        events.record(db, now, "number_removed", number_id=row["id"], reason="by hand")


# Why a number in the pool is not offered now, as `pool_counts` (tallies.py) keys them.
NOT_OFFERED = ("rented", "banned", "disabled", "offline")


def count_not_offered(db: Database) -> dict[str, int]:
    """Numbers in the pool that are not offered now, by reason (NOT_OFFERED; each number
    under the first that applies: rented, disabled, banned, offline). Read from the
    `pool_counts` tally: the cost does not grow with the pool. A ban that has ended but
    that housekeeping has not lifted yet still counts as banned."""
    tally = {r["key"]: r["n"] for r in db.rows("SELECT key, n FROM pool_counts")}
    counts = {reason: tally.get(reason, 0) for reason in NOT_OFFERED}
    counts["rented"] += tally.get("rented_disabled", 0)
    return counts


def count_available(db: Database) -> dict[str, dict[str, int]]:
    """Numbers that can be rented now: {country: {operator: count}}, with 'any' per country.

    Numbers without an operator count only under 'any'. Read from the `free_counts` tally
    (tallies.py), which triggers keep equal to a count of FREE: the cost is the number of
    countries and operators, not of numbers.
    """
    counts: dict[str, dict[str, int]] = {}
    for row in db.rows("SELECT country, operator, n FROM free_counts WHERE n > 0"
                       " ORDER BY country, operator"):
        per_operator = counts.setdefault(row["country"], {"any": 0})
        per_operator["any"] += row["n"]
        if row["operator"]:
            per_operator[row["operator"]] = row["n"]
    return counts
