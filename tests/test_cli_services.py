"""The CLI's side of activations: `rentbox services`, `numbers unspend`, the kind and
service in `ops list`, `ops show` and `numbers show`, `report --by product|service`, and
serve's new settings."""

import datetime as dt
import json

from typer.testing import CliRunner

from rentbox import operations
from rentbox.config import Rules
from rentbox.db import open_database
from rentbox.protocol import FinishRequest, NumberRequest
from rentbox.cli import app

from conftest import EXAMPLES, FakeClock

runner = CliRunner()
RULES = Rules(services=("vk", "wa"))


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def books(db_path):
    """The example pool, a vk activation sold, a wa one open and a rental sold."""
    assert run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path).exit_code == 0
    # After the import: a number freed now is the one idle the shortest.
    db, clock = open_database(db_path), FakeClock(dt.datetime.now(dt.timezone.utc))
    vk = operations.open_operation(db, clock, NumberRequest(2050, country="germany",
                                                            service="vk"), RULES)
    operations.finish_operation(db, clock, FinishRequest(vk.activation_id, 3), RULES)
    wa = operations.open_operation(db, clock, NumberRequest(1500, service="wa"), RULES)
    rental = operations.open_operation(db, clock, NumberRequest(40000), RULES)
    operations.finish_operation(db, clock, FinishRequest(rental.activation_id, 3, 87000),
                                RULES)
    db.close()
    return vk, wa, rental


def test_services_shows_each_offered_service(db_path):
    books(db_path)
    result = run("services", "--services", "vk,wa", "--db", db_path)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["service", "offered", "available", "now", "spent", "open"]
    assert lines[2].split() == ["vk", "yes", "5", "1", "0"]
    assert lines[3].split() == ["wa", "yes", "6", "0", "1"]
    as_json = json.loads(run("services", "--services", "wa", "--json", "--db", db_path).stdout)
    assert as_json == [
        {"service": "wa", "offered": True, "available": 6, "spent": 0, "open": 1},
        {"service": "vk", "offered": False, "available": 0, "spent": 1, "open": 0}]


def test_services_says_when_activations_are_off(db_path):
    assert run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path).exit_code == 0
    result = run("services", "--db", db_path)
    assert result.exit_code == 0
    assert "activations are off (set RENTBOX_SERVICES" in result.stdout


def test_a_bad_services_list_is_an_error(db_path):
    books(db_path)
    result = run("services", "--services", "vk,w a", "--db", db_path)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: a service in RENTBOX_SERVICES must be a short")


def test_unspend_and_numbers_show(db_path):
    vk, _, _ = books(db_path)
    shown = run("numbers", "show", f"+{vk.number}", "--db", db_path)
    assert "Activations: spent for vk" in shown.stdout
    assert " vk " in shown.stdout  # the operations table names the service
    done = run("numbers", "unspend", f"+{vk.number}", "VK", "--db", db_path)
    assert (done.exit_code, done.stdout) == (0, f"+{vk.number} is offered for vk again.\n")
    again = run("numbers", "unspend", f"+{vk.number}", "vk", "--db", db_path)
    assert again.exit_code == 1
    assert again.stderr == f"Error: +{vk.number} is not spent for vk\n"
    history = json.loads(run("numbers", "show", f"+{vk.number}", "--json", "--db",
                             db_path).stdout)
    assert history["services"] == []
    assert history["events"][-1]["kind"] == "service_unspent"


def test_ops_list_by_kind_and_service_and_ops_show(db_path):
    vk, wa, rental = books(db_path)
    listed = json.loads(run("ops", "list", "--kind", "activation", "--json", "--db",
                            db_path).stdout)
    assert [(r["id"], r["kind"], r["service"]) for r in listed] == [
        (wa.activation_id, "activation", "wa"), (vk.activation_id, "activation", "vk")]
    only_rent = json.loads(run("ops", "list", "--service", "rent", "--json", "--db",
                               db_path).stdout)
    assert [r["id"] for r in only_rent] == [rental.activation_id]
    table = run("ops", "list", "--db", db_path).stdout.splitlines()
    assert table[0].split()[:3] == ["id", "service", "number"]
    shown = run("ops", "show", vk.activation_id, "--db", db_path)
    assert shown.stdout.startswith(f"Operation {vk.activation_id}, activation for vk, on +")
    bad = run("ops", "list", "--kind", "lease", "--db", db_path)
    assert bad.exit_code == 2


def test_report_by_product_and_service(db_path):
    books(db_path)
    product = json.loads(run("report", "--by", "product", "--json", "--db", db_path).stdout)
    assert {r["key"]: r["credited_kopecks"] for r in product["rows"]} == {
        "activations": 2050, "rent": 87000}
    service = run("report", "--by", "service", "--db", db_path)
    assert service.exit_code == 0
    assert [line.split()[0] for line in service.stdout.splitlines()[2:5]] == ["rent", "vk",
                                                                              "wa"]


def test_serve_refuses_a_bad_service_and_an_http_activation_push_url(db_path):
    env = {"RENTBOX_API_KEY": "k"}
    bad = run("serve", "--db", db_path, "--services", "vk,rent", env=env)
    assert bad.exit_code == 1 and "rent is always offered" in bad.stderr
    clear = run("serve", "--db", db_path, "--activation-push-url",
                "http://onlinesim.example/v1/PUSH_SMS", env=env)
    assert clear.exit_code == 1
    assert "--activation-push-url must use https: the API key would cross" in clear.stderr
