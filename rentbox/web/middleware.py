"""WSGI middleware around the app: they wrap every answer, error pages included."""

from __future__ import annotations

import gzip
import logging
import time
from typing import Iterable

from rentbox.web.answers import JSON_TYPE, json_error_body, loggable_path

access_log = logging.getLogger("rentbox.access")


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
    which carry the key; never the query string, which a caller could put it in; nor the
    token in a path (`/sms/ejoin/<token>` is logged `/sms/ejoin/***`)."""

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
                loggable_path(environ.get("PATH_INFO", "")),
                seen.get("status", "-"),
                (time.perf_counter() - started) * 1000,
            )
        return result
