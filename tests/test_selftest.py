"""rentbox selftest: against a real `rentbox serve` behind a real TLS reverse proxy (Caddy)
with certificates from a CA generated here, and its failures with the right advice, given
once per cause; a check that does not run is shown as skipped, never as passed."""

from __future__ import annotations

import datetime as dt
import http.server
import json
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
                                     service="wa"))["reserve 1 numbers for wa activations"]
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
