"""What the benchmark scripts share: loopback ports, waiting for a server, latency figures."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"
KEY = "benchmark-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_up(port: int, deadline_s: float = 20) -> None:
    """Poll GET /health until the server answers (bounded)."""
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up")


def post(conn: http.client.HTTPConnection, path: str, payload: dict) -> tuple[float, dict]:
    """POST a JSON body on a keep-alive connection: (seconds taken, the JSON answer).
    Anything but HTTP 200 stops the run."""
    import json

    body = json.dumps(payload).encode()
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {data[:200]!r}")
    return elapsed, json.loads(data)


def latencies(values: list[float]) -> tuple[int, float, float, float]:
    """(count, p50, p99, worst) of a list of latencies."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(ordered), statistics.median(ordered), p99, ordered[-1]


@contextlib.contextmanager
def serving(db_path: Path, *options: str, env: dict | None = None,
            log_path: Path | None = None) -> Iterator[int]:
    """Run `rentbox serve` on `db_path` and a free loopback port (yielded) until the block
    ends, with more `options` and environment variables `env`; its log goes to `log_path`
    (appended), or is discarded."""
    port = free_port()
    env = {**os.environ, "RENTBOX_API_KEY": KEY, "RENTBOX_DB": str(db_path), **(env or {})}
    log = open(log_path, "a") if log_path is not None else subprocess.DEVNULL
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "rentbox", "serve", "--host", HOST, "--port", str(port),
             *options], env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_until_up(port)
            yield port
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        if log_path is not None:
            log.close()


def build_books(db_path: Path, numbers: int, operations: int = 0, *,
                excluded_prefix: str = "49151", allowed_share: float = 1.0) -> None:
    """A database of `numbers` German numbers and `operations` closed rentals spread over
    the last year, written with plain SQL (the tallies' triggers fire as in production).

    With `allowed_share` < 1, the numbers that a client excluding `excluded_prefix` may
    take are only that share, and they are the ones idle the shortest: the worst case of
    a claim under exclusions, where every number at the head of the idle order is
    excluded."""
    import datetime as dt

    from rentbox.clock import to_text
    from rentbox.db import open_database

    db = open_database(db_path)
    now = dt.datetime.now(dt.timezone.utc)
    allowed = max(1, round(numbers * allowed_share))
    operators = ("telekom", "o2", "vodafone")

    def number_rows():
        for i in range(numbers):
            # Excluded ones first in the idle order, the allowed ones last.
            prefix = "49160" if i >= numbers - allowed else excluded_prefix
            stamp = to_text(now - dt.timedelta(seconds=numbers - i))
            yield (f"{prefix}{i:08d}", operators[i % 3], stamp, stamp, stamp)

    with db.transaction():
        db.conn.executemany(
            "INSERT INTO numbers (number, country, operator, idle_since, created_at,"
            " updated_at) VALUES (?, 'germany', ?, ?, ?, ?)", number_rows())

    def operation_rows():
        for i in range(operations):
            opened = now - dt.timedelta(days=365 * (operations - i) / operations, hours=2)
            closed = opened + dt.timedelta(hours=1)
            status = (3, 3, 3, 4, 5)[i % 5]
            yield (i % numbers + 1, status, 40000, 87000 if status == 3 else 0,
                   to_text(opened), to_text(closed),
                   to_text(opened + dt.timedelta(minutes=2)) if status == 3 else None)

    with db.transaction():
        db.conn.executemany(
            "INSERT INTO operations (number_id, state, finish_status, initial_sum_kopecks,"
            " final_sum_kopecks, created_at, finished_at, sms_accepted_at, country)"
            " VALUES (?, 'closed', ?, ?, ?, ?, ?, ?, 'germany')", operation_rows())
    db.execute("ANALYZE")
    db.close()


def claim_and_finish(conn) -> float:
    """One GET_NUMBER (Germany) and its FINISH (sold) on `conn`; the GET_NUMBER's ms."""
    elapsed, answer = post(conn, "/getNumberRent", {
        "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400,
        "country": "germany"})
    post(conn, "/finishActivationRent", {
        "action": "FINISH_ACTIVATION", "key": KEY, "service": "rent",
        "activationId": answer["activationId"], "status": 3, "sum": 400})
    return elapsed * 1000
