"""The SMSHub agent protocol (smshub.py, web/smshub.py): its wire format, and SMSHub and a
clone served beside Onlinesim on one pool, in process."""

import dataclasses
import json

import pytest

from rentbox import push, smshub
from rentbox.buyers import View
from rentbox.config import Buyer, Rules
from rentbox.errors import InvalidInput
from rentbox.web import wsgi
from rentbox.web.calls import ARRIVED_AGE_KEY

from conftest import API_KEY, START, WsgiClient, add_numbers

HUB_KEY, GRIZZLY_KEY = "hub-key-31d9", "grizzly-key-8c1e"
RULES = Rules(services=("vk", "wa"), buyers=(
    Buyer("smshub", "smshub", key=HUB_KEY),
    Buyer("grizzly", "smshub", key=GRIZZLY_KEY, services=("whatsapp",))))
POOL = [("+79161234501", "russia", "mts"), ("+79031234502", "russia", "beeline"),
        ("+77011234503", "kazakhstan", None), ("+77011234504", "kazakhstan", None)]


@pytest.fixture
def client(settings, clock, connections, db):
    add_numbers(db, START, *POOL)
    return WsgiClient(wsgi(dataclasses.replace(settings, rules=RULES), clock, connections))


def hub(client, body, path="/smshub", key=HUB_KEY):
    return client.post(path, {"key": key, **body})


# ---------------------------------------------------------------------------------------
# The wire format
# ---------------------------------------------------------------------------------------


def test_get_number_reads_currency_string_prefixes_and_the_buyers_service_name():
    request = smshub.parse_number_request(
        {"action": "GET_NUMBER", "country": "russia", "operator": "mts", "service": "vk",
         "sum": 20.5, "currency": 840, "exceptionPhoneSet": ["7918", "79281"]},
        buyer="smshub")
    assert (request.service, request.buyer, request.currency, request.sum_kopecks,
            request.country, request.operator, request.excluded_prefixes) == (
        "vk", "smshub", "USD", 2050, "russia", "mts", ("7918", "79281"))
    # `any` is any operator; an integer sum and no currency: roubles.
    request = smshub.parse_number_request(
        {"country": "russia", "operator": "any", "service": "WA", "sum": 10}, buyer="x")
    assert (request.operator, request.currency, request.sum_kopecks, request.service) == (
        None, "RUB", 1000, "wa")


@pytest.mark.parametrize("body, message", [
    ({"country": "russia", "service": "vk", "sum": 1, "currency": 978}, "currency must be"),
    ({"country": "russia", "service": "vk", "sum": 1, "currency": "643"}, "currency must be"),
    ({"country": "russia", "sum": 1}, "service is required"),
    ({"service": "vk", "sum": 1}, "country is required"),
    ({"country": "russia", "service": "rent", "sum": 1}, "not offered on the SMSHub"),
    ({"country": "russia", "service": "vk"}, "sum is required"),
])
def test_a_bad_get_number_is_refused_with_the_field_named(body, message):
    with pytest.raises(InvalidInput, match=message):
        smshub.parse_number_request(body, buyer="smshub")


def test_get_services_names_real_operators_and_any_only_where_none_can_be_named():
    view = View(rent={}, services={
        "russia": {"mts": {"vk": 2}, "": {"vk": 5}},  # no `any` beside real operators
        "kazakhstan": {"": {"vk": 3}}})
    assert smshub.services_answer(view) == {"countryList": [
        {"country": "kazakhstan", "operatorMap": {"any": {"vk": 3}}},
        {"country": "russia", "operatorMap": {"mts": {"vk": 2}}}], "status": "SUCCESS"}


def test_push_sms_has_an_integer_phone_and_no_service():
    body = smshub.push_body({"id": 7, "number": "79281234567", "sender": "Vk",
                             "text": "код 1234"}, "k")
    assert body == {"action": "PUSH_SMS", "smsId": 7, "phone": 79281234567,
                    "phoneFrom": "Vk", "text": "код 1234", "key": "k"}


@pytest.mark.parametrize("status, answer, kind", [
    (200, b'{"status": "SUCCESS"}', "delivered"),
    (200, b'{"status":"success"}', "delivered"),
    (200, b"", "retry"),                                   # no body: not a SUCCESS
    (200, b"OK", "retry"),
    (200, b'{"status": "ERROR", "error": "NO_OPERATION"}', "retry"),  # never terminal
    (200, b'{"response": "SUCCESS"}', "retry"),            # only `status` counts
    (500, b'{"status": "SUCCESS"}', "retry"),
    (200, b'{"status": ["SUCCESS"]}', "retry"),
])
def test_a_push_is_delivered_only_on_a_body_status_of_success(status, answer, kind):
    outcome = smshub.read_answer(status, answer)
    assert outcome.kind == kind
    assert isinstance(smshub.WIRE, push.Wire)


# ---------------------------------------------------------------------------------------
# Over HTTP, in process
# ---------------------------------------------------------------------------------------


def test_each_buyer_gets_its_own_services_under_its_own_names(client):
    answer = hub(client, {"action": "GET_SERVICES"})
    assert answer.status == 200
    assert answer.json == {"countryList": [
        {"country": "kazakhstan", "operatorMap": {"any": {"vk": 2, "wa": 2}}},
        {"country": "russia", "operatorMap": {"beeline": {"vk": 1, "wa": 1},
                                              "mts": {"vk": 1, "wa": 1}}}],
        "status": "SUCCESS"}
    grizzly = hub(client, {"action": "GET_SERVICES"}, "/buyer/grizzly", GRIZZLY_KEY).json
    assert grizzly["countryList"][1]["operatorMap"] == {"beeline": {"whatsapp": 1},
                                                        "mts": {"whatsapp": 1}}


def test_get_number_and_finish_over_the_one_agent_url(client, db):
    issued = hub(client, {"action": "GET_NUMBER", "country": "russia", "operator": "mts",
                          "service": "vk", "sum": 20.00, "currency": 643,
                          "exceptionPhoneSet": ["7903"]}).json
    assert issued == {"number": 79161234501, "activationId": issued["activationId"],
                      "status": "SUCCESS"}
    assert hub(client, {"action": "GET_NUMBER", "country": "russia", "operator": "mts",
                        "service": "vk", "sum": 20, "currency": 643}).json == {
        "status": "NO_NUMBERS"}
    finish = {"action": "FINISH_ACTIVATION", "activationId": issued["activationId"],
              "status": 3}
    assert hub(client, finish).json == {"status": "SUCCESS"}
    assert hub(client, finish).json == {"status": "SUCCESS"}  # idempotent
    row = db.row("SELECT buyer, currency, final_sum_kopecks, state FROM operations")
    assert row == {"buyer": "smshub", "currency": "RUB", "final_sum_kopecks": 2000,
                   "state": "closed"}


def test_a_buyer_cannot_finish_another_buyers_operation(client, db):
    issued = hub(client, {"action": "GET_NUMBER", "country": "russia", "service": "wa",
                          "sum": 5, "currency": 840}).json
    finish = {"action": "FINISH_ACTIVATION", "activationId": issued["activationId"],
              "status": 4}
    for path, key in (("/buyer/grizzly", GRIZZLY_KEY), ("/finishActivation", API_KEY)):
        answer = hub(client, finish, path, key)
        assert answer.json["error"] == "NO_OPERATION"
    assert db.row("SELECT state FROM operations")["state"] == "open"


def test_texts_about_a_buyers_sms_name_that_buyer_not_onlinesim(client, db, clock, caplog):
    import logging

    from rentbox import sms

    issued = hub(client, {"action": "GET_NUMBER", "country": "russia", "service": "vk",
                          "sum": 20, "currency": 643}).json
    number = str(issued["number"])

    def arrives(text):
        sms.accept_sms(db, clock, sms.IncomingSms(source="api", sender="VK", text=text,
                                                  to=number), RULES)

    with caplog.at_level(logging.INFO):
        arrives("code 1")
        assert push.push_due(db, clock, url="x", api_key=HUB_KEY, retry_s=10, timeout_s=1,
                             rules=RULES, route="smshub", wire=smshub.WIRE,
                             sender=lambda *args: push.Outcome("delivered")).attempts == 1
        arrives("code 2")  # the activation ends before it is pushed
        hub(client, {"action": "FINISH_ACTIVATION", "activationId": issued["activationId"],
                     "status": 3})
    said = [r.getMessage() for r in caplog.records]
    expired = db.rows("SELECT last_error FROM sms WHERE push_state = 'expired'")
    assert expired == [{"last_error": "its vk activation was closed (FINISH status 3) before "
                                      "smshub took it"}]
    assert "SMS 1 delivered to smshub" in said
    assert any("1 SMS not taken by smshub will never be pushed" in line for line in said)
    assert not any("Onlinesim" in line for line in said)


def test_a_wrong_key_is_a_401_that_names_no_key(client):
    for path, key in (("/smshub", GRIZZLY_KEY), ("/buyer/grizzly", HUB_KEY),
                      ("/smshub", API_KEY), ("/buyer/grizzly", "")):
        answer = hub(client, {"action": "GET_SERVICES"}, path, key)
        assert answer.status == 401
        assert answer.json == {"status": "ERROR", "error": "BAD_KEY"}
        assert HUB_KEY.encode() not in answer.body and GRIZZLY_KEY.encode() not in answer.body
    # Onlinesim's key is Onlinesim's: an SMSHub key is refused there too.
    assert client.post("/getServices", {"action": "GET_SERVICES", "key": HUB_KEY}).status == 401


def test_unknown_actions_buyers_and_bodies_are_refused_in_the_one_json_shape(client):
    assert hub(client, {"action": "GET_BALANCE"}).json == {
        "status": "ERROR", "error": "unknown action 'GET_BALANCE'"}
    answer = client.post("/buyer/nobody", {"action": "GET_SERVICES", "key": HUB_KEY})
    assert answer.status == 404 and answer.json["status"] == "ERROR"
    answer = client.post("/smshub", raw=b"\xff\xfe")
    assert answer.status == 400 and json.loads(answer.body)["status"] == "ERROR"


def test_a_get_number_older_than_smshubs_3_s_is_rolled_back_and_answered_503(
        settings, clock, connections, db):
    """SMSHub gives up after 3 s: a number issued later would be held for nobody. The
    same call 2 s old is served (Onlinesim's own deadline is 9 s)."""
    add_numbers(db, START, *POOL)
    app = wsgi(dataclasses.replace(settings, rules=RULES), clock, connections)

    def aged(age_s):
        def app_with_age(environ, start_response):
            environ[ARRIVED_AGE_KEY] = age_s
            return app(environ, start_response)
        return WsgiClient(app_with_age)

    body = {"action": "GET_NUMBER", "country": "russia", "service": "vk", "sum": 1,
            "currency": 643}
    late = hub(aged(2.6), body)
    assert late.status == 503 and late.json["status"] == "ERROR"
    assert db.row("SELECT count(*) AS n FROM operations")["n"] == 0
    assert hub(aged(2.0), body).json["status"] == "SUCCESS"


def test_a_full_disk_advertises_nothing_and_answers_get_number_503(client, connections,
                                                                   settings, clock, caplog):
    """As for Onlinesim: counts that could not be issued are over-reporting, and a
    GET_NUMBER that cannot be committed is a retryable 503 in the one error shape."""
    import logging

    from rentbox.errors import Unavailable

    connections.health.failed("the disk is full")
    assert hub(client, {"action": "GET_SERVICES"}).json == {"countryList": [],
                                                              "status": "SUCCESS"}
    connections.health.succeeded()

    class FullDisk:
        def get(self):
            class Db:
                def write_problem(self):
                    return None

                def __getattr__(self, name):
                    raise Unavailable("the database cannot be written now: the disk is full")
            return Db()

    full = WsgiClient(wsgi(dataclasses.replace(settings, rules=RULES), clock, FullDisk()))
    with caplog.at_level(logging.INFO):
        answer = hub(full, {"action": "GET_NUMBER", "country": "russia", "service": "vk",
                            "sum": 1, "currency": 643})
    assert (answer.status, answer.json) == (503, {
        "status": "ERROR", "error": "the database cannot be written now: the disk is full"})
    assert "Traceback" not in caplog.text and HUB_KEY not in caplog.text
