"""PUSH_SMS to Onlinesim: the outbox, a few attempts in flight, retries and terminal answers.

The outbox is the `sms` table itself: a routed SMS is `pending` with a `next_attempt_at`,
and a `route`: where it goes, from its operation's kind (ROUTES: a rental's SMS to
Onlinesim's rent URL, an activation's to its v1 URL, without `service`). One Pusher
thread per route whose URL is set sends what is due, so a slow or unreachable Onlinesim
never delays the answers to Onlinesim's own calls, and one URL's outage never holds up
the other's SMS. A route without a URL keeps its SMS waiting.

Threads: the Pusher thread alone reads the outbox and stores every outcome (short
transactions, never one around network I/O); each attempt runs on a thread of its own,
at most `parallel` at a time, over kept-alive connections (`Link`): one TCP and TLS
handshake per connection, not per SMS.

Order within a rental: at most one SMS of an operation is on its way at a time, from the
moment it is handed to a thread until its outcome is stored. Due SMS go out oldest first
(`next_attempt_at`, then id), so a later SMS of a rental is sent only after Onlinesim
answered the earlier one, or its attempt failed: an earlier SMS that waits for its retry
does not hold the later ones back (a fresh one-time code must not wait behind an SMS that
Onlinesim keeps refusing).

Retries: an SMS that Onlinesim answered with an error is tried again `retry_s` after that
answer, each SMS on its own schedule. While Onlinesim cannot be reached at all (refused,
timed out), one probe (the SMS that has waited longest) is sent, alone, `retry_s` after
the previous probe failed, however many SMS arrive meanwhile; the first answer ends the
outage and every due SMS is then sent, `parallel` at a time.

Answers are stored as soon as they come, every answer that has come in one commit, and
ahead of the web requests waiting for the write lock (`transaction(urgent=True)`): until
Onlinesim's SUCCESS is committed, a crash would push that SMS again.

An acknowledgement is never lost to a local failure: if Onlinesim answered but its
outcome cannot be stored (disk full, the database locked by another process, or any
other error), the answer is kept in memory (`PushState`), storing it is retried with a
growing pause, and nothing is pushed until it is stored. Only a crash while a push is on
its way (from the moment it is sent until its answer is committed), or while an answer
waits in memory, can send an SMS again, with the same smsId: at most the `parallel` SMS
then on their way, and the answers held (benchmarks/crash_loop.py measures it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import queue
import re
import select
import threading
import traceback
import zlib
from typing import TYPE_CHECKING, Callable, Iterable
from urllib.parse import urlsplit

from rentbox import __version__, buyers, events, operations
from rentbox.clock import Clock, from_text, to_text
from rentbox.config import Rules, default
from rentbox.db import Connections, Database
from rentbox.errors import Unavailable
from rentbox.workers import Worker

if TYPE_CHECKING:  # imported where a push is made: every CLI command imports this module,
    import http.client  # and http.client (ssl, email) costs more than `rentbox status`
    import ssl

log = logging.getLogger("rentbox.push")

# Answers after which an SMS is never sent again (protocol.md 4.1).
TERMINAL_CODES = ("NO_OPERATION", "NO_OP", "BAD_SERVICE", "IGNORED", "SERVICE_BAN")
# Where an answer may name its code (protocol.md 4.1).
_ANSWER_FIELDS = ("status", "error", "response")
# What a `status` or `response` field (or a plain-text body) says for "delivered", and
# an `error` field for "no error" (upper-cased; JSON true and false read TRUE and FALSE).
_SUCCESS_WORDS = ("SUCCESS", "OK", "TRUE", "1")
_NO_ERROR = ("", "0", "FALSE")
# A code in an answer: NO_OPERATION in "NO_OPERATION: no active operation".
_WORD = re.compile(r"[A-Za-z0-9_]+")
# The most of an answer that is read, and (after decoding gzip or deflate) looked at.
MAX_ANSWER_BYTES = 64 * 1024
# A failure that repeats is logged again at most this often (per SMS, or for an outage).
LOG_EVERY_S = 300.0
# The longest pause between two tries to store an answer the database refused.
MAX_STORE_BACKOFF_S = 10.0


# A kept-alive connection idle longer than this is closed, not reused: a NAT or firewall
# on the way may have dropped it without a word, and a push sent on it would only find
# out after its timeout. (Servers close idle keep-alive connections after 5 s (Apache) to
# 75 s (nginx); one that the server closed is noticed before it is used, see Link.)
KEEPALIVE_IDLE_S = 30.0


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to: delivered, terminal (never retry) or retry later."""

    kind: str            # delivered | terminal | retry
    detail: str = ""
    unreachable: bool = False  # no answer at all: a timeout or no connection


# Where SMS are pushed: Onlinesim's rentals' to its rent URL, its activations' to its v1
# URL; another buyer's to that buyer's URL, the route named by the buyer
# (buyers.route).
RENT_ROUTE, ACTIVATION_ROUTE = "rent", "activation"


def payload(sms: dict, api_key: str, route: str = RENT_ROUTE) -> dict:
    """The PUSH_SMS body for one stored SMS: rent's (protocol.md 4.1) or, for an
    activation, the same without `service` (protocol.md 6)."""
    body = {
        "smsId": sms["id"],
        "phoneFrom": sms["sender"],
        "phone": sms["number"],
        "text": sms["text"],
        "action": "PUSH_SMS",
        "key": api_key,
    }
    if route == RENT_ROUTE:
        body["service"] = "rent"
    return body


@dataclasses.dataclass(frozen=True)
class Wire:
    """How one buyer's protocol writes a push and reads its answer: `body(sms, key)` is
    the PUSH_SMS body of a stored SMS, `read(http_status, decoded_body)` the Outcome of
    an answer. Onlinesim's are below; other protocols' are in their adapters (smshub.py)."""

    body: Callable[[dict, str], dict]
    read: Callable[[int, bytes], Outcome]


def classify(status: int, body: bytes) -> Outcome:
    """Read Onlinesim's (decoded) answer to a push: the one place that decides.

    Its error format is undocumented (protocol.md 4.1), so the code is looked for in a
    JSON `status`, `error` or `response` field, or in a plain-text body, with or without
    trailing words (`NO_OPERATION: no active operation`). A terminal code anywhere
    means never again. Delivered means a 2xx whose every one of those fields says success
    (`status`/`response`: SUCCESS, OK, true or 1; `error`: empty, 0 or false) or that
    says nothing at all (a 204). Anything else, `{"response": "ERROR_WRONG_KEY"}` or
    `TOO_MANY_ATTEMPTS` with a 200 included, is sent again: when in doubt, send again
    rather than lose the SMS.
    """
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        fields = {f: parsed[f] for f in _ANSWER_FIELDS if parsed.get(f) is not None}
        # Structured fields: the code in any case (`no_operation`).
        words = [set(_WORD.findall(str(v).upper())) for v in fields.values()]
    else:
        fields = {}
        # Free text (a proxy's error page too): only a code written as codes are, in
        # capitals, so that a page saying "request ignored" is not taken for IGNORED.
        words = [set(_WORD.findall(text))] if text else []
    for found in words:
        for terminal in TERMINAL_CODES:
            if terminal in found:
                return Outcome("terminal", terminal)
    if not 200 <= status < 300:
        return Outcome("retry", f"HTTP {status}" + (f": {excerpt(text)}" if text else ""))
    if isinstance(parsed, dict):
        for field, value in fields.items():
            said = str(value).strip().upper()
            if said not in (_NO_ERROR if field == "error" else _SUCCESS_WORDS):
                return Outcome("retry", f"HTTP {status} with {field} {excerpt(str(value), 60)}")
        return Outcome("delivered")
    if not text or text.upper() in _SUCCESS_WORDS:
        return Outcome("delivered")
    return Outcome("retry", f"HTTP {status}: {excerpt(text)}")


ONLINESIM_RENT = Wire(lambda sms, key: payload(sms, key, RENT_ROUTE), classify)
ONLINESIM_ACTIVATION = Wire(lambda sms, key: payload(sms, key, ACTIVATION_ROUTE), classify)


def onlinesim_wire(route: str) -> Wire:
    """Onlinesim's wire for one of its two routes."""
    return ONLINESIM_RENT if route == RENT_ROUTE else ONLINESIM_ACTIVATION


def excerpt(text: str, limit: int = 100) -> str:
    """A printable excerpt of a peer's answer, for the log and `last_error`: control
    characters and undecodable bytes become '?', and it is cut at `limit` characters."""
    cut = text[:limit]
    printable = "".join(c if c.isprintable() and c != "\ufffd" else "?" for c in cut)
    return printable + ("…" if len(text) > limit else "")


def decode_answer(raw: bytes, content_encoding: str | None) -> bytes:
    """An answer's body as sent before compression (gzip, deflate or none), at most
    MAX_ANSWER_BYTES of it. A body that does not decode is returned as it came, and is
    then read as an answer that does not say "delivered"."""
    coding = (content_encoding or "").strip().lower()
    if coding in ("", "identity"):
        return raw
    if coding in ("gzip", "x-gzip"):
        attempts = [16 + zlib.MAX_WBITS]
    elif coding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        return raw
    for wbits in attempts:
        try:
            return zlib.decompressobj(wbits).decompress(raw, MAX_ANSWER_BYTES)
        except zlib.error:
            continue
    return raw


class Link:
    """Kept-alive connections to Onlinesim, shared by the attempts in flight.

    Called as `link(url, body, api_key, timeout_s) -> Outcome`, from any thread; never
    raises for network trouble (that is a retry). Each call takes an idle connection to
    the URL's server, or opens one, and gives it back once the answer was read to its end
    and the server keeps the connection open: never more connections than attempts in
    flight, and one TCP and TLS handshake per connection. Redirects are not followed (the
    Bearer key would go wherever they point): a 3xx is an error answer, retried later.

    When a kept-alive connection is closed by the server:
    - found closed (or idle longer than KEEPALIVE_IDLE_S) before use: it is dropped and
      the request goes on a new connection;
    - the request cannot be written whole on it: Onlinesim cannot have taken a request
      it did not receive whole, so it is written once more, at once, on a new connection;
    - the request was written but no answer comes: it may have reached Onlinesim, so that
      is a failed attempt like any other, for the outbox to retry after `retry_s`; never
      sent again at once.
    """

    def __init__(self, clock: Clock, keepalive_s: float = KEEPALIVE_IDLE_S,
                 read: Callable[[int, bytes], Outcome] = classify):
        self._clock = clock
        self._read = read  # the buyer's protocol reads its answers (Wire.read)
        self._keepalive_s = keepalive_s
        self._lock = threading.Lock()  # guards the fields below
        # (scheme, host, port), connection, idle since: most recently used last.
        self._idle: list[tuple[tuple, http.client.HTTPConnection, dt.datetime]] = []
        self._tls: ssl.SSLContext | None = None
        self._closed = False
        self.opened = 0  # connections opened so far

    def __call__(self, url: str, body: dict, api_key: str, timeout_s: float) -> Outcome:
        import http.client

        target = urlsplit(url)
        origin = (target.scheme, target.hostname, target.port)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Authorization": f"Bearer {api_key}",
                   "User-Agent": f"rentbox/{__version__}"}
        connection, step = None, "connect"
        try:
            connection = self._take(origin, timeout_s)
            reused = connection is not None
            if connection is None:
                connection = self._open(target, timeout_s)
            step = "send"
            try:
                connection.request("POST", path, body=data, headers=headers)
            except (OSError, http.client.HTTPException):
                if not reused:
                    raise
                # Not written whole (an error while writing means the last bytes never
                # left): the server closed this kept-alive connection, and cannot have
                # taken the request. Once more, on a new connection.
                connection.close()
                connection, reused, step = None, False, "connect"
                connection = self._open(target, timeout_s)
                step = "send"
                connection.request("POST", path, body=data, headers=headers)
            step = "answer"
            response = connection.getresponse()
            raw = response.read(MAX_ANSWER_BYTES)
        except TimeoutError:
            if connection is not None:
                connection.close()
            return Outcome("retry", f"no answer within {timeout_s:g} s", unreachable=True)
        except (OSError, http.client.HTTPException) as error:
            if connection is not None:
                connection.close()
            if step == "connect":
                why = getattr(error, "strerror", None) or type(error).__name__
                return Outcome("retry", f"cannot connect: {why}", unreachable=True)
            if reused:  # a kept-alive connection closed as the request went out
                return Outcome("retry", "connection closed before an answer: "
                               f"{type(error).__name__}")
            return Outcome("retry", f"connection failed: {type(error).__name__}",
                           unreachable=True)
        self._give_back(origin, connection, response)
        return self._read(response.status,
                          decode_answer(raw, response.getheader("Content-Encoding")))

    def close(self) -> None:
        """Close the idle connections; one still in use is closed when its attempt ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, connection, _ in idle:
            connection.close()

    def _take(self, origin: tuple, timeout_s: float) -> http.client.HTTPConnection | None:
        """The most recently used idle connection to `origin` that is still open, or None.
        Closes the idle connections kept too long on the way."""
        now = self._clock.now()
        with self._lock:
            stale = [e for e in self._idle
                     if (now - e[2]).total_seconds() > self._keepalive_s]
            self._idle = [e for e in self._idle if e not in stale]
            found = [e for e in self._idle if e[0] == origin]
            while found and _is_closed_by_peer(found[-1][1]):
                stale.append(found.pop())
            chosen = found[-1] if found else None
            self._idle = [e for e in self._idle if e not in stale and e is not chosen]
        for _, connection, _ in stale:
            connection.close()
        if chosen is None:
            return None
        connection = chosen[1]
        connection.timeout = timeout_s
        connection.sock.settimeout(timeout_s)
        return connection

    def _open(self, target, timeout_s: float) -> http.client.HTTPConnection:
        """A new connection, connected (and its TLS handshake done)."""
        import http.client
        import ssl

        if target.scheme == "https":
            with self._lock:
                self._tls = self._tls or ssl.create_default_context()
            connection = http.client.HTTPSConnection(target.hostname, target.port,
                                                     timeout=timeout_s, context=self._tls)
        else:
            connection = http.client.HTTPConnection(target.hostname, target.port,
                                                    timeout=timeout_s)
        connection.connect()
        with self._lock:
            self.opened += 1
        return connection

    def _give_back(self, origin: tuple, connection: http.client.HTTPConnection,
                   response: http.client.HTTPResponse) -> None:
        """Keep the connection for the next attempt if its answer was read to the end and
        the server keeps it open; close it otherwise."""
        reusable = (response.isclosed() and not response.will_close
                    and connection.sock is not None)
        if reusable:
            with self._lock:
                if not self._closed:
                    self._idle.append((origin, connection, self._clock.now()))
                    return
        response.close()
        connection.close()


def _is_closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection can no longer be used: the server closed it
    (or sent something nobody asked for), so its socket is readable with no request out."""
    import ssl

    sock = connection.sock
    if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return True
    poller = select.poll()  # not select(): descriptors above 1024 are fine
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


# A route's next SMS (served by the sms_outbox_by_route index).
_DUE_SQL = ("SELECT id, number, sender, text, attempts, operation_id, number_id, created_at"
            " FROM sms"
            " WHERE push_state = 'pending' AND route = ? AND next_attempt_at <= ?")
_DUE_ORDER = " ORDER BY next_attempt_at, id LIMIT 1"
NEXT_DUE_SQL = _DUE_SQL + _DUE_ORDER


def next_due(db: Database, now: dt.datetime, busy: Iterable[dict] = (),
             route: str = RENT_ROUTE) -> dict | None:
    """The pending SMS of `route` that has waited longest among those due by `now`,
    leaving out the SMS in `busy` (on their way) and every other SMS of their operations."""
    busy = list(busy)
    if not busy:
        return db.row(NEXT_DUE_SQL, (route, to_text(now)))
    ids = [s["id"] for s in busy]
    rentals = [s["operation_id"] for s in busy if s["operation_id"] is not None]
    sql = _DUE_SQL + f" AND id NOT IN ({', '.join('?' * len(ids))})"
    if rentals:
        sql += (" AND (operation_id IS NULL OR operation_id NOT IN"
                f" ({', '.join('?' * len(rentals))}))")
    return db.row(sql + _DUE_ORDER, (route, to_text(now), *ids, *rentals))


def seconds_until_next(db: Database, now: dt.datetime,
                       route: str = RENT_ROUTE) -> float | None:
    """How long until the next pending SMS of `route` is due (0 if one is due); None if
    none waits."""
    row = db.row("SELECT min(next_attempt_at) AS due FROM sms WHERE push_state = 'pending'"
                 " AND route = ?", (route,))
    if row is None or row["due"] is None:
        return None
    return max(0.0, (from_text(row["due"]) - now).total_seconds())


@dataclasses.dataclass(frozen=True)
class Answered:
    """One attempt and what it came to, from its thread to the one that stores it; one
    that Onlinesim answered for good (delivered, terminal) stays in memory until stored."""

    sms: dict
    outcome: Outcome
    sent_at: dt.datetime
    answered_at: dt.datetime  # when the answer (or the failure) came


def record(db: Database, now: dt.datetime, sms: dict, outcome: Outcome, retry_s: float, *,
           sent_at: dt.datetime, rules: Rules) -> None:
    """Store the result of one attempt, answered at `now` (see record_answers)."""
    record_answers(db, [Answered(sms, outcome, sent_at, now)], retry_s, rules)


def record_answers(db: Database, answers: list[Answered], retry_s: float,
                   rules: Rules) -> None:
    """Store the outcomes of attempts, each dated by its own answer, all in one urgent
    transaction: it goes ahead of the web requests waiting for the write lock, because
    until Onlinesim's SUCCESS is committed a crash would push that SMS again, and one
    commit (one fsync) for every answer waiting beats one each.

    Conditional updates: only a pending SMS moves, except that a delivery is recorded
    for an SMS that expired while its push was on its way (Onlinesim did take it; that
    meets no window, as its rental has ended). A delivery meets its rental's guard window
    when the window is still undecided (operations.note_accepted).
    """
    with db.transaction(urgent=True):
        for answer in answers:
            _record_answer(db, answer, retry_s, rules)


def _record_answer(db: Database, answer: Answered, retry_s: float, rules: Rules) -> None:
    sms, outcome, now = answer.sms, answer.outcome, answer.answered_at
    stamp = to_text(now)
    if outcome.kind == "delivered":
        changed = db.execute(
            "UPDATE sms SET push_state = 'delivered', attempts = attempts + 1,"
            " delivered_at = ?, next_attempt_at = NULL, last_error = NULL"
            " WHERE id = ? AND push_state IN ('pending', 'expired')",
            (stamp, sms["id"])).rowcount
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
                                     number_id=sms["number_id"])


@dataclasses.dataclass
class Round:
    """What one push round did."""

    attempts: int = 0
    unreachable: bool = False  # Onlinesim was found unreachable, now or at the last probe
    store_failed: bool = False  # an outcome could not be stored: nothing more was pushed


class PushState:
    """What the pusher keeps between rounds, in memory only: answers not yet stored, the
    outage it is in, and when it last logged each repeating failure."""

    def __init__(self, taker: str = "Onlinesim"):
        self.taker = taker  # who takes these SMS, as the log names it (buyers.taker)
        self.unstored: list[Answered] = []
        # Told of every attempt's outcome: (sms, outcome kind, answered at); the metrics.
        self.on_outcome: Callable[[dict, str, dt.datetime], None] | None = None
        self.store_backoff_s = 0.0
        self.unreachable_since: dt.datetime | None = None
        self.next_probe_at: dt.datetime | None = None  # during an outage
        self._outage_logged_at: dt.datetime | None = None
        self._held_logged_at: dt.datetime | None = None  # when held answers were logged
        self._failing: dict[int, tuple[dt.datetime, int]] = {}  # sms id: (logged at, since)

    def store_failed(self) -> float:
        """The pause before the next try to store, growing to MAX_STORE_BACKOFF_S."""
        self.store_backoff_s = min(MAX_STORE_BACKOFF_S, max(1.0, self.store_backoff_s * 2))
        return self.store_backoff_s

    def hold(self, answer: Answered) -> None:
        """Keep an answer whose outcome could not be stored."""
        self.unstored.append(answer)
        self._held_logged_at = answer.answered_at  # its own warning says so already

    def still_held(self, now: dt.datetime, error: Exception) -> None:
        """Storing the held answers failed again: say so at most every LOG_EVERY_S."""
        if self._held_logged_at is None or (
                now - self._held_logged_at).total_seconds() >= LOG_EVERY_S:
            self._held_logged_at = now
            log.warning("%d answer(s) from %s still not stored (%s): nothing is "
                        "pushed until they are", len(self.unstored), self.taker,
                        error if isinstance(error, Unavailable) else repr(error))

    def probe_wait_s(self, now: dt.datetime) -> float:
        """During an outage, how long until the next probe may go out (0 otherwise)."""
        if self.unreachable_since is None or self.next_probe_at is None:
            return 0.0
        return max(0.0, (self.next_probe_at - now).total_seconds())

    def note(self, now: dt.datetime, sms: dict, outcome: Outcome, retry_s: float,
             waiting: Callable[[], int]) -> None:
        """Log one attempt's outcome, a repeating failure at most every LOG_EVERY_S."""
        if self.on_outcome is not None:
            try:
                self.on_outcome(sms, outcome.kind, now)
            except Exception:  # counting must never stop the pushes
                log.exception("could not count a push")
        if outcome.unreachable:
            self.next_probe_at = now + dt.timedelta(seconds=retry_s)
            if self.unreachable_since is None:
                self.unreachable_since = self._outage_logged_at = now
                log.warning("%s cannot be reached (%s): %d SMS wait; the oldest is "
                            "tried again %g s after each failed try until %s answers, "
                            "then every due SMS at once",
                            self.taker, outcome.detail, waiting(), retry_s, self.taker)
            elif (now - self._outage_logged_at).total_seconds() >= LOG_EVERY_S:
                self._outage_logged_at = now
                log.warning("%s still cannot be reached, for %d s now (%s): %d SMS "
                            "wait", self.taker, (now - self.unreachable_since).total_seconds(),
                            outcome.detail, waiting())
            return
        if self.unreachable_since is not None:
            log.info("%s answers again after %d s: every due SMS is sent now",
                     self.taker, (now - self.unreachable_since).total_seconds())
            self.unreachable_since = self._outage_logged_at = self.next_probe_at = None
        if outcome.kind == "delivered":
            self._failing.pop(sms["id"], None)
            log.info("SMS %d delivered to %s", sms["id"], self.taker)
        elif outcome.kind == "terminal":
            self._failing.pop(sms["id"], None)
            log.warning("SMS %d refused by %s (%s): not sent again", sms["id"],
                        self.taker, outcome.detail)
        elif sms["id"] not in self._failing:
            self._failing[sms["id"]] = (now, 0)
            log.warning("SMS %d not delivered (%s): retrying every %g s", sms["id"],
                        outcome.detail, retry_s)
        else:
            logged_at, since = self._failing[sms["id"]]
            if (now - logged_at).total_seconds() >= LOG_EVERY_S:
                self._failing[sms["id"]] = (now, 0)
                log.warning("SMS %d still not delivered after %d more attempts (%s): "
                            "retrying every %g s", sms["id"], since + 1, outcome.detail,
                            retry_s)
            else:
                self._failing[sms["id"]] = (logged_at, since + 1)


def store_held(db: Database, now: dt.datetime, state: PushState, retry_s: float,
               rules: Rules) -> bool:
    """Store the answers that could not be stored before, each with the times of its own
    attempt, in one transaction. True when none is left. While they stay held, says so
    every LOG_EVERY_S."""
    if not state.unstored:
        return True
    try:
        record_answers(db, state.unstored, retry_s, rules)
    except Exception as error:  # whatever it is, Onlinesim's word stays in memory
        state.still_held(now, error)
        return False
    for answer in state.unstored:
        log.info("stored %s's answer to SMS %d (%s), held since %s", state.taker,
                 answer.sms["id"], answer.outcome.kind, to_text(answer.answered_at))
    state.unstored.clear()
    state.store_backoff_s = 0.0
    return True


def waiting_count(db: Database, route: str | None = None) -> int:
    """How many SMS wait in the outbox (of one route, if given)."""
    if route is None:
        return db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'pending'")["n"]
    return db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'pending' AND route = ?",
                  (route,))["n"]


def push_due(db: Database, clock: Clock, *, url: str, api_key: str, retry_s: float,
             timeout_s: float, rules: Rules, state: PushState | None = None,
             sender: Callable | None = None, should_stop: Callable[[], bool] = lambda: False,
             parallel: int = default("push_parallel"), route: str = RENT_ROUTE,
             wire: Wire | None = None) -> Round:
    """Send every SMS of `route` due now, oldest first, `parallel` at a time, until none
    is due or `should_stop()`; then wait for the attempts in flight and store their
    outcomes.

    At most one SMS of an operation is in flight (see the module's docstring for the
    order within a rental). `sender(url, body, api_key, timeout_s) -> Outcome` makes one
    attempt, on a thread of its own; by default a `Link` kept for this round only. `wire`:
    the buyer's protocol (Onlinesim's for `route` by default).

    First stores any answer held from an earlier round; while one is held, or while
    writes to the database are failing, nothing is sent (its answer could not be stored
    either). Sends nothing more after the first attempt that found no Onlinesim at all
    (timeout, refused connection) or whose outcome could not be stored. During an outage,
    sends nothing until `state.probe_wait_s()` has passed, however often called, and then
    the probe alone: more only once Onlinesim answered it.
    """
    state = state or PushState(buyers.taker(route))
    result = Round()
    if not store_held(db, clock.now(), state, retry_s, rules) or db.health.failing:
        result.store_failed = True
        return result
    if state.probe_wait_s(clock.now()) > 0:
        result.unreachable = True
        return result
    wire = wire or onlinesim_wire(route)
    link = Link(clock, read=wire.read) if sender is None else None
    attempt = _Attempts(sender or link, clock, url=url, api_key=api_key, timeout_s=timeout_s,
                        wire=wire)
    # Every SMS from the moment it is handed to a thread until its outcome is stored (or
    # held): the operations they belong to send nothing else meanwhile.
    in_flight: dict[int, dict] = {}
    sending = True
    try:
        while True:
            limit = 1 if state.unreachable_since is not None else max(1, parallel)
            while sending and len(in_flight) < limit and not should_stop():
                sms = next_due(db, clock.now(), busy=in_flight.values(), route=route)
                if sms is None:
                    break
                in_flight[sms["id"]] = sms
                attempt.start(sms)
                result.attempts += 1
            if not in_flight:
                return result
            # Every answer that has come, stored first (one commit), logged after.
            answers = attempt.answers()
            if not store_outcomes(db, state, answers, retry_s, rules):
                result.store_failed = True
                sending = False
            for answer in answers:
                state.note(answer.answered_at, answer.sms, answer.outcome, retry_s,
                           lambda: waiting_count(db, route))
                del in_flight[answer.sms["id"]]
                if answer.outcome.unreachable:
                    result.unreachable = True
                    sending = False
    finally:
        attempt.close()
        if link is not None:
            link.close()


def store_outcomes(db: Database, state: PushState, answers: list[Answered], retry_s: float,
                   rules: Rules) -> bool:
    """Store attempts' outcomes; False if they could not be. Onlinesim's word (delivered,
    terminal) is then held in `state` to be stored later; a retry needs no keeping."""
    try:
        record_answers(db, answers, retry_s, rules)
        return True
    except Exception as error:
        # Any failure, not only Unavailable: an answer lost here would have the SMS
        # pushed again at every round, forever.
        for answer in answers:
            if answer.outcome.kind != "retry":
                state.hold(answer)
        one = len(answers) == 1
        log.warning("%s's %s to SMS %s (%s) cannot be stored yet (%s): kept in "
                    "memory, and nothing is pushed until %s stored",
                    state.taker, "answer" if one else "answers",
                    ", ".join(str(a.sms["id"]) for a in answers),
                    ", ".join(a.outcome.kind for a in answers), error,
                    "it is" if one else "they are",
                    exc_info=not isinstance(error, Unavailable))
        return False


class _Attempts:
    """The attempts of one round, on daemon threads (so an attempt that hangs can never
    keep the process from exiting), each answer handed back on a queue to the thread that
    stores it. The threads last for the round: starting one per attempt cost a burst more
    than its pushes' own HTTP. There are always as many threads as attempts not yet
    answered, so an attempt never waits for a thread held by one that hangs."""

    def __init__(self, sender: Callable, clock: Clock, *, url: str, api_key: str,
                 timeout_s: float, wire: Wire):
        self._sender, self._clock = sender, clock
        self._url, self._api_key, self._timeout_s = url, api_key, timeout_s
        self._wire = wire
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = 0
        self._unanswered = 0  # started, and not yet returned by answers()

    def start(self, sms: dict) -> None:
        self._unanswered += 1
        if self._threads < self._unanswered:
            threading.Thread(target=self._work, name=f"rentbox-push-{self._threads + 1}",
                             daemon=True).start()
            self._threads += 1
        self._todo.put(sms)

    def close(self) -> None:
        """Let the round's threads end (each after its attempt, if one is running)."""
        for _ in range(self._threads):
            self._todo.put(None)
        self._threads = 0

    def answers(self) -> list[Answered]:
        """The attempts that have ended, waiting for the next one if none has. Each
        attempt ends within its own timeouts, so this wait ends too."""
        ended = [self._answers.get()]
        while True:
            try:
                ended.append(self._answers.get_nowait())
            except queue.Empty:
                self._unanswered -= len(ended)
                return ended

    def _work(self) -> None:
        while (sms := self._todo.get()) is not None:
            self._attempt(sms)

    def _attempt(self, sms: dict) -> None:
        sent_at = self._clock.now()
        try:
            outcome = self._sender(self._url, self._wire.body(sms, self._api_key),
                                   self._api_key, self._timeout_s)
        except Exception as error:  # a bug, not Onlinesim: the SMS must not be stuck
            # The frames, not the message: a message may quote the request (its key).
            log.error("push of SMS %d failed inside rentbox (%s); retrying later\n%s",
                      sms["id"], type(error).__name__,
                      "".join(traceback.format_tb(error.__traceback__)).rstrip())
            outcome = Outcome("retry", f"failed inside rentbox: {type(error).__name__}")
        self._answers.put(Answered(sms, outcome, sent_at, self._clock.now()))


class Pusher(Worker):
    """The background thread that empties one route of the outbox. `wake()` after storing
    an SMS."""

    # How often the outbox is looked at even without a wake-up: an SMS stored by another
    # process (`rentbox sms add`) is pushed within this many seconds.
    POLL_S = 1.0

    def __init__(self, connections: Connections, clock: Clock, *, url: str, api_key: str,
                 retry_s: float, timeout_s: float, rules: Rules,
                 parallel: int = default("push_parallel"), sender: Callable | None = None,
                 route: str = RENT_ROUTE, wire: Wire | None = None):
        self.name = "rentbox-push" if route == RENT_ROUTE else f"rentbox-push-{route}"
        self.route = route
        super().__init__()
        self._connections = connections
        self._clock = clock
        wire = wire or onlinesim_wire(route)
        # Kept for the Pusher's life: connections stay open from one round to the next.
        self.link = Link(clock, read=wire.read) if sender is None else None
        self._options = dict(url=url, api_key=api_key, retry_s=retry_s, timeout_s=timeout_s,
                             rules=rules, parallel=parallel, sender=sender or self.link,
                             route=route, wire=wire)
        self.state = PushState(buyers.taker(route))
        self._wake = threading.Event()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 15) -> None:
        """Stop after the attempts in flight, if any (each has its own timeout)."""
        self._stop.set()  # before the wake-up, which the loop answers by looking at it
        self._wake.set()
        super().stop(timeout_s)
        if self.link is not None:
            self.link.close()
        if self.state.unstored:
            log.error("stopping with %d answer(s) from %s not stored: those SMS will be "
                      "sent again after the restart", len(self.state.unstored),
                      self.state.taker)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait_s = self.round()
            except Exception:
                log.exception("push round failed; trying again in %g s", self.POLL_S)
                wait_s = self.POLL_S
            # Waiting on an Event, not sleeping: wake() and stop() end the wait at once.
            self._wake.wait(wait_s)

    def round(self) -> float:
        """One round; returns how long to wait before the next one."""
        db = self._connections.get()
        done = push_due(db, self._clock, should_stop=self._stop.is_set, state=self.state,
                        **self._options)
        if done.store_failed:
            return self.state.store_failed()
        if done.unreachable:
            # Onlinesim is not there: wait for the next probe (retry_s after the last one
            # failed), even if woken meanwhile.
            return self.state.probe_wait_s(self._clock.now())
        due_in = seconds_until_next(db, self._clock.now(), self.route)
        return self.POLL_S if due_in is None else min(self.POLL_S, due_in)
