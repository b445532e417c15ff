"""Measure GET_NUMBER/FINISH latency under concurrent callers, next to the bare server floor.

Starts two servers on loopback ports, each in its own process with the same stack
(waitress + Bottle + rentbox's gzip and access-log middleware, same thread count):

  rentbox  `rentbox serve` on a fresh database holding a large pool;
  floor    the same stack answering a constant JSON body, no database.

Then CALLERS client processes drive each one in turn for the same number of requests:
against rentbox, each caller loops GET_NUMBER then FINISH(status 4) of what it got;
against the floor, the same two POSTs to the constant endpoint. Prints throughput, p50,
p99 and the worst latency per kind, and checks that no number was issued twice.

    python benchmarks/get_number.py                 # 8 callers, 20,000 numbers
    python benchmarks/get_number.py --callers 16 --pairs 500 --threads 1

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HOST, KEY, free_port, latencies, post, wait_until_up

def run_floor(port: int, threads: int) -> None:
    """The floor: the same waitress + Bottle + middleware stack, a constant JSON body."""
    import logging

    import bottle

    from rentbox.settings import Settings
    from rentbox.server import make_waitress
    from rentbox.web.middleware import AccessLog, GzipAnswers

    logging.basicConfig(level=logging.INFO)  # the access log costs the same as rentbox's

    app = bottle.Bottle()
    body = json.dumps({"number": 4915123456789, "activationId": 1, "status": "SUCCESS"})

    @app.post("/<path:path>")
    def constant(path):
        bottle.request.body.read()
        bottle.response.content_type = "application/json; charset=utf-8"
        return body

    @app.get("/health")
    def health():
        return {"status": "SUCCESS"}

    settings = Settings(api_key=KEY, host=HOST, port=port, threads=threads)
    make_waitress(AccessLog(GzipAnswers(app)), settings).run()


def make_pool(db_path: Path, size: int) -> None:
    import datetime as dt

    from rentbox import pool
    from rentbox.db import open_database

    db = open_database(db_path)
    now = dt.datetime.now(dt.timezone.utc)
    # Valid German mobile numbers +49 151 2xxxxxxx, spread over a few operators.
    entries = (pool.PoolEntry(f"491512{i:07d}", "germany", ("telekom", "o2", "vodafone")[i % 3],
                              None, i) for i in range(size))
    pool.import_entries(db, now, entries)
    db.close()


def caller(args: tuple[int, int, bool]) -> dict:
    """One client process: `pairs` GET_NUMBER/FINISH pairs over one keep-alive connection."""
    port, pairs, is_floor = args
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    get_ms, finish_ms, issued, misses = [], [], [], 0
    for _ in range(pairs):
        elapsed, answer = post(conn, "/getNumberRent", {
            "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400,
            "country": "germany", "operator": "any"})
        get_ms.append(elapsed * 1000)
        if answer.get("status") != "SUCCESS":
            misses += 1
            continue
        issued.append((answer["activationId"], answer["number"]))
        elapsed, answer = post(conn, "/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "key": KEY, "service": "rent",
            "activationId": answer["activationId"], "status": 4, "sum": 0})
        finish_ms.append(elapsed * 1000)
    conn.close()
    return {"get": get_ms, "finish": finish_ms, "issued": [] if is_floor else issued,
            "misses": misses}


def drive(port: int, callers: int, pairs: int, is_floor: bool) -> tuple[dict, float]:
    started = time.perf_counter()
    with multiprocessing.Pool(callers) as workers:
        results = workers.map(caller, [(port, pairs, is_floor)] * callers)
    wall = time.perf_counter() - started
    merged = {"get": [], "finish": [], "issued": [], "misses": 0}
    for r in results:
        for k in ("get", "finish", "issued"):
            merged[k] += r[k]
        merged["misses"] += r["misses"]
    return merged, wall


def row(label: str, values: list[float], wall: float) -> str:
    count, p50, p99, worst = latencies(values)
    return f"{label:<22}{count:>9}{count / wall:>9.0f}{p50:>9.2f}{p99:>9.2f}{worst:>9.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=8, help="concurrent client processes")
    parser.add_argument("--pairs", type=int, default=400, help="GET_NUMBER/FINISH pairs per caller")
    parser.add_argument("--pool", type=int, default=20_000, help="numbers in the pool")
    parser.add_argument("--threads", type=int, default=None,
                        help="waitress threads for both servers (default: rentbox's default)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    parser.add_argument("--server-log", help="write both servers' logs (access log included) here")
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from rentbox.config import default

    threads = args.threads or default("threads")
    if args.floor_server:
        run_floor(args.floor_server, threads)
        return

    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        started = time.perf_counter()
        make_pool(db_path, args.pool)
        print(f"pool of {args.pool} numbers built in {time.perf_counter() - started:.1f}s")
        rentbox_port, floor_port = free_port(), free_port()
        env = {**os.environ, "RENTBOX_API_KEY": KEY}
        log = open(args.server_log or os.devnull, "w")
        servers = [
            subprocess.Popen([sys.executable, "-m", "rentbox", "serve", "--db", str(db_path),
                              "--host", HOST, "--port", str(rentbox_port),
                              "--threads", str(threads)], env=env, stderr=log),
            subprocess.Popen([sys.executable, __file__, "--floor-server", str(floor_port),
                              "--threads", str(threads)], stderr=log),
        ]
        try:
            wait_until_up(rentbox_port)
            wait_until_up(floor_port)
            drive(floor_port, args.callers, 20, True)  # warm both up
            drive(rentbox_port, args.callers, 20, False)
            # Two rounds, alternating, so that a passing disturbance of the machine shows
            # up as a difference between rounds rather than between the two servers.
            rounds = []
            for _ in range(args.rounds):
                rounds.append((drive(floor_port, args.callers, args.pairs, True),
                               drive(rentbox_port, args.callers, args.pairs, False)))
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(timeout=10)
            log.close()

    print(f"{args.callers} callers x {args.pairs} pairs, {threads} waitress thread(s), "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'':<22}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for number, ((floor, floor_wall), (real, real_wall)) in enumerate(rounds, start=1):
        print(f"round {number}")
        print(row("  floor (constant JSON)", floor["get"] + floor["finish"], floor_wall))
        print(row("  GET_NUMBER", real["get"], real_wall))
        print(row("  FINISH_ACTIVATION", real["finish"], real_wall))
        print(row("  both", real["get"] + real["finish"], real_wall))
    ids = [i for (_, (real, _)) in rounds for i, _ in real["issued"]]
    misses = sum(real["misses"] for (_, (real, _)) in rounds)
    print(f"issued {len(ids)} rentals, {misses} NO_NUMBERS, "
          f"{len(ids) - len(set(ids))} duplicate activation ids")


if __name__ == "__main__":
    main()
