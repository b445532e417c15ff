"""The SMSHub agent protocol (protocol.md 7): the adapter for SMSHub and its clones
(GrizzlySMS, SMSBower, …), each a buyer on the same pool as Onlinesim.

Its calls are Onlinesim's v1 activation calls with a few differences, all handled here
and nowhere else (the core knows buyers, products and services, never a wire format):

- GET_SERVICES names real operators only: `any` only for a country whose numbers have
  no operator, never beside real operators (SMSHub's Appendix 2);
- GET_NUMBER carries `currency` (ISO 4217 numeric: 643 roubles, 840 dollars) and
  string prefixes; it is answered within 3 s, or not at all (DEADLINE_S);
- FINISH_ACTIVATION's income is the GET_NUMBER `sum`, in its currency;
- PUSH_SMS has an integer `phone`, no `service`, and is delivered only when the answer's
  body says `"status": "SUCCESS"`: anything else is sent again after the retry pause,
  and no answer is terminal (the SMS expires only when its operation ends).

The protocol's source is SMSHub's "Agent Protocol" of 6 March 2024, checked against
agents that serve it (mford7998a/smshub-protocol, mford7998a/smshub-agent).
"""

from __future__ import annotations

import json

from rentbox import buyers, protocol
from rentbox.errors import InvalidInput
from rentbox.protocol import FinishRequest, NumberRequest
from rentbox.push import Outcome, Wire, excerpt

# SMSHub gives up on a GET_NUMBER not answered within 3 s (its protocol's test 5): one
# that would be committed later is rolled back and answered 503 instead (operations'
# deadline), leaving time for the answer to travel back through the reverse proxy.
DEADLINE_S = 2.5

# ISO 4217 numeric codes SMSHub sends in `currency`, and the letters rentbox books.
CURRENCIES = {643: "RUB", 840: "USD"}


def parse_number_request(body: dict, *, buyer: str, test: bool = False) -> NumberRequest:
    """GET_NUMBER: service (as the buyer names it), sum in `currency`, country, operator
    (`any`: any) and exceptionPhoneSet."""
    if body.get("service") is None:
        raise InvalidInput("service is required")
    service = protocol.service_name(body["service"], "service")
    if service == protocol.RENT:
        raise InvalidInput("service 'rent' is not offered on the SMSHub protocol")
    if body.get("country") is None:
        raise InvalidInput("country is required")
    raw = body.get("currency", 643)
    code = protocol.whole(raw)
    if code not in CURRENCIES:
        raise InvalidInput(f"currency must be 643 (RUB) or 840 (USD), not {raw!r}")
    return protocol.number_request(body, service, test, buyer=buyer,
                                   currency=CURRENCIES[code])


def parse_finish_request(body: dict, *, buyer: str) -> FinishRequest:
    """FINISH_ACTIVATION: activationId and status (1, 3, 4, 5). The income is the
    GET_NUMBER `sum`, so a `sum` here is not read."""
    return protocol.parse_finish_request(
        {k: v for k, v in body.items() if k != "sum"}, buyer=buyer)


def services_answer(view: buyers.View) -> dict:
    """GET_SERVICES: {"countryList": [{"country", "operatorMap": {operator: {service:
    n}}}], "status": "SUCCESS"}. A country's numbers without an operator are named `any`
    only when none of its numbers has one; otherwise they are left out (never `any`
    beside real operators: a buyer can ask for them by no name)."""
    listed = []
    for country in sorted(view.services):
        operators = view.services[country]
        named = {op: counts for op, counts in operators.items() if op}
        operator_map = named or {"any": operators[""]}
        listed.append({"country": country, "operatorMap": operator_map})
    return {"countryList": listed, "status": "SUCCESS"}


def push_body(sms: dict, key: str) -> dict:
    """PUSH_SMS for one stored SMS."""
    return {"action": "PUSH_SMS", "smsId": sms["id"], "phone": int(sms["number"]),
            "phoneFrom": sms["sender"], "text": sms["text"], "key": key}


def read_answer(status: int, body: bytes) -> Outcome:
    """A PUSH_SMS answer: delivered only on a 2xx whose JSON body's `status` is
    SUCCESS; anything else is sent again (the protocol names no terminal answer)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except (ValueError, RecursionError):
        parsed = None
    said = parsed.get("status") if isinstance(parsed, dict) else None
    if 200 <= status < 300 and isinstance(said, str) and said.strip().upper() == "SUCCESS":
        return Outcome("delivered")
    if isinstance(parsed, dict):
        detail = " ".join(f"{k} {excerpt(str(parsed[k]), 60)}" for k in ("status", "error")
                          if parsed.get(k) is not None) or "no status"
    else:
        detail = excerpt(text) if text else "an empty body"
    return Outcome("retry", f"HTTP {status} with {detail}")


WIRE = Wire(push_body, read_answer)
