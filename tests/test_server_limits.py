"""Slow and idle connections never lock Onlinesim out (server.Limits), and no request is
left waiting for an answer (`Expect: 100-continue`), over real sockets.

Loopback only; every socket has a timeout, every wait a deadline.
"""

import contextlib
import http.client
import json
import socket
import threading
import time

import pytest

from conftest import API_KEY, START, add_numbers, http_post
from rentbox.server import Limits, Server

GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}
# A request header that never ends: sent a byte at a time, it keeps its connection busy.
SLOW_HEAD = b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 4000


@pytest.fixture
def serve(start_server):
    """Start a real server with the given Limits; stopped at the end."""
    return lambda limits=Limits(): start_server(limits=limits)


@pytest.fixture
def connect():
    """Open `count` connections to a server; all closed at the end."""
    opened = []

    def open_connections(server: Server, count: int) -> list[socket.socket]:
        new = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
               for _ in range(count)]
        opened.extend(new)
        return new

    yield open_connections
    for sock in opened:
        sock.close()


def is_closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed this connection (end of stream or reset); never waits."""
    timeout = sock.gettimeout()
    sock.settimeout(0)  # (with a timeout set, recv waits for data whatever its flags)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(timeout)


def seconds_until_closed(sock: socket.socket, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if is_closed_by_server(sock):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


@contextlib.contextmanager
def dribbling(socks: list[socket.socket], every_s: float):
    """Send SLOW_HEAD on every socket, one byte each per `every_s`, until the block ends."""
    stop = threading.Event()

    def run():
        for byte in SLOW_HEAD:  # bounded: the header is finite
            for sock in socks:
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    pass  # closed by the server: what some tests wait for
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def test_slow_and_idle_connections_do_not_lock_onlinesim_out(serve, db, connect):
    """The issue's attack: 120 connections sending their headers slowly and 200 that send
    nothing. With waitress's defaults (100 connections) no GET_NUMBER got an answer."""
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom") for i in range(9)])
    server = serve()  # the production limits
    slow = connect(server, 120)
    idle = connect(server, 200)
    with dribbling(slow, every_s=0.5):
        for _ in range(9):
            started = time.monotonic()
            answer = http_post(server.url + "/getNumberRent", GET_NUMBER, timeout=5)
            assert time.monotonic() - started < 2
            assert answer.json["status"] == "SUCCESS"
        # They were held open all along (from loopback: no per-address cap, see Limits).
        assert not any(is_closed_by_server(s) for s in slow + idle)


def test_a_request_that_does_not_arrive_in_time_is_closed(serve, db, connect):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    server = serve(Limits(request_deadline_s=1, idle_s=60))
    slow, quiet = connect(server, 2)
    with dribbling([slow], every_s=0.2):
        closed_after = seconds_until_closed(slow, timeout_s=8)
    assert closed_after is not None, "a request still arriving was not closed"
    # The deadline runs from a request's first byte: a silent connection is only idle.
    assert not is_closed_by_server(quiet)
    assert http_post(server.url + "/getNumberRent", GET_NUMBER).json["status"] == "SUCCESS"


def test_a_connection_that_says_nothing_is_closed_when_idle(serve, connect):
    server = serve(Limits(idle_s=1))
    [quiet] = connect(server, 1)
    assert seconds_until_closed(quiet, timeout_s=8) is not None


def test_one_address_gets_its_share_and_no_more(serve, db, connect):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    # No proxy addresses: the cap applies to 127.0.0.1, where the test connects from.
    server = serve(Limits(connections_per_address=3, proxy_addresses=frozenset()))
    held = connect(server, 3)
    [over] = connect(server, 1)
    assert seconds_until_closed(over, timeout_s=5) is not None
    assert not any(is_closed_by_server(s) for s in held)
    held[0].close()  # back within its share: served again
    deadline = time.monotonic() + 5
    while True:
        try:
            answer = http_post(server.url + "/getNumberRent", GET_NUMBER, timeout=2)
            break
        except (http.client.HTTPException, ConnectionError):
            # The server may not have seen the close yet.
            assert time.monotonic() < deadline, "the address was not served again"
            time.sleep(0.1)
    assert answer.json["status"] == "SUCCESS"


def test_blank_lines_do_not_keep_a_connection_open(serve, connect):
    """Blank lines between requests are allowed (RFC 9112 2.2) and make no request, but they
    are bytes: waitress's own idle timeout counts from the last byte, so "\\r\\n\\r\\n" every
    few seconds would hold a connection forever. Idleness counts from the last answer."""
    server = serve(Limits(request_deadline_s=60, idle_s=1))
    [sock] = connect(server, 1)
    started = time.monotonic()
    closed = False
    while not closed and time.monotonic() - started < 8:
        try:
            sock.sendall(b"\r\n\r\n")
        except OSError:
            closed = True
            break
        closed = seconds_until_closed(sock, timeout_s=0.3) is not None
    assert closed, "blank lines kept the connection open"


def test_a_keep_alive_caller_that_calls_promptly_stays_connected(serve, db):
    """Deadlines and idle time apply between calls, not to a connection's age: a caller
    that keeps one connection and calls every half second is never cut off."""
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom") for i in range(10)])
    server = serve(Limits(request_deadline_s=1, idle_s=2))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        body = json.dumps(GET_NUMBER)
        local_ports = set()
        for _ in range(10):  # about 5 s: several times both limits
            conn.request("POST", "/getNumberRent", body,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            assert json.loads(response.read())["status"] == "SUCCESS"
            assert conn.sock is not None, "the server asked to close the connection"
            local_ports.add(conn.sock.getsockname()[1])
            time.sleep(0.5)
        assert len(local_ports) == 1, "the connection was closed and opened again"
    finally:
        conn.close()


# ---- Expect: 100-continue ------------------------------------------------------------------


def read_answers(sock: socket.socket) -> list[tuple[int, bytes]]:
    """The answers to one request, interim (100) ones first: (status, body) each, up to
    and including the final one. The socket's timeout bounds every wait."""
    answers, data = [], b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {answers!r} {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "closed in the middle of an answer"
            data += chunk
        answers.append((status, data[:length]))
        data = data[length:]
        if status >= 200:
            assert data == b"", "more than one answer"
            return answers


@pytest.mark.parametrize("request_head, status", [
    (b"GET /health HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", 200),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 0\r\n\r\n",
     200),
    # A call without its body reaches rentbox, which says what is wrong with it.
    (b"POST /getServicesRent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 0\r\n\r\n", 400),
])
def test_expect_100_continue_without_a_body_is_answered_at_once(serve, connect, request_head,
                                                                status):
    """waitress 3.0.2 sent "100 Continue" and then never handed such a request to the app:
    the client waited until the request deadline. Answered at once now, without a 100, and
    the connection serves the next request."""
    server = serve()
    [sock] = connect(server, 1)
    sock.settimeout(3)  # a regression fails here, rather than hanging
    for _ in range(2):
        sock.sendall(request_head)
        [(answered, body)] = read_answers(sock)
        assert answered == status, body
        assert json.loads(body)["status"] == ("SUCCESS" if status == 200 else "ERROR")


def test_expect_100_continue_with_a_body_gets_its_100_then_its_answer(serve, db, connect):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    server = serve()
    [sock] = connect(server, 1)
    sock.settimeout(3)
    body = json.dumps(GET_NUMBER).encode()
    sock.sendall(b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    # The client waits for the 100 before it sends the body, as curl does.
    assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(body)
    [(status, answer)] = read_answers(sock)
    assert status == 200 and json.loads(answer)["status"] == "SUCCESS"
    # Chunked, with the body sent along with the header: 100 (harmless), then the answer.
    chunk = json.dumps({"action": "GET_SERVICES", "key": API_KEY}).encode()
    sock.sendall(b"POST /getServicesRent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
    [(interim, _), (status, answer)] = read_answers(sock)
    assert (interim, status) == (100, 200) and json.loads(answer)["status"] == "SUCCESS"


@pytest.mark.parametrize("header, status", [
    (b"Content-Length: abc", 400),
    (b"Content-Length: %d" % (64 * 1024 * 1024), 413),
])
def test_expect_100_continue_with_a_refused_header_gets_its_error_at_once(serve, connect,
                                                                          header, status):
    """An error found in the header is answered, not continued: the body is not wanted."""
    server = serve()
    [sock] = connect(server, 1)
    sock.settimeout(3)
    sock.sendall(b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                 + header + b"\r\n\r\n")
    [(answered, body)] = read_answers(sock)
    assert answered == status and json.loads(body)["status"] == "ERROR"


# ---- a call past Onlinesim's deadline (issue 20, item 8) ------------------------------

def test_calls_that_waited_past_their_deadline_are_503_and_change_nothing(start_server, db,
                                                                         db_path):
    """Another process holds the write lock longer than Onlinesim waits: the GET_NUMBER
    and FINISH queued behind it are answered 503 and commit nothing, since Onlinesim has
    given up on them (a rental it never received would fail and count toward a ban)."""
    import sqlite3

    from conftest import snapshot

    add_numbers(db, START, *[(f"+491512345678{i}", "germany", "telekom") for i in range(6)])
    server = start_server(call_deadline_s=0.5)
    held = http_post(server.url + "/getNumberRent", GET_NUMBER).json
    assert held["status"] == "SUCCESS"
    finish = {"action": "FINISH_ACTIVATION", "key": API_KEY, "service": "rent",
              "activationId": held["activationId"], "status": 3, "sum": 870}
    before = snapshot(db)
    other = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # e.g. a long import in another process
    answers: list = []

    def call(path, body):
        answers.append(http_post(server.url + path, body, timeout=10))

    calls = [threading.Thread(target=call, args=("/getNumberRent", GET_NUMBER))
             for _ in range(4)]
    calls.append(threading.Thread(target=call, args=("/finishActivationRent", finish)))
    for thread in calls:
        thread.start()
    # Four calls reached the four worker threads and handed their writes to the writer,
    # which waits for the other process's lock; the fifth queues in waitress. Only then,
    # the other process holds its lock past their deadline (not racing the threads that
    # send them).
    from conftest import wait_until

    assert wait_until(lambda: server.writer.pending == 4)
    time.sleep(1.0)
    other.execute("ROLLBACK")
    other.close()
    for thread in calls:
        thread.join(10)
    assert sorted(a.status for a in answers) == [503] * 5
    assert all("waited past the caller's deadline" in a.json["error"] for a in answers)
    assert snapshot(db) == before  # no rental opened, none closed, no event
    # A call that arrives now is served as usual.
    assert http_post(server.url + "/getNumberRent", GET_NUMBER).json["status"] == "SUCCESS"
    assert http_post(server.url + "/finishActivationRent", finish).json == {"status": "SUCCESS"}
