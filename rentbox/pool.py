"""The number pool: validating numbers, importing them from CSV, listing and counting them."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
from pathlib import Path
from typing import Callable, Iterable, TextIO

import phonenumbers

from rentbox import events
from rentbox.clock import to_text
from rentbox.db import Database
from rentbox.errors import InvalidInput

# The one definition of "can be rented now" (a column alias-free SQL predicate on
# `numbers`). GET_NUMBER's claim and GET_SERVICES's counts both use it, so the pool
# Onlinesim is told about is exactly the pool it can get: over-reporting is punished
# with a 30-minute block (protocol.md 3.1). The partial indexes in db.py match it.
FREE = ("numbers.operation_id IS NULL AND numbers.enabled = 1"
        " AND numbers.banned_until IS NULL")

# Rows per write transaction during an import: small enough that a running server's
# writers never wait long for the lock, large enough to amortise the fsync per commit.
IMPORT_BATCH_ROWS = 500

_NUMBER_CHARS = re.compile(r"^\+?[0-9][0-9 \-]*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9 ._()'&+-]*$")


def normalize_number(raw: str) -> str:
    """Validate an international number and return its digits without '+'.

    Accepts '+', spaces and dashes (`+49 151-2345 6789`); the country code is required,
    with or without the '+'. Raises InvalidInput with the reason.
    """
    text = raw.strip()
    if not text:
        raise InvalidInput("the number is empty")
    if not _NUMBER_CHARS.match(text):
        raise InvalidInput(
            f"{text!r} has characters other than digits, a leading '+', spaces and dashes"
        )
    digits = re.sub(r"\D", "", text)
    invalid = InvalidInput(
        f"{text!r} is not a valid international number "
        f"(country code first, as in +49 151 2345 6789)"
    )
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException as error:
        if error.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE:
            raise InvalidInput(f"{text!r} does not start with a known country code") from None
        raise invalid from None
    if not phonenumbers.is_valid_number(parsed):
        raise invalid
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)[1:]


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
    line: int
    value: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclasses.dataclass
class ImportResult:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = dataclasses.field(default_factory=list)


class ImportRejected(InvalidInput):
    """The file has bad rows and --skip-invalid was not given: nothing was imported."""

    def __init__(self, errors: list[RowError]):
        self.errors = errors
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} invalid row(s), nothing imported "
            f"(fix them, or pass --skip-invalid to import the valid rows):\n{shown}{more}"
        )


def parse_csv(
    stream: TextIO, *, country: str | None = None, operator: str | None = None
) -> tuple[list[PoolEntry], list[RowError]]:
    """Read a pool CSV (header row; columns number, country, operator, port).

    `country` and `operator` fill the column where the file lacks it or a cell is empty.
    Returns the valid rows and the errors, each with its line number in the file.
    """
    default_country = normalize_name(country, "country")
    default_operator = normalize_name(operator, "operator")
    if default_operator == "any":
        raise InvalidInput("operator 'any' is reserved: leave the operator empty instead")
    reader = csv.DictReader(stream)
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    if "number" not in header:
        raise InvalidInput(
            "the file needs a header row with a 'number' column "
            f"(columns understood: {', '.join(COLUMNS)})"
        )
    reader.fieldnames = header
    entries: list[PoolEntry] = []
    errors: list[RowError] = []
    first_line: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        raw = (record.get("number") or "").strip()
        if not any((v or "").strip() for k, v in record.items() if isinstance(v, str)):
            continue  # blank line
        try:
            number = normalize_number(raw)
            row_country = normalize_name(record.get("country"), "country") or default_country
            if row_country is None:
                raise InvalidInput("no country: add a 'country' column or pass --country")
            row_operator = normalize_name(record.get("operator"), "operator") or default_operator
            if row_operator == "any":
                raise InvalidInput("operator 'any' is reserved: leave the cell empty instead")
            if number in first_line:
                raise InvalidInput(f"{number} is already on line {first_line[number]}")
        except InvalidInput as error:
            errors.append(RowError(line, raw, str(error)))
            continue
        first_line[number] = line
        port = (record.get("port") or "").strip() or None
        entries.append(PoolEntry(number, row_country, row_operator, port, line))
    return entries, errors


def import_entries(
    db: Database,
    now: dt.datetime,
    entries: Iterable[PoolEntry],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> ImportResult:
    """Add new numbers and update known ones, in batches of IMPORT_BATCH_ROWS.

    A known number keeps its id, so its rentals and events stay attached to it; only
    country, operator and port are updated, each change recorded as an event.
    """
    result = ImportResult()
    batch: list[PoolEntry] = []
    for entry in entries:
        batch.append(entry)
        if len(batch) >= IMPORT_BATCH_ROWS:
            _import_batch(db, now, batch, result)
            if on_batch:
                on_batch(len(batch))
            batch = []
    if batch:
        _import_batch(db, now, batch, result)
        if on_batch:
            on_batch(len(batch))
    return result


def _import_batch(db: Database, now: dt.datetime, batch: list[PoolEntry], result: ImportResult):
    stamp = to_text(now)
    with db.transaction():
        placeholders = ", ".join("?" for _ in batch)
        known = {
            row["number"]: row
            for row in db.rows(
                f"SELECT id, number, country, operator, port FROM numbers "
                f"WHERE number IN ({placeholders})",
                [e.number for e in batch],
            )
        }
        for entry in batch:
            old = known.get(entry.number)
            if old is None:
                cursor = db.execute(
                    "INSERT INTO numbers (number, country, operator, port, idle_since,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (entry.number, entry.country, entry.operator, entry.port, stamp, stamp, stamp),
                )
                events.record(db, now, "number_added", number_id=cursor.lastrowid,
                              country=entry.country, operator=entry.operator, port=entry.port)
                result.added += 1
                continue
            changes = {
                field: [old[field], getattr(entry, field)]
                for field in ("country", "operator", "port")
                if old[field] != getattr(entry, field)
            }
            if not changes:
                result.unchanged += 1
                continue
            db.execute(
                "UPDATE numbers SET country = ?, operator = ?, port = ?, updated_at = ?"
                " WHERE id = ?",
                (entry.country, entry.operator, entry.port, stamp, old["id"]),
            )
            events.record(db, now, "number_updated", number_id=old["id"], **changes)
            result.updated += 1


def import_file(
    db: Database,
    now: dt.datetime,
    path: Path,
    *,
    country: str | None = None,
    operator: str | None = None,
    skip_invalid: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> ImportResult:
    """Import a pool CSV: all of it, or (with bad rows) nothing unless `skip_invalid`."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path} is a folder, not a CSV file") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise InvalidInput(f"cannot read {path}: {error.strerror}") from None
    try:
        entries, errors = parse_csv(io.StringIO(text, newline=""), country=country,
                                    operator=operator)
    except csv.Error as error:
        raise InvalidInput(f"{path} is not a readable CSV file: {error}") from None
    if errors and not skip_invalid:
        raise ImportRejected(errors)
    result = import_entries(db, now, entries, on_batch=on_batch)
    result.rejected = errors
    return result


# ---------------------------------------------------------------------------------------
# Reading the pool
# ---------------------------------------------------------------------------------------

STATE_SQL = """CASE
    WHEN numbers.operation_id IS NOT NULL THEN 'rented'
    WHEN numbers.enabled = 0 THEN 'disabled'
    WHEN numbers.banned_until IS NOT NULL THEN 'banned'
    ELSE 'free' END"""


def list_numbers(db: Database) -> list[dict]:
    """Every number with its state (free, rented, banned, disabled), by country and number."""
    return db.rows(
        f"SELECT number, country, operator, port, {STATE_SQL} AS state"
        " FROM numbers ORDER BY country, number"
    )


def count_available(db: Database) -> dict[str, dict[str, int]]:
    """Numbers that can be rented now: {country: {operator: count}}, with 'any' per country.

    Numbers without an operator count only under 'any'.
    """
    counts: dict[str, dict[str, int]] = {}
    for row in db.rows(
        f"SELECT country, operator, count(*) AS n FROM numbers WHERE {FREE}"
        " GROUP BY country, operator ORDER BY country, operator"
    ):
        per_operator = counts.setdefault(row["country"], {"any": 0})
        per_operator["any"] += row["n"]
        if row["operator"] is not None:
            per_operator[row["operator"]] = row["n"]
    return counts
