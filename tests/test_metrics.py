"""GET /metrics (rentbox/metrics.py, rentbox/web/monitoring.py): the token, Onlinesim's
calls counted by action and outcome, the database's figures, pushes, and that metrics
never change a rent call's answer. In process with the fake clock, and on a real server."""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import (API_KEY, EXAMPLES, GATEWAY_TOKEN, START, WsgiClient, add_numbers,
                      http_post, rent_number, wait_until)
from rentbox import backups, meta, presence
from rentbox.config import Rules
from rentbox.settings import BackupPlan
from rentbox.metrics import Metrics
from rentbox.web import wsgi

TOKEN = "metrics-token-3b8e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GET_NUMBER = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 400}


@pytest.fixture
def app(settings, clock, connections) -> WsgiClient:
    return WsgiClient(wsgi(dataclasses.replace(settings, metrics_token=TOKEN), clock,
                           connections))


def scrape(client: WsgiClient, headers: dict | None = None) -> dict:
    """The samples of one scrape: {(name, sorted labels): value}."""
    answer = client.request("GET", "/metrics", headers=headers or AUTH)
    assert answer.status == 200, answer.body
    return samples(answer.body.decode())


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# --- the token ---------------------------------------------------------------------------


def test_off_until_a_token_is_set(settings, clock, connections):
    client = WsgiClient(wsgi(settings, clock, connections))
    answer = client.request("GET", "/metrics", headers=AUTH)
    assert answer.status == 503
    assert answer.json == {"status": "ERROR", "error": "/metrics is off: set "
                           "RENTBOX_METRICS_TOKEN on the server to turn it on"}


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": "Bearer"},
    {"Authorization": "Bearer caf\xe9"},
    # Only HTTP's spaces and tabs surround the token: "\xa0" and "\x85" are not spaces.
    {"Authorization": f"Bearer {TOKEN}\xa0"}, {"Authorization": f"Bearer \x85{TOKEN}"},
    {"Authorization": f"\x85Bearer {TOKEN}"},
])
def test_a_missing_or_wrong_token_is_401(app, headers):
    answer = app.request("GET", "/metrics", headers=headers)
    assert answer.status == 401
    assert answer.json == {"status": "ERROR", "error": "BAD_TOKEN"}


def test_the_token_is_never_taken_from_the_query_string(app):
    assert app.request("GET", f"/metrics?token={TOKEN}").status == 401


def test_text_format_by_default_and_openmetrics_when_asked(app):
    plain = app.request("GET", "/metrics", headers=AUTH)
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE rentbox_onlinesim_requests_total counter" in plain.body
    open_metrics = app.request("GET", "/metrics", headers={
        **AUTH, "Accept": "application/openmetrics-text; version=1.0.0"})
    assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert open_metrics.body.rstrip().endswith(b"# EOF")


# --- Onlinesim's calls ---------------------------------------------------------------------


def test_calls_are_counted_by_action_and_outcome(app, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    rented = app.post("/getNumberRent", GET_NUMBER).json
    assert rented["status"] == "SUCCESS"
    assert app.post("/getNumberRent", GET_NUMBER).json == {"status": "NO_NUMBERS"}
    assert app.post("/getNumberRent", {**GET_NUMBER, "key": "wrong"}).status == 401
    assert app.post("/", {**GET_NUMBER, "key": "wrong"}).status == 401
    assert app.post("/finishActivationRent", {
        "action": "FINISH_ACTIVATION", "key": API_KEY, "activationId": 999999,
        "status": 3, "sum": 400}).json["error"] == "NO_OPERATION"
    assert app.post("/getNumberRent", raw=b"{not json").status == 400
    assert app.post("/", {"action": ["x"], "key": API_KEY}).status == 400

    found = scrape(app)
    count = "rentbox_onlinesim_requests_total"
    assert value(found, count, action="GET_NUMBER", outcome="success") == 1
    assert value(found, count, action="GET_NUMBER", outcome="no_numbers") == 1
    assert value(found, count, action="GET_NUMBER", outcome="bad_key") == 2
    assert value(found, count, action="FINISH_ACTIVATION", outcome="no_operation") == 1
    assert value(found, count, action="GET_NUMBER", outcome="bad_request") == 1
    assert value(found, count, action="unknown", outcome="bad_request") == 1
    assert value(found, count, action="FINISH_ACTIVATION", outcome="success") == 0
    latency = "rentbox_onlinesim_request_duration_seconds"
    assert value(found, latency + "_count", action="GET_NUMBER", outcome="success") == 1
    assert value(found, latency + "_bucket", action="GET_NUMBER", outcome="success",
                 le="+Inf") == 1
    assert value(found, latency + "_sum", action="GET_NUMBER", outcome="success") > 0


class BrokenMetrics(Metrics):
    def observe_call(self, action, outcome, seconds):
        raise RuntimeError("metrics are broken")


def test_broken_metrics_never_change_a_rent_call(settings, clock, connections, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    client = WsgiClient(wsgi(settings, clock, connections,
                             metrics=BrokenMetrics(connections, clock)))
    answer = client.post("/getNumberRent", GET_NUMBER)
    assert answer.status == 200 and answer.json["status"] == "SUCCESS"
    assert client.post("/getNumberRent", GET_NUMBER).json == {"status": "NO_NUMBERS"}
    assert client.post("/finishActivationRent", {
        "action": "FINISH_ACTIVATION", "key": API_KEY,
        "activationId": answer.json["activationId"], "status": 3, "sum": 400}).json == {"status": "SUCCESS"}


def test_a_broken_push_hook_never_stops_a_push_being_noted():
    from rentbox.push import Outcome, PushState

    state = PushState()
    state.on_outcome = lambda *a: 1 / 0
    state.note(START, {"id": 1}, Outcome("delivered"), 1.0, lambda: 0)  # no exception


# --- the database's figures ----------------------------------------------------------------


def test_pool_gauges_follow_rentals_bans_and_presence(app, db, clock):
    add_numbers(db, START, ("+4915100000001", "germany", "telekom"),
                ("+4915100000002", "germany", "vodafone"),
                ("+4915100000003", "germany", "telekom"),
                ("+4915100000004", "germany", "telekom"))
    found = scrape(app)
    assert value(found, "rentbox_pool_numbers", state="free") == 4
    assert value(found, "rentbox_free_numbers", country="germany", operator="telekom") == 3
    assert value(found, "rentbox_open_rentals") == 0

    rented = app.post("/getNumberRent", {**GET_NUMBER, "operator": "vodafone"}).json
    assert rented["status"] == "SUCCESS"
    # A ban as bans.py sets it (the tallies follow any change of the row: m006 triggers).
    with db.transaction():
        db.execute("UPDATE numbers SET banned_until = '2026-11-02T12:00:00Z'"
                   " WHERE number = '4915100000001'")
    presence.set_by_hand(db, clock.now(), Rules(presence=True), ["4915100000003"],
                         online=False)

    found = scrape(app)
    stored = {row["key"]: row["n"] for row in db.rows("SELECT key, n FROM pool_counts")}
    for state in ("free", "rented", "banned", "offline"):
        assert value(found, "rentbox_pool_numbers", state=state) == stored.get(state, 0)
    assert [value(found, "rentbox_pool_numbers", state=s)
            for s in ("free", "rented", "banned", "offline")] == [1, 1, 1, 1]
    assert value(found, "rentbox_pool_sims", presence="offline") == 1
    assert value(found, "rentbox_open_rentals") == 1
    assert value(found, "rentbox_free_numbers", country="germany", operator="telekom") == 1
    assert ("rentbox_free_numbers", (("country", "germany"), ("operator", "vodafone"))) \
        not in found


def test_income_credited_in_roubles(app, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    rented = app.post("/getNumberRent", {**GET_NUMBER, "sum": 412.5}).json
    assert app.post("/finishActivationRent", {
        "action": "FINISH_ACTIVATION", "key": API_KEY, "activationId": rented["activationId"],
        "status": 3, "sum": 412.5}).json == {"status": "SUCCESS"}
    found = scrape(app)
    kopecks = db.row("SELECT sum(credited_kopecks) AS k FROM books_daily")["k"]
    assert kopecks > 0
    assert value(found, "rentbox_income_credited_roubles") == kopecks / 100
    assert value(found, "rentbox_open_rentals") == 0


def test_books_per_product_and_service(settings, clock, connections, db):
    app = WsgiClient(wsgi(dataclasses.replace(settings, metrics_token=TOKEN,
                                              rules=Rules(services=("vk", "wa"))),
                          clock, connections))
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4915123456790", "germany", "telekom"))
    rented = app.post("/getNumberRent", {**GET_NUMBER, "sum": 400}).json
    app.post("/finishActivationRent", {"action": "FINISH_ACTIVATION", "key": API_KEY,
                                       "activationId": rented["activationId"], "status": 3,
                                       "sum": 870})
    activation = app.post("/getNumber", {**GET_NUMBER, "service": "vk", "sum": 20}).json
    app.post("/finishActivation", {"action": "FINISH_ACTIVATION", "key": API_KEY,
                                   "activationId": activation["activationId"], "status": 3})
    app.post("/getNumber", {**GET_NUMBER, "service": "wa", "sum": 15})
    found = scrape(app)
    assert value(found, "rentbox_service_income_credited_roubles", product="rent",
                 service="rent") == 870
    assert value(found, "rentbox_service_income_credited_roubles", product="activations",
                 service="vk") == 20
    assert value(found, "rentbox_service_open", product="activations", service="wa") == 1
    assert value(found, "rentbox_income_credited_roubles") == 890


def test_last_call_age_and_backup_age_follow_the_clock(app, db, clock, tmp_path):
    found = scrape(app)
    assert math.isnan(value(found, "rentbox_onlinesim_last_call_age_seconds"))
    assert math.isnan(value(found, "rentbox_backup_age_seconds"))
    assert value(found, "rentbox_backup_failing") == 0

    app.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
    plan = BackupPlan(folder=tmp_path)
    backups.write_backup(db, plan, clock.now(), wait=lambda s: None)
    clock.advance(125)
    found = scrape(app)
    assert value(found, "rentbox_onlinesim_last_call_age_seconds") == 125
    assert value(found, "rentbox_backup_age_seconds") == 125
    assert value(found, "rentbox_backup_interval_seconds") == plan.every_s

    backups.note_failure(db, plan, clock.now(), "disk full")
    clock.advance(60)
    found = scrape(app)
    assert value(found, "rentbox_backup_age_seconds") == 185
    assert value(found, "rentbox_backup_failing") == 1


def test_an_unreadable_database_answers_database_up_0(settings, clock, connections, app):
    class Unreadable:
        def get(self):
            raise OSError("no database")

    client = WsgiClient(wsgi(dataclasses.replace(settings, metrics_token=TOKEN), clock,
                             connections, metrics=Metrics(Unreadable(), clock)))
    found = scrape(client)
    assert value(found, "rentbox_database_up") == 0
    assert ("rentbox_pool_numbers", (("state", "free"),)) not in found
    assert value(scrape(app), "rentbox_database_up") == 1


def test_two_apps_in_one_process_keep_their_own_counts(settings, clock, connections, db):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    with_token = dataclasses.replace(settings, metrics_token=TOKEN)
    first = WsgiClient(wsgi(with_token, clock, connections))
    second = WsgiClient(wsgi(with_token, clock, connections))
    first.post("/getNumberRent", GET_NUMBER)
    assert value(scrape(first), "rentbox_onlinesim_requests_total", action="GET_NUMBER",
                 outcome="success") == 1
    assert value(scrape(second), "rentbox_onlinesim_requests_total", action="GET_NUMBER",
                 outcome="success") == 0


# --- a real server -------------------------------------------------------------------------


def http_get(url: str, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_real_server_token_off_and_on(start_server, db, tmp_path):
    off = start_server(db=tmp_path / "other.db")  # one server per database
    assert http_get(off.url + "/metrics", AUTH)[0] == 503
    on = start_server(metrics_token=TOKEN)
    assert http_get(on.url + "/metrics", {})[0] == 401
    status, body = http_get(on.url + "/metrics", AUTH)
    assert status == 200 and b"rentbox_database_up 1.0" in body


def test_real_server_counts_calls_and_pushes(start_server, db, onlinesim):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4915123456780", "germany", "telekom"))
    server = start_server(metrics_token=TOKEN, push_url=onlinesim.url, push_retry_s=0.2)
    rent_number(server)
    bad = http_post(server.url + "/getNumberRent", {**GET_NUMBER, "key": "nope"})
    assert bad.status == 401
    stored = http_post(server.url + "/sms", {"to": "+4915123456789", "from": "Bank",
                                             "text": "code 1234"},
                       headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    assert stored.status == 200
    onlinesim.wait_for(1, timeout_s=5)

    def delivered() -> dict | None:
        found = samples(http_get(server.url + "/metrics", AUTH)[1].decode())
        return found if value(found, "rentbox_sms_pushes_total", result="delivered") else None

    assert wait_until(delivered, timeout_s=5)
    found = delivered()
    assert value(found, "rentbox_onlinesim_requests_total", action="GET_NUMBER",
                 outcome="success") == 1
    assert value(found, "rentbox_onlinesim_requests_total", action="GET_NUMBER",
                 outcome="bad_key") == 1
    assert value(found, "rentbox_sms_received_total") == 1
    assert value(found, "rentbox_sms_pushes_total", result="delivered") == 1
    assert value(found, "rentbox_sms_pushes_total", result="refused") == 0
    assert value(found, "rentbox_sms_push_delay_seconds_count") == 1
    assert 0 <= value(found, "rentbox_sms_push_delay_seconds_sum") < 5
    assert value(found, "rentbox_sms_outbox") == 0
    assert value(found, "rentbox_pool_numbers", state="rented") == 1


def test_real_server_counts_refused_pushes(start_server, db):
    from conftest import FakeOnlinesim

    fake = FakeOnlinesim([(200, b'{"status":"ERROR","error":"NO_OPERATION"}')])
    try:
        add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
        server = start_server(metrics_token=TOKEN, push_url=fake.url, push_retry_s=0.2)
        rent_number(server)
        http_post(server.url + "/sms", {"to": "+4915123456789", "from": "x", "text": "y"},
                  headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})

        def refused() -> float:
            found = samples(http_get(server.url + "/metrics", AUTH)[1].decode())
            return value(found, "rentbox_sms_pushes_total", result="refused")

        assert wait_until(lambda: refused() == 1, timeout_s=5)
    finally:
        fake.close()


# --- examples/prometheus -------------------------------------------------------------------


def test_every_metric_named_in_the_examples_exists(app, db, clock, tmp_path):
    from rentbox.clock import to_text

    add_numbers(db, START, ("+4915123456789", "germany", "telekom"))
    app.post("/getNumberRent", GET_NUMBER)
    meta.put(db, clock.now(), meta.SERVER, {  # a server with a buyer beside Onlinesim
        "started_at": to_text(clock.now()),
        "buyers": [{"name": "smshub", "protocol": "smshub", "path": "/smshub"}]})
    backups.write_backup(db, BackupPlan(folder=tmp_path), clock.now(), wait=lambda s: None)
    meta.put(db, clock.now(), meta.REPLICATION, {"state": "running"})  # as replication.py
    text = app.request("GET", "/metrics", headers=AUTH).body.decode()
    exposed = {sample.name for family in text_string_to_metric_families(text)
               for sample in family.samples}
    folder = EXAMPLES / "prometheus"
    rules = (folder / "rentbox-alerts.yml").read_text()
    named = set(re.findall(r"\brentbox_[a-z_]+", rules))
    assert len(named) >= 3
    assert named <= exposed, named - exposed
    # The README's table (its "Prometheus metrics" section) names real families too.
    readme = (EXAMPLES.parent / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`(rentbox_[a-z_]+)`", readme))
    families = {family.name for family in text_string_to_metric_families(text)}
    assert documented <= exposed | families, documented - exposed - families


def test_the_examples_are_well_formed():
    yaml = pytest.importorskip("yaml")  # PyYAML comes with schemathesis; promtool is better
    folder = EXAMPLES / "prometheus"
    config = yaml.safe_load((folder / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"]
    assert config["rule_files"] == ["rentbox-alerts.yml"]
    [group] = yaml.safe_load((folder / "rentbox-alerts.yml").read_text())["groups"]
    alerts = group["rules"]
    assert len(alerts) >= 2
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
        assert rule["alert"].startswith("Rentbox") and rule["expr"].strip()
        assert rule["annotations"]["summary"]


# --- buyers beside Onlinesim (issue 23) ------------------------------------------------------


def test_books_per_buyer_and_currency_and_each_buyers_last_call(app, db, clock):
    from rentbox import operations
    from rentbox.clock import to_text
    from rentbox.config import Buyer
    from rentbox.protocol import FinishRequest, NumberRequest

    add_numbers(db, START, *[(f"+491512345678{i}", "germany", "telekom") for i in range(4)])
    rules = Rules(services=("vk",), buyers=(Buyer("smshub", "smshub", key="k"),))
    meta.put(db, clock.now(), meta.SERVER, {
        "started_at": to_text(clock.now()),
        "buyers": [{"name": "smshub", "protocol": "smshub", "path": "/smshub"},
                   {"name": "grizzly", "protocol": "smshub", "path": "/buyer/grizzly"}]})
    for buyer, minor, currency, status in (("onlinesim", 87000, "RUB", 3),
                                           ("smshub", 1250, "USD", 3),
                                           ("smshub", 2000, "RUB", 3),
                                           ("smshub", 300, "USD", None)):
        issued = operations.open_operation(db, clock, NumberRequest(
            minor, service="rent" if buyer == "onlinesim" else "vk", buyer=buyer,
            currency=currency), rules)
        if status:
            operations.finish_operation(db, clock, FinishRequest(
                issued.activation_id, status, minor, buyer=buyer), rules)
    meta.put(db, clock.now(), meta.last_call_key("smshub"), {
        "at": to_text(clock.now()), "action": "GET_NUMBER", "actions": {}})
    clock.advance(42)
    found = scrape(app)
    credited = {labels: v for (name, labels), v in found.items()
                if name == "rentbox_buyer_income_credited"}
    assert credited == {(("buyer", "onlinesim"), ("currency", "RUB")): 870,
                        (("buyer", "smshub"), ("currency", "RUB")): 20,
                        (("buyer", "smshub"), ("currency", "USD")): 12.5}
    # The roubles never hold the dollars.
    assert value(found, "rentbox_income_credited_roubles") == 890
    assert value(found, "rentbox_buyer_open_operations", buyer="smshub") == 1
    assert value(found, "rentbox_buyer_open_operations", buyer="onlinesim") == 0
    assert value(found, "rentbox_buyer_open_operations", buyer="grizzly") == 0  # served
    assert value(found, "rentbox_buyer_last_call_age_seconds", buyer="smshub") == 42
    assert math.isnan(value(found, "rentbox_buyer_last_call_age_seconds", buyer="grizzly"))
    assert math.isnan(value(found, "rentbox_buyer_last_call_age_seconds", buyer="onlinesim"))
