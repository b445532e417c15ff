"""A real waitress server on an ephemeral loopback port."""

import gzip
import http.client
import json
import logging
import threading

import pytest

from conftest import API_KEY, START, add_numbers, http_post

GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400,
              "country": "germany", "operator": "any"}


def test_concurrent_identical_requests_never_share_a_number(live_server, db):
    pool_size, callers = 20, 60
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom")
                             for i in range(pool_size)])
    barrier = threading.Barrier(callers)
    answers, failures = [], []

    def call():
        try:
            barrier.wait(timeout=10)
            answers.append(http_post(live_server.url + "/getNumberRent", GET_NUMBER))
        except Exception as error:  # pragma: no cover - reported below
            failures.append(repr(error))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    assert all(a.status == 200 for a in answers)
    bodies = [a.json for a in answers]
    issued = [b["number"] for b in bodies if b["status"] == "SUCCESS"]
    assert len(issued) == pool_size
    assert len(set(issued)) == pool_size
    assert len({b["activationId"] for b in bodies if b["status"] == "SUCCESS"}) == pool_size
    assert [b for b in bodies if b["status"] != "SUCCESS"] == \
        [{"status": "NO_NUMBERS"}] * (callers - pool_size)
    open_ops = db.execute("SELECT count(*) FROM operations WHERE state = 'open'").fetchone()[0]
    assert open_ops == pool_size


def test_serve_says_at_stop_how_many_writes_each_commit_held(start_server, db, caplog):
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom") for i in range(3)])
    server = start_server()
    with caplog.at_level(logging.INFO, logger="rentbox.server"):
        for _ in range(3):
            assert http_post(server.url + "/getNumberRent", GET_NUMBER).json["status"] == \
                "SUCCESS"
        server.stop()
    said = [r.getMessage() for r in caplog.records if "group commit" in r.getMessage()]
    # One request at a time: each write is committed on its own, at once.
    assert said == ["group commit: 3 writes of requests in 3 commits (1.0 per commit)"]


def test_gzip_both_ways_over_a_socket(live_server, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    answer = http_post(live_server.url + "/getNumberRent",
                       raw=gzip.compress(json.dumps(GET_NUMBER).encode()),
                       headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert answer.status == 200
    assert answer.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(answer.body)) == {
        "number": 4915123456789, "activationId": 1, "status": "SUCCESS"}


def test_large_body_is_refused_with_json_413(live_server, db):
    answer = http_post(live_server.url + "/getNumberRent", raw=b" " * 70_000 + b"{}")
    assert answer.status == 413
    assert answer.json == {"status": "ERROR", "error": "body is larger than 65536 bytes"}
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_health_and_unknown_method_over_a_socket(live_server):
    host, port = live_server.url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["status"] == "SUCCESS"
        assert response.getheader("Server") == "rentbox"
        conn.request("DELETE", "/")
        response = conn.getresponse()
        assert response.status == 405
        assert json.loads(response.read())["status"] == "ERROR"
    finally:
        conn.close()


# ---- SMS in, PUSH_SMS out, over real sockets ------------------------------------------

import os
import signal
import subprocess
import sys
import time

from conftest import GATEWAY_TOKEN, FakeOnlinesim, http_get_json, wait_until

SMS_AUTH = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}


def rent_one(server):
    answer = http_post(server.url + "/getNumberRent", GET_NUMBER).json
    assert answer["status"] == "SUCCESS"
    return answer


def test_sms_is_pushed_at_once_with_the_exact_payload(start_server, db, onlinesim):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    server = start_server(push_url=onlinesim.url, push_retry_s=0.2)
    rental = rent_one(server)
    text = "Код 4242 — don't share 🙊"
    stored = http_post(server.url + "/sms", {"to": "+4915123456789", "from": "Instagram",
                                             "text": text}, headers=SMS_AUTH).json
    [request] = onlinesim.wait_for(1, timeout_s=5)
    assert json.loads(request["body"]) == {
        "smsId": stored["smsId"], "phoneFrom": "Instagram", "phone": "4915123456789",
        "text": text, "action": "PUSH_SMS", "key": API_KEY, "service": "rent"}
    assert rental["number"] == 4915123456789


def test_retries_at_the_configured_cadence_until_delivered(start_server, db):
    fake = FakeOnlinesim([(500, b""), (500, b""), (200, b'{"status":"SUCCESS"}')])
    try:
        add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
        server = start_server(push_url=fake.url, push_retry_s=0.3)
        rent_one(server)
        http_post(server.url + "/sms", {"to": "4915123456789", "from": "x", "text": "y"},
                  headers=SMS_AUTH)
        requests = fake.wait_for(3, timeout_s=10)
        assert len(requests) == 3
        wait_until(lambda: db.row("SELECT push_state FROM sms")["push_state"] == "delivered", 5)
        assert db.row("SELECT push_state, attempts FROM sms") == {"push_state": "delivered",
                                                                  "attempts": 3}
    finally:
        fake.close()


def test_a_restart_pushes_the_pending_outbox(start_server, db, onlinesim):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    first = start_server()  # no push URL: SMS wait in the outbox
    rent_one(first)
    for i in range(3):
        http_post(first.url + "/sms", {"to": "4915123456789", "from": "x", "text": f"m{i}"},
                  headers=SMS_AUTH)
    first.stop()
    assert onlinesim.requests == []
    start_server(push_url=onlinesim.url)
    onlinesim.wait_for(3, timeout_s=10)
    assert sorted(b["text"] for b in onlinesim.bodies()) == ["m0", "m1", "m2"]


def test_guard_window_and_ban_with_short_settings(start_server, db, onlinesim):
    from rentbox.config import Rules

    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    server = start_server(rules=Rules(guard_s=1.0, ban_after=2, ban_s=2.0, guard_margin_s=0.1),
                          housekeeping_s=0.05, push_url=onlinesim.url)
    services = {"action": "GET_SERVICES", "key": API_KEY}

    def offered():
        return http_post(server.url + "/getServicesRent", services).json["countryList"]

    kept = rent_one(server)
    http_post(server.url + "/sms", {"to": "4915123456789", "from": "x", "text": "in time"},
              headers=SMS_AUTH)
    onlinesim.wait_for(1)  # Onlinesim accepted it within the window
    time.sleep(1.2)  # past the guard window: the rental with an SMS keeps its number
    assert offered() == []
    http_post(server.url + "/finishActivationRent", {"action": "FINISH_ACTIVATION",
              "key": API_KEY, "activationId": kept["activationId"], "status": 3, "sum": 9})
    for _ in range(2):  # two rentals without SMS: freed after the guard, then banned
        rent_one(server)
        assert offered() == []
        assert wait_until(lambda: offered() != [] or
                          db.row("SELECT banned_until FROM numbers")["banned_until"])
    assert db.row("SELECT failures, banned_until IS NOT NULL AS banned FROM numbers") == {
        "failures": 2, "banned": 1}
    assert offered() == []
    assert http_post(server.url + "/getNumberRent", GET_NUMBER).json == {"status": "NO_NUMBERS"}
    assert wait_until(lambda: offered() != [])  # the ban ends: offered again
    assert rent_one(server)["number"] == 4915123456789


def test_kill_9_loses_no_accepted_sms(tmp_path, onlinesim):
    """A real `rentbox serve` process, killed with SIGKILL right after accepting SMS."""
    db_path = tmp_path / "kill.db"
    csv = tmp_path / "pool.csv"
    csv.write_text("number,country,operator\n+4915123456789,germany,telekom\n")
    env = {**os.environ, "RENTBOX_API_KEY": API_KEY, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "RENTBOX_DB": str(db_path)}
    run = [sys.executable, "-m", "rentbox"]
    subprocess.run(run + ["numbers", "import", str(csv)], env=env, check=True,
                   capture_output=True, timeout=60)

    def serve(*extra):
        return _rentbox_serve(env, *extra)

    process, url = serve()  # no push URL yet
    try:
        rent_one_url = http_post(url + "/getNumberRent", GET_NUMBER).json
        assert rent_one_url["status"] == "SUCCESS"
        accepted = [http_post(url + "/sms", {"to": "4915123456789", "from": "x",
                                             "text": f"sms {i}"}, headers=SMS_AUTH).json
                    for i in range(20)]
        assert all(a["status"] == "SUCCESS" for a in accepted)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    process, url = serve("--push-url", onlinesim.url)
    try:
        onlinesim.wait_for(20, timeout_s=20)
        pushed = sorted(b["smsId"] for b in onlinesim.bodies())
        assert pushed == sorted(a["smsId"] for a in accepted)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _rentbox_serve(env: dict, *extra: str) -> tuple[subprocess.Popen, str]:
    """A real `rentbox serve` process on a free port: (process, its URL) once it answers."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "rentbox", "serve", "--port", str(port),
                                *extra], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http_get_json(url + "/health")["status"] == "SUCCESS":
                return process, url
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("rentbox serve did not start")


def test_kill_9_with_several_pushes_in_flight(tmp_path):
    """SIGKILL while pushes to a slow Onlinesim are in flight, 4 at a time: after the
    restart every SMS reaches Onlinesim, none whose delivery was stored is pushed again,
    and the SMS of each rental arrive in order."""
    import sqlite3

    db_path = tmp_path / "kill.db"
    csv = tmp_path / "pool.csv"
    numbers = [f"491512345678{i}" for i in range(4)]
    csv.write_text("number,country,operator\n" +
                   "".join(f"+{n},germany,telekom\n" for n in numbers))
    env = {**os.environ, "RENTBOX_API_KEY": API_KEY, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "RENTBOX_DB": str(db_path)}
    subprocess.run([sys.executable, "-m", "rentbox", "numbers", "import", str(csv)], env=env,
                   check=True, capture_output=True, timeout=60)
    slow, fast = FakeOnlinesim(["hang"], hang_s=0.3), FakeOnlinesim()

    def delivered() -> set[int]:
        books = sqlite3.connect(db_path)
        try:
            return {r[0] for r in books.execute(
                "SELECT id FROM sms WHERE push_state = 'delivered'")}
        finally:
            books.close()

    try:
        process, url = _rentbox_serve(env, "--push-url", slow.url, "--push-parallel", "4")
        try:
            for _ in numbers:
                assert http_post(url + "/getNumberRent", GET_NUMBER).json["status"] == "SUCCESS"
            accepted = [http_post(url + "/sms", {"to": numbers[i % 4], "from": "x",
                                                 "text": f"sms {i}"}, headers=SMS_AUTH).json
                        for i in range(20)]
            slow.wait_for(8, timeout_s=20)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        stored, sent_before = delivered(), {b["smsId"] for b in slow.bodies()}
        assert stored and sent_before - stored  # some delivered, some on their way
        process, url = _rentbox_serve(env, "--push-url", fast.url, "--push-parallel", "4")
        try:
            assert wait_until(lambda: len(delivered()) == 20, 20)
        finally:
            process.terminate()
            process.wait(timeout=10)
        again = [b["smsId"] for b in fast.bodies()]
        assert not stored & set(again)  # never pushed again once its SUCCESS was stored
        assert sorted(again) == sorted({a["smsId"] for a in accepted} - stored)
        for number in numbers:
            seen = [b["smsId"] for b in slow.bodies() + fast.bodies() if b["phone"] == number]
            assert list(dict.fromkeys(seen)) == sorted(set(seen))  # in order, per rental
    finally:
        slow.close()
        fast.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_server_per_database(start_server, settings):
    import dataclasses

    import pytest

    from rentbox.errors import Conflict
    from rentbox.server import Server

    start_server()
    with pytest.raises(Conflict, match=r"another rentbox serve \(pid \d+\) is running on"):
        Server(dataclasses.replace(settings, port=0))


def test_stop_before_run_is_clean(settings, db):
    from rentbox.server import Server

    server = Server(settings)
    server.stop()  # before run(): no thread to join, the lock is released
    server.run()   # returns at once
    Server(settings).stop()  # the serving lock was released


def _raw_exchange(url: str, request: bytes) -> tuple[int, bytes, bytes]:
    """Send raw bytes over a socket, return the status code, head and body of the answer."""
    import socket

    host, port = url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        # No shutdown(SHUT_WR): waitress drops a request whose client went away before a
        # worker took it. Every request here makes the server close (Connection: close,
        # or an error), and the socket timeout bounds the loop.
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def test_bad_header_bytes_and_bad_path_escapes_over_a_socket(live_server, db, caplog):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    body = json.dumps(GET_NUMBER).encode()

    def send(method: bytes, path: bytes, extra: bytes = b"") -> tuple[int, bytes]:
        status, _, answer = _raw_exchange(
            live_server.url, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n" + extra + b"Content-Length: " +
            str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        return status, answer

    bearer = b"Authorization: Bearer \xe9\r\n"  # the byte 0xE9: not UTF-8
    with caplog.at_level(logging.INFO):
        for path, header, error in [
            (b"/getNumberRent", bearer, "BAD_KEY"), (b"/getServicesRent", bearer, "BAD_KEY"),
            (b"/finishActivationRent", bearer, "BAD_KEY"), (b"/", bearer, "BAD_KEY"),
            (b"/sms", bearer, "BAD_TOKEN"),
            (b"/sms/smsgate", b"X-Signature: \xe9\r\nX-Timestamp: \xe9\r\n", "BAD_SIGNATURE"),
        ]:
            status, answer = send(b"POST", path, header)
            assert (status, json.loads(answer)) == (401, {"status": "ERROR", "error": error})
        assert send(b"GET", b"/health", bearer)[0] == 200
        for path in (b"/getNumber%ffRent", b"/%ff"):
            status, answer = send(b"POST", path)
            assert status == 404 and json.loads(answer)["status"] == "ERROR"
    assert "Traceback" not in caplog.text
    assert db.execute("SELECT count(*) FROM operations").fetchone()[0] == 0


# What waitress answers itself, before the application sees the request (item 10): in
# the one JSON shape too, and without an access log line. The README lists them.
WAITRESS_ANSWERS = [
    ("invalid Content-Length", b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: abc\r\n\r\n", 400),
    ("lower-case method", b"post /getNumberRent HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 2\r\n\r\n{}", 400),
    ("bad chunk size", b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("bad start line", b"GARBAGE\r\nHost: x\r\n\r\n", 400),
    ("malformed header line", b"GET /health HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400),
    # (waitress answers as soon as it reads the length: the body need not follow)
    ("body over 1 MiB", b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\n"
     b"Content-Length: 2000000\r\n\r\n", 413),
    ("headers over 256 KiB", b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\nX-Big: "
     + b"a" * 263_000 + b"\r\n\r\n", 431),
    ("Transfer-Encoding other than chunked", b"POST / HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n", 501),
]

_CHUNKED = (b"POST /getServicesRent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
_SERVICES = json.dumps({"action": "GET_SERVICES", "key": API_KEY}).encode()
# What looks as odd but reaches the application, which answers it itself.
APP_ANSWERS = [
    ("chunked body", _CHUNKED + b"%x\r\n%s\r\n0\r\n\r\n" % (len(_SERVICES), _SERVICES), 200),
    ("chunked body over 64 KiB", _CHUNKED + b"%x\r\n%s\r\n0\r\n\r\n" % (70_000, b" " * 70_000),
     413),
    ("unknown method", b"PATCH / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 404),
]


@pytest.mark.parametrize("what, request_bytes, status", WAITRESS_ANSWERS + APP_ANSWERS,
                         ids=[w[0] for w in WAITRESS_ANSWERS + APP_ANSWERS])
def test_every_answer_is_json_and_which_ones_waitress_makes(live_server, caplog, what,
                                                             request_bytes, status):
    with caplog.at_level(logging.DEBUG, logger="rentbox.access"):
        got, head, body = _raw_exchange(live_server.url, request_bytes)
    assert got == status
    assert b"\r\nContent-Type: application/json; charset=utf-8" in head
    answer = json.loads(body)
    assert answer["status"] == ("SUCCESS" if status == 200 else "ERROR")
    # The application logs every request it sees (before the answer is sent).
    seen_by_rentbox = any(r.name == "rentbox.access" for r in caplog.records)
    assert seen_by_rentbox is (what not in {w[0] for w in WAITRESS_ANSWERS})


def test_the_readme_lists_what_waitress_answers_itself():
    from conftest import EXAMPLES

    readme = (EXAMPLES.parent / "docs" / "api.md").read_text()
    section = readme.split("Answered by the server before rentbox reads them", 1)[1][:2000]
    section = " ".join(section.split())  # as read, whatever the line breaks
    for what, _, status in WAITRESS_ANSWERS:
        assert f"{what} ({status})" in section, what


def test_serve_says_at_start_what_status_would_warn_about(start_server, caplog):
    import logging

    from rentbox.config import Buyer, Rules

    with caplog.at_level(logging.WARNING, logger="rentbox.server"):
        start_server(rules=Rules(buyers=(Buyer("smshub", "smshub", key="k"),)))
        assert wait_until(lambda: "the pool is empty" in caplog.text)
    warned = [r.getMessage() for r in caplog.records if r.name == "rentbox.server"]
    assert any("without RENTBOX_PUSH_URL" in w for w in warned)
    assert any("without a push URL for smshub" in w for w in warned)
    # No buyer has called a server that has just started: that is news only later.
    assert not any("never called" in w for w in warned)


def test_a_stop_that_a_full_disk_keeps_from_being_recorded_is_one_warning(start_server, caplog,
                                                                          monkeypatch):
    """A full disk is a state, not a bug: no traceback (tests/test_disk_full.py does this
    on a real full disk, where a tmpfs can be mounted)."""
    from rentbox import meta
    from rentbox.errors import Unavailable

    server = start_server()
    assert http_get_json(server.url + "/health")["status"] == "SUCCESS"  # start recorded

    def refused(*args):
        raise Unavailable("the database cannot be written now: the disk is full")

    monkeypatch.setattr(meta, "put", refused)
    with caplog.at_level(logging.INFO):
        server.stop()
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if "server's stop" in r.getMessage()] == [
        ("WARNING", "could not record the server's stop: the database cannot be written "
                    "now: the disk is full")]


def test_serve_checkpoints_off_the_write_path(live_server):
    """A thread of its own keeps the WAL short, so that the connections' automatic
    checkpoint (inside a commit, under the write lock) is only a backstop."""
    import threading

    from rentbox.db import BACKSTOP_WAL_PAGES

    from conftest import wait_until

    assert wait_until(lambda: "rentbox-checkpoints" in {t.name for t in threading.enumerate()})
    connection = live_server.connections.get()
    assert connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == BACKSTOP_WAL_PAGES
