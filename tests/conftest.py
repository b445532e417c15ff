"""Shared fixtures: a temporary database, a fake clock, the app in process, a real server."""

from __future__ import annotations

import datetime as dt
import gzip as gzip_module
import http.client
import io
import json
import sys
from pathlib import Path

import pytest

from rentbox import pool
from rentbox.settings import Settings
from rentbox.db import Connections, Database, open_database
from rentbox.server import Server
from rentbox.web import wsgi

API_KEY = "test-key-7f3a"
GATEWAY_TOKEN = "gateway-token-91c2"
SMSGATE_KEY = "smsgate-key-5d0e"
START = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class FakeClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, start: dt.datetime = START):
        self.current = start

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, seconds: float) -> dt.datetime:
        self.current += dt.timedelta(seconds=seconds)
        return self.current


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "rentbox.db"


@pytest.fixture
def db(db_path) -> Database:
    database = open_database(db_path)
    yield database
    database.close()


def add_numbers(db: Database, now: dt.datetime, *rows: tuple) -> None:
    """Put (number, country, operator[, port]) rows into the pool."""
    entries = [
        pool.PoolEntry(pool.normalize_number(r[0]), r[1], r[2], r[3] if len(r) > 3 else None, i)
        for i, r in enumerate(rows, start=2)
    ]
    pool.import_entries(db, now, entries)


def snapshot(db: Database) -> dict:
    """Every row of every rentbox table: compare two to prove nothing changed."""
    tables = ["numbers", "operations", "events"]
    return {t: db.rows(f"SELECT * FROM {t} ORDER BY rowid") for t in tables}


@pytest.fixture
def settings(db_path) -> Settings:
    return Settings(api_key=API_KEY, gateway_token=GATEWAY_TOKEN, smsgate_key=SMSGATE_KEY,
                    db=db_path, port=0, threads=4)


@pytest.fixture
def connections(db, db_path):
    conns = Connections(db_path)
    yield conns
    conns.close_all()


class WsgiClient:
    """Calls a WSGI app in process, the way a server would."""

    def __init__(self, app):
        self.app = app

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> "Answer":
        body = body or b""
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": True,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            else:
                environ["HTTP_" + key] = value
        seen = {}

        def start_response(status, response_headers, exc_info=None):
            seen["status"], seen["headers"] = status, response_headers

        chunks = self.app(environ, start_response)
        data = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return Answer(int(seen["status"].split()[0]), dict(seen["headers"]), data)

    def post(self, path: str, payload: object = None, *, raw: bytes | None = None,
             headers: dict | None = None) -> "Answer":
        body = raw if raw is not None else json.dumps(payload).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json",
                                                 **(headers or {})})


class Answer:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        data = self.body
        if self.headers.get("Content-Encoding") == "gzip":
            data = gzip_module.decompress(data)
        return json.loads(data)


@pytest.fixture
def client(settings, clock, connections) -> WsgiClient:
    return WsgiClient(wsgi(settings, clock, connections))


@pytest.fixture
def start_server(settings, db):
    """Start real waitress servers on ephemeral loopback ports, with the system clock;
    `start_server(push_url=...)` overrides settings, `limits=` the connection limits. All
    are stopped at the end."""
    import dataclasses

    running = []

    def start(limits=None, **overrides) -> Server:
        from rentbox.server import Limits

        server = Server(dataclasses.replace(settings, **overrides), limits=limits or Limits())
        running.append((server, server.start_in_thread()))
        return server

    yield start
    for server, thread in running:
        server.stop()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the server thread did not stop"


@pytest.fixture
def live_server(start_server):
    return start_server()


def wait_until(predicate, timeout_s: float = 10) -> bool:
    """Poll `predicate` every 50 ms until it is true (True) or `timeout_s` passes (False)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def http_post(url: str, payload: object = None, *, raw: bytes | None = None,
              headers: dict | None = None, timeout: float = 10) -> Answer:
    """POST over a real socket with http.client (every call has a timeout)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        body = raw if raw is not None else json.dumps(payload).encode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


class FakeOnlinesim:
    """Onlinesim's PUSH_SMS endpoint on a real loopback HTTP server.

    `answers` is a list of (status, body), the string "hang" (answer only after
    `hang_s`) or "drop" (close the connection without an answer), used in order; the
    last one repeats. Every request is recorded, and `events` lists ("received", i) and
    ("answered", i) (as the answer starts to leave) for the i-th request as they happen.
    HTTP/1.1: connections are kept alive, `connections` counts those opened, and
    `close_connections()` closes them as a server does after a keep-alive timeout.
    """

    def __init__(self, answers=((200, b'{"status":"SUCCESS"}'),), hang_s: float = 3.0):
        import http.server
        import socket
        import threading

        self.answers = list(answers)
        self.hang_s = hang_s
        self.requests: list[dict] = []
        self.events: list[tuple[str, int]] = []
        self.connections = 0
        self._sockets = []
        self.received = threading.Condition()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Onlinesim's servers do

            def setup(self):
                super().setup()
                # As web servers do: no Nagle wait between the answer's headers and body.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with fake.received:
                    fake.connections += 1
                    fake._sockets.append(self.connection)

            def do_GET(self):
                fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": b""})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with fake.received:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body})
                    answer = fake.answers[min(len(fake.requests), len(fake.answers)) - 1]
                    index = len(fake.requests) - 1
                    fake.events.append(("received", index))
                    fake.received.notify_all()
                if answer == "drop":  # the request arrived; its answer never leaves
                    self.close_connection = True
                    return
                if answer == "hang":
                    import time

                    time.sleep(fake.hang_s)  # the fake peer is slow, not rentbox
                    answer = (200, b'{"status":"SUCCESS"}')
                status, payload = answer
                with fake.received:
                    fake.events.append(("answered", index))
                self.send_response(status)
                if 300 <= status < 400:  # a redirect to a page that would answer 200
                    self.send_header("Location", "/landing")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/pushSmsRent"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout_s: float = 10) -> list[dict]:
        with self.received:
            self.received.wait_for(lambda: len(self.requests) >= count, timeout_s)
            return list(self.requests)

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close_connections(self) -> None:
        """Close every connection from this side, as after a keep-alive timeout."""
        import socket

        with self.received:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def onlinesim():
    fake = FakeOnlinesim()
    yield fake
    fake.close()


def rent_number(server) -> int:
    """Rent a number from a running server, as Onlinesim does; returns the activation id."""
    answer = http_post(server.url + "/getNumberRent", {"action": "GET_NUMBER", "key": API_KEY,
                                                       "service": "rent", "sum": 400}).json
    assert answer["status"] == "SUCCESS", answer
    return answer["activationId"]


def refused_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pushSmsRent"


def http_get_json(url: str, timeout: float = 5) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs of its own, for what happens when the disk fills up. Skipped where
    it cannot be mounted (tmpfs needs root on Linux); always unmounted afterwards."""
    import os
    import subprocess

    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the full-disk behaviour is also "
                    "covered without one")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Fill the filesystem of `folder` to the last byte; returns the filler to delete."""
    import os

    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (65536, 512, 1):  # unbuffered: every byte that fits is written
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler
