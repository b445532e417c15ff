"""Meta: small facts about the running server that the CLI reports (never a secret)."""

from __future__ import annotations

import datetime as dt
import json
import threading

from rentbox.clock import Clock, to_text
from rentbox.config import ONLINESIM, Buyer, Rules
from rentbox.db import Database

SERVER = "server"                    # {started_at, version, pid, url, push_url_set, ...}
LAST_ONLINESIM_CALL = "onlinesim.last_call"  # {at, action, actions: {action: at}}
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
                 activation_s=facts.get("activation_s", Rules.activation_s),
                 buyers=tuple(Buyer(b["name"], b["protocol"],
                                    services=tuple(b["services"]) if b.get("services")
                                    is not None else None,
                                    countries=tuple(b.get("countries", ())),
                                    share=b.get("share", 0.0))
                              for b in facts.get("buyers", ())),
                 aliases=tuple(tuple(pair) for pair in facts.get("aliases", ())))


def buyer_facts(rules: Rules) -> list[dict]:
    """What the server facts say of each buyer beside Onlinesim (never its key)."""
    return [{"name": b.name, "protocol": b.protocol, "path": b.path,
             "push_url_set": bool(b.push_url), "services": b.services,
             "countries": list(b.countries), "share": b.share} for b in rules.buyers]


def last_call_key(buyer: str) -> str:
    """The entry that holds a buyer's last calls: {at, action, actions: {action: at}}."""
    return LAST_ONLINESIM_CALL if buyer == ONLINESIM else f"{buyer}.last_call"


def last_calls(db: Database, names: list[str]) -> dict[str, dict | None]:
    """Each named buyer's last calls (None: it never called)."""
    return {name: get(db, last_call_key(name)) for name in names}


class CallLog:
    """Notes each buyer's calls in its entry (last_call_key): the last call made (`at`,
    `action`) and the last call of each action (`actions`: {action: at}).

    An action is written at most every `every_s` seconds (GET_SERVICES is a read and
    should not become a write transaction on every poll, nor a burst of GET_NUMBER one
    write each), but a call of an action not written that long is written at once, and
    every write carries the latest call of each action seen so far. So GET_NUMBER or
    FINISH after a poll is named as soon as it is made; only a repeat of an action within
    `every_s` of its last write is not (the entry is then at most `every_s` behind)."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        # Waitress threads call `note` concurrently: the dicts change under the lock.
        self._lock = threading.Lock()
        # (buyer, action) -> its last call (stored time text), and when last written.
        self._latest: dict[tuple[str, str], str] = {}
        self._written_at: dict[tuple[str, str], dt.datetime] = {}

    def note(self, db: Database, now: dt.datetime, action: str,
             buyer: str = ONLINESIM) -> None:
        """Record that `buyer` called with `action` (one of the protocol's actions)."""
        with self._lock:
            key = (buyer, action)
            self._latest[key] = max(to_text(now), self._latest.get(key, ""))
            written = self._written_at.get(key)
            if written is not None and (now - written).total_seconds() < self.every_s:
                return
            self._written_at[key] = now
            latest = {a: at for (b, a), at in self._latest.items() if b == buyer}
        with db.transaction():
            noted = get(db, last_call_key(buyer)) or {}
            # Merged with what is stored, the later time of each action winning: another
            # thread may have written first, and a restarted server remembers nothing.
            actions = dict(noted.get("actions") or {})
            if noted.get("action") and noted.get("at"):
                actions.setdefault(noted["action"], noted["at"])
            for name, at in latest.items():
                actions[name] = max(at, actions.get(name, ""))
            last = max(actions, key=lambda name: (actions[name], name == action))
            put_within(db, now, last_call_key(buyer),
                       {"at": actions[last], "action": last, "actions": actions})
