"""The CLI's side of buyers: `serve` refuses a bad buyers file, `ops list --buyer` and the
buyer and currency in `ops list` and `ops show`, services by any of their names."""

import datetime as dt
import json

from typer.testing import CliRunner

from rentbox import operations
from rentbox.cli import app
from rentbox.config import Buyer, Rules
from rentbox.db import open_database
from rentbox.protocol import FinishRequest, NumberRequest

from conftest import EXAMPLES, FakeClock

runner = CliRunner()
RULES = Rules(services=("vk", "wa"), buyers=(Buyer("smshub", "smshub", key="k"),))


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def books(db_path):
    """The example pool; SMSHub sold a wa activation for 0.75 USD, Onlinesim rents one."""
    assert run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path).exit_code == 0
    db, clock = open_database(db_path), FakeClock(dt.datetime.now(dt.timezone.utc))
    hub = operations.open_operation(db, clock, NumberRequest(
        75, service="whatsapp", buyer="smshub", currency="USD"), RULES)
    operations.finish_operation(db, clock, FinishRequest(hub.activation_id, 3,
                                                         buyer="smshub"), RULES)
    rental = operations.open_operation(db, clock, NumberRequest(40000), RULES)
    db.close()
    return hub, rental


def test_ops_list_names_the_buyer_and_currency_and_filters_by_buyer(tmp_path):
    db_path = tmp_path / "r.db"
    hub, rental = books(db_path)
    listed = run("ops", "list", "--db", db_path)
    assert listed.exit_code == 0, listed.output
    assert "buyer" in listed.output and "smshub" in listed.output
    assert "0.75 USD" in listed.output and "400.00" in listed.output
    only = json.loads(run("ops", "list", "--buyer", "smshub", "--json", "--db", db_path).output)
    assert [(r["id"], r["buyer"], r["currency"], r["service"]) for r in only] == [
        (hub.activation_id, "smshub", "USD", "wa")]
    # Any name of the service finds it.
    assert len(json.loads(run("ops", "list", "--service", "whatsapp", "--json", "--db",
                              db_path).output)) == 1
    shown = run("ops", "show", hub.activation_id, "--db", db_path)
    assert "activation for wa sold to smshub" in shown.output
    assert "0.75 USD" in shown.output and "accepted by smshub" in shown.output


def test_ops_list_of_onlinesim_alone_has_no_buyer_column(tmp_path):
    db_path = tmp_path / "r.db"
    books(db_path)
    listed = run("ops", "list", "--buyer", "onlinesim", "--db", db_path)
    assert "buyer" not in listed.output and "USD" not in listed.output


def test_a_number_spent_at_one_buyer_is_unspent_by_any_name_of_the_service(tmp_path):
    db_path = tmp_path / "r.db"
    hub, _ = books(db_path)
    number = open_database(db_path).row(
        "SELECT number FROM numbers JOIN operations ON operations.number_id = numbers.id"
        " WHERE operations.id = ?", (hub.activation_id,))["number"]
    done = run("numbers", "unspend", f"+{number}", "WhatsApp", "--db", db_path)
    assert done.exit_code == 0, done.output
    again = run("numbers", "unspend", f"+{number}", "wa", "--db", db_path)
    assert again.exit_code == 1 and "is not spent for wa" in again.output


def test_serve_refuses_a_bad_buyers_file_before_it_starts(tmp_path):
    bad = tmp_path / "buyers.toml"
    bad.write_text("[buyers.grizzly]\nprotocol = 'smshub'\n")
    result = run("serve", "--db", tmp_path / "r.db", "--buyers", bad,
                 env={"RENTBOX_API_KEY": "k"})
    assert result.exit_code == 1
    assert "Error: [buyers.grizzly] needs its key" in result.output
    assert not (tmp_path / "r.db").exists()
    result = run("serve", "--db", tmp_path / "r.db", "--smshub-push-url",
                 "https://hub.example/push", env={"RENTBOX_API_KEY": "k"})
    assert result.exit_code == 1 and "RENTBOX_SMSHUB_KEY is not" in result.output


def test_serve_refuses_a_buyers_push_url_that_is_not_https(tmp_path):
    path = tmp_path / "buyers.toml"
    path.write_text("[buyers.grizzly]\nkey = 'grizzly-secret'\n"
                    "push_url = 'http://grizzly.example/push'\n")
    result = run("serve", "--db", tmp_path / "r.db", "--buyers", path,
                 env={"RENTBOX_API_KEY": "k"})
    assert result.exit_code == 1 and "must use https" in result.output
    assert "grizzly-secret" not in result.output
