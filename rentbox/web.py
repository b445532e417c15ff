"""The HTTP face: Onlinesim's rent calls, authentication, one JSON error shape, gzip, access log.

Routes are thin: read the body, authenticate, parse with `protocol`, call one core
function, shape the answer. No SQL here.
"""

from __future__ import annotations

import gzip
import hmac
import json
import logging
import time
import zlib
from typing import Callable, Iterable
from urllib.parse import parse_qs

import bottle

from rentbox import __version__, gateways, meta, operations, presence, protocol, sms
from rentbox.clock import Clock
from rentbox.config import Settings
from rentbox.db import Connections
from rentbox.errors import InvalidInput, Unavailable
from rentbox.gateways import common, dinstar, ejoin

log = logging.getLogger("rentbox.web")
access_log = logging.getLogger("rentbox.access")

JSON_TYPE = "application/json; charset=utf-8"


class ApiError(Exception):
    """An answer other than success, with its HTTP status and `error` text."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status = status
        self.error = error


BAD_KEY = ApiError(401, "BAD_KEY")


def make_app(settings: Settings, clock: Clock, connections: Connections,
             on_sms: Callable[[], None] = lambda: None) -> bottle.Bottle:
    """The Bottle app: Onlinesim's rent calls and the SMS intakes. Serve it via `wsgi()`.

    `on_sms` is called after an SMS was stored for a rental (it wakes the pusher).
    """
    app = bottle.Bottle()
    key = settings.api_key.encode("utf-8")
    rules = settings.rules
    dinstar_tz = dinstar.time_zone(settings.dinstar_tz)
    calls = meta.CallLog()

    def get_services(body: dict) -> dict:
        counts = operations.available_counts(connections.get(), clock.now(), rules)
        return protocol.services_answer(counts)

    def get_number(body: dict) -> dict:
        request = protocol.parse_rent_request(body)
        rental = operations.open_rent(connections.get(), clock, request, rules)
        if rental is None:
            return {"status": "NO_NUMBERS"}
        return {"number": int(rental.number), "activationId": rental.activation_id,
                "status": "SUCCESS"}

    def finish_activation(body: dict) -> dict:
        request = protocol.parse_finish_request(body)
        operations.finish_rent(connections.get(), clock, request, rules)
        return {"status": "SUCCESS"}

    handlers: dict[str, Callable[[dict], dict]] = {
        "GET_SERVICES": get_services,
        "GET_NUMBER": get_number,
        "FINISH_ACTIVATION": finish_activation,
    }

    def onlinesim_call(path_action: str | None) -> dict:
        """One protocol call; `path_action` is None on `POST /`, which dispatches."""
        body = protocol.parse_body(_read_body(bottle.request.environ, settings.max_body_bytes))
        _authenticate(body, _header("Authorization"), key)
        action = body.get("action")
        if action is None:
            raise InvalidInput("action is required")
        if path_action is None:
            _check_dispatch(body)
        elif action != path_action:
            raise InvalidInput(f"action must be {path_action} on this path, not {action!r}")
        if action == "GET_SERVICES":
            # Polled every 2 minutes: its access-log line is debug, not info.
            bottle.request.environ["rentbox.log_level"] = logging.DEBUG
        answer = handlers[action](body)
        try:
            calls.note(connections.get(), clock.now(), action)
        except Unavailable:
            pass  # the disk is full: /health, status and the log say so already
        except Exception:
            # The call itself is committed: its answer must go out whatever happens here.
            log.exception("could not note Onlinesim's call")
        return answer

    def store_sms(incoming: sms.IncomingSms) -> dict:
        accepted = sms.accept_sms(connections.get(), clock, incoming, rules)
        if accepted.push_state == "pending" and not accepted.duplicate:
            on_sms()
        return {"status": "SUCCESS", "smsId": accepted.sms_id}

    def store_push(source: str, rows: list[common.Row]) -> dict:
        result = common.accept_push(connections.get(), clock, rules, source, rows)
        if result.has_new_for_rentals:
            on_sms()
        return result.as_dict()

    def gateway_body(path: str) -> dict:
        """The JSON body of a gateway's call, once its token checks out."""
        token = _configured(settings.gateway_token, "RENTBOX_GATEWAY_TOKEN", path)
        _check_token(bottle.request.environ, token)
        return protocol.parse_body(_read_body(bottle.request.environ, settings.max_body_bytes))

    def sms_json() -> dict:
        """POST /sms: the generic intake for forwarders and scripts (gateway token)."""
        return store_sms(gateways.parse_json_sms(gateway_body("/sms")))

    def sms_ejoin() -> dict:
        """POST /sms/ejoin: an Ejoin box's pushes, SMS and port states (gateway token)."""
        body = gateway_body("/sms/ejoin")
        push = ejoin.parse_push(body, box=_query(bottle.request.environ, "box"))
        if push.rows is not None:
            return store_push(ejoin.SOURCE, push.rows)
        return common.report_ports(connections.get(), clock, rules, push.ports)

    def sms_dinstar() -> dict:
        """POST /sms/dinstar: a Dinstar box's Push SMS (gateway token)."""
        rows = dinstar.parse_push(gateway_body("/sms/dinstar"), dinstar_tz)
        if rows is None:  # another push of the box (SMS results, USSD, …): not used
            return {"status": "SUCCESS", "ignored": True}
        return store_push(dinstar.SOURCE, rows)

    def sms_smsgate() -> dict:
        """POST /sms/smsgate: SMSGate's signed `sms:received` webhook."""
        signing_key = _configured(settings.smsgate_key, "RENTBOX_SMSGATE_KEY", "/sms/smsgate")
        raw = _read_body(bottle.request.environ, settings.max_body_bytes)
        try:
            gateways.verify_smsgate_signature(
                raw, signature=_header("X-Signature"), timestamp=_header("X-Timestamp"),
                key=signing_key, now=clock.now(), max_skew_s=settings.smsgate_max_skew_s)
        except gateways.BadSignature as error:
            raise ApiError(401, str(error)) from None
        envelope = protocol.parse_body(raw)
        report = gateways.parse_smsgate_presence(envelope)
        if report is not None:
            if not rules.presence:
                return {"status": "SUCCESS", "ignored": True}
            return presence.report(connections.get(), clock, rules, report).as_dict()
        incoming = gateways.parse_smsgate(envelope)
        if incoming is None:  # another event (sms:sent …): nothing to store
            return {"status": "SUCCESS", "ignored": True}
        return store_sms(incoming)

    def presence_report() -> dict:
        """POST /presence: a gateway's list of the SIMs it has online now (gateway token)."""
        token = _configured(settings.gateway_token, "RENTBOX_GATEWAY_TOKEN", "/presence")
        _check_token(bottle.request.environ, token)
        body = protocol.parse_body(_read_body(bottle.request.environ,
                                              settings.max_presence_body_bytes))
        report = gateways.parse_presence(body)
        try:
            return presence.report(connections.get(), clock, rules, report).as_dict()
        except presence.PresenceOff as error:
            raise ApiError(409, str(error)) from None

    app.route("/getServicesRent", "POST", _answering(lambda: onlinesim_call("GET_SERVICES")))
    app.route("/getNumberRent", "POST", _answering(lambda: onlinesim_call("GET_NUMBER")))
    app.route("/finishActivationRent", "POST",
              _answering(lambda: onlinesim_call("FINISH_ACTIVATION")))
    app.route("/", "POST", _answering(lambda: onlinesim_call(None)))
    app.route("/sms", "POST", _answering(sms_json))
    app.route("/sms/smsgate", "POST", _answering(sms_smsgate))
    app.route("/sms/ejoin", "POST", _answering(sms_ejoin))
    app.route("/sms/dinstar", "POST", _answering(sms_dinstar))
    app.route("/presence", "POST", _answering(presence_report))

    @app.get("/health")
    def health():
        """Liveness for monitors and proxies: no authentication, nothing secret. 503 when
        the database cannot be read, or cannot be written (every rental would fail)."""
        try:
            db = connections.get()
            db.ping()
            problem = db.write_problem()
        except Exception:
            log.exception("health check: database unavailable")
            return _error(503, "database unavailable")
        if problem is not None:
            return _error(503, f"database cannot be written: {problem}")
        return _json(200, {"status": "SUCCESS", "version": __version__})

    def error_page(res: bottle.HTTPError) -> str:
        if res.status_code == 404:
            message = f"no such path: {bottle.request.path}"
        elif res.status_code == 405:
            message = (f"method {bottle.request.method} is not allowed on "
                       f"{bottle.request.path}; allowed: {res.headers.get('Allow', '')}")
        else:
            message = "internal error; see the server log"
        return _error(res.status_code, message)

    # Bottle answers with an HTML page unless told otherwise, for every status.
    app.default_error_handler = error_page
    return app


def wsgi(settings: Settings, clock: Clock, connections: Connections,
         on_sms: Callable[[], None] = lambda: None):
    """The app as served: Bottle wrapped in path checks, gzip answers and the access log."""
    return AccessLog(GzipAnswers(StrictPaths(make_app(settings, clock, connections, on_sms))))


def _answering(handler: Callable[[], dict]) -> Callable[[], str]:
    """Run a route's handler and map every outcome to one JSON answer, in one place."""

    def route() -> str:
        try:
            return _json(200, handler())
        except ApiError as error:
            return _error(error.status, error.error)
        except protocol.NoOperation:
            # protocol.md 3.3: an unknown activationId is an answer, not an HTTP error.
            return _json(200, {"status": "ERROR", "error": protocol.NoOperation.code})
        except InvalidInput as error:
            return _error(400, str(error))
        except Unavailable as error:
            # Retryable: nothing was stored, and the caller (Onlinesim, a gateway) tries
            # again. No traceback: a full disk is a state, not a bug.
            log.warning("%s answered 503: %s", _printable(bottle.request.environ.get(
                "PATH_INFO", "")), error)
            return _error(503, str(error))
        except Exception:
            # The traceback names code, not values: no key or body reaches the log.
            log.exception("unexpected error in %s", bottle.request.path)
            return _error(500, "internal error; see the server log")

    return route


def _header(name: str) -> str | None:
    """A request header as WSGI hands it over (latin-1 text). Bottle's get_header decodes
    it as UTF-8 and raises on other bytes: a 500 from any caller with a bad header."""
    return bottle.request.environ.get("HTTP_" + name.upper().replace("-", "_"))


def _configured(secret: str | None, env: str, path: str) -> bytes:
    if not secret:
        # 503, not 4xx: a gateway retries it, so no SMS is lost while this is being fixed.
        raise ApiError(503, f"{path} is off: set {env} on the server to turn it on")
    return secret.encode("utf-8")


def _check_token(environ: dict, token: bytes) -> None:
    """The gateway token, as a Bearer header or, for boxes that cannot set headers, in the
    query string (`?token=…`); every one presented must match, compared in constant time.
    (The access log never writes the query string.)"""
    presented: list[bytes | None] = []
    authorization = environ.get("HTTP_AUTHORIZATION")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        presented.append(value.strip().encode("latin-1", "replace")
                         if scheme.lower() == "bearer" else None)
    presented += [value.encode("utf-8", "replace") for value in _query_values(environ, "token")]
    if not presented or not all(
            value is not None and hmac.compare_digest(value, token) for value in presented):
        raise ApiError(401, "BAD_TOKEN")


def _query_values(environ: dict, name: str) -> list[str]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).get(name, [])


def _query(environ: dict, name: str) -> str | None:
    """One query-string parameter (the last if repeated), or None."""
    values = _query_values(environ, name)
    return values[-1] if values else None


def _json(status: int, payload: dict) -> str:
    bottle.response.status = status
    bottle.response.content_type = JSON_TYPE
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def _error(status: int, error: str) -> str:
    return _json(status, {"status": "ERROR", "error": error})


def _read_body(environ: dict, limit: int) -> bytes:
    """The request body, gunzipped if sent so, refused past `limit` bytes either way."""
    too_large = ApiError(413, f"body is larger than {limit} bytes")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise InvalidInput("Content-Length is not a number") from None
    if length > limit:
        raise too_large
    raw = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise too_large
    encoding = environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; use gzip")
    # Decompress at most limit+1 bytes: a small gzip bomb must not fill the memory.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        raise InvalidInput("body is not valid gzip") from None
    if len(body) > limit:
        raise too_large
    if not inflater.eof:
        raise InvalidInput("body is not valid gzip (truncated)")
    return body


def _authenticate(body: dict, authorization: str | None, key: bytes) -> None:
    """protocol.md 2: the body `key` or a Bearer token; every one presented must match."""
    presented = []
    if "key" in body:
        presented.append(body["key"])
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        presented.append(token.strip() if scheme.lower() == "bearer" else None)
    if not presented:
        raise BAD_KEY
    for candidate in presented:
        if not isinstance(candidate, str) or not hmac.compare_digest(
            candidate.encode("utf-8"), key
        ):
            raise BAD_KEY


def _check_dispatch(body: dict) -> None:
    """`POST /` (a single URL, SMSHub style): route on `action` and `service` (protocol.md 1)."""
    action = body["action"]
    if action in ("GET_NUMBER", "FINISH_ACTIVATION"):
        if body.get("service") != "rent":
            raise InvalidInput(f"{action} is served for service 'rent' only")
    elif action != "GET_SERVICES":
        raise InvalidInput(f"unknown action {action!r}")


# ---------------------------------------------------------------------------------------
# WSGI middleware: they wrap every answer, error pages included.
# ---------------------------------------------------------------------------------------


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and _is_zero(q[2:]))
    return False


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


class GzipAnswers:
    """Gzip every answer for a caller that sends `Accept-Encoding: gzip` (protocol.md 1)."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if not _accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")):
            def plain(status, headers, exc_info=None):
                return start_response(status, headers + [("Vary", "Accept-Encoding")], exc_info)

            return self.app(environ, plain)
        captured: dict = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: captured.setdefault("written", []).append(data)

        result = self.app(environ, capture)
        try:
            body = b"".join(captured.pop("written", [])) + b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        headers = [(k, v) for k, v in captured["headers"]
                   if k.lower() not in ("content-length", "content-encoding")]
        if body and environ.get("REQUEST_METHOD") != "HEAD":
            body = gzip.compress(body, compresslevel=5)
            headers.append(("Content-Encoding", "gzip"))
        headers += [("Content-Length", str(len(body))), ("Vary", "Accept-Encoding")]
        start_response(captured["status"], headers)
        return [body]


def json_error_body(error: str) -> bytes:
    """The one error shape, as bytes, for answers made outside Bottle."""
    return json.dumps({"status": "ERROR", "error": error}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


class StrictPaths:
    """404 for a path whose percent-escapes are not UTF-8. The server hands PATH_INFO
    over as latin-1 text of the unquoted bytes, and Bottle decodes it as UTF-8 dropping
    what does not decode: `/getNumber%ffRent` would reach GET_NUMBER, `/%ff` reach `/`."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        try:
            path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            body = json_error_body("no such path: it is not valid UTF-8")
            start_response("404 Not Found", [("Content-Type", JSON_TYPE),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)


class AccessLog:
    """One line per request: method, path, status, duration. Never the body or headers,
    which carry the key; never the query string, which a caller could put it in."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen: dict = {}

        def record(status, headers, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info)

        try:
            result: Iterable[bytes] = self.app(environ, record)
        finally:
            access_log.log(
                environ.get("rentbox.log_level", logging.INFO),
                "%s %s %s %.1fms",
                environ.get("REQUEST_METHOD"),
                _printable(environ.get("PATH_INFO", "")),
                seen.get("status", "-"),
                (time.perf_counter() - started) * 1000,
            )
        return result


def _printable(path: str) -> str:
    # A path is caller-controlled: keep control characters out of the log.
    if not path.isprintable():
        path = "".join(c if c.isprintable() else "?" for c in path)
    return path[:200]
