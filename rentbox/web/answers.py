"""What every route shares: one JSON answer shape, errors, reading a body, tokens.

A route's handler returns a dict or raises; `answering` maps every outcome to one JSON
answer, in one place.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import zlib
from typing import Callable
from urllib.parse import parse_qs

import bottle

from rentbox import protocol
from rentbox.errors import InvalidInput, Unavailable

log = logging.getLogger("rentbox.web")

JSON_TYPE = "application/json; charset=utf-8"


class ApiError(Exception):
    """An answer other than success, with its HTTP status and `error` text."""

    def __init__(self, status: int, error: str):
        super().__init__(error)
        self.status = status
        self.error = error


def answering(handler: Callable[[], dict]) -> Callable[[], str]:
    """Run a route's handler and map every outcome to one JSON answer, in one place."""

    def route() -> str:
        try:
            return json_answer(200, handler())
        except ApiError as error:
            return error_answer(error.status, error.error)
        except protocol.NoOperation:
            # protocol.md 3.3: an unknown activationId is an answer, not an HTTP error.
            return json_answer(200, {"status": "ERROR", "error": protocol.NoOperation.code})
        except InvalidInput as error:
            return error_answer(400, str(error))
        except Unavailable as error:
            # Retryable: nothing was stored, and the caller (Onlinesim, a gateway) tries
            # again. No traceback: a full disk is a state, not a bug.
            log.warning("%s answered 503: %s", loggable_path(bottle.request.environ.get(
                "PATH_INFO", "")), error)
            return error_answer(503, str(error))
        except Exception:
            # The traceback names code, not values: no key or body reaches the log.
            log.exception("unexpected error in %s", loggable_path(bottle.request.path))
            return error_answer(500, "internal error; see the server log")

    return route


def json_answer(status: int, payload: dict) -> str:
    bottle.response.status = status
    bottle.response.content_type = JSON_TYPE
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def error_answer(status: int, error: str) -> str:
    return json_answer(status, {"status": "ERROR", "error": error})


def json_error_body(error: str) -> bytes:
    """The one error shape, as bytes, for answers made outside Bottle."""
    return json.dumps({"status": "ERROR", "error": error}, ensure_ascii=False,
                      separators=(",", ":")).encode("utf-8")


def header(name: str) -> str | None:
    """A request header as WSGI hands it over (latin-1 text). Bottle's get_header decodes
    it as UTF-8 and raises on other bytes: a 500 from any caller with a bad header."""
    return bottle.request.environ.get("HTTP_" + name.upper().replace("-", "_"))


def configured(secret: str | None, env: str, path: str) -> bytes:
    if not secret:
        # 503, not 4xx: a gateway retries it, so no SMS is lost while this is being fixed.
        raise ApiError(503, f"{path} is off: set {env} on the server to turn it on")
    return secret.encode("utf-8")


# HTTP's optional whitespace (RFC 9110 5.6.3): spaces and tabs, nothing else. str.strip()
# would also take "\xa0", "\x85" and the other Unicode spaces off the latin-1 text WSGI
# hands over, and a credential with one of those around it would compare equal.
OWS = " \t"


def credentials(authorization: str | None, scheme: str) -> str | None:
    """The credentials of an `Authorization` header in `scheme` ("bearer", "basic"; any
    case), without the spaces and tabs around them; None when there is no such header or
    it is in another scheme: that is no credential, rather than a wrong one."""
    if authorization is None:
        return None
    name, _, value = authorization.strip(OWS).partition(" ")
    return value.strip(OWS) if name.lower() == scheme else None


def check_token(environ: dict, token: bytes) -> None:
    """The gateway token, as a Bearer header or, for boxes that cannot set headers, in the
    query string (`?token=…`); every one presented must match, compared in constant time.
    An `Authorization` header in another scheme presents nothing. (The access log never
    writes the query string.)"""
    presented: list[bytes] = []
    bearer = credentials(environ.get("HTTP_AUTHORIZATION"), "bearer")
    if bearer is not None:
        presented.append(bearer.encode("latin-1", "replace"))
    presented += [value.encode("utf-8", "replace") for value in query_values(environ, "token")]
    if not presented or not all(hmac.compare_digest(value, token) for value in presented):
        raise ApiError(401, "BAD_TOKEN")


def query_values(environ: dict, name: str) -> list[str]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).get(name, [])


def query(environ: dict, name: str) -> str | None:
    """One query-string parameter (the last if repeated), or None."""
    values = query_values(environ, name)
    return values[-1] if values else None


def read_body(environ: dict, limit: int) -> bytes:
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


def printable(path: str) -> str:
    # A path is caller-controlled: keep control characters out of the log.
    if not path.isprintable():
        path = "".join(c if c.isprintable() else "?" for c in path)
    return path[:200]


# The gateway token in a path (`POST /sms/ejoin/<token>`), and in any path a box that was
# set up with one could call by mistake (`/SMS/ejoin/<token>/`, which is a 404).
_PATH_SECRET = re.compile(r"(?i)(/ejoin/).*")


def loggable_path(path: str) -> str:
    """A request path as the log may show it: printable, without a token in it."""
    return printable(_PATH_SECRET.sub(r"\1***", path))
