"""Onlinesim's v1 calls: GET_SERVICES, GET_NUMBER, FINISH_ACTIVATION for rent and for
single-service activations, on their own paths and dispatched from `POST /` (protocol.md
1–3 and 6). Authenticated by the API key (calls.py does what every buyer's calls share)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import bottle

from rentbox import operations, protocol
from rentbox.config import ONLINESIM
from rentbox.errors import InvalidInput
from rentbox.web import calls
from rentbox.web.answers import header

if TYPE_CHECKING:
    from rentbox.web import Context

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
    rules = ctx.settings.rules
    clock, connections = ctx.clock, ctx.connections

    def get_services(body: dict, product: str | None) -> dict:
        """Rent's counts, activations' or (on `POST /`) both in one operatorMap."""
        counts = operations.available_counts(connections.get(), clock.now(), rules,
                                             rent=product != ACTIVATION,
                                             activations=product != RENT)
        return protocol.services_answer(counts.rent, counts.activations)

    def get_number(body: dict, product: str | None) -> dict:
        # `call` authenticated the request before this: only the key's holder marks tests.
        test = header(calls.TEST_HEADER) == "1"
        if product is None:  # POST /: service 'rent' is a rental, any other an activation
            product = RENT if body.get("service") == "rent" else ACTIVATION
        request = (protocol.parse_rent_request(body, test=test) if product == RENT
                   else protocol.parse_activation_request(body, test=test))
        late = calls.deadline(ctx)
        issued = ctx.write(lambda db: operations.open_operation(db, clock, request, rules,
                                                                 deadline=late))
        return number_answer(issued, test)

    def finish_activation(body: dict, product: str | None) -> dict:
        # The id finds the operation, rental or activation, whatever path it came on.
        request = protocol.parse_finish_request(body)
        late = calls.deadline(ctx)
        ctx.write(lambda db: operations.finish_operation(db, clock, request, rules,
                                                         deadline=late))
        return {"status": "SUCCESS"}

    calls.mount(app, ctx, buyer=ONLINESIM, key=ctx.settings.api_key, paths=PATHS,
                handlers={"GET_SERVICES": get_services, "GET_NUMBER": get_number,
                          "FINISH_ACTIVATION": finish_activation},
                check_dispatch=check_dispatch)


def number_answer(issued: operations.Issued | None, test: bool) -> dict:
    """GET_NUMBER's answer (the same in Onlinesim's and SMSHub's protocols)."""
    if issued is None:
        return {"status": "NO_NUMBERS"}
    if test:
        bottle.response.set_header(calls.TEST_HEADER, "1")  # the self-test sees it was marked
    return {"number": int(issued.number), "activationId": issued.activation_id,
            "status": "SUCCESS"}


def check_dispatch(body: dict) -> None:
    """`POST /` (a single URL, SMSHub style): the three actions, for rent and activations
    alike (protocol.md 1)."""
    action = body["action"]
    if action not in ("GET_SERVICES", "GET_NUMBER", "FINISH_ACTIVATION"):
        raise InvalidInput(f"unknown action {action!r}")
