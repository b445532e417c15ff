"""Onlinesim's rent protocol: request fields parsed and validated, answers shaped (protocol.md).

Pure functions over decoded JSON; no HTTP, no database. Every rejection is InvalidInput
with a message that names the field and what is wrong, which the web layer sends back
as `{"status": "ERROR", "error": "<message>"}`.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
import re

from rentbox.errors import InvalidInput, NotFound

# FINISH_ACTIVATION statuses (protocol.md 3.3) and the outcome each one records.
FINISH_OUTCOMES = {1: "wrong_service", 3: "sold", 4: "cancelled", 5: "refunded"}
SOLD = 3
CANCELLED = 4

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
class RentRequest:
    """GET_NUMBER (rent)."""

    sum_kopecks: int
    country: str | None = None
    operator: str | None = None  # None means any operator
    excluded_prefixes: tuple[str, ...] = ()
    test: bool = False  # a self-test rental: no income, no failure (X-Rentbox-Test)


@dataclasses.dataclass(frozen=True)
class FinishRequest:
    """FINISH_ACTIVATION (rent)."""

    activation_id: int
    status: int
    sum_kopecks: int | None = None


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


def parse_rent_request(body: dict, *, test: bool = False) -> RentRequest:
    """GET_NUMBER (rent): service, sum, and the optional filters (protocol.md 3.2);
    `test` marks a self-test rental (the caller authenticated it)."""
    _require_rent_service(body, required=True)
    if "sum" not in body or body["sum"] is None:
        raise InvalidInput("sum is required")
    return RentRequest(
        sum_kopecks=to_kopecks(body["sum"], "sum"),
        country=_optional_name(body, "country"),
        operator=_operator(body),
        excluded_prefixes=_prefixes(body.get("exceptionPhoneSet")),
        test=test,
    )


def parse_finish_request(body: dict) -> FinishRequest:
    """FINISH_ACTIVATION (rent): activationId, status, and sum (protocol.md 3.3)."""
    _require_rent_service(body, required=False)
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
    return FinishRequest(activation_id, status, sum_kopecks)


def services_answer(counts: dict[str, dict[str, int]]) -> dict:
    """GET_SERVICES (rent): {country: {operator: n}} in Onlinesim's countryList shape."""
    return {
        "countryList": [
            {
                "country": country,
                "operatorMap": {op: {"rent": n} for op, n in operators.items()},
            }
            for country, operators in counts.items()
        ],
        "status": "SUCCESS",
    }


# A sum sent as a string: plain decimal digits, as SMSHub-style callers send "870.00".
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")


def to_kopecks(value: object, field: str) -> int:
    """A non-negative amount of roubles, as an exact count of kopecks: a JSON number, or
    a string of plain decimal digits ("870.00"; no sign, exponent or separators)."""
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
    value = _whole(body[field])
    if value is None:
        raise InvalidInput(f"{field} must be an integer")
    return value


def _whole(value: object) -> int | None:
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
        whole = _whole(item)
        if whole is not None and whole >= 0:
            prefix = str(whole)
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
