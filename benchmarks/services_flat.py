"""GET_SERVICES on 1,000 and 1,000,000 numbers, and GET_NUMBER while a poller calls it.

GET_SERVICES reads the free_counts tally (rentbox/tallies.py), so its cost should not grow
with the pool. For each pool size this starts `rentbox serve`, times --calls GET_SERVICES
in a row, then times GET_NUMBER/FINISH pairs from one caller while another connection
polls GET_SERVICES every 100 ms (with one waitress thread, a slow count would hold up
the claims queued behind it).

    python benchmarks/services_flat.py                    # 1,000 and 1,000,000 numbers
    python benchmarks/services_flat.py --sizes 1000 20000

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import threading
from pathlib import Path

from common import HOST, KEY, build_books, claim_and_finish, latencies, post, serving

SERVICES = {"action": "GET_SERVICES", "key": KEY}


def claims(port: int, pairs: int) -> list[float]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    took = []
    for _ in range(pairs):
        took.append(claim_and_finish(conn))
    conn.close()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--calls", type=int, default=300, help="GET_SERVICES calls timed")
    parser.add_argument("--pairs", type=int, default=300, help="GET_NUMBER/FINISH pairs")
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}; times in ms")
    print(f"{'numbers':>10}{'SERVICES p50':>14}{'p99':>8}{'NUMBER p50 (polled)':>21}{'p99':>8}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db_path = Path(tmp) / "bench.db"
            build_books(db_path, size)
            with serving(db_path) as port:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                for _ in range(20):
                    post(conn, "/getServicesRent", SERVICES)  # warm up
                services = [post(conn, "/getServicesRent", SERVICES)[0] * 1000
                            for _ in range(args.calls)]
                stop = threading.Event()

                def poll() -> None:
                    poller = http.client.HTTPConnection(HOST, port, timeout=10)
                    while not stop.wait(0.1):
                        post(poller, "/getServicesRent", SERVICES)
                    poller.close()

                poller = threading.Thread(target=poll)
                poller.start()
                try:
                    claimed = claims(port, args.pairs)
                finally:
                    stop.set()
                    poller.join()
                conn.close()
        _, s50, s99, _ = latencies(services)
        _, c50, c99, _ = latencies(claimed)
        print(f"{size:>10,}{s50:>14.2f}{s99:>8.2f}{c50:>21.2f}{c99:>8.2f}")


if __name__ == "__main__":
    main()
