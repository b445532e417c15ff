import json

import pytest

from rentbox import push, sms
from rentbox.config import Rules

from conftest import API_KEY, START, FakeOnlinesim, add_numbers, refused_url
from rentbox import operations
from rentbox.protocol import NumberRequest

RULES = Rules()


@pytest.mark.parametrize("status, body, kind, detail", [
    (200, b'{"status":"SUCCESS"}', "delivered", ""),
    (200, b"", "delivered", ""),
    (200, b"OK", "delivered", ""),
    (200, b"success", "delivered", ""),
    (200, b"<html>Welcome</html>", "retry", "HTTP 200: <html>Welcome</html>"),
    (302, b"", "retry", "HTTP 302"),
    (200, b'{"result": 1}', "delivered", ""),
    (200, b'{"status":"ERROR","error":"NO_OPERATION"}', "terminal", "NO_OPERATION"),
    (200, b'{"status":"NO_OP"}', "terminal", "NO_OP"),
    (400, b'{"response":"BAD_SERVICE"}', "terminal", "BAD_SERVICE"),
    (200, b"IGNORED", "terminal", "IGNORED"),
    (403, b"SERVICE_BAN", "terminal", "SERVICE_BAN"),
    (200, b'{"status":"ERROR"}', "retry", "HTTP 200 with status ERROR"),
    (200, b'{"error":"TOO_MANY_ATTEMPTS"}', "retry", "HTTP 200 with error TOO_MANY_ATTEMPTS"),
    (200, b"TOO_MANY_ATTEMPTS", "retry", "HTTP 200: TOO_MANY_ATTEMPTS"),
    (200, b"ERROR_SQL", "retry", "HTTP 200: ERROR_SQL"),
    (200, b'{"status":"SUCCESS","error":null}', "delivered", ""),
    (200, b"[1]", "retry", "HTTP 200: [1]"),
    (429, b'{"error":"TOO_MANY_ATTEMPTS"}', "retry", 'HTTP 429: {"error":"TOO_MANY_ATTEMPTS"}'),
    (500, b"", "retry", "HTTP 500"),
    (502, b"<html>bad gateway</html>", "retry", "HTTP 502: <html>bad gateway</html>"),
    # An error named in `response` (issue 20, item 1): sent again, never "delivered".
    (200, b'{"response":"ERROR_WRONG_KEY"}', "retry", "HTTP 200 with response ERROR_WRONG_KEY"),
    (200, b'{"response":"TOO_MANY_ATTEMPTS"}', "retry",
     "HTTP 200 with response TOO_MANY_ATTEMPTS"),
    (200, b'{"status":"SUCCESS","response":"ERROR_WRONG_KEY"}', "retry",
     "HTTP 200 with response ERROR_WRONG_KEY"),
    (200, b'{"status":"SUCCESS","error":"ERROR_SQL"}', "retry", "HTTP 200 with error ERROR_SQL"),
    (200, b'{"status":"OK","response":"ERROR"}', "retry", "HTTP 200 with response ERROR"),
    (200, b'{"response":1}', "delivered", ""),
    (200, b'{"response":"SUCCESS"}', "delivered", ""),
    (200, b'{"status":true}', "delivered", ""),
    (200, b'{"status":"success","error":""}', "delivered", ""),
    (200, b'{"status":"SUCCESS","error":false}', "delivered", ""),
    (200, b'{"status":"SUCCESS","error":0}', "delivered", ""),
    # A code with trailing words, in a field or in plain text: terminal, not retried for ever.
    (200, b"NO_OPERATION: no active operation", "terminal", "NO_OPERATION"),
    (200, b'{"error":"NO_OPERATION: no active operation"}', "terminal", "NO_OPERATION"),
    (200, b'{"status":"ERROR","response":"no_operation"}', "terminal", "NO_OPERATION"),
    (200, b"ERROR BAD_SERVICE (bank)", "terminal", "BAD_SERVICE"),
    # ... but a proxy's page that happens to say a word is not a code.
    (502, b"<html>request ignored</html>", "retry", "HTTP 502: <html>request ignored</html>"),
    (200, b"TOO_MANY_ATTEMPTS: wait", "retry", "HTTP 200: TOO_MANY_ATTEMPTS: wait"),
])
def test_classify(status, body, kind, detail):
    assert push.classify(status, body) == push.Outcome(kind, detail)


@pytest.fixture
def routed(db, clock):
    """One open rental on +4915123456789 with one SMS waiting in the outbox."""
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    operations.open_operation(db, clock, NumberRequest(100), RULES)
    accepted = sms.accept_sms(db, clock, sms.IncomingSms(
        source="api", to="+49 151 23456789", sender="Instagram",
        text="784958 is your secret code ✅ Код"), RULES)
    return accepted.sms_id


def deliver(db, clock, url, **kwargs):
    options = dict(url=url, api_key=API_KEY, retry_s=10, timeout_s=1, rules=RULES)
    options.update(kwargs)
    return push.push_due(db, clock, **options).attempts


def sms_row(db, sms_id):
    return db.row("SELECT push_state, attempts, next_attempt_at, last_error, delivered_at"
                  " FROM sms WHERE id = ?", (sms_id,))


def test_delivery_sends_the_exact_payload_and_headers(db, clock, routed, onlinesim):
    assert deliver(db, clock, onlinesim.url) == 1
    [request] = onlinesim.requests
    assert request["path"] == "/pushSmsRent"
    assert request["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert request["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert request["headers"]["User-Agent"].startswith("rentbox/")
    assert json.loads(request["body"].decode("utf-8")) == {
        "smsId": routed, "phoneFrom": "Instagram", "phone": "4915123456789",
        "text": "784958 is your secret code ✅ Код", "action": "PUSH_SMS", "key": API_KEY,
        "service": "rent"}
    assert sms_row(db, routed) == {"push_state": "delivered", "attempts": 1,
                                   "next_attempt_at": None, "last_error": None,
                                   "delivered_at": "2026-11-01T12:00:00.000000Z"}
    # Delivered is final: nothing is ever sent again.
    clock.advance(3600)
    assert deliver(db, clock, onlinesim.url) == 0
    assert len(onlinesim.requests) == 1


@pytest.mark.parametrize("failure", [(500, b"oops"), "hang", "refused"])
def test_a_failed_attempt_is_retried_after_retry_s(db, clock, routed, failure):
    fake = FakeOnlinesim([failure if failure != "refused" else (200, b""), (200, b"")],
                         hang_s=2)
    url = refused_url() if failure == "refused" else fake.url
    try:
        assert deliver(db, clock, url, timeout_s=0.5) == 1
        row = sms_row(db, routed)
        assert row["push_state"] == "pending" and row["attempts"] == 1
        assert row["next_attempt_at"] == "2026-11-01T12:00:10.000000Z"
        assert row["last_error"] == {"hang": "no answer within 0.5 s",
                                     "refused": "cannot connect: Connection refused"}.get(
            failure, "HTTP 500: oops")
        clock.advance(9.9)
        assert deliver(db, clock, url) == 0  # not due yet
        clock.advance(0.1)
        assert deliver(db, clock, fake.url) == 1
        assert sms_row(db, routed)["push_state"] == "delivered"
        assert sms_row(db, routed)["attempts"] == 2
        bodies = fake.bodies()
        assert bodies[-1]["smsId"] == routed
        assert len({json.dumps(b, sort_keys=True) for b in bodies}) == 1  # same payload
    finally:
        fake.close()


def test_terminal_answer_is_never_retried_until_requeued(db, clock, routed):
    fake = FakeOnlinesim([(200, b'{"status":"ERROR","error":"NO_OPERATION"}'), (200, b"")])
    try:
        deliver(db, clock, fake.url)
        assert sms_row(db, routed)["push_state"] == "failed"
        assert sms_row(db, routed)["last_error"] == "NO_OPERATION"
        clock.advance(3600)
        assert deliver(db, clock, fake.url) == 0
        sms.retry_sms(db, clock.now(), routed)
        assert deliver(db, clock, fake.url) == 1
        assert sms_row(db, routed)["push_state"] == "delivered"
        assert sms_row(db, routed)["attempts"] == 2
    finally:
        fake.close()


def test_an_unreachable_onlinesim_ends_the_round(db, clock, routed):
    second = sms.accept_sms(db, clock, sms.IncomingSms(
        source="api", to="+4915123456789", sender="x", text="second"), RULES).sms_id
    assert deliver(db, clock, refused_url()) == 1
    assert sms_row(db, second)["attempts"] == 0


def test_pusher_thread_pushes_at_once_when_woken(db_path, db, clock, routed, onlinesim):
    from rentbox.db import Connections

    conns = Connections(db_path)
    pusher = push.Pusher(conns, clock, url=onlinesim.url, api_key=API_KEY, retry_s=10,
                         timeout_s=2, rules=RULES)
    pusher.start()
    try:
        pusher.wake()
        assert len(onlinesim.wait_for(1)) == 1
    finally:
        pusher.stop()
        conns.close_all()
    assert not pusher._thread.is_alive()


def test_a_redirect_is_not_followed(db, clock, routed):
    fake = FakeOnlinesim([(302, b"")])
    try:
        assert deliver(db, clock, fake.url) == 1
        row = sms_row(db, routed)
        assert (row["push_state"], row["last_error"]) == ("pending", "HTTP 302")
        assert [r["path"] for r in fake.requests] == ["/pushSmsRent"]
    finally:
        fake.close()


def test_a_round_stops_when_asked(db, clock, routed, onlinesim):
    assert push.push_due(db, clock, url=onlinesim.url, api_key=API_KEY, retry_s=10,
                         timeout_s=1, rules=RULES, should_stop=lambda: True).attempts == 0
    assert onlinesim.requests == []


# ---- answers in other shapes (issue 8, item 4) ---------------------------------------

@pytest.mark.parametrize("status, body, kind", [
    (202, b"", "delivered"), (204, b"", "delivered"), (202, b'{"status":"SUCCESS"}', "delivered"),
    (202, b'{"status":"ERROR"}', "retry"),
])
def test_any_2xx_that_says_success_or_nothing_is_delivered(status, body, kind):
    assert push.classify(status, body).kind == kind


def test_a_gzip_or_deflate_answer_is_decoded_before_it_is_read():
    import gzip
    import zlib

    ok = b'{"status":"SUCCESS"}'
    assert push.decode_answer(gzip.compress(ok), "gzip") == ok
    assert push.decode_answer(zlib.compress(ok), "deflate") == ok
    raw_deflate = zlib.compressobj(wbits=-15)
    assert push.decode_answer(raw_deflate.compress(ok) + raw_deflate.flush(), "Deflate") == ok
    assert push.decode_answer(ok, None) == ok
    # A bomb is cut at the cap, not inflated into memory.
    bomb = gzip.compress(b"0" * (50 * push.MAX_ANSWER_BYTES))
    assert len(push.decode_answer(bomb, "gzip")) == push.MAX_ANSWER_BYTES


def test_raw_bytes_of_an_answer_never_reach_the_log_or_last_error():
    outcome = push.classify(200, b"\x1f\x8b\x08\x00garbage\x00\xff\xfe\r\n\x1b[31mred")
    assert outcome.kind == "retry"
    assert outcome.detail.isprintable()
    assert "\x1b" not in outcome.detail and "\x00" not in outcome.detail


class AnsweringOnlinesim:
    """A loopback PUSH_SMS endpoint that answers every push with one fixed raw answer."""

    def __init__(self, status: int, body: bytes, headers: dict):
        import http.server
        import threading

        self.requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests += 1
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if status != 204:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pushSmsRent"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status, body, headers", [
    (200, "gzip", {"Content-Encoding": "gzip"}),
    (200, "deflate", {"Content-Encoding": "deflate"}),
    (202, b"", {}),
    (204, b"", {}),
])
def test_gzip_202_and_204_answers_are_delivered_once(db, clock, routed, status, body, headers):
    import gzip
    import zlib

    if body in ("gzip", "deflate"):
        compress = gzip.compress if body == "gzip" else zlib.compress
        body = compress(b'{"status":"SUCCESS"}')
    fake = AnsweringOnlinesim(status, body, headers)
    try:
        assert deliver(db, clock, fake.url) == 1
        clock.advance(60)
        assert deliver(db, clock, fake.url) == 0
    finally:
        fake.close()
    assert fake.requests == 1
    assert sms_row(db, routed)["push_state"] == "delivered"


# ---- an acknowledgement is never lost to a local failure (item 3) ---------------------

class Sender:
    """A fake PUSH_SMS peer: records the smsIds sent, answers with `answer(now)`."""

    def __init__(self, clock, answer=lambda now: push.Outcome("delivered")):
        self.clock, self.answer, self.sent = clock, answer, []

    def __call__(self, url, body, api_key, timeout_s):
        self.sent.append(body["smsId"])
        return self.answer(self.clock.now())


def fail_to_store(monkeypatch, times, error):
    """Make push.record_answers raise `error` at its next `times` calls, then store again."""
    real_record, left = push.record_answers, [times]

    def failing_record(*args, **kwargs):
        if left[0]:
            left[0] -= 1
            raise error
        return real_record(*args, **kwargs)

    monkeypatch.setattr(push, "record_answers", failing_record)


def test_an_answer_that_cannot_be_stored_is_kept_and_the_sms_not_pushed_again(
        db, clock, routed, monkeypatch):
    from rentbox.errors import Unavailable

    real_record, failures = push.record_answers, {"left": 3}

    def failing_record(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            db.health.failed("the disk is full")
            raise Unavailable("the database cannot be written now: the disk is full")
        return real_record(*args, **kwargs)

    monkeypatch.setattr(push, "record_answers", failing_record)
    sender, state = Sender(clock), push.PushState()
    rounds = []
    for _ in range(5):
        rounds.append(push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=1,
                                    timeout_s=1, rules=RULES, state=state, sender=sender))
        clock.advance(1)
    assert sender.sent == [routed]  # pushed once, however often the store failed
    assert [r.store_failed for r in rounds] == [True, True, True, False, False]
    row = sms_row(db, routed)
    assert (row["push_state"], row["attempts"]) == ("delivered", 1)
    assert row["delivered_at"] == "2026-11-01T12:00:00.000000Z"  # when Onlinesim answered
    assert db.row("SELECT sms_accepted_at FROM operations")["sms_accepted_at"] is not None
    assert state.unstored == [] and not db.health.failing


def test_a_full_disk_never_makes_an_acknowledged_sms_go_out_twice(small_disk, onlinesim):
    """On a real full filesystem: Onlinesim says SUCCESS, the commit fails; the SMS is
    pushed once, its delivery is stored once there is room again."""
    from conftest import FakeClock, fill_disk
    from rentbox.db import open_database

    clock = FakeClock()
    db = open_database(small_disk / "rentbox.db")
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    operations.open_operation(db, clock, NumberRequest(100), RULES)
    sms_id = sms.accept_sms(db, clock, sms.IncomingSms(
        source="api", to="+4915123456789", sender="x", text="y"), RULES).sms_id
    try:
        filler = fill_disk(small_disk)
        state = push.PushState()
        options = dict(url=onlinesim.url, api_key=API_KEY, retry_s=1, timeout_s=5,
                       rules=RULES, state=state)
        for _ in range(6):  # six retry periods with the disk full
            assert push.push_due(db, clock, **options).store_failed
            clock.advance(1)
        assert len(onlinesim.requests) == 1
        assert len(state.unstored) == 1
        assert sms_row(db, sms_id)["push_state"] == "pending"  # reads still work
        filler.unlink()
        assert not push.push_due(db, clock, **options).store_failed
        assert len(onlinesim.requests) == 1
        row = sms_row(db, sms_id)
        assert (row["push_state"], row["attempts"]) == ("delivered", 1)
        assert row["delivered_at"] == push.to_text(START)  # when Onlinesim answered
    finally:
        db.close()


# ---- the cadence during an outage (item 5) and its log lines (item 6) -----------------

def test_during_an_outage_one_probe_per_period_then_the_whole_queue_at_once(db, clock, routed):
    for i in range(199):
        sms.accept_sms(db, clock, sms.IncomingSms(source="api", to="+4915123456789",
                                                  sender="x", text=f"m{i}"), RULES)
    outage_ends = clock.now() + __import__("datetime").timedelta(minutes=10)
    sender = Sender(clock, lambda now: push.Outcome("retry", "cannot connect", True)
                    if now < outage_ends else push.Outcome("delivered"))
    state, retry_s = push.PushState(), 2.0
    per_round = []
    while clock.now() < outage_ends:
        done = push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=retry_s,
                             timeout_s=1, rules=RULES, state=state, sender=sender)
        per_round.append(done.attempts)
        assert done.unreachable
        clock.advance(retry_s)  # what Pusher.round() waits after an unreachable round
    assert set(per_round) == {1}  # one probe per period, nothing hammered
    assert len(per_round) == 300
    done = push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=retry_s, timeout_s=1,
                         rules=RULES, state=state, sender=sender)
    # The first round after the outage: every SMS at once.
    assert done.attempts == 200
    assert db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'delivered'")["n"] == 200


def test_a_repeating_failure_is_logged_first_then_every_few_minutes(db, clock, routed, caplog):
    import logging

    sender = Sender(clock, lambda now: push.Outcome("retry", "HTTP 500"))
    state = push.PushState()
    with caplog.at_level(logging.INFO, logger="rentbox.push"):
        for _ in range(600):  # 20 minutes at one attempt every 2 s
            push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=2, timeout_s=1,
                          rules=RULES, state=state, sender=sender)
            clock.advance(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(sender.sent) == 600
    assert lines[0] == f"SMS {routed} not delivered (HTTP 500): retrying every 2 s"
    assert lines[1] == (f"SMS {routed} still not delivered after 150 more attempts "
                        "(HTTP 500): retrying every 2 s")
    assert len(lines) == 4  # at 0, 5, 10 and 15 minutes


def test_an_outage_is_logged_once_then_every_few_minutes_and_when_it_ends(db, clock, routed,
                                                                         caplog):
    import datetime as dt
    import logging

    ends = clock.now() + dt.timedelta(minutes=12)
    sender = Sender(clock, lambda now: push.Outcome("retry", "cannot connect", True)
                    if now < ends else push.Outcome("delivered"))
    state = push.PushState()
    with caplog.at_level(logging.INFO, logger="rentbox.push"):
        while not db.row("SELECT delivered_at FROM sms")["delivered_at"]:
            push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=10, timeout_s=1,
                          rules=RULES, state=state, sender=sender)
            clock.advance(10)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("Onlinesim cannot be reached (cannot connect): 1 SMS wait; the "
                        "oldest is tried again 10 s after each failed try until Onlinesim "
                        "answers, then every due SMS at once")
    assert lines[1].startswith("Onlinesim still cannot be reached, for 300 s now")
    assert lines[2].startswith("Onlinesim still cannot be reached, for 600 s now")
    assert lines[3] == "Onlinesim answers again after 720 s: every due SMS is sent now"
    assert lines[4] == f"SMS {routed} delivered to Onlinesim"
    assert len(lines) == 5


# ---- follow-ups: wake-ups during an outage, any store failure, the original sent_at ----

def test_new_sms_during_an_outage_do_not_add_probes(db, clock, routed):
    """A wake-up for every SMS that arrives (Pusher.wake) must not turn into a probe for
    each: while Onlinesim is unreachable, one attempt per retry period, whatever wakes."""
    sender = Sender(clock, lambda now: push.Outcome("retry", "cannot connect", True))
    state, retry_s = push.PushState(), 2.0
    attempts_at = []
    for i in range(40):  # 20 s of an outage, an SMS arriving every 0.5 s
        sms.accept_sms(db, clock, sms.IncomingSms(source="api", to="+4915123456789",
                                                  sender="x", text=f"w{i}"), RULES)
        done = push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=retry_s,
                             timeout_s=1, rules=RULES, state=state, sender=sender)
        assert done.unreachable
        attempts_at += [clock.now()] * done.attempts
        clock.advance(0.5)
    gaps = {(b - a).total_seconds() for a, b in zip(attempts_at, attempts_at[1:])}
    assert len(attempts_at) == 10 and gaps == {retry_s}


def test_the_pusher_waits_for_the_next_probe_even_when_woken(db_path, db, clock, routed):
    from rentbox.db import Connections

    sender = Sender(clock, lambda now: push.Outcome("retry", "cannot connect", True))
    conns = Connections(db_path)
    pusher = push.Pusher(conns, clock, url="x", api_key=API_KEY, retry_s=10, timeout_s=1,
                         rules=RULES, sender=sender)
    try:
        assert pusher.round() == 10  # the probe failed: the next one in 10 s
        clock.advance(4)
        assert pusher.round() == 6  # woken early: nothing sent, the wait goes on
        clock.advance(6)
        assert pusher.round() == 10
    finally:
        conns.close_all()
    assert sender.sent == [routed, routed]


def test_the_pusher_backs_off_while_an_answer_cannot_be_stored(db_path, db, clock, routed,
                                                               monkeypatch):
    from rentbox.db import Connections
    from rentbox.errors import Unavailable

    fail_to_store(monkeypatch, 6, Unavailable("the database cannot be written now: full"))
    sender = Sender(clock)
    conns = Connections(db_path)
    pusher = push.Pusher(conns, clock, url="x", api_key=API_KEY, retry_s=1, timeout_s=1,
                         rules=RULES, sender=sender)
    try:
        waits = []
        for _ in range(7):
            waits.append(pusher.round())
            clock.advance(waits[-1])
    finally:
        conns.close_all()
    assert waits[:6] == [1, 2, 4, 8, push.MAX_STORE_BACKOFF_S, push.MAX_STORE_BACKOFF_S]
    assert waits[6] <= pusher.POLL_S
    assert sender.sent == [routed]
    assert sms_row(db, routed)["push_state"] == "delivered"


def test_any_failure_to_store_an_answer_keeps_it_and_does_not_push_again(
        db, clock, routed, monkeypatch, caplog):
    """Not only Unavailable: a store that fails for any reason (a corrupt page, a bug)
    must not lose Onlinesim's word and send the SMS again at every round."""
    import logging
    import sqlite3

    fail_to_store(monkeypatch, 3, sqlite3.DatabaseError("database disk image is malformed"))
    sender, state = Sender(clock), push.PushState()
    with caplog.at_level(logging.INFO, logger="rentbox.push"):
        rounds = []
        for _ in range(5):
            rounds.append(push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=1,
                                        timeout_s=1, rules=RULES, state=state,
                                        sender=sender))
            clock.advance(1)
    assert sender.sent == [routed]
    assert [r.store_failed for r in rounds] == [True, True, True, False, False]
    assert sms_row(db, routed)["push_state"] == "delivered"
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].exc_info  # once, with the traceback of the bug


def test_a_held_answer_is_stored_with_its_own_times_after_the_window(db, clock, routed,
                                                                     monkeypatch):
    """Sent within the guard window, stored only after it: the rental met the window
    (Onlinesim saw the SMS in time), and the delivery is dated by Onlinesim's answer."""
    import datetime as dt

    from rentbox.errors import Unavailable

    real_record, calls = push.record_answers, []

    def record_after_the_window(db_, answers, *args, **kwargs):
        calls.extend(a.answered_at for a in answers)
        if clock.now() < START + dt.timedelta(seconds=RULES.guard_s + 60):
            raise Unavailable("the database cannot be written now: the disk is full")
        return real_record(db_, answers, *args, **kwargs)

    monkeypatch.setattr(push, "record_answers", record_after_the_window)
    clock.advance(RULES.guard_s - 30)  # sent and answered 30 s before the window ends
    answered = clock.now()
    sender, state = Sender(clock), push.PushState()
    while push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=10, timeout_s=1,
                        rules=RULES, state=state, sender=sender).store_failed:
        clock.advance(10)
    assert sender.sent == [routed]
    assert set(calls) == {answered}
    assert sms_row(db, routed)["delivered_at"] == push.to_text(answered)
    assert db.row("SELECT sms_accepted_at FROM operations")["sms_accepted_at"] == \
        push.to_text(answered)


def test_an_answer_held_for_long_is_logged_again_every_few_minutes(db, clock, routed,
                                                                  monkeypatch, caplog):
    import logging

    from rentbox.errors import Unavailable

    fail_to_store(monkeypatch, 10**6,
                  Unavailable("the database cannot be written now: the disk is full"))
    sender, state = Sender(clock), push.PushState()
    with caplog.at_level(logging.INFO, logger="rentbox.push"):
        for _ in range(72):  # 12 minutes, a try to store every 10 s
            push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=1, timeout_s=1,
                          rules=RULES, state=state, sender=sender)
            clock.advance(10)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sender.sent == [routed]
    assert lines == [
        f"Onlinesim's answer to SMS {routed} (delivered) cannot be stored yet (the database "
        "cannot be written now: the disk is full): kept in memory, and nothing is pushed "
        "until it is stored"] + ["1 answer(s) from Onlinesim still not stored (the database "
                                 "cannot be written now: the disk is full): nothing is "
                                 "pushed until they are"] * 2


def test_a_write_lock_held_by_another_process_does_not_make_an_sms_go_out_twice(
        db_path, db, clock, routed, monkeypatch):
    """The other real case of item 3: another process (a CLI import) holds SQLite's write
    lock past the busy timeout just as Onlinesim answers SUCCESS."""
    import sqlite3

    from rentbox import db as db_module

    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_S", 0.2)
    # Used from the attempt's own thread (the sender runs there).
    other = sqlite3.connect(str(db_path), timeout=0.2, isolation_level=None,
                            check_same_thread=False)

    def answer_then_lock(now):
        other.execute("BEGIN IMMEDIATE")  # taken while the push is in flight
        return push.Outcome("delivered")

    sender, state = Sender(clock, answer_then_lock), push.PushState()
    options = dict(url="x", api_key=API_KEY, retry_s=1, timeout_s=1, rules=RULES,
                   state=state, sender=sender)
    try:
        for _ in range(4):
            assert push.push_due(db, clock, **options).store_failed
            clock.advance(1)
        assert sender.sent == [routed] and db.health.failing
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert not push.push_due(db, clock, **options).store_failed
    assert sender.sent == [routed]
    assert sms_row(db, routed)["push_state"] == "delivered" and not db.health.failing


# ---- several pushes in flight, kept-alive connections (issue 11, item 4) --------------

def open_rentals(db, clock, count):
    """`count` open rentals; returns their numbers as SMS are addressed to them."""
    add_numbers(db, START, *[(f"+49151234{i:05d}", "germany", "telekom")
                             for i in range(count)])
    for _ in range(count):
        operations.open_operation(db, clock, NumberRequest(100), RULES)
    return [r["number"] for r in db.rows("SELECT number FROM numbers ORDER BY id")]


def add_sms(db, clock, number, text):
    return sms.accept_sms(db, clock, sms.IncomingSms(
        source="api", to="+" + number, sender="x", text=text), RULES).sms_id


class RentalAwareSender:
    """A fake Onlinesim that answers by text ("bank": BAD_SERVICE, "flaky": an error at the
    first try), and checks that no two SMS of one phone are ever in flight at once. The
    first `parallel` calls meet at a barrier: they can only return if they were all in
    flight together."""

    def __init__(self, parallel):
        import threading

        self.lock = threading.Lock()
        self.barrier = threading.Barrier(parallel) if parallel > 1 else None
        self.in_flight, self.overlaps, self.sent, self.calls = set(), [], [], 0

    def __call__(self, url, body, api_key, timeout_s):
        with self.lock:
            first = self.calls < (self.barrier.parties if self.barrier else 0)
            self.calls += 1
            if body["phone"] in self.in_flight:
                self.overlaps.append(body["smsId"])
            self.in_flight.add(body["phone"])
            tries = self.sent.count(body["smsId"])
            self.sent.append(body["smsId"])
        if first:
            self.barrier.wait(timeout=5)
        with self.lock:
            self.in_flight.discard(body["phone"])
        if "bank" in body["text"]:
            return push.Outcome("terminal", "BAD_SERVICE")
        if "flaky" in body["text"] and tries == 0:
            return push.Outcome("retry", "HTTP 500")
        return push.Outcome("delivered")


@pytest.mark.parametrize("parallel", [1, 4])
def test_several_in_flight_each_sms_once_in_order_within_its_rental(db, clock, parallel):
    numbers = open_rentals(db, clock, 6)
    texts = ["code", "bank", "flaky", "code", "code"]
    ids = {n: [add_sms(db, clock, n, f"{t} {i}") for i, t in enumerate(texts)]
           for n in numbers}
    sender, state = RentalAwareSender(parallel), push.PushState()
    for _ in range(5):
        push.push_due(db, clock, url="x", api_key=API_KEY, retry_s=10, timeout_s=1,
                      rules=RULES, state=state, sender=sender, parallel=parallel)
        clock.advance(10)
    assert sender.overlaps == []  # never two SMS of one rental at once
    by_id = {s: n for n, sms_ids in ids.items() for s in sms_ids}
    for number, sms_ids in ids.items():
        first_tries = [s for s in dict.fromkeys(sender.sent) if by_id[s] == number]
        assert first_tries == sms_ids  # in the order they arrived
        bank, flaky = sms_ids[1], sms_ids[2]
        assert [sender.sent.count(s) for s in sms_ids] == [1, 1, 2, 1, 1]
        assert sms_row(db, bank)["push_state"] == "failed"
        # The flaky one waited for its retry without holding back the later ones.
        assert sender.sent.index(sms_ids[3]) < len(sender.sent) - sender.sent[::-1].index(flaky)
    states = db.rows("SELECT push_state, count(*) AS n FROM sms GROUP BY push_state")
    assert states == [{"push_state": "delivered", "n": 24}, {"push_state": "failed", "n": 6}]
    clock.advance(3600)
    assert deliver(db, clock, "x", sender=sender) == 0  # nothing is ever sent again


def test_a_rounds_attempts_share_at_most_parallel_threads_that_end_with_it(db, clock):
    import threading

    numbers = open_rentals(db, clock, 6)
    for number in numbers:
        for i in range(4):
            add_sms(db, clock, number, f"code {i}")
    lock, threads, stuck = threading.Lock(), [], threading.Event()

    def sender(url, body, api_key, timeout_s):
        with lock:
            threads.append(threading.current_thread())
        if body["phone"] == numbers[0] and not stuck.is_set():
            stuck.set()
            stuck.wait(0.3)  # one attempt hangs: the others must go on meanwhile
            return push.Outcome("retry", "timed out")
        return push.Outcome("delivered")

    before = set(threading.enumerate())
    assert deliver(db, clock, "x", sender=sender, parallel=3) == 24
    # 24 attempts, not 24 threads: no more threads than attempts in flight at once.
    assert 1 < len(set(threads)) <= 3
    # Every thread the round started (one may have had nothing to do) ends with it.
    started = {t for t in threading.enumerate() if t not in before} | set(threads)
    assert len(started) <= 3
    for thread in started:
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_within_a_rental_order_is_kept_when_onlinesim_answers_slowly(db, clock):
    numbers = open_rentals(db, clock, 2)
    ids = {n: [add_sms(db, clock, n, f"m{i}") for i in range(3)] for n in numbers}
    fake = FakeOnlinesim(["hang"], hang_s=0.2)
    try:
        assert deliver(db, clock, fake.url, parallel=4, timeout_s=5) == 6
    finally:
        fake.close()
    phone_of = [json.loads(r["body"])["phone"] for r in fake.requests]
    id_of = [json.loads(r["body"])["smsId"] for r in fake.requests]
    for number in numbers:
        mine = [(what, id_of[i]) for what, i in fake.events if phone_of[i] == number]
        # One at a time: each answered before the next one was received, in order.
        assert mine == [(what, s) for s in ids[number] for what in ("received", "answered")]
    # ... while the two rentals were pushed side by side.
    first_answer = next(i for i, (what, _) in enumerate(fake.events) if what == "answered")
    assert {phone_of[i] for _, i in fake.events[:first_answer]} == set(numbers)
    assert db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'delivered'")["n"] == 6


def test_pushes_reuse_kept_alive_connections(db, clock):
    numbers = open_rentals(db, clock, 12)
    fake = FakeOnlinesim()
    link = push.Link(clock)
    try:
        for round_ in range(2):  # a second burst, later, on the same connections
            for n in numbers:
                add_sms(db, clock, n, f"burst {round_}")
            assert deliver(db, clock, fake.url, sender=link, parallel=3) == 12
            clock.advance(5)
        assert len(fake.requests) == 24
        assert link.opened == fake.connections <= 3
    finally:
        link.close()
        fake.close()
    assert len({b["smsId"] for b in fake.bodies()}) == 24  # each SMS once


def test_a_connection_onlinesim_closed_while_idle_is_replaced_before_use(db, clock):
    from conftest import wait_until

    numbers = open_rentals(db, clock, 1)
    fake = FakeOnlinesim()
    link = push.Link(clock)
    try:
        add_sms(db, clock, numbers[0], "first")
        assert deliver(db, clock, fake.url, sender=link) == 1
        fake.close_connections()  # Onlinesim's keep-alive timeout
        assert wait_until(lambda: all(push._is_closed_by_peer(c) for _, c, _ in link._idle))
        second = add_sms(db, clock, numbers[0], "second")
        assert deliver(db, clock, fake.url, sender=link) == 1
        assert sms_row(db, second)["push_state"] == "delivered"
        assert (len(fake.requests), fake.connections, link.opened) == (2, 2, 2)
    finally:
        link.close()
        fake.close()


def test_a_connection_idle_too_long_is_not_reused(db, clock):
    numbers = open_rentals(db, clock, 1)
    fake = FakeOnlinesim()
    link = push.Link(clock, keepalive_s=30)
    try:
        for wait_s in (30, 30.1):
            add_sms(db, clock, numbers[0], f"after {wait_s}")
            assert deliver(db, clock, fake.url, sender=link) == 1
            clock.advance(wait_s)
        add_sms(db, clock, numbers[0], "last")
        assert deliver(db, clock, fake.url, sender=link) == 1
        assert link.opened == fake.connections == 2  # reused after 30 s, not after 30.1 s
    finally:
        link.close()
        fake.close()


def test_a_request_not_written_whole_is_sent_at_once_on_a_new_connection(db, clock,
                                                                        monkeypatch):
    import http.client

    numbers = open_rentals(db, clock, 1)
    fake = FakeOnlinesim()
    link = push.Link(clock)
    try:
        add_sms(db, clock, numbers[0], "first")
        assert deliver(db, clock, fake.url, sender=link) == 1
        real_send, failures = http.client.HTTPConnection.send, [1]

        def send_failing_once(self, data):
            if failures[0]:
                failures[0] -= 1
                raise BrokenPipeError(32, "Broken pipe")  # the server had closed it
            return real_send(self, data)

        monkeypatch.setattr(http.client.HTTPConnection, "send", send_failing_once)
        second = add_sms(db, clock, numbers[0], "second")
        assert deliver(db, clock, fake.url, sender=link) == 1
        row = sms_row(db, second)
        assert (row["push_state"], row["attempts"]) == ("delivered", 1)
        assert [b["smsId"] for b in fake.bodies()] == [second - 1, second]
        assert fake.connections == 2
    finally:
        link.close()
        fake.close()


def test_a_request_that_may_have_reached_onlinesim_is_not_sent_again_at_once(db, clock):
    """Written on a kept-alive connection, then the connection closes with no answer:
    Onlinesim may have it. That is a failed attempt, retried after retry_s like any."""
    numbers = open_rentals(db, clock, 1)
    fake = FakeOnlinesim([(200, b""), "drop", (200, b"")])
    link = push.Link(clock)
    try:
        first = add_sms(db, clock, numbers[0], "first")
        second = add_sms(db, clock, numbers[0], "second")
        done = push.push_due(db, clock, url=fake.url, api_key=API_KEY, retry_s=10,
                             timeout_s=1, rules=RULES, sender=link)
        assert (done.attempts, done.unreachable) == (2, False)  # not an outage
        assert [b["smsId"] for b in fake.bodies()] == [first, second]
        row = sms_row(db, second)
        assert (row["push_state"], row["attempts"]) == ("pending", 1)
        assert row["last_error"] == "connection closed before an answer: RemoteDisconnected"
        clock.advance(10)
        assert deliver(db, clock, fake.url, sender=link) == 1
        assert sms_row(db, second)["push_state"] == "delivered"
        assert [b["smsId"] for b in fake.bodies()] == [first, second, second]
    finally:
        link.close()
        fake.close()


def test_an_error_inside_rentbox_is_a_retry_and_never_logs_the_request(db, clock, routed,
                                                                       caplog):
    import logging

    def broken(url, body, api_key, timeout_s):
        raise ValueError(f"Invalid header value {api_key!r}")

    with caplog.at_level(logging.INFO, logger="rentbox.push"):
        assert deliver(db, clock, "x", sender=broken) == 1
    row = sms_row(db, routed)
    assert (row["push_state"], row["last_error"]) == ("pending",
                                                      "failed inside rentbox: ValueError")
    assert API_KEY not in caplog.text
    assert "test_push.py" in caplog.text  # where it happened is logged


def test_during_an_outage_the_probe_goes_alone_then_several_at_once(db, clock):
    import threading

    numbers = open_rentals(db, clock, 8)
    for n in numbers:
        add_sms(db, clock, n, "code")
    up = threading.Event()

    def sender(url, body, api_key, timeout_s):
        return (push.Outcome("delivered") if up.is_set()
                else push.Outcome("retry", "cannot connect", unreachable=True))

    state = push.PushState()
    options = dict(url="x", api_key=API_KEY, retry_s=5, timeout_s=1, rules=RULES,
                   state=state, sender=sender, parallel=4)
    push.push_due(db, clock, **options)  # the outage starts: up to 4 find no Onlinesim
    for _ in range(3):
        clock.advance(5)
        assert push.push_due(db, clock, **options).attempts == 1  # the probe, alone
    clock.advance(5)
    up.set()
    assert push.push_due(db, clock, **options).attempts == 8
    assert state.unreachable_since is None


# ---- a 200 that names an error (issue 20, item 1) -------------------------------------

def test_an_error_in_response_never_meets_the_window_so_three_rentals_ban_the_number(
        db, clock):
    """`{"response": "ERROR_WRONG_KEY"}` with HTTP 200: the client never got the SMS.
    Three such rentals closed with FINISH 4 are three failures, as Onlinesim counts them:
    the number is banned and no longer offered (no over-reporting)."""
    from rentbox.protocol import FinishRequest

    rules = Rules(guard_s=60, guard_margin_s=0)
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    sender = Sender(clock, lambda now: push.classify(200, b'{"response":"ERROR_WRONG_KEY"}'))
    for _ in range(3):
        rental = operations.open_operation(db, clock, NumberRequest(100), rules)
        clock.advance(5)
        sms.accept_sms(db, clock, sms.IncomingSms(source="api", to="+4915123456789",
                                                  sender="Instagram", text="123456"), rules)
        deliver(db, clock, "x", sender=sender, rules=rules)
        clock.advance(10)
        deliver(db, clock, "x", sender=sender, rules=rules)
        operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 4), rules)
    assert db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'delivered'")["n"] == 0
    assert db.row("SELECT failures, banned_until IS NOT NULL AS banned FROM numbers") == {
        "failures": 3, "banned": 1}
    assert operations.available_counts(db, clock.now(), rules).rent == {}


# ---- SMS of a rental that ended are never pushed (issue 20, item 5) -------------------

def test_the_sms_of_a_finished_rental_expire_and_are_never_pushed_even_after_a_restart(
        db, db_path, clock, routed):
    from rentbox import events, reports
    from rentbox.db import Database
    from rentbox.errors import Conflict
    from rentbox.protocol import FinishRequest

    [rental] = db.rows("SELECT id FROM operations")
    operations.finish_operation(db, clock, FinishRequest(rental["id"], 3, 870), RULES)
    assert sms_row(db, routed)["push_state"] == "expired"
    assert db.row("SELECT last_error FROM sms")["last_error"] == (
        "its rental was closed (FINISH status 3) before Onlinesim took it")
    assert "sms_expired" in [e["kind"] for e in events.for_operation(db, rental["id"])]
    restarted = Database(db_path)  # a new server on the same file
    try:
        sender = Sender(clock)
        clock.advance(3600)
        assert deliver(restarted, clock, "x", sender=sender) == 0
        assert sender.sent == []
        assert reports.status(restarted, clock.now())["outbox"]["expired"] == 1
    finally:
        restarted.close()
    with pytest.raises(Conflict, match=f"SMS {routed} is expired; only a failed SMS is"):
        sms.retry_sms(db, clock.now(), routed)


def test_the_sms_of_a_rental_that_failed_its_window_expire(db, clock):
    from rentbox import housekeeping

    rules = Rules(guard_s=60, guard_margin_s=0)
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    operations.open_operation(db, clock, NumberRequest(100), rules)
    clock.advance(30)
    waiting = sms.accept_sms(db, clock, sms.IncomingSms(
        source="api", to="+4915123456789", sender="x", text="y"), rules)
    clock.advance(31)
    housekeeping.run_once(db, clock.now(), rules)
    assert sms_row(db, waiting.sms_id)["push_state"] == "expired"
    sender = Sender(clock)
    assert deliver(db, clock, "x", sender=sender, rules=rules) == 0


def test_a_refused_sms_of_an_ended_rental_cannot_be_retried_by_hand(db, clock, routed):
    from rentbox.errors import Conflict
    from rentbox.protocol import FinishRequest

    deliver(db, clock, "x", sender=Sender(clock, lambda now: push.Outcome("terminal",
                                                                          "BAD_SERVICE")))
    [rental] = db.rows("SELECT id FROM operations")
    operations.finish_operation(db, clock, FinishRequest(rental["id"], 4), RULES)
    with pytest.raises(Conflict, match="which has ended: it is never pushed again"):
        sms.retry_sms(db, clock.now(), routed)
    assert sms_row(db, routed)["push_state"] == "failed"


@pytest.mark.parametrize("answer, final", [("delivered", "delivered"), ("retry", "expired"),
                                           ("terminal", "expired")])
def test_a_push_on_its_way_when_the_finish_arrives_is_never_sent_again(db, db_path, clock,
                                                                      routed, answer, final):
    """The FINISH comes while Onlinesim has the push: what Onlinesim answers is stored if
    it took the SMS (the truth), and whatever it answered, the SMS is not sent again."""
    from rentbox.db import Database
    from rentbox.protocol import FinishRequest

    [rental] = db.rows("SELECT id FROM operations")

    def finish_meanwhile(now):
        other = Database(db_path)  # the web request's own connection
        try:
            operations.finish_operation(other, clock, FinishRequest(rental["id"], 3, 870), RULES)
        finally:
            other.close()
        return {"delivered": push.Outcome("delivered"),
                "retry": push.Outcome("retry", "HTTP 500"),
                "terminal": push.Outcome("terminal", "NO_OPERATION")}[answer]

    sender = Sender(clock, finish_meanwhile)
    assert deliver(db, clock, "x", sender=sender) == 1
    assert sms_row(db, routed)["push_state"] == final
    for _ in range(3):
        clock.advance(60)
        assert deliver(db, clock, "x", sender=Sender(clock)) == 0
    # The rental was closed first: a late SUCCESS does not rewrite its books.
    assert db.row("SELECT sms_accepted_at FROM operations")["sms_accepted_at"] is None


# ---- answers are stored together and first (issue 20, item 7) -------------------------

def test_every_answer_that_has_come_is_stored_in_one_commit(db, clock):
    """Three attempts ended while the pusher was busy: one transaction stores all three
    (one fsync, not three), as the urgent writer."""
    from conftest import wait_until

    numbers = open_rentals(db, clock, 3)
    for number in numbers:
        add_sms(db, clock, number, "code")
    attempts = push._Attempts(Sender(clock), clock, url="x", api_key=API_KEY, timeout_s=1,
                              wire=push.ONLINESIM_RENT)
    for row in db.rows("SELECT * FROM sms ORDER BY id"):
        attempts.start(row)
    assert wait_until(lambda: attempts._answers.qsize() == 3)
    answers = attempts.answers()
    assert len(answers) == 3
    commits, real_transaction = [], db.transaction

    def counting_transaction(**kwargs):
        commits.append(kwargs)
        return real_transaction(**kwargs)

    db.transaction = counting_transaction
    try:
        assert push.store_outcomes(db, push.PushState(), answers, 10, RULES)
    finally:
        del db.transaction
    assert commits == [{"urgent": True}]
    assert db.row("SELECT count(*) AS n FROM sms WHERE push_state = 'delivered'")["n"] == 3
