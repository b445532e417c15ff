"""rentbox selftest: against a real `rentbox serve` behind a real TLS reverse proxy (Caddy)
with certificates from a CA generated here, and its failures with the right advice, given
once per cause; a check that does not run is shown as skipped, never as passed."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import re
import ssl
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import proxies
from conftest import API_KEY, add_numbers, refused_url
from rentbox import selftest
from rentbox.cli import app

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("ca")
    ca = proxies.make_ca(directory)
    return {
        "ca": ca,
        "good": proxies.leaf(directory, "localhost", "DNS:localhost,IP:127.0.0.1"),
        "other": proxies.leaf(directory, "other", "DNS:other.example"),
        "expired": proxies.leaf(directory, "expired", "DNS:localhost",
                                start="20200101000000Z", end="20200201000000Z"),
    }


@pytest.fixture
def caddy(tmp_path):
    """start(backend_url, cert_pair) → the proxy's https URL (rentbox served under /rentbox;
    `strip_test_header` plays a server that ignores X-Rentbox-Test);
    every Caddy started is stopped at the end. (The shipped examples/proxy/ files are
    tested in test_proxy_examples.py.)"""
    proxies.needs(proxies.CADDY, "caddy")
    started = []

    def start(backend: str, pair: tuple[Path, Path], *, strip_test_header: bool = False) -> str:
        port = proxies.free_port()
        home = tmp_path / f"caddy-{port}"
        home.mkdir()
        started.append(proxies.start_caddy(f"""{{
    admin off
    auto_https off
    storage file_system {home}
}}
https://localhost:{port} {{
    bind 127.0.0.1
    tls {pair[0]} {pair[1]}
    handle_path /rentbox/* {{
        {"request_header -X-Rentbox-Test" if strip_test_header else ""}
        reverse_proxy {backend.removeprefix("http://")}
    }}
    handle {{
        respond 404
    }}
}}
""", home, port))
        return f"https://localhost:{port}"

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def trusted(certificates):
    return ssl.create_default_context(cafile=str(certificates["ca"]))


def by_name(checks: list[selftest.Check]) -> dict[str, selftest.Check]:
    return {c.name: c for c in checks}


def test_passes_against_rentbox_behind_caddy(start_server, caddy, certificates, trusted):
    server = start_server()
    url = caddy(server.url, certificates["good"]) + "/rentbox"
    checks = selftest.run(url, API_KEY, now=NOW, context=trusted)
    assert [c.name for c in checks if not c.passed] == []
    found = by_name(checks)
    assert "days left" in found["HTTPS certificate"].detail
    assert found["GET /health"].detail.startswith("rentbox ")
    assert found["wrong key refused"].detail == "HTTP 401 BAD_KEY"
    assert found["gzip request and answer"].detail.startswith("gzip both ways")
    assert found["unknown activationId"].detail == "NO_OPERATION"
    assert "inside Onlinesim's limit" in found["answers within 10 s"].detail


def test_wrong_key_fails_with_key_advice(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["good"]) + "/rentbox"
    found = by_name(selftest.run(url, "not-the-key", now=NOW, context=trusted))
    assert not found["GET_SERVICES, key in the body"].passed
    assert "RENTBOX_API_KEY" in found["GET_SERVICES, key in the body"].advice
    assert found["GET /health"].passed  # the server itself is fine


def stopped_at_the_first(checks: list[selftest.Check]) -> selftest.Check:
    """The first check, failed; every other one listed as not run (skipped)."""
    assert [c.status for c in checks] == ["failed"] + ["skipped"] * 8, checks
    assert {c.detail for c in checks[1:]} == {selftest.NOT_RUN}
    assert checks[-1].name == "answers within 10 s"
    return checks[0]


def test_expired_certificate(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["expired"]) + "/rentbox"
    first = stopped_at_the_first(selftest.run(url, API_KEY, now=NOW, context=trusted))
    assert "expired" in first.detail and "renew" in first.advice


def test_certificate_for_another_host(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["other"]) + "/rentbox"
    first = stopped_at_the_first(selftest.run(url, API_KEY, now=NOW, context=trusted))
    assert "another host name" in first.advice


def test_untrusted_ca_names_ssl_cert_file(start_server, caddy, certificates):
    url = caddy(start_server().url, certificates["good"]) + "/rentbox"
    checks = selftest.run(url, API_KEY, now=NOW)  # the system CAs only
    assert not checks[0].passed and "SSL_CERT_FILE" in checks[0].advice


def test_near_expiry_is_a_failure(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["good"]) + "/rentbox"
    checks = selftest.run(url, API_KEY, now=NOW + dt.timedelta(days=20), context=trusted)
    assert not checks[0].passed and "renew" in checks[0].advice
    assert all(c.passed for c in checks[1:])


def test_wrong_path_prefix(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["good"])  # without /rentbox
    checks = selftest.run(url, API_KEY, now=NOW, context=trusted)
    found = by_name(checks)
    assert found["HTTPS certificate"].passed
    check = found["GET_SERVICES, key in the body"]
    assert check.failed and "path prefix" in check.advice
    # /health is one more path the prefix is missing from: the same cause, the same advice.
    assert found["GET /health"].failed and found["GET /health"].advice == check.advice
    assert [a for a in selftest.advice_once(checks) if a] == [selftest.ADVICE_PATH]


def test_nothing_listening():
    checks = selftest.run(refused_url().replace("http:", "https:"), API_KEY, now=NOW)
    assert "firewall" in stopped_at_the_first(checks).advice
    assert selftest.summary(checks) == "0 passed, 1 failed, 8 skipped"


def test_plain_http_needs_allow_http(start_server):
    server = start_server()
    checks = selftest.run(server.url, API_KEY, now=NOW)
    assert checks[0].failed and "HTTPS" in checks[0].detail
    allowed = selftest.run(server.url, API_KEY, now=NOW, allow_http=True)
    # Allowed, the HTTPS check does not run: skipped, not passed; the run still passes.
    assert [c.status for c in allowed] == ["skipped"] + ["passed"] * 8, allowed
    assert "--allow-http" in allowed[0].detail and not allowed[0].passed
    assert selftest.has_passed(allowed)


def test_reserve_finishes_every_rental(start_server, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"), ("79001110002", "russia", "mts"),
                ("79001110003", "russia", "mts"))
    server = start_server()
    found = by_name(selftest.run(server.url, API_KEY, now=NOW, allow_http=True, reserve=3))
    check = found["reserve 3 numbers"]
    assert check.passed, check
    assert "3 of 3 reserved, all distinct" in check.detail
    rows = db.rows("SELECT state, finish_status FROM operations")
    assert rows == [{"state": "closed", "finish_status": 1}] * 3


def test_reserve_activations_spends_nothing(start_server, db):
    from rentbox.config import Rules

    add_numbers(db, NOW, ("79001110001", "russia", "mts"), ("79001110002", "russia", "mts"))
    server = start_server(rules=Rules(services=("vk",)))
    found = by_name(selftest.run(server.url, API_KEY, now=NOW, allow_http=True, reserve=2,
                                 service="vk"))
    check = found["reserve 2 numbers for vk activations"]
    assert check.passed, check
    assert "2 of 2 reserved, all distinct; marked as tests" in check.detail
    assert db.rows("SELECT service, state, finish_status, test FROM operations") == [
        {"service": "vk", "state": "closed", "finish_status": 5, "test": 1}] * 2
    assert db.rows("SELECT * FROM service_uses") == []
    unoffered = by_name(selftest.run(server.url, API_KEY, now=NOW, allow_http=True, reserve=1,
                                     service="wa"))["reserve 1 number for wa activations"]
    assert unoffered.failed and "Offer wa (RENTBOX_SERVICES)" in unoffered.advice


def test_reserve_more_than_the_pool(start_server, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"))
    server = start_server()
    check = by_name(selftest.run(server.url, API_KEY, now=NOW, allow_http=True,
                                 reserve=3))["reserve 3 numbers"]
    assert check.passed and "2 NO_NUMBERS" in check.detail


def test_health_404_is_a_failure_the_proxy_does_not_forward_it():
    answer = selftest.Answer(404, {}, b'{"status":"ERROR","error":"not served here"}', 0.01)

    class ProxyWithoutHealth:
        def request(self, *args, **kwargs):
            return answer

    passed, detail, advice = selftest.check_health(ProxyWithoutHealth())
    assert not passed
    assert detail == ("HTTP 404: not served here (the proxy does not forward /health to "
                      "rentbox, or the server is not rentbox)")
    assert advice == selftest.ADVICE_PATH and "examples/proxy/" in advice


@pytest.mark.parametrize("body, shown", [
    (b"", "(empty body)"),
    (b"<html>\r\n<title>404 Not Found</title>\n</html>", "<html> <title>404 Not Found</title> </html>"),
    (b"\x1b[31mred\x1b[0m \xff\xfe bytes", "[31mred [0m \ufffd\ufffd bytes"),
    ("Ошибка: нет пути".encode(), "Ошибка: нет пути"),
    (b"x" * 150, "x" * 99 + "…"),
])
def test_a_body_is_shown_as_one_line_of_text_never_as_python_bytes(body, shown):
    assert selftest.excerpt(body) == shown
    described = selftest.Answer(502, {}, body, 0.01).described()
    assert described == f"HTTP 502: {shown}" and "b'" not in described


def test_a_json_error_is_shown_by_its_message():
    answer = selftest.Answer(400, {}, b'{"status":"ERROR","error":"action is required"}', 0)
    assert answer.described() == "HTTP 400: action is required"


runner = CliRunner()


def test_cli_json_and_exit_codes(start_server, monkeypatch):
    server = start_server()
    monkeypatch.setenv("RENTBOX_API_KEY", API_KEY)
    result = runner.invoke(app, ["selftest", server.url, "--allow-http", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert report["summary"] == {"passed": 8, "failed": 0, "skipped": 1}
    assert report["checks"][0]["status"] == "skipped" and report["checks"][0]["passed"] is False
    result = runner.invoke(app, ["selftest", server.url])
    assert result.exit_code == 1
    assert "✗ HTTPS certificate" in result.stdout and "→ Put a TLS reverse proxy" in result.stdout
    assert result.stdout.splitlines()[-1] == "8 passed, 1 failed, 0 skipped"


def test_cli_shows_a_skipped_check_as_skipped(start_server, monkeypatch):
    monkeypatch.setenv("RENTBOX_API_KEY", API_KEY)
    result = runner.invoke(app, ["selftest", start_server().url, "--allow-http"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == ("– HTTPS certificate (skipped): plain HTTP allowed by --allow-http "
                        "(Onlinesim itself needs HTTPS)")
    assert [line[0] for line in lines[1:-1]] == ["✓"] * 8
    assert lines[-1] == "8 passed, 0 failed, 1 skipped"


@pytest.fixture
def answering_404(monkeypatch):
    """A server that answers every request 404 with an HTML page holding bytes that are
    not UTF-8 and a terminal escape: what the old Caddy example answered (issue 24)."""
    body = b"<html><body>\x1b[2J404 page not found \xff</body></html>"

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("RENTBOX_API_KEY", API_KEY)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_proxy_that_forwards_nothing_is_one_cause_with_one_advice(answering_404):
    result = runner.invoke(app, ["selftest", answering_404, "--allow-http"])
    assert result.exit_code == 1
    out = result.stdout
    assert out.count("→ ") == 1 and out.count(f"→ {selftest.ADVICE_PATH[:40]}") == 1, out
    assert "✗ GET /health" in out  # no longer passed as "not a rentbox server"
    assert out.count("✗") == 7 and "b'" not in out and "\x1b" not in out
    assert "HTTP 404: <html><body> [2J404 page not found \ufffd</body></html>" in out
    assert out.splitlines()[-1] == "1 passed, 7 failed, 1 skipped"


def test_a_wrong_key_is_one_cause_with_one_advice(start_server, monkeypatch):
    monkeypatch.setenv("RENTBOX_API_KEY", "not-the-key")
    result = runner.invoke(app, ["selftest", start_server().url, "--allow-http"])
    assert result.exit_code == 1
    assert result.stdout.count("→ ") == 1
    assert result.stdout.count(f"→ {selftest.ADVICE_KEY}") == 1, result.stdout


def test_advice_once_keeps_the_first_of_each():
    checks = [selftest.Check(name, status, 0.0, "", advice) for name, status, advice in [
        ("a", "failed", "fix the path"), ("b", "failed", "fix the key"),
        ("c", "failed", "fix the path"), ("d", "passed", None), ("e", "failed", "fix the key")]]
    assert selftest.advice_once(checks) == ["fix the path", "fix the key", None, None, None]


def test_cli_without_key(monkeypatch):
    monkeypatch.delenv("RENTBOX_API_KEY", raising=False)
    result = runner.invoke(app, ["selftest", "https://localhost:1"])
    assert result.exit_code == 1 and "Error: RENTBOX_API_KEY is not set" in result.stderr


def books_and_bans(db) -> dict:
    from rentbox import bans, reports

    return {"income": reports.income_report(db, by="day"),
            "income_rows": reports.income_report(db, by="number", from_rows=True),
            "bans": bans.list_bans(db),
            "failures": db.rows("SELECT number, failures, banned_until FROM numbers"),
            "books": db.rows("SELECT * FROM books_daily ORDER BY day, country")}


def test_reserve_through_caddy_leaves_the_books_unchanged(start_server, caddy, certificates,
                                                          trusted, db, monkeypatch):
    add_numbers(db, NOW, *[(f"7900111{i:04d}", "russia", "mts") for i in range(5)])
    server = start_server()
    before = books_and_bans(db)
    url = caddy(server.url, certificates["good"]) + "/rentbox"
    found = by_name(selftest.run(url, API_KEY, now=NOW, context=trusted, reserve=5))
    check = found["reserve 5 numbers"]
    assert check.passed, check
    assert "5 of 5 reserved, all distinct" in check.detail
    assert "marked as tests" in check.detail
    assert books_and_bans(db) == before
    free = db.rows("SELECT count(*) AS n FROM numbers WHERE operation_id IS NULL")
    assert free == [{"n": 5}]
    assert db.rows("SELECT test, state FROM operations") == [{"test": 1, "state": "closed"}] * 5
    monkeypatch.setenv("COLUMNS", "200")
    listed = CliRunner().invoke(app, ["ops", "list", "--db", str(db.path)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.count(", test") == 5


def test_reserve_against_a_server_that_ignores_the_header(start_server, caddy, certificates,
                                                          trusted, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"), ("79001110002", "russia", "mts"))
    url = caddy(start_server().url, certificates["good"], strip_test_header=True) + "/rentbox"
    check = by_name(selftest.run(url, API_KEY, now=NOW, context=trusted,
                                 reserve=2))["reserve 2 numbers"]
    assert check.passed and "could not be marked as tests" in check.detail
    assert db.rows("SELECT test, finish_status FROM operations") == [
        {"test": 0, "finish_status": 1}] * 2


def test_cli_trusts_a_private_ca_through_ssl_cert_file(start_server, caddy, certificates,
                                                       monkeypatch):
    url = caddy(start_server().url, certificates["good"]) + "/rentbox"
    monkeypatch.setenv("RENTBOX_API_KEY", API_KEY)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates["ca"]))
    result = runner.invoke(app, ["selftest", url])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("✓") == 9 and "✗" not in result.stdout
    assert result.stdout.splitlines()[-1] == "9 passed, 0 failed, 0 skipped"


# ---- An SMSHub-protocol buyer (--buyer) -------------------------------------------------

HUB_KEY = "hub-key-3c81"
GRIZZLY_KEY = "grizzly-key-b7e2"


def buyer_rules(*names_and_keys: tuple[str, str], services=("vk",)):
    from rentbox.config import Buyer, Rules

    return Rules(services=services, buyers=tuple(Buyer(name, "smshub", key=key)
                                                 for name, key in names_and_keys))


def names_and_statuses(checks: list[selftest.Check]) -> list[tuple[str, str]]:
    return [(c.name, c.status) for c in checks]


def test_plays_smshub_against_a_real_server(start_server, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"), ("79001110002", "russia", "mts"),
                ("79001110003", "russia", "mts"), ("77001110004", "kazakhstan", "beeline"))
    server = start_server(rules=buyer_rules(("smshub", HUB_KEY)))
    before = books_and_bans(db)
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    checks = selftest.run(server.url, key, now=NOW, allow_http=True, reserve=2, caller=caller)
    assert names_and_statuses(checks) == [
        ("HTTPS certificate", "skipped"), ("GET /health", "passed"),
        ("GET_SERVICES at /smshub", "passed"), ("wrong key refused", "passed"),
        ("gzip request and answer", "passed"), ("reserve 2 numbers", "passed"),
        ("exceptionPhoneSet respected", "passed"), ("GET_NUMBER within 3 s", "passed")], checks
    found = by_name(checks)
    assert found["GET_SERVICES at /smshub"].detail == (
        "2 countries, 2 operators; numbers per service: vk 4")
    assert found["wrong key refused"].detail == "HTTP 401 BAD_KEY"
    assert found["reserve 2 numbers"].detail == (
        "2 of 2 reserved for vk in russia/mts, all distinct; marked as tests (nothing spent, "
        "nothing booked); each FINISHed twice with status 5, SUCCESS")
    assert found["exceptionPhoneSet respected"].detail.startswith(
        "another number issued, 2 issued numbers excluded as string prefixes")
    timing = found["GET_NUMBER within 3 s"]
    assert timing.detail.startswith("slowest of 3 GET_NUMBER ") and "inside the protocol's 3 s" \
        in timing.detail and timing.duration_s > 0
    # Three test activations, each closed as returned, none spent, nothing booked; the third
    # is the Russian number the first two did not get (they were excluded by prefix).
    rows = db.rows("SELECT o.buyer, o.service, o.state, o.finish_status, o.test, n.number"
                   " FROM operations o JOIN numbers n ON n.id = o.number_id ORDER BY o.id")
    assert [{k: r[k] for k in ("buyer", "service", "state", "finish_status", "test")}
            for r in rows] == [{"buyer": "smshub", "service": "vk", "state": "closed",
                                "finish_status": 5, "test": 1}] * 3
    assert sorted(r["number"] for r in rows) == ["79001110001", "79001110002", "79001110003"]
    assert db.rows("SELECT * FROM service_uses") == []
    assert books_and_bans(db) == before
    assert db.rows("SELECT count(*) AS n FROM numbers WHERE operation_id IS NULL") == [{"n": 4}]


def test_smshub_through_caddy_checks_the_certificate(start_server, caddy, certificates,
                                                     trusted, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"))
    url = caddy(start_server(rules=buyer_rules(("smshub", HUB_KEY))).url,
                certificates["good"]) + "/rentbox"
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    checks = selftest.run(url, key, now=NOW, context=trusted, reserve=1, caller=caller)
    assert [c.status for c in checks] == ["passed"] * 8, checks
    assert "days left" in checks[0].detail
    # Only one number: the GET_NUMBER that excludes it finds none, which is right.
    assert by_name(checks)["exceptionPhoneSet respected"].detail == (
        "NO_NUMBERS, 1 issued number excluded as string prefixes (no other number free)")


def test_smshub_without_reserve_does_not_claim_the_timing(start_server):
    server = start_server(rules=buyer_rules(("smshub", HUB_KEY)))
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    checks = selftest.run(server.url, key, now=NOW, allow_http=True, caller=caller)
    assert [c.name for c in checks][-1] == "GET_NUMBER within 3 s"
    assert checks[-1].status == "skipped" and "--reserve N" in checks[-1].detail
    assert by_name(checks)["GET_SERVICES at /smshub"].detail == "0 countries, 0 operators; " \
        "no service offered"
    assert selftest.summary(checks) == "4 passed, 0 failed, 2 skipped"


def test_smshub_plain_http_is_refused_for_the_buyers_key(start_server):
    server = start_server(rules=buyer_rules(("smshub", HUB_KEY)))
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    first = selftest.run(server.url, key, now=NOW, caller=caller)[0]
    assert first.failed and first.detail == (
        "the URL is http://: SMSHub's key and its clients' SMS would cross the network in "
        "clear")


def test_smshub_nothing_listening_lists_every_check_as_not_run():
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    checks = selftest.run(refused_url().replace("http:", "https:"), key, now=NOW, reserve=2,
                          caller=caller)
    assert [c.status for c in checks] == ["failed"] + ["skipped"] * 7
    assert {c.detail for c in checks[1:]} == {selftest.NOT_RUN}
    assert checks[-1].name == "GET_NUMBER within 3 s"


def test_smshub_a_service_not_offered(start_server, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"))
    server = start_server(rules=buyer_rules(("smshub", HUB_KEY)))
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    found = by_name(selftest.run(server.url, key, now=NOW, allow_http=True, reserve=1,
                                 service="wa", caller=caller))
    check = found["reserve 1 number for wa"]
    assert check.failed and check.detail == "wa is not offered at /smshub"
    assert "Offer wa to SMSHub (RENTBOX_SERVICES" in check.advice
    assert found["exceptionPhoneSet respected"].status == "skipped"
    assert db.rows("SELECT * FROM operations") == []


def write_buyers_file(tmp_path, **keys: str):
    path = tmp_path / "buyers.toml"
    path.write_text("".join(f'[buyers.{name}]\nprotocol = "smshub"\nkey = "{key}"\n\n'
                            for name, key in keys.items()))
    return path


def test_cli_plays_a_buyer_of_the_buyers_file(start_server, db, tmp_path, monkeypatch):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"), ("79001110002", "russia", "mts"))
    server = start_server(rules=buyer_rules(("smshub", HUB_KEY), ("grizzly", GRIZZLY_KEY)))
    monkeypatch.delenv("RENTBOX_API_KEY", raising=False)
    monkeypatch.delenv("RENTBOX_BUYER_KEY", raising=False)
    monkeypatch.delenv("RENTBOX_SMSHUB_KEY", raising=False)  # not needed for another buyer
    buyers_file = write_buyers_file(tmp_path, grizzly=GRIZZLY_KEY)
    # SMSHub's terms in the file: without RENTBOX_SMSHUB_KEY, serve would refuse it, but
    # the self-test of another buyer reads that buyer's entry all the same.
    buyers_file.write_text(buyers_file.read_text() + '[buyers.smshub]\nservices = ["vk"]\n')
    monkeypatch.setenv("RENTBOX_BUYERS", str(buyers_file))
    result = runner.invoke(app, ["selftest", server.url, "--allow-http", "--buyer", "grizzly",
                                 "--reserve", "1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" (")[0].split(":")[0] for line in lines[:-1]] == [
        "– HTTPS certificate", "✓ GET /health", "✓ GET_SERVICES at /buyer/grizzly",
        "✓ wrong key refused", "✓ gzip request and answer", "✓ reserve 1 number",
        "✓ exceptionPhoneSet respected", "✓ GET_NUMBER within 3 s"]
    assert lines[-1] == "7 passed, 0 failed, 1 skipped"
    assert GRIZZLY_KEY not in result.output
    assert db.rows("SELECT buyer, test, finish_status FROM operations") == [
        {"buyer": "grizzly", "test": 1, "finish_status": 5}] * 2


def test_cli_a_buyers_key_from_the_environment_wins(start_server, tmp_path, monkeypatch):
    server = start_server(rules=buyer_rules(("grizzly", GRIZZLY_KEY)))
    monkeypatch.setenv("RENTBOX_BUYERS", str(write_buyers_file(tmp_path, grizzly="stale")))
    monkeypatch.setenv("RENTBOX_BUYER_KEY", GRIZZLY_KEY)
    result = runner.invoke(app, ["selftest", server.url, "--allow-http", "--buyer", "grizzly",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"] == {"passed": 4, "failed": 0, "skipped": 2}
    monkeypatch.delenv("RENTBOX_BUYER_KEY")
    result = runner.invoke(app, ["selftest", server.url, "--allow-http", "--buyer", "grizzly"])
    assert result.exit_code == 1  # the file's stale key is refused, and the advice says so
    advice = [line for line in result.stdout.splitlines() if line.startswith("  → ")]
    assert advice == ["  → The server refused the key: use the key grizzly gave you, the one "
                      "the server has (its key in the buyers file, [buyers.grizzly] of "
                      "RENTBOX_BUYERS)."]
    assert "stale" not in result.output


def test_cli_a_wrong_smshub_key_is_one_cause_with_one_advice(start_server, monkeypatch):
    server = start_server(rules=buyer_rules(("smshub", HUB_KEY)))
    monkeypatch.setenv("RENTBOX_SMSHUB_KEY", "not-the-hub-key")
    result = runner.invoke(app, ["selftest", server.url, "--allow-http", "--buyer", "smshub",
                                 "--reserve", "1"])
    assert result.exit_code == 1
    assert re.search(r"^✗ GET_SERVICES at /smshub \(\d+ ms\): HTTP 401: BAD_KEY \(the key "
                     r"was refused\)$", result.stdout, re.M), result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("  → ")] == [
        "  → The server refused the key: use the key SMSHub gave you, the one the server has "
        "(RENTBOX_SMSHUB_KEY)."]
    assert "not-the-hub-key" not in result.output


@pytest.mark.parametrize("args, env, file_keys, error", [
    (["--buyer", "smshub"], {}, None,
     "Error: RENTBOX_SMSHUB_KEY is not set: the self-test needs the key SMSHub gave you "
     "(export RENTBOX_SMSHUB_KEY=...)"),
    (["--buyer", "grizzly"], {}, None,
     "Error: the self-test needs the key of buyer grizzly: export RENTBOX_BUYER_KEY=... (the "
     "key grizzly gave you), or set RENTBOX_BUYERS to the buyers file that holds it"),
    (["--buyer", "bower"], {}, {"grizzly": "g"}, "has no buyer 'bower' (it has: grizzly)"),
    (["--buyer", "../etc"], {"RENTBOX_BUYER_KEY": "k"}, None,
     "Error: --buyer '../etc': a buyer's name is lower-case letters, digits"),
    (["--buyer", "smshub", "--service", "rent"], {"RENTBOX_SMSHUB_KEY": "k"}, None,
     "Error: --service rent: rent is Onlinesim's alone; with --buyer, name an activation "
     "service (vk, wa, ...) or leave it out"),
])
def test_cli_buyer_errors(args, env, file_keys, error, tmp_path, monkeypatch):
    for name in ("RENTBOX_API_KEY", "RENTBOX_SMSHUB_KEY", "RENTBOX_BUYER_KEY", "RENTBOX_BUYERS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if file_keys:
        monkeypatch.setenv("RENTBOX_BUYERS", str(write_buyers_file(tmp_path, **file_keys)))
    result = runner.invoke(app, ["selftest", "https://localhost:1", *args])
    assert result.exit_code == 1 and result.stdout == ""
    assert error in result.stderr


def test_play_buyer_paths_and_keys(tmp_path):
    caller, key = selftest.play_buyer("smshub", smshub_key="h", buyer_key="ignored")
    assert (caller.name, caller.path, key) == ("SMSHub", "/smshub", "h")
    assert "POST /smshub" in caller.path_advice
    path = write_buyers_file(tmp_path, grizzly="from-file")
    caller, key = selftest.play_buyer("grizzly", buyers_file=path)
    assert (caller.name, caller.path, key) == ("grizzly", "/buyer/grizzly", "from-file")
    assert "POST /buyer/grizzly" in caller.path_advice
    caller, key = selftest.play_buyer("grizzly", buyer_key="env", buyers_file=path)
    assert key == "env" and caller.key_advice.endswith(
        "[buyers.grizzly] of RENTBOX_BUYERS; this test took RENTBOX_BUYER_KEY).")


# In process: a stand-in for a server on an SMSHub-protocol path, with the answers a test
# gives it, recording every call (no network, no clock: the times are the answers' own).

GOOD_SERVICES = {"countryList": [
    {"country": "russia", "operatorMap": {"mts": {"vk": 3, "wa": 1}, "beeline": {"vk": 0}}},
    {"country": "kazakhstan", "operatorMap": {"any": {"wa": 5}}}], "status": "SUCCESS"}


class StandIn:
    """GET_SERVICES answers `services`; each GET_NUMBER answers the next of `numbers` (a
    body, or a (body, seconds, marked) triple); FINISH answers SUCCESS."""

    who, timeout_s = "SMSHub", 5.0

    def __init__(self, numbers, services=GOOD_SERVICES):
        self.services, self.numbers, self.calls = services, list(numbers), []
        self.lock = threading.Lock()

    def request(self, method, path, body=None, *, headers=None, gzip_body=False):
        with self.lock:
            self.calls.append((path, body, dict(headers or {})))
            if body["action"] == "GET_SERVICES":
                return selftest.Answer(200, {}, json.dumps(self.services).encode(), 0.01)
            if body["action"] == "FINISH_ACTIVATION":
                return selftest.Answer(200, {}, b'{"status":"SUCCESS"}', 0.01)
            answer = self.numbers.pop(0)
        answer, seconds, marked = answer if isinstance(answer, tuple) else (answer, 0.01, True)
        return selftest.Answer(200, {"x-rentbox-test": "1"} if marked else {},
                               json.dumps(answer).encode(), seconds)

    def bodies(self, action):
        return [(body, headers) for _, body, headers in self.calls if body["action"] == action]


def played(stand_in, reserve=2, service=None) -> dict[str, selftest.Check]:
    caller, key = selftest.play_buyer("smshub", smshub_key=HUB_KEY)
    play = selftest.SmshubPlay(stand_in, key, caller)
    steps, last = play.steps(NOW, True, reserve, service)
    wanted = [step for step in steps if step[0] in (
        "GET_SERVICES at /smshub", f"reserve {reserve} number{'' if reserve == 1 else 's'}" + (
            f" for {service}" if service else ""), "exceptionPhoneSet respected")]
    return by_name(selftest.run_steps(wanted, last))


def issued(number, activation_id) -> dict:
    return {"number": number, "activationId": activation_id, "status": "SUCCESS"}


def test_get_number_speaks_the_protocol():
    stand_in = StandIn([issued(77001110001, 11), issued(77001110002, 12),
                        {"status": "NO_NUMBERS"}])
    found = played(stand_in)
    assert [c.status for c in found.values()] == ["passed"] * 4, found
    # The most numbers offered: wa in kazakhstan, operator `any` (5).
    asked = stand_in.bodies("GET_NUMBER")
    assert [body for body, _ in asked[:2]] == [
        {"action": "GET_NUMBER", "country": "kazakhstan", "operator": "any", "service": "wa",
         "sum": 0, "currency": 643, "key": HUB_KEY}] * 2
    assert all(headers == {"X-Rentbox-Test": "1"} for _, headers in asked)
    assert sorted(asked[2][0]["exceptionPhoneSet"]) == ["77001110001", "77001110002"]
    finished = [body for body, _ in stand_in.bodies("FINISH_ACTIVATION")]
    assert sorted(finished, key=lambda b: b["activationId"]) == [
        {"action": "FINISH_ACTIVATION", "key": HUB_KEY, "status": 5, "activationId": i}
        for i in (11, 11, 12, 12)]
    assert found["exceptionPhoneSet respected"].detail == (
        "NO_NUMBERS, 2 issued numbers excluded as string prefixes (no other number free)")


def test_a_service_asked_for_is_taken_where_it_has_the_most_numbers():
    stand_in = StandIn([issued(79001110001, 1), {"status": "NO_NUMBERS"}])
    found = played(stand_in, reserve=1, service="vk")
    assert found["reserve 1 number for vk"].passed
    body = stand_in.bodies("GET_NUMBER")[0][0]
    assert (body["country"], body["operator"], body["service"]) == ("russia", "mts", "vk")


@pytest.mark.parametrize("seconds, status, said", [
    (3.2, "failed", "slowest of 3 GET_NUMBER 3.200 s, 0.200 s over the protocol's 3 s"),
    (2.9, "passed", "slowest of 3 GET_NUMBER 2.900 s, 0.100 s inside the protocol's 3 s"),
])
def test_get_number_is_timed_against_the_protocols_3_s(seconds, status, said):
    stand_in = StandIn([issued(77001110001, 11), (issued(77001110002, 12), seconds, True),
                        {"status": "NO_NUMBERS"}])
    check = played(stand_in)["GET_NUMBER within 3 s"]
    assert (check.status, check.detail, check.duration_s) == (status, said, seconds)
    assert (check.advice is None) == (status == "passed")
    if check.advice:
        assert "test 5" in check.advice


def test_a_number_sent_as_a_string_fails_and_is_finished_all_the_same():
    stand_in = StandIn([issued("77001110001", "11"), {"status": "NO_NUMBERS"}])
    check = played(stand_in, reserve=1)["reserve 1 number"]
    assert check.failed
    assert ("number 77001110001 is not a whole number (a string: the protocol's test 3 fails "
            "it; a JSON integer is due)") in check.detail
    assert "activationId 11 is not a whole number" in check.detail
    assert [b["activationId"] for b, _ in stand_in.bodies("FINISH_ACTIVATION")] == [11, 11]


def test_an_excluded_number_issued_fails_the_protocols_test_7():
    stand_in = StandIn([issued(77001110001, 11), issued(77001110001, 12)])
    check = played(stand_in, reserve=1)["exceptionPhoneSet respected"]
    assert check.failed
    assert check.detail == "77001110001 issued although exceptionPhoneSet excluded it"
    assert "test 7" in check.advice
    assert [b["activationId"] for b, _ in stand_in.bodies("FINISH_ACTIVATION")] == [
        11, 11, 12, 12]


def test_no_numbers_below_the_count_offered_is_over_reporting():
    stand_in = StandIn([{"status": "NO_NUMBERS"}] * 2)
    check = played(stand_in)["reserve 2 numbers"]
    assert check.failed and "2 NO_NUMBERS (5 offered)" in check.detail
    assert "GET_SERVICES offered 5 but 0 were issued: the protocol blocks a partner for 30 " \
        "min" in check.detail


def test_a_server_that_does_not_mark_tests_is_said_so():
    stand_in = StandIn([(issued(77001110001, 11), 0.01, False), {"status": "NO_NUMBERS"}])
    check = played(stand_in, reserve=1)["reserve 1 number"]
    assert check.passed and "not marked as tests (the server ignores X-Rentbox-Test)" in \
        check.detail


GOOD_MAP = {"country": "russia", "operatorMap": {"mts": {"vk": 3}}}


@pytest.mark.parametrize("body, problems", [
    (GOOD_SERVICES, []),
    ({"countryList": [], "status": "SUCCESS"}, []),
    ({"countryList": [{"country": "russia", "operatorMap": {"any": {"vk": 2}, "mts": {"vk": 1},
                                                            "tele2": {}}}], "status": "SUCCESS"},
     ["russia: `any` beside real operators (mts, tele2)"]),
    ({"countryList": [{"country": "russia", "operatorMap": {"mts": {
        "vk": "10", "wa": 1.0, "tg": True, "ok": -1, "go": 2**31}}}], "status": "SUCCESS"},
     [f"russia/mts/{s}: {v} is not a whole number (a JSON integer, not a string)"
      for s, v in [("vk", "10"), ("wa", "1.0"), ("tg", "true"), ("ok", "-1"),
                   ("go", "2147483648")]]),
    ({"countryList": [GOOD_MAP]}, ["status is null, not SUCCESS"]),
    ({"countryList": {"russia": {}}, "status": "SUCCESS"}, ["countryList is not an array"]),
    ({"countryList": [{"operatorMap": {}}, {"country": "russia", "operatorMap": []},
                      {"country": "ukraine", "operatorMap": {"life": 3}}], "status": "SUCCESS"},
     ['a countryList item has no country name: {"operatorMap": {}}',
      "russia: operatorMap is not an object", "ukraine/life: not an object of counts"]),
])
def test_smshub_services_shape(body, problems):
    assert selftest.smshub_services_problems(body) == problems


def test_a_bad_services_answer_fails_with_the_shape_advice_and_no_number_is_asked():
    stand_in = StandIn([], services={"countryList": [
        {"country": "russia", "operatorMap": {"any": {"vk": 1}, "mts": {"vk": "1"}}}],
        "status": "SUCCESS"})
    found = played(stand_in, reserve=1)
    check = found["GET_SERVICES at /smshub"]
    assert check.failed and check.detail == (
        "russia: `any` beside real operators (mts); russia/mts/vk: 1 is not a whole number (a "
        "JSON integer, not a string)")
    assert check.advice == selftest.SMSHUB_SERVICES_ADVICE
    assert found["reserve 1 number"].status == "skipped"
    assert stand_in.bodies("GET_NUMBER") == []
