"""Onlinesim's v1 protocol, rent and activations: request fields parsed and validated,
answers shaped (protocol.md 3 and 6).

Pure functions over decoded JSON; no HTTP, no database. Every rejection is InvalidInput
with a message that names the field and what is wrong, which the web layer sends back
as `{"status": "ERROR", "error": "<message>"}`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from rentbox.errors import InvalidInput, NotFound

# FINISH_ACTIVATION statuses (protocol.md 3.3) and the outcome each one records.
FINISH_OUTCOMES = {1: "wrong_service", 3: "sold", 4: "cancelled", 5: "refunded"}
WRONG_SERVICE = 1
SOLD = 3
CANCELLED = 4

# The service of a long-term rental; any other service is a single-service activation.
RENT = "rent"
# A service name: Onlinesim's are short lower-case identifiers (vk, wa, tg, mailru, …).
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")

# activationId is a 64-bit signed integer in SQLite.
_MAX_ID = 2**63 - 1
# A price above a trillion roubles is a mistake, and its kopecks would not fit 64 bits.
_MAX_ROUBLES = 10**12
# The longest international number (ITU E.164): a longer exceptionPhoneSet prefix matches none.
MAX_NUMBER_DIGITS = 15


class NoOperation(NotFound):
    """FINISH for an activationId that rentbox never issued (answered with HTTP 200)."""

    code = "NO_OPERATION"

    def __init__(self, activation_id: int):
        super().__init__(f"no operation {activation_id}")


@dataclasses.dataclass(frozen=True)
class NumberRequest:
    """GET_NUMBER: a rental (service 'rent') or an activation for one service."""

    sum_kopecks: int
    country: str | None = None
    operator: str | None = None  # None means any operator
    excluded_prefixes: tuple[str, ...] = ()
    test: bool = False  # a self-test operation: no income, no failure (X-Rentbox-Test)
    service: str = RENT  # as the buyer named it (operations store its canonical name)
    buyer: str = "onlinesim"
    currency: str = "RUB"  # of `sum_kopecks`, in minor units (cents for USD)

    @property
    def is_rent(self) -> bool:
        return self.service == RENT


@dataclasses.dataclass(frozen=True)
class FinishRequest:
    """FINISH_ACTIVATION, of a rental or an activation (found by its id)."""

    activation_id: int
    status: int
    sum_kopecks: int | None = None
    buyer: str = "onlinesim"  # who sent it: only an operation of its own is found


def parse_body(raw: bytes) -> dict:
    """Decode a UTF-8 JSON object."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput("body is not UTF-8") from None
    except ValueError:
        raise InvalidInput("body is not valid JSON") from None
    except RecursionError:
        # A few kilobytes of '[' from anyone on the internet (field notes).
        raise InvalidInput("body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    try:
        # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 (and no
        # SQLite text) can hold: refuse them here rather than fail deep inside.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("body has invalid Unicode (an unpaired surrogate)") from None
    except RecursionError:
        raise InvalidInput("body is nested too deeply") from None
    return body


def parse_rent_request(body: dict, *, test: bool = False) -> NumberRequest:
    """GET_NUMBER (rent): service, sum, and the optional filters (protocol.md 3.2);
    `test` marks a self-test rental (the caller authenticated it)."""
    _require_rent_service(body, required=True)
    return number_request(body, RENT, test)


def parse_activation_request(body: dict, *, test: bool = False) -> NumberRequest:
    """GET_NUMBER for a single-service activation (protocol.md 6): a service name, the
    sum, and the same filters as rent. Whether the service is offered is the caller's
    question (an unoffered one is answered NO_NUMBERS, not refused)."""
    if body.get("service") is None:
        raise InvalidInput("service is required")
    service = service_name(body["service"], "service")
    if service == RENT:
        raise InvalidInput("service 'rent' is a long-term rental: send it as exactly \"rent\" "
                           "(on /getNumberRent or POST /)")
    return number_request(body, service, test)


def number_request(body: dict, service: str, test: bool, **more: object) -> NumberRequest:
    if "sum" not in body or body["sum"] is None:
        raise InvalidInput("sum is required")
    return NumberRequest(
        sum_kopecks=to_kopecks(body["sum"], "sum"),
        country=_optional_name(body, "country"),
        operator=_operator(body),
        excluded_prefixes=_prefixes(body.get("exceptionPhoneSet")),
        test=test,
        service=service,
        **more,
    )



def service_name(value: object, field: str) -> str:
    """A service name as Onlinesim writes them: a short lower-case identifier."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    name = value.strip().lower()
    if not _SERVICE_NAME.fullmatch(name):
        raise InvalidInput(f"{field} must be a short service name such as vk or wa "
                           f"(letters, digits, '_', '.', '-'; at most 32)")
    return name


def parse_finish_request(body: dict, *, buyer: str = "onlinesim") -> FinishRequest:
    """FINISH_ACTIVATION: activationId, status, and sum (protocol.md 3.3 and 6). The id
    alone finds the operation, whichever kind it is and whatever path the call came on; a
    `service` field, when present, must be a service name."""
    if body.get("service") is not None:
        service_name(body["service"], "service")
    activation_id = _integer(body, "activationId")
    if not 1 <= activation_id <= _MAX_ID:
        raise InvalidInput("activationId must be a positive 64-bit integer")
    status = _integer(body, "status")
    if status not in FINISH_OUTCOMES:
        allowed = ", ".join(str(s) for s in FINISH_OUTCOMES)
        raise InvalidInput(f"status must be one of {allowed}, not {status}")
    raw_sum = body.get("sum")
    # Without `sum`, a sale is credited at the GET_NUMBER `sum` (operations.finish_rent):
    # a FINISH refused for a missing field would be retried for ever, the rental never
    # closed.
    sum_kopecks = None if raw_sum is None else to_kopecks(raw_sum, "sum")
    return FinishRequest(activation_id, status, sum_kopecks, buyer)


def services_answer(rent: dict[str, dict[str, int]],
                    activations: dict[str, dict[str, dict[str, int]]] | None = None) -> dict:
    """GET_SERVICES in Onlinesim's countryList shape: rent's {country: {operator: n}} as
    the service 'rent', and activations' {country: {operator: {service: n}}} beside it
    in the same operatorMap (protocol.md 6)."""
    merged: dict[str, dict[str, dict[str, int]]] = {}
    for country, operators in rent.items():
        for operator, n in operators.items():
            merged.setdefault(country, {}).setdefault(operator, {})[RENT] = n
    for country, operators in (activations or {}).items():
        for operator, per_service in operators.items():
            merged.setdefault(country, {}).setdefault(operator, {}).update(per_service)
    return {
        "countryList": [
            {"country": country, "operatorMap": merged[country]} for country in sorted(merged)
        ],
        "status": "SUCCESS",
    }


# A sum sent as a string: plain decimal digits, as SMSHub-style callers send "870.00".
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")


def to_kopecks(value: object, field: str) -> int:
    """A non-negative amount of roubles, as an exact count of kopecks: a JSON number, or
    a string of plain decimal digits ("870.00"; no sign, exponent or separators)."""
    import decimal  # here: a read command never parses a sum, and decimal costs 3 ms

    if isinstance(value, str):
        text = value.strip(" ")
        if not _DECIMAL.fullmatch(text):
            raise InvalidInput(f"{field} must be a number or a decimal string such as "
                               f"\"870.00\"")
        amount = decimal.Decimal(text)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{field} must be a number")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number")
    else:
        # Through str(): 0.1 stays 0.1, not 0.1000000000000000055…
        amount = decimal.Decimal(str(value))
    if amount < 0:
        raise InvalidInput(f"{field} must not be negative")
    if amount > _MAX_ROUBLES:
        raise InvalidInput(f"{field} is too large")
    kopecks = (amount * 100).quantize(decimal.Decimal(1), rounding=decimal.ROUND_HALF_UP)
    return int(kopecks)


def _require_rent_service(body: dict, *, required: bool) -> None:
    service = body.get("service")
    if service is None and not required:
        return
    if service != "rent":
        if service is None:
            raise InvalidInput("service is required and must be 'rent'")
        raise InvalidInput(f"service must be 'rent': rentbox serves long-term rentals only, "
                           f"not {service!r}")


def _integer(body: dict, field: str) -> int:
    if field not in body or body[field] is None:
        raise InvalidInput(f"{field} is required")
    value = whole(body[field])
    if value is None:
        raise InvalidInput(f"{field} must be an integer")
    return value


def whole(value: object) -> int | None:
    """A JSON integer, or None. `5.0` is the same JSON number as `5` (JSON Schema calls
    both integers), so an integral float counts; `5.5`, a string or a bool does not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _optional_name(body: dict, field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    return value.strip().lower() or None


def _operator(body: dict) -> str | None:
    operator = _optional_name(body, "operator")
    return None if operator == "any" else operator


def _prefixes(value: object) -> tuple[str, ...]:
    """exceptionPhoneSet: integers or digit strings, each a prefix of forbidden numbers."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidInput("exceptionPhoneSet must be an array of number prefixes")
    prefixes = []
    for item in value:
        integer = whole(item)
        if integer is not None and integer >= 0:
            prefix = str(integer)
        elif isinstance(item, str) and item.strip().lstrip("+").isdigit():
            prefix = item.strip().lstrip("+")
        else:
            raise InvalidInput(
                f"exceptionPhoneSet items must be digits (integers or strings), not {item!r}"
            )
        if not prefix.isascii():
            raise InvalidInput(f"exceptionPhoneSet item {item!r} is not ASCII digits")
        if len(prefix) <= MAX_NUMBER_DIGITS:  # a longer prefix is of no number: no exclusion
            prefixes.append(prefix)
    return tuple(dict.fromkeys(prefixes))


RentRequest = NumberRequest  # the old name, until every caller says NumberRequest
