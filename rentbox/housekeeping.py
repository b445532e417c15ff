"""Housekeeping: what must happen as time passes, as one pass and the thread that runs it."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from rentbox import alerts, operations, retention
from rentbox.clock import Clock, to_text
from rentbox.config import Alerting, Rules
from rentbox.db import Connections, Database
from rentbox.errors import Unavailable

log = logging.getLogger("rentbox.housekeeping")

# While the database cannot be written, the skipped passes are logged this often.
UNAVAILABLE_LOG_EVERY_S = 300.0


def run_once(db: Database, now: dt.datetime, rules: Rules, sms_keep_days: float = 0,
             alerting: Alerting | None = None) -> int:
    """One pass: expire guard windows, lift ended bans, turn offline the SIMs whose
    presence window ended, prune one small batch of old SMS texts (retention.py; none
    when `sms_keep_days` is 0), and start or clear alerts (alerts.py, with `alerting`).
    Returns how many changes it made.

    Touches only what is due, through partial indexes, so its cost does not grow with
    history. Claims and counts apply the same rules themselves before answering, so
    the pass keeps the books current between calls rather than being needed for them.

    While writes are failing (a full disk), the pass first tries one tiny write, so that
    the server notices as soon as writing works again; raises Unavailable until it does.
    """
    if db.health.failing:
        db.probe_write(to_text(now))
        log.info("the database can be written again")
    changed = operations.catch_up(db, now, rules) + retention.prune_due(db, now, sms_keep_days)
    if alerting is not None:  # last: the alerts see the books as this pass left them
        changed += alerts.evaluate(db, now, alerting)
    return changed


class Housekeeper:
    """A named background thread that calls `run_once` every `interval_s` seconds."""

    def __init__(self, connections: Connections, clock: Clock, rules: Rules, interval_s: float,
                 sms_keep_days: float = 0, alerting: Alerting | None = None):
        self._connections = connections
        self._clock = clock
        self._rules = rules
        self._sms_keep_days = sms_keep_days
        self._alerting = alerting
        self._interval_s = interval_s
        self._unavailable_logged_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rentbox-housekeeping",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        # Wait on an Event, not sleep(): stop() ends the wait at once.
        while not self._stop.wait(self._interval_s):
            try:
                changed = run_once(self._connections.get(), self._clock.now(), self._rules,
                                   self._sms_keep_days, self._alerting)
                if changed:
                    log.info("housekeeping: %d change(s)", changed)
                self._unavailable_logged_s = None
            except Unavailable as error:
                # Expected while the disk is full: no traceback, and a line when it starts
                # and every few minutes (/health and `rentbox status` show it throughout).
                now_s = time.monotonic()
                if self._unavailable_logged_s is None or (
                        now_s - self._unavailable_logged_s >= UNAVAILABLE_LOG_EVERY_S):
                    self._unavailable_logged_s = now_s
                    log.warning("housekeeping skipped: %s; trying every %g s", error,
                                self._interval_s)
            except Exception:
                # One failing pass must not end housekeeping for the life of the server.
                log.exception("housekeeping pass failed; the next one runs in %g s",
                              self._interval_s)
