"""A self-test that plays Onlinesim against a partner server (protocol.md 1–3), through
whatever TLS and proxy stand in front of it: the checks Onlinesim's own tests make, each with
its timing and, on failure, advice in plain words (once per cause, however many checks it
fails). A check that does not run is reported as skipped, never as passed.

Standard library only (http.client, ssl, gzip): it must work against any partner server,
not just rentbox. The CA bundle is the system's, or the one named by SSL_CERT_FILE.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import http.client
import json
import socket
import ssl
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from rentbox.errors import InvalidInput

LIMIT_S = 10.0  # Onlinesim cancels a request after 10 seconds (protocol.md 1)
EXPIRY_WARN_DAYS = 14
TEST_HEADER = "X-Rentbox-Test"
# An activationId no server has issued: FINISH on it must answer NO_OPERATION.
UNKNOWN_ID = 9_000_000_000_000_000_001

ADVICE_FIREWALL = ("Nothing answered at this address: check the host name and port, that the "
                   "server (or its proxy) is running, and that the firewall lets the port in.")
# One piece of advice per cause: every check that fails for this cause gives the same text,
# and it is shown once (`advice_once`).
ADVICE_PATH = ("A path rentbox serves was not answered by rentbox (HTTP 404, a redirect or "
               "405): if the reverse proxy serves rentbox under a path prefix, put that "
               "prefix in the URL; otherwise make the proxy forward /health, POST / and "
               "Onlinesim's paths unchanged (the configurations in rentbox's examples/proxy/ "
               "do).")
ADVICE_KEY = ("The server refused the API key: use the key of your Onlinesim profile, the same "
              "one the server has (RENTBOX_API_KEY).")
ADVICE_DOWN = ("The reverse proxy answered, but not the server behind it (HTTP 502/504): check "
               "that the server runs (systemctl status rentbox) and listens on the address "
               "the proxy forwards to.")

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
NOT_RUN = "not run: the connection failed at an earlier check"
TIMING = "answers within 10 s"


@dataclass
class Check:
    name: str
    status: str  # PASSED, FAILED or SKIPPED (did not run, or does not apply: never a pass)
    duration_s: float
    detail: str
    advice: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def failed(self) -> bool:
        return self.status == FAILED


class Skipped(Exception):
    """A check that does not apply to this run (e.g. HTTPS with --allow-http)."""


class Unreachable(Exception):
    """The connection itself failed (refused, DNS, timeout, TLS): nothing else can run."""

    def __init__(self, detail: str, advice: str):
        super().__init__(detail)
        self.detail, self.advice = detail, advice


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes
    seconds: float

    def json(self) -> dict | None:
        try:
            value = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    def described(self, limit: int = 100) -> str:
        """`HTTP <status>: <what it said>`: the error of a JSON answer, else the start of
        the body as text (never Python's b'...')."""
        error = (self.json() or {}).get("error")
        said = excerpt(error.encode("utf-8", "replace") if isinstance(error, str)
                       else self.body, limit)
        return f"HTTP {self.status}: {said}"


def excerpt(data: bytes, limit: int = 100) -> str:
    """The start of a body as one line of printable text: decoded as UTF-8 (bad bytes
    replaced), control characters and runs of white space made one space, cut at `limit`
    characters with an ellipsis. A hostile server's bytes cannot reach the terminal raw."""
    text = data[:limit * 4].decode("utf-8", "replace")
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    text = " ".join(text.split())
    if not text:
        return "(empty body)"
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Target:
    """The server under test: scheme, host, port, path prefix, how to connect."""

    def __init__(self, url: str, timeout_s: float, context: ssl.SSLContext | None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"not an http(s) URL: {url!r}")
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.context = context or ssl.create_default_context()
        self.slowest_s = 0.0
        self.lock = threading.Lock()

    def connection(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s,
                                               context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def request(self, method: str, path: str, body: object = None, *,
                headers: dict | None = None, gzip_body: bool = False) -> Answer:
        data = None if body is None else json.dumps(body).encode("utf-8")
        sent = {"User-Agent": "rentbox-selftest", **(headers or {})}
        if data is not None:
            sent["Content-Type"] = "application/json; charset=utf-8"
            if gzip_body:
                data = gzip.compress(data)
                sent["Content-Encoding"] = "gzip"
        conn = self.connection()
        started = time.perf_counter()
        try:
            with _reaching(self):
                conn.request(method, self.prefix + path, body=data, headers=sent)
                response = conn.getresponse()
                raw = response.read()
        finally:
            conn.close()
        seconds = time.perf_counter() - started
        with self.lock:
            self.slowest_s = max(self.slowest_s, seconds)
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, answer_headers, raw, seconds)


@contextlib.contextmanager
def _reaching(target: "Target"):
    """Turn a failure to reach `target` into Unreachable, with what to check."""
    try:
        yield
    except ssl.SSLCertVerificationError as error:
        raise Unreachable(f"certificate refused: {error.verify_message}",
                          certificate_advice(error)) from None
    except ssl.SSLError as error:
        raise Unreachable(f"TLS failed: {error.reason or error}",
                          "The TLS handshake failed: is this port serving HTTPS? An "
                          "http:// server answers plain HTTP on it.") from None
    except socket.gaierror as error:
        raise Unreachable(f"the host name {target.host!r} does not resolve ({error})",
                          ADVICE_FIREWALL) from None
    except (TimeoutError, socket.timeout):
        raise Unreachable(f"no answer within {target.timeout_s:g} s", ADVICE_FIREWALL) from None
    except (ConnectionError, OSError, http.client.HTTPException) as error:
        raise Unreachable(f"cannot connect to {target.host}:{target.port}: {error}",
                          ADVICE_FIREWALL) from None


def certificate_advice(error: ssl.SSLCertVerificationError) -> str:
    message = (error.verify_message or "").lower()
    if "expired" in message:
        return "The certificate has expired: renew it (e.g. certbot renew) and reload the proxy."
    if "not yet valid" in message:
        return "The certificate is not valid yet: check the clock of the server."
    if "hostname" in message or "ip address mismatch" in message:
        return ("The certificate is for another host name: issue one that names this host, "
                "or use the host name it was issued for in the URL.")
    return ("The certificate is not trusted: serve the full chain from a public CA (Onlinesim "
            "will not trust a self-signed one); to test a private CA, set SSL_CERT_FILE to its "
            "certificate.")


def run(url: str, key: str, *, now: dt.datetime, timeout_s: float = LIMIT_S,
        allow_http: bool = False, reserve: int = 0, service: str = "rent",
        context: ssl.SSLContext | None = None) -> list[Check]:
    """Every check against `url`, in order; a failed connection ends the run there.
    `reserve` numbers are reserved for `service`: rentals, or activations for a service."""
    target = Target(url, timeout_s, context)
    checks: list[Check] = []
    steps = [
        ("HTTPS certificate", lambda: check_transport(target, now, allow_http)),
        ("GET /health", lambda: check_health(target)),
        ("GET_SERVICES, key in the body", lambda: check_services(target, key, bearer=False)),
        ("GET_SERVICES, Bearer key", lambda: check_services(target, key, bearer=True)),
        ("wrong key refused", lambda: check_wrong_key(target, key)),
        ("gzip request and answer", lambda: check_gzip(target, key)),
        ("POST / dispatch", lambda: check_dispatch(target, key)),
        ("unknown activationId", lambda: check_no_operation(target, key)),
    ]
    if reserve:
        what = "" if service == "rent" else f" for {service} activations"
        steps.append((f"reserve {reserve} numbers{what}",
                      lambda: check_reserve(target, key, reserve, service)))
    for index, (name, step) in enumerate(steps):
        started = time.perf_counter()
        try:
            passed, detail, advice = step()
        except Skipped as skip:
            checks.append(Check(name, SKIPPED, time.perf_counter() - started, str(skip)))
            continue
        except Unreachable as error:
            checks.append(Check(name, FAILED, time.perf_counter() - started, error.detail,
                                error.advice))
            # Every check after it is listed, as not run: the report shows the whole run.
            checks += [Check(later, SKIPPED, 0.0, NOT_RUN)
                       for later in [n for n, _ in steps[index + 1:]] + [TIMING]]
            return checks
        checks.append(Check(name, PASSED if passed else FAILED, time.perf_counter() - started,
                            detail, advice))
    margin = LIMIT_S - target.slowest_s
    checks.append(Check(
        TIMING, PASSED if margin > 0 else FAILED, target.slowest_s,
        f"slowest answer {target.slowest_s:.3f} s, {margin:.3f} s inside Onlinesim's limit",
        None if margin > 0 else "An answer took longer than Onlinesim waits: check the "
        "server's load, its disk, and the proxy's buffering."))
    return checks


def check_transport(target: Target, now: dt.datetime, allow_http: bool):
    if target.scheme == "http":
        if allow_http:
            raise Skipped("plain HTTP allowed by --allow-http (Onlinesim itself needs HTTPS)")
        return (False, "the URL is http://: Onlinesim calls partner servers over HTTPS",
                "Put a TLS reverse proxy (Caddy, nginx) with a certificate from a public CA in "
                "front of the server and test its https:// URL; --allow-http skips this check.")
    with _reaching(target):
        with socket.create_connection((target.host, target.port), target.timeout_s) as raw:
            with target.context.wrap_socket(raw, server_hostname=target.host) as tls:
                certificate = tls.getpeercert()
    expires = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(certificate["notAfter"]),
                                        dt.timezone.utc)
    days = (expires - now.astimezone(dt.timezone.utc)).total_seconds() / 86400
    detail = f"valid for {target.host}, expires {expires:%Y-%m-%d} ({days:.0f} days left)"
    if days < EXPIRY_WARN_DAYS:
        return (False, detail, f"The certificate expires in under {EXPIRY_WARN_DAYS} days: "
                "renew it now (check that automatic renewal runs).")
    return True, detail, None


def check_health(target: Target):
    answer = target.request("GET", "/health")
    body = answer.json() or {}
    if answer.status == 200 and body.get("status") == "SUCCESS":
        return True, f"rentbox {body.get('version', '?')}", None
    if answer.status == 404:
        # rentbox always answers /health: the proxy does not forward it (or the URL misses
        # the proxy's path prefix, which the Onlinesim paths then miss too: one cause).
        return (False, f"{answer.described()} (the proxy does not forward /health to "
                "rentbox, or the server is not rentbox)", ADVICE_PATH)
    if answer.status in (502, 504):
        return False, answer.described(), ADVICE_DOWN
    return (False, answer.described(), "The server is up but unhealthy: see `rentbox status` "
            "and its log.")


def _status_advice(answer: Answer) -> str | None:
    """The advice for an answer whose status alone names the cause."""
    if answer.status in (404, 405, 301, 302, 303, 307, 308):
        return ADVICE_PATH
    return {401: ADVICE_KEY, 502: ADVICE_DOWN, 504: ADVICE_DOWN}.get(answer.status)


def _services_shape(answer: Answer):
    """(passed, detail, advice) for a GET_SERVICES answer."""
    body = answer.json()
    if answer.status == 401:
        return False, f"{answer.described()} (the key was refused)", ADVICE_KEY
    if _status_advice(answer):
        return False, answer.described(), _status_advice(answer)
    if answer.status != 200:
        return False, answer.described(), "See the server's log."
    if body is None:
        return False, f"{answer.described()} (not a JSON object)", "See the server's log."
    countries = body.get("countryList")
    if body.get("status") != "SUCCESS" or not isinstance(countries, list) or not all(
            isinstance(c, dict) and isinstance(c.get("country"), str)
            and isinstance(c.get("operatorMap"), dict) for c in countries):
        return (False, "the answer does not have the protocol's shape: "
                f"{excerpt(answer.body, 120)}",
                "GET_SERVICES must answer {\"countryList\": [...], \"status\": \"SUCCESS\"}.")
    total = sum(c["operatorMap"].get("any", {}).get("rent", 0) for c in countries)
    return True, f"{len(countries)} countries, {total} numbers to rent", None


def check_services(target: Target, key: str, *, bearer: bool):
    if bearer:
        answer = target.request("POST", "/getServicesRent", {"action": "GET_SERVICES"},
                                headers={"Authorization": f"Bearer {key}"})
    else:
        answer = target.request("POST", "/getServicesRent",
                                {"action": "GET_SERVICES", "key": key})
    return _services_shape(answer)


def check_wrong_key(target: Target, key: str):
    answer = target.request("POST", "/getServicesRent",
                            {"action": "GET_SERVICES", "key": key + "-wrong"})
    return _expect_error(answer, 401, "BAD_KEY", "HTTP 401 BAD_KEY", ", not 401 BAD_KEY",
                         "A wrong key must be refused with HTTP 401 {\"status\":\"ERROR\","
                         "\"error\":\"BAD_KEY\"}: anyone could rent your numbers otherwise.")


def _expect_error(answer: Answer, status: int, error: str, passed: str, failed: str,
                  advice: str):
    """A check that expects the error answer `error` with HTTP `status`."""
    body = answer.json() or {}
    if answer.status == status and body.get("error") == error:
        return True, passed, None
    if answer.status != status and _status_advice(answer):
        return False, answer.described(), _status_advice(answer)
    return False, f"{answer.described(80)}{failed}", advice


def check_gzip(target: Target, key: str):
    answer = target.request("POST", "/getServicesRent", {"action": "GET_SERVICES", "key": key},
                            headers={"Accept-Encoding": "gzip"}, gzip_body=True)
    compressed = answer.headers.get("content-encoding") == "gzip"
    if compressed:
        try:
            answer.body = gzip.decompress(answer.body)
        except (OSError, EOFError):
            return False, "the gzip answer does not decompress", "Check the proxy's compression."
    if answer.status != 200:
        return _services_shape(answer)  # refused, not found, …: not a gzip problem
    if not compressed:
        return (False, f"HTTP {answer.status}, answer not gzip-compressed",
                "Onlinesim may ask for gzip: the server (or its proxy) must answer "
                "Content-Encoding: gzip when Accept-Encoding asks for it.")
    passed, detail, advice = _services_shape(answer)
    return passed, ("gzip both ways: " + detail) if passed else detail, advice


def check_dispatch(target: Target, key: str):
    answer = target.request("POST", "/", {"action": "GET_SERVICES", "key": key})
    passed, detail, advice = _services_shape(answer)
    if not passed and _status_advice(answer) is None:
        advice = ("POST / (Onlinesim's single-URL setup) is not dispatched on `action`: "
                  "check the proxy passes POST / to the server.")
    return passed, detail, advice


def check_no_operation(target: Target, key: str):
    answer = target.request("POST", "/finishActivationRent", {
        "action": "FINISH_ACTIVATION", "key": key, "service": "rent",
        "activationId": UNKNOWN_ID, "status": 4, "sum": 0})
    return _expect_error(answer, 200, "NO_OPERATION", "NO_OPERATION", "",
                         "FINISH of an unknown activationId must answer HTTP 200 "
                         "{\"status\":\"ERROR\",\"error\":\"NO_OPERATION\"}.")


def check_reserve(target: Target, key: str, count: int, service: str = "rent"):
    """Onlinesim's acceptance test: `count` simultaneous identical GET_NUMBER, all numbers
    distinct, each FINISHed twice (SUCCESS both times). Every operation opened is
    finished, also when something fails midway or on Ctrl-C. `service`: rent, or the
    service of activations (on /getNumber and /finishActivation)."""
    answers: list[Answer | Exception] = [None] * count  # type: ignore[list-item]
    path = "/getNumberRent" if service == "rent" else "/getNumber"

    def reserve(index: int) -> None:
        try:
            answers[index] = target.request(
                "POST", path,
                {"action": "GET_NUMBER", "key": key, "service": service, "sum": 0},
                headers={TEST_HEADER: "1"})
        except Exception as error:  # reported below; the rentals opened are still finished
            answers[index] = error

    threads = [threading.Thread(target=reserve, args=(i,), daemon=True) for i in range(count)]
    opened: list[tuple[int, str]] = []
    marked = True
    problems: list[str] = []
    no_numbers = 0
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        # Also on Ctrl-C: wait for the calls in flight, then finish every rental they opened.
        for thread in threads:
            thread.join(target.timeout_s)
        for answer in answers:
            if answer is None:
                continue
            if isinstance(answer, Exception):
                problems.append(str(answer))
                continue
            body = answer.json() or {}
            if body.get("status") == "SUCCESS" and isinstance(body.get("activationId"), int):
                opened.append((body["activationId"], str(body.get("number"))))
                marked = marked and answer.headers.get(TEST_HEADER.lower()) == "1"
            elif body.get("status") == "NO_NUMBERS":
                no_numbers += 1
            else:
                problems.append(answer.described(80))
        problems += finish_all(target, key, opened, service)
    numbers = [number for _, number in opened]
    if len(set(numbers)) != len(numbers):
        problems.append("the same number was issued twice: Onlinesim's acceptance test fails")
    detail = f"{len(opened)} of {count} reserved, all distinct" if len(set(numbers)) == len(
        numbers) else f"{len(opened)} of {count} reserved"
    if no_numbers:
        detail += f"; {no_numbers} NO_NUMBERS: the pool has fewer free numbers than {count}"
    detail += ("; marked as tests (no income, no failures)" if marked and opened else
               "; the rentals could not be marked as tests (the server ignores "
               f"{TEST_HEADER})" if opened else "")
    if problems:
        return False, detail + "; " + "; ".join(problems[:3]), (
            "Every GET_NUMBER must answer a distinct number or NO_NUMBERS, and every FINISH "
            "SUCCESS, twice: see the server's log.")
    if not opened and service != "rent":
        return False, detail, (f"Offer {service} (RENTBOX_SERVICES) and import numbers "
                               "before the test.")
    if not opened:
        return False, detail, "Import numbers (rentbox numbers import) before the test."
    return True, detail + "; each FINISHed twice, SUCCESS", None


def finish_all(target: Target, key: str, opened: list[tuple[int, str]],
               service: str = "rent") -> list[str]:
    """FINISH every operation twice, as Onlinesim repeats a FINISH (a rental with status
    1, an activation with 5: no income, no failure, nothing spent); the problems seen."""
    problems = []
    if service == "rent":
        path, body = "/finishActivationRent", {"service": "rent", "status": 1}
    else:
        path, body = "/finishActivation", {"status": 5}
    for activation_id, number in opened:
        for attempt in (1, 2):
            try:
                answer = target.request("POST", path, {
                    "action": "FINISH_ACTIVATION", "key": key, **body,
                    "activationId": activation_id, "sum": 0})
                status = (answer.json() or {}).get("status")
                said = answer.described(80)
            except Unreachable as error:
                status, said = None, str(error)
            if status != "SUCCESS":
                problems.append(f"FINISH #{attempt} of {activation_id} ({number}): {said}")
    return problems


def has_passed(checks: list[Check]) -> bool:
    """The run's verdict: no check failed (a skipped one is not a failure, nor a pass)."""
    return not any(c.failed for c in checks)


def counts(checks: list[Check]) -> dict[str, int]:
    return {status: sum(c.status == status for c in checks)
            for status in (PASSED, FAILED, SKIPPED)}


def summary(checks: list[Check]) -> str:
    """The last line of the report, e.g. `7 passed, 1 failed, 1 skipped`."""
    return ", ".join(f"{n} {status}" for status, n in counts(checks).items())


def advice_once(checks: list[Check]) -> list[str | None]:
    """The advice to show after each check: its own, unless an earlier check gave the same
    (one cause, such as a proxy that forwards nothing, fails many checks)."""
    given: set[str] = set()
    shown: list[str | None] = []
    for check in checks:
        shown.append(check.advice if check.advice and check.advice not in given else None)
        if check.advice:
            given.add(check.advice)
    return shown


def as_json(checks: list[Check]) -> dict:
    return {"passed": has_passed(checks), "summary": counts(checks),
            "checks": [{**asdict(c), "passed": c.passed} for c in checks]}
