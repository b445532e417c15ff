"""The worst case of a claim under exclusions, on 1,000 and 1,000,000 numbers.

A client that always excludes the same prefix leaves those numbers idle the longest, so
they fill the head of the idle order. Here 99% of the pool starts with the excluded
prefix 49151 and is idle longer than every allowed number: a claim that scanned the idle
order would read ~99% of the pool each time. For each pool size this starts `rentbox
serve` and drives --callers processes, each looping GET_NUMBER (exceptionPhoneSet
[49151]) then FINISH (status 3), and checks that no excluded number was issued.

    python benchmarks/claim_exclusions.py                 # 1,000 and 1,000,000 numbers
    python benchmarks/claim_exclusions.py --sizes 1000 100000 --allowed 0.001

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

from common import HOST, KEY, build_books, latencies, post, serving

PREFIX = "49151"


def caller(args: tuple[int, int]) -> dict:
    port, pairs = args
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    took, bad, misses = [], 0, 0
    for _ in range(pairs):
        elapsed, answer = post(conn, "/getNumberRent", {
            "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400,
            "country": "germany", "exceptionPhoneSet": [int(PREFIX)]})
        took.append(elapsed * 1000)
        if answer.get("status") != "SUCCESS":
            misses += 1
            continue
        bad += str(answer["number"]).startswith(PREFIX)
        post(conn, "/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "key": KEY, "service": "rent",
            "activationId": answer["activationId"], "status": 3, "sum": 400})
    conn.close()
    return {"took": took, "bad": bad, "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--allowed", type=float, default=0.01,
                        help="share of the pool the client may take (idle the shortest)")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.callers} callers x {args.pairs} pairs, {args.allowed:.1%} of the pool "
          f"allowed, Python {sys.version.split()[0]}; times in ms")
    print(f"{'numbers':>10}{'claims':>8}{'req/s':>8}{'p50':>8}{'p99':>8}{'max':>8}"
          f"{'excluded issued':>17}{'NO_NUMBERS':>12}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db_path = Path(tmp) / "bench.db"
            build_books(db_path, size, excluded_prefix=PREFIX, allowed_share=args.allowed)
            with serving(db_path) as port:
                with multiprocessing.Pool(args.callers) as workers:
                    workers.map(caller, [(port, 10)] * args.callers)  # warm up
                    started = time.perf_counter()
                    results = workers.map(caller, [(port, args.pairs)] * args.callers)
                    wall = time.perf_counter() - started
        took = [t for r in results for t in r["took"]]
        count, p50, p99, worst = latencies(took)
        print(f"{size:>10,}{count:>8}{count / wall:>8.0f}{p50:>8.2f}{p99:>8.2f}{worst:>8.2f}"
              f"{sum(r['bad'] for r in results):>17}{sum(r['misses'] for r in results):>12}")


if __name__ == "__main__":
    main()
