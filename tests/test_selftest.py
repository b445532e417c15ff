"""rentbox selftest: against a real `rentbox serve` behind a real TLS reverse proxy (Caddy)
with certificates from a CA generated here, and its failures with the right advice."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import API_KEY, add_numbers, refused_url, wait_until
from rentbox import selftest
from rentbox.cli import app

CADDY = shutil.which("caddy") or ("/usr/bin/caddy" if Path("/usr/bin/caddy").exists() else None)
OPENSSL = shutil.which("openssl")
NOW = dt.datetime.now(dt.timezone.utc)


def needs(tool: str | None, name: str) -> None:
    if tool is None:
        if os.environ.get("RENTBOX_REQUIRE_PROXY") == "1":
            pytest.fail(f"{name} is required (RENTBOX_REQUIRE_PROXY=1) but not installed")
        pytest.skip(f"{name} is not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


CA_CONFIG = """[ca]
default_ca = test
[test]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[anything]
commonName = supplied
"""


def leaf(directory: Path, name: str, hosts: str, *, start: str | None = None,
         end: str | None = None) -> tuple[Path, Path]:
    """A certificate for `hosts` (a subjectAltName) signed by the test CA; `start`/`end`
    (YYYYMMDDHHMMSSZ) make one valid in the past."""
    key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={hosts}", cwd=directory)
    dates = ["-startdate", start, "-enddate", end] if start else ["-days", "30"]
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-in", csr, "-out", cert, "-notext", *dates, cwd=directory)
    return directory / cert, directory / key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict:
    needs(OPENSSL, "openssl")
    directory = tmp_path_factory.mktemp("ca")
    (directory / "ca.cnf").write_text(CA_CONFIG)
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1000\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "30", "-subj", "/CN=rentbox test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return {
        "ca": directory / "ca.pem",
        "good": leaf(directory, "localhost", "DNS:localhost,IP:127.0.0.1"),
        "other": leaf(directory, "other", "DNS:other.example"),
        "expired": leaf(directory, "expired", "DNS:localhost",
                        start="20200101000000Z", end="20200201000000Z"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def caddy(tmp_path):
    """start(backend_url, cert_pair) → the proxy's https URL (rentbox served under /rentbox;
    `strip_test_header` plays a server that ignores X-Rentbox-Test);
    every Caddy started is stopped at the end."""
    needs(CADDY, "caddy")
    started = []

    def start(backend: str, pair: tuple[Path, Path], *, strip_test_header: bool = False) -> str:
        port = free_port()
        home = tmp_path / f"caddy-{port}"
        home.mkdir()
        (home / "Caddyfile").write_text(f"""{{
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
""")
        env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home),
               "XDG_CONFIG_HOME": str(home)}
        process = subprocess.Popen([CADDY, "run", "--config", str(home / "Caddyfile"),
                                    "--adapter", "caddyfile"], env=env, cwd=home,
                                   stdout=subprocess.DEVNULL,
                                   stderr=(home / "caddy.log").open("wb"))
        started.append(process)

        def listening() -> bool:
            assert process.poll() is None, (home / "caddy.log").read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        assert wait_until(listening), "Caddy did not start"
        return f"https://localhost:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


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


def test_expired_certificate(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["expired"]) + "/rentbox"
    checks = selftest.run(url, API_KEY, now=NOW, context=trusted)
    assert len(checks) == 1 and not checks[0].passed
    assert "expired" in checks[0].detail and "renew" in checks[0].advice


def test_certificate_for_another_host(start_server, caddy, certificates, trusted):
    url = caddy(start_server().url, certificates["other"]) + "/rentbox"
    checks = selftest.run(url, API_KEY, now=NOW, context=trusted)
    assert len(checks) == 1 and not checks[0].passed
    assert "another host name" in checks[0].advice


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
    found = by_name(selftest.run(url, API_KEY, now=NOW, context=trusted))
    assert found["HTTPS certificate"].passed
    check = found["GET_SERVICES, key in the body"]
    assert not check.passed and "path prefix" in check.advice


def test_nothing_listening():
    checks = selftest.run(refused_url().replace("http:", "https:"), API_KEY, now=NOW)
    assert len(checks) == 1 and not checks[0].passed
    assert "firewall" in checks[0].advice


def test_plain_http_needs_allow_http(start_server):
    server = start_server()
    checks = selftest.run(server.url, API_KEY, now=NOW)
    assert not checks[0].passed and "HTTPS" in checks[0].detail
    allowed = selftest.run(server.url, API_KEY, now=NOW, allow_http=True)
    assert all(c.passed for c in allowed), allowed


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


def test_reserve_more_than_the_pool(start_server, db):
    add_numbers(db, NOW, ("79001110001", "russia", "mts"))
    server = start_server()
    check = by_name(selftest.run(server.url, API_KEY, now=NOW, allow_http=True,
                                 reserve=3))["reserve 3 numbers"]
    assert check.passed and "2 NO_NUMBERS" in check.detail


def test_health_404_is_not_rentbox():
    answer = selftest.Answer(404, {}, b"", 0.01)

    class NotRentbox:
        def request(self, *args, **kwargs):
            return answer

    passed, detail, _ = selftest.check_health(NotRentbox())
    assert passed and "not a rentbox server" in detail


runner = CliRunner()


def test_cli_json_and_exit_codes(start_server, monkeypatch):
    server = start_server()
    monkeypatch.setenv("RENTBOX_API_KEY", API_KEY)
    result = runner.invoke(app, ["selftest", server.url, "--allow-http", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True
    result = runner.invoke(app, ["selftest", server.url])
    assert result.exit_code == 1
    assert "✗ HTTPS certificate" in result.stdout and "→ Put a TLS reverse proxy" in result.stdout


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
