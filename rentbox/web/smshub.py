"""SMSHub-protocol buyers' calls (protocol.md 7): SMSHub at `POST /smshub`, each buyer of
the RENTBOX_BUYERS file at `POST /buyer/<name>`, each authenticated by its own key. One
URL per buyer, dispatched on the body's action; the wire format is smshub.py's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import bottle

from rentbox import operations, smshub
from rentbox.config import SMSHUB, Buyer
from rentbox.errors import InvalidInput
from rentbox.web import calls
from rentbox.web.answers import header
from rentbox.web.onlinesim import number_answer

if TYPE_CHECKING:
    from rentbox.web import Context

ACTIONS = ("GET_SERVICES", "GET_NUMBER", "FINISH_ACTIVATION")


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    for buyer in ctx.settings.rules.buyers:
        if buyer.protocol == SMSHUB:
            _mount(app, ctx, buyer)


def _mount(app: bottle.Bottle, ctx: "Context", buyer: Buyer) -> None:
    rules = ctx.settings.rules
    clock, connections = ctx.clock, ctx.connections

    def get_services(body: dict, product: str | None) -> dict:
        view = operations.pool_view(connections.get(), clock.now(), rules, buyer.name,
                                    rent=False)
        return smshub.services_answer(view)

    def get_number(body: dict, product: str | None) -> dict:
        test = header(calls.TEST_HEADER) == "1"  # authenticated by its key before this
        request = smshub.parse_number_request(body, buyer=buyer.name, test=test)
        late = calls.deadline(ctx, smshub.DEADLINE_S)
        issued = ctx.write(lambda db: operations.open_operation(db, clock, request, rules,
                                                                 deadline=late))
        return number_answer(issued, test)

    def finish_activation(body: dict, product: str | None) -> dict:
        request = smshub.parse_finish_request(body, buyer=buyer.name)
        late = calls.deadline(ctx, smshub.DEADLINE_S)
        ctx.write(lambda db: operations.finish_operation(db, clock, request, rules,
                                                         deadline=late))
        return {"status": "SUCCESS"}

    calls.mount(app, ctx, buyer=buyer.name, key=buyer.key, paths={buyer.path: (None, None)},
                handlers={"GET_SERVICES": get_services, "GET_NUMBER": get_number,
                          "FINISH_ACTIVATION": finish_activation},
                check_dispatch=check_dispatch)


def check_dispatch(body: dict) -> None:
    if body["action"] not in ACTIONS:
        raise InvalidInput(f"unknown action {body['action']!r}")
