"""Buyers' calls over HTTP, whatever their protocol: read and authenticate the body,
check the action, run the protocol's handler, note the call, count it for /metrics. Each
protocol's routes (onlinesim.py, smshub.py) give their paths and handlers."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from typing import TYPE_CHECKING, Callable

import bottle

from rentbox import protocol
from rentbox.errors import InvalidInput, Unavailable
from rentbox.web.answers import ApiError, answering, credentials, header, read_body

if TYPE_CHECKING:
    from rentbox.web import Context

log = logging.getLogger("rentbox.web")

BAD_KEY = ApiError(401, "BAD_KEY")
# GET_NUMBER with this header set to 1 opens a test operation (rentbox selftest --reserve).
TEST_HEADER = "X-Rentbox-Test"
# Set by the server (server.py): seconds since the request's first byte arrived, when the
# application was handed it. Absent (an in-process call): it has just arrived.
ARRIVED_AGE_KEY = "rentbox.arrived_age_s"

# A handler: (the decoded body, the product its path serves or None) -> the answer.
Handler = Callable[[dict, "str | None"], dict]


def deadline(ctx: "Context", within_s: float | None = None) -> dt.datetime:
    """When the buyer gives up on this call: `call_deadline_s` (or its protocol's own
    `within_s`, if shorter) after its first byte arrived (the server says how long ago
    that was), on rentbox's clock."""
    age_s = bottle.request.environ.get(ARRIVED_AGE_KEY, 0.0)
    limit_s = ctx.settings.call_deadline_s
    if within_s is not None:
        limit_s = min(limit_s, within_s)
    return ctx.clock.now() + dt.timedelta(seconds=limit_s - age_s)


def mount(app: bottle.Bottle, ctx: "Context", *, buyer: str, key: str,
          paths: dict[str, tuple[str | None, str | None]], handlers: dict[str, Handler],
          check_dispatch: Callable[[dict], None]) -> None:
    """Serve `buyer`'s calls on `paths` (path -> (its action, or None for a path that
    dispatches on the body's action; the product it serves)), authenticated by `key`."""
    secret = key.encode("utf-8")
    clock, connections = ctx.clock, ctx.connections

    def call(path_action: str | None, product: str | None) -> dict:
        body = protocol.parse_body(read_body(bottle.request.environ,
                                             ctx.settings.max_body_bytes))
        if isinstance(body.get("action"), str) and body["action"] in handlers:
            bottle.request.environ["rentbox.action"] = body["action"]  # a metrics label
        authenticate(body, header("Authorization"), secret)
        action = body.get("action")
        if action is None:
            raise InvalidInput("action is required")
        if path_action is None:
            check_dispatch(body)
        elif action != path_action:
            raise InvalidInput(f"action must be {path_action} on this path, not {action!r}")
        if action not in handlers:
            raise InvalidInput(f"unknown action {action!r}")
        if action == "GET_SERVICES":
            # Polled every few seconds or minutes: its access-log line is debug, not info.
            bottle.request.environ["rentbox.log_level"] = logging.DEBUG
        answer = handlers[action](body, product)
        try:
            ctx.calls.note(connections.get(), clock.now(), action, buyer)
        except Unavailable:
            pass  # the disk is full: /health, status and the log say so already
        except Exception:
            # The call itself is committed: its answer must go out whatever happens here.
            log.exception("could not note %s's call", buyer)
        return answer

    def measured(path_action: str | None, product: str | None) -> dict:
        """`call`, timed and counted by action and outcome for /metrics."""
        started, outcome = time.perf_counter(), "error"
        try:
            answer = call(path_action, product)
            outcome = "no_numbers" if answer.get("status") == "NO_NUMBERS" else "success"
            return answer
        except Exception as error:
            outcome = outcome_of(error)
            raise
        finally:
            try:  # metrics never change an answer
                ctx.metrics.observe_call(
                    bottle.request.environ.get("rentbox.action") or path_action or "unknown",
                    outcome, time.perf_counter() - started)
            except Exception:
                log.exception("could not count %s's call", buyer)

    for path, (action, product) in paths.items():
        app.route(path, "POST", answering(
            lambda action=action, product=product: measured(action, product)))


def outcome_of(error: Exception) -> str:
    """The metrics' outcome of a call that raised (`answering` maps the same errors)."""
    if error is BAD_KEY:
        return "bad_key"
    if isinstance(error, protocol.NoOperation):
        return "no_operation"
    if isinstance(error, (InvalidInput, ApiError)):
        return "bad_request"  # malformed, too large, unknown encoding
    if isinstance(error, Unavailable):
        return "unavailable"
    return "error"


def authenticate(body: dict, authorization: str | None, key: bytes) -> None:
    """protocol.md 2: the body `key` or a Bearer token; every one presented must match.
    An `Authorization` header in another scheme (Basic, a bare key, empty) presents no
    key: it neither authenticates nor refuses the request."""
    presented = []
    if "key" in body:
        presented.append(body["key"])
    bearer = credentials(authorization, "bearer")
    if bearer is not None:
        presented.append(bearer)
    if not presented:
        raise BAD_KEY
    for candidate in presented:
        if not isinstance(candidate, str) or not hmac.compare_digest(
            candidate.encode("utf-8"), key
        ):
            raise BAD_KEY
