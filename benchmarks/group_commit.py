"""Group commit (issue 25): rentbox's durable writes next to a durable floor, and an SMS burst.

For each waitress thread count given (`--threads`, default 1,4,8), on a fresh database:

1. GET_NUMBER/FINISH. Two servers in their own processes, the same stack (waitress via
   rentbox.server.make_waitress + Bottle + rentbox's gzip and access-log middleware, same
   thread count):
     floor    each POST does one INSERT and one COMMIT (WAL, synchronous=FULL, one
              connection per thread, writes serialised by a threading.Lock as rentbox
              does, so no SQLite busy-handler polling) and answers a small JSON body;
     rentbox  `rentbox serve --threads N` on 20,000 numbers (group commit: writer.py).
   CALLERS client processes each loop GET_NUMBER then FINISH (status 3 and 4 in turn) on a
   keep-alive connection; rounds alternate floor and rentbox, each printed. Then checks
   that no number was issued twice: from the callers' own times (no two rentals of one
   number overlapping between "GET_NUMBER answered" and "FINISH sent") and from the
   database (no number in two open operations; as many operations as GET_NUMBERs answered).
2. SMS burst. `rentbox serve --threads N` with RENTBOX_PUSH_URL at a stand-in for
   Onlinesim in this process (answers SUCCESS, counts deliveries per smsId): RENTALS
   rentals opened by GET_NUMBER, then GATEWAYS processes post SMS SMS to POST /sms (Bearer
   gateway token; to, from, text and an id each) all at once, for at most --burst-max-s.
   Reports SMS taken in per second, then waits until every SMS was pushed and checks each
   was delivered exactly once. The same burst against the floor first: the stack's ceiling.
   --per-post N: N SMS per request, as an Ejoin SIM bank reports a burst (a `recv-sms`
   push of N rows to POST /sms/ejoin); the floor then stores each request as one row.

Beside throughput and latency, each server's CPU time per request (from /proc: far less
disturbed than throughput by other work on a shared machine) and the longest time in which
no caller got any answer (a stall of the whole server, not one slow request). Prints the
core count, the load average and the rentbox commit. Goals (issue 25): rentbox >= 1.0x
the floor with GET_NUMBER/FINISH p99 < 25 ms; SMS intake >= 2,000/s.

    python benchmarks/group_commit.py
    python benchmarks/group_commit.py --threads 1,4 --rounds 3 --sms 10000
    python benchmarks/group_commit.py --threads 8 --skip rent --per-post 10
    python benchmarks/group_commit.py --threads 8 --skip sms --fsync-ms 2   # a slower disk

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import http.server
import json
import multiprocessing
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from common import HOST, KEY, build_books, free_port, latencies, post, serving, wait_until_up

TOKEN = "benchmark-gateway-token"
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 10  # every request's
WARM_UP_SMS = 20  # per gateway, before the burst that is measured


# ---------------------------------------------------------------- the durable floor

@contextlib.contextmanager
def floor_serving(db_path: Path, threads: int) -> Iterator[tuple[int, int]]:
    """Run the floor (this script, --floor-server) on a fresh `db_path` and a free loopback
    port until the block ends; yields (port, process id)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE writes (id INTEGER PRIMARY KEY, path TEXT, body BLOB, at REAL)")
    conn.close()
    port = free_port()
    floor = subprocess.Popen([sys.executable, __file__, "--floor-server", str(port),
                              "--floor-db", str(db_path), "--threads", str(threads)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(port)
        yield port, floor.pid
    finally:
        floor.terminate()
        floor.wait(timeout=30)


def run_floor(port: int, threads: int, db_path: Path) -> None:
    """The floor: the same waitress + Bottle + middleware stack; one INSERT and one durable
    COMMIT per POST, writes serialised by a lock, one connection per thread."""
    import logging

    import bottle

    from rentbox.settings import Settings
    from rentbox.server import make_waitress
    from rentbox.web.middleware import AccessLog, GzipAnswers

    logging.basicConfig(level=logging.INFO)  # the access log costs the same as rentbox's
    app = bottle.Bottle()
    local = threading.local()
    write_lock = threading.Lock()

    def connection() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(db_path, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # per connection, as rentbox's
        return conn

    @app.post("/<path:path>")
    def write(path):
        body = bottle.request.body.read()
        conn = connection()
        with write_lock:
            conn.execute("BEGIN IMMEDIATE")
            row_id = conn.execute("INSERT INTO writes (path, body, at) VALUES (?, ?, ?)",
                                  (path, body, time.time())).lastrowid
            conn.execute("COMMIT")
        bottle.response.content_type = "application/json; charset=utf-8"
        return json.dumps({"status": "SUCCESS", "number": 4915123456789,
                           "activationId": row_id, "smsId": row_id})

    @app.get("/health")
    def health():
        return {"status": "SUCCESS"}

    settings = Settings(api_key=KEY, host=HOST, port=port, threads=threads)
    make_waitress(AccessLog(GzipAnswers(app)), settings).run()


# ---------------------------------------------------------------- GET_NUMBER / FINISH

def caller(args: tuple[int, int, int]) -> dict:
    """One client process: `pairs` GET_NUMBER/FINISH pairs over one keep-alive connection.
    Times are time.monotonic(), one clock for every process of the machine."""
    port, pairs, index = args
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    get_ms, finish_ms, held, misses, refused, answered_at = [], [], [], 0, 0, []
    started = time.monotonic()
    for i in range(pairs):
        elapsed, answer = post(conn, "/getNumberRent", {
            "action": "GET_NUMBER", "service": "rent", "sum": 400, "country": "germany",
            "key": KEY})
        issued_at = time.monotonic()
        answered_at.append(issued_at)
        get_ms.append(elapsed * 1000)
        if answer.get("status") != "SUCCESS":
            misses += 1
            continue
        status = 3 if (i + index) % 2 else 4
        finish_sent_at = time.monotonic()
        elapsed, finished = post(conn, "/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "activationId": answer["activationId"],
            "status": status, "key": KEY, "service": "rent",
            "sum": 400 if status == 3 else 0})
        finish_ms.append(elapsed * 1000)
        answered_at.append(time.monotonic())
        if finished.get("status") != "SUCCESS":
            refused += 1
        held.append((str(answer["number"]), answer["activationId"], issued_at, finish_sent_at))
    ended = time.monotonic()
    conn.close()
    return {"get": get_ms, "finish": finish_ms, "held": held, "misses": misses,
            "refused": refused, "started": started, "ended": ended,
            "answered_at": answered_at}


def drive(port: int, callers: int, pairs: int) -> dict:
    """CALLERS processes at once; the wall time runs from the first request sent to the
    last answer received (process start-up left out)."""
    with multiprocessing.Pool(callers) as workers:
        results = workers.map(caller, [(port, pairs, i) for i in range(callers)])
    merged = {"get": [], "finish": [], "held": [], "misses": 0, "refused": 0,
              "answered_at": []}
    for r in results:
        for k in ("get", "finish", "held", "answered_at"):
            merged[k] += r[k]
        merged["misses"] += r["misses"]
        merged["refused"] += r["refused"]
    merged["wall"] = max(r["ended"] for r in results) - min(r["started"] for r in results)
    # The longest time in which no caller got any answer: a stall of the whole server
    # (all callers waiting at once), as opposed to one slow request.
    moments = sorted([min(r["started"] for r in results)] + merged["answered_at"])
    merged["pause_ms"] = max(b - a for a, b in zip(moments, moments[1:])) * 1000
    return merged


def overlaps(held: list[tuple[str, int, float, float]]) -> int:
    """Rentals of one number that overlapped: each held its number at least from its
    GET_NUMBER's answer to its FINISH's sending."""
    found = 0
    by_number: dict[str, list[tuple[float, float]]] = {}
    for number, _, issued_at, finish_sent_at in held:
        by_number.setdefault(number, []).append((issued_at, finish_sent_at))
    for spans in by_number.values():
        spans.sort()
        held_until = float("-inf")
        for issued_at, finish_sent_at in spans:
            if issued_at < held_until:
                found += 1
            held_until = max(held_until, finish_sent_at)
    return found


def database_check(db_path: Path, answered: int) -> str:
    """What the books say after the run, in one line starting with OK or PROBLEM."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        total, still_open = conn.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE state = 'open') FROM operations").fetchone()
        doubly_open = conn.execute(
            "SELECT COUNT(*) FROM (SELECT number_id FROM operations WHERE state = 'open'"
            " GROUP BY number_id HAVING COUNT(*) > 1)").fetchone()[0]
        held_twice = conn.execute(
            "SELECT COUNT(*) FROM numbers n JOIN operations o ON o.id = n.operation_id"
            " WHERE o.number_id <> n.id OR o.state <> 'open'").fetchone()[0]
    finally:
        conn.close()
    ok = total == answered and doubly_open == 0 and held_twice == 0 and still_open == 0
    return (f"{'OK' if ok else 'PROBLEM'}: {total} operations for {answered} GET_NUMBERs "
            f"answered, {still_open} still open, {doubly_open} numbers in two open "
            f"operations, {held_twice} numbers held by a wrong or closed operation")


def serving_pid(port: int) -> int | None:
    """The process of `rentbox serve --port PORT` (Linux /proc), or None."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in words and b"--port" in words and str(port).encode() in words:
            return int(entry.name)
    return None


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system, all threads) used so far by process `pid`: the server's
    cost per request, which the other work on a shared machine disturbs far less than
    its throughput. NaN where /proc cannot tell."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, TypeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(label: str, values: list[float], wall: float) -> str:
    count, p50, p99, worst = latencies(values)
    return f"{label:<24}{count:>9}{count / wall:>9.0f}{p50:>9.2f}{p99:>9.2f}{worst:>9.2f}"


def rent_part(threads: int, args, folder: Path, log_path: Path) -> dict:
    rentbox_db = folder / f"rent-{threads}.db"
    build_books(rentbox_db, args.pool)
    rounds = []
    with floor_serving(folder / f"floor-rent-{threads}.db", threads) as (floor_port, floor_pid):
        with serving(rentbox_db, "--threads", str(threads), log_path=log_path) as port:
            rentbox_pid = serving_pid(port)
            drive(floor_port, args.callers, 20)  # warm both up
            warm = drive(port, args.callers, 20)
            held = list(warm["held"])
            print(f"  {'':<22}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'max ms':>9}")
            for number in range(1, args.rounds + 1):
                # Alternating, so that a passing disturbance of the machine shows up as a
                # difference between rounds rather than between the two servers.
                before = cpu_s(floor_pid)
                bare = drive(floor_port, args.callers, args.pairs)
                floor_cpu = cpu_s(floor_pid) - before
                before = cpu_s(rentbox_pid)
                real = drive(port, args.callers, args.pairs)
                real_cpu = cpu_s(rentbox_pid) - before
                held += real["held"]
                floor_count = len(bare["get"]) + len(bare["finish"])
                real_count = len(real["get"]) + len(real["finish"])
                floor_rate, real_rate = floor_count / bare["wall"], real_count / real["wall"]
                floor_cpu_ms = floor_cpu * 1000 / floor_count
                real_cpu_ms = real_cpu * 1000 / real_count
                rounds.append({"floor": floor_rate, "rentbox": real_rate,
                               "floor_cpu_ms": floor_cpu_ms, "rentbox_cpu_ms": real_cpu_ms,
                               "get": real["get"], "finish": real["finish"],
                               "floor_all": bare["get"] + bare["finish"],
                               "misses": real["misses"], "refused": real["refused"]})
                print(f"  round {number}   ratio rentbox/floor {real_rate / floor_rate:.2f}x;"
                      f" server CPU per request: floor {floor_cpu_ms:.2f} ms, rentbox "
                      f"{real_cpu_ms:.2f} ms; longest time without any answer: floor "
                      f"{bare['pause_ms']:.0f} ms, rentbox {real['pause_ms']:.0f} ms   "
                      f"(load {os.getloadavg()[0]:.1f})")
                print("  " + row("  floor (INSERT+COMMIT)", bare["get"] + bare["finish"],
                                 bare["wall"]))
                print("  " + row("  GET_NUMBER", real["get"], real["wall"]))
                print("  " + row("  FINISH_ACTIVATION", real["finish"], real["wall"]))
                print("  " + row("  both", real["get"] + real["finish"], real["wall"]),
                      flush=True)
    misses = sum(r["misses"] for r in rounds) + warm["misses"]
    refused = sum(r["refused"] for r in rounds) + warm["refused"]
    ids = [activation for _, activation, _, _ in held]
    check = database_check(rentbox_db, len(held))
    print(f"  issued {len(held)} rentals ({misses} NO_NUMBERS, {refused} FINISH not "
          f"SUCCESS): {len(ids) - len(set(ids))} duplicate activation ids, "
          f"{overlaps(held)} overlapping rentals of one number")
    print(f"  database: {check}", flush=True)
    ratios = [r["rentbox"] / r["floor"] for r in rounds]
    return {"floor": statistics.median(r["floor"] for r in rounds),
            "rentbox": statistics.median(r["rentbox"] for r in rounds),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "floor_cpu_ms": statistics.median(r["floor_cpu_ms"] for r in rounds),
            "rentbox_cpu_ms": statistics.median(r["rentbox_cpu_ms"] for r in rounds),
            "floor_p99": max(latencies(r["floor_all"])[2] for r in rounds),
            "get_p99": max(latencies(r["get"])[2] for r in rounds),
            "finish_p99": max(latencies(r["finish"])[2] for r in rounds),
            "ok": check.startswith("OK") and overlaps(held) == 0 and len(ids) == len(set(ids))}


# ---------------------------------------------------------------- the SMS burst

class StandIn:
    """Onlinesim's PUSH_SMS endpoint: answers SUCCESS at once, counts each smsId."""

    def __init__(self):
        self.deliveries: dict[int, int] = {}
        self.changed = threading.Condition()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a connection silent that long is dropped

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = b'{"status":"SUCCESS"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                with stand_in.changed:
                    sms_id = body["smsId"]
                    stand_in.deliveries[sms_id] = stand_in.deliveries.get(sms_id, 0) + 1
                    stand_in.changed.notify_all()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/pushSmsRent"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, sms_ids: set[int], timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: sms_ids <= self.deliveries.keys(), timeout_s)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def gateway(args: tuple[int, int, list[str], int, int, float, int]) -> dict:
    """One gateway process: its share of the SMS, one request after another on one
    connection, until all are sent or the monotonic time `stop_at` has come. One SMS per
    POST /sms; with `per_post` > 1, as a SIM bank reports a burst: Ejoin's `recv-sms` push
    with that many SMS rows (`sms_num`) to POST /sms/ejoin."""
    port, index, numbers, first, count, stop_at, per_post = args
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    taken_ms, sms_ids = [], []
    started = time.monotonic()
    for i in range(first, first + count, per_post):
        if time.monotonic() > stop_at:
            break
        these = range(i, min(i + per_post, first + count))
        if per_post == 1:
            path = "/sms"
            body = {"to": numbers[i % len(numbers)], "from": "Bench",
                    "text": f"Your code is {i:06d}", "id": f"gw{index}-{i}"}
        else:
            path = f"/sms/ejoin?box=gw{index}"
            rows = [[0, f"{k % 32 + 1}.01", int(time.time()), "Bench", numbers[k % len(numbers)],
                     base64.b64encode(f"Your code is {k:06d}".encode()).decode()]
                    for k in these]
            body = {"type": "recv-sms", "sms_num": len(rows), "sms": rows}
        before = time.perf_counter()
        conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
        response = conn.getresponse()
        data = response.read()
        took_ms = (time.perf_counter() - before) * 1000
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status} {data[:200]!r}")
        answer = json.loads(data)
        if "smsIds" in answer:  # Ejoin's push: one id per SMS row
            sms_ids.extend(answer["smsIds"])
        elif len(these) == 1:
            sms_ids.append(answer["smsId"])
        else:  # the floor stores a push of several SMS as one row: one id for all
            sms_ids.extend(f"{answer['smsId']}/{k}" for k in range(len(these)))
        taken_ms.extend([took_ms] * len(these))  # each SMS waited for its POST's answer
    ended = time.monotonic()
    conn.close()
    return {"ms": taken_ms, "ids": sms_ids, "started": started, "ended": ended}


def burst(port: int, numbers: list[str], args, share: int | None = None,
          first: int = 0) -> dict:
    """GATEWAYS processes post `share` SMS each (by default their share of SMS) at once,
    for at most --burst-max-s; the SMS are numbered from `first` on."""
    share = share or args.sms // args.gateways
    stop_at = time.monotonic() + args.burst_max_s
    jobs = [(port, g, numbers, first + g * share, share, stop_at, args.per_post)
            for g in range(args.gateways)]
    with multiprocessing.Pool(args.gateways) as workers:
        results = workers.map(gateway, jobs)
    began = min(r["started"] for r in results)
    return {"began": began, "intake_s": max(r["ended"] for r in results) - began,
            "ids": [i for r in results for i in r["ids"]],
            "ms": [ms for r in results for ms in r["ms"]]}


def sms_part(threads: int, args, folder: Path, log_path: Path) -> dict:
    db_path = folder / f"sms-{threads}.db"
    build_books(db_path, max(args.rentals, 1000))
    numbers = [f"4916{i:09d}" for i in range(args.rentals)]  # the floor stores any
    with floor_serving(folder / f"floor-sms-{threads}.db", threads) as (floor_port, floor_pid):
        burst(floor_port, numbers, args, share=WARM_UP_SMS, first=args.sms)
        before = cpu_s(floor_pid)
        bare = burst(floor_port, numbers, args)
        floor_cpu_ms = (cpu_s(floor_pid) - before) * 1000 / max(1, len(bare["ids"]))
    floor_rate = len(bare["ids"]) / bare["intake_s"]
    _, p50, p99, worst = latencies(bare["ms"])
    print(f"  floor:   {len(bare['ids'])} SMS taken in, {floor_rate:.0f} SMS/s "
          f"({bare['intake_s']:.1f}s), answer p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {worst:.2f} ms; server CPU {floor_cpu_ms:.2f} ms per SMS", flush=True)
    stand_in = StandIn()
    try:
        with serving(db_path, "--threads", str(threads), log_path=log_path,
                     env={"RENTBOX_GATEWAY_TOKEN": TOKEN,
                          "RENTBOX_PUSH_URL": stand_in.url}) as port:
            conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
            numbers = []
            for _ in range(args.rentals):
                _, answer = post(conn, "/getNumberRent", {
                    "action": "GET_NUMBER", "service": "rent", "sum": 400,
                    "country": "germany", "key": KEY})
                numbers.append(str(answer["number"]))
            conn.close()
            rentbox_pid = serving_pid(port)
            # Warm up (the first SMS of each region loads its phone number metadata).
            warm = burst(port, numbers, args, share=WARM_UP_SMS, first=args.sms)
            stand_in.wait_for(set(warm["ids"]), args.drain_s)
            before = cpu_s(rentbox_pid)
            real = burst(port, numbers, args)
            intake_cpu_s = cpu_s(rentbox_pid) - before
            sms_ids = real["ids"]
            pushed_all = stand_in.wait_for(set(sms_ids), args.drain_s)
            drained_s = time.monotonic() - real["began"]
            # Taking each SMS in and pushing it, with the push's answer stored.
            cpu_ms = (cpu_s(rentbox_pid) - before) * 1000 / max(1, len(sms_ids))
            time.sleep(1)  # a late repeat of a push would show up within this
        with stand_in.changed:
            deliveries = dict(stand_in.deliveries)
    finally:
        stand_in.close()
    books = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        states = dict(books.execute(
            "SELECT push_state, COUNT(*) FROM sms GROUP BY push_state").fetchall())
    finally:
        books.close()
    count, p50, p99, worst = latencies(real["ms"])
    once = sum(1 for i in sms_ids if deliveries.get(i) == 1)
    repeated = sum(1 for i in sms_ids if deliveries.get(i, 0) > 1)
    missing = sum(1 for i in sms_ids if i not in deliveries)
    strangers = len(deliveries.keys() - set(sms_ids) - set(warm["ids"]))
    rate = count / real["intake_s"]
    ok = (pushed_all and once == count == len(set(sms_ids)) and not strangers)
    print(f"  rentbox: {count} SMS taken in, {rate:.0f} SMS/s ({real['intake_s']:.1f}s), "
          f"answer p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {worst:.2f} ms; server CPU "
          f"{intake_cpu_s * 1000 / max(1, count):.2f} ms per SMS during the burst")
    print(f"  pushed:  all {drained_s:.1f}s after the first SMS ({count / drained_s:.0f}/s "
          f"end to end; server CPU {cpu_ms:.2f} ms per SMS in and out): {once} delivered "
          f"once, {repeated} more than once, {missing} never, {strangers} unknown smsIds; "
          f"{len(sms_ids) - len(set(sms_ids))} duplicate smsIds; books {states}  "
          f"{'OK' if ok else 'PROBLEM'}", flush=True)
    return {"rate": rate, "floor_rate": floor_rate, "p99": p99, "pushed_s": drained_s,
            "cpu_ms": cpu_ms, "ok": ok}


# ---------------------------------------------------------------- the run

def fsync_ms(folder: Path) -> float:
    """The median time of one single-row durable commit on this disk (WAL, FULL)."""
    conn = sqlite3.connect(folder / "probe.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (x)")
    times = []
    for i in range(200):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - started) * 1000)
    conn.close()
    return statistics.median(times)


# --fsync-ms: fdatasync and fsync (SQLite's commits and checkpoints) made slower by an
# LD_PRELOAD shim, for every process of the run: the disk of a partner's small box (an SD
# card, a consumer SSD without a write cache that survives power loss) rather than this
# machine's. Reads, writes and everything else are untouched.
SLOW_FSYNC_ENV = "BENCHMARK_FSYNC_EXTRA_US"
SLOW_FSYNC_C = """
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static void extra_wait(void) {
    const char *us = getenv("%s");
    long ns = us ? atol(us) * 1000L : 0;
    struct timespec wait = {ns / 1000000000L, ns %% 1000000000L};
    if (ns > 0) nanosleep(&wait, NULL);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int done = real(fd);
    extra_wait();
    return done;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int done = real(fd);
    extra_wait();
    return done;
}
""" % SLOW_FSYNC_ENV


def slow_disk(extra_ms: float) -> None:
    """Build the shim and run this script again with it preloaded (never returns)."""
    folder = Path(tempfile.mkdtemp(prefix="rentbox-slow-fsync-"))
    source, shim = folder / "slow_fsync.c", folder / "slow_fsync.so"
    source.write_text(SLOW_FSYNC_C)
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
                       check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"--fsync-ms needs a C compiler (cc) to build its shim: {error}")
    env = {**os.environ, SLOW_FSYNC_ENV: str(round(extra_ms * 1000)), "LD_PRELOAD": str(shim)}
    os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], env)


def commit() -> str:
    def git(*words: str) -> str:
        return subprocess.run(["git", *words], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain")
                                                  else "")


# What `serve` warns about at start on a benchmark's database: not news.
EXPECTED_WARNINGS = ("without RENTBOX_PUSH_URL", "not watched: no gateway reports")


def log_problems(log_path: Path) -> list[str]:
    """The server log's warnings and errors, less the expected ones."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [line for line in lines
            if (" ERROR " in line or " CRITICAL " in line or "Traceback" in line
                or " WARNING " in line) and not any(w in line for w in EXPECTED_WARNINGS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,4,8", help="waitress thread counts to measure")
    parser.add_argument("--callers", type=int, default=8, help="concurrent client processes")
    parser.add_argument("--pairs", type=int, default=300, help="GET_NUMBER/FINISH pairs per "
                        "caller and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--pool", type=int, default=20_000, help="numbers in the pool")
    parser.add_argument("--sms", type=int, default=20_000, help="SMS in the burst")
    parser.add_argument("--gateways", type=int, default=8, help="gateway processes")
    parser.add_argument("--per-post", type=int, default=1, metavar="N",
                        help="SMS per request: 1 posts each to /sms; more, as Ejoin SIM "
                             "banks report a burst (recv-sms with N rows)")
    parser.add_argument("--rentals", type=int, default=400, help="rentals the SMS go to")
    parser.add_argument("--burst-max-s", type=float, default=20,
                        help="the gateways stop posting after this many seconds")
    parser.add_argument("--drain-s", type=float, default=120,
                        help="how long to wait for every SMS to be pushed")
    parser.add_argument("--keep-logs", metavar="DIR",
                        help="keep rentbox's logs (access log included) in DIR")
    parser.add_argument("--skip", choices=("rent", "sms"), help="leave one part out")
    parser.add_argument("--fsync-ms", type=float, default=0, metavar="MS",
                        help="make every fsync of SQLite's (both servers') take MS longer, "
                             "as on a slower disk (an LD_PRELOAD shim built with cc)")
    parser.add_argument("--floor-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--floor-db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.floor_server:
        run_floor(args.floor_server, thread_counts[0], Path(args.floor_db))
        return
    if args.fsync_ms and SLOW_FSYNC_ENV not in os.environ:
        slow_disk(args.fsync_ms)  # runs this script again, and does not return

    print(f"rentbox {commit()}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if SLOW_FSYNC_ENV in os.environ:
        print(f"every fsync made {int(os.environ[SLOW_FSYNC_ENV]) / 1000:g} ms longer "
              f"(--fsync-ms, {os.environ.get('LD_PRELOAD')})")
    summary = []
    if args.keep_logs:
        Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"one durable single-row commit here: {fsync_ms(folder):.2f} ms (median)")
        for threads in thread_counts:
            log_path = (Path(args.keep_logs) if args.keep_logs else folder) / \
                f"serve-{threads}.log"
            figures = {"threads": threads}
            if args.skip != "rent":
                print(f"\n== --threads {threads}: {args.callers} callers x {args.pairs} "
                      f"GET_NUMBER/FINISH pairs, pool {args.pool}", flush=True)
                figures.update(rent_part(threads, args, folder, log_path))
            if args.skip != "sms":
                print(f"\n== --threads {threads}: SMS burst", flush=True)
                figures.update({"sms_" + k: v
                                for k, v in sms_part(threads, args, folder, log_path).items()})
            problems = log_problems(log_path)
            print(f"  server log: {len(problems)} warnings/errors"
                  + "".join(f"\n    {line[:300]}" for line in problems[:5]))
            summary.append(figures)

    print("\nsummary (median of rounds; p99 the worst round's; CPU: the server's ms per "
          "request or SMS)\ngoals: rentbox >= 1.0x the floor, p99 < 25 ms; >= 2,000 SMS/s")
    print(f"{'threads':>7}{'floor/s':>9}{'rentbox/s':>10}{'ratio':>7}{'(range)':>11}"
          f"{'floor p99':>10}{'GET p99':>8}{'FIN p99':>8}{'CPU fl/rb':>11}"
          f"{'SMS/s fl/rb':>12}{'SMS p99':>8}{'CPU':>6}{'checks':>8}")
    for f in summary:
        rent = " " * 75
        if "ratio" in f:
            spread = f"{f['ratio_min']:.2f}-{f['ratio_max']:.2f}"
            cpu = f"{f['floor_cpu_ms']:.2f}/{f['rentbox_cpu_ms']:.2f}"
            rent = (f"{f['floor']:>9.0f}{f['rentbox']:>10.0f}{f['ratio']:>6.2f}x{spread:>11}"
                    f"{f['floor_p99']:>10.1f}{f['get_p99']:>8.1f}{f['finish_p99']:>8.1f}"
                    f"{cpu:>11}")
        sms = " " * 26
        if "sms_rate" in f:
            rates = f"{f['sms_floor_rate']:.0f}/{f['sms_rate']:.0f}"
            sms = f"{rates:>12}{f['sms_p99']:>8.1f}{f['sms_cpu_ms']:>6.2f}"
        ok = all(f.get(k, True) for k in ("ok", "sms_ok"))
        print(f"{f['threads']:>7}{rent}{sms}{'OK' if ok else 'PROBLEM':>8}")

if __name__ == "__main__":
    main()
