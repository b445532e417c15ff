"""A real waitress server on an ephemeral loopback port."""

import gzip
import http.client
import json
import threading

from conftest import API_KEY, START, add_numbers, http_post

GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400,
              "country": "germany", "operator": "any"}


def test_concurrent_identical_requests_never_share_a_number(live_server, db):
    pool_size, callers = 20, 60
    add_numbers(db, START, *[(f"+4915123{i:06d}", "germany", "telekom")
                             for i in range(pool_size)])
    barrier = threading.Barrier(callers)
    answers, failures = [], []

    def call():
        try:
            barrier.wait(timeout=10)
            answers.append(http_post(live_server.url + "/getNumberRent", GET_NUMBER))
        except Exception as error:  # pragma: no cover - reported below
            failures.append(repr(error))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    assert all(a.status == 200 for a in answers)
    bodies = [a.json for a in answers]
    issued = [b["number"] for b in bodies if b["status"] == "SUCCESS"]
    assert len(issued) == pool_size
    assert len(set(issued)) == pool_size
    assert len({b["activationId"] for b in bodies if b["status"] == "SUCCESS"}) == pool_size
    assert [b for b in bodies if b["status"] != "SUCCESS"] == \
        [{"status": "NO_NUMBERS"}] * (callers - pool_size)
    open_ops = db.execute("SELECT count(*) FROM operations WHERE state = 'open'").fetchone()[0]
    assert open_ops == pool_size


def test_gzip_both_ways_over_a_socket(live_server, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    answer = http_post(live_server.url + "/getNumberRent",
                       raw=gzip.compress(json.dumps(GET_NUMBER).encode()),
                       headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"})
    assert answer.status == 200
    assert answer.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(answer.body)) == {
        "number": 4915123456789, "activationId": 1, "status": "SUCCESS"}


def test_large_body_is_refused_with_json_413(live_server, db):
    answer = http_post(live_server.url + "/getNumberRent", raw=b" " * 70_000 + b"{}")
    assert answer.status == 413
    assert answer.json == {"status": "ERROR", "error": "body is larger than 65536 bytes"}
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_health_and_unknown_method_over_a_socket(live_server):
    host, port = live_server.url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["status"] == "SUCCESS"
        assert response.getheader("Server") == "rentbox"
        conn.request("DELETE", "/")
        response = conn.getresponse()
        assert response.status == 405
        assert json.loads(response.read())["status"] == "ERROR"
    finally:
        conn.close()
