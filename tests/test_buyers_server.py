"""Three buyers on one pool, against a real `rentbox serve` process (issue 23, "Done when"):
Onlinesim, SMSHub (RENTBOX_SMSHUB_KEY, POST /smshub) and an SMSHub-protocol clone from the
buyers file (POST /buyer/grizzly), each with its own push receiver."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rentbox import tallies
from rentbox.db import open_database

from conftest import (API_KEY, GATEWAY_TOKEN, FakeOnlinesim, http_get_json, http_post,
                      wait_until)

HUB_KEY, CLONE_KEY = "hub-key-5e21a9", "grizzly-key-c07b44"
KEYS = (API_KEY, GATEWAY_TOKEN, HUB_KEY, CLONE_KEY)
CLONE = "grizzly"
# The pool: 20 Russian numbers on two operators.
NUMBERS = [f"7916123{i:04d}" for i in range(20)]
RETRY_S = 0.5
SUCCESS = (200, b'{"status":"SUCCESS"}')
ERROR = (200, b'{"status":"ERROR","error":"try later"}')


class Stamped(list):
    """A FakeOnlinesim's request list that notes when each request arrived."""

    def append(self, request: dict) -> None:
        request["at"] = time.monotonic()
        super().append(request)


class Buyers:
    """The three buyers' calls to the server, and a ledger of every number issued and
    every FINISH, to recount the books from."""

    def __init__(self, url: str):
        self.url = url
        self.issued: dict[int, dict] = {}   # activationId -> buyer, number, sum, currency
        self.finished: dict[int, int] = {}  # activationId -> FINISH status
        self.lock = threading.Lock()

    def call(self, buyer: str, path: str, body: dict, key: str | None = None):
        key = key or {"onlinesim": API_KEY, "smshub": HUB_KEY, CLONE: CLONE_KEY}[buyer]
        return http_post(self.url + path, {"key": key, **body})

    def get_number(self, buyer: str, service: str) -> dict:
        """GET_NUMBER as each buyer sends it: Onlinesim's 20 roubles on its own paths,
        SMSHub's 0.75 dollars and the clone's 15 roubles in Russia on their agent URL.
        Answers the JSON, or {"status": "HTTP 503"} for a call answered 503 (an
        SMSHub-protocol call past its 2.5 s deadline is rolled back)."""
        if buyer == "onlinesim":
            path = "/getNumberRent" if service == "rent" else "/getNumber"
            money = {"sum": 20}
        else:
            path = "/smshub" if buyer == "smshub" else f"/buyer/{CLONE}"
            money = ({"sum": 0.75, "currency": 840} if buyer == "smshub"
                     else {"sum": 15, "currency": 643})
        answer = self.call(buyer, path, {"action": "GET_NUMBER", "service": service,
                                         "country": "russia", "operator": "any", **money})
        if answer.status == 503 and buyer != "onlinesim":
            return {"status": "HTTP 503"}
        assert answer.status == 200, answer.body
        got = answer.json
        if got["status"] == "SUCCESS":
            with self.lock:
                self.issued[got["activationId"]] = {
                    "buyer": buyer, "number": got["number"], "service": service,
                    "minor": {"onlinesim": 2000, "smshub": 75, CLONE: 1500}[buyer],
                    "currency": "USD" if buyer == "smshub" else "RUB"}
        return got

    def finish(self, activation_id: int, status: int, **extra) -> None:
        buyer = self.issued[activation_id]["buyer"]
        path = {"onlinesim": "/finishActivation", "smshub": "/smshub"}.get(
            buyer, f"/buyer/{CLONE}")
        answer = self.call(buyer, path, {"action": "FINISH_ACTIVATION", "status": status,
                                         "activationId": activation_id, **extra})
        assert answer.status == 200 and answer.json["status"] == "SUCCESS", answer.body
        self.finished[activation_id] = status
        if "sum" in extra:  # a rental's FINISH gives its total
            self.issued[activation_id]["minor"] = round(extra["sum"] * 100)

    def services(self, buyer: str) -> dict:
        """{(country, operator, service): count} of the buyer's GET_SERVICES."""
        path = {"onlinesim": "/", "smshub": "/smshub"}.get(buyer, f"/buyer/{CLONE}")
        answer = self.call(buyer, path, {"action": "GET_SERVICES"})
        assert answer.status == 200, answer.body
        return {(c["country"], operator, service): n
                for c in answer.json["countryList"]
                for operator, counts in c["operatorMap"].items()
                for service, n in counts.items()}

    def sms(self, number: int, text: str) -> None:
        answer = http_post(self.url + "/sms", {"to": f"+{number}", "from": "WhatsApp",
                                               "text": text},
                           headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
        assert answer.status == 200, answer.body


def serve(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """A real `rentbox serve` on a free loopback port, its log (stderr) into `log`:
    (process, URL) once it answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "rentbox", "serve", "--port",
                                    str(port)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=err)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, f"rentbox serve exited: {log.read_text()[-2000:]}"
        try:
            return http_get_json(url + "/health")["status"] == "SUCCESS"
        except OSError:
            return False

    if not wait_until(up, 30):
        process.kill()
        raise AssertionError("rentbox serve did not start")
    return process, url


def test_three_buyers_share_one_pool_on_a_real_server(tmp_path):
    """Onlinesim, SMSHub and a clone on 20 numbers: parallel GET_NUMBER never shares a
    number; a number sold for wa at SMSHub is spent for it at every buyer, whatever it
    calls it; each buyer's SMS reach only its push URL, once each and in order (an SMSHub
    ERROR answer is retried after the pause, never after SUCCESS); a wrong key is a 401;
    the books per buyer equal a recount, and no key reaches the log."""
    db_path, log = tmp_path / "rentbox.db", tmp_path / "serve.log"
    csv = tmp_path / "pool.csv"
    csv.write_text("number,country,operator\n" + "".join(
        f"+{n},russia,{('mts', 'beeline')[i % 2]}\n" for i, n in enumerate(NUMBERS)))
    buyers_file = tmp_path / "buyers.toml"
    rent_push, os_push = FakeOnlinesim(), FakeOnlinesim()
    # SMSHub's receiver refuses the first push with a body status ERROR.
    hub_push, clone_push = FakeOnlinesim([ERROR, SUCCESS]), FakeOnlinesim()
    hub_push.requests = Stamped()
    buyers_file.write_text(f"[buyers.{CLONE}]\nprotocol = \"smshub\"\nkey = \"{CLONE_KEY}\"\n"
                           f"push_url = \"{clone_push.url}\"\n"
                           "services = [\"whatsapp\", \"telegram\"]\n")
    env = {**os.environ, "RENTBOX_API_KEY": API_KEY, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "RENTBOX_DB": str(db_path), "RENTBOX_SMSHUB_KEY": HUB_KEY,
           "RENTBOX_SMSHUB_PUSH_URL": hub_push.url, "RENTBOX_BUYERS": str(buyers_file),
           "RENTBOX_SERVICES": "wa,tg", "RENTBOX_PUSH_URL": rent_push.url,
           "RENTBOX_ACTIVATION_PUSH_URL": os_push.url, "RENTBOX_PUSH_RETRY_S": str(RETRY_S),
           # Cancels without an SMS are failures: none of these numbers should be banned.
           "RENTBOX_BAN_AFTER": "1000", "RENTBOX_LOG_LEVEL": "debug"}
    subprocess.run([sys.executable, "-m", "rentbox", "numbers", "import", str(csv)],
                   env=env, check=True, capture_output=True, timeout=60)
    process, url = serve(env, log)
    calls = Buyers(url)
    try:
        # ---- (a) 30 parallel GET_NUMBER from the three buyers on 20 numbers ----------
        asks = list(itertools.islice(itertools.cycle([
            ("onlinesim", "wa"), ("smshub", "wa"), (CLONE, "whatsapp"),
            ("onlinesim", "rent"), ("smshub", "tg"), (CLONE, "telegram"),
            ("onlinesim", "tg"), ("smshub", "wa"), (CLONE, "whatsapp")]), 30))
        answers, barrier = [], threading.Barrier(len(asks))

        def ask(buyer, service):
            barrier.wait()
            try:
                answers.append((buyer, calls.get_number(buyer, service)))
            except Exception as error:  # shown by the assertion on the statuses below
                answers.append((buyer, {"status": f"failed: {error!r}"}))

        threads = [threading.Thread(target=ask, args=a) for a in asks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(answers) == 30
        assert {a["status"] for _, a in answers} <= {"SUCCESS", "NO_NUMBERS", "HTTP 503"}
        issued = [a for _, a in answers if a["status"] == "SUCCESS"]
        # Every pair of the operations open now is on two different numbers.
        for one, other in itertools.combinations(issued, 2):
            assert one["number"] != other["number"]
        assert all(str(a["number"]) in NUMBERS for a in issued)
        books = open_database(db_path)
        open_now = books.rows("SELECT o.id, n.number FROM operations o JOIN numbers n"
                              " ON n.id = o.number_id WHERE o.state = 'open'")
        assert sorted(r["id"] for r in open_now) == sorted(calls.issued)
        assert len({r["number"] for r in open_now}) == len(open_now)
        # Every buyer's counts dropped by each number any buyer took: what is left free
        # is what was not issued, and nothing was left once a call was told NO_NUMBERS.
        free = sum(n for (_, _, s), n in calls.services("onlinesim").items() if s == "rent")
        assert free == len(NUMBERS) - len(issued)
        if any(a["status"] == "NO_NUMBERS" for _, a in answers):
            assert free == 0
        for buyer, service in (("smshub", "wa"), (CLONE, "whatsapp"), ("onlinesim", "tg")):
            assert sum(n for (_, _, s), n in calls.services(buyer).items()
                       if s == service) == free
        for activation_id in list(calls.issued):  # every number back in the pool
            calls.finish(activation_id, 4)

        # ---- (c) one operation per buyer; SMS reach only their own push URL ---------
        held = {"rent": calls.get_number("onlinesim", "rent"),
                "onlinesim": calls.get_number("onlinesim", "wa"),
                "smshub": calls.get_number("smshub", "wa"),
                CLONE: calls.get_number(CLONE, "whatsapp")}
        assert all(a["status"] == "SUCCESS" for a in held.values()), held
        receivers = {"rent": rent_push, "onlinesim": os_push, "smshub": hub_push,
                     CLONE: clone_push}
        for who in held:
            calls.sms(held[who]["number"], f"{who} code 0")
        # SMSHub's receiver answered ERROR: the same SMS comes again after the pause.
        assert wait_until(lambda: len(hub_push.requests) == 2, 30)
        first, again = hub_push.requests
        assert first["body"] == again["body"]
        assert again["at"] - first["at"] >= RETRY_S - 0.01
        for i in range(1, 5):
            for who in held:
                calls.sms(held[who]["number"], f"{who} code {i}")
        expected = {who: [f"{who} code {i}" for i in range(5)] for who in held}
        expected["smshub"].insert(0, "smshub code 0")  # the refused one, once more
        for who, receiver in receivers.items():
            assert wait_until(lambda: len(receiver.requests) >= len(expected[who]), 30), (
                who, [b["text"] for b in receiver.bodies()])
        for who, receiver in receivers.items():
            bodies = receiver.bodies()
            assert [b["text"] for b in bodies] == expected[who], who
            number = held[who]["number"]
            assert all(b["action"] == "PUSH_SMS" for b in bodies)
            if who in ("smshub", CLONE):
                key = HUB_KEY if who == "smshub" else CLONE_KEY
                assert all(b["phone"] == number and type(b["phone"]) is int
                           and "service" not in b and b["key"] == key for b in bodies), who
            else:
                assert all(b["phone"] == str(number) and b["key"] == API_KEY
                           for b in bodies), who
                assert all(("service" in b) == (who == "rent") for b in bodies), who
        # Each SUCCESS is stored, and nothing comes again over several retry pauses.
        assert wait_until(lambda: books.row("SELECT count(*) AS n FROM sms WHERE"
                                            " push_state = 'delivered'")["n"] == 20, 30)
        assert not wait_until(lambda: sum(len(r.requests) for r in receivers.values()) > 21,
                              4 * RETRY_S)

        # ---- (b) sold for wa at each buyer: spent for wa at all, by any name ----------
        for who in ("onlinesim", "smshub", CLONE):
            calls.finish(held[who]["activationId"], 3)
        sold = {held[who]["number"] for who in ("onlinesim", "smshub", CLONE)}
        drained = []
        for buyer, service in itertools.islice(itertools.cycle((
                ("onlinesim", "wa"), (CLONE, "whatsapp"))), 3 * len(NUMBERS)):
            got = calls.get_number(buyer, service)
            if got["status"] == "NO_NUMBERS":
                if buyer == CLONE:
                    break
                continue
            assert got["status"] == "SUCCESS", got
            drained.append(got["number"])
        # All but the rental's number and the three sold for wa, none of those.
        assert len(drained) == len(NUMBERS) - 4 and not sold & set(drained)
        assert calls.get_number("onlinesim", "wa") == {"status": "NO_NUMBERS"}
        assert calls.get_number("smshub", "wa") == {"status": "NO_NUMBERS"}
        for buyer, service in (("onlinesim", "wa"), ("smshub", "wa"), (CLONE, "whatsapp")):
            assert not any(calls.services(buyer).get(("russia", op, service))
                           for op in ("mts", "beeline")), buyer
        # The three are free for another service, at any buyer.
        assert sum(n for (_, _, s), n in calls.services(CLONE).items() if s == "telegram") == 3
        for_tg = {calls.get_number(b, s)["number"] for b, s in (
            (CLONE, "telegram"), ("smshub", "tg"), ("onlinesim", "tg"))}
        assert for_tg == sold
        assert calls.get_number(CLONE, "telegram") == {"status": "NO_NUMBERS"}

        # ---- (e) a wrong key is a 401 that names no key ------------------------------
        for path, key in (("/smshub", CLONE_KEY), (f"/buyer/{CLONE}", HUB_KEY),
                          ("/getServices", HUB_KEY), ("/smshub", API_KEY)):
            refused = http_post(url + path, {"action": "GET_SERVICES", "key": key})
            assert refused.status == 401 and refused.json["error"] == "BAD_KEY"
            assert not any(k.encode() in refused.body for k in KEYS)

        # Close every operation: the rental sold with its total, the rest cancelled.
        calls.finish(held["rent"]["activationId"], 3, sum=870)
        for activation_id in [i for i in calls.issued if i not in calls.finished]:
            calls.finish(activation_id, 4)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        for receiver in (rent_push, os_push, hub_push, clone_push):
            receiver.close()
    assert process.returncode == 0, log.read_text()[-2000:]

    # Nothing was pushed again after its SUCCESS, up to the server's stop.
    assert [len(r.requests) for r in (rent_push, os_push, hub_push, clone_push)] == [5, 5, 6, 5]
    # No number was ever issued while another operation held it: every pair of
    # operations on one number, the later one began after the earlier one let it go.
    operations = books.rows("SELECT id, number_id, created_at, finished_at FROM operations"
                            " ORDER BY id")
    assert len(operations) == len(calls.issued)
    for one, other in itertools.combinations(operations, 2):
        if one["number_id"] == other["number_id"]:
            assert one["finished_at"] is not None and other["created_at"] >= one["finished_at"]
    # ---- (d) the books per buyer equal a recount ------------------------------------
    assert tallies.verify(books) == []
    recount: dict[tuple, dict] = {}
    for activation_id, op in calls.issued.items():
        figures = recount.setdefault((op["buyer"], op["currency"]), {
            "operations": 0, "sold": 0, "cancelled": 0, "open": 0, "credited_minor": 0})
        status = calls.finished[activation_id]
        figures["operations"] += 1
        figures["sold"] += status == 3
        figures["cancelled"] += status == 4
        figures["credited_minor"] += op["minor"] if status == 3 else 0
    stored = {(r["buyer"], r["currency"]): {k: r[k] for k in (
        "operations", "sold", "cancelled", "open", "credited_minor")} for r in books.rows(
        "SELECT buyer, currency, sum(operations) AS operations, sum(sold) AS sold,"
        " sum(cancelled) AS cancelled, sum(open) AS open,"
        " sum(credited_minor) AS credited_minor FROM books_by_buyer GROUP BY 1, 2")}
    assert stored == recount
    assert set(recount) == {("onlinesim", "RUB"), ("smshub", "USD"), (CLONE, "RUB")}
    books.close()
    report = json.loads(subprocess.run(
        [sys.executable, "-m", "rentbox", "report", "--by", "buyer", "--json"], env=env,
        check=True, capture_output=True, text=True, timeout=60).stdout)
    assert {(r["key"], r["currency"]): {
        "operations": r["operations"], "sold": r["sold"], "cancelled": r["cancelled"],
        "open": r["open"], "credited_minor": r["credited_kopecks"]}
        for r in report["rows"]} == recount
    # ---- (e) no key reaches the log -------------------------------------------------
    written = log.read_text()
    assert "/smshub" in written and f"/buyer/{CLONE}" in written  # the calls were logged
    assert not [k for k in KEYS if k in written]
