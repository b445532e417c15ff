"""Alerts: the conditions a partner must hear about, and the messages that tell them.

Onlinesim's rules punish a silent problem within minutes (a 20-minute guard window, a
30-minute block, 24-hour bans), and a partner looks at rentbox rarely. So the
housekeeping pass evaluates, every few seconds, the conditions below; each one is an
`alerts` row while it holds:

- `onlinesim_silent`: Onlinesim has not called for `silence_s` (it polls every 2 minutes);
- `buyer_silent:<name>`: a buyer beside Onlinesim that the server serves (SMSHub, a buyer
  of the buyers file) has not called for `silence_s` (they poll every 10-20 s);
- `sms_undelivered`: an SMS has waited `undelivered_s` without Onlinesim taking it;
- `banned:<number>`: a number is banned after failed rentals;
- `sim_offline:<number>`: a rented number's SIM is offline (presence.py);
- `pool_empty`: no number can be rented;
- `disk_low`: the database's disk is below `disk_free_mb`, or cannot be written;
- `backup_failed`, `backup_overdue`: the last scheduled backup failed, or the last good
  one is older than twice RENTBOX_BACKUP_EVERY_S (backups.py);
- `replica_down`, `replica_behind`: Litestream is not running, or the replica has not
  been seen current for a while (replication.py).

A condition is announced once when it starts and once when it clears, never while it
holds, and the table survives restarts, so a restart announces nothing that was already
known. The announcements of one pass go out as one message per channel, queued in
`alert_outbox` in the pass's transaction; their own thread (`AlertSender`) sends them, so
a slow or dead channel never delays Onlinesim's calls or the pass, and retries with a
growing pause. A summary of the day before is queued once a day at `summary_hour` (UTC).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Callable

from rentbox import backups, meta, pool, presence, replication, reports
from rentbox.clock import Clock, from_text, to_text
from rentbox.config import ONLINESIM
from rentbox.db import Connections, Database
from rentbox.settings import Alerting
from rentbox.workers import Periodic

log = logging.getLogger("rentbox.alerts")

# meta key: the day (UTC) of the last summary queued.
SUMMARY = "alerts.summary"
# Sending: the pause after a failure doubles from RETRY_S up to MAX_RETRY_S.
RETRY_S = 10.0
MAX_RETRY_S = 3600.0
SEND_TIMEOUT_S = 10.0
# The most names one message lists of a kind (the rest are counted).
MAX_LISTED = 10


# ---------------------------------------------------------------------------------------
# Conditions
# ---------------------------------------------------------------------------------------


def conditions(db: Database, now: dt.datetime, alerting: Alerting) -> dict[str, str]:
    """The conditions that hold now: {key: message}. Reads only, through indexes and
    tallies: cheap enough for every housekeeping pass."""
    found: dict[str, str] = {}
    server = meta.get(db, meta.SERVER)
    silent = _silence(db, now, alerting, "onlinesim_silent", ONLINESIM, server, lambda since: (
        f"Onlinesim has not called since {_short(since)}: check that rentbox can be "
        "reached from the internet (proxy, certificate, firewall) and that the partner "
        "account is not blocked"))
    if silent:
        found["onlinesim_silent"] = silent
    # Every other buyer the server serves (its facts: SMSHub, the buyers file's), alike.
    for buyer in (server or {}).get("buyers", []):
        if buyer.get("name") in (None, ONLINESIM):
            continue
        key = f"buyer_silent:{buyer['name']}"
        silent = _silence(db, now, alerting, key, buyer["name"], server, lambda since: (
            f"{buyer['name']} has not called since {_short(since)} (it polls every 10-20 s):"
            f" check the agent URL it was given (ending in {buyer.get('path') or '?'}), its "
            "key, and that rentbox can be reached from the internet"))
        if silent:
            found[key] = silent
    oldest = db.row("SELECT min(created_at) AS at, count(*) AS n FROM sms"
                    " WHERE push_state = 'pending'")
    taker = "their buyers" if (server or {}).get("buyers") else "Onlinesim"
    if oldest["at"] and (now - from_text(oldest["at"])).total_seconds() >= alerting.undelivered_s:
        error = db.row("SELECT last_error FROM sms WHERE push_state = 'pending'"
                       " AND last_error IS NOT NULL ORDER BY next_attempt_at DESC LIMIT 1")
        found["sms_undelivered"] = (
            f"{oldest['n']} SMS not taken by {taker}, the oldest since {_short(oldest['at'])}"
            f" (last error: {(error or {}).get('last_error') or 'none yet'})")
    for row in db.rows("SELECT number, banned_until, failures FROM numbers"
                       " WHERE banned_until IS NOT NULL AND banned_until > ?", (to_text(now),)):
        found[f"banned:{row['number']}"] = (
            f"+{row['number']} is banned until {_short(row['banned_until'])} after "
            f"{row['failures']} failed rentals: check that its SMS reach rentbox")
    for row in presence.at_risk(db):
        found[f"sim_offline:{row['number']}"] = (
            f"the SIM of +{row['number']} (rental {row['operation_id']}) is offline since "
            f"{_short(row['offline_since'])}: put it back into a port")
    counts = pool.count_available(db)
    total = db.row("SELECT coalesce(sum(n), 0) AS n FROM pool_counts"
                   " WHERE key NOT LIKE 'sim~_%' ESCAPE '~'")["n"]
    if total and not counts:
        found["pool_empty"] = (f"no number can be rented now (of {total} in the pool): "
                               "Onlinesim is offered nothing")
    storage = db.storage()
    low = alerting.disk_free_mb * 1024 * 1024
    if storage["write_problem"]:
        found["disk_low"] = f"the database cannot be written: {storage['write_problem']}"
    elif storage["free_bytes"] is not None and storage["free_bytes"] < low:
        found["disk_low"] = (f"only {storage['free_bytes'] / 1024 / 1024:.0f} MiB free on the "
                             "database's disk")
    # The same judgement as `rentbox status`, on the server's own facts: this pass runs
    # inside it, so it runs unless it has recorded its stop.
    running = {**(server or {}), "running": bool(server) and not server.get("stopped_at")}
    found.update(backups.trouble(meta.get(db, meta.BACKUPS), running, now))
    found.update(replication.trouble(meta.get(db, meta.REPLICATION), running, now))
    return found


def _silence(db: Database, now: dt.datetime, alerting: Alerting, key: str, buyer: str,
             server: dict | None, message: Callable[[str], str]) -> str | None:
    """The message of alert `key` while `buyer` is silent, else None. Silence counts from
    the buyer's last call, or from when this server started if that is later: a server
    that was down (and has said so) is given time after a restart, and a buyer that never
    called counts from the start. Once announced, only a call ends it: a restart is no
    news that the buyer is back. `message(since)` words a new one."""
    call_at = (meta.get(db, meta.last_call_key(buyer)) or {}).get("at")
    stamps = [t for t in (call_at, (server or {}).get("started_at")) if t]
    since = max(stamps) if stamps else None
    announced = db.row("SELECT message, started_at FROM alerts WHERE key = ?"
                       " AND state = 'active'", (key,))
    if announced and not (call_at and call_at > announced["started_at"]):
        return announced["message"]
    if since and (now - from_text(since)).total_seconds() >= alerting.silence_s:
        return message(since)
    return None


def evaluate(db: Database, now: dt.datetime, alerting: Alerting) -> int:
    """Compare the conditions with the active alerts: start the new ones, clear the ones
    that no longer hold, and queue one message per channel for the changes (and the daily
    summary when due). Returns how many alerts changed."""
    holding = conditions(db, now, alerting)
    active = {r["key"]: r for r in db.rows(
        "SELECT key, message, started_at FROM alerts WHERE state = 'active'")}
    started = {k: m for k, m in holding.items() if k not in active}
    cleared = {k: r for k, r in active.items() if k not in holding}
    summary = _summary_due(db, now, alerting)
    if not started and not cleared and summary is None:
        return 0
    stamp = to_text(now)
    with db.transaction():
        for key, message in started.items():
            db.execute("INSERT INTO alerts (key, message, state, started_at) VALUES"
                       " (?, ?, 'active', ?) ON CONFLICT (key) DO UPDATE SET"
                       " message = excluded.message, state = 'active',"
                       " started_at = excluded.started_at, cleared_at = NULL",
                       (key, message, stamp))
        for key in cleared:
            db.execute("UPDATE alerts SET state = 'cleared', cleared_at = ? WHERE key = ?"
                       " AND state = 'active'", (stamp, key))
        if started or cleared:
            lines = [f"⚠️ {m}" for m in started.values()]
            lines += [f"✅ resolved: {r['message']}" for r in cleared.values()]
            text = "rentbox: " + ("\n" if len(lines) > 1 else "") + "\n".join(lines)
            detail = {"started": [{"key": k, "message": m} for k, m in started.items()],
                      "cleared": [{"key": k, "message": r["message"]}
                                  for k, r in cleared.items()]}
            _queue(db, now, alerting, "alert", text, detail)
        if summary is not None:
            day, text, detail = summary
            _queue(db, now, alerting, "summary", text, detail)
            meta.put_within(db, now, SUMMARY, {"day": day})
    for key, message in started.items():
        log.warning("alert: %s", message)
    for key, row in cleared.items():
        log.info("alert cleared: %s", row["message"])
    return len(started) + len(cleared)


def _queue(db: Database, now: dt.datetime, alerting: Alerting, kind: str, text: str,
           detail: dict) -> None:
    stamp = to_text(now)
    for channel in alerting.channels:
        db.execute("INSERT INTO alert_outbox (channel, kind, text, detail, created_at,"
                   " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                   (channel, kind, text, json.dumps({"kind": kind, **detail},
                                                    ensure_ascii=False), stamp, stamp))


def _summary_due(db: Database, now: dt.datetime, alerting: Alerting
                 ) -> tuple[str, str, dict] | None:
    """Yesterday's figures, once a day at `summary_hour` UTC (or later that day)."""
    if alerting.summary_hour < 0 or now.hour < alerting.summary_hour:
        return None
    today = now.date()
    if (meta.get(db, SUMMARY) or {}).get("day") == today.isoformat():
        return None
    start = dt.datetime.combine(today - dt.timedelta(days=1), dt.time(),
                                tzinfo=dt.timezone.utc)
    rows, totals = reports.income_report(db, by="day", since=start,
                                         until=start + dt.timedelta(days=1))
    banned = db.row("SELECT count(*) AS n FROM events WHERE kind = 'number_banned'"
                    " AND at >= ? AND at < ?",
                    (to_text(start), to_text(start + dt.timedelta(days=1))))["n"]
    # Income in other currencies (SMSHub-protocol buyers may pay in USD): said apart,
    # never added to the roubles.
    others = reports.other_currencies(db, since=start, until=start + dt.timedelta(days=1))
    day = start.date().isoformat()
    text = (f"rentbox, {day}: {totals.operations} rentals ({totals.sold} sold, "
            f"{totals.failed} failed), credited {totals.credited_kopecks / 100:,.2f} RUB, "
            f"pending {totals.pending_kopecks / 100:,.2f} RUB, "
            + "".join(f"in {o.currency}: credited {o.credited_kopecks / 100:,.2f} {o.currency},"
                      f" pending {o.pending_kopecks / 100:,.2f} {o.currency}, " for o in others)
            + f"{banned} number(s) banned")
    return today.isoformat(), text, {
        "day": day, **totals.as_dict(), "banned": banned,
        "other_currencies": [{"currency": o.currency, "credited_minor": o.credited_kopecks,
                              "pending_minor": o.pending_kopecks} for o in others]}


def recent(db: Database, limit: int = 50) -> list[dict]:
    """Active alerts first, then the most recently cleared (`rentbox alerts list`)."""
    return db.rows("SELECT key, state, message, started_at, cleared_at FROM alerts"
                   " ORDER BY state = 'cleared', coalesce(cleared_at, started_at) DESC"
                   " LIMIT ?", (limit,))


def _short(stamp: str) -> str:
    return f"{stamp[:10]} {stamp[11:16]} UTC"


# ---------------------------------------------------------------------------------------
# Channels and their thread
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What a channel answered: ok, and a short printable description."""

    ok: bool
    answer: str


def send(alerting: Alerting, channel: str, text: str, detail: dict) -> Delivery:
    """Send one message through one channel (no retry here). Never raises for a network
    or HTTP failure, and never puts the bot token (it is in Telegram's URL) in an answer."""
    if channel == "telegram":
        url = f"{alerting.telegram_api_url.rstrip('/')}/bot{alerting.telegram_token}/sendMessage"
        body = {"chat_id": alerting.telegram_chat_id, "text": text,
                "disable_web_page_preview": True}
    elif channel == "webhook":
        url, body = alerting.webhook_url, {"text": text, **detail}
    else:
        return Delivery(False, f"unknown channel {channel}")
    import urllib.error  # here, not at the top: every CLI command imports this module,
    import urllib.request  # and urllib.request (http.client, ssl, email) costs it 40 ms

    request = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode(),
                                     headers={"Content-Type": "application/json"})
    secret = alerting.telegram_token or ""
    try:
        with urllib.request.urlopen(request, timeout=SEND_TIMEOUT_S) as response:
            raw = response.read(4096)
            status = response.status
    except urllib.error.HTTPError as error:
        raw, status = error.read(4096), error.code
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return Delivery(False, _clean(f"no answer: {reason}", secret))
    text_answer = raw.decode("utf-8", "replace")
    if channel == "telegram":
        try:
            answer = json.loads(text_answer)
        except ValueError:
            answer = {}
        if isinstance(answer, dict) and answer.get("ok") is True:
            return Delivery(True, f"HTTP {status}, ok")
        description = answer.get("description") if isinstance(answer, dict) else None
        return Delivery(False, _clean(f"HTTP {status}: {description or text_answer[:200]}",
                                      secret))
    if 200 <= status < 300:
        return Delivery(True, f"HTTP {status}")
    return Delivery(False, _clean(f"HTTP {status}: {text_answer[:200]}", secret))


def _clean(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "<token>")
    return "".join(c if c.isprintable() else " " for c in text)[:300]


def deliver_due(db: Database, now: dt.datetime, alerting: Alerting,
                sender: Callable[..., Delivery] = send, limit: int = 20) -> int:
    """Send the messages that are due; record each outcome in its own short transaction
    (no transaction is open while a channel is waited for). Returns how many were sent."""
    due = db.rows("SELECT id, channel, text, detail, attempts FROM alert_outbox"
                  " WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY next_attempt_at, id"
                  " LIMIT ?", (to_text(now), limit))
    sent = 0
    for row in due:
        outcome = sender(alerting, row["channel"], row["text"], json.loads(row["detail"] or "{}"))
        with db.transaction():
            if outcome.ok:
                db.execute("UPDATE alert_outbox SET sent_at = ?, attempts = attempts + 1,"
                           " last_error = NULL WHERE id = ?", (to_text(now), row["id"]))
                sent += 1
            else:
                pause = min(RETRY_S * 2 ** row["attempts"], MAX_RETRY_S)
                db.execute("UPDATE alert_outbox SET attempts = attempts + 1, last_error = ?,"
                           " next_attempt_at = ? WHERE id = ?",
                           (outcome.answer, to_text(now + dt.timedelta(seconds=pause)),
                            row["id"]))
                if row["attempts"] == 0:
                    log.warning("alert to %s not delivered (%s): retrying", row["channel"],
                                outcome.answer)
    return sent


def try_channels(alerting: Alerting, now: dt.datetime) -> dict[str, Delivery]:
    """`rentbox alerts test`: one message through every configured channel, now."""
    text = f"rentbox: a test message, sent {_short(to_text(now))}. Alerts reach you here."
    return {channel: send(alerting, channel, text, {"kind": "test"})
            for channel in alerting.channels}


class AlertSender(Periodic):
    """The thread that sends queued alerts every `interval_s` seconds."""

    name = "rentbox-alerts"
    what = "alert delivery pass"
    log = logging.getLogger("rentbox.alerts")

    def __init__(self, connections: Connections, clock: Clock, alerting: Alerting,
                 interval_s: float = 2.0):
        super().__init__(interval_s)
        self._connections = connections
        self._clock = clock
        self._alerting = alerting

    def stop(self, timeout_s: float = SEND_TIMEOUT_S + 5) -> None:
        super().stop(timeout_s)

    def run_pass(self) -> None:
        deliver_due(self._connections.get(), self._clock.now(), self._alerting)
