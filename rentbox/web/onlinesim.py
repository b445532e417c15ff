"""Onlinesim's v1 calls: GET_SERVICES, GET_NUMBER, FINISH_ACTIVATION for rent and for
single-service activations, on their own paths and dispatched from `POST /` (protocol.md
1–3 and 6). Authenticated by the API key."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import time
from typing import TYPE_CHECKING, Callable

import bottle

from rentbox import operations, protocol
from rentbox.errors import InvalidInput, Unavailable
from rentbox.web.answers import ApiError, answering, credentials, header, read_body

if TYPE_CHECKING:
    from rentbox.web import Context

log = logging.getLogger("rentbox.web")

BAD_KEY = ApiError(401, "BAD_KEY")
# GET_NUMBER with this header set to 1 opens a test rental (rentbox selftest --reserve).
TEST_HEADER = "X-Rentbox-Test"
# Set by the server (server.py): seconds since the request's first byte arrived, when the
# application was handed it. Absent (an in-process call): it has just arrived.
ARRIVED_AGE_KEY = "rentbox.arrived_age_s"

# Path → the action it serves and the product (rent, activation); (None, None) is
# `POST /`, which dispatches on the body's action and service (protocol.md 1).
RENT, ACTIVATION = "rent", "activation"
PATHS: dict[str, tuple[str | None, str | None]] = {
    "/getServicesRent": ("GET_SERVICES", RENT),
    "/getNumberRent": ("GET_NUMBER", RENT),
    "/finishActivationRent": ("FINISH_ACTIVATION", RENT),
    "/getServices": ("GET_SERVICES", ACTIVATION),
    "/getNumber": ("GET_NUMBER", ACTIVATION),
    "/finishActivation": ("FINISH_ACTIVATION", ACTIVATION),
    "/": (None, None),
}


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    key = ctx.settings.api_key.encode("utf-8")
    rules = ctx.settings.rules
    clock, connections = ctx.clock, ctx.connections

    def deadline() -> dt.datetime:
        """When Onlinesim gives up on this call: `call_deadline_s` after its first byte
        arrived (the server says how long ago that was), on rentbox's clock."""
        age_s = bottle.request.environ.get(ARRIVED_AGE_KEY, 0.0)
        return clock.now() + dt.timedelta(seconds=ctx.settings.call_deadline_s - age_s)

    def get_services(body: dict, product: str | None) -> dict:
        """Rent's counts, activations' or (on `POST /`) both in one operatorMap."""
        counts = operations.available_counts(connections.get(), clock.now(), rules,
                                             rent=product != ACTIVATION,
                                             activations=product != RENT)
        return protocol.services_answer(counts.rent, counts.activations)

    def get_number(body: dict, product: str | None) -> dict:
        # `call` authenticated the request before this: only the key's holder marks tests.
        test = header(TEST_HEADER) == "1"
        if product is None:  # POST /: service 'rent' is a rental, any other an activation
            product = RENT if body.get("service") == "rent" else ACTIVATION
        request = (protocol.parse_rent_request(body, test=test) if product == RENT
                   else protocol.parse_activation_request(body, test=test))
        issued = operations.open_operation(connections.get(), clock, request, rules,
                                           deadline=deadline())
        if issued is None:
            return {"status": "NO_NUMBERS"}
        if test:
            bottle.response.set_header(TEST_HEADER, "1")  # the self-test sees it was marked
        return {"number": int(issued.number), "activationId": issued.activation_id,
                "status": "SUCCESS"}

    def finish_activation(body: dict, product: str | None) -> dict:
        # The id finds the operation, rental or activation, whatever path it came on.
        request = protocol.parse_finish_request(body)
        operations.finish_operation(connections.get(), clock, request, rules,
                                    deadline=deadline())
        return {"status": "SUCCESS"}

    handlers: dict[str, Callable[[dict, str | None], dict]] = {
        "GET_SERVICES": get_services,
        "GET_NUMBER": get_number,
        "FINISH_ACTIVATION": finish_activation,
    }

    def call(path_action: str | None, product: str | None) -> dict:
        """One protocol call; `path_action` is None on `POST /`, which dispatches."""
        body = protocol.parse_body(read_body(bottle.request.environ,
                                             ctx.settings.max_body_bytes))
        if isinstance(body.get("action"), str) and body["action"] in handlers:
            bottle.request.environ["rentbox.action"] = body["action"]  # a metrics label
        authenticate(body, header("Authorization"), key)
        action = body.get("action")
        if action is None:
            raise InvalidInput("action is required")
        if path_action is None:
            check_dispatch(body)
        elif action != path_action:
            raise InvalidInput(f"action must be {path_action} on this path, not {action!r}")
        if action == "GET_SERVICES":
            # Polled every 2 minutes: its access-log line is debug, not info.
            bottle.request.environ["rentbox.log_level"] = logging.DEBUG
        answer = handlers[action](body, product)
        try:
            ctx.calls.note(connections.get(), clock.now(), action)
        except Unavailable:
            pass  # the disk is full: /health, status and the log say so already
        except Exception:
            # The call itself is committed: its answer must go out whatever happens here.
            log.exception("could not note Onlinesim's call")
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
                log.exception("could not count Onlinesim's call")

    for path, (action, product) in PATHS.items():
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


def check_dispatch(body: dict) -> None:
    """`POST /` (a single URL, SMSHub style): the three actions, for rent and activations
    alike (protocol.md 1)."""
    action = body["action"]
    if action not in ("GET_SERVICES", "GET_NUMBER", "FINISH_ACTIVATION"):
        raise InvalidInput(f"unknown action {action!r}")
