import json
import sys
import os
import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from rentbox.cli import app

from conftest import EXAMPLES

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def test_import_and_list(db_path):
    result = run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (f"{EXAMPLES / 'pool.csv'}: 7 added, 0 updated, 0 unchanged, "
                             "0 rejected.\n"
                             "Ready to offer: 7 numbers:\n"
                             "  germany 3: o2 1, telekom 2\n"
                             "  russia 3: beeline 1, megafon 1, mts 1\n"
                             "  ukraine 1: 1 without an operator\n")
    assert result.stderr == ""
    listed = run("numbers", "list", "--json", "--db", db_path)
    rows = json.loads(listed.stdout)
    assert len(rows) == 7
    assert rows[0] == {"number": "4915123456789", "country": "germany", "operator": "telekom",
                       "port": "gw1:1", "state": "free", "sim": "-", "seen_at": None,
                       "seen_by": None, "offline_since": None}
    table = run("numbers", "list", "--db", db_path)
    assert "+4915123456789" in table.stdout and "telekom" in table.stdout
    assert table.stdout.rstrip().endswith("\n7 numbers")
    again = run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    assert "0 added, 0 updated, 7 unchanged, 0 rejected.\n" in again.stdout


def test_db_from_environment(db_path):
    result = run("numbers", "import", EXAMPLES / "pool.csv", env={"RENTBOX_DB": str(db_path)})
    assert result.exit_code == 0 and db_path.exists()
    result = run("numbers", "list", env={"RENTBOX_DB": str(db_path)})
    assert result.exit_code == 0 and result.stdout.endswith("\n7 numbers\n")


@pytest.mark.parametrize("command", [
    ["status"], ["report"], ["numbers", "list"], ["numbers", "show", "+4915123456789"],
    ["ops", "list"], ["sms", "list"], ["bans", "list"], ["housekeep"],
    ["numbers", "disable", "+4915123456789"], ["backup", "copy.db"]])
def test_a_mistyped_db_is_refused_not_created(tmp_path, command):
    typo = tmp_path / "typo.db"
    result = run(*command, "--db", typo)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == (f"Error: {typo} does not exist: check --db (or RENTBOX_DB); "
                             "`rentbox numbers import` or `rentbox serve` creates a new "
                             "database\n")
    assert not typo.exists()


def test_a_database_from_a_newer_rentbox_is_refused(db_path):
    from rentbox.db import open_database

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    db = open_database(db_path)
    with db.transaction():
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
                   " VALUES ('rentbox', 'm099_from_the_future', '2027-01-01')")
    db.close()
    for command in (["status"], ["numbers", "import", EXAMPLES / "pool.csv"]):
        result = run(*command, "--db", db_path)
        assert result.exit_code == 1
        assert "was upgraded by a newer rentbox (schema m099_from_the_future)" in result.stderr
        assert "upgrade rentbox" in result.stderr


def test_the_cli_does_not_migrate_under_a_running_older_server(db_path, monkeypatch):
    from rentbox import db as database

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    monkeypatch.setattr(database.migrations, "pending", lambda db: ["m099_new"])
    held = database.hold_serving_lock(db_path)  # as a running server does
    try:
        result = run("status", "--db", db_path)
    finally:
        held.close()
    assert result.exit_code == 1
    assert "a running rentbox serve holds" in result.stderr
    assert "upgrade rentbox where the server runs and restart it" in result.stderr


@pytest.mark.parametrize("server_running", [False, True])
def test_read_commands_work_on_a_database_they_cannot_write(db_path, monkeypatch,
                                                           server_running):
    """As a monitoring account that may read the file and not write it or its folder
    (root can write anything, so the permission check is what is made to say no)."""
    from rentbox import db as database

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    writer = database.open_database(db_path)  # a server's connection keeps -wal and -shm
    if not server_running:
        import gc

        writer.close()
        gc.collect()  # the import's connection, in this process (a CLI run exits instead)
        assert not Path(f"{db_path}-wal").exists()
    monkeypatch.setattr(database, "_writable", lambda path: False)
    try:
        status = run("status", "--json", "--db", db_path)
        assert status.exit_code == 0, status.stderr
        assert json.loads(status.stdout)["pool"]["total"] == 7
        listed = run("numbers", "list", "--json", "--db", db_path)
        assert len(json.loads(listed.stdout)) == 7
        refused = run("numbers", "disable", "+4915123456789", "--db", db_path)
        assert refused.exit_code == 1
        assert "the database file is read-only" in refused.stderr
    finally:
        writer.close()


def test_bad_rows_are_reported_and_nothing_imported(db_path, tmp_path):
    csv = tmp_path / "pool.csv"
    csv.write_text("number,country\n+4915123456789,germany\n+49 1,germany\n")
    result = run("numbers", "import", csv, "--db", db_path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: 1 invalid row, nothing imported (fix them, or pass --skip-invalid to "
        "import the valid rows):\n  line 3: '+49 1' is not a valid international number "
        "(country code first, as in +49 151 2345 6789)\n")
    # Nothing imported, nothing created: the guard against a mistyped --db still holds.
    assert not db_path.exists()
    assert run("status", "--db", db_path).stderr.startswith(f"Error: {db_path} does not exist")
    skipped = run("numbers", "import", csv, "--skip-invalid", "--country", "germany",
                  "--db", db_path)
    assert skipped.exit_code == 0
    assert skipped.stderr.startswith("Skipped line 3: '+49 1' is not a valid")
    assert skipped.stdout.splitlines()[:2] == [f"{csv}: 1 added, 0 updated, 0 unchanged, "
                                               "1 rejected.", "Ready to offer: 1 number:"]


def test_missing_file(db_path):
    result = run("numbers", "import", "nope.csv", "--db", db_path)
    assert (result.exit_code, result.stdout, result.stderr) == (
        1, "", "Error: nope.csv: no such file\n")


def test_serve_refuses_to_start_without_a_key(db_path):
    result = run("serve", "--db", db_path, env={"RENTBOX_API_KEY": ""})
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: RENTBOX_API_KEY is not set")
    assert result.stderr.count("\n") == 1


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("rentbox ")


def _all_commands(command, path=()):
    """Every command and group under `command` (Typer's own click: not click.Group)."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _all_commands(sub, path + (name,))


def test_the_help_walk_reaches_every_command():
    paths = {" ".join(path) for path, _ in _all_commands(get_command(app))}
    assert {"", "serve", "numbers", "numbers import", "sms add", "ops close",
            "alerts test"} <= paths


@pytest.mark.parametrize("path, command", list(_all_commands(get_command(app))),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_and_option_has_help(path, command):
    assert (command.help or "").strip(), f"rentbox {' '.join(path)} has no help"
    for param in command.params:
        if param.param_type_name == "option":
            assert (param.help or "").strip(), f"{' '.join(path)} {param.name} has no help"
    result = run(*path, "--help")
    assert result.exit_code == 0


# ---- sms, ops, bans, housekeep ------------------------------------------------------------

def rent(db_path, n=1):
    from rentbox import operations
    from rentbox.config import Rules
    from rentbox.db import open_database
    from rentbox.clock import SystemClock
    from rentbox.protocol import RentRequest

    db = open_database(db_path)  # at the real time: the CLI reads the system clock
    return [operations.open_rent(db, SystemClock(), RentRequest(40000), Rules())
            for _ in range(n)]


def test_sms_add_list_and_retry(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    [rental] = rent(db_path)
    added = run("sms", "add", "--to", "+" + rental.number, "--from", "Bank", "--text",
                "Код 1", "--id", "x1", "--db", db_path)
    assert (added.exit_code, added.stderr) == (0, "")
    assert added.stdout == "SMS 1 stored: queued for Onlinesim.\n"
    again = run("sms", "add", "--to", "+" + rental.number, "--from", "Bank", "--text", "Код 1",
                "--id", "x1", "--db", db_path)
    assert again.stdout == "SMS 1 stored (already stored before): queued for Onlinesim.\n"
    free = run("sms", "add", "--to", "+79123456789", "--from", "x", "--text", "y",
               "--db", db_path)
    assert free.stdout == ("SMS 2 stored: kept, not pushed: the number is in no open "
                           "rental.\n")
    listed = json.loads(run("sms", "list", "--json", "--pending", "--db", db_path).stdout)
    assert [(r["id"], r["text"], r["push_state"]) for r in listed] == [(1, "Код 1", "pending")]
    table = run("sms", "list", "--db", db_path).stdout
    assert "Код 1" in table and "unrouted" in table
    refused = run("sms", "retry", "1", "--db", db_path)
    assert (refused.exit_code, refused.stdout) == (1, "")
    assert refused.stderr == "Error: SMS 1 is pending; only a failed SMS is retried\n"
    both = run("sms", "list", "--pending", "--failed", "--db", db_path)
    assert both.stderr == "Error: --pending, --failed and --expired exclude each other\n"
    bad = run("sms", "add", "--to", "12", "--from", "x", "--text", "y", "--db", db_path)
    assert bad.exit_code == 1 and bad.stderr.startswith("Error: '12' is not a valid")


def test_ops_list_and_show(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    rentals = rent(db_path, 2)
    listed = run("ops", "list", "--db", db_path)
    assert listed.exit_code == 0
    assert "+" + rentals[0].number in listed.stdout and "400.00" in listed.stdout
    rows = json.loads(run("ops", "list", "--json", "--open", "--db", db_path).stdout)
    assert [r["id"] for r in rows] == [2, 1]
    shown = run("ops", "show", "1", "--db", db_path)
    assert shown.stdout.startswith(f"Operation 1, rental, on +{rentals[0].number} (")
    assert "rent_opened" in shown.stdout
    detail = json.loads(run("ops", "show", "1", "--json", "--db", db_path).stdout)
    assert detail["events"][0]["kind"] == "rent_opened"
    limited = run("ops", "list", "--limit", "2", "--db", db_path)
    assert limited.stdout.endswith(
        "Showing the newest 2; --limit shows more, --json gives every field.\n")
    assert "Showing" not in run("ops", "list", "--limit", "3", "--db", db_path).stdout
    missing = run("ops", "show", "9", "--db", db_path)
    assert (missing.exit_code, missing.stderr) == (1, "Error: no operation 9\n")
    since = run("ops", "list", "--since", "tomorrow", "--db", db_path, env={"COLUMNS": "300"})
    assert since.exit_code == 2
    assert "'tomorrow' is not a date: write a date like 2026-12-03, or a time like " \
           "2026-12-03T14:30:00" in since.stderr
    assert run("ops", "list", "--since", "2030-01-01", "--db", db_path).stdout == \
        "No operations.\n"


def test_bans_list_lift_and_housekeep(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    assert run("bans", "list", "--db", db_path).stdout == \
        "No bans, and no number has failed rentals.\n"
    rent(db_path)
    # Guard window of 0 s and one failure to ban: a pass fails and bans the number.
    kept = run("housekeep", "--guard-s", "0", "--guard-margin-s", "0", "--ban-after", "1",
               "--db", db_path)
    assert kept.stdout == "Housekeeping: 1 change.\n"
    rows = json.loads(run("bans", "list", "--json", "--db", db_path).stdout)
    assert [(r["number"], r["failures"]) for r in rows] == [("4915123456789", 1)]
    assert rows[0]["banned_until"] is not None
    lifted = run("bans", "lift", "+49 151 2345 6789", "--db", db_path)
    assert lifted.stdout == "+4915123456789 is no longer banned and is offered again.\n"
    again = run("bans", "lift", "+49 151 2345 6789", "--db", db_path)
    assert again.stderr == "Error: +4915123456789 is not banned and has no failed rentals\n"


def test_serve_refuses_a_bad_push_url(db_path):
    result = run("serve", "--db", db_path, "--push-url", "onlinesim.io/push",
                 env={"RENTBOX_API_KEY": "k"})
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == "Error: --push-url must be an https:// URL, not 'onlinesim.io/push'\n"
    clear = run("serve", "--db", db_path, "--push-url", "http://onlinesim.example/push",
                env={"RENTBOX_API_KEY": "k"})
    assert clear.exit_code == 1
    assert clear.stderr.startswith("Error: --push-url must use https: the API key would cross")


# ---- status, report, numbers management, backup ------------------------------------------

def test_status_on_a_fresh_database(db_path):
    import re

    from rentbox.db import open_database

    open_database(db_path).close()  # as `rentbox serve` leaves it before the first import
    result = run("status", "--db", db_path)
    assert (result.exit_code, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    # Sizes and free space vary from machine to machine: their shape is checked.
    assert re.fullmatch(r"Database:   \d+\.\d KiB \(WAL \d+(\.\d KiB| B)\), "
                        r"\d+\.\d [KMG]iB free on its disk", lines.pop(7)), lines
    assert lines == [
        "Server:     never started on this database",
        "Onlinesim:  last call never",
        "Income:     0.00 RUB credited today, 0.00 RUB this month (UTC); 0.00 RUB pending in "
        "open rentals",
        "Pool:       0 numbers: 0 free, 0 rented, 0 banned, 0 disabled",
        "SIMs:       0 online, 0 offline, 0 not reported by any gateway",
        "Rentals:    0 open: 0 met their guard window, 0 waiting for an SMS, 0 failed and "
        "awaiting FINISH",
        "Outbox:     0 SMS waiting (0 retrying), 0 refused for good, 0 expired (rental ended first)",
        "Backups:    no scheduled backups (RENTBOX_BACKUP_DIR is not set)",
        "Replica:    none (RENTBOX_REPLICA_URL is not set)",
        "Warning: rentbox serve has never run on this database",
        "Warning: the pool is empty: import numbers with `rentbox numbers import`",
    ]
    facts = json.loads(run("status", "--json", "--db", db_path).stdout)
    assert facts["pool"]["total"] == 0 and len(facts["warnings"]) == 2


def test_status_shows_income_and_the_last_call_made(client, clock, db, db_path, monkeypatch):
    """Onlinesim polls, rents two numbers and finishes one as sold: `status` names FINISH
    as the last call (not the poll), and the income credited and pending."""
    from conftest import API_KEY, add_numbers
    from rentbox import cli

    monkeypatch.setattr(cli, "_now", clock.now)  # the test's clock, not the machine's
    add_numbers(db, clock.now(), ("+4915100000001", "germany", "o2"),
                ("+4915100000002", "germany", "o2"))

    def call(action: str, **body) -> dict:
        answer = client.post("/", {"action": action, "key": API_KEY, **body})
        assert answer.status == 200, answer.json
        return answer.json

    call("GET_SERVICES")
    clock.advance(5)
    rentals = [call("GET_NUMBER", service="rent", sum=400, country="germany")["activationId"]
               for _ in range(2)]
    clock.advance(7)
    call("FINISH_ACTIVATION", service="rent", activationId=rentals[0], status=3, sum=870)
    with db.transaction():  # Onlinesim took an SMS of the other one in its guard window
        db.execute("UPDATE operations SET sms_accepted_at = ? WHERE id = ?",
                   ("2026-11-01T12:00:10.000000Z", rentals[1]))
        # The sold number's SIM is out: "offline" is said of SIMs only.
        db.execute("UPDATE numbers SET seen_by = 'gw1', seen_at = ?, offline = 1,"
                   " offline_since = ? WHERE operation_id IS NULL",
                   ("2026-11-01T12:00:10.000000Z", "2026-11-01T12:00:11.000000Z"))
    lines = run("status", "--db", db_path).stdout.splitlines()
    assert lines[1:5] == [
        "Onlinesim:  last call 2026-11-01 12:00:12 UTC (FINISH_ACTIVATION); before it "
        "GET_NUMBER 2026-11-01 12:00:05 UTC, GET_SERVICES 2026-11-01 12:00:00 UTC",
        "Income:     870.00 RUB credited today, 870.00 RUB this month (UTC); 400.00 RUB "
        "pending in open rentals",
        "Pool:       2 numbers: 0 free, 1 rented, 0 banned, 0 disabled, 1 waiting for their "
        "SIM",
        "SIMs:       0 online, 1 offline, 1 not reported by any gateway"]
    facts = json.loads(run("status", "--json", "--db", db_path).stdout)
    assert facts["income"]["credited_today_kopecks"] == 87000
    assert facts["last_onlinesim_call"]["action"] == "FINISH_ACTIVATION"


def test_report_outputs(db_path):
    from rentbox import operations
    from rentbox.clock import SystemClock
    from rentbox.config import Rules
    from rentbox.db import open_database
    from rentbox.protocol import FinishRequest

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    [first, second] = rent(db_path, 2)
    db = open_database(db_path)
    operations.finish_rent(db, SystemClock(), FinishRequest(first.activation_id, 3, 87050),
                           Rules())
    day = SystemClock().now().strftime("%Y-%m-%d")
    csv_out = run("report", "--csv", "--db", db_path)
    assert csv_out.stdout.splitlines() == [
        "day,operations,sold,cancelled,refunded,wrong_service,open,failed,with_sms,"
        "success_rate,credited_kopecks,pending_kopecks",
        f"{day},2,1,0,0,0,1,0,0,,87050,0"]
    data = json.loads(run("report", "--json", "--by", "country", "--db", db_path).stdout)
    assert data["totals"]["credited_kopecks"] == 87050
    assert [r["key"] for r in data["rows"]] == ["germany"]
    table = run("report", "--by", "month", "--db", db_path).stdout
    assert "870.50" in table and "total" in table
    empty = run("report", "--since", "2099-01-01", "--db", db_path)
    assert empty.stdout == "No operations in this period.\n"
    bad = run("report", "--by", "year", "--db", db_path)
    assert bad.exit_code == 2  # a usage error, listing the choices
    assert "'year' is not one of 'day', 'week', 'month'," in bad.stderr
    bad = run("ops", "list", "--outcome", "won", "--db", db_path)
    assert bad.exit_code == 2 and "'won' is not one of 'open', 'failed'" in bad.stderr
    soon = run("report", "--until", "soon", "--db", db_path)
    assert soon.exit_code == 2 and "'soon' is not a date: write a date like" in soon.stderr
    zoned = run("report", "--json", "--since", "2026-01-01T00:00:00+03:00", "--db", db_path)
    assert zoned.exit_code == 0, zoned.stderr
    assert run("report", "--since", "2026-02-02", "--until", "2026-02-01",
               "--db", db_path).stderr == "Error: --since must be before --until\n"
    assert run("report", "--json", "--csv", "--db", db_path).stderr == \
        "Error: choose one of --json and --csv\n"


def test_numbers_show_disable_enable_remove(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    n = "+4917612345678"
    assert run("numbers", "disable", n, "--db", db_path).stdout == f"{n} is disabled.\n"
    assert run("numbers", "disable", n, "--db", db_path).stdout == f"{n} was already disabled.\n"
    assert run("numbers", "enable", n, "--db", db_path).stdout == f"{n} is enabled.\n"
    shown = run("numbers", "show", "+49 176 1234 5678", "--db", db_path)
    assert shown.stdout.splitlines()[0] == (
        f"{n} (germany, o2, port gw1:3): free; 0 failed rentals in a row")
    assert "No operations yet." in shown.stdout and "number_disabled" in shown.stdout
    assert json.loads(run("numbers", "show", n, "--json", "--db", db_path).stdout)[
        "state"] == "free"
    assert run("numbers", "remove", n, "--db", db_path).stdout == \
        f"{n} is removed from the pool.\n"
    assert n[1:] not in run("numbers", "list", "--db", db_path).stdout
    assert "removed" in run("numbers", "list", "--all", "--db", db_path).stdout
    missing = run("numbers", "show", "+79990001122", "--db", db_path)
    assert (missing.exit_code, missing.stdout, missing.stderr) == (
        1, "", "Error: +79990001122 is not in the pool\n")


def test_remove_is_refused_during_a_rental(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    [rental] = rent(db_path)
    result = run("numbers", "remove", "+" + rental.number, "--db", db_path)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith(f"Error: +{rental.number} is in open rental 1; remove it "
                                    "after Onlinesim has finished that rental")


def test_backup(db_path, tmp_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    target = tmp_path / "copy.db"
    result = run("backup", target, "--db", db_path)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Backed up {db_path} to {target} (")
    listed = json.loads(run("numbers", "list", "--json", "--db", target).stdout)
    assert len(listed) == 7
    again = run("backup", target, "--db", db_path)
    assert (again.exit_code, again.stdout) == (1, "")
    assert again.stderr.startswith(f"Error: {target} already exists")


def test_sms_add_follows_the_rules_the_server_started_with(db_path):
    import datetime as dt

    from rentbox import meta, operations
    from rentbox.clock import FixedClock, SystemClock
    from rentbox.config import Rules
    from rentbox.db import open_database
    from rentbox.protocol import RentRequest

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    db = open_database(db_path)
    half_hour_ago = SystemClock().now() - dt.timedelta(minutes=30)
    rental = operations.open_rent(db, FixedClock(half_hour_ago), RentRequest(100),
                                  Rules(guard_s=7200))
    meta.put(db, half_hour_ago, meta.SERVER, {"guard_s": 7200, "ban_after": 3,
                                              "ban_s": 86400})
    added = run("sms", "add", "--to", "+" + rental.number, "--from", "x", "--text", "y",
                "--db", db_path)
    assert added.stdout == "SMS 1 stored: queued for Onlinesim.\n"  # 30 min < 2 h window
    meta.put(db, half_hour_ago, meta.SERVER, {"guard_s": 60, "ban_after": 3, "ban_s": 86400})
    late = run("sms", "add", "--to", "+" + rental.number, "--from", "x", "--text", "y",
               "--db", db_path)
    # No SMS was accepted by Onlinesim in a 60 s window: the rental failed, its number is free.
    assert late.stdout == "SMS 2 stored: kept, not pushed: the number is in no open rental.\n"


def test_sms_add_help_shows_only_what_it_takes():
    from typer.main import get_command

    command = get_command(app).commands["sms"].commands["add"]
    assert [p.opts for p in command.params] == [
        ["--to"], ["--from"], ["--text"], ["--id"], ["--json"], ["--db"]]
    shown = run("sms", "add", "--help").stdout
    assert "--guard" not in shown and "--presence" not in shown and "--ban" not in shown


def test_ops_close_by_hand(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    [rental] = rent(db_path)
    refused = run("ops", "close", str(rental.activation_id), "--db", db_path)
    assert (refused.exit_code, refused.stdout) == (1, "")
    assert refused.stderr == (f"Error: operation {rental.activation_id} (rental) still holds "
                              "its number until Onlinesim's FINISH closes it (--force closes "
                              "it anyway and frees the number)\n")
    run("housekeep", "--guard-s", "0", "--guard-margin-s", "0", "--db", db_path)
    closed = run("ops", "close", str(rental.activation_id), "--db", db_path)
    assert (closed.exit_code, closed.stdout, closed.stderr) == (
        0, f"Operation {rental.activation_id} closed by hand.\n", "")
    listed = json.loads(run("ops", "list", "--outcome", "closed_by_hand", "--json",
                            "--db", db_path).stdout)
    assert [r["id"] for r in listed] == [rental.activation_id]
    missing = run("ops", "close", "99", "--db", db_path)
    assert (missing.exit_code, missing.stderr) == (1, "Error: no operation 99\n")


def test_ops_close_force_closes_a_rental_that_holds_its_number(db_path):
    """A FINISH that can never be applied must not leave a rental open for ever: --force
    closes it, frees the number (which `numbers remove` then accepts) and says so."""
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    [rental] = rent(db_path)
    closed = run("ops", "close", str(rental.activation_id), "--force", "--db", db_path)
    assert (closed.exit_code, closed.stdout, closed.stderr) == (
        0, f"Operation {rental.activation_id} closed by hand: its number is free again.\n", "")
    shown = json.loads(run("ops", "show", str(rental.activation_id), "--json",
                           "--db", db_path).stdout)
    assert (shown["state"], shown["outcome"]) == ("closed", "closed_by_hand")
    [event] = [e for e in shown["events"] if e["kind"] == "closed_by_hand"]
    assert event["detail"] == {"forced": True,
                               "reason": "closed by hand while it held its number"}
    removed = run("numbers", "remove", "+" + rental.number, "--db", db_path)
    assert removed.exit_code == 0, removed.stderr
    again = run("ops", "close", str(rental.activation_id), "--force", "--db", db_path)
    assert (again.exit_code, again.stderr) == (
        1, f"Error: operation {rental.activation_id} is already closed\n")


def test_numbers_online_offline_and_the_sim_column(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    result = run("numbers", "offline", "+49 151 2345 6789", "+7 912 345-67-89", "--db", db_path)
    assert (result.exit_code, result.stdout) == (0, "2 numbers offline now (2 of them were "
                                                    "online or not reported).\n")
    result = run("numbers", "online", "+7 912 345-67-89", "--db", db_path)
    assert result.stdout == "1 number online now (1 of them was offline).\n"
    offline = json.loads(run("numbers", "list", "--offline", "--json", "--db", db_path).stdout)
    assert [(r["number"], r["state"], r["sim"]) for r in offline] == [
        ("4915123456789", "offline", "offline")]
    online = json.loads(run("numbers", "list", "--online", "--json", "--db", db_path).stdout)
    assert [(r["number"], r["sim"], r["seen_by"]) for r in online] == [
        ("79123456789", "online", "cli")]
    table = run("numbers", "list", "--db", db_path, env={"COLUMNS": "200"}).stdout
    assert "SIM" in table and "last seen (UTC)" in table
    shown = run("numbers", "show", "+4915123456789", "--db", db_path).stdout
    assert "SIM: offline since" in shown and "(by hand;" in shown
    status = run("status", "--db", db_path).stdout
    assert "1 offline" in status and "SIMs:       1 online, 1 offline, 5 not reported" in status
    # Bad input changes nothing and says why.
    result = run("numbers", "online", "+4915299999999", "--db", db_path)
    assert result.exit_code == 1
    assert result.stderr == "Error: +4915299999999 is not in the pool\n"
    result = run("numbers", "list", "--online", "--offline", "--db", db_path)
    assert result.stderr == "Error: --online and --offline exclude each other\n"
    result = run("numbers", "offline", "+4915123456790", "--no-presence", "--db", db_path)
    assert result.exit_code == 1 and "presence is off" in result.stderr


def test_housekeep_verify_recounts_and_repairs_the_tallies(db_path):
    from rentbox.db import open_database

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    result = run("housekeep", "--verify", "--db", db_path)
    assert (result.exit_code, result.stdout) == (0, "Housekeeping: 0 changes.\nTallies: every "
                                                    "one equals a recount of the rows.\n")
    db = open_database(db_path)
    with db.transaction():
        db.execute("UPDATE free_counts SET n = 0 WHERE country = 'russia' AND operator = 'mts'")
    db.close()
    result = run("housekeep", "--verify", "--db", db_path)
    assert result.exit_code == 1
    assert result.stderr == ("Tally differed: free_counts russia/mts: stored 0, recounted 1\n"
                             "Error: 1 tally figure differed from the rows and were "
                             "rebuilt\n")
    assert run("housekeep", "--verify", "--db", db_path).exit_code == 0


def test_numbers_import_reads_stdin_semicolons_and_answers_json(db_path):
    text = "number;country;operator;port\n+49 151 2345 6789;germany;telekom;1.01\n" \
           "+7 912 345-67-89;russia;mts;2.01\n"
    result = runner.invoke(app, ["numbers", "import", "-", "--json", "--db", str(db_path)],
                           input=text)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "file": "standard input", "added": 2, "updated": 0, "unchanged": 0, "rejected": 0,
        "errors": [], "offered": {"germany": {"any": 1, "telekom": 1},
                                  "russia": {"any": 1, "mts": 1}},
        "not_offered": {"rented": 0, "banned": 0, "disabled": 0, "offline": 0}}
    listed = json.loads(run("numbers", "list", "--json", "--db", db_path).stdout)
    assert [(r["number"], r["port"]) for r in listed] == [("4915123456789", "1.01"),
                                                          ("79123456789", "2.01")]
    bad = runner.invoke(app, ["numbers", "import", "-", "--db", str(db_path)],
                        input="nummer|land\n4915123456789|germany\n")
    assert bad.exit_code == 1
    assert "separated by commas or semicolons" in bad.stderr and "'nummer|land'" in bad.stderr


def test_an_interrupted_import_says_what_is_in(db_path, tmp_path, monkeypatch):
    from rentbox import pool

    def interrupted(*args, **kwargs):
        raise pool.ImportInterrupted(400, 1000)

    monkeypatch.setattr(pool, "import_file", interrupted)
    result = run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    assert result.exit_code == 130
    assert result.stderr.startswith("Error: interrupted: 400 of 1000 rows were imported")
    assert "run the same import again to complete it" in result.stderr


def test_help_is_plain_text_in_a_pipe():
    import subprocess
    import sys

    piped = subprocess.run([sys.executable, "-m", "rentbox", "numbers", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0
    assert "Usage: python -m rentbox numbers [OPTIONS] COMMAND [ARGS]..." in piped.stdout
    assert "import" in piped.stdout and not any(c in piped.stdout for c in "╭─│╰")


def test_lists_print_csv_and_sms_add_json(db_path):
    import csv
    import io

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    out = run("numbers", "list", "--csv", "--limit", "2", "--db", db_path).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["number"] for r in rows] == ["4915123456789", "4915123456790"]
    assert rows[0]["sim"] == "-" and rows[0]["seen_at"] == ""
    added = run("sms", "add", "--to", "+4915123456789", "--from", "x", "--text", "hi", "--json",
                "--db", db_path)
    assert json.loads(added.stdout) == {"sms_id": 1, "duplicate": False,
                                        "push_state": "unrouted"}
    listed = list(csv.DictReader(io.StringIO(run("sms", "list", "--csv", "--db", db_path).stdout)))
    assert listed[0]["text"] == "hi"
    for command in (["ops", "list"], ["bans", "list"]):
        assert run(*command, "--csv", "--db", db_path).stdout == ""  # no rows, no header
    both = run("numbers", "list", "--csv", "--json", "--db", db_path)
    assert both.stderr == "Error: choose one of --json and --csv\n"


def test_backup_answers_json(db_path, tmp_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    copy = tmp_path / "copy.db"
    result = run("backup", copy, "--json", "--db", db_path)
    answer = json.loads(result.stdout)
    assert answer == {"database": str(db_path), "backup": str(copy),
                      "bytes": copy.stat().st_size}


# ---- help texts (issue 24, item 11) --------------------------------------------------------

# What a help text must not show: Click's and Typer's type placeholders and ranges, strftime
# patterns, and "(s)" plurals.
BAD_HELP = re.compile(r"<(int|float|str|text|file|directory|path|parse)( range)?>|\{[a-z_]+\}"
                      r"|%[YmdHMSz]|\bx *[<>]=|[<>]= *x\b|\(s\)")


@pytest.fixture(params=["rich", "plain"])
def help_mode(request, monkeypatch):
    """Help as on a terminal (Rich), and as in a pipe (plain text: rentbox's main() turns
    Rich off there)."""
    import typer.core

    monkeypatch.setattr(typer.core, "HAS_RICH", request.param == "rich")
    return request.param


@pytest.mark.parametrize("path", [path for path, _ in _all_commands(get_command(app))],
                         ids=lambda path: " ".join(path) or "rentbox")
def test_help_says_what_to_write(path, help_mode):
    shown = run(*path, "--help", env={"COLUMNS": "100"}).stdout
    assert not BAD_HELP.search(shown), BAD_HELP.search(shown).group()
    usage = next(line for line in shown.splitlines() if "Usage:" in line)
    assert re.search(r"Usage: \S+ " + " ".join(path) + r" ?\[OPTIONS\]( [A-Z_.]+| COMMAND"
                     r" \[ARGS\]\.\.\.)*$", usage.strip()), usage


def test_rentbox_help_groups_its_commands_with_whole_summaries(help_mode):
    from rentbox.cli import COMMAND_GROUPS

    top = get_command(app)
    assert sorted(n for names in COMMAND_GROUPS.values() for n in names) == sorted(top.commands)
    shown = run("--help", env={"COLUMNS": "100"}).stdout
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", shown).split())
    headings = [flat.index(f"{panel}") for panel in COMMAND_GROUPS]
    assert headings == sorted(headings)
    names = [n for names in COMMAND_GROUPS.values() for n in names]
    assert names[:3] == ["serve", "status", "report"] and names[-1] == "restore"
    where = [flat.index(f" {name} ", headings[0]) for name in names]
    assert where == sorted(where)
    for name in names:  # each summary whole, not cut at 45 characters
        first = top.commands[name].help.split("\n\n")[0]
        sentence = " ".join(first.split(". ")[0].split()).rstrip(".")
        assert sentence.replace("`", "") in flat, name
    assert "..." not in flat.replace("[ARGS]...", "")


def test_help_in_a_pipe_has_whole_summaries():
    import subprocess
    import sys

    piped = subprocess.run([sys.executable, "-m", "rentbox", "--help"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    flat = " ".join(piped.stdout.split())
    assert "Maintenance: housekeep Run one housekeeping pass now: expire guard windows, " \
           "lift ended bans, turn offline the SIMs whose presence window ended." in flat


@pytest.mark.parametrize("args, message", [
    (["serve", "--port", "70000"], "'70000' is not a whole number from 0 to 65535"),
    (["serve", "--threads", "1.5"], "'1.5' is not a whole number from 1 to 64"),
    (["serve", "--guard-s", "-1"], "'-1' is not a number of at least 0"),
    (["serve", "--push-retry-s", "nan"], "'nan' is not a number of at least 0.1"),
    (["numbers", "list", "--limit", "0"], "'0' is not a whole number of at least 1"),
    (["ops", "show", "0"], "'0' is not an id (a whole number, 1 or more)"),
    (["report", "--since", "3.12.2026"], "'3.12.2026' is not a date: write a date like "
                                         "2026-12-03"),
])
def test_a_bad_value_is_refused_in_words(db_path, args, message):
    result = run(*args, "--db", db_path, env={"COLUMNS": "300", "RENTBOX_API_KEY": "k"})
    assert result.exit_code == 2
    assert message in result.stderr and not BAD_HELP.search(result.stderr)


# ---- numbers import: countries, no database on failure, what is offered -------------------

def test_import_refuses_countries_onlinesim_does_not_know_or_that_are_wrong(tmp_path):
    db_path = tmp_path / "typo.db"
    csv = tmp_path / "typo.csv"
    csv.write_text("number,country,operator\n+4915123456789,gemany,telekom\n"
                   "+4915123456790,de,o2\n+4917612345678,russia,o2\n")
    result = run("numbers", "import", csv, "--db", db_path)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr.splitlines()[1:] == [
        "  line 2: 'gemany' is not one of Onlinesim's country names: did you mean germany?",
        "  line 3: 'de' is not one of Onlinesim's country names: use Onlinesim's country "
        "name, e.g. germany",
        "  line 4: +4917612345678 is a number of germany (DE), not of russia"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.csv"]  # no -wal, no -shm
    status = run("status", "--db", db_path)
    assert (status.exit_code, status.stderr) == (
        1, f"Error: {db_path} does not exist: check --db (or RENTBOX_DB); `rentbox numbers "
           "import` or `rentbox serve` creates a new database\n")
    for failing in (["numbers", "import", tmp_path / "nope.csv"],
                    ["numbers", "import", csv, "--country", "gemany"]):
        assert run(*failing, "--db", db_path).exit_code == 1
        assert not db_path.exists()
    added = run("numbers", "import", csv, "--db", db_path, "--country-names", "de=DE,gemany=DE",
                env={"RENTBOX_COUNTRY_NAMES": "ignored=XX"})
    assert added.exit_code == 1 and "line 4: +4917612345678 is a number of germany" in \
        added.stderr
    csv.write_text("number,country\n+4915123456789,gemany\n")
    added = run("numbers", "import", csv, "--db", db_path,
                env={"RENTBOX_COUNTRY_NAMES": "gemany=DE"})
    assert added.exit_code == 0, added.stderr
    bad = run("numbers", "import", csv, "--db", db_path, "--country-names", "gemany")
    assert bad.stderr == ("Error: country name 'gemany' must be written name=REGION: a "
                          "lower-case name as Onlinesim writes it, and the two-letter ISO code "
                          "of its numbers' region (e.g. kosovo=XK)\n")


def test_import_says_what_is_offered_and_why_the_rest_is_not(db_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    rent(db_path)
    run("numbers", "disable", "+380 50 123 4567", "--db", db_path)
    run("numbers", "offline", "+7 912 345-67-89", "--db", db_path)
    result = run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    assert result.stdout.splitlines()[1:] == [
        "Ready to offer: 4 numbers:",
        "  germany 2: o2 1, telekom 1",
        "  russia 2: beeline 1, mts 1",
        "Not offered now: 1 rented, 1 disabled, 1 with their SIM offline."]


# ---- numbers list streams (issue 24, item 13) -----------------------------------------------

def test_numbers_list_streams_json_csv_and_table_like_the_lists(db_path, monkeypatch):
    import csv
    import io

    from rentbox import render

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    listed = run("numbers", "list", "--json", "--db", db_path).stdout
    rows = json.loads(listed)
    assert listed == json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    assert [r["number"] for r in rows][:2] == ["4915123456789", "4915123456790"]
    empty = run("numbers", "list", "--json", "--online", "--db", db_path)
    assert empty.stdout == "[]\n"
    as_csv = list(csv.DictReader(io.StringIO(run("numbers", "list", "--csv", "--db",
                                                 db_path).stdout)))
    assert [r["number"] for r in as_csv] == [r["number"] for r in rows]
    # The table's columns are measured on the first rows only; a later, wider cell pushes
    # its line right instead of being cut (in a pipe).
    monkeypatch.setattr(render, "SAMPLE_ROWS", 2)
    wide = db_path.parent / "wide.csv"
    wide.write_text("number,country,operator,port\n+380501234567,ukraine,,gateway-7:slot-12\n")
    run("numbers", "import", wide, "--db", db_path)
    lines = run("numbers", "list", "--db", db_path).stdout.splitlines()
    assert lines[:3] == [
        "number          country  operator  port   state  SIM  last seen (UTC)",
        "─" * 69,
        "+4915123456789  germany  telekom   gw1:1  free   -"]
    assert lines[-2:] == ["+380501234567   ukraine            gateway-7:slot-12  free   -",
                          "7 numbers"]
    assert run("numbers", "list", "--limit", "1", "--db", db_path).stdout.endswith(
        "\n1 number\n")


def test_numbers_list_into_head_exits_0_quietly(db_path):
    """`rentbox numbers list | head`: the reader goes away after a few lines; rentbox stops
    writing, without a traceback and with exit code 0."""
    import subprocess
    import sys

    from conftest import START, add_numbers
    from rentbox.db import open_database

    db = open_database(db_path)
    add_numbers(db, START, *[(f"+49151{i:08d}", "germany", "telekom") for i in range(3000)])
    db.close()
    for options in ([], ["--csv"], ["--json"]):
        lister = subprocess.Popen([sys.executable, "-m", "rentbox", "numbers", "list",
                                   "--db", str(db_path), *options],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = [lister.stdout.readline() for _ in range(3)]
        lister.stdout.close()  # far more than a pipe holds is still to come
        assert lister.wait(timeout=60) == 0
        assert lister.stderr.read() == b""
        lister.stderr.close()
        assert first[0].startswith((b"number", b"[")), first


def test_a_reader_gone_before_rentbox_writes_is_exit_0_too(db_path):
    """`rentbox status | true`: the reader is gone before the first line, which Rich
    writes; Rich's own reaction to that (exit 1) is not rentbox's."""
    import subprocess

    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    for command in ("status", "ops list", "numbers list"):
        done = subprocess.run(["bash", "-c", f'"{sys.executable}" -m rentbox {command} --db '
                               f'"{db_path}" | true; echo "${{PIPESTATUS[0]}}"'],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout == "0\n" and done.stderr == "", (command, done)


# ---- backup into a folder (issue 24, item 14) -----------------------------------------------

def test_backup_into_a_folder_writes_a_file_named_by_the_time(db_path, tmp_path):
    run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    folder = tmp_path / "backups"
    missing = run("backup", f"{folder}/", "--db", db_path)
    assert (missing.exit_code, missing.stdout) == (1, "")
    assert missing.stderr.startswith(f"Error: cannot write {folder}/rentbox-")
    assert missing.stderr.endswith(f"-by-hand.db: the folder {folder} does not exist\n")
    folder.mkdir()
    for path in (f"{folder}/", folder):  # with a slash, or a folder that exists
        result = run("backup", path, "--json", "--db", db_path)
        assert result.exit_code == 0, result.stderr
        [written] = folder.iterdir()
        assert re.fullmatch(r"rentbox-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ-by-hand\.db",
                            written.name)
        assert len(json.loads(run("numbers", "list", "--json", "--db", written).stdout)) == 7
        # A second backup in the same second would find this name taken (never
        # overwritten): each is checked on its own (reading it left its -wal and -shm).
        for made in folder.iterdir():
            made.unlink()
