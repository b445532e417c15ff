"""Meta: small facts about the running server that the CLI reports (never a secret)."""

from __future__ import annotations

import datetime as dt
import json

from rentbox.clock import Clock, to_text
from rentbox.config import Rules
from rentbox.db import Database

SERVER = "server"                    # {started_at, version, pid, url, push_url_set, ...}
LAST_ONLINESIM_CALL = "onlinesim.last_call"  # {at, action}
BACKUPS = "backups"                  # scheduled backups: the last one, any failure
REPLICATION = "replication"          # Litestream: its state, how current the replica is


def put(db: Database, now: dt.datetime, key: str, value: dict) -> None:
    """Set one fact (its own small write transaction)."""
    with db.transaction():
        put_within(db, now, key, value)


def put_within(db: Database, now: dt.datetime, key: str, value: dict) -> None:
    """Set one fact inside the caller's write transaction."""
    db.execute(
        "INSERT INTO meta (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
        " updated_at = excluded.updated_at",
        (key, json.dumps(value, sort_keys=True), to_text(now)),
    )


def put_entry(db: Database, clock: Clock, key: str, name: str, entry: dict | None) -> None:
    """Set (or, with None, remove) one entry of a fact that is a dict of entries, dated
    `at` by `clock` once the write lock is held (its own small write transaction)."""
    with db.transaction():
        now = clock.now()
        everything = get(db, key) or {}
        if entry is not None:
            everything[name] = {**entry, "at": to_text(now)}
        else:
            everything.pop(name, None)
        put_within(db, now, key, everything)


def get(db: Database, key: str) -> dict | None:
    """One fact, or None if it was never set."""
    row = db.row("SELECT value FROM meta WHERE key = ?", (key,))
    return json.loads(row["value"]) if row else None


def server_rules(db: Database) -> Rules | None:
    """The rules `rentbox serve` last started with on this database, if it ever did."""
    facts = get(db, SERVER)
    if not facts or "guard_s" not in facts:
        return None
    return Rules(guard_s=facts["guard_s"], ban_after=facts["ban_after"], ban_s=facts["ban_s"],
                 guard_margin_s=facts.get("guard_margin_s", Rules.guard_margin_s),
                 presence=facts.get("presence", Rules.presence),
                 presence_s=facts.get("presence_s", Rules.presence_s),
                 services=tuple(facts.get("services", ())),
                 activation_s=facts.get("activation_s", Rules.activation_s))


class CallLog:
    """Notes when Onlinesim last called, writing at most every `every_s` seconds: GET_SERVICES
    is a read and should not become a write transaction on every poll."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self._written_at: dt.datetime | None = None

    def note(self, db: Database, now: dt.datetime, action: str) -> None:
        """Record that Onlinesim called with `action`, unless noted very recently."""
        if self._written_at and (now - self._written_at).total_seconds() < self.every_s:
            return
        self._written_at = now
        put(db, now, LAST_ONLINESIM_CALL, {"at": to_text(now), "action": action})
