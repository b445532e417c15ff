import pytest

from rentbox import protocol
from rentbox.errors import InvalidInput


def rent(**fields):
    return protocol.parse_rent_request({"action": "GET_NUMBER", "service": "rent", **fields})


def test_rent_request_full():
    request = rent(sum=400, country=" Germany ", operator="any",
                   exceptionPhoneSet=[4915, "46950", "+7", 4915])
    assert request == protocol.NumberRequest(
        sum_kopecks=40000, country="germany", operator=None,
        excluded_prefixes=("4915", "46950", "7"))


def test_rent_request_takes_integral_floats_and_drops_prefixes_longer_than_any_number():
    # Found by schemathesis: 5.0 is the JSON number 5, and a 16-digit prefix (of no
    # E.164 number) reached the claim's range arithmetic and answered 500.
    request = rent(sum=400, exceptionPhoneSet=[4915.0, "0011045695747554", 10.0**16, "49"])
    assert request.excluded_prefixes == ("4915", "49")


def test_rent_request_minimal():
    assert rent(sum=12.5) == protocol.NumberRequest(sum_kopecks=1250)


@pytest.mark.parametrize("fields, message", [
    ({}, "sum is required"),
    ({"sum": "-400"}, "sum must be a number or a decimal string"),
    ({"sum": "4e2"}, "sum must be a number or a decimal string"),
    ({"sum": "1,5"}, "sum must be a number or a decimal string"),
    ({"sum": ""}, "sum must be a number or a decimal string"),
    ({"sum": "\u0664\u0660\u0660"}, "sum must be a number or a decimal string"),  # Arabic-Indic
    ({"sum": "1" * 20}, "sum is too large"),
    ({"sum": True}, "sum must be a number"),
    ({"sum": -1}, "sum must not be negative"),
    ({"sum": 1e300}, "sum is too large"),
    ({"sum": 400, "country": 7}, "country must be a string"),
    ({"sum": 400, "operator": ["mts"]}, "operator must be a string"),
    ({"sum": 400, "exceptionPhoneSet": "4915"}, "exceptionPhoneSet must be an array"),
    ({"sum": 400, "exceptionPhoneSet": [4915, "49a"]}, "items must be digits"),
    ({"sum": 400, "exceptionPhoneSet": [-4]}, "items must be digits"),
    ({"sum": 400, "exceptionPhoneSet": [""]}, "items must be digits"),
    ({"sum": 400, "exceptionPhoneSet": [1.5]}, "items must be digits"),
    ({"sum": 400, "exceptionPhoneSet": ["٤٩"]}, "not ASCII digits"),
])
def test_rent_request_rejects(fields, message):
    with pytest.raises(InvalidInput, match=message):
        rent(**fields)


@pytest.mark.parametrize("service, message", [
    (None, "service is required"), ("sms", "service must be 'rent'")])
def test_rent_request_needs_service_rent(service, message):
    body = {"action": "GET_NUMBER", "sum": 1}
    if service:
        body["service"] = service
    with pytest.raises(InvalidInput, match=message):
        protocol.parse_rent_request(body)


def finish(**fields):
    return protocol.parse_finish_request({"action": "FINISH_ACTIVATION", **fields})


def test_finish_request():
    assert finish(activationId=355, status=3, sum=870, service="rent") == \
        protocol.FinishRequest(355, 3, 87000)
    assert finish(activationId=355, status=4) == protocol.FinishRequest(355, 4, None)
    # 355.0 is the JSON number 355 (found by schemathesis: JSON Schema's integer).
    assert finish(activationId=355.0, status=4.0) == protocol.FinishRequest(355, 4, None)


@pytest.mark.parametrize("fields, message", [
    ({"status": 3, "sum": 1}, "activationId is required"),
    ({"activationId": "355", "status": 3, "sum": 1}, "activationId must be an integer"),
    ({"activationId": 355.5, "status": 3, "sum": 1}, "activationId must be an integer"),
    ({"activationId": float("inf"), "status": 3, "sum": 1}, "activationId must be an integer"),
    ({"activationId": 1e19, "status": 3, "sum": 1}, "positive 64-bit"),
    ({"activationId": 0, "status": 3, "sum": 1}, "positive 64-bit"),
    ({"activationId": 2**63, "status": 3, "sum": 1}, "positive 64-bit"),
    ({"activationId": 1}, "status is required"),
    ({"activationId": 1, "status": 2}, "status must be one of 1, 3, 4, 5, not 2"),
    ({"activationId": 1, "status": 4, "sum": "x"}, "sum must be a number"),
    ({"activationId": 1, "status": 4, "service": "no such!"}, "service must be a short service"),
    ({"activationId": 1, "status": 4, "service": 7}, "service must be a string"),
])
def test_finish_request_rejects(fields, message):
    with pytest.raises(InvalidInput, match=message):
        finish(**fields)


@pytest.mark.parametrize("value, kopecks", [(0, 0), (400, 40000), (0.1, 10), (12.345, 1235),
                                            (870.99, 87099), ("870.00", 87000), (" 870 ", 87000),
                                            ("0.1", 10), (".5", 50), ("12.345", 1235)])
def test_to_kopecks_is_exact(value, kopecks):
    assert protocol.to_kopecks(value, "sum") == kopecks


def test_parse_body():
    assert protocol.parse_body(b'{"a": 1}') == {"a": 1}
    for raw, message in [(b"{bad", "not valid JSON"), (b"[1]", "must be a JSON object"),
                         (b"\xff", "not UTF-8"), (b"", "not valid JSON")]:
        with pytest.raises(InvalidInput, match=message):
            protocol.parse_body(raw)


def test_services_answer_shape():
    answer = protocol.services_answer({"russia": {"any": 19, "beeline": 9, "megafon": 10}})
    assert answer == {"countryList": [{"country": "russia", "operatorMap": {
        "any": {"rent": 19}, "beeline": {"rent": 9}, "megafon": {"rent": 10}}}],
        "status": "SUCCESS"}
    assert protocol.services_answer({}) == {"countryList": [], "status": "SUCCESS"}


def test_a_finish_without_sum_is_accepted_whatever_its_status():
    """A FINISH 3 without `sum` credits the GET_NUMBER sum (operations.finish_operation):
    refusing it would have Onlinesim send it again for ever, the rental never closed."""
    assert finish(activationId=7, status=3) == protocol.FinishRequest(7, 3, None)
    assert finish(activationId=7, status=3, sum="870.00") == protocol.FinishRequest(7, 3, 87000)
