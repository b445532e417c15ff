"""PUSH_SMS to Onlinesim: the outbox, one attempt at a time, retries and terminal answers.

The outbox is the `sms` table itself: a routed SMS is `pending` with a `next_attempt_at`.
A Pusher thread beside the web server sends what is due, so a slow or unreachable
Onlinesim never delays the answers to Onlinesim's own calls. Nothing is held in memory:
after a crash or restart, every pending SMS is simply due again.

Delivery is at least once: if the process dies between Onlinesim's "OK" and the commit
that records it, the SMS is sent again after the restart, with the same smsId.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from typing import Callable

from rentbox import __version__, events, operations
from rentbox.clock import Clock, from_text, to_text
from rentbox.config import Rules
from rentbox.db import Connections, Database

log = logging.getLogger("rentbox.push")

# Answers after which an SMS is never sent again (protocol.md 4.1).
TERMINAL_CODES = ("NO_OPERATION", "NO_OP", "BAD_SERVICE", "IGNORED", "SERVICE_BAN")
# Plain-text 200 answers that mean "delivered".
_PLAIN_SUCCESS = ("OK", "SUCCESS", "TRUE", "1")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn the POST into a bodiless GET (and take the
    Bearer key to wherever the redirect points); a 3xx is then retried like any error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirects)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to: delivered, terminal (never retry) or retry later."""

    kind: str            # delivered | terminal | retry
    detail: str = ""
    unreachable: bool = False  # no answer at all: a timeout or no connection


def payload(sms: dict, api_key: str) -> dict:
    """The PUSH_SMS (rent) body for one stored SMS (protocol.md 4.1)."""
    return {
        "smsId": sms["id"],
        "phoneFrom": sms["sender"],
        "phone": sms["number"],
        "text": sms["text"],
        "action": "PUSH_SMS",
        "key": api_key,
        "service": "rent",
    }


def classify(status: int, body: bytes) -> Outcome:
    """Read Onlinesim's answer to a push. Its error format is undocumented, so look for the
    code in a JSON `status`, `error` or `response` field, or in a plain-text body."""
    text = body.decode("utf-8", "replace").strip()
    codes: list[str] = []
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        codes = [str(parsed[f]).strip().upper() for f in ("status", "error", "response")
                 if parsed.get(f) is not None]
    elif text:
        codes = [text.upper()]
    for code in codes:
        for terminal in TERMINAL_CODES:
            if code == terminal or (not isinstance(parsed, dict) and terminal in code.split()):
                return Outcome("terminal", terminal)
    if status != 200:
        return Outcome("retry", f"HTTP {status}" + (f": {text[:100]}" if text else ""))
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if error not in (None, "", 0, False):
            return Outcome("retry", f"HTTP 200 with error {str(error)[:60]}")
        status_field = parsed.get("status")
        if status_field is None or str(status_field).upper() in ("SUCCESS", "OK", "TRUE", "1"):
            return Outcome("delivered")
        return Outcome("retry", f"HTTP 200 with status {str(status_field)[:60]}")
    # Any other 200 (a plain-text word, an HTML page from a proxy or a portal) is only a
    # delivery if it plainly says so: when in doubt, send again rather than lose the SMS.
    if not text or text.upper() in _PLAIN_SUCCESS:
        return Outcome("delivered")
    return Outcome("retry", f"HTTP 200: {text[:100]}")


def send(url: str, body: dict, api_key: str, timeout_s: float) -> Outcome:
    """One POST to Onlinesim. Never raises for network trouble: that is a retry."""
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "Authorization": f"Bearer {api_key}",
        "User-Agent": f"rentbox/{__version__}",
    })
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            return classify(response.status, response.read(64 * 1024))
    except urllib.error.HTTPError as error:
        with error:
            return classify(error.code, error.read(64 * 1024))
    except (TimeoutError, socket.timeout):
        return Outcome("retry", f"no answer within {timeout_s:g} s", unreachable=True)
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return Outcome("retry", f"no answer within {timeout_s:g} s", unreachable=True)
        why = getattr(reason, "strerror", None) or reason
        return Outcome("retry", f"cannot connect: {why}", unreachable=True)
    except (OSError, http.client.HTTPException) as error:
        return Outcome("retry", f"connection failed: {type(error).__name__}", unreachable=True)


# The outbox's next SMS (served by the sms_outbox index).
NEXT_DUE_SQL = ("SELECT id, number, sender, text, attempts, operation_id, number_id FROM sms"
                " WHERE push_state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at, id LIMIT 1")


def next_due(db: Database, now: dt.datetime) -> dict | None:
    """The pending SMS that has waited longest among those due by `now`."""
    return db.row(NEXT_DUE_SQL, (to_text(now),))


def seconds_until_next(db: Database, now: dt.datetime) -> float | None:
    """How long until the next pending SMS is due (0 if one is due); None if none waits."""
    row = db.row("SELECT min(next_attempt_at) AS due FROM sms WHERE push_state = 'pending'")
    if row is None or row["due"] is None:
        return None
    return max(0.0, (from_text(row["due"]) - now).total_seconds())


def record(db: Database, now: dt.datetime, sms: dict, outcome: Outcome, retry_s: float, *,
           sent_at: dt.datetime, rules: Rules) -> None:
    """Store the result of one attempt (a conditional update: only a pending SMS moves).

    A delivery of an SMS sent (`sent_at`) within its rental's guard window meets the
    window: that is the moment Onlinesim sees an SMS in the rental (protocol.md 5).
    """
    stamp = to_text(now)
    with db.transaction():
        if outcome.kind == "delivered":
            changed = db.execute(
                "UPDATE sms SET push_state = 'delivered', attempts = attempts + 1,"
                " delivered_at = ?, next_attempt_at = NULL, last_error = NULL"
                " WHERE id = ? AND push_state = 'pending'", (stamp, sms["id"])).rowcount
        elif outcome.kind == "terminal":
            changed = db.execute(
                "UPDATE sms SET push_state = 'failed', attempts = attempts + 1,"
                " next_attempt_at = NULL, last_error = ?"
                " WHERE id = ? AND push_state = 'pending'", (outcome.detail, sms["id"])).rowcount
        else:
            retry_at = to_text(now + dt.timedelta(seconds=retry_s))
            db.execute(
                "UPDATE sms SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                " WHERE id = ? AND push_state = 'pending'", (retry_at, outcome.detail, sms["id"]))
            return
        if changed:
            events.record(db, now, "sms_delivered" if outcome.kind == "delivered" else
                          "sms_push_failed", operation_id=sms["operation_id"],
                          number_id=sms["number_id"], sms_id=sms["id"],
                          attempts=sms["attempts"] + 1, detail=outcome.detail or None)
            if outcome.kind == "delivered" and sms["operation_id"] is not None:
                operations.note_accepted(db, now, rules, operation_id=sms["operation_id"],
                                         number_id=sms["number_id"], sent_at=sent_at)


@dataclasses.dataclass
class Round:
    """What one push round did."""

    attempts: int = 0
    unreachable: bool = False  # it ended at an attempt that found no Onlinesim


def push_due(db: Database, clock: Clock, *, url: str, api_key: str, retry_s: float,
             timeout_s: float, rules: Rules, sender: Callable = send,
             should_stop: Callable[[], bool] = lambda: False) -> Round:
    """Send every SMS due now, oldest first, until none is due or `should_stop()`.

    Ends the round at the first attempt that found no Onlinesim at all (timeout,
    refused connection): the others would only wait for the same timeout.
    """
    result = Round()
    while not should_stop():
        sms = next_due(db, clock.now())
        if sms is None:
            return result
        # The network call runs outside any transaction: no lock is held while waiting.
        sent_at = clock.now()
        outcome = sender(url, payload(sms, api_key), api_key, timeout_s)
        record(db, clock.now(), sms, outcome, retry_s, sent_at=sent_at, rules=rules)
        result.attempts += 1
        if outcome.kind == "delivered":
            log.info("SMS %d delivered to Onlinesim", sms["id"])
        elif outcome.kind == "terminal":
            log.warning("SMS %d refused by Onlinesim (%s): not sent again", sms["id"],
                        outcome.detail)
        else:
            log.warning("SMS %d not delivered (%s): retrying in %g s", sms["id"],
                        outcome.detail, retry_s)
            if outcome.unreachable:
                result.unreachable = True
                return result
    return result


class Pusher:
    """The background thread that empties the outbox. `wake()` after storing an SMS."""

    # How often the outbox is looked at even without a wake-up: an SMS stored by another
    # process (`rentbox sms add`) is pushed within this many seconds.
    POLL_S = 1.0

    def __init__(self, connections: Connections, clock: Clock, *, url: str, api_key: str,
                 retry_s: float, timeout_s: float, rules: Rules):
        self._connections = connections
        self._clock = clock
        self._options = dict(url=url, api_key=api_key, retry_s=retry_s, timeout_s=timeout_s,
                             rules=rules)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rentbox-push", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 15) -> None:
        """Stop after the attempt in flight, if any (each has its own timeout)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            wait_s = self.POLL_S
            try:
                db = self._connections.get()
                done = push_due(db, self._clock, should_stop=self._stop.is_set,
                                **self._options)
                if done.unreachable:
                    # Onlinesim is not there: the next try is due in retry_s anyway,
                    # and trying the other SMS now would only wait out more timeouts.
                    wait_s = self._options["retry_s"]
                else:
                    due_in = seconds_until_next(db, self._clock.now())
                    if due_in is not None:
                        wait_s = min(wait_s, due_in)
            except Exception:
                log.exception("push round failed; trying again in %g s", self.POLL_S)
            # Waiting on an Event, not sleeping: wake() and stop() end the wait at once.
            self._wake.wait(wait_s)
