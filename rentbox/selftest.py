"""A self-test that plays Onlinesim against a partner server (protocol.md 1–3), or a buyer
that speaks the SMSHub agent protocol (protocol.md 7) against rentbox's path for it, through
whatever TLS and proxy stand in front of it: the checks the buyer's own tests make, each with
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
import re
import socket
import ssl
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from rentbox import buyers
from rentbox.config import BUYER_KEY_ENV, SETTINGS, SMSHUB, SMSHUB_KEY_ENV, Buyer
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

# The SMSHub agent protocol (protocol.md 7): a GET_NUMBER answered in more than 3 s fails
# its test 5; GET_NUMBER names its currency (ISO 4217 numeric: 643 roubles); a count, a
# number or an id is a JSON integer (32-bit for a count), never a string (its test 3).
SMSHUB_LIMIT_S = 3.0
SMSHUB_TIMING = "GET_NUMBER within 3 s"
RUB = 643
INT32_MAX = 2**31 - 1
# A buyer's name as the buyers file takes it (buyers.py): part of its path, /buyer/<name>.
BUYER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


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

    def __init__(self, url: str, timeout_s: float, context: ssl.SSLContext | None,
                 who: str = "Onlinesim"):
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
        self.who = who  # the buyer played, as advice names it

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
                          certificate_advice(error, target.who)) from None
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


def certificate_advice(error: ssl.SSLCertVerificationError, who: str = "Onlinesim") -> str:
    message = (error.verify_message or "").lower()
    if "expired" in message:
        return "The certificate has expired: renew it (e.g. certbot renew) and reload the proxy."
    if "not yet valid" in message:
        return "The certificate is not valid yet: check the clock of the server."
    if "hostname" in message or "ip address mismatch" in message:
        return ("The certificate is for another host name: issue one that names this host, "
                "or use the host name it was issued for in the URL.")
    return ("The certificate is not trusted: serve the full chain from a public CA "
            f"({who} will not trust a self-signed one); to test a private CA, set "
            "SSL_CERT_FILE to its certificate.")


@dataclass(frozen=True)
class Caller:
    """The buyer the self-test plays: its name as the report shows it, the path its calls
    go to (None: Onlinesim's own paths), and the advice for a refused key and for a path
    that is not served."""

    name: str
    path: str | None
    key_advice: str
    path_advice: str


ONLINESIM = Caller("Onlinesim", None, ADVICE_KEY, ADVICE_PATH)


def play_buyer(name: str, *, smshub_key: str | None = None, buyer_key: str | None = None,
               buyers_file: str | Path | None = None) -> tuple[Caller, str]:
    """The SMSHub-protocol buyer `name` as rentbox serves it, and the key to call it with:
    SMSHub at /smshub with RENTBOX_SMSHUB_KEY (`smshub_key`); a buyer of the buyers file at
    /buyer/<name> with RENTBOX_BUYER_KEY (`buyer_key`), else with the key of its entry in
    the buyers file (`buyers_file`, RENTBOX_BUYERS). Raises InvalidInput saying what is
    missing."""
    buyers_env = SETTINGS["buyers"].env
    if name == SMSHUB:
        if not smshub_key:
            raise InvalidInput(f"{SMSHUB_KEY_ENV} is not set: the self-test needs the key "
                               f"SMSHub gave you (export {SMSHUB_KEY_ENV}=...)")
        key, shown, where = smshub_key, "SMSHub", SMSHUB_KEY_ENV
    else:
        if not BUYER_NAME.fullmatch(name):
            raise InvalidInput(f"--buyer {name!r}: a buyer's name is lower-case letters, digits, "
                               "'_' and '-', at most 32 (onlinesim, smshub, or a name of the "
                               "buyers file)")
        where = f"its key in the buyers file, [buyers.{name}] of {buyers_env}"
        if buyer_key:
            key = buyer_key
            where += f"; this test took {BUYER_KEY_ENV}"
        elif buyers_file:
            # SMSHub's own key is not needed to read another buyer's entry: a stand-in
            # keeps the file's [buyers.smshub], if any, from being refused without it.
            found, _ = buyers.load(Path(buyers_file), smshub_key=smshub_key or "-")
            entry = next((b for b in found if b.name == name and b.path), None)
            if entry is None:
                names = ", ".join(b.name for b in found if b.path and b.name != SMSHUB)
                raise InvalidInput(f"the buyers file {buyers_file} has no buyer {name!r} "
                                   f"(it has: {names or 'none'})")
            key = entry.key
        else:
            raise InvalidInput(f"the self-test needs the key of buyer {name}: export "
                               f"{BUYER_KEY_ENV}=... (the key {name} gave you), or set "
                               f"{buyers_env} to the buyers file that holds it")
        shown = name
    path = Buyer(name, SMSHUB).path or ""
    return Caller(
        shown, path,
        key_advice=(f"The server refused the key: use the key {shown} gave you, the one the "
                    f"server has ({where})."),
        path_advice=("A path rentbox serves was not answered by rentbox (HTTP 404, a "
                     "redirect or 405): if the reverse proxy serves rentbox under a path "
                     "prefix, put that prefix in the URL; otherwise make the proxy forward "
                     f"/health and POST {path} unchanged (the configurations in rentbox's "
                     "examples/proxy/ do), and check that the server has this buyer "
                     "(rentbox status lists its buyers)."),
    ), key


# A step of the run: its name, and the check that returns (passed, detail, advice), or
# raises Skipped or Unreachable. The last step of a run returns a whole Check.
Step = tuple[str, Callable[[], tuple]]


def run(url: str, key: str, *, now: dt.datetime, timeout_s: float = LIMIT_S,
        allow_http: bool = False, reserve: int = 0, service: str | None = None,
        context: ssl.SSLContext | None = None, caller: Caller = ONLINESIM) -> list[Check]:
    """Every check against `url`, in order; a failed connection ends the run there.
    `reserve` numbers are reserved for `service`: rentals (None, for Onlinesim), or
    activations for a service. `caller` is the buyer played: Onlinesim, or an
    SMSHub-protocol buyer (`play_buyer`), for which `service` None is the service offered
    with the most numbers."""
    target = Target(url, timeout_s, context, who=caller.name)
    if caller.path is not None:
        steps, last = SmshubPlay(target, key, caller).steps(now, allow_http, reserve, service)
        return run_steps(steps, last)
    service = service or "rent"
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
        steps.append((f"reserve {reserve} number{'' if reserve == 1 else 's'}{what}",
                      lambda: check_reserve(target, key, reserve, service)))
    return run_steps(steps, (TIMING, lambda: check_timing(target)))


def run_steps(steps: list[Step], last: tuple[str, Callable[[], Check]]) -> list[Check]:
    """Run `steps`, then `last` (the timing of the whole run); a failed connection ends
    the run there, every check after it listed as not run."""
    checks: list[Check] = []
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
                       for later in [n for n, _ in steps[index + 1:]] + [last[0]]]
            return checks
        checks.append(Check(name, PASSED if passed else FAILED, time.perf_counter() - started,
                            detail, advice))
    checks.append(last[1]())
    return checks


def check_timing(target: Target) -> Check:
    """Onlinesim's limit: every answer of the run within LIMIT_S."""
    margin = LIMIT_S - target.slowest_s
    return Check(
        TIMING, PASSED if margin > 0 else FAILED, target.slowest_s,
        f"slowest answer {target.slowest_s:.3f} s, {margin:.3f} s inside Onlinesim's limit",
        None if margin > 0 else "An answer took longer than Onlinesim waits: check the "
        "server's load, its disk, and the proxy's buffering.")


def check_transport(target: Target, now: dt.datetime, allow_http: bool,
                    caller: Caller = ONLINESIM):
    if target.scheme == "http":
        if caller is ONLINESIM:
            why = "Onlinesim calls partner servers over HTTPS"
            needs = "Onlinesim itself needs HTTPS"
        else:
            why = needs = (f"{caller.name}'s key and its clients' SMS would cross the network "
                           "in clear")
        if allow_http:
            raise Skipped(f"plain HTTP allowed by --allow-http ({needs})")
        return (False, f"the URL is http://: {why}",
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


def check_health(target: Target, caller: Caller = ONLINESIM):
    answer = target.request("GET", "/health")
    body = answer.json() or {}
    if answer.status == 200 and body.get("status") == "SUCCESS":
        return True, f"rentbox {body.get('version', '?')}", None
    if answer.status == 404:
        # rentbox always answers /health: the proxy does not forward it (or the URL misses
        # the proxy's path prefix, which the Onlinesim paths then miss too: one cause).
        return (False, f"{answer.described()} (the proxy does not forward /health to "
                "rentbox, or the server is not rentbox)", caller.path_advice)
    if answer.status in (502, 504):
        return False, answer.described(), ADVICE_DOWN
    return (False, answer.described(), "The server is up but unhealthy: see `rentbox status` "
            "and its log.")


def _status_advice(answer: Answer, caller: Caller = ONLINESIM) -> str | None:
    """The advice for an answer whose status alone names the cause."""
    if answer.status in (404, 405, 301, 302, 303, 307, 308):
        return caller.path_advice
    return {401: caller.key_advice, 502: ADVICE_DOWN, 504: ADVICE_DOWN}.get(answer.status)


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
                  advice: str, caller: Caller = ONLINESIM):
    """A check that expects the error answer `error` with HTTP `status`."""
    body = answer.json() or {}
    if answer.status == status and body.get("error") == error:
        return True, passed, None
    if answer.status != status and _status_advice(answer, caller):
        return False, answer.described(), _status_advice(answer, caller)
    return False, f"{answer.described(80)}{failed}", advice


def check_gzip(target: Target, key: str, path: str = "/getServicesRent",
               shape: Callable[[Answer], tuple] | None = None):
    """GET_SERVICES on `path`, gzip both ways; its answer checked by `shape` (Onlinesim's
    by default)."""
    shape = shape or _services_shape
    answer = target.request("POST", path, {"action": "GET_SERVICES", "key": key},
                            headers={"Accept-Encoding": "gzip"}, gzip_body=True)
    compressed = answer.headers.get("content-encoding") == "gzip"
    if compressed:
        try:
            answer.body = gzip.decompress(answer.body)
        except (OSError, EOFError):
            return False, "the gzip answer does not decompress", "Check the proxy's compression."
    if answer.status != 200:
        return shape(answer)  # refused, not found, …: not a gzip problem
    if not compressed:
        return (False, f"HTTP {answer.status}, answer not gzip-compressed",
                f"{target.who} may ask for gzip: the server (or its proxy) must answer "
                "Content-Encoding: gzip when Accept-Encoding asks for it.")
    passed, detail, advice = shape(answer)
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


def all_at_once(answers: list, call: Callable[[], "Answer"], timeout_s: float) -> None:
    """Make `len(answers)` calls at once, each on a thread of its own, and put each one's
    answer (or the exception it raised) in `answers`. Returns when all have ended; on
    Ctrl-C, once the calls in flight have ended (each within `timeout_s`), so that the
    caller can finish every operation they opened."""
    def one(index: int) -> None:
        try:
            answers[index] = call()
        except Exception as error:  # reported by the caller; what was opened is finished
            answers[index] = error

    threads = [threading.Thread(target=one, args=(i,), daemon=True)
               for i in range(len(answers))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for thread in threads:
            thread.join(timeout_s)


def check_reserve(target: Target, key: str, count: int, service: str = "rent"):
    """Onlinesim's acceptance test: `count` simultaneous identical GET_NUMBER, all numbers
    distinct, each FINISHed twice (SUCCESS both times). Every operation opened is
    finished, also when something fails midway or on Ctrl-C. `service`: rent, or the
    service of activations (on /getNumber and /finishActivation)."""
    answers: list[Answer | Exception] = [None] * count  # type: ignore[list-item]
    path = "/getNumberRent" if service == "rent" else "/getNumber"

    opened: list[tuple[int, str]] = []
    marked = True
    problems: list[str] = []
    no_numbers = 0
    try:
        all_at_once(answers, lambda: target.request(
            "POST", path, {"action": "GET_NUMBER", "key": key, "service": service, "sum": 0},
            headers={TEST_HEADER: "1"}), target.timeout_s)
    finally:
        # Also on Ctrl-C: finish every rental the calls opened.
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
               service: str = "rent", *, path: str | None = None) -> list[str]:
    """FINISH every operation twice, as Onlinesim repeats a FINISH (a rental with status
    1, an activation with 5: no income, no failure, nothing spent); the problems seen.
    `path`: an SMSHub-protocol buyer's, whose FINISH has status 5 (returned) and no sum."""
    problems = []
    if path is not None:
        fields: dict = {"status": 5}
    elif service == "rent":
        path, fields = "/finishActivationRent", {"service": "rent", "status": 1, "sum": 0}
    else:
        path, fields = "/finishActivation", {"status": 5, "sum": 0}
    for activation_id, number in opened:
        for attempt in (1, 2):
            try:
                answer = target.request("POST", path, {
                    "action": "FINISH_ACTIVATION", "key": key, **fields,
                    "activationId": activation_id})
                status = (answer.json() or {}).get("status")
                said = answer.described(80)
            except Unreachable as error:
                status, said = None, str(error)
            if status != "SUCCESS":
                problems.append(f"FINISH #{attempt} of {activation_id} ({number}): {said}")
    return problems


# ---------------------------------------------------------------------------------------
# An SMSHub-protocol buyer (protocol.md 7): SMSHub itself, GrizzlySMS, SMSBower, …
# ---------------------------------------------------------------------------------------

SMSHUB_SERVICES_ADVICE = (
    "GET_SERVICES must answer {\"countryList\": [{\"country\": \"russia\", \"operatorMap\": "
    "{\"mts\": {\"vk\": 10}}}], \"status\": \"SUCCESS\"}: each count a JSON integer, "
    "operators by name, and `any` only for a country whose operators are unknown, never "
    "beside real ones (the protocol's Appendix 2).")


def _shown(value: object, limit: int = 40) -> str:
    """A value a server sent, as one short line of text (a hostile server's name or count
    cannot reach the terminal raw)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return excerpt(text.encode("utf-8", "replace"), limit)


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value <= INT32_MAX  # a bool is no count


def smshub_services_problems(body: dict) -> list[str]:
    """What is wrong with an SMSHub GET_SERVICES answer's shape (nothing: []): status
    SUCCESS, countryList of {country, operatorMap: {operator: {service: count}}}, counts
    32-bit JSON integers, and `any` never beside real operators."""
    problems = []
    if body.get("status") != "SUCCESS":
        problems.append(f"status is {_shown(body.get('status'))}, not SUCCESS")
    countries = body.get("countryList")
    if not isinstance(countries, list):
        return problems + ["countryList is not an array"]
    for item in countries:
        if not isinstance(item, dict) or not isinstance(item.get("country"), str) or not \
                item["country"]:
            problems.append(f"a countryList item has no country name: {_shown(item)}")
            continue
        country, operators = _shown(item["country"]), item.get("operatorMap")
        if not isinstance(operators, dict):
            problems.append(f"{country}: operatorMap is not an object")
            continue
        if "any" in operators and len(operators) > 1:
            named = sorted(_shown(o) for o in operators if o != "any")
            problems.append(f"{country}: `any` beside real operators "
                            f"({', '.join(named[:3])}{', …' if len(named) > 3 else ''})")
        for operator, counts in operators.items():
            if not isinstance(counts, dict):
                problems.append(f"{country}/{_shown(operator)}: not an object of counts")
                continue
            problems += [f"{country}/{_shown(operator)}/{_shown(service)}: {_shown(count)} "
                         "is not a whole number (a JSON integer, not a string)"
                         for service, count in counts.items() if not _is_count(count)]
    return problems


def _offered(body: dict) -> list[tuple[str, str, str, int]]:
    """(country, operator, service, count) of a GET_SERVICES answer of the right shape."""
    return [(item["country"], operator, service, count)
            for item in body["countryList"]
            for operator, counts in item["operatorMap"].items()
            for service, count in counts.items()]


class SmshubPlay:
    """One run as an SMSHub-protocol buyer (protocol.md 7), on rentbox's path for it: what
    its GET_SERVICES offered (its GET_NUMBER asks for that), the numbers it issued (the
    next GET_NUMBER excludes them), and how long each GET_NUMBER took."""

    def __init__(self, target: Target, key: str, caller: Caller):
        self.target, self.key, self.caller = target, key, caller
        self.offered: list[tuple[str, str, str, int]] | None = None
        self.cell: tuple[str, str, str, int] | None = None  # where numbers were asked for
        self.issued: list[str] = []
        self.number_s: list[float] = []  # each GET_NUMBER's time
        self.reserve = 0

    def steps(self, now: dt.datetime, allow_http: bool, reserve: int,
              service: str | None) -> tuple[list[Step], tuple[str, Callable[[], Check]]]:
        target, caller = self.target, self.caller
        self.reserve = reserve
        steps: list[Step] = [
            ("HTTPS certificate", lambda: check_transport(target, now, allow_http, caller)),
            ("GET /health", lambda: check_health(target, caller)),
            (f"GET_SERVICES at {caller.path}", self.check_services),
            ("wrong key refused", self.check_wrong_key),
            ("gzip request and answer",
             lambda: check_gzip(target, self.key, caller.path or "", self.services_shape)),
        ]
        if reserve:
            what = f" for {service}" if service else ""
            steps += [(f"reserve {reserve} number{'' if reserve == 1 else 's'}{what}",
                       lambda: self.check_reserve(reserve, service)),
                      ("exceptionPhoneSet respected", self.check_exception)]
        return steps, (SMSHUB_TIMING, self.check_timing)

    def post(self, body: dict, key: str | None = None, *, test: bool = False) -> Answer:
        """A call on the buyer's path, the key in the body; `test`: marked as a test."""
        return self.target.request("POST", self.caller.path or "",
                                   {**body, "key": self.key if key is None else key},
                                   headers={TEST_HEADER: "1"} if test else None)

    def services_shape(self, answer: Answer):
        """(passed, detail, advice) for a GET_SERVICES answer."""
        if answer.status == 401:
            return (False, f"{answer.described()} (the key was refused)",
                    self.caller.key_advice)
        if _status_advice(answer, self.caller):
            return False, answer.described(), _status_advice(answer, self.caller)
        body = answer.json()
        if answer.status != 200:
            return False, answer.described(), "See the server's log."
        if body is None:
            return False, f"{answer.described()} (not a JSON object)", "See the server's log."
        problems = smshub_services_problems(body)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            return False, "; ".join(problems[:3]) + more, SMSHUB_SERVICES_ADVICE
        totals: dict[str, int] = {}
        for _, _, service, count in _offered(body):
            totals[service] = totals.get(service, 0) + count
        most = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))
        operators = sum(len(item["operatorMap"]) for item in body["countryList"])
        listed = ", ".join(f"{_shown(s, 20)} {n}" for s, n in most[:5])
        return True, (f"{len(body['countryList'])} countries, {operators} operators; "
                      + (f"numbers per service: {listed}{', …' if len(most) > 5 else ''}"
                         if most else "no service offered")), None

    def check_services(self):
        answer = self.post({"action": "GET_SERVICES"})
        passed, detail, advice = self.services_shape(answer)
        if passed:
            self.offered = _offered(answer.json() or {})
        return passed, detail, advice

    def check_wrong_key(self):
        answer = self.post({"action": "GET_SERVICES"}, key=self.key + "-wrong")
        return _expect_error(answer, 401, "BAD_KEY", "HTTP 401 BAD_KEY", ", not 401 BAD_KEY",
                             "A wrong key must be refused with HTTP 401 {\"status\":\"ERROR\","
                             "\"error\":\"BAD_KEY\"}: anyone could take your numbers "
                             "otherwise.", self.caller)

    def _choose(self, service: str | None) -> tuple[str, str, str, int] | None:
        """Where to ask for numbers: the (country, operator, service, count) offering the
        most numbers of `service` (None: of any service); None if it is not offered."""
        if self.offered is None:
            raise Skipped("not run: GET_SERVICES gave no answer to ask numbers from")
        cells = [c for c in self.offered if service is None or c[2] == service]
        return max(cells, key=lambda cell: cell[3]) if cells else None  # the first largest

    def _number_request(self, *, excluded: list[str] | None = None) -> dict:
        assert self.cell is not None
        country, operator, service, _ = self.cell
        body = {"action": "GET_NUMBER", "country": country, "operator": operator,
                "service": service, "sum": 0, "currency": RUB}
        if excluded is not None:
            body["exceptionPhoneSet"] = excluded  # strings, as SMSHub sends them
        return body

    def check_reserve(self, count: int, service: str | None):
        """`count` simultaneous GET_NUMBER (marked as tests, in roubles) where GET_SERVICES
        offered the most numbers: each a distinct number, `number` and `activationId` JSON
        integers, NO_NUMBERS only past what was offered; each FINISHed twice with status 5
        (returned: nothing spent), SUCCESS both times. Every operation opened is finished,
        also when something fails midway or on Ctrl-C."""
        chosen = self._choose(service)
        if chosen is None:
            where = f"at {self.caller.path}"
            if service:
                return (False, f"{service} is not offered {where}",
                        f"Offer {service} to {self.caller.name} (RENTBOX_SERVICES, or its "
                        "services in the buyers file) and import numbers before the test.")
            return (False, f"no service is offered {where}",
                    "Offer services (RENTBOX_SERVICES) and import numbers before the test.")
        self.cell = chosen
        country, operator, service, offered = chosen
        request = self._number_request()
        answers: list[Answer | Exception | None] = [None] * count

        opened: list[tuple[int, str]] = []
        problems: list[str] = []
        marked, no_numbers = True, 0
        try:
            all_at_once(answers, lambda: self.post(request, test=True), self.target.timeout_s)
        finally:
            # Also on Ctrl-C: finish every operation the calls opened.
            for answer in answers:
                if answer is None:
                    continue
                if isinstance(answer, Exception):
                    problems.append(str(answer))
                    continue
                self.number_s.append(answer.seconds)
                kind, issued, wrong = read_number(answer)
                problems += wrong
                if kind == "issued" and issued:
                    opened.append(issued)
                    marked = marked and answer.headers.get(TEST_HEADER.lower()) == "1"
                elif kind == "no_numbers":
                    no_numbers += 1
            problems += finish_all(self.target, self.key, opened, path=self.caller.path)
        numbers = [number for _, number in opened]
        self.issued = list(dict.fromkeys(numbers))
        where = f"{_shown(service, 20)} in {_shown(country, 30)}/{_shown(operator, 30)}"
        detail = f"{len(opened)} of {count} reserved for {where}"
        if len(set(numbers)) != len(numbers):
            problems.append("the same number was issued twice")
        elif opened:
            detail += ", all distinct"
        if no_numbers:
            detail += f"; {no_numbers} NO_NUMBERS ({offered} offered)"
            if len(opened) < min(count, offered):
                problems.append(f"GET_SERVICES offered {offered} but {len(opened)} were "
                                "issued: the protocol blocks a partner for 30 min whose "
                                "counts it cannot issue (if real buyers took numbers "
                                "meanwhile, run the test again)")
        detail += ("; marked as tests (nothing spent, nothing booked)" if marked and opened
                   else f"; not marked as tests (the server ignores {TEST_HEADER})"
                   if opened else "")
        if problems:
            return False, detail + "; " + "; ".join(problems[:3]), (
                "Every GET_NUMBER must answer a distinct number as {\"number\": <integer>, "
                "\"activationId\": <integer>, \"status\": \"SUCCESS\"} or NO_NUMBERS, and "
                "every FINISH SUCCESS, twice: see the server's log.")
        if not opened:
            return False, detail, "Import numbers (rentbox numbers import) before the test."
        return True, detail + "; each FINISHed twice with status 5, SUCCESS", None

    def check_exception(self):
        """One more GET_NUMBER, excluding every number just issued by exceptionPhoneSet
        (as strings, the protocol's type): NO_NUMBERS, or a number none of them starts."""
        if not self.issued:
            raise Skipped("not run: no number was issued to exclude")
        excluded = self.issued
        answer = self.post(self._number_request(excluded=excluded), test=True)
        self.number_s.append(answer.seconds)
        kind, issued, problems = read_number(answer)
        if issued:
            problems += finish_all(self.target, self.key, [issued], path=self.caller.path)
        excluded_said = (f"{len(excluded)} issued number{'' if len(excluded) == 1 else 's'}"
                         " excluded as string prefixes")
        if kind == "no_numbers" and not problems:
            return True, f"NO_NUMBERS, {excluded_said} (no other number free)", None
        if kind == "issued" and issued and any(issued[1].startswith(p) for p in excluded):
            return (False, f"{issued[1]} issued although exceptionPhoneSet excluded it",
                    "GET_NUMBER must never issue a number that starts with a prefix of "
                    "exceptionPhoneSet (the protocol's test 7 fails it).")
        if kind == "issued" and not problems:
            return True, (f"another number issued, {excluded_said}; FINISHed twice with "
                          "status 5, SUCCESS"), None
        if kind == "other" and _status_advice(answer, self.caller):
            return False, answer.described(), _status_advice(answer, self.caller)
        return False, "; ".join(problems[:3]), (
            "GET_NUMBER must take exceptionPhoneSet as an array of strings (SMSHub sends "
            "[\"7918\", \"79281\"]) and answer a number or NO_NUMBERS: see the server's log.")

    def check_timing(self) -> Check:
        """The protocol's limit: every GET_NUMBER answered within SMSHUB_LIMIT_S, as timed
        here (the network to this machine included)."""
        if not self.number_s:
            return Check(SMSHUB_TIMING, SKIPPED, 0.0, "not run: no GET_NUMBER was answered"
                         if self.reserve else "not run: --reserve N sends GET_NUMBER")
        slowest = max(self.number_s)
        margin = SMSHUB_LIMIT_S - slowest
        if margin >= 0:
            return Check(SMSHUB_TIMING, PASSED, slowest,
                         f"slowest of {len(self.number_s)} GET_NUMBER {slowest:.3f} s, "
                         f"{margin:.3f} s inside the protocol's 3 s")
        return Check(SMSHUB_TIMING, FAILED, slowest,
                     f"slowest of {len(self.number_s)} GET_NUMBER {slowest:.3f} s, "
                     f"{-margin:.3f} s over the protocol's 3 s",
                     f"{self.caller.name} fails a partner whose GET_NUMBER takes more than 3 s "
                     "(the protocol's test 5): check the server's load, its disk and the "
                     "proxy's buffering; the network counts too, so test from near the buyer.")


def read_number(answer: Answer) -> tuple[str, tuple[int, str] | None, list[str]]:
    """An SMSHub GET_NUMBER answer: its kind (issued, no_numbers or other), the operation
    it opened as (activationId, number) to FINISH it (also when sent with the wrong types,
    so that it is finished all the same), and what is wrong with it."""
    body = answer.json() or {}
    if body.get("status") == "NO_NUMBERS":
        return "no_numbers", None, []
    if answer.status != 200 or body.get("status") != "SUCCESS":
        return "other", None, [answer.described(80)]
    problems = []
    fields = {}
    for name in ("number", "activationId"):
        value = body.get(name)
        if type(value) is int and value >= 0:
            fields[name] = value
            continue
        problems.append(f"{name} {_shown(value)} is not a whole number"
                        + (" (a string: the protocol's test 3 fails it; a JSON integer is "
                           "due)" if isinstance(value, str) else ""))
        if isinstance(value, str) and value.isascii() and value.isdigit():
            fields[name] = int(value)
    if "activationId" not in fields:
        problems.append("an operation was opened that cannot be FINISHed: see `rentbox ops "
                        "list`")
        return "issued", None, problems
    return "issued", (fields["activationId"], str(fields.get("number", "?"))), problems


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
