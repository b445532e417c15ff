import base64
import gzip
import http.client
import json
import logging

import pytest


from conftest import (API_KEY, GATEWAY_TOKEN, START, WsgiClient, add_numbers, http_post,
                      snapshot)
import bottle

from rentbox.web import Context, console, intake, monitoring, onlinesim, wsgi

POOL = [("+4915123456789", "germany", "telekom"), ("+4917612345678", "germany", "o2"),
        ("+79123456789", "russia", "mts"), ("+380501234567", "ukraine", None)]

GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}
FINISH = {"action": "FINISH_ACTIVATION", "key": API_KEY, "service": "rent", "status": 3,
          "sum": 870}


@pytest.fixture
def pooled(db):
    add_numbers(db, START, *POOL)
    return db


def test_get_services(client, pooled):
    answer = client.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json; charset=utf-8"
    assert answer.json == {"countryList": [
        {"country": "germany", "operatorMap": {"any": {"rent": 2}, "o2": {"rent": 1},
                                               "telekom": {"rent": 1}}},
        {"country": "russia", "operatorMap": {"any": {"rent": 1}, "mts": {"rent": 1}}},
        {"country": "ukraine", "operatorMap": {"any": {"rent": 1}}}], "status": "SUCCESS"}


def test_rent_cycle(client, pooled):
    answer = client.post("/getNumberRent", {**GET_NUMBER, "country": "germany",
                                            "operator": "o2"})
    assert answer.json == {"number": 4917612345678, "activationId": 1, "status": "SUCCESS"}
    services = client.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
    germany = services.json["countryList"][0]
    assert germany == {"country": "germany", "operatorMap": {"any": {"rent": 1},
                                                             "telekom": {"rent": 1}}}
    again = client.post("/getNumberRent", {**GET_NUMBER, "country": "germany",
                                           "operator": "o2"})
    assert again.status == 200 and again.json == {"status": "NO_NUMBERS"}
    for _ in range(2):  # a repeated FINISH answers SUCCESS again
        done = client.post("/finishActivationRent", {**FINISH, "activationId": 1})
        assert done.status == 200 and done.json == {"status": "SUCCESS"}
    unknown = client.post("/finishActivationRent", {**FINISH, "activationId": 77})
    assert unknown.status == 200
    assert unknown.json == {"status": "ERROR", "error": "NO_OPERATION"}


@pytest.mark.parametrize("status", [1, 3, 4, 5])
def test_finish_every_status_frees_the_number(client, pooled, status):
    rented = client.post("/getNumberRent", {**GET_NUMBER, "country": "ukraine"}).json
    body = {**FINISH, "activationId": rented["activationId"], "status": status}
    assert client.post("/finishActivationRent", body).json == {"status": "SUCCESS"}
    assert client.post("/getNumberRent", {**GET_NUMBER, "country": "ukraine"}).json[
        "number"] == rented["number"]
    row = pooled.row("SELECT finish_status, final_sum_kopecks FROM operations WHERE id = ?",
                     (rented["activationId"],))
    assert row == {"finish_status": status, "final_sum_kopecks": 87000}


def test_exception_phone_set_as_strings_and_integers(client, pooled):
    body = {**GET_NUMBER, "country": "germany", "exceptionPhoneSet": ["4915", 49176]}
    assert client.post("/getNumberRent", body).json == {"status": "NO_NUMBERS"}
    body["exceptionPhoneSet"] = ["4915"]
    assert client.post("/getNumberRent", body).json["number"] == 4917612345678


@pytest.mark.parametrize("body", [
    {"action": "GET_SERVICES"},
    {"action": "GET_NUMBER", "service": "rent", "sum": 400},
    {"action": "FINISH_ACTIVATION", "service": "rent", "activationId": 1, "status": 3,
     "sum": 1},
])
def test_post_root_dispatches_on_action(client, pooled, body):
    client.post("/getNumberRent", GET_NUMBER)  # activation 1, to finish
    answer = client.post("/", {**body, "key": API_KEY})
    assert answer.status == 200
    assert answer.json["status"] == "SUCCESS"


@pytest.mark.parametrize("body, message", [
    # Without service 'rent', GET_NUMBER is an activation (tests/test_activations.py):
    ({"action": "GET_NUMBER", "sum": 400}, "service is required"),
    ({"action": "GET_NUMBER", "service": "v k!", "sum": 400},
     "service must be a short service name such as vk or wa (letters, digits, '_', '.',"
     " '-'; at most 32)"),
    ({"action": "FINISH_ACTIVATION", "service": "sms", "activationId": 1, "status": 7},
     "status must be one of 1, 3, 4, 5, not 7"),
    ({"action": "GET_BALANCE"}, "unknown action 'GET_BALANCE'"),
    ({}, "action is required"),
])
def test_post_root_refuses_other_actions(client, pooled, body, message):
    before = snapshot(pooled)
    answer = client.post("/", {**body, "key": API_KEY})
    assert answer.status == 400
    assert answer.json == {"status": "ERROR", "error": message}
    assert snapshot(pooled) == before


# ---- authentication ----------------------------------------------------------------

@pytest.mark.parametrize("body_key, header, status", [
    (API_KEY, None, 200),
    (None, f"Bearer {API_KEY}", 200),
    (None, f"bearer   {API_KEY}", 200),
    (API_KEY, f"Bearer {API_KEY}", 200),
    (API_KEY, "Bearer wrong", 401),
    ("wrong", f"Bearer {API_KEY}", 401),
    ("wrong", None, 401),
    (None, "Bearer wrong", 401),
    (None, f"Basic {API_KEY}", 401),
    (None, None, 401),
    (12345, None, 401),
    (API_KEY + " ", None, 401),
    # A header in another scheme, or none, is not a wrong key: it is not a key at all, and
    # the body's key decides (without one, nothing authenticates the request).
    (API_KEY, f"Basic {API_KEY}", 200),
    (API_KEY, "Basic dXNlcjpwYXNz", 200),
    (API_KEY, API_KEY, 200),  # a bare key
    (API_KEY, "", 200),
    ("wrong", "Basic dXNlcjpwYXNz", 401),
    (None, API_KEY, 401),
    (None, "", 401),
    # Only HTTP's spaces and tabs surround a key; "\xa0" and "\x85" are not spaces here.
    (None, f"Bearer {API_KEY}\t", 200),
    (None, f"Bearer {API_KEY}\xa0", 401),
    (API_KEY, f"Bearer \x85{API_KEY}", 401),
    (None, f"\xa0Bearer {API_KEY}", 401),
    (API_KEY + "\xa0", None, 401),
])
def test_authentication(client, pooled, body_key, header, status):
    body = dict(GET_NUMBER)
    del body["key"]
    if body_key is not None:
        body["key"] = body_key
    headers = {"Authorization": header} if header is not None else {}
    before = snapshot(pooled)
    answer = client.post("/getNumberRent", body, headers=headers)
    assert answer.status == status
    if status == 401:
        assert answer.json == {"status": "ERROR", "error": "BAD_KEY"}
        assert snapshot(pooled) == before
    else:
        assert answer.json["status"] == "SUCCESS"


SMS = {"to": "4915123456789", "from": "WhatsApp", "text": "code 123"}


@pytest.mark.parametrize("query, header, status", [
    ("", f"Bearer {GATEWAY_TOKEN}", 200),
    (f"?token={GATEWAY_TOKEN}", None, 200),
    # As for the key: a header in another scheme is not a wrong token.
    (f"?token={GATEWAY_TOKEN}", "Basic dXNlcjpwYXNz", 200),
    (f"?token={GATEWAY_TOKEN}", GATEWAY_TOKEN, 200),  # a bare token
    (f"?token={GATEWAY_TOKEN}", "", 200),
    ("?token=wrong", "Basic dXNlcjpwYXNz", 401),
    ("", "Basic dXNlcjpwYXNz", 401),
    ("", "", 401),
    # Only HTTP's spaces and tabs surround a token.
    ("", f"Bearer {GATEWAY_TOKEN}\t", 200),
    ("", f"Bearer {GATEWAY_TOKEN}\xa0", 401),
    ("", f"Bearer \x85{GATEWAY_TOKEN}", 401),
    ("", f"\xa0Bearer {GATEWAY_TOKEN}", 401),
    (f"?token={GATEWAY_TOKEN}", f"Bearer {GATEWAY_TOKEN}\xa0", 401),
    (f"?token=%C2%A0{GATEWAY_TOKEN}", None, 401),
])
def test_the_gateway_token(client, pooled, query, header, status):
    headers = {"Authorization": header} if header is not None else {}
    answer = client.post("/sms" + query, SMS, headers=headers)
    assert answer.status == status, answer.json
    if status == 401:
        assert answer.json == {"status": "ERROR", "error": "BAD_TOKEN"}


def test_credentials_over_a_real_socket_as_their_bytes_were_sent(start_server, pooled):
    """http.client sends header text as latin-1 bytes, and WSGI hands them over as latin-1
    text: a 0xA0 or 0x85 byte around a credential reaches the checks as "\\xa0", "\\x85"."""
    server = start_server(console_password="console-pw", metrics_token="metrics-token")

    def get(path: str, authorization: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": authorization})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def status(path: str, body: dict, authorization: str) -> int:
        return http_post(server.url + path, body,
                         headers={"Authorization": authorization}).status

    no_key = {k: v for k, v in GET_NUMBER.items() if k != "key"}
    assert status("/getNumberRent", GET_NUMBER, "Basic dXNlcjpwYXNz") == 200
    assert status("/getNumberRent", no_key, f"Bearer {API_KEY}\xa0") == 401
    assert status("/getNumberRent", GET_NUMBER, f"Bearer \x85{API_KEY}") == 401
    assert status("/getNumberRent", no_key, f"Bearer {API_KEY}") == 200
    assert status(f"/sms?token={GATEWAY_TOKEN}", SMS, "Basic dXNlcjpwYXNz") == 200
    assert status("/sms", SMS, f"Bearer {GATEWAY_TOKEN}\xa0") == 401
    assert status("/sms", SMS, f"Bearer {GATEWAY_TOKEN}") == 200
    console_pw = "Basic " + base64.b64encode(b"partner:console-pw").decode()
    assert get("/", console_pw) == 200
    assert get("/", console_pw + "\xa0") == 401
    assert get("/", "\x85" + console_pw) == 401
    assert get("/metrics", "Bearer metrics-token") == 200
    assert get("/metrics", "Bearer metrics-token\xa0") == 401
    assert get("/metrics", "Bearer \x85metrics-token") == 401


def test_health_needs_no_key_and_says_nothing_secret(client):
    answer = client.request("GET", "/health")
    assert answer.status == 200
    assert answer.json["status"] == "SUCCESS"
    assert API_KEY not in answer.body.decode()


# ---- bad input: 400/404/405/413/415, one JSON shape, nothing changed -----------------

BAD = [
    ("/getNumberRent", b"{not json", "body is not valid JSON"),
    ("/getNumberRent", b"[1, 2]", "body must be a JSON object"),
    ("/getNumberRent", b"\xff\xfe", "body is not UTF-8"),
    ("/getNumberRent", b"", "body is not valid JSON"),
    ("/getNumberRent", b'{"key": "\\ud800", "sum": 1}',
     "body has invalid Unicode (an unpaired surrogate)"),
    ("/getNumberRent", {**GET_NUMBER, "sum": None}, "sum is required"),
    ("/getNumberRent", {**GET_NUMBER, "sum": "400 RUB"},
     'sum must be a number or a decimal string such as "870.00"'),
    ("/getNumberRent", {**GET_NUMBER, "service": "activation"},
     "service must be 'rent': rentbox serves long-term rentals only, not 'activation'"),
    ("/getNumberRent", {**GET_NUMBER, "exceptionPhoneSet": {"a": 1}},
     "exceptionPhoneSet must be an array of number prefixes"),
    ("/getNumberRent", {k: v for k, v in GET_NUMBER.items() if k != "action"},
     "action is required"),
    ("/getServicesRent", {"key": API_KEY}, "action is required"),
    ("/finishActivationRent", {**FINISH, "activationId": 1, "action": None},
     "action is required"),
    ("/getNumberRent", {**GET_NUMBER, "action": "FINISH_ACTIVATION"},
     "action must be GET_NUMBER on this path, not 'FINISH_ACTIVATION'"),
    ("/finishActivationRent", {**FINISH, "activationId": "1"},
     "activationId must be an integer"),
    ("/finishActivationRent", {**FINISH, "activationId": 1, "status": 9},
     "status must be one of 1, 3, 4, 5, not 9"),
    ("/finishActivationRent", {"action": "FINISH_ACTIVATION", "key": API_KEY,
                               "activationId": 1, "status": 3, "sum": -1},
     "sum must not be negative"),
]


@pytest.mark.parametrize("path, body, message", BAD)
def test_bad_input_is_400_and_changes_nothing(client, pooled, path, body, message):
    client.post("/getNumberRent", GET_NUMBER)  # an open operation to (not) finish
    before = snapshot(pooled)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = client.post(path, raw=raw, headers={"Authorization": f"Bearer {API_KEY}"})
    assert answer.status == 400
    assert answer.json == {"status": "ERROR", "error": message}
    assert snapshot(pooled) == before


def test_unknown_path_and_wrong_method(client, pooled):
    before = snapshot(pooled)
    missing = client.post("/getNumbers", GET_NUMBER)
    assert missing.status == 404
    assert missing.json == {"status": "ERROR", "error": "no such path: /getNumbers"}
    wrong = client.request("GET", "/getNumberRent")
    assert wrong.status == 405
    assert wrong.json == {"status": "ERROR", "error":
                          "method GET is not allowed on /getNumberRent; allowed: POST"}
    assert wrong.headers["Content-Type"] == "application/json; charset=utf-8"
    assert snapshot(pooled) == before


def test_body_over_64_kib_is_413(client, pooled):
    before = snapshot(pooled)
    body = {**GET_NUMBER, "exceptionPhoneSet": ["4"] * 30000}
    answer = client.post("/getNumberRent", body)
    assert answer.status == 413
    assert answer.json == {"status": "ERROR", "error": "body is larger than 65536 bytes"}
    bomb = gzip.compress(json.dumps({**GET_NUMBER, "pad": "x" * 200_000}).encode())
    assert len(bomb) < 65536
    answer = client.post("/getNumberRent", raw=bomb, headers={"Content-Encoding": "gzip"})
    assert answer.status == 413
    assert snapshot(pooled) == before


def test_unsupported_or_broken_content_encoding(client, pooled):
    before = snapshot(pooled)
    answer = client.post("/getNumberRent", GET_NUMBER, headers={"Content-Encoding": "br"})
    assert answer.status == 415
    assert answer.json["error"] == "Content-Encoding 'br' is not supported; use gzip"
    answer = client.post("/getNumberRent", raw=b"not gzip",
                         headers={"Content-Encoding": "gzip"})
    assert (answer.status, answer.json["error"]) == (400, "body is not valid gzip")
    truncated = gzip.compress(json.dumps(GET_NUMBER).encode())[:-10]
    answer = client.post("/getNumberRent", raw=truncated, headers={"Content-Encoding": "gzip"})
    assert answer.status == 400
    assert snapshot(pooled) == before


def test_internal_error_is_json_and_logged_without_the_key(settings, clock, pooled, caplog):
    class BrokenConnections:
        def get(self):
            raise RuntimeError("disk on fire")

    client = WsgiClient(wsgi(settings, clock, BrokenConnections()))
    with caplog.at_level(logging.INFO):
        answer = client.post("/getNumberRent", GET_NUMBER)
    assert answer.status == 500
    assert answer.json == {"status": "ERROR", "error": "internal error; see the server log"}
    assert "disk on fire" in caplog.text
    assert API_KEY not in caplog.text
    assert client.request("GET", "/health").status == 503


# ---- gzip --------------------------------------------------------------------------

def test_gzip_request_and_answer(client, pooled):
    raw = gzip.compress(json.dumps(GET_NUMBER).encode())
    answer = client.post("/getNumberRent", raw=raw,
                         headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert answer.status == 200
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.headers["Vary"] == "Accept-Encoding"
    assert int(answer.headers["Content-Length"]) == len(answer.body)
    assert json.loads(gzip.decompress(answer.body))["status"] == "SUCCESS"


@pytest.mark.parametrize("accept, gzipped", [
    ("gzip", True), ("deflate, gzip;q=0.5", True), ("*", True), ("gzip;q=0", False),
    ("identity", False), ("", False)])
def test_gzip_answer_only_when_asked(client, accept, gzipped):
    answer = client.request("GET", "/nowhere", headers={"Accept-Encoding": accept})
    assert answer.status == 404
    assert (answer.headers.get("Content-Encoding") == "gzip") is gzipped
    assert answer.headers["Vary"] == "Accept-Encoding"
    assert answer.json["error"] == "no such path: /nowhere"


# ---- access log ---------------------------------------------------------------------

def test_access_log_has_method_path_status_duration_and_no_key(client, pooled, caplog):
    with caplog.at_level(logging.INFO, logger="rentbox.access"):
        client.post("/getNumberRent", GET_NUMBER, headers={"Authorization": f"Bearer {API_KEY}"})
        client.post("/getNumberRent", {**GET_NUMBER, "key": "not-" + API_KEY})
    lines = [r.getMessage() for r in caplog.records if r.name == "rentbox.access"]
    assert len(lines) == 2
    assert lines[0].startswith("POST /getNumberRent 200 ") and lines[0].endswith("ms")
    assert lines[1].startswith("POST /getNumberRent 401 ")
    assert API_KEY not in caplog.text


# ---- what the internet sends (issue 8, items 7, 8, 9, 12) ----------------------------

# WSGI hands header values over as latin-1 text: "\xe9" is the byte 0xE9, not UTF-8.
NOT_UTF8 = "Bearer \xe9"


@pytest.mark.parametrize("path, headers, status", [
    ("/getNumberRent", {"Authorization": NOT_UTF8}, 401),
    ("/getServicesRent", {"Authorization": NOT_UTF8}, 401),
    ("/finishActivationRent", {"Authorization": NOT_UTF8}, 401),
    ("/", {"Authorization": NOT_UTF8}, 401),
    ("/sms", {"Authorization": NOT_UTF8}, 401),
    ("/sms/smsgate", {"X-Signature": "\xe9", "X-Timestamp": "\xe9"}, 401),
])
def test_a_header_that_is_not_utf8_is_refused_not_a_500(client, pooled, caplog, path,
                                                        headers, status):
    before = snapshot(pooled)
    with caplog.at_level(logging.INFO):
        answer = client.post(path, {**GET_NUMBER, "key": API_KEY}, headers=headers)
    assert answer.status == status
    assert answer.json["status"] == "ERROR"
    assert "Traceback" not in caplog.text
    assert snapshot(pooled) == before
    assert client.request("GET", "/health", headers={"Authorization": NOT_UTF8}).status == 200


def test_deeply_nested_json_is_a_400_without_a_traceback(client, pooled, caplog):
    with caplog.at_level(logging.INFO):
        answer = client.post("/getNumberRent", raw=b"[" * 5000 + b"]" * 5000)
        unclosed = client.post("/sms", raw=b"[" * 50000,
                               headers={"Authorization": "Bearer gateway-token-91c2"})
    assert (answer.status, answer.json) == (400, {"status": "ERROR",
                                                  "error": "body is nested too deeply"})
    assert unclosed.status == 400
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("path", ["/getNumber\xffRent", "/\xff", "/getNumberRent\xc3"])
def test_a_path_that_is_not_utf8_is_404_not_routed(client, pooled, path):
    """What waitress makes of /getNumber%ffRent: the bytes, as latin-1 text."""
    before = snapshot(pooled)
    answer = client.post(path, GET_NUMBER)
    assert answer.status == 404
    assert answer.json == {"status": "ERROR", "error": "no such path: it is not valid UTF-8"}
    assert snapshot(pooled) == before


def test_a_database_that_cannot_be_written_answers_503(client, pooled, connections, caplog):
    connections.health.failed("the disk is full")
    health = client.request("GET", "/health")
    assert (health.status, health.json) == (503, {
        "status": "ERROR", "error": "database cannot be written: the disk is full"})
    # Nothing it could not issue is advertised.
    services = client.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
    assert services.json == {"countryList": [], "status": "SUCCESS"}
    connections.health.succeeded()


def test_a_write_that_fails_for_a_full_disk_is_503_and_retryable(settings, clock, pooled,
                                                                 caplog):
    from rentbox.errors import Unavailable

    class FullDisk:
        def get(self):
            class Db:
                def write_problem(self):
                    return None

                def __getattr__(self, name):
                    raise Unavailable("the database cannot be written now: the disk is full")
            return Db()

    client = WsgiClient(wsgi(settings, clock, FullDisk()))
    with caplog.at_level(logging.INFO):
        answer = client.post("/getNumberRent", GET_NUMBER)
    assert (answer.status, answer.json) == (503, {
        "status": "ERROR", "error": "the database cannot be written now: the disk is full"})
    assert "Traceback" not in caplog.text
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] \
        == [("WARNING", "/getNumberRent answered 503: the database cannot be written now: "
                        "the disk is full")]


def test_routes_are_grouped_by_caller(settings, clock, connections):
    """Onlinesim's calls, the gateways' and the partner's browser and monitoring each sit
    in their own module: the page and the metrics never sit next to Onlinesim's calls."""
    app, groups = bottle.Bottle(), {}
    for module in (onlinesim, intake, console, monitoring):
        before = len(app.routes)
        module.routes(app, Context(settings, clock, connections))
        groups[module.__name__.rsplit(".", 1)[1]] = {(r.method, r.rule)
                                                     for r in app.routes[before:]}
    assert groups["onlinesim"] == {("POST", "/"), ("POST", "/getServicesRent"),
                                   ("POST", "/getNumberRent"), ("POST", "/finishActivationRent"),
                                   ("POST", "/getServices"), ("POST", "/getNumber"),
                                   ("POST", "/finishActivation")}
    assert all(rule.startswith(("/sms", "/presence")) for _, rule in groups["intake"])
    assert ("GET", "/health") in groups["console"]
    assert ("GET", "/metrics") in groups["monitoring"]
    others = groups["onlinesim"] | groups["intake"]
    assert not (groups["console"] | groups["monitoring"]) & others
    assert all(method in ("GET", "HEAD") for method, _ in groups["console"] | groups["monitoring"])
