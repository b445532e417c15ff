"""What a `kill -9` of `rentbox serve` under mixed load costs: SMS pushed again, and a check
that nothing acknowledged was lost and no number was issued twice.

Starts a stand-in for Onlinesim's PUSH_SMS endpoint on loopback (HTTP/1.1, kept-alive
connections) that answers every push SUCCESS after --delay-ms, noting for each push its
smsId, when it arrived and the time.time() at which its answer was written to the socket.
Imports a pool of --pool numbers with `rentbox numbers import` and runs `rentbox serve`
(`python -m rentbox serve`, from a copy of --rentbox-path's `rentbox` package taken at the
start, so that edits made to that tree during the run cannot change the server between
restarts) on a free loopback port, pushing to the stand-in with --push-retry-s 1.

--clients threads play Onlinesim and a gateway: GET_NUMBER; a little later --sms-per-rental
SMS for that number on POST /sms (each with its own `id`, posted again until accepted);
once Onlinesim took them, FINISH_ACTIVATION (status 3, sum 870), sent again until
acknowledged. Every acknowledged answer is recorded. Meanwhile the server is killed with
SIGKILL --kills times, --interval-s apart (uniform, seeded), and restarted at once on the
same database and port. After the last restart the clients finish their rentals, the
outbox drains, the server stops, and the run is checked:

  re-pushes      a push of an smsId that the stand-in had already answered SUCCESS to
                 while its sender was alive; its gap runs from that SUCCESS to the kill
                 (the first after it). Only a crash between Onlinesim's answer and
                 rentbox's commit may repeat a push (rentbox/push.py); the goal: every
                 gap within 10 ms. Counted apart: a push sent again after a SUCCESS
                 written once the kill was under way (nobody was left to store it), and
                 one repeated with no kill in between (a bug).
  lost           an acknowledged rental, SMS or FINISH that the database does not hold
                 as answered, or an acknowledged SMS that Onlinesim never took
  issued twice   a number held by two rentals at once: by the operations table, and by
                 the answers (a GET_NUMBER answered before the FINISH of the number's
                 previous rental was even sent)

Exits 1 if anything was lost or issued twice (the timing goal is only reported).

    python benchmarks/crash_loop.py                          # 120 kills, this tree
    python benchmarks/crash_loop.py --kills 10               # a quick run
    mkdir -p /tmp/rentbox-head && git archive HEAD | tar -x -C /tmp/rentbox-head
    python benchmarks/crash_loop.py --rentbox-path /tmp/rentbox-head   # the last commit

Loopback only; every socket has a timeout and every loop a bound; the run stops by itself.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import hashlib
import http.client
import http.server
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import HOST, KEY, free_port

TOKEN = "benchmark-gateway-token"
GOAL_MS = 10.0
# Bounds on the waits: a call retried until acknowledged, Onlinesim taking a rental's SMS,
# a restart, the outbox draining, the clients ending their last rental.
ACK_DEADLINE_S = 60.0
PUSHED_DEADLINE_S = 30.0
START_DEADLINE_S = 30.0
DRAIN_DEADLINE_S = 120.0
CLIENTS_DEADLINE_S = 180.0


@dataclasses.dataclass
class Push:
    """One PUSH_SMS as the stand-in saw it."""

    sms_id: int | None
    phone: str
    text: str
    received_at: float
    success: bool                      # answered SUCCESS (not ERROR: a bad body or key)
    answered_at: float | None = None   # when the answer was written; None: it could not be
    write_started_at: float | None = None  # just before writing it
    incomplete: bool = False           # the body ended early: its sender was killed


class StandIn:
    """Onlinesim's PUSH_SMS endpoint: SUCCESS after `delay_s` for every well-formed push."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.pushes: list[Push] = []
        self.taken: set[int] = set()  # smsIds whose SUCCESS was written
        self.changed = threading.Condition()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60  # an idle kept-alive connection (its rentbox killed) ends

            def setup(self):
                super().setup()
                # As web servers do: the answer goes out as soon as it is written.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self):
                received_at = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                    push = Push(int(body["smsId"]), str(body["phone"]), str(body["text"]),
                                received_at, body.get("action") == "PUSH_SMS"
                                and body.get("key") == KEY)
                except (ValueError, KeyError, TypeError):
                    push = Push(None, "", raw[:200].decode("utf-8", "replace"), received_at,
                                False, incomplete=len(raw) < length)
                with stand_in.changed:
                    stand_in.pushes.append(push)
                time.sleep(stand_in.delay_s)
                answer = b'{"status":"SUCCESS"}' if push.success else b'{"status":"ERROR"}'
                # One write for head and body: the moment it returns is the moment
                # rentbox can have the whole answer.
                message = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(answer)) + answer
                write_started_at = time.time()
                try:
                    self.wfile.write(message)
                    written_at = time.time()
                except OSError:
                    written_at = None
                    self.close_connection = True
                with stand_in.changed:
                    push.answered_at, push.write_started_at = written_at, write_started_at
                    if written_at is not None and push.success:
                        stand_in.taken.add(push.sms_id)
                        stand_in.changed.notify_all()

            def log_message(self, *args):
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a connection reset by a killed rentbox is the point of the run

        self.httpd = Quiet((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/pushSmsRent"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_taken(self, sms_ids: list[int], timeout_s: float) -> bool:
        """Wait until every one of `sms_ids` was answered SUCCESS (bounded)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.taken.issuperset(sms_ids), timeout_s)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Server:
    """`python -m rentbox serve` from a source folder, killed and started again on one
    database and port."""

    def __init__(self, source: Path, db_path: Path, port: int, push_url: str,
                 options: list[str], log_path: Path):
        self.port = port
        self.command = [sys.executable, "-m", "rentbox", "serve", "--db", str(db_path),
                        "--host", HOST, "--port", str(port), "--push-url", push_url,
                        *options]
        self.env = environment(source)
        self.cwd = source  # not the caller's folder: `-m` puts the working folder first
        self.log = open(log_path, "ab")
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0  # time.time() just before the last start

    def start(self) -> float:
        """Start it and wait for GET /health; returns the seconds it took."""
        self.started_at = time.time()
        started = time.monotonic()
        self.process = subprocess.Popen(self.command, env=self.env, cwd=self.cwd,
                                        stdout=self.log, stderr=self.log)
        until = started + START_DEADLINE_S
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise SystemExit(f"rentbox serve exited with {self.process.returncode} at "
                                 "start; see its log (--server-log)")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=1)
                conn.request("GET", "/health")
                status = conn.getresponse().status
                conn.close()
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"rentbox serve did not answer /health within {START_DEADLINE_S:g} s")

    def kill(self) -> tuple[float, float]:
        """SIGKILL it and wait until it is gone: (time.time() just before the kill, once
        it was gone). Between the two the dying process may still send a push."""
        killed_at = time.time()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        return killed_at, time.time()

    def stop(self) -> None:
        """SIGTERM (a clean stop), SIGKILL if that takes too long."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.log.close()


def environment(source: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(source), "RENTBOX_API_KEY": KEY,
            "RENTBOX_GATEWAY_TOKEN": TOKEN}


@dataclasses.dataclass(frozen=True)
class Kill:
    """One SIGKILL of the server: time.time() just before it, once the process was gone,
    and just before its successor was started."""

    killed_at: float
    gone_at: float
    restarted_at: float


@dataclasses.dataclass
class Rental:
    """An acknowledged GET_NUMBER, and what became of it."""

    number: str
    answered_at: float
    sms_ids: list[int] = dataclasses.field(default_factory=list)
    finish_sent_at: float | None = None   # the first FINISH sent
    finish_acked_at: float | None = None


class Record:
    """Every acknowledged answer, and the calls made, shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rentals: dict[int, Rental] = {}
        self.sms: dict[int, tuple[int, str, str]] = {}  # smsId: (activationId, to, text)
        self.sms_acked_at: dict[int, float] = {}
        self.calls: collections.Counter = collections.Counter()

    def count(self, what: str) -> None:
        with self.lock:
            self.calls[what] += 1


class Caller:
    """One client's kept-alive connection to rentbox, opened again after any failure."""

    def __init__(self, port: int, record: Record):
        self.port, self.record = port, record
        self.conn: http.client.HTTPConnection | None = None

    def call(self, kind: str, path: str, body: dict,
             headers: dict | None = None) -> dict | None:
        """One POST: the JSON answer of an HTTP 200, or None (refused, no answer, an error
        status). Counted under `kind`, unless refused (the server is down)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                self.conn.connect()
            self.record.count(f"{kind} sent")
            self.conn.request("POST", path, body=json.dumps(body).encode(),
                              headers={"Content-Type": "application/json", **(headers or {})})
            response = self.conn.getresponse()
            data = response.read()
        except ConnectionRefusedError:
            self.close()
            self.record.count("refused (server down)")
            return None
        except (OSError, http.client.HTTPException):
            self.close()
            self.record.count(f"{kind} no answer")
            return None
        if response.status != 200:
            self.record.count(f"{kind} HTTP {response.status}")
            return None
        return json.loads(data)

    def until_acked(self, kind: str, path: str, body: dict, headers: dict | None = None,
                    ) -> dict | None:
        """The same call again until answered SUCCESS, at most ACK_DEADLINE_S."""
        until = time.monotonic() + ACK_DEADLINE_S
        while time.monotonic() < until:
            answer = self.call(kind, path, body, headers)
            if answer is not None and answer.get("status") == "SUCCESS":
                return answer
            time.sleep(0.05)
        self.record.count(f"{kind} given up")
        return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def client(index: int, port: int, args, stand_in: StandIn, record: Record,
           stop: threading.Event) -> None:
    """Rentals one after another until `stop`; the one under way is always completed."""
    rng = random.Random(args.seed * 1000 + index)
    caller = Caller(port, record)
    while not stop.is_set():
        answer = caller.call("GET_NUMBER", "/getNumberRent", {
            "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400,
            "country": "germany"})
        answered_at = time.time()
        if answer is None:
            time.sleep(0.05)
            continue
        if answer.get("status") != "SUCCESS":
            record.count(f"GET_NUMBER {answer.get('status')}")
            time.sleep(0.2)
            continue
        activation_id, number = int(answer["activationId"]), str(answer["number"])
        rental = Rental(number, answered_at)
        with record.lock:
            record.calls["GET_NUMBER SUCCESS"] += 1
            record.rentals[activation_id] = rental
        time.sleep(rng.uniform(0.05, 0.2))
        for k in range(args.sms_per_rental):
            text = f"code {activation_id}-{k}"
            answer = caller.until_acked("SMS", "/sms", {
                "to": f"+{number}", "from": "Bench", "text": text,
                "id": f"crash-loop-{activation_id}-{k}"},
                {"Authorization": f"Bearer {TOKEN}"})
            if answer is not None:
                with record.lock:
                    record.calls["SMS accepted"] += 1
                    record.sms[int(answer["smsId"])] = (activation_id, number, text)
                    record.sms_acked_at.setdefault(int(answer["smsId"]), time.time())
                    rental.sms_ids.append(int(answer["smsId"]))
            time.sleep(rng.uniform(0, 0.05))
        # As Onlinesim's client: the rental ends once its codes have arrived.
        if not stand_in.wait_taken(rental.sms_ids, PUSHED_DEADLINE_S):
            record.count("rentals finished before their SMS were taken")
        rental.finish_sent_at = time.time()
        answer = caller.until_acked("FINISH", "/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "key": KEY, "service": "rent",
            "activationId": activation_id, "status": 3, "sum": 870})
        if answer is not None:
            rental.finish_acked_at = time.time()
            record.count("FINISH SUCCESS")
        time.sleep(rng.uniform(0, 0.05))
    caller.close()


def copy_source(tree: Path, folder: Path) -> tuple[Path, str]:
    """Copy the tree's `rentbox` package into `folder`; (that folder, a hash of the code)."""
    if not (tree / "rentbox" / "__main__.py").is_file():
        raise SystemExit(f"{tree} has no rentbox/__main__.py: not a rentbox source tree")
    source = folder / "src"
    shutil.copytree(tree / "rentbox", source / "rentbox",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha256()
    for path in sorted((source / "rentbox").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    found = subprocess.run([sys.executable, "-c", "import rentbox; print(rentbox.__file__)"],
                           env=environment(source), cwd=source, capture_output=True,
                           text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(source.resolve()):
        raise SystemExit(f"PYTHONPATH={source} still imports rentbox from {found}")
    return source, digest.hexdigest()[:12]


def import_pool(source: Path, db_path: Path, size: int) -> None:
    """A pool of `size` German mobile numbers, through `rentbox numbers import`."""
    csv_path = db_path.with_suffix(".csv")
    operators = ("telekom", "o2", "vodafone")
    csv_path.write_text("number,country,operator\n" + "".join(
        f"491512{i:07d},germany,{operators[i % 3]}\n" for i in range(size)))
    subprocess.run([sys.executable, "-m", "rentbox", "numbers", "import", str(csv_path),
                    "--db", str(db_path)], env=environment(source), cwd=source, check=True,
                   stdout=subprocess.DEVNULL)


def pending_count(db_path: Path) -> int:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(
            "SELECT count(*) FROM sms WHERE push_state = 'pending'").fetchone()[0]
    finally:
        db.close()


def percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def analyse(db_path: Path, record: Record, pushes: list[Push],
            kills: list[Kill]) -> dict:
    """The figures of the run, from the stand-in's pushes, the acknowledged answers and the
    database (read after the server stopped)."""
    figures: dict = {}
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row

    # Re-pushes. Pushes of one SMS never overlap (one server at a time, one attempt of an
    # SMS at a time), so each push is compared with the last one answered before it. The
    # server that sent a push is the one started last before the push came in: the
    # stand-in stamps a push when its thread gets to it, at worst milliseconds late, and a
    # restart takes hundreds. Server i is ended by kills[i].
    by_sms: dict[int, list[Push]] = collections.defaultdict(list)
    for push in sorted(pushes, key=lambda p: p.received_at):
        if push.sms_id is not None:
            by_sms[push.sms_id].append(push)
    restarted_at = [k.restarted_at for k in kills]

    def sender(push: Push) -> int:
        return bisect.bisect_right(restarted_at, push.received_at)

    gaps_ms, per_kill = [], [0] * len(kills)
    answered_dying = 0
    after_kill_ms: list[float] = []  # SUCCESS written this long after its sender's kill
    without_kill: list[dict] = []
    far: list[tuple[int, float]] = []
    for sms_id, seen in by_sms.items():
        previous: Push | None = None  # the last push answered SUCCESS
        for push in seen:
            if previous is not None and previous.answered_at < push.received_at:
                server = sender(previous)
                if sender(push) == server:
                    without_kill.append({"sms": sms_id, "pushes": [
                        dataclasses.asdict(p) for p in seen], "kills": [
                        dataclasses.asdict(k) for k in kills
                        if previous.received_at - 5 < k.killed_at < push.received_at + 5]})
                elif kills[server].killed_at <= previous.answered_at:
                    # Written once the kill was under way: nobody was left to store it.
                    after_kill_ms.append(
                        (previous.answered_at - kills[server].killed_at) * 1000)
                    answered_dying += previous.answered_at <= kills[server].gone_at
                else:
                    gap_ms = (kills[server].killed_at - previous.answered_at) * 1000
                    gaps_ms.append(gap_ms)
                    per_kill[server] += 1
                    if gap_ms > GOAL_MS:
                        far.append((sms_id, gap_ms))
            if push.success and push.answered_at is not None:
                previous = push
    gaps_ms.sort()

    # The crash window without a crash: rentbox sends a rental's next SMS only once the
    # answer to the one before is committed, so for two SMS of a rental pushed once each
    # by the same server, the second accepted before the first was answered, SUCCESS
    # written -> the second arriving is an upper bound on SUCCESS -> commit.
    windows_ms = []
    by_rental: dict[int, list[int]] = collections.defaultdict(list)
    for sms_id, (activation_id, _, _) in record.sms.items():
        by_rental[activation_id].append(sms_id)
    for ids in by_rental.values():
        ids.sort()
        for a, b in zip(ids, ids[1:]):
            if len(by_sms.get(a, ())) != 1 or len(by_sms.get(b, ())) != 1:
                continue
            first, second = by_sms[a][0], by_sms[b][0]
            server = sender(first)
            if (first.answered_at is not None and record.sms_acked_at[b] < first.answered_at
                    < second.received_at and sender(second) == server
                    and (server == len(kills) or first.answered_at < kills[server].killed_at)):
                windows_ms.append((second.received_at - first.answered_at) * 1000)
    windows_ms.sort()
    figures["window_bound_ms"] = ({
        "n": len(windows_ms), "median": statistics.median(windows_ms),
        "p90": percentile(windows_ms, 0.9), "p99": percentile(windows_ms, 0.99),
        "max": windows_ms[-1], "over_goal": sum(1 for w in windows_ms if w > GOAL_MS)}
        if windows_ms else None)
    writes_ms = sorted((p.answered_at - p.write_started_at) * 1000 for p in pushes
                       if p.answered_at is not None)
    figures["write_ms"] = ({"p99": percentile(writes_ms, 0.99), "max": writes_ms[-1]}
                           if writes_ms else None)
    figures["repushes"] = len(gaps_ms)
    figures["repushes_per_kill"] = per_kill
    figures["gap_ms"] = ({"median": statistics.median(gaps_ms),
                          "p90": percentile(gaps_ms, 0.9), "max": gaps_ms[-1]}
                         if gaps_ms else None)
    figures["repushes_over_goal"] = len(far)
    figures["far_examples"] = sorted(far, key=lambda f: -f[1])[:5]
    after_kill_ms.sort()
    figures["resent_after_answer_written_post_kill"] = len(after_kill_ms)
    figures["after_kill_ms"] = ({"median": statistics.median(after_kill_ms),
                                 "max": after_kill_ms[-1]} if after_kill_ms else None)
    figures["repushes_without_kill"] = len(without_kill)
    figures["answered_between_kill_and_gone"] = answered_dying
    figures["without_kill_examples"] = without_kill[:5]

    # What rentbox was told, against what the database holds.
    operations = {r["id"]: r for r in db.execute(
        "SELECT operations.id, number, number_id, state, finish_status, final_sum_kopecks,"
        " operations.created_at, finished_at, failed_at"
        " FROM operations JOIN numbers ON numbers.id = number_id")}
    stored_sms = {r["id"]: r for r in db.execute(
        "SELECT id, number, text, operation_id, push_state FROM sms")}
    lost_rentals = [a for a, r in record.rentals.items()
                    if a not in operations or operations[a]["number"] != r.number]
    lost_finishes = [a for a, r in record.rentals.items() if r.finish_acked_at is not None
                     and (a not in operations or operations[a]["state"] != "closed"
                          or operations[a]["finish_status"] != 3)]
    lost_sms = [s for s, (a, number, text) in record.sms.items()
                if s not in stored_sms or stored_sms[s]["number"] != number
                or stored_sms[s]["text"] != text or stored_sms[s]["operation_id"] != a]
    taken = {p.sms_id for p in pushes if p.success and p.answered_at is not None}
    never_pushed = [s for s in record.sms if s not in taken]
    figures["lost"] = {"rentals": len(lost_rentals), "finishes": len(lost_finishes),
                       "sms_not_stored": len(lost_sms), "sms_never_taken": len(never_pushed)}
    figures["sms_states"] = dict(collections.Counter(
        stored_sms[s]["push_state"] for s in record.sms if s in stored_sms))
    acked = set(record.rentals)
    figures["rentals_stored_never_answered"] = sum(1 for a in operations if a not in acked)

    # Numbers issued twice. By the database: holding runs from created_at until the first
    # of finished_at and failed_at (a failed rental frees its number), open-ended if neither.
    twice_db = 0
    by_number: dict[int, list] = collections.defaultdict(list)
    for op in operations.values():
        ends = [t for t in (op["finished_at"], op["failed_at"]) if t is not None]
        by_number[op["number_id"]].append((op["created_at"], min(ends) if ends else None))
    for held in by_number.values():
        held.sort()
        for (_, end), (start, _) in zip(held, held[1:]):
            if end is None or start < end:
                twice_db += 1
    # By the answers: the second GET_NUMBER answered before the first rental's FINISH sent.
    twice_answers = 0
    rentals_by_number: dict[str, list[Rental]] = collections.defaultdict(list)
    for rental in record.rentals.values():
        rentals_by_number[rental.number].append(rental)
    for rentals in rentals_by_number.values():
        rentals.sort(key=lambda r: r.answered_at)
        for first, second in zip(rentals, rentals[1:]):
            if first.finish_sent_at is None or first.finish_sent_at > second.answered_at:
                twice_answers += 1
    figures["issued_twice"] = {"operations": twice_db, "answers": twice_answers}
    figures["numbers_rented_more_than_once"] = sum(
        1 for r in rentals_by_number.values() if len(r) > 1)

    # Pushes after the rental's FINISH was acknowledged: Onlinesim routes by number.
    late = late_other_renter = 0
    for push in pushes:
        if push.sms_id not in record.sms:
            continue
        rental = record.rentals[record.sms[push.sms_id][0]]
        if rental.finish_acked_at is not None and push.received_at > rental.finish_acked_at:
            late += 1
            if any(other.answered_at < push.received_at
                   and other.answered_at > rental.answered_at
                   for other in rentals_by_number[rental.number]):
                late_other_renter += 1
    figures["pushes_after_finish"] = late
    figures["pushes_after_number_rented_again"] = late_other_renter

    figures["pushes"] = {"received": len(pushes), "distinct_sms": len(by_sms),
                         "answered_error": sum(1 for p in pushes
                                               if not p.success and not p.incomplete),
                         "incomplete": sum(1 for p in pushes if p.incomplete),
                         "error_examples": [dataclasses.asdict(p) for p in pushes
                                            if not p.success and not p.incomplete][:5],
                         "answer_not_written": sum(1 for p in pushes if p.answered_at is None),
                         "not_acknowledged_sms": sum(1 for s in by_sms if s not in record.sms),
                         "wrong_content": sum(
                             1 for p in pushes if p.sms_id in record.sms
                             and (record.sms[p.sms_id][1] != p.phone
                                  or record.sms[p.sms_id][2] != p.text))}
    db.close()
    return figures


def run(args) -> dict:
    tree = Path(args.rentbox_path).resolve()
    stand_in = StandIn(args.delay_ms / 1000)
    record = Record()
    stop = threading.Event()
    kills: list[Kill] = []
    restarts_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as folder:
        folder = Path(folder)
        source, code = copy_source(tree, folder)
        db_path = folder / "crash.db"
        import_pool(source, db_path, args.pool)
        options = ["--push-retry-s", str(args.push_retry_s), "--log-level", args.log_level]
        if args.push_parallel is not None:
            options += ["--push-parallel", str(args.push_parallel)]
        server = Server(source, db_path, free_port(), stand_in.url, options,
                        Path(args.server_log) if args.server_log else folder / "server.log")
        rng = random.Random(args.seed)
        started = time.monotonic()
        clients = []
        try:
            server.start()
            clients = [threading.Thread(target=client, name=f"client-{i}", daemon=True,
                                        args=(i, server.port, args, stand_in, record, stop))
                       for i in range(args.clients)]
            for thread in clients:
                thread.start()
            for number in range(args.kills):
                time.sleep(rng.uniform(*args.interval_s))
                killed_at, gone_at = server.kill()
                restarts_s.append(server.start())
                kills.append(Kill(killed_at, gone_at, server.started_at))
                if args.verbose:
                    print(f"kill {number + 1}/{args.kills}: up again in "
                          f"{restarts_s[-1]:.2f} s", flush=True)
            time.sleep(args.settle_s)  # load on the last server, as after any restart
            stop.set()
            until = time.monotonic() + CLIENTS_DEADLINE_S
            for thread in clients:
                thread.join(max(0.1, until - time.monotonic()))
            if any(thread.is_alive() for thread in clients):
                raise SystemExit("the clients did not finish their last rentals in time")
            until = time.monotonic() + DRAIN_DEADLINE_S
            while pending_count(db_path) and time.monotonic() < until:
                time.sleep(0.2)
            drained = pending_count(db_path) == 0
            time.sleep(0.5)  # a push still on its way would show now
        finally:
            stop.set()
            server.stop()
        elapsed_s = time.monotonic() - started
        stand_in.close()
        with stand_in.changed:
            pushes = list(stand_in.pushes)
        figures = analyse(db_path, record, pushes, kills)
    figures.update(tree=str(tree), code=code, kills=len(kills), run_s=elapsed_s,
                   drained=drained, calls=dict(sorted(record.calls.items())),
                   restart_s={"median": statistics.median(restarts_s) if restarts_s else 0,
                              "max": max(restarts_s, default=0)},
                   settings={"seed": args.seed, "clients": args.clients, "pool": args.pool,
                             "sms_per_rental": args.sms_per_rental,
                             "delay_ms": args.delay_ms, "push_retry_s": args.push_retry_s,
                             "interval_s": args.interval_s})
    return figures


def show(figures: dict) -> None:
    """The compact table."""
    s, calls, pushes = figures["settings"], figures["calls"], figures["pushes"]

    def row(label: str, value) -> None:
        print(f"  {label:<44} {value}")

    def sent(kind: str, acked: str) -> str:
        extra = "".join(f", {k[len(kind) + 1:]} {v}" for k, v in calls.items()
                        if k.startswith(kind + " ") and k not in
                        (f"{kind} sent", f"{kind} no answer", acked))
        return (f"{calls.get(kind + ' sent', 0)} / {calls.get(acked, 0)} / "
                f"{calls.get(kind + ' no answer', 0)}{extra}")

    print(f"crash loop: {figures['kills']} x kill -9 of rentbox serve from {figures['tree']} "
          f"(code {figures['code']})")
    print(f"  seed {s['seed']}, {s['clients']} clients, pool {s['pool']}, "
          f"{s['sms_per_rental']} SMS a rental, Onlinesim answers in {s['delay_ms']:g} ms, "
          f"retry {s['push_retry_s']:g} s, a kill every {s['interval_s'][0]:g}-"
          f"{s['interval_s'][1]:g} s")
    row("run time", f"{figures['run_s']:.0f} s (kill to /health: median "
        f"{figures['restart_s']['median']:.2f} s, max {figures['restart_s']['max']:.2f} s)")
    print("calls")
    row("GET_NUMBER sent / SUCCESS / no answer", sent("GET_NUMBER", "GET_NUMBER SUCCESS"))
    row("SMS sent / accepted / no answer", sent("SMS", "SMS accepted"))
    row("FINISH sent / SUCCESS / no answer", sent("FINISH", "FINISH SUCCESS"))
    row("refused while the server was down", calls.get("refused (server down)", 0))
    if calls.get("rentals finished before their SMS were taken"):
        row("FINISH sent before Onlinesim took the SMS",
            calls["rentals finished before their SMS were taken"])
    print("pushes (the stand-in for Onlinesim)")
    row("received / distinct smsIds", f"{pushes['received']} / {pushes['distinct_sms']}")
    row("answered with an error", pushes["answered_error"])
    row("answer could not be written", pushes["answer_not_written"])
    row("request cut short by a kill", pushes["incomplete"])
    row("wrong number or text", pushes["wrong_content"])
    row("after their rental's FINISH was answered", f"{figures['pushes_after_finish']} "
        f"(the number rented again by then: {figures['pushes_after_number_rented_again']})")
    print("pushed again")
    gap, per_kill = figures["gap_ms"], figures["repushes_per_kill"]
    row("re-pushes: SUCCESS written before the kill", f"{figures['repushes']} after "
        f"{sum(1 for n in per_kill if n)} of {figures['kills']} kills (most after one: "
        f"{max(per_kill, default=0)})")
    row("  gap SUCCESS -> kill, ms", "-" if gap is None else
        f"median {gap['median']:.1f}, p90 {gap['p90']:.1f}, max {gap['max']:.1f}")
    row(f"  goal: every gap <= {GOAL_MS:g} ms",
        "met" if not figures["repushes_over_goal"] else
        f"NOT met: {figures['repushes_over_goal']} over")
    after = figures["after_kill_ms"]
    resent = figures["resent_after_answer_written_post_kill"]
    row("in flight: SUCCESS written after the kill", resent
        if after is None else f"{resent} (median "
        f"{after['median']:.1f} ms after it, max {after['max']:.1f}; before the process "
        f"was gone: {figures['answered_between_kill_and_gone']})")
    row("pushed again with no kill in between (a bug)", figures["repushes_without_kill"])
    window = figures["window_bound_ms"]
    row("no kill: SUCCESS -> rental's next push, ms", "-" if window is None else
        f"median {window['median']:.1f}, p90 {window['p90']:.1f}, p99 {window['p99']:.1f}, "
        f"max {window['max']:.1f} ({window['over_goal']} of {window['n']} over {GOAL_MS:g})")
    write = figures["write_ms"]
    if write is not None:
        row("the stand-in's write of an answer took, ms", f"p99 {write['p99']:.2f}, "
            f"max {write['max']:.2f}")
    print("acknowledgements")
    lost, twice = figures["lost"], figures["issued_twice"]
    row("lost: rentals / FINISHes", f"{lost['rentals']} / {lost['finishes']}")
    row("lost: SMS not stored / never taken", f"{lost['sms_not_stored']} / "
        f"{lost['sms_never_taken']}")
    row("accepted SMS by state at the end", ", ".join(
        f"{k} {v}" for k, v in sorted(figures["sms_states"].items())))
    row("outbox drained", "yes" if figures["drained"] else "NO")
    row("issued twice: by operations / by answers", f"{twice['operations']} / "
        f"{twice['answers']} ({figures['numbers_rented_more_than_once']} numbers rented "
        "more than once)")
    row("rentals stored whose answer was lost", figures["rentals_stored_never_answered"])
    print("re-pushes per kill, in order: " + " ".join(str(n) for n in per_kill))
    for sms_id, gap_ms in figures["far_examples"]:
        print(f"  far from its SUCCESS: SMS {sms_id}, {gap_ms:.1f} ms before the kill")
    for example in figures["without_kill_examples"]:
        print(f"  pushed again with no kill in between: SMS {example['sms']}, pushes at "
              + ", ".join(f"{p['received_at']:.3f} (answered {p['answered_at'] or 0:.3f})"
                          for p in example["pushes"]))
    for push in figures["pushes"]["error_examples"]:
        print(f"  answered ERROR: {push}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=120, help="SIGKILLs of the server")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rentbox-path", default=str(Path(__file__).resolve().parent.parent),
                        help="source tree to run the server from (default: this repo)")
    parser.add_argument("--pool", type=int, default=500,
                        help="numbers in the pool (few enough that numbers are rented again)")
    parser.add_argument("--clients", type=int, default=8,
                        help="client threads: rentals under way at once (8 lets the server "
                        "have its default 8 pushes in flight)")
    parser.add_argument("--sms-per-rental", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=20,
                        help="how long the stand-in for Onlinesim takes to answer a push")
    parser.add_argument("--push-retry-s", type=float, default=1.0)
    parser.add_argument("--push-parallel", type=int, default=None,
                        help="the server's --push-parallel (default: rentbox's, 8)")
    parser.add_argument("--interval-s", type=float, nargs=2, default=[0.3, 1.5],
                        metavar=("MIN", "MAX"), help="uptime before each kill, uniform")
    parser.add_argument("--settle-s", type=float, default=3.0,
                        help="load on the last server before the clients stop")
    parser.add_argument("--log-level", default="warning", help="the server's --log-level")
    parser.add_argument("--server-log", help="append the server's output here")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--verbose", action="store_true", help="a line per kill")
    args = parser.parse_args()
    figures = run(args)
    show(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    lost = sum(figures["lost"].values())
    twice = sum(figures["issued_twice"].values())
    if lost or twice:
        print(f"FAILED: {lost} acknowledgement(s) lost, {twice} number(s) issued twice")
        sys.exit(1)


if __name__ == "__main__":
    main()
