import json

import pytest

from rentbox import push, sms
from rentbox.config import Rules

from conftest import API_KEY, START, FakeOnlinesim, add_numbers, refused_url
from rentbox import operations
from rentbox.protocol import RentRequest

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
])
def test_classify(status, body, kind, detail):
    assert push.classify(status, body) == push.Outcome(kind, detail)


@pytest.fixture
def routed(db, clock):
    """One open rental on +4915123456789 with one SMS waiting in the outbox."""
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    operations.open_rent(db, clock, RentRequest(100), RULES)
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
