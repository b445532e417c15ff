"""GET_NUMBER and GET_SERVICES on a pool that is mostly offline, beside one that is all online.

SIM presence (rentbox/presence.py) keeps offline numbers out of the free-number indexes, so
a claim should cost the same whether 1% or 100% of a large pool is online. For each case
this builds a pool of --pool numbers (default 100,000), every one reported by a gateway,
the given share online and the rest offline, starts `rentbox serve` on it and drives
--callers client processes, each looping GET_NUMBER then FINISH (status 3: sold, which
counts no failure, so nothing gets banned during the run), then times GET_SERVICES.

    python benchmarks/presence_claim.py                      # 100,000 numbers: 100% and 1%
    python benchmarks/presence_claim.py --pool 20000 --pairs 200

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from common import HOST, KEY, latencies, post, serving

CASES = {"100% online": 1.0, "1% online": 0.01}


def build(db_path: Path, size: int, online_share: float) -> int:
    """A pool of `size` numbers, all reported by gateway `bank`, evenly interleaved so that
    the online ones are spread through the idle order. Returns how many are online."""
    from rentbox.clock import to_text
    from rentbox.db import open_database

    db = open_database(db_path)
    now = dt.datetime.now(dt.timezone.utc)
    stamp = to_text(now)
    every = round(1 / online_share)
    rows = []
    for i in range(size):
        idle = to_text(now - dt.timedelta(seconds=size - i))
        online = i % every == 0
        rows.append((f"491512{i:07d}", ("telekom", "o2", "vodafone")[i % 3], idle, stamp,
                     stamp, 0 if online else 1, None if online else "dropped",
                     None if online else stamp, stamp, "bank"))
    with db.transaction():
        db.conn.executemany(
            "INSERT INTO numbers (number, country, operator, idle_since, created_at,"
            " updated_at, offline, offline_reason, offline_since, seen_at, seen_by)"
            " VALUES (?, 'germany', ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    online = db.execute("SELECT count(*) FROM numbers WHERE offline = 0").fetchone()[0]
    db.execute("ANALYZE")
    db.close()
    return online


def caller(args: tuple[int, int]) -> dict:
    """One client process: `pairs` GET_NUMBER/FINISH(3) pairs on one keep-alive connection."""
    port, pairs = args
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    claims, issued, misses = [], [], 0
    for _ in range(pairs):
        elapsed, answer = post(conn, "/getNumberRent", {
            "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400,
            "country": "germany", "operator": "any"})
        claims.append(elapsed * 1000)
        if answer.get("status") != "SUCCESS":
            misses += 1
            continue
        issued.append(answer["number"])
        post(conn, "/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "key": KEY, "service": "rent",
            "activationId": answer["activationId"], "status": 3, "sum": 400})
    conn.close()
    return {"claims": claims, "issued": issued, "misses": misses}


def services(port: int, times: int) -> list[float]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        return [post(conn, "/getServicesRent", {"action": "GET_SERVICES", "key": KEY})[0] * 1000
                for _ in range(times)]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=100_000, help="numbers in the pool")
    parser.add_argument("--callers", type=int, default=8, help="concurrent client processes")
    parser.add_argument("--pairs", type=int, default=300, help="GET_NUMBER/FINISH per caller")
    parser.add_argument("--rounds", type=int, default=3, help="measurement rounds per case")
    args = parser.parse_args()
    print(f"pool {args.pool:,} numbers, {args.callers} callers x {args.pairs} pairs, "
          f"{args.rounds} rounds, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'case':<14}{'online':>9}{'claims':>8}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
          f"{'max ms':>8}{'SERVICES p50':>14}{'offline issued':>16}")
    for label, share in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            db_path = Path(tmp) / "bench.db"
            online = build(db_path, args.pool, share)
            with serving(db_path) as port:
                with multiprocessing.Pool(args.callers) as workers:
                    workers.map(caller, [(port, 20)] * args.callers)  # warm up
                    for _ in range(args.rounds):
                        started = time.perf_counter()
                        results = workers.map(caller, [(port, args.pairs)] * args.callers)
                        wall = time.perf_counter() - started
                        claims = [c for r in results for c in r["claims"]]
                        issued = {n for r in results for n in r["issued"]}
                        count, p50, p99, worst = latencies(claims)
                        services_p50 = latencies(services(port, 50))[1]
                        bad = _issued_offline(db_path, issued)
                        print(f"{label:<14}{online:>9,}{count:>8}{count / wall:>8.0f}"
                              f"{p50:>8.2f}{p99:>8.2f}{worst:>8.2f}{services_p50:>14.2f}"
                              f"{bad:>16}")


def _issued_offline(db_path: Path, issued: set[int]) -> int:
    """How many issued numbers are offline: must be 0."""
    import sqlite3

    conn = sqlite3.connect(str(db_path))
    try:
        return conn.execute("SELECT count(*) FROM numbers WHERE offline = 1 AND number IN"
                            " (SELECT value FROM json_each(?))",
                            (json.dumps([str(n) for n in issued]),)).fetchone()[0]
    finally:
        conn.close()


if __name__ == "__main__":
    main()
