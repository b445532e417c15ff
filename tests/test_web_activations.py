"""Onlinesim's activation calls over HTTP (web/onlinesim.py), in process and against a
real `rentbox serve` through a mixed day of rentals and activations on one pool."""

import dataclasses
import re
import threading

import pytest

from rentbox import reports, tallies
from rentbox.config import Rules
from rentbox.web import wsgi

from conftest import (API_KEY, GATEWAY_TOKEN, START, FakeOnlinesim, WsgiClient, add_numbers,
                      http_post, snapshot, wait_until)

POOL = [("+4915123456789", "germany", "telekom"), ("+4917612345678", "germany", "o2"),
        ("+79123456789", "russia", "mts")]
RULES = Rules(services=("vk", "wa"))

GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "vk", "sum": 20}
FINISH = {"action": "FINISH_ACTIVATION", "key": API_KEY, "status": 3}


@pytest.fixture
def pooled(db):
    add_numbers(db, START, *POOL)
    return db


@pytest.fixture
def client(settings, clock, connections):
    return WsgiClient(wsgi(dataclasses.replace(settings, rules=RULES), clock, connections))


def test_get_services_answers_each_offered_service(client, pooled):
    answer = client.post("/getServices", {"action": "GET_SERVICES", "key": API_KEY})
    assert answer.status == 200
    assert answer.json == {"countryList": [
        {"country": "germany", "operatorMap": {"any": {"vk": 2, "wa": 2},
                                               "o2": {"vk": 1, "wa": 1},
                                               "telekom": {"vk": 1, "wa": 1}}},
        {"country": "russia", "operatorMap": {"any": {"vk": 1, "wa": 1},
                                              "mts": {"vk": 1, "wa": 1}}}],
        "status": "SUCCESS"}


def test_post_root_get_services_answers_rent_and_services_together(client, pooled):
    answer = client.post("/", {"action": "GET_SERVICES", "key": API_KEY})
    russia = answer.json["countryList"][1]
    assert russia == {"country": "russia", "operatorMap": {
        "any": {"rent": 1, "vk": 1, "wa": 1}, "mts": {"rent": 1, "vk": 1, "wa": 1}}}
    rent_only = client.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
    assert rent_only.json["countryList"][1]["operatorMap"] == {"any": {"rent": 1},
                                                               "mts": {"rent": 1}}


def test_without_offered_services_get_services_is_empty_and_get_number_no_numbers(
        settings, clock, connections, pooled):
    off = WsgiClient(wsgi(settings, clock, connections))
    answer = off.post("/getServices", {"action": "GET_SERVICES", "key": API_KEY})
    assert answer.status == 200 and answer.json == {"countryList": [], "status": "SUCCESS"}
    before = snapshot(pooled)
    assert off.post("/getNumber", GET_NUMBER).json == {"status": "NO_NUMBERS"}
    assert snapshot(pooled) == before


def test_activation_cycle_and_the_pool_shared_with_rent(client, pooled):
    taken = client.post("/getNumber", {**GET_NUMBER, "country": "russia"})
    assert taken.json == {"number": 79123456789, "activationId": 1, "status": "SUCCESS"}
    rent = client.post("/getNumberRent", {"action": "GET_NUMBER", "key": API_KEY,
                                          "service": "rent", "sum": 400, "country": "russia"})
    assert rent.json == {"status": "NO_NUMBERS"}  # the one Russian number is in an activation
    for _ in range(2):  # idempotent
        done = client.post("/finishActivation", {**FINISH, "activationId": 1})
        assert done.json == {"status": "SUCCESS"}
    again = client.post("/getNumber", {**GET_NUMBER, "country": "russia"})
    assert again.json == {"status": "NO_NUMBERS"}  # spent for vk
    other = client.post("/getNumber", {**GET_NUMBER, "service": "WA", "country": "russia"})
    assert other.json["status"] == "SUCCESS"


def test_a_finish_finds_its_operation_whatever_path_it_came_on(client, pooled):
    rental = client.post("/", {"action": "GET_NUMBER", "key": API_KEY, "service": "rent",
                               "sum": 400}).json["activationId"]
    activation = client.post("/", {**GET_NUMBER}).json["activationId"]
    assert (rental, activation) == (1, 2)
    assert client.post("/finishActivation", {**FINISH, "activationId": rental,
                                             "sum": 870}).json == {"status": "SUCCESS"}
    assert client.post("/finishActivationRent", {**FINISH, "activationId": activation,
                                                 "service": "rent"}).json == {
        "status": "SUCCESS"}
    assert [(r["service"], r["finish_status"]) for r in pooled.rows(
        "SELECT service, finish_status FROM operations ORDER BY id")] == [("rent", 3),
                                                                           ("vk", 3)]
    unknown = client.post("/finishActivation", {**FINISH, "activationId": 99})
    assert unknown.json == {"status": "ERROR", "error": "NO_OPERATION"}


@pytest.mark.parametrize("body, message", [
    ({"service": None}, "service is required"),
    ({"service": "v k"}, "service must be a short service name"),
    ({"service": 12}, "service must be a string"),
    ({"service": "rent"}, "service 'rent' is a long-term rental: send it as exactly"),
    ({"sum": None}, "sum is required"),
    ({"sum": -1}, "sum must not be negative"),
    ({"exceptionPhoneSet": "7912"}, "exceptionPhoneSet must be an array"),
])
def test_bad_activation_requests_are_400_and_change_nothing(client, pooled, body, message):
    before = snapshot(pooled)
    answer = client.post("/getNumber", {**GET_NUMBER, **body})
    assert answer.status == 400
    assert answer.json["status"] == "ERROR" and message in answer.json["error"]
    assert snapshot(pooled) == before


@pytest.mark.parametrize("status", [0, 2, 6, "3"])
def test_a_finish_status_outside_1_3_4_5_is_400(client, pooled, status):
    client.post("/getNumber", GET_NUMBER)
    before = snapshot(pooled)
    answer = client.post("/finishActivation", {**FINISH, "activationId": 1, "status": status})
    assert answer.status == 400 and answer.json["status"] == "ERROR"
    assert snapshot(pooled) == before


def test_an_unoffered_service_is_no_numbers(client, pooled):
    before = snapshot(pooled)
    answer = client.post("/getNumber", {**GET_NUMBER, "service": "tg"})
    assert answer.status == 200 and answer.json == {"status": "NO_NUMBERS"}
    assert snapshot(pooled) == before


def test_a_wrong_key_on_activation_paths_is_401(client, pooled):
    for path in ("/getServices", "/getNumber", "/finishActivation"):
        answer = client.post(path, {**GET_NUMBER, "key": "wrong", "activationId": 1})
        assert answer.status == 401 and answer.json == {"status": "ERROR", "error": "BAD_KEY"}


def test_the_action_must_match_the_activation_path(client, pooled):
    answer = client.post("/getNumber", {**GET_NUMBER, "action": "FINISH_ACTIVATION"})
    assert answer.status == 400
    assert answer.json["error"] == "action must be GET_NUMBER on this path, not " \
                                   "'FINISH_ACTIVATION'"


# ---- a real server through a mixed day -------------------------------------------------

def test_a_mixed_day_on_a_real_server(start_server, db, tmp_path):
    """Rentals and activations on one pool over HTTP: parallel GET_NUMBER never shares a
    number, spent services, a fourth cancel, FINISH without sum, an activation that never
    gets a FINISH, each SMS at the right push URL exactly once and in order, and books per
    product equal to a recount."""
    numbers = [(f"+49151{n:08d}", "germany", "telekom") for n in range(12)]
    add_numbers(db, START, *numbers)
    rent_push, activation_push = FakeOnlinesim(), FakeOnlinesim()
    # Activations run out of time after 8 s: far longer than the SMS and FINISH calls
    # below take even on a loaded machine (about 1 s), short enough to see the one that
    # never gets a FINISH.
    rules = Rules(services=("vk", "wa", "tg"), activation_s=8.0, guard_margin_s=0.2,
                  ban_after=10)
    server = start_server(rules=rules, push_url=rent_push.url,
                          activation_push_url=activation_push.url, housekeeping_s=0.1)
    try:
        def call(path, body):
            answer = http_post(server.url + path, {"key": API_KEY, **body})
            assert answer.status == 200, answer.body
            return answer.json

        def get_number(service, **extra):
            path = "/getNumberRent" if service == "rent" else "/getNumber"
            return call(path, {"action": "GET_NUMBER", "service": service, "sum": 20,
                               **extra})

        def finish(activation_id, status, **extra):
            return call("/finishActivation", {"action": "FINISH_ACTIVATION",
                                              "activationId": activation_id,
                                              "status": status, **extra})

        def sms(number, text):
            answer = http_post(server.url + "/sms", {"to": f"+{number}", "from": "VK",
                                                     "text": text},
                               headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
            assert answer.status == 200, answer.body

        # 16 parallel GET_NUMBER, rent and three services, on 12 numbers.
        answers, barrier = [], threading.Barrier(16)

        def one(service):
            barrier.wait()
            answers.append((service, get_number(service)))

        threads = [threading.Thread(target=one, args=(("rent", "vk", "wa", "tg")[i % 4],))
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        issued = [(s, a) for s, a in answers if a["status"] == "SUCCESS"]
        assert len(issued) == 12
        assert len({a["number"] for _, a in issued}) == 12
        services_now = call("/", {"action": "GET_SERVICES"})
        assert services_now["countryList"] == []  # nothing left for anyone

        by_service = {}
        for service, a in issued:
            by_service.setdefault(service, []).append(a)
        rental = by_service["rent"][0]
        vk = by_service["vk"][0]
        # SMS to a rental and to an activation: each to its own push URL, in order.
        for i in range(3):
            sms(rental["number"], f"rent code {i}")
            sms(vk["number"], f"vk code {i}")
        assert rent_push.wait_for(3) and activation_push.wait_for(3)
        assert [b["text"] for b in rent_push.bodies()] == [f"rent code {i}" for i in range(3)]
        assert [b["text"] for b in activation_push.bodies()] == [
            f"vk code {i}" for i in range(3)]
        assert all(b["service"] == "rent" for b in rent_push.bodies())
        assert all("service" not in b for b in activation_push.bodies())
        assert all(b["phone"] == str(vk["number"]) for b in activation_push.bodies())
        # FINISH: the rental sold with its total, the vk activation sold without a sum.
        assert finish(rental["activationId"], 3, sum=870)["status"] == "SUCCESS"
        assert finish(vk["activationId"], 3)["status"] == "SUCCESS"
        # Every other operation cancelled; the vk one's number is spent for vk now.
        others = [(s, a) for s, a in issued if a not in (rental, vk)]
        lapsing = next(a for s, a in others if s != "rent")  # never gets a FINISH
        for _, a in others:
            if a is not lapsing:
                finish(a["activationId"], 4)
        counts = call("/getServices", {"action": "GET_SERVICES"})["countryList"][0]
        germany = counts["operatorMap"]["any"]
        assert germany["vk"] == germany["wa"] - 1 >= 1
        # A fourth cancelled try for tg spends that number for tg.
        target = vk["number"]
        for _ in range(4):
            got = get_number("tg", exceptionPhoneSet=[
                str(n) for n in (int(x[0][1:]) for x in numbers) if n != target])
            assert got["number"] == target
            finish(got["activationId"], 4)
        assert get_number("tg", exceptionPhoneSet=[
            str(n) for n in (int(x[0][1:]) for x in numbers) if n != target]) == {
            "status": "NO_NUMBERS"}
        # The activation without a FINISH lapses: its number is offered again.
        assert wait_until(lambda: reports.status(db, server.clock.now())["operations"][
            "lapsed_activations"] == [lapsing["activationId"]], 20)
        warnings = reports.status(db, server.clock.now())["warnings"]
        assert any("ran out of time without a FINISH" in w for w in warnings)
        # Nothing was pushed twice; the books per product equal a recount.
        assert len(rent_push.requests) == 3 and len(activation_push.requests) == 3
        assert tallies.verify(db) == []
        books = {r["service"]: r for r in db.rows(
            "SELECT service, sum(sold) AS sold, sum(credited_kopecks) AS credited"
            " FROM books_by_service GROUP BY service")}
        assert books["rent"]["credited"] == 87000 and books["vk"]["credited"] == 2000
    finally:
        rent_push.close()
        activation_push.close()


def test_without_the_activation_push_url_activation_sms_wait(start_server, db, onlinesim):
    add_numbers(db, START, *POOL)
    server = start_server(rules=RULES, push_url=onlinesim.url)
    answer = http_post(server.url + "/getNumber", {**GET_NUMBER, "country": "russia"}).json
    http_post(server.url + "/sms", {"to": f"+{answer['number']}", "from": "VK",
                                    "text": "code 1"},
              headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert wait_until(lambda: db.row("SELECT count(*) AS n FROM sms")["n"] == 1)
    status = reports.status(db, server.clock.now())
    assert status["outbox"]["pending"] == 1
    assert any("without RENTBOX_ACTIVATION_PUSH_URL" in w for w in status["warnings"])
    assert onlinesim.requests == []


def test_the_status_page_shows_each_product_and_service(settings, clock, connections, pooled):
    import base64

    password = "page-pass-22"
    app = WsgiClient(wsgi(dataclasses.replace(settings, rules=RULES, console_password=password),
                          clock, connections))
    rent = app.post("/getNumberRent", {"action": "GET_NUMBER", "key": API_KEY,
                                       "service": "rent", "sum": 400}).json
    app.post("/finishActivationRent", {**FINISH, "activationId": rent["activationId"],
                                       "sum": 870})
    vk = app.post("/getNumber", GET_NUMBER).json
    app.post("/finishActivation", {**FINISH, "activationId": vk["activationId"]})
    app.post("/getNumber", {**GET_NUMBER, "service": "wa"})
    auth = "Basic " + base64.b64encode(f"rentbox:{password}".encode()).decode()
    html = app.request("GET", "/", headers={"Authorization": auth,
                                            "Accept": "text/html"}).body.decode()
    income = html[html.index("<section id=products"):]
    income = income[:income.index("</section>")]
    cells = [c for c in re.findall(r"<td[^>]*>(.*?)</td>", income)]
    assert cells[:6] == ["rent", "rent", "870.00 RUB", "0.00 RUB", "-", "0"], cells
    assert cells[6:9] == ["vk", "activations", "20.00 RUB"], cells
    assert cells[12:15] == ["wa", "activations", "0.00 RUB"] and cells[17] == "1", cells
