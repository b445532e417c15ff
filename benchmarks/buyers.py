"""Three buyers on one pool: GET_NUMBER under load, no number in two open operations,
counts never above what could be issued, and GET_SERVICES flat in pool size (issue 23).

Every figure comes from a real `rentbox serve` with three buyers: Onlinesim, SMSHub
(RENTBOX_SMSHUB_KEY, POST /smshub) and an SMSHub-protocol clone from a buyers file (POST
/buyer/clone) that names the same 8 services by their long names (`whatsapp` for `wa`).

1. Load, on --pool (100,000) numbers: each buyer polls GET_SERVICES every second (one
   process each) while --callers (8) caller processes, spread over the three buyers, take
   numbers: GET_NUMBER for a random service (a quarter of Onlinesim's for rent), and
   once a caller holds --hold (50) operations, FINISH of its oldest with status 3, 4 or
   5 (3 spends its number for that service at every buyer). GET_NUMBER p50/p99 (goal: p99
   under 25 ms), per buyer and overall.

   No number in two open operations: afterwards, every pair of operations on one number
   is checked from the database (the later began after the earlier let it go: FINISH,
   failure or lapse), as benchmarks/activations.py does.

   Counts never above what could be issued: every GET_SERVICES answer of the run is
   checked afterwards against what the callers saw. A caller notes, on the wall clock
   that rentbox's clock reads too, when it sent each call and when the answer came. An
   answer's counts were read at some moment between the poller's send (s) and receipt
   (r). A number was *certainly* unavailable to a service during all of [s, r] if its
   GET_NUMBER was answered before s (committed: rentbox answers after the commit) and
   its FINISH was not sent before r, or if a FINISH 3 for that service was answered
   before s (spent for good). So for each (country, operator, service) of each answer:

       count <= numbers of that operator - those certainly unavailable  (the goal)
       count >= numbers of that operator - those possibly unavailable   (a sanity check)

   where "possibly" widens the windows the other way (GET_NUMBER sent before r, FINISH
   not answered before s; FINISH 3 sent before r). About 400 numbers are held at any
   time and every FINISH 3 spends one for good, so a count that lags behind claims or
   sales by more than the numbers in flight during its call (the gap between the two
   bounds, printed: a handful) breaks the first bound; the second shows that the check
   is tight. (Tried on a server made to count one number too many: caught on about a
   quarter of the counts; one that ignored spent numbers: caught, by up to 10.)

2. GET_SERVICES per buyer, unloaded, on --sizes (1,000 and 100,000) numbers, 10% of them
   spent for one or two services, the three buyers calling in turn: p50/p99 per buyer,
   and the p50 ratio large/small (flat: the counts are tallies, not row counts).

Prints the core count and the load average before and after the load: the callers, the
pollers and the server share the machine's cores, and anything else running skews the
tail.

    python benchmarks/buyers.py
    python benchmarks/buyers.py --pool 20000 --calls 300 --sizes 1000 20000

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

from rentbox.buyers import ALIASES

HUB_KEY, CLONE_KEY = "benchmark-hub-key", "benchmark-clone-key"
SERVICES = ["vk", "wa", "tg", "ok", "fb", "ig", "go", "ds"]
LONG_NAMES = {"vk": "vkontakte", "wa": "whatsapp", "tg": "telegram", "ok": "odnoklassniki",
              "fb": "facebook", "ig": "instagram", "go": "google", "ds": "discord"}
assert all(ALIASES[long] == short for short, long in LONG_NAMES.items())
BUYERS = ("onlinesim", "smshub", "clone")
KEYS = {"onlinesim": KEY, "smshub": HUB_KEY, "clone": CLONE_KEY}
PATHS = {"smshub": "/smshub", "clone": "/buyer/clone"}


def environment(folder: Path) -> dict:
    """The environment of `rentbox serve` with the three buyers."""
    buyers_file = folder / "buyers.toml"
    buyers_file.write_text(
        f'[buyers.clone]\nprotocol = "smshub"\nkey = "{CLONE_KEY}"\n'
        f"services = [{', '.join(repr(LONG_NAMES[s]) for s in SERVICES)}]\n")
    return {"RENTBOX_SERVICES": ",".join(SERVICES), "RENTBOX_SMSHUB_KEY": HUB_KEY,
            "RENTBOX_BUYERS": str(buyers_file)}


def services_call(conn, buyer: str) -> tuple[float, dict]:
    """One GET_SERVICES of `buyer` (Onlinesim's at POST /: rent and services)."""
    return post(conn, PATHS.get(buyer, "/"), {"action": "GET_SERVICES", "key": KEYS[buyer]})


def counts_of(buyer: str, answer: dict) -> dict[tuple[str, str, str], int]:
    """{(country, operator, canonical service or 'rent'): count} of an answer."""
    return {(c["country"], operator, ALIASES.get(service, service)): n
            for c in answer["countryList"]
            for operator, per_service in c["operatorMap"].items()
            for service, n in per_service.items()}


def number_call(conn, buyer: str, service: str) -> tuple[float, dict]:
    if buyer == "onlinesim":
        path = "/getNumberRent" if service == "rent" else "/getNumber"
        return post(conn, path, {"action": "GET_NUMBER", "key": KEY, "service": service,
                                 "sum": 20})
    name = LONG_NAMES[service] if buyer == "clone" else service
    return post(conn, PATHS[buyer], {"action": "GET_NUMBER", "key": KEYS[buyer],
                                     "service": name, "sum": 0.5, "currency": 840,
                                     "country": "germany", "operator": "any"})


def finish_call(conn, buyer: str, activation_id: int, status: int) -> tuple[float, dict]:
    path = PATHS.get(buyer, "/finishActivation")
    return post(conn, path, {"action": "FINISH_ACTIVATION", "key": KEYS[buyer],
                             "activationId": activation_id, "status": status})


# ---- 1. the load ---------------------------------------------------------------------

def poller(port: int, buyer: str, stop, results) -> None:
    """GET_SERVICES once a second until `stop`: [(s, r, ms, counts)]."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    answers = []
    next_at = time.monotonic()
    while not stop.is_set():
        sent = time.time()
        elapsed, answer = services_call(conn, buyer)
        answers.append((sent, time.time(), elapsed * 1000, counts_of(buyer, answer)))
        next_at += 1.0
        stop.wait(max(0.0, next_at - time.monotonic()))
    conn.close()
    results.put(("poller", buyer, answers))


def caller(port: int, buyer: str, seed: int, calls: int, hold: int, results) -> None:
    """`calls` GET_NUMBER; past `hold` held operations, FINISH of the oldest. Sends
    ("caller", buyer, claims, finishes): claims [(id, number, service, sent, received,
    ms)], finishes {id: (status, sent, received, ms)}."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    claims, finishes, held = [], {}, []
    for _ in range(calls):
        service = ("rent" if buyer == "onlinesim" and rng.random() < 0.25
                   else rng.choice(SERVICES))
        sent = time.time()
        elapsed, answer = number_call(conn, buyer, service)
        received = time.time()
        if answer["status"] != "SUCCESS":
            raise SystemExit(f"GET_NUMBER {buyer} {service}: {answer}")
        claims.append((answer["activationId"], str(answer["number"]), service, sent,
                       received, elapsed * 1000))
        held.append(answer["activationId"])
        if len(held) > hold:
            oldest, status = held.pop(0), rng.choice((3, 4, 5))
            sent = time.time()
            elapsed, answer = finish_call(conn, buyer, oldest, status)
            if answer["status"] != "SUCCESS":
                raise SystemExit(f"FINISH {buyer} {oldest}: {answer}")
            finishes[oldest] = (status, sent, time.time(), elapsed * 1000)
    conn.close()
    results.put(("caller", buyer, claims, finishes))


def load(pool: int, callers: int, calls: int, hold: int) -> dict:
    """Run the load on a fresh pool; the figures and the checks' results."""
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        build_books(db_path, pool)
        # ban_after high: cancels without SMS would otherwise ban numbers mid-run.
        with serving(db_path, "--ban-after", "1000000", env=environment(Path(tmp))) as port:
            context = multiprocessing.get_context("fork")
            stop, results = context.Event(), context.Queue()
            pollers = [context.Process(target=poller, args=(port, b, stop, results))
                       for b in BUYERS]
            workers = [context.Process(target=caller, args=(
                port, BUYERS[i % 3], i, calls, hold, results)) for i in range(callers)]
            for process in pollers:
                process.start()
            time.sleep(1.5)  # every poller has answered once before the callers start
            started = time.perf_counter()
            for process in workers:
                process.start()
            got = []
            # Read before join: a process does not exit until its result is taken.
            while len(got) < callers:
                got.append(results.get(timeout=600))
            wall = time.perf_counter() - started
            stop.set()
            while len(got) < callers + len(pollers):
                got.append(results.get(timeout=60))
            for process in pollers + workers:
                process.join(timeout=30)
                if process.exitcode != 0:
                    raise SystemExit(f"a benchmark process failed (exit {process.exitcode})")
        conn = sqlite3.connect(db_path)
        # Two operations on one number overlap if the later one began before the earlier
        # one let its number go (FINISH; a failure or a lapse frees it too).
        overlaps = conn.execute(
            "SELECT count(*) FROM operations a JOIN operations b ON a.number_id = b.number_id"
            " AND a.id < b.id WHERE b.created_at < coalesce(a.finished_at, a.failed_at,"
            " a.lapsed_at, '9999')").fetchone()[0]
        reused = conn.execute("SELECT count(*) FROM (SELECT number_id FROM operations"
                              " GROUP BY number_id HAVING count(*) > 1)").fetchone()[0]
        operators = dict(conn.execute("SELECT number, operator FROM numbers"))
        conn.close()
    claims = [(buyer, c) for kind, buyer, *rest in got if kind == "caller" for c in rest[0]]
    finishes = {k: v for kind, _, *rest in got if kind == "caller" for k, v in rest[1].items()}
    polls = {buyer: rest[0] for kind, buyer, *rest in got if kind == "poller"}
    return {"wall": wall, "claims": claims, "finishes": finishes, "polls": polls,
            "overlaps": overlaps, "reused": reused,
            "counts": check_counts(claims, finishes, polls, operators)}


def check_counts(claims, finishes, polls, operators: dict[str, str]) -> dict:
    """Every count of every GET_SERVICES answer against the numbers certainly (and
    possibly) unavailable while it was read (the docstring's method)."""
    total: dict[str, int] = {}
    for operator in operators.values():
        total[operator] = total.get(operator, 0) + 1
    # Per claim: (number, operator, canonical service, GET_NUMBER sent, answered,
    # FINISH status, FINISH sent, FINISH answered); no FINISH: held to the end.
    ops = []
    for _, (activation_id, number, service, sent, received, _) in claims:
        status, f_sent, f_received, _ = finishes.get(activation_id, (None, None, None, None))
        ops.append((number, operators[number], service, sent, received, status, f_sent,
                    f_received))
    checked = above = below = 0
    worst_above, gaps = 0, []
    for buyer, answers in polls.items():
        for s, r, _, counts in answers:
            certain, possible = {}, {}  # (operator, service or None) -> set of numbers
            for number, op, service, sent, received, status, f_sent, f_received in ops:
                if received <= s and (f_sent is None or f_sent >= r):
                    certain.setdefault((op, None), set()).add(number)
                if sent <= r and (f_received is None or f_received >= s):
                    possible.setdefault((op, None), set()).add(number)
                if status == 3 and service != "rent":
                    if f_received <= s:
                        certain.setdefault((op, service), set()).add(number)
                    if f_sent <= r:
                        possible.setdefault((op, service), set()).add(number)
            offered = ["rent"] + SERVICES if buyer == "onlinesim" else SERVICES
            for operator, n in total.items():
                for service in offered:
                    def unavailable(sets, keys=((operator, None), (operator, service))):
                        return len(set().union(*(sets.get(k, set()) for k in keys)))
                    upper = n - unavailable(certain)
                    lower = n - unavailable(possible)
                    count = counts.get(("germany", operator, service), 0)
                    checked += 1
                    if count > upper:
                        above += 1
                        worst_above = max(worst_above, count - upper)
                    if count < lower:
                        below += 1
                    gaps.append(upper - lower)
    return {"checked": checked, "above": above, "worst_above": worst_above, "below": below,
            "widest": max(gaps, default=0), "median_width": sorted(gaps)[len(gaps) // 2]
            if gaps else 0}


# ---- 2. GET_SERVICES flat in pool size -----------------------------------------------

def spend_some(db_path: Path, share: float) -> None:
    """Mark `share` of the numbers spent for one or two of the offered services."""
    conn = sqlite3.connect(db_path)
    rng = random.Random(7)
    stamp = "2026-01-01T00:00:00.000000Z"
    ids = [r[0] for r in conn.execute("SELECT id FROM numbers")]
    rows = [(number_id, service, stamp, stamp)
            for number_id in rng.sample(ids, int(len(ids) * share))
            for service in rng.sample(SERVICES, rng.randint(1, 2))]
    with conn:
        conn.executemany("INSERT INTO service_uses (number_id, service, tries, spent_at,"
                         " updated_at) VALUES (?, ?, 0, ?, ?)", rows)
    conn.execute("ANALYZE")
    conn.close()


def services_latency(size: int, calls: int) -> dict[str, tuple[float, float]]:
    """{buyer: (p50, p99)} of GET_SERVICES on `size` numbers, the buyers in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        build_books(db_path, size)
        spend_some(db_path, 0.10)
        with serving(db_path, env=environment(Path(tmp))) as port:
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            took: dict[str, list[float]] = {buyer: [] for buyer in BUYERS}
            for i in range(20 + calls):  # the buyers in turn; the first 20 warm up
                for buyer in BUYERS:
                    elapsed, _ = services_call(conn, buyer)
                    if i >= 20:
                        took[buyer].append(elapsed * 1000)
            conn.close()
    return {buyer: latencies(took[buyer])[1:3] for buyer in BUYERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=100_000, help="numbers under load")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=1000, help="GET_NUMBER per caller")
    parser.add_argument("--hold", type=int, default=50,
                        help="operations a caller holds before it finishes its oldest")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--services-calls", type=int, default=1000,
                        help="GET_SERVICES timed per buyer and size")
    args = parser.parse_args()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores ({affinity} usable), "
          f"load average {os.getloadavg()[0]:.1f}; times in ms; buyers: "
          f"{', '.join(BUYERS)}; {len(SERVICES)} services")

    print(f"\n1. {args.callers} callers over three buyers, each buyer polling GET_SERVICES "
          f"every second, {args.pool:,} numbers")
    run = load(args.pool, args.callers, args.calls, args.hold)
    claims = run["claims"]
    print(f"{len(claims)} GET_NUMBER and {len(run['finishes'])} FINISH in "
          f"{run['wall']:.1f} s ({(len(claims) + len(run['finishes'])) / run['wall']:.0f}"
          " calls/s)")
    print(f"{'GET_NUMBER':<12}{'calls':>7}{'p50':>8}{'p99':>8}{'worst':>8}")
    for buyer in BUYERS + ("all",):
        took = [c[5] for b, c in claims if buyer in (b, "all")]
        count, p50, p99, worst = latencies(took)
        print(f"{buyer:<12}{count:>7}{p50:>8.2f}{p99:>8.2f}{worst:>8.2f}")
    _, f50, f99, fworst = latencies([f[3] for f in run["finishes"].values()])
    print(f"{'FINISH':<12}{len(run['finishes']):>7}{f50:>8.2f}{f99:>8.2f}{fworst:>8.2f}")
    print(f"{'GET_SERVICES':<12} (polled under the load)")
    for buyer, answers in run["polls"].items():
        count, p50, p99, worst = latencies([a[2] for a in answers])
        print(f"{buyer:<12}{count:>7}{p50:>8.2f}{p99:>8.2f}{worst:>8.2f}")
    print(f"Load average after the load: {os.getloadavg()[0]:.1f}")
    print(f"Numbers in two open operations at once: {run['overlaps']} "
          f"({run['reused']} numbers issued more than once)")
    counts = run["counts"]
    print(f"Counts checked: {counts['checked']:,}; above what could be issued: "
          f"{counts['above']} (worst by {counts['worst_above']}); below what was surely "
          f"free: {counts['below']}; width of the window (numbers in flight) median "
          f"{counts['median_width']}, widest {counts['widest']}")

    print("\n2. GET_SERVICES per buyer, unloaded, 10% of the numbers spent for 1-2 services")
    print(f"{'numbers':>10}" + "".join(f"{b + ' p50':>16}{'p99':>8}" for b in BUYERS))
    figures = {}
    for size in args.sizes:
        figures[size] = services_latency(size, args.services_calls)
        print(f"{size:>10,}" + "".join(f"{figures[size][b][0]:>16.2f}{figures[size][b][1]:>8.2f}"
                                      for b in BUYERS))
    small, large = min(args.sizes), max(args.sizes)
    print(f"p50 ratio {large:,} / {small:,}: " + ", ".join(
        f"{b} {figures[large][b][0] / figures[small][b][0]:.2f}x" for b in BUYERS))


if __name__ == "__main__":
    main()
