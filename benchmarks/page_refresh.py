"""GET_NUMBER with and without a browser refreshing the status page, and Prometheus scraping
/metrics, every second.

Builds a pool of --numbers German numbers with a year of --operations closed rentals
(benchmarks/common.py's build_books) and a delivered SMS for each sold one, so that the
page's charts read a full 90 days. Starts `rentbox serve` with RENTBOX_CONSOLE_PASSWORD,
then runs the same load twice, in alternating rounds: --callers connections each
looping GET_NUMBER/FINISH pairs for --seconds, once alone and once while another
connection fetches the page (HTML, authenticated, gzip, as a browser does) and /metrics
(as Prometheus does, Bearer token) every second. Prints GET_NUMBER p50 and p99 of both
side by side, and what the page and the scrape took.

    python benchmarks/page_refresh.py                         # 100,000 numbers, a year
    python benchmarks/page_refresh.py --numbers 20000 --seconds 10

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import HOST, build_books, claim_and_finish, latencies, serving

PASSWORD = "benchmark-console"
METRICS_TOKEN = "benchmark-metrics"
SCRAPE_HEADERS = {"Authorization": f"Bearer {METRICS_TOKEN}", "Accept-Encoding": "gzip"}
PAGE_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Encoding": "gzip, deflate, br",
    "Authorization": "Basic " + base64.b64encode(f"partner:{PASSWORD}".encode()).decode(),
}


def add_sms(db_path: Path) -> int:
    """One delivered SMS per sold rental, stored 3 minutes in, taken 0.1-2 s later."""
    from rentbox.db import open_database

    db = open_database(db_path)
    with db.transaction():
        db.execute(
            "INSERT INTO sms (source, number, operation_id, sender, text, received_at,"
            " created_at, push_state, attempts, delivered_at)"
            " SELECT 'api', n.number, o.id, 'Service', 'code 123456', o.sms_accepted_at,"
            " o.sms_accepted_at, 'delivered', 1,"
            " strftime('%Y-%m-%dT%H:%M:%f000Z', o.sms_accepted_at, '+' || (0.1 + (o.id % 19)"
            " / 10.0) || ' seconds')"
            " FROM operations o JOIN numbers n ON n.id = o.number_id"
            " WHERE o.sms_accepted_at IS NOT NULL")
    count = db.row("SELECT count(*) AS n FROM sms")["n"]
    db.execute("ANALYZE")
    db.close()
    return count


def claims(port: int, until: float, took: list[float]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    while time.monotonic() < until:
        took.append(claim_and_finish(conn))
    conn.close()


def fetch(conn: http.client.HTTPConnection, path: str, headers: dict, expect: bytes
          ) -> tuple[float, int]:
    """GET `path` (gzip); its ms and gzipped size. Raises unless it is 200 with `expect`."""
    started = time.perf_counter()
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or expect not in gzip.decompress(body):
        raise RuntimeError(f"{path}: HTTP {response.status}")
    return (time.perf_counter() - started) * 1000, len(body)


def refresh(port: int, stop: threading.Event, took: list[float], sizes: list[int],
            scraped: list[float]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    while True:
        started = time.perf_counter()
        page_ms, size = fetch(conn, "/", PAGE_HEADERS, b"<svg")
        took.append(page_ms)
        sizes.append(size)
        scraped.append(fetch(conn, "/metrics", SCRAPE_HEADERS, b"rentbox_pool_numbers")[0])
        if stop.wait(max(0.0, 1.0 - (time.perf_counter() - started))):
            break
    conn.close()


def run(port: int, callers: int, seconds: float, with_page: bool, page_took: list[float],
        sizes: list[int], scraped: list[float]) -> list[float]:
    took: list[float] = []
    stop = threading.Event()
    page = threading.Thread(target=refresh, args=(port, stop, page_took, sizes, scraped))
    if with_page:
        page.start()
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=claims, args=(port, until, took))
               for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    if with_page:
        page.join()
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=100_000)
    parser.add_argument("--operations", type=int, default=365_000, help="over the last year")
    parser.add_argument("--callers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="each: alone, then with page")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        started = time.perf_counter()
        build_books(db_path, args.numbers, args.operations)
        messages = add_sms(db_path)
        print(f"Python {sys.version.split()[0]}; {args.numbers:,} numbers, "
              f"{args.operations:,} operations over a year, {messages:,} SMS "
              f"(built in {time.perf_counter() - started:.0f} s); {args.callers} callers, "
              f"{args.rounds} x {args.seconds:g} s each way; times in ms")
        alone: list[float] = []
        loaded: list[float] = []
        page_took: list[float] = []
        sizes: list[int] = []
        scraped: list[float] = []
        env = {"RENTBOX_CONSOLE_PASSWORD": PASSWORD, "RENTBOX_METRICS_TOKEN": METRICS_TOKEN}
        with serving(db_path, env=env) as port:
            run(port, args.callers, 2, True, [], [], [])  # warm up both paths
            for _ in range(args.rounds):
                alone += run(port, args.callers, args.seconds, False, page_took, sizes, scraped)
                loaded += run(port, args.callers, args.seconds, True, page_took, sizes,
                              scraped)
    print(f"{'GET_NUMBER':<28}{'calls':>8}{'p50':>8}{'p99':>8}{'worst':>8}")
    for name, values in (("alone", alone), ("page + /metrics every 1 s", loaded)):
        count, p50, p99, worst = latencies(values)
        print(f"{name:<28}{count:>8}{p50:>8.2f}{p99:>8.2f}{worst:>8.1f}")
    count, p50, p99, worst = latencies(page_took)
    print(f"{'the page itself':<28}{count:>8}{p50:>8.2f}{p99:>8.2f}{worst:>8.1f}"
          f"   ({sum(sizes) // len(sizes) // 1024} KB gzipped)")
    count, p50, p99, worst = latencies(scraped)
    print(f"{'a /metrics scrape':<28}{count:>8}{p50:>8.2f}{p99:>8.2f}{worst:>8.1f}")


if __name__ == "__main__":
    main()
