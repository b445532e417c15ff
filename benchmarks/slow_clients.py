"""Measure GET_NUMBER/FINISH latency while slow and idle clients hold connections open.

Starts `rentbox serve` on a loopback port with a pool, then opens the attack: SLOW
connections that send their request headers one byte every second (a "slowloris") and
IDLE connections that connect and send nothing; each attacker reconnects at once when the
server closes its connection, for the whole run. While they are held, one normal client
keeps calling GET_NUMBER then FINISH (status 4), each on a fresh connection as a real
caller would, for DURATION seconds. Prints how many calls were answered, the p50, p99
and worst latency, and how many took longer than 1 s or got no answer within 10 s.
Run it once with `--slow 0 --idle 0` for the figures without an attack.

    python benchmarks/slow_clients.py                       # 120 slow + 200 idle, 30 s
    python benchmarks/slow_clients.py --slow 0 --idle 0     # the same, unattacked

Loopback only; every socket has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from common import HOST, KEY, latencies, serving


def make_pool(db_path: Path, size: int) -> None:
    import datetime as dt

    from rentbox import pool
    from rentbox.db import open_database

    db = open_database(db_path)
    entries = (pool.PoolEntry(f"491512{i:07d}", "germany", "telekom", None, i)
               for i in range(size))
    pool.import_entries(db, dt.datetime.now(dt.timezone.utc), entries)
    db.close()


class Stats:
    """Counters shared by the attacking threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {"opened": 0, "refused": 0, "closed_by_server": 0}

    def add(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1


def dribble(sock: socket.socket, stop: threading.Event) -> None:
    """A slowloris: a request header sent a byte a second, never finished."""
    request = (b"POST /getNumberRent HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nX-Padding: " + b"a" * 4000)
    for byte in request:
        if stop.wait(1.0):
            return
        sock.sendall(bytes([byte]))


def say_nothing(sock: socket.socket, stop: threading.Event) -> None:
    """An idle connection: sends nothing, waits to be closed."""
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            if sock.recv(1) == b"":
                raise ConnectionResetError
        except socket.timeout:
            continue


def attack(port: int, stop: threading.Event, stats: Stats, behaviour) -> None:
    """One attacker for the whole run: when the server closes its connection, it opens
    another one at once and carries on."""
    while not stop.is_set():
        try:
            sock = socket.create_connection((HOST, port), timeout=5)
        except OSError:
            stats.add("refused")
            stop.wait(0.5)
            continue
        stats.add("opened")
        try:
            behaviour(sock, stop)
        except OSError:
            stats.add("closed_by_server")
        finally:
            sock.close()


def call(port: int, path: str, payload: dict) -> tuple[float | None, dict | None]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(payload),
                     {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        return time.perf_counter() - started, answer
    except (OSError, ValueError):
        return None, None
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=120, help="slow-header connections")
    parser.add_argument("--idle", type=int, default=200, help="idle connections")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of calls")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "slow.db"
        make_pool(db_path, 1000)
        with serving(db_path) as port:
            stop = threading.Event()
            stats = Stats()
            holders = [threading.Thread(target=attack, args=(port, stop, stats, behaviour),
                                        daemon=True)
                       for behaviour, count in ((dribble, args.slow), (say_nothing, args.idle))
                       for _ in range(count)]
            for thread in holders:
                thread.start()
            time.sleep(2)  # let the attack take hold before measuring
            took, lost = [], 0
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                elapsed, answer = call(port, "/getNumberRent", {
                    "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 100})
                if elapsed is None:
                    lost += 1
                    continue
                took.append(elapsed)
                if answer.get("status") == "SUCCESS":
                    elapsed, _ = call(port, "/finishActivationRent", {
                        "action": "FINISH_ACTIVATION", "key": KEY,
                        "activationId": answer["activationId"], "status": 4})
                    if elapsed is None:
                        lost += 1
                    else:
                        took.append(elapsed)
            stop.set()
            for thread in holders:
                thread.join(timeout=5)
    counts = stats.counts
    print(f"attack: {args.slow} slow-header + {args.idle} idle attackers, each reconnecting "
          f"when closed; {counts['opened']} connections opened, {counts['refused']} refused, "
          f"{counts['closed_by_server']} closed by the server")
    if took:
        count, p50, p99, worst = latencies(took)
        over_1s = sum(1 for t in took if t > 1)
        print(f"calls answered: {count}, no answer within 10 s: {lost}; "
              f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, worst {worst * 1000:.1f} ms, "
              f"over 1 s: {over_1s}")
    else:
        print(f"calls answered: 0, no answer within 10 s: {lost}")


if __name__ == "__main__":
    main()
