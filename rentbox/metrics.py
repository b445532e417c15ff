"""Metrics: what Prometheus scrapes at GET /metrics, one registry per app.

Two kinds of figure:

- observed in this process (Onlinesim's calls and their latency, push outcomes and push
  delay): prometheus-client instruments, updated as things happen. They start at 0 when
  the process starts, as Prometheus expects of counters.
- kept in the database (the pool by state, open rentals, income, the books per service
  and per buyer and currency, outbox, each buyer's last call, backups, replication): read
  at scrape time by `DatabaseCollector` from
  the cheap tallies (tallies.py) and `meta`, never by scanning a big table. Figures that
  can go down (a restore, `housekeep --verify` repairing a tally) are gauges; the one
  database counter, SMS received, is SQLite's AUTOINCREMENT sequence, which never does.

Nothing here may break a caller: `observe_call` and `observe_push` swallow and log their
own errors, and a scrape that cannot read the database answers `rentbox_database_up 0`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from rentbox import meta
from rentbox.clock import Clock, from_text
from rentbox.config import ONLINESIM
from rentbox.db import Connections

log = logging.getLogger("rentbox.metrics")

ACTIONS = ("GET_SERVICES", "GET_NUMBER", "FINISH_ACTIVATION")
OUTCOMES = ("success", "no_numbers", "no_operation", "bad_key", "bad_request", "unavailable",
            "error")
# Onlinesim's calls answer in milliseconds; the long tail is the write lock under load.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# From an SMS stored to Onlinesim's acknowledgement: seconds normally, minutes in an outage.
PUSH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                3600.0)
POOL_STATES = ("free", "rented", "rented_disabled", "disabled", "banned", "offline")
SIM_STATES = ("sim_online", "sim_offline", "sim_unwatched")


class Metrics:
    """The registry of one app, its instruments, and its database collector."""

    def __init__(self, connections: Connections, clock: Clock):
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "rentbox_onlinesim_requests", "Onlinesim's rent calls answered, by action and "
            "outcome.", ("action", "outcome"), registry=self.registry)
        self.call_seconds = Histogram(
            "rentbox_onlinesim_request_duration_seconds", "Time to answer Onlinesim's rent "
            "calls, by action and outcome.", ("action", "outcome"), buckets=CALL_BUCKETS,
            registry=self.registry)
        self.pushes = Counter(
            "rentbox_sms_pushes", "Attempts to push an SMS to Onlinesim, by result: delivered, "
            "refused (failed for good) or retry (tried again later).", ("result",),
            registry=self.registry)
        self.push_delay = Histogram(
            "rentbox_sms_push_delay_seconds", "From an SMS stored by rentbox to Onlinesim's "
            "acknowledgement of its push.", buckets=PUSH_BUCKETS, registry=self.registry)
        for action in ACTIONS:  # known series exist at 0 from the start: rate() works
            for outcome in ("success", "error"):
                self.calls.labels(action, outcome)
        for result in ("delivered", "refused", "retry"):
            self.pushes.labels(result)
        self.registry.register(DatabaseCollector(connections, clock))

    def observe_call(self, action: str, outcome: str, seconds: float) -> None:
        """One of Onlinesim's calls was answered. Never raises."""
        try:
            self.calls.labels(action, outcome).inc()
            self.call_seconds.labels(action, outcome).observe(seconds)
        except Exception:
            log.exception("could not count Onlinesim's call")

    def observe_push(self, sms: dict, kind: str, answered_at: dt.datetime) -> None:
        """One push attempt ended (`kind` as push.Outcome has it). Never raises."""
        try:
            result = {"delivered": "delivered", "terminal": "refused"}.get(kind, "retry")
            self.pushes.labels(result).inc()
            if result == "delivered" and sms.get("created_at"):
                delay = (answered_at - from_text(sms["created_at"])).total_seconds()
                self.push_delay.observe(max(0.0, delay))
        except Exception:
            log.exception("could not count a push")

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and content type, as the Accept header asks (the text format,
        or OpenMetrics when Prometheus asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class DatabaseCollector:
    """Figures kept in the database, read at each scrape from tallies and `meta`: a few
    small reads, whatever the size of the pool and the history."""

    def __init__(self, connections: Connections, clock: Clock):
        self._connections = connections
        self._clock = clock

    def describe(self):
        return []  # dynamic: nothing is read at registration

    def collect(self):
        up = GaugeMetricFamily("rentbox_database_up", "1 if the scrape could read the "
                               "database, 0 if not (then the database figures are absent).")
        try:
            families = list(self._read())
        except Exception:
            log.exception("metrics: could not read the database")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self):
        db = self._connections.get()
        now = self._clock.now()
        pool = {row["key"]: row["n"] for row in db.rows("SELECT key, n FROM pool_counts")}
        numbers = GaugeMetricFamily("rentbox_pool_numbers", "Numbers in the pool by state "
                                    "(removed numbers left out).", labels=("state",))
        for state in POOL_STATES:
            numbers.add_metric([state], pool.get(state, 0))
        yield numbers
        sims = GaugeMetricFamily("rentbox_pool_sims", "Numbers in the pool by SIM presence.",
                                 labels=("presence",))
        for key in SIM_STATES:
            sims.add_metric([key.removeprefix("sim_")], pool.get(key, 0))
        yield sims
        free = GaugeMetricFamily("rentbox_free_numbers", "Numbers that can be rented now, by "
                                 "country and operator.", labels=("country", "operator"))
        for row in db.rows("SELECT country, operator, n FROM free_counts WHERE n > 0"):
            free.add_metric([str(row["country"]), row["operator"]], row["n"])
        yield free
        books = db.row("SELECT coalesce(sum(open), 0) AS open,"
                       " coalesce(sum(credited_kopecks), 0) AS credited,"
                       " coalesce(sum(pending_kopecks), 0) AS pending FROM books_daily")
        yield _gauge("rentbox_open_rentals", "Operations open now, rentals and activations "
                     "(rentbox_service_open has them by service).", books["open"])
        yield _gauge("rentbox_income_credited_roubles", "Income credited by Onlinesim, all "
                     "time, in roubles (a gauge: a restore can lower it).",
                     books["credited"] / 100)
        yield _gauge("rentbox_income_pending_roubles", "Income of open rentals that "
                     "received an SMS, in roubles.", books["pending"] / 100)
        yield from _by_service(db)
        yield from _by_buyer(db, now)
        sequence = db.row("SELECT seq FROM sqlite_sequence WHERE name = 'sms'")
        received = CounterMetricFamily("rentbox_sms_received", "SMS stored by rentbox, all "
                                       "time (routed to a rental or not).")
        received.add_metric([], sequence["seq"] if sequence else 0)
        yield received
        yield _gauge("rentbox_sms_outbox", "SMS waiting to be pushed to Onlinesim.",
                     db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'pending'")["n"])
        yield _gauge("rentbox_onlinesim_last_call_age_seconds", "Seconds since Onlinesim's "
                     "last rent call (noted at most every 30 s); NaN if it never called.",
                     _age(now, (meta.get(db, meta.LAST_ONLINESIM_CALL) or {}).get("at")))
        backups = meta.get(db, meta.BACKUPS) or {}
        yield _gauge("rentbox_backup_age_seconds", "Seconds since the last good scheduled "
                     "backup; NaN if none was written.", _age(now, backups.get("last_at")))
        if backups.get("every_s"):
            yield _gauge("rentbox_backup_interval_seconds", "RENTBOX_BACKUP_EVERY_S of the "
                         "scheduled backups.", backups["every_s"])
        failed_at = backups.get("failed_at")
        yield _gauge("rentbox_backup_failing", "1 if the last scheduled backup failed.",
                     int(bool(failed_at) and (not backups.get("last_at")
                                              or failed_at > backups["last_at"])))
        replication = meta.get(db, meta.REPLICATION)
        if replication is not None:
            yield _gauge("rentbox_replication_running", "1 if Litestream is replicating.",
                         int(replication.get("state") == "running"))


def _by_service(db):
    """The books per product (rent, activations) and service, from books_by_service. The
    success rate is with_sms / (with_sms + failed)."""
    labels = ("product", "service")
    families = {
        "open": GaugeMetricFamily("rentbox_service_open", "Operations open now, by product "
                                  "and service.", labels=labels),
        "credited_kopecks": GaugeMetricFamily(
            "rentbox_service_income_credited_roubles", "Income credited by Onlinesim, all "
            "time, in roubles, by product and service.", labels=labels),
        "pending_kopecks": GaugeMetricFamily(
            "rentbox_service_income_pending_roubles", "Income of open operations that "
            "received an SMS, in roubles, by product and service.", labels=labels),
        "with_sms": GaugeMetricFamily("rentbox_service_with_sms", "Operations, all time, "
                                      "that Onlinesim took an SMS of in time.", labels=labels),
        "failed": GaugeMetricFamily("rentbox_service_failed", "Operations, all time, that "
                                    "failed (no SMS in time).", labels=labels),
    }
    for row in db.rows("SELECT service, sum(open) AS open, sum(credited_kopecks) AS"
                       " credited_kopecks, sum(pending_kopecks) AS pending_kopecks,"
                       " sum(with_sms) AS with_sms, sum(failed) AS failed"
                       " FROM books_by_service GROUP BY service ORDER BY service"):
        key = ["rent" if row["service"] == "rent" else "activations", row["service"]]
        for figure, family in families.items():
            value = row[figure] / 100 if figure.endswith("_kopecks") else row[figure]
            family.add_metric(key, value)
    return families.values()


def _by_buyer(db, now: dt.datetime):
    """The books per buyer, from books_by_buyer: income per buyer and currency, in units of
    the currency (never added across currencies), operations per buyer; and each buyer's
    last call. Every buyer the server serves has its series from the start (0, or NaN for
    a last call it never made), so that an alert on them needs no `absent()`."""
    served = [ONLINESIM] + [b["name"] for b in (meta.get(db, meta.SERVER) or {}).get(
        "buyers", []) if b.get("name") != ONLINESIM]
    money = {
        "credited_minor": GaugeMetricFamily(
            "rentbox_buyer_income_credited", "Income credited by each buyer, all time, in "
            "units of `currency` (roubles, dollars): never added across currencies.",
            labels=("buyer", "currency")),
        "pending_minor": GaugeMetricFamily(
            "rentbox_buyer_income_pending", "Income of each buyer's open operations that "
            "received an SMS, in units of `currency`.", labels=("buyer", "currency")),
    }
    counts = {
        "open": GaugeMetricFamily("rentbox_buyer_open_operations", "Operations open now, "
                                  "by buyer.", labels=("buyer",)),
        "with_sms": GaugeMetricFamily("rentbox_buyer_with_sms", "Operations, all time, that "
                                      "the buyer took an SMS of in time.", labels=("buyer",)),
        "failed": GaugeMetricFamily("rentbox_buyer_failed", "Operations, all time, that "
                                    "failed (no SMS in time), by buyer.", labels=("buyer",)),
    }
    per_buyer: dict[str, dict[str, int]] = {name: dict.fromkeys(counts, 0) for name in served}
    for row in db.rows("SELECT buyer, currency, sum(credited_minor) AS credited_minor,"
                       " sum(pending_minor) AS pending_minor, sum(open) AS open,"
                       " sum(with_sms) AS with_sms, sum(failed) AS failed"
                       " FROM books_by_buyer GROUP BY buyer, currency ORDER BY buyer, currency"):
        for figure, family in money.items():
            family.add_metric([row["buyer"], row["currency"]], row[figure] / 100)
        figures = per_buyer.setdefault(row["buyer"], dict.fromkeys(counts, 0))
        for figure in counts:
            figures[figure] += row[figure]
    for name, figures in per_buyer.items():
        for figure, family in counts.items():
            family.add_metric([name], figures[figure])
    last_call = GaugeMetricFamily("rentbox_buyer_last_call_age_seconds", "Seconds since "
                                  "each buyer's last call (noted at most every 30 s); NaN if "
                                  "it never called.", labels=("buyer",))
    for name, call in meta.last_calls(db, served).items():
        last_call.add_metric([name], _age(now, (call or {}).get("at")))
    return [*money.values(), *counts.values(), last_call]


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _age(now: dt.datetime, at: str | None) -> float:
    return (now - from_text(at)).total_seconds() if at else math.nan
