"""Housekeeping: what must happen as time passes, as one pass and the thread that runs it."""

from __future__ import annotations

import datetime as dt
import logging

from rentbox import alerts, operations, retention
from rentbox.clock import Clock, to_text
from rentbox.config import Rules
from rentbox.db import Connections, Database
from rentbox.settings import Alerting
from rentbox.workers import Periodic

log = logging.getLogger("rentbox.housekeeping")


def run_once(db: Database, now: dt.datetime, rules: Rules, sms_keep_days: float = 0,
             alerting: Alerting | None = None) -> int:
    """One pass: expire guard windows, lift ended bans, turn offline the SIMs whose
    presence window ended, prune one small batch of old SMS texts (retention.py; none
    when `sms_keep_days` is 0), and start or clear alerts (alerts.py, with `alerting`).
    Returns how many changes it made.

    Touches only what is due, through partial indexes, so its cost does not grow with
    history. Claims and counts apply the same rules themselves before answering, so
    the pass keeps the books current between calls rather than being needed for them.

    While writes are failing (a full disk), the pass first truncates the WAL and tries one
    tiny write (Database.probe_write), so that the server notices as soon as writing works
    again; raises Unavailable until it does. While writes work but the disk is nearly full
    (Database.write_problem), it truncates the WAL, which gives its space back. Neither
    checkpoints while Litestream owns the checkpoints.
    """
    if db.health.failing:
        db.probe_write(to_text(now))
        log.info("the database can be written again")
    elif db.write_problem() is not None:
        db.truncate_wal()
    changed = operations.catch_up(db, now, rules) + retention.prune_due(db, now, sms_keep_days)
    if alerting is not None:  # last: the alerts see the books as this pass left them
        changed += alerts.evaluate(db, now, alerting)
    return changed


class Checkpointer(Periodic):
    """The thread that copies the WAL back into the database every `interval_s` seconds
    (Database.checkpoint), off the write path: SQLite's automatic checkpoint runs inside
    the commit that crosses its mark, under the write lock, and every writer waiting
    (Onlinesim's acknowledgements too) would wait for it (benchmarks/crash_loop.py)."""

    name = "rentbox-checkpoints"
    what = "checkpoint"
    log = logging.getLogger("rentbox.housekeeping")

    def __init__(self, connections: Connections, interval_s: float):
        super().__init__(interval_s)
        self._connections = connections

    def run_pass(self) -> None:
        self._connections.get().checkpoint()


class Housekeeper(Periodic):
    """The thread that calls `run_once` every `interval_s` seconds."""

    name = "rentbox-housekeeping"
    what = "housekeeping pass"
    log = logging.getLogger("rentbox.housekeeping")

    def __init__(self, connections: Connections, clock: Clock, rules: Rules, interval_s: float,
                 sms_keep_days: float = 0, alerting: Alerting | None = None):
        super().__init__(interval_s)
        self._connections = connections
        self._clock = clock
        self._rules = rules
        self._sms_keep_days = sms_keep_days
        self._alerting = alerting

    def run_pass(self) -> None:
        changed = run_once(self._connections.get(), self._clock.now(), self._rules,
                           self._sms_keep_days, self._alerting)
        if changed:
            log.info("housekeeping: %d change(s)", changed)
