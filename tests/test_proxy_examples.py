"""The reverse-proxy examples exactly as shipped (examples/proxy/Caddyfile and nginx.conf),
each run by the real program in front of a real `rentbox serve`: `rentbox selftest` passes
through them, an SMS from every HTTP intake reaches the database, and what they keep from
the internet (the status page, /metrics) stays out.

Only what ties a file to a machine is swapped: the site's address and ports for loopback
ones, the certificate for one from a CA made here, rentbox's address, and where the proxy
writes (Caddy: no admin endpoint; nginx: its pid, logs and temporary files under the test's
folder, run unprivileged with -p and -c). `swap` fails if any of these is not found exactly
as expected, so a test never runs a file other than the one shipped.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import http.client
import http.server
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import proxies
from conftest import API_KEY, EXAMPLES, GATEWAY_TOKEN, SMSGATE_KEY, wait_until

SHIPPED = EXAMPLES / "proxy"
CONSOLE_PASSWORD = "console-password-3e81"
METRICS_TOKEN = "metrics-token-a41f"
NOT_SERVED = {"status": "ERROR", "error": "not served here"}
# The paths buyers call (some are not served by rentbox yet: the proxies forward them
# already, so that the files need no change when they are).
BUYER_PATHS = ["/getServicesRent", "/getNumberRent", "/finishActivationRent", "/getServices",
               "/getNumber", "/finishActivation", "/smshub", "/buyer/onlinesim"]


def swap(text: str, old: str, new: str, count: int | None = 1, *,
         whole_line: bool = False) -> str:
    """`text` with `old` replaced by `new` outside comments, exactly `count` times (None: at
    least once); `whole_line`: `old` is a whole line, indentation aside."""
    lines, found = text.split("\n"), 0
    for index, line in enumerate(lines):
        if line.lstrip().startswith("#"):
            continue
        if whole_line and line.strip() == old:
            lines[index] = line[:len(line) - len(line.lstrip())] + new
            found += 1
        elif not whole_line and old in line:
            found += line.count(old)
            lines[index] = line.replace(old, new)
    assert found == count if count is not None else found >= 1, (
        f"{old!r} is in the shipped file {found} times, not {count}: update the test's swaps")
    return "\n".join(lines)


# ---- rentbox, as `rentbox serve` ----------------------------------------------------------


@dataclasses.dataclass
class Rentbox:
    url: str
    address: str  # host:port, as a proxy forwards to it
    db: Path
    env: dict

    def rows(self, sql: str, *args) -> list[tuple]:
        connection = sqlite3.connect(self.db)
        try:
            return connection.execute(sql, args).fetchall()
        finally:
            connection.close()


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rentbox", *args]


@pytest.fixture(scope="module")
def rentbox(tmp_path_factory):
    """`rentbox serve` on a loopback port, with every secret set (so that the status page
    and /metrics would answer, were they forwarded) and examples/pool.csv imported."""
    home = tmp_path_factory.mktemp("rentbox")
    port = proxies.free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("RENTBOX_")}
    env.update(RENTBOX_DB=str(home / "rentbox.db"), RENTBOX_HOST="127.0.0.1",
               RENTBOX_PORT=str(port), RENTBOX_API_KEY=API_KEY,
               RENTBOX_GATEWAY_TOKEN=GATEWAY_TOKEN, RENTBOX_SMSGATE_KEY=SMSGATE_KEY,
               RENTBOX_CONSOLE_PASSWORD=CONSOLE_PASSWORD, RENTBOX_METRICS_TOKEN=METRICS_TOKEN)
    imported = subprocess.run(command("numbers", "import", str(EXAMPLES / "pool.csv")),
                              env=env, capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    log = home / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command("serve"), env=env, stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT)
    server = Rentbox(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", home / "rentbox.db",
                     env)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            return call(server.url, "GET", "/health").status == 200
        except OSError:
            return False

    try:
        assert wait_until(healthy), log.read_text(errors="replace")
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


# ---- HTTP --------------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(base: str, method: str, path: str, body: object = None, *,
         headers: dict | None = None, context: ssl.SSLContext | None = None) -> Reply:
    """One request to `base` (http:// or https://), with a timeout."""
    scheme, _, host_port = base.partition("://")
    host, _, port = host_port.partition(":")
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    try:
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        conn.close()


# ---- the proxies -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("ca")
    ca = proxies.make_ca(directory)
    cert, key = proxies.leaf(directory, "localhost", "DNS:localhost,IP:127.0.0.1")
    return {"ca": ca, "cert": cert, "key": key,
            "context": ssl.create_default_context(cafile=str(ca))}


@dataclasses.dataclass
class Front:
    """A proxy as shipped, running: its HTTPS URL and its plain-HTTP one."""
    name: str
    url: str
    http_url: str
    home: Path
    context: ssl.SSLContext

    def call(self, method: str, path: str, body: object = None, **kwargs) -> Reply:
        return call(self.url, method, path, body, context=self.context, **kwargs)


def local_caddyfile(shipped: str, home: Path, port: int, http_port: int, upstream: str,
                    certificates: dict) -> str:
    text = swap(shipped, "{", f"{{\n\tadmin off\n\tstorage file_system {home}\n"
                f"\thttp_port {http_port}", whole_line=True)
    text = swap(text, "rent.example.com {", f"https://localhost:{port} {{\n\tbind 127.0.0.1\n"
                f"\ttls {certificates['cert']} {certificates['key']}", whole_line=True)
    return swap(text, "127.0.0.1:8080", upstream)


def local_nginx_site(shipped: str, home: Path, port: int, http_port: int, upstream: str,
                     certificates: dict) -> str:
    text = swap(shipped, "listen 80;", f"listen 127.0.0.1:{http_port};", whole_line=True)
    text = swap(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{port} ssl http2;",
                whole_line=True)
    for ipv6 in ("listen [::]:80;", "listen [::]:443 ssl http2;"):
        text = swap(text, ipv6, "", whole_line=True)
    text = swap(text, "/etc/letsencrypt/live/rent.example.com/fullchain.pem",
                str(certificates["cert"]))
    text = swap(text, "/etc/letsencrypt/live/rent.example.com/privkey.pem",
                str(certificates["key"]))
    text = swap(text, "/var/log/nginx/access.log", str(home / "access.log"), count=2)
    return swap(text, "http://127.0.0.1:8080", f"http://{upstream}", count=None)


PROXIES = {
    "caddy": (SHIPPED / "Caddyfile", local_caddyfile, proxies.start_caddy),
    "nginx": (SHIPPED / "nginx.conf", local_nginx_site, proxies.start_nginx),
}


def start_front(name: str, home: Path, upstream: str, certificates: dict,
                own_address: str | None = None) -> tuple[Front, proxies.Proxy]:
    """The shipped file of proxy `name`, swapped to loopback, in front of `upstream`;
    `own_address` replaces the placeholder of "your own addresses"."""
    shipped, localise, start = PROXIES[name]
    port, http_port = proxies.free_port(), proxies.free_port()
    config = localise(shipped.read_text(), home, port, http_port, upstream, certificates)
    if own_address is not None:
        config = swap(config, "203.0.113.20", own_address, count=None)
    process = start(config, home, port)
    return Front(name, f"https://localhost:{port}", f"http://127.0.0.1:{http_port}", home,
                 certificates["context"]), process


@pytest.fixture(scope="module", params=list(PROXIES))
def front(request, rentbox, certificates, tmp_path_factory):
    proxies.needs({"caddy": proxies.CADDY, "nginx": proxies.NGINX}[request.param],
                  request.param)
    home = tmp_path_factory.mktemp(request.param)
    running, process = start_front(request.param, home, rentbox.address, certificates)
    yield running
    process.stop()


# ---- through the proxy: the self-test ---------------------------------------------------


def test_selftest_passes_through_the_shipped_proxy(front, rentbox, certificates):
    """A clean clone's steps: the pool imported, `rentbox serve`, the proxy as shipped,
    then `rentbox selftest https://…` with Onlinesim's acceptance test."""
    done = subprocess.run(command("selftest", front.url, "--reserve", "3"),
                          env={**rentbox.env, "SSL_CERT_FILE": str(certificates["ca"])},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "10 passed, 0 failed, 0 skipped", done.stdout
    assert [line[0] for line in lines[:-1]] == ["✓"] * 10, done.stdout
    assert "3 of 3 reserved, all distinct" in done.stdout


# ---- through the proxy: every intake ----------------------------------------------------

BEARER = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}


def ejoin_forward(text: str) -> tuple[str, bytes]:
    """The web UI's forward as examples/gateways/ejoin-sms-to-http.txt shows it, the token
    in the path, with `text` as the SMS."""
    lines = [line for line in (EXAMPLES / "gateways" / "ejoin-sms-to-http.txt").read_text(
        encoding="utf-8").splitlines() if not line.startswith("#")]
    target = lines[0].split()[1].replace("$RENTBOX_GATEWAY_TOKEN", GATEWAY_TOKEN)
    block = lines[3:]
    block[-1] = text
    return target, "\r\n".join(block).encode("utf-8")


def smsgate_envelope(name: str, text: str) -> tuple[bytes, dict]:
    envelope = json.loads((EXAMPLES / "gateways" / "smsgate-sms-received.json").read_text())
    envelope["id"] = f"{name}-event"
    envelope["payload"] = {**envelope["payload"], "messageId": f"{name}-m", "message": text}
    raw = json.dumps(envelope).encode()
    stamp = str(int(time.time()))  # SMSGate signs its own time; rentbox checks the skew
    signature = hmac.new(SMSGATE_KEY.encode(), raw + stamp.encode(), hashlib.sha256)
    return raw, {"X-Signature": signature.hexdigest(), "X-Timestamp": stamp}


def dinstar_push(name: str, text: str) -> dict:
    push = json.loads((EXAMPLES / "gateways" / "dinstar-push-sms.json").read_text())
    # The box's own id of the SMS (with `sn`, what a redelivery is known by): one per call.
    sms_id = int(hashlib.sha256(f"{name} {text}".encode()).hexdigest()[:8], 16)
    first = {**push["sms"][0], "incoming_sms_id": sms_id, "text": text,
             "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    return {**push, "sms": [first]}


def ejoin_push(text: str) -> dict:
    row = [0, "1.02", int(time.time()), "+79990001122", "",
           base64.b64encode(text.encode()).decode()]
    return {"type": "recv-sms", "sms_num": 1, "sms": [row]}


def test_an_sms_from_every_intake_reaches_the_database(front, rentbox):
    name = front.name
    sent = {}
    sent["api"] = front.call("POST", "/sms", {
        "to": "+49 151 2345 6789", "from": "Bank", "text": f"1111 via {name} /sms",
        "id": f"{name}-generic"}, headers=BEARER)
    raw, signed = smsgate_envelope(name, f"2222 via {name} /sms/smsgate")
    sent["smsgate"] = front.call("POST", "/sms/smsgate", raw, headers=signed)
    target, block = ejoin_forward(f"3333 via {name} /sms/ejoin/<token>")
    sent["ejoin forward"] = front.call("POST", target, block,
                                       headers={"Content-Type": "application/octet-stream"})
    sent["ejoin"] = front.call("POST", f"/sms/ejoin?box=gw1&token={GATEWAY_TOKEN}",
                               ejoin_push(f"4444 via {name} /sms/ejoin"))
    sent["dinstar"] = front.call("POST", f"/sms/dinstar?token={GATEWAY_TOKEN}",
                                 dinstar_push(name, f"5555 via {name} /sms/dinstar"))
    assert {intake: (reply.status, reply.json()["status"]) for intake, reply in sent.items()
            } == dict.fromkeys(sent, (200, "SUCCESS"))
    stored = rentbox.rows("SELECT source, text FROM sms WHERE text LIKE ? ORDER BY id",
                          f"% via {name} %")
    assert stored == [("api", f"1111 via {name} /sms"),
                      ("smsgate", f"2222 via {name} /sms/smsgate"),
                      ("ejoin", f"3333 via {name} /sms/ejoin/<token>"),
                      ("ejoin", f"4444 via {name} /sms/ejoin"),
                      ("dinstar", f"5555 via {name} /sms/dinstar")]


def test_a_presence_report_reaches_the_database(front, rentbox):
    gateway = f"box-{front.name}"
    reply = front.call("POST", "/presence", {"gateway": gateway,
                                             "numbers": ["+49 151 2345 6789"]},
                       headers=BEARER)
    assert (reply.status, reply.json()["status"]) == (200, "SUCCESS"), reply
    assert rentbox.rows("SELECT seen_by FROM numbers WHERE number = '4915123456789'") == [
        (gateway,)]


def test_every_buyer_path_reaches_rentbox(front):
    """Also the paths rentbox does not serve yet: rentbox answers them (its 404 names the
    path), not the proxy."""
    for path in BUYER_PATHS:
        reply = front.call("POST", path, {})
        assert reply.json()["status"] == "ERROR" and reply.json() != NOT_SERVED, (path, reply)
    dispatched = front.call("POST", "/", {"action": "GET_SERVICES", "key": API_KEY})
    assert (dispatched.status, dispatched.json()["status"]) == (200, "SUCCESS")


# ---- what the proxies keep out, and their limits ----------------------------------------


def test_the_status_page_metrics_and_the_rest_are_not_exposed(front, rentbox):
    # rentbox itself would serve them (the secrets are set) ...
    assert call(rentbox.url, "GET", "/").status == 401
    assert call(rentbox.url, "GET", "/metrics").status == 401
    assert call(rentbox.url, "GET", "/openapi.json").status == 200
    # ... the proxy does not pass them on, and answers in rentbox's error shape.
    for path in ("/", "/metrics", "/openapi.json", "/anything", "/sms-not-an-intake"):
        reply = front.call("GET", path, headers={
            "Authorization": f"Bearer {METRICS_TOKEN}"} if path == "/metrics" else None)
        assert reply.status in (403, 404), (path, reply)
        assert reply.headers["content-type"].startswith("application/json"), (path, reply)
        assert reply.json()["status"] == "ERROR" and "www-authenticate" not in reply.headers


def test_your_own_addresses_reach_the_status_page_and_metrics(rentbox, certificates,
                                                               tmp_path, proxy_name):
    """The one documented edit: your addresses in place of the placeholder."""
    running, process = start_front(proxy_name, tmp_path, rentbox.address, certificates,
                                   own_address="127.0.0.1")
    try:
        page = running.call("GET", "/")
        assert page.status == 401 and page.headers["www-authenticate"].startswith("Basic")
        basic = base64.b64encode(f"me:{CONSOLE_PASSWORD}".encode()).decode()
        assert running.call("GET", "/", headers={"Authorization": f"Basic {basic}"}
                            ).json()["status"] == "SUCCESS"
        metrics = running.call("GET", "/metrics",
                               headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert metrics.status == 200 and b"rentbox" in metrics.body
        # Onlinesim's POST / is unchanged.
        assert running.call("POST", "/", {"action": "GET_SERVICES", "key": API_KEY}
                            ).status == 200
    finally:
        process.stop()


def test_bodies_over_the_limits_stop_at_the_proxy(front):
    over = front.call("POST", "/sms", b"{" + b" " * (64 * 1024) + b"}", headers=BEARER)
    assert over.status == 413 and over.json()["status"] == "ERROR", over
    # A presence list may be longer (rentbox takes 512 KiB there) ...
    padded = json.dumps({"gateway": f"box-{front.name}-long", "numbers": []}).encode()
    long_list = padded[:-1] + b" " * (300 * 1024) + b"}"
    reply = front.call("POST", "/presence", long_list, headers=BEARER)
    assert (reply.status, reply.json()["status"]) == (200, "SUCCESS"), reply
    # ... but not longer than that.
    too_long = padded[:-1] + b" " * (512 * 1024) + b"}"
    assert front.call("POST", "/presence", too_long, headers=BEARER).status == 413


def test_plain_http_is_redirected_to_https_keeping_the_method(front):
    reply = call(front.http_url, "POST", "/getNumberRent", {"action": "GET_NUMBER"},
                 headers={"Host": "localhost"})
    assert reply.status == 308, reply
    location = reply.headers["location"]
    assert location.startswith("https://localhost") and location.endswith("/getNumberRent")


def test_rentbox_down_is_a_json_502_and_the_selftest_says_so(certificates, tmp_path,
                                                              proxy_name, rentbox):
    refused = f"127.0.0.1:{proxies.free_port()}"  # nothing listens there
    running, process = start_front(proxy_name, tmp_path, refused, certificates)
    try:
        reply = running.call("POST", "/getNumberRent", {"action": "GET_NUMBER"})
        assert reply.status == 502 and reply.json()["status"] == "ERROR", reply
        done = subprocess.run(command("selftest", running.url),
                              env={**rentbox.env, "SSL_CERT_FILE": str(certificates["ca"])},
                              capture_output=True, text=True, timeout=60)
    finally:
        process.stop()
    assert done.returncode == 1
    assert done.stdout.count("→ The reverse proxy answered, but not the server") == 1, (
        done.stdout)
    assert done.stdout.strip().splitlines()[-1] == "2 passed, 7 failed, 0 skipped"


def test_the_callers_address_replaces_what_it_claimed(certificates, tmp_path, proxy_name):
    """X-Forwarded-For and X-Real-IP as rentbox gets them (a server that records them
    stands in for rentbox, which does not show them)."""
    seen = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append({name: self.headers.get(name)
                         for name in ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto")})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    running, process = start_front(proxy_name, tmp_path,
                                   f"127.0.0.1:{upstream.server_address[1]}", certificates)
    try:
        reply = running.call("GET", "/health", headers={"X-Forwarded-For": "198.51.100.7",
                                                       "X-Real-IP": "198.51.100.7"})
    finally:
        process.stop()
        upstream.shutdown()
        upstream.server_close()
    assert reply.status == 200
    assert seen == [{"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
                     "X-Forwarded-Proto": "https"}]


@pytest.fixture(params=list(PROXIES))
def proxy_name(request) -> str:
    proxies.needs({"caddy": proxies.CADDY, "nginx": proxies.NGINX}[request.param],
                  request.param)
    return request.param


# ---- what only one of them has ----------------------------------------------------------


@pytest.mark.parametrize("front", ["nginx"], indirect=True)
def test_nginx_access_log_never_shows_a_gateway_token(front):
    """(Caddy keeps no access log unless told to: examples/reverse-proxy.md.)"""
    target, block = ejoin_forward("6666 via the log test")
    front.call("POST", target, block, headers={"Content-Type": "application/octet-stream"})
    front.call("POST", f"/sms/dinstar?token={GATEWAY_TOKEN}", dinstar_push("log", "7777"))
    log = (front.home / "access.log").read_text()
    assert '"POST /sms/ejoin/***"' in log and '"POST /sms/dinstar"' in log
    assert GATEWAY_TOKEN not in log


def test_the_shipped_caddyfile_adapts_without_a_warning():
    caddy = proxies.needs(proxies.CADDY, "caddy")
    done = subprocess.run([caddy, "adapt", "--config", str(SHIPPED / "Caddyfile"),
                           "--adapter", "caddyfile"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert '"level":"warn"' not in done.stderr, done.stderr  # e.g. "not formatted"


def test_a_missing_proxy_is_a_skip_unless_required(monkeypatch):
    monkeypatch.delenv("RENTBOX_REQUIRE_PROXY", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^nginx is not installed$"):
        proxies.needs(None, "nginx")
    monkeypatch.setenv("RENTBOX_REQUIRE_PROXY", "1")
    with pytest.raises(pytest.fail.Exception, match=r"RENTBOX_REQUIRE_PROXY=1"):
        proxies.needs(None, "nginx")
