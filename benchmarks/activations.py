"""Activations beside rent on one pool: GET_SERVICES flat in pool size, GET_NUMBER past
numbers spent for the service, and a mixed load of 8 callers.

Three figures (issue 22), each on a real `rentbox serve` with 20 offered services:

1. GET_SERVICES (`/getServices` and `POST /`, rent and 20 services) on 1,000 and
   1,000,000 numbers, 10% of them spent for 1 to 3 services: p50 at the large pool
   within 1.5x of the small one (it reads tallies, not rows).
2. GET_NUMBER for `vk` where 99% of the numbers idle longest are spent for it, on the same
   two sizes (each followed by FINISH 5, which spends nothing): p50 within 1.5x, and no
   spent number ever issued.
3. Mixed load: 8 caller processes, rent and activations interleaved on one pool of
   100,000 numbers (GET_NUMBER then FINISH 3, 4 or 5): p99, and no number in two open
   operations at once (checked afterwards from the operations' intervals).

    python benchmarks/activations.py
    python benchmarks/activations.py --sizes 1000 100000 --mixed-pool 20000

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import HOST, KEY, build_books, latencies, post, serving

SERVICES = ["vk", "wa", "tg", "ok", "fb", "ig", "tw", "go", "ya", "ma", "av", "ub", "wb",
            "oz", "dr", "tk", "vi", "sn", "ds", "am"]
ENV = {"RENTBOX_SERVICES": ",".join(SERVICES)}


def spend(db_path: Path, *, share: float = 0.0, head_share: float = 0.0,
          service: str = "vk") -> set[str]:
    """Mark numbers spent: `share` of them at random for 1 to 3 random services, or the
    `head_share` idle longest for `service`. Returns the numbers spent for `service`."""
    conn = sqlite3.connect(db_path)
    rng = random.Random(7)
    stamp = "2026-01-01T00:00:00.000000Z"
    ids = [r[0] for r in conn.execute("SELECT id FROM numbers ORDER BY idle_since, id")]
    rows = []
    if share:
        for number_id in rng.sample(ids, int(len(ids) * share)):
            for name in rng.sample(SERVICES, rng.randint(1, 3)):
                rows.append((number_id, name, stamp, stamp))
    if head_share:
        rows += [(number_id, service, stamp, stamp)
                 for number_id in ids[:int(len(ids) * head_share)]]
    with conn:
        conn.executemany("INSERT INTO service_uses (number_id, service, tries, spent_at,"
                         " updated_at) VALUES (?, ?, 0, ?, ?)", rows)
    spent = {r[0] for r in conn.execute(
        "SELECT number FROM numbers JOIN service_uses ON number_id = numbers.id"
        " WHERE service = ?", (service,))}
    conn.execute("ANALYZE")
    conn.close()
    return spent


def services_latency(size: int, calls: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        build_books(db_path, size)
        spend(db_path, share=0.10)
        with serving(db_path, env=ENV) as port:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            body = {"action": "GET_SERVICES", "key": KEY}
            for _ in range(20):
                post(conn, "/getServices", body)
            activations = [post(conn, "/getServices", body)[0] * 1000 for _ in range(calls)]
            both = [post(conn, "/", body)[0] * 1000 for _ in range(calls)]
            conn.close()
    _, a50, a99, _ = latencies(activations)
    _, b50, b99, _ = latencies(both)
    return a50, a99, b50, b99


def spent_head_latency(size: int, pairs: int) -> tuple[float, float, int]:
    """GET_NUMBER vk (+ FINISH 5) with the 99% idlest spent for vk: p50, p99 (ms), and
    how many issued numbers were spent for vk (must be 0)."""
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        build_books(db_path, size)
        spent = spend(db_path, head_share=0.99)
        issued_spent, took = 0, []
        with serving(db_path, env=ENV) as port:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            for i in range(pairs + 20):
                elapsed, answer = post(conn, "/getNumber", {
                    "action": "GET_NUMBER", "key": KEY, "service": "vk", "sum": 20,
                    "country": "germany"})
                if answer["status"] != "SUCCESS":
                    raise SystemExit(f"GET_NUMBER vk: {answer}")
                issued_spent += str(answer["number"]) in spent
                post(conn, "/finishActivation", {"action": "FINISH_ACTIVATION", "key": KEY,
                                                 "activationId": answer["activationId"],
                                                 "status": 5})
                if i >= 20:  # the first ones warm up (and walk the spent head once)
                    took.append(elapsed * 1000)
            conn.close()
    _, p50, p99, _ = latencies(took)
    return p50, p99, issued_spent


def mixed_caller(args: tuple[int, int, int]) -> list[float]:
    port, pairs, seed = args
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    took = []
    for i in range(pairs):
        service = "rent" if i % 2 == 0 else rng.choice(SERVICES[:5])
        path = "/getNumberRent" if service == "rent" else "/getNumber"
        elapsed, answer = post(conn, path, {"action": "GET_NUMBER", "key": KEY,
                                            "service": service, "sum": 20})
        took.append(elapsed * 1000)
        if answer["status"] != "SUCCESS":
            continue
        status = rng.choice((3, 4, 5))
        elapsed, _ = post(conn, "/finishActivation", {
            "action": "FINISH_ACTIVATION", "key": KEY, "activationId": answer["activationId"],
            "status": status, "sum": 20})
        took.append(elapsed * 1000)
    conn.close()
    return took


def mixed(pool_size: int, callers: int, pairs: int) -> tuple[int, float, float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        build_books(db_path, pool_size)
        # ban_after high: cancels without SMS would otherwise ban numbers mid-run.
        with serving(db_path, "--ban-after", "1000000", env=ENV) as port:
            started = time.perf_counter()
            with multiprocessing.Pool(callers) as workers:
                results = workers.map(mixed_caller,
                                      [(port, pairs, seed) for seed in range(callers)])
            wall = time.perf_counter() - started
        conn = sqlite3.connect(db_path)
        # Two operations on one number overlap if the later one began before the earlier
        # one let its number go (FINISH; a failure frees it too).
        overlaps = conn.execute(
            "SELECT count(*) FROM operations a JOIN operations b ON a.number_id = b.number_id"
            " AND a.id < b.id WHERE b.created_at < coalesce(a.finished_at, a.failed_at,"
            " a.lapsed_at, '9999')").fetchone()[0]
        conn.close()
    merged = [t for r in results for t in r]
    count, p50, p99, worst = latencies(merged)
    return count, count / wall, p50, p99, worst, overlaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--calls", type=int, default=300, help="GET_SERVICES calls timed")
    parser.add_argument("--pairs", type=int, default=300, help="GET_NUMBER vk pairs timed")
    parser.add_argument("--mixed-pool", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--mixed-pairs", type=int, default=300, help="pairs per caller")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; times in ms; "
          f"{len(SERVICES)} services offered")
    print("\n1. GET_SERVICES, 10% of the numbers spent for 1-3 services")
    print(f"{'numbers':>10}{'/getServices p50':>18}{'p99':>8}{'POST / p50':>12}{'p99':>8}")
    figures = {}
    for size in args.sizes:
        a50, a99, b50, b99 = services_latency(size, args.calls)
        figures[size] = a50
        print(f"{size:>10,}{a50:>18.2f}{a99:>8.2f}{b50:>12.2f}{b99:>8.2f}")
    small, large = min(args.sizes), max(args.sizes)
    print(f"p50 ratio {large:,} / {small:,}: {figures[large] / figures[small]:.2f}x")
    print("\n2. GET_NUMBER vk, the 99% of numbers idle longest spent for vk")
    print(f"{'numbers':>10}{'p50':>8}{'p99':>8}{'spent issued':>14}")
    figures = {}
    for size in args.sizes:
        p50, p99, bad = spent_head_latency(size, args.pairs)
        figures[size] = p50
        print(f"{size:>10,}{p50:>8.2f}{p99:>8.2f}{bad:>14}")
    print(f"p50 ratio {large:,} / {small:,}: {figures[large] / figures[small]:.2f}x")
    print(f"\n3. Mixed load: {args.callers} callers, rent and activations, "
          f"{args.mixed_pool:,} numbers")
    count, rate, p50, p99, worst, overlaps = mixed(args.mixed_pool, args.callers,
                                                    args.mixed_pairs)
    print(f"{count} requests, {rate:.0f}/s; p50 {p50:.2f}, p99 {p99:.2f}, worst {worst:.2f};"
          f" numbers in two open operations at once: {overlaps}")


if __name__ == "__main__":
    main()
