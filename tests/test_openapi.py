"""The OpenAPI document (rentbox/openapi.json, served at GET /openapi.json): valid OpenAPI
3.1, in step with the app's routes, and true of real answers, success and error alike."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import hmac
import http.client
import json
import re
import time
from urllib.parse import urlsplit

import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from rentbox.config import Buyer
from rentbox.web import docs, make_app, wsgi
from conftest import API_KEY, GATEWAY_TOKEN, SMSGATE_KEY, START, Answer, WsgiClient
from conftest import add_numbers

CONSOLE_PASSWORD = "console-pass-3e1"
METRICS_TOKEN = "metrics-token-8b2"
SERVICES = ("vk", "wa")  # offered for single-service activations where a test says so
# SMSHub and one of its clones, buyers beside Onlinesim (docs/buyers.md); the clone is
# offered WhatsApp under its own name.
HUB_KEY, CLONE, CLONE_KEY = "hub-key-40c7", "grizzly", "grizzly-key-9a15"
BUYERS = (Buyer("smshub", "smshub", key=HUB_KEY),
          Buyer(CLONE, "smshub", key=CLONE_KEY, services=("whatsapp",)))
DOC = json.loads(docs.document())
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOC["paths"].items()
            for method in item if method in METHODS}


def operation(method: str, path: str) -> dict:
    return DOC["paths"][path][method.lower()]


def resolve(node: dict) -> dict:
    while "$ref" in node:
        target = DOC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_answer(method: str, path: str, answer: Answer) -> None:
    """The answer's status is documented for the operation, its media type is one the
    document names for that status, and its body validates against that schema."""
    if path not in DOC["paths"] or method.lower() not in DOC["paths"][path]:
        # An unknown path (404) or method (405): the one error shape, documented as such.
        assert answer.status in (404, 405), (method, path, answer.status)
        documented = resolve(DOC["components"]["responses"][
            "NotFound" if answer.status == 404 else "MethodNotAllowed"])
        if answer.status == 405:
            assert "POST" in answer.headers["Allow"]
        validate(documented["content"]["application/json"]["schema"], answer.json)
        return
    responses = operation(method, path)["responses"]
    assert str(answer.status) in responses, (method, path, answer.status, answer.body)
    documented = resolve(responses[str(answer.status)])
    media = answer.headers.get("Content-Type", "").split(";")[0].strip()
    assert media in documented["content"], (method, path, answer.status, media)
    schema = documented["content"][media]["schema"]
    if media == "application/json":
        validate(schema, answer.json)


def validate(schema: dict, value: object) -> None:
    # The document's components travel along, so every $ref resolves.
    validator = jsonschema_rs.Draft202012Validator(
        {"allOf": [schema], "components": DOC["components"]})
    errors = [error.message for error in validator.iter_errors(value)]
    assert not errors, (value, errors)


def request(url: str, method: str, path: str, *, payload: object = None,
            raw: bytes | None = None, headers: dict | None = None) -> Answer:
    """Any method over a real socket (http.client; every call has a timeout)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        body = raw if raw is not None else (None if payload is None
                                            else json.dumps(payload).encode())
        sent = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


# -- the document itself -----------------------------------------------------------------

def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    errors = [error.message for error in OPENAPI_31_VALIDATOR.iter_errors(DOC)]
    assert not errors, errors


def test_every_schema_in_the_document_is_valid_json_schema():
    for name, schema in DOC["components"]["schemas"].items():
        # Building a validator rejects an invalid schema.
        jsonschema_rs.Draft202012Validator({"allOf": [schema], "components": DOC["components"]})
    assert "Error" in DOC["components"]["schemas"]


def served_operations(app) -> set[tuple[str, str]]:
    """The app's routes as the document writes them: Bottle writes a path parameter
    `<token>`, OpenAPI `{token}`; each SMSHub-protocol buyer of the buyers file has a
    literal route of its own, `/buyer/<its name>`, documented once as `/buyer/{name}`."""
    served = set()
    for route in app.routes:
        path = re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", route.rule)
        served.add((route.method, re.sub(r"^/buyer/[^/{]+$", "/buyer/{name}", path)))
    return served


def test_every_route_is_documented_and_every_documented_operation_served(settings, clock,
                                                                          connections):
    # With SMSHub and a clone as buyers, so that their routes exist.
    app = make_app(with_buyers(settings), clock, connections)
    assert ("POST", f"/buyer/{CLONE}") in {(r.method, r.rule) for r in app.routes}
    assert served_operations(app) == documented_operations()
    # Without buyers (the default) neither is served: both answer a documented 404.
    alone = {(r.method, r.rule) for r in make_app(settings, clock, connections).routes}
    assert ("POST", "/smshub") not in alone and ("POST", f"/buyer/{CLONE}") not in alone


def test_every_request_example_in_the_document_is_valid():
    """schemathesis sends them (its examples phase drives /getNumber to a real activation
    in tests/test_fuzz.py): each must be a request the document allows."""
    examples = 0
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            for media in op.get("requestBody", {}).get("content", {}).values():
                for example in media.get("examples", {}).values():
                    validate(media["schema"], example["value"])
                    examples += 1
    assert examples >= 2


def test_every_error_answer_is_the_one_error_shape():
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = resolve(answer)["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, method)


# -- GET /openapi.json ---------------------------------------------------------------------

def test_the_document_is_served_as_json_without_auth(client):
    answer = client.request("GET", "/openapi.json")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json == DOC
    check_answer("GET", "/openapi.json", answer)


# -- real answers, on a real server ----------------------------------------------------------

def smsgate(envelope: dict, key: str = SMSGATE_KEY) -> tuple[bytes, dict]:
    raw = json.dumps(envelope).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(key.encode(), raw + stamp.encode(), hashlib.sha256).hexdigest()
    return raw, {"X-Signature": signature, "X-Timestamp": stamp}


def offering(settings, services=SERVICES):
    """`settings` with single-service activations offered for `services`."""
    return dataclasses.replace(settings,
                               rules=dataclasses.replace(settings.rules, services=services))


def with_buyers(settings, services=SERVICES):
    """`settings` offering `services`, with SMSHub and a clone (BUYERS) beside Onlinesim."""
    return dataclasses.replace(settings, rules=dataclasses.replace(
        settings.rules, services=services, buyers=BUYERS))


@pytest.fixture
def server(start_server, settings, db):
    add_numbers(db, START, ("+4917612345678", "germany", "vodafone", "box1:1"),
                ("+4917612345679", "germany", "vodafone", "box1:2"),
                ("+79161234567", "russia", "mts", "box2:1"),
                ("+77011234567", "kazakhstan", None, "box3:1"))
    return start_server(console_password=CONSOLE_PASSWORD, metrics_token=METRICS_TOKEN,
                        rules=with_buyers(settings).rules)


def test_real_answers_validate_against_the_document(server):
    key = {"Authorization": f"Bearer {API_KEY}"}
    gateway = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
    basic = "Basic " + base64.b64encode(f"any:{CONSOLE_PASSWORD}".encode()).decode()
    url = server.url
    seen: set[tuple[str, str, int]] = set()

    def call(method, path, expected, documented=None, **kwargs):
        answer = request(url, method, path, **kwargs)
        assert answer.status == expected, (method, path, answer.status, answer.body)
        documented = documented or path.split("?")[0]  # the documented path of a template
        check_answer(method, documented, answer)
        if documented in DOC["paths"]:
            seen.add((method, documented, answer.status))
        return answer

    services = {"action": "GET_SERVICES", "key": API_KEY}
    call("POST", "/getServicesRent", 200, payload=services)
    call("POST", "/getServicesRent", 200, payload={"action": "GET_SERVICES"}, headers=key)
    call("POST", "/getServicesRent", 200, raw=gzip.compress(json.dumps(services).encode()),
         headers={"Content-Encoding": "gzip", "Accept-Encoding": "identity"})
    call("POST", "/getServicesRent", 401, payload={"action": "GET_SERVICES", "key": "wrong"})
    call("POST", "/getServicesRent", 400, raw=b"{not json", headers=key)
    call("POST", "/getServicesRent", 413, raw=b" " * (64 * 1024 + 1), headers=key)
    call("POST", "/getServicesRent", 415, raw=b"{}",
         headers={**key, "Content-Encoding": "br"})
    call("GET", "/getServicesRent", 405)
    call("POST", "/no-such-path", 404, payload=services)
    call("POST", "/%ff", 404, payload=services)

    rent = {"action": "GET_NUMBER", "service": "rent", "sum": 400, "country": "germany"}
    number = call("POST", "/getNumberRent", 200, payload=rent, headers=key).json
    test = call("POST", "/getNumberRent", 200, payload=rent,
                headers={**key, "X-Rentbox-Test": "1"})
    assert test.headers.get("X-Rentbox-Test") == "1"
    assert call("POST", "/getNumberRent", 200, payload=rent, headers=key).json == {
        "status": "NO_NUMBERS"}
    call("POST", "/getNumberRent", 400, payload={**rent, "sum": -1}, headers=key)

    finish = {"action": "FINISH_ACTIVATION", "service": "rent",
              "activationId": number["activationId"], "status": 3, "sum": 870}
    call("POST", "/finishActivationRent", 200, payload=finish, headers=key)
    assert call("POST", "/finishActivationRent", 200, payload={**finish, "activationId": 999999},
                headers=key).json == {"status": "ERROR", "error": "NO_OPERATION"}
    call("POST", "/finishActivationRent", 400, payload={**finish, "status": 2}, headers=key)

    call("POST", "/getServices", 200, payload=services)
    call("POST", "/getServices", 400, payload={"action": "GET_NUMBER"}, headers=key)
    vk = {"action": "GET_NUMBER", "service": "vk", "sum": 40, "country": "russia"}
    activation = call("POST", "/getNumber", 200, payload=vk, headers=key).json
    assert activation["status"] == "SUCCESS"
    assert call("POST", "/getNumber", 200, payload=vk, headers=key).json == {
        "status": "NO_NUMBERS"}
    call("POST", "/getNumber", 400, payload={**vk, "service": "v k"}, headers=key)
    call("POST", "/getNumber", 401, payload={**vk, "key": "wrong"})
    call("POST", "/finishActivation", 200, headers=key, payload={
        "action": "FINISH_ACTIVATION", "activationId": activation["activationId"],
        "status": 3})
    call("POST", "/finishActivation", 400, payload={**finish, "service": "v k"}, headers=key)

    call("POST", "/", 200, payload=services)
    call("POST", "/", 200, payload=rent, headers=key)
    call("POST", "/", 200, payload={**vk, "service": "wa"}, headers=key)
    call("POST", "/", 200, payload={**finish, "activationId": 999999}, headers=key)
    call("POST", "/", 400, payload={"action": "GET_STATE"}, headers=key)
    call("POST", "/", 401, payload=services, headers={"Authorization": "Bearer nope"})

    # SMSHub's agent protocol, at /smshub and at the clone's /buyer/<name>: one URL each.
    hub, clone = {"key": HUB_KEY}, {"key": CLONE_KEY}
    at_clone, buyer = f"/buyer/{CLONE}", "/buyer/{name}"
    hub_services = call("POST", "/smshub", 200, payload={"action": "GET_SERVICES", **hub}).json
    assert {c["country"]: c["operatorMap"] for c in hub_services["countryList"]}[
        "kazakhstan"] == {"any": {"vk": 1, "wa": 1}}  # no operator: `any`, alone
    call("POST", at_clone, 200, buyer, payload={"action": "GET_SERVICES", **clone})
    call("POST", "/smshub", 200, headers={"Authorization": f"Bearer {HUB_KEY}"},
         payload={"action": "GET_SERVICES"})
    call("POST", "/smshub", 200, raw=gzip.compress(json.dumps(
        {"action": "GET_SERVICES", **hub}).encode()), headers={"Content-Encoding": "gzip"})
    hub_number = {"action": "GET_NUMBER", "country": "kazakhstan", "operator": "any",
                  "service": "vk", "sum": 20.00, "currency": 643,
                  "exceptionPhoneSet": ["7918", "79281"], **hub}
    issued = call("POST", "/smshub", 200, payload=hub_number).json
    assert issued == {"number": 77011234567, "activationId": issued["activationId"],
                      "status": "SUCCESS"}
    assert call("POST", "/smshub", 200, payload=hub_number).json == {"status": "NO_NUMBERS"}
    call("POST", "/smshub", 400, payload={**hub_number, "currency": 978})
    hub_finish = {"action": "FINISH_ACTIVATION", "activationId": issued["activationId"],
                  "status": 3, **hub}
    for path in (at_clone, "/finishActivation"):  # another buyer's activation
        assert call("POST", path, 200, buyer if path == at_clone else None, payload={
            **hub_finish, "key": CLONE_KEY if path == at_clone else API_KEY}).json == {
            "status": "ERROR", "error": "NO_OPERATION"}
    assert call("POST", "/smshub", 200, payload=hub_finish).json == {"status": "SUCCESS"}
    assert call("POST", "/smshub", 200, payload=hub_finish).json == {"status": "SUCCESS"}
    # Sold for vk, the number is still offered for WhatsApp: the clone takes it, as a test.
    test = call("POST", at_clone, 200, buyer, headers={"X-Rentbox-Test": "1"}, payload={
        **hub_number, "service": "whatsapp", "currency": 840, **clone})
    assert test.json["status"] == "SUCCESS" and test.headers.get("X-Rentbox-Test") == "1"
    call("POST", at_clone, 200, buyer, payload={
        "action": "FINISH_ACTIVATION", "activationId": test.json["activationId"],
        "status": 5, **clone})
    call("POST", "/smshub", 401, payload={"action": "GET_SERVICES", **clone})
    call("POST", "/smshub", 401, payload={"action": "GET_SERVICES", "key": API_KEY})
    call("POST", at_clone, 401, buyer, payload={"action": "GET_SERVICES", **hub})
    call("POST", at_clone, 400, buyer, payload={"action": "GET_BALANCE", **clone})
    call("POST", "/buyer/nobody", 404, buyer, payload={"action": "GET_SERVICES", **clone})
    call("GET", "/smshub", 405)

    call("GET", "/health", 200)
    call("GET", "/", 401)
    call("GET", "/", 200, headers={"Authorization": basic})
    call("GET", "/", 200, headers={"Authorization": basic, "Accept": "text/html"})
    call("GET", "/metrics", 401)
    call("GET", "/metrics", 200, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    call("GET", "/openapi.json", 200)

    sms = {"to": "+4917612345678", "from": "Google", "text": "1234 is your code"}
    call("POST", "/sms", 200, payload=sms, headers=gateway)
    call("POST", f"/sms?token={GATEWAY_TOKEN}", 200, payload={**sms, "id": "a1"})
    call("POST", "/sms", 401, payload=sms)
    call("POST", "/sms", 400, payload={"to": "+4917612345678"}, headers=gateway)
    call("POST", "/sms/ejoin", 200, headers=gateway, payload={
        "type": "recv-sms", "sms": [[0, "1", 1, "+4917612345678", "Google", "code 1"]]})
    call("POST", "/sms/ejoin", 400, headers=gateway, payload=[])
    forward = {"Content-Type": "application/octet-stream"}
    token_path = "/sms/ejoin/{token}"
    call("POST", f"/sms/ejoin/{GATEWAY_TOKEN}?box=box1?port=2&sender=Google", 200,
         token_path, raw=b'Sender: Google\r\nReceiver: "2"\r\n\r\ncode 2', headers=forward)
    call("POST", "/sms/ejoin/wrong?port=2", 401, token_path, raw=b"code 3", headers=forward)
    call("POST", f"/sms/ejoin/{GATEWAY_TOKEN}?port=2", 400, token_path, raw=b"code 3",
         headers=forward)
    call("POST", "/sms/dinstar", 200, headers=gateway, payload={"sn": "x", "ussd": []})
    raw, signed = smsgate({"deviceId": "dev1", "event": "sms:sent", "id": "e", "payload": {}})
    call("POST", "/sms/smsgate", 200, raw=raw, headers=signed)
    raw, signed = smsgate({"event": "sms:sent"}, key="wrong")
    call("POST", "/sms/smsgate", 401, raw=raw, headers=signed)
    call("POST", "/presence", 200, headers=gateway,
         payload={"gateway": "box1", "ports": ["box1:1"]})
    call("POST", "/presence", 400, headers=gateway, payload={"gateway": ""})

    # Every documented operation was driven at least once.
    assert {(m, p) for m, p, _ in seen if m.lower() in DOC["paths"][p]} == (
        documented_operations())


def test_routes_that_are_off_answer_as_documented(start_server):
    server = start_server(gateway_token=None, smsgate_key=None, console_password=None,
                          metrics_token=None)
    for method, path, status, payload, documented in [
            ("POST", "/sms", 503, {}, None), ("POST", "/presence", 503, {}, None),
            ("POST", "/sms/smsgate", 503, {}, None), ("GET", "/metrics", 503, None, None),
            ("GET", "/", 404, None, None),
            # No RENTBOX_SMSHUB_KEY, no buyers file: no buyer's URL is served.
            ("POST", "/smshub", 404, {"action": "GET_SERVICES"}, None),
            ("POST", f"/buyer/{CLONE}", 404, {"action": "GET_SERVICES"}, "/buyer/{name}")]:
        answer = request(server.url, method, path, payload=payload)
        assert answer.status == status, (path, answer.body)
        check_answer(method, documented or path, answer)


def test_a_presence_report_while_presence_is_off_is_a_documented_conflict(settings, clock,
                                                                          connections):
    off = dataclasses.replace(settings, rules=dataclasses.replace(settings.rules, presence=False))
    answer = WsgiClient(wsgi(off, clock, connections)).post(
        "/presence", {"gateway": "box1"}, headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert answer.status == 409, answer.body
    check_answer("POST", "/presence", answer)


def test_what_the_intake_refuses_the_document_refuses_too(client):
    """Found by the long fuzz run: a blank SMS id was schema-valid but answered 400."""
    schema = {"$ref": "#/components/schemas/SmsRequest"}
    for blank in ("", "  "):
        body = {"to": "+4915123456789", "from": "Bank", "text": "code", "id": blank}
        answer = client.post("/sms", body,
                             headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
        assert answer.status == 400
        with pytest.raises(AssertionError):
            validate(schema, body)
    validate(schema, {"to": "+4915123456789", "from": "Bank", "text": "code", "id": "a1"})


def test_a_null_port_is_taken_as_absent_and_documented_so(client, db):
    """Found by the second long fuzz run: `"port": null` was accepted (as absent) but
    the document did not allow it."""
    add_numbers(db, START, ("+4917612345678", "germany", "o2"))
    body = {"to": "+4917612345678", "from": "Bank", "text": "code", "port": None}
    answer = client.post("/sms", body, headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert answer.status == 200
    validate({"$ref": "#/components/schemas/SmsRequest"}, body)


def test_blank_means_what_python_strips():
    """Found by CI's fuzz run: `"from": "\\u001e\\n"` matched the document's old `\\S` but
    is blank to the intake (Python's strip() takes \\x1c-\\x1f as spaces). The document's
    non-blank pattern agrees with strip() on every character of the BMP."""
    import re

    pattern = resolve({"$ref": "#/components/schemas/SmsRequest"})["properties"]["from"][
        "pattern"]
    nonblank = re.compile(pattern)
    for code in range(0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        char = chr(code)
        assert bool(nonblank.search(char)) == bool(char.strip()), hex(code)


def test_a_null_port_does_not_stand_for_the_number(client):
    """Found by CI's fuzz run: with `"port": null` and no `to`, the document was satisfied
    (a port was 'present') while the intake asks for the number."""
    body = {"from": "Bank", "text": "code", "port": None}
    answer = client.post("/sms", body, headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert answer.status == 400
    with pytest.raises(AssertionError):
        validate({"$ref": "#/components/schemas/SmsRequest"}, body)


def allowing(schema: dict):
    """Whether the document allows a value, formats asserted (as schemathesis checks): a
    predicate, its validator built once."""
    return jsonschema_rs.Draft202012Validator(
        {"allOf": [schema], "components": DOC["components"]},
        validate_formats=True).is_valid


def allows(schema: dict, value: object) -> bool:
    return allowing(schema)(value)


def test_every_received_time_the_document_allows_is_taken_and_the_year_bound_agrees():
    """Found by CI's fuzz run on a slower machine: `2000-01-01T01:00:27+05:48` matched the
    document's `^2[0-9]{3}-` but was refused, being 1999 in UTC; and
    `9999-12-31T23:59:59-05:00` overflowed on its conversion to UTC. The bound is now
    the year as written, in `parse_time` and in the document (one schema, `ReceivedAt`,
    for `POST /sms` and SMSGate's `payload.receivedAt`)."""
    from rentbox.errors import InvalidInput
    from rentbox.sms import parse_time

    schema = {"$ref": "#/components/schemas/ReceivedAt"}
    smsgate = resolve({"$ref": "#/components/schemas/SmsgateEvent"})["allOf"][0]["then"]
    assert smsgate["properties"]["payload"]["properties"]["receivedAt"] == schema
    assert resolve({"$ref": "#/components/schemas/SmsRequest"})["properties"][
        "received_at"] == schema

    def taken(value):
        try:
            parse_time(value, "received_at")
        except InvalidInput:
            return False
        return True

    for value in ("2000-01-01T01:00:27+05:48", "2000-01-01T00:00:00+23:59",
                  "2000-01-01T00:00:00Z", "2999-12-31T23:59:59.999999-23:59",
                  "2026-11-26t10:00:00z", "2016-12-31T23:59:60Z",
                  "2017-01-01T02:59:60+03:00", "2026-11-26T10:00:00.1234567891+03:00", None,
                  "1999-12-31T23:59:59Z", "1999-12-31T23:59:59-05:00",
                  "3000-01-01T00:00:00Z", "3000-01-01T00:00:00+05:00",
                  "9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00",
                  "2016-12-31T12:59:60Z", "2026-11-26T10:00:00", "2026-02-29T10:00:00Z",
                  "2024-01-01T12:99:00Z", "yesterday", 20261126):
        assert allows(schema, value) == taken(value), value


def test_the_sum_the_document_allows_is_the_sum_the_rent_calls_take():
    """A JSON number, or a string of plain decimal digits with ASCII spaces around it,
    from 0 to 10^12 (protocol.to_kopecks); FINISH_ACTIVATION may leave it out."""
    from rentbox.errors import InvalidInput
    from rentbox.protocol import to_kopecks

    def taken(value):
        try:
            to_kopecks(value, "sum")
        except InvalidInput:
            return False
        return True

    number = {"$ref": "#/components/schemas/GetNumberRequest"}
    finish = {"$ref": "#/components/schemas/FinishRequest"}
    for value in (0, 870, 870.5, 1e12, 10**12, 10**12 + 1, 1e12 + 0.5, -1, -0.01, True,
                  "870.00", "870", " 870.00 ", ".5", "0", "000870.5", "1000000000000",
                  "1000000000000.000", "999999999999.999", "0001000000000000",
                  "1000000000000.01", "1000000000001", "", " ", ".", "870.", "-870",
                  "+870", "8.7e2", "870,00", "1 000", "\t870", "870\n", "８７０", "NaN",
                  [870], {"rub": 870}):
        body = {"action": "GET_NUMBER", "service": "rent", "sum": value}
        assert allows(number, body) == taken(value), value
        body = {"action": "FINISH_ACTIVATION", "activationId": 7, "status": 3, "sum": value}
        assert allows(finish, body) == taken(value), value
        assert allows({"$ref": "#/components/schemas/DispatchRequest"},
                      {**body, "service": "rent"}) == taken(value), value
    sold = {"action": "FINISH_ACTIVATION", "activationId": 7, "status": 3}
    assert allows(finish, sold) and allows(finish, {**sold, "sum": None})
    assert not allows(number, {"action": "GET_NUMBER", "service": "rent"})
    assert not allows(number, {"action": "GET_NUMBER", "service": "rent", "sum": None})


# -- single-service activations (protocol.md 6) ------------------------------------------

def test_activation_answers_validate_against_the_document(settings, clock, connections, db):
    """Success, NO_NUMBERS (none left, a service not offered), a bad service name, the
    FINISH of an activation on every FINISH path, and GET_SERVICES with a count of 0 (a
    number spent for a service): each answer is documented and true to the document."""
    add_numbers(db, START, ("+79161234567", "russia", "mts"),
                ("+79261234567", "russia", "megafon"), ("+4917612345678", "germany", "o2"))
    client = WsgiClient(wsgi(offering(settings), clock, connections))
    key = {"Authorization": f"Bearer {API_KEY}"}

    def call(path, payload, status=200, headers=None):
        answer = client.post(path, payload, headers={**key, **(headers or {})})
        assert answer.status == status, (path, payload, answer.body)
        check_answer("POST", path, answer)
        return answer

    services = {"action": "GET_SERVICES"}
    assert call("/getServices", services).json == {"countryList": [
        {"country": "germany", "operatorMap": {"any": {"vk": 1, "wa": 1},
                                               "o2": {"vk": 1, "wa": 1}}},
        {"country": "russia", "operatorMap": {"any": {"vk": 2, "wa": 2},
                                              "megafon": {"vk": 1, "wa": 1},
                                              "mts": {"vk": 1, "wa": 1}}}],
        "status": "SUCCESS"}
    assert call("/", services).json["countryList"][0]["operatorMap"]["o2"] == {
        "rent": 1, "vk": 1, "wa": 1}

    vk = {"action": "GET_NUMBER", "service": "vk", "sum": "40.00", "country": "germany",
          "operator": "any", "exceptionPhoneSet": ["7916"]}
    sold = call("/getNumber", vk).json
    assert sold == {"number": 4917612345678, "activationId": sold["activationId"],
                    "status": "SUCCESS"}
    assert call("/getNumber", vk).json == {"status": "NO_NUMBERS"}  # none left in germany
    assert call("/getNumber", {**vk, "service": "tg", "country": "russia"}).json == {
        "status": "NO_NUMBERS"}  # not offered
    test = call("/getNumber", {**vk, "service": " WA ", "country": "russia"},
                headers={"X-Rentbox-Test": "1"})
    assert test.json["status"] == "SUCCESS" and test.headers["X-Rentbox-Test"] == "1"
    dispatched = call("/", {**vk, "country": "russia", "exceptionPhoneSet": None}).json
    assert dispatched["status"] == "SUCCESS"

    activation = {"$ref": "#/components/schemas/GetActivationRequest"}
    for bad in ("v k", "", "rent", " Rent ", "x" * 33, 7, None):
        body = {**vk, "service": bad}
        assert "service" in call("/getNumber", body, 400).json["error"]
        assert not allows(activation, body), bad
    assert "service" in call("/", {**vk, "service": " rent"}, 400).json["error"]

    finish = {"action": "FINISH_ACTIVATION", "activationId": sold["activationId"],
              "status": 3}
    assert call("/finishActivation", finish).json == {"status": "SUCCESS"}
    assert call("/finishActivation", finish).json == {"status": "SUCCESS"}  # a repeat
    assert call("/finishActivationRent", {**finish, "service": "vk",
                                          "activationId": test.json["activationId"]}
                ).json == {"status": "SUCCESS"}
    assert call("/", {**finish, "activationId": dispatched["activationId"], "status": 4,
                      "sum": None}).json == {"status": "SUCCESS"}
    assert call("/finishActivation", {**finish, "activationId": 999999}).json == {
        "status": "ERROR", "error": "NO_OPERATION"}
    call("/finishActivation", {**finish, "service": "v k"}, 400)

    # Sold for vk, germany's one number is spent for it: a count of 0 beside wa's 1.
    germany = call("/getServices", services).json["countryList"][0]
    assert germany == {"country": "germany", "operatorMap": {"any": {"vk": 0, "wa": 1},
                                                             "o2": {"vk": 0, "wa": 1}}}


def test_get_services_with_no_service_offered_is_an_empty_list(client, db):
    add_numbers(db, START, ("+79161234567", "russia", "mts"))
    answer = client.post("/getServices", {"action": "GET_SERVICES", "key": API_KEY})
    assert answer.status == 200 and answer.json == {"countryList": [], "status": "SUCCESS"}
    check_answer("POST", "/getServices", answer)


def test_the_service_the_document_allows_is_the_service_the_calls_take():
    """protocol.service_name strips (str.strip: every Unicode space Python knows) and
    lower-cases (str.lower: the Kelvin sign is a `k`) before it matches a short name; an
    activation's GET_NUMBER refuses `rent`, POST / routes the exact `rent` to a rental,
    and FINISH takes any name or none. The document agrees on every character of the BMP,
    alone, around a name and inside one, and on random strings of the characters that
    matter."""
    import random

    from rentbox import protocol
    from rentbox.errors import InvalidInput

    def taken(parse, body) -> bool:
        try:
            parse(body)
        except InvalidInput:
            return False
        return True

    activation = allowing({"$ref": "#/components/schemas/GetActivationRequest"})
    finish = allowing({"$ref": "#/components/schemas/FinishRequest"})
    dispatch = allowing({"$ref": "#/components/schemas/DispatchRequest"})

    def check(value):
        number = {"action": "GET_NUMBER", "service": value, "sum": 40}
        assert activation(number) == taken(protocol.parse_activation_request, number), value
        rent = value == "rent"  # POST / (web/onlinesim.py): the exact value is a rental
        assert dispatch(number) == taken(protocol.parse_rent_request if rent
                                         else protocol.parse_activation_request,
                                         number), value
        ended = {"action": "FINISH_ACTIVATION", "activationId": 7, "status": 3,
                 "service": value}
        assert finish(ended) == taken(protocol.parse_finish_request, ended), value
        assert dispatch(ended) == finish(ended), value

    for value in ("vk", "wa", "VK", " vk ", "\u3000vk\x85", "mail.ru", "yandex-go", "a_b",
                  "9gag", "_vk", ".vk", "-vk", "v k", "vk\u200b", "\u212a", "\u0130",
                  "\u017f", "vk\n", "\nvk", "a" * 32, "a" * 33, " " + "a" * 32 + "\t",
                  "rent", "RENT", " rent ", "\u3000Rent", "rents", "renta", "", " ", 7,
                  7.5, True, [], {}, None):
        check(value)
    for code in range(0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        char = chr(code)
        for value in (char, f"{char}vk{char}", f"v{char}k"):
            check(value)
    alphabet = ("azAZkK09_.-" "\u212a\u0130\u017f\u00e9\u200b" "\t\n\x0b\x0c\r\x1c\x1f "
                "\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000" "rentRENT")
    draw = random.Random(6)
    for _ in range(5000):
        check("".join(draw.choice(alphabet) for _ in range(draw.randrange(0, 37))))


# -- SMSHub's agent protocol (protocol.md 7) ----------------------------------------------

def test_the_smshub_calls_the_document_allows_are_the_calls_smshub_takes():
    """Each field of GET_NUMBER and FINISH_ACTIVATION on /smshub and /buyer/{name}: what
    the document allows, smshub.py's parsers take, and the other way round (schemathesis
    sends both kinds: a valid call refused, or an invalid one taken, is a failure)."""
    from rentbox import smshub
    from rentbox.errors import InvalidInput

    def taken(parse, body) -> bool:
        try:
            parse(body, buyer="smshub")
        except InvalidInput:
            return False
        return True

    for path in ("/smshub", "/buyer/{name}"):
        assert operation("POST", path)["requestBody"]["content"]["application/json"][
            "schema"] == {"$ref": "#/components/schemas/SmshubRequest"}
    request = allowing({"$ref": "#/components/schemas/SmshubRequest"})
    number = {"action": "GET_NUMBER", "country": "russia", "operator": "mts", "service": "vk",
              "sum": 20.00, "currency": 643, "exceptionPhoneSet": ["7918", "79281"]}
    changes = [{}, {"currency": 840}, {"currency": 840.0}, {"currency": 978},
               {"currency": "643"}, {"currency": None}, {"currency": True},
               {"sum": 10}, {"sum": "20.00"}, {"sum": -1}, {"sum": None}, {"sum": "1e3"},
               {"country": ""}, {"country": None}, {"country": 7}, {"operator": None},
               {"operator": "any"}, {"operator": 5}, {"exceptionPhoneSet": None},
               {"exceptionPhoneSet": [7918]}, {"exceptionPhoneSet": ["79x"]},
               {"exceptionPhoneSet": "7918"}, {"service": "WA "}, {"service": "whatsapp"},
               {"service": "rent"}, {"service": " Rent"}, {"service": "v k"},
               {"service": None}, {"service": 7}]
    for change in changes:
        body = {**number, **change}
        assert request(body) == taken(smshub.parse_number_request, body), change
    for missing in ("service", "sum", "country", "currency", "operator", "exceptionPhoneSet"):
        body = {k: v for k, v in number.items() if k != missing}
        assert request(body) == taken(smshub.parse_number_request, body), missing

    finish = {"action": "FINISH_ACTIVATION", "activationId": 355, "status": 3}
    for change in ({}, {"status": 1}, {"status": 5}, {"status": 2}, {"status": "3"},
                   {"activationId": 0}, {"activationId": 2**63}, {"activationId": 7.0},
                   {"activationId": "355"}, {"service": "vk"}, {"service": "rent"},
                   {"service": None}, {"service": "v k"},
                   # The income is the GET_NUMBER sum: a FINISH's `sum` is not read.
                   {"sum": -1}, {"sum": "lots"}, {"sum": 20}):
        body = {**finish, **change}
        assert request(body) == taken(smshub.parse_finish_request, body), change
    assert request({"action": "GET_SERVICES"}) and not request({"action": "GET_BALANCE"})
    assert not request({"key": HUB_KEY})


def test_the_smshub_services_answer_never_has_any_beside_real_operators():
    """SMSHub's Appendix 2, as the document says it and smshub.py answers it: `any` only
    for a country none of whose numbers has an operator."""
    from rentbox import smshub
    from rentbox.buyers import View

    answer = allowing({"$ref": "#/components/schemas/SmshubServicesAnswer"})
    view = View(rent={}, services={"russia": {"mts": {"vk": 2}, "": {"vk": 5}},
                                   "kazakhstan": {"": {"vk": 3, "wa": 0}}})
    real = smshub.services_answer(view)
    assert answer(real)
    assert {c["country"]: c["operatorMap"] for c in real["countryList"]} == {
        "kazakhstan": {"any": {"vk": 3, "wa": 0}}, "russia": {"mts": {"vk": 2}}}
    mixed = {"countryList": [{"country": "russia",
                              "operatorMap": {"mts": {"vk": 2}, "any": {"vk": 7}}}],
             "status": "SUCCESS"}
    assert not answer(mixed)
    assert answer({**mixed, "countryList": [{"country": "russia",
                                             "operatorMap": {"any": {"vk": 7}}}]})
