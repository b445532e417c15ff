"""Bans: counting a number's consecutive failed rentals, banning it, and lifting the ban.

Mirrors Onlinesim (protocol.md 5): `rules.ban_after` consecutive failures ban a number
until `now + rules.ban_s`; a rental that received an SMS in its guard window resets the
count; when a ban ends the number returns to the pool with its count reset. Every ban
and lift is an event row with its reason. Call these inside a write transaction.
"""

from __future__ import annotations

import datetime as dt
import logging

from rentbox import events
from rentbox.clock import to_text
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import Conflict, NotFound

log = logging.getLogger("rentbox.rules")


def record_failure(db: Database, now: dt.datetime, rules: Rules, *, number_id: int,
                   operation_id: int, reason: str) -> None:
    """Count one failed rental against the number; ban it when the count is reached."""
    failures, number = db.execute(
        "UPDATE numbers SET failures = failures + 1 WHERE id = ? RETURNING failures, number",
        (number_id,),
    ).fetchone()
    if failures >= rules.ban_after:
        until = now + dt.timedelta(seconds=rules.ban_s)
        db.execute("UPDATE numbers SET banned_until = ? WHERE id = ? AND banned_until IS NULL",
                   (to_text(until), number_id))
        events.record(db, now, "number_banned", number_id=number_id,
                      operation_id=operation_id, failures=failures, until=to_text(until),
                      reason=f"{failures} consecutive failed rentals, the last: {reason}")
        log.info("+%s banned until %s after %d consecutive failed rentals", number,
                 to_text(until), failures)


def record_success(db: Database, now: dt.datetime, *, number_id: int, operation_id: int) -> None:
    """A rental met its guard window: the number's failure count starts again at zero."""
    reset = db.execute(
        "UPDATE numbers SET failures = 0 WHERE id = ? AND failures > 0 RETURNING id",
        (number_id,),
    ).fetchone()
    if reset:
        events.record(db, now, "failures_reset", number_id=number_id,
                      operation_id=operation_id, reason="an SMS arrived in the guard window")


# Bans that have ended by the parameter `now` (served by the numbers_banned index).
BAN_DUE = "banned_until IS NOT NULL AND banned_until <= ?"


def lift_due_bans(db: Database, now: dt.datetime) -> int:
    """Lift every ban that has ended by `now`. Returns how many were lifted."""
    stamp = to_text(now)
    lifted = db.execute(
        "UPDATE numbers SET banned_until = NULL, failures = 0, idle_since = ?"
        f" WHERE {BAN_DUE} RETURNING id, number",
        (stamp, stamp),
    ).fetchall()
    for number_id, number in lifted:
        events.record(db, now, "ban_lifted", number_id=number_id, reason="the ban period ended")
        log.info("+%s: ban ended, offered again", number)
    return len(lifted)


def lift_ban(db: Database, now: dt.datetime, number: str) -> None:
    """End a number's ban and reset its failure count, by hand (`rentbox bans lift`).
    A number with failures but no ban just has its count reset."""
    with db.transaction():
        row = db.row("SELECT id, banned_until, failures FROM numbers WHERE number = ?",
                     (number,))
        if row is None:
            raise NotFound(f"+{number} is not in the pool")
        if row["banned_until"] is None and not row["failures"]:
            raise Conflict(f"+{number} is not banned and has no failed rentals")
        db.execute("UPDATE numbers SET banned_until = NULL, failures = 0, idle_since = ?"
                   " WHERE id = ?", (to_text(now), row["id"]))
        if row["banned_until"] is not None:
            events.record(db, now, "ban_lifted", number_id=row["id"], reason="lifted by hand",
                          was_until=row["banned_until"])
        else:
            events.record(db, now, "failures_reset", number_id=row["id"],
                          reason="reset by hand", failures=row["failures"])


def list_bans(db: Database) -> list[dict]:
    """Banned numbers, and numbers with failures on their way to a ban."""
    return db.rows(
        "SELECT number, country, operator, failures, banned_until FROM numbers"
        " WHERE banned_until IS NOT NULL OR failures > 0"
        " ORDER BY banned_until IS NULL, banned_until, number"
    )
