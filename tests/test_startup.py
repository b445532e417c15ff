"""Start-up: a command imports what it uses when it runs (issue 25). Read commands on an
up-to-date database never import sqlite-utils, which is only the schema's migration tool.
Timing is measured by benchmarks/cli_startup.py, never here."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rentbox import db as db_module
from rentbox.db import Database, migrations, open_database

# Runs the console script's main() with the arguments given, then writes the modules
# Python had imported to the file named first: stdout and stderr stay the command's.
DRIVER = """
import json, sys
modules_file, sys.argv = sys.argv[1], ["rentbox", *sys.argv[2:]]
try:
    from rentbox.cli import main
    main()
    code = 0
except SystemExit as exit:
    code = exit.code or 0
with open(modules_file, "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""


def run_command(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`rentbox ARGS` in a fresh Python: its result, and the modules it imported."""
    modules_file = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", DRIVER, str(modules_file), *map(str, args)],
                            capture_output=True, text=True, timeout=60)
    return result, set(json.loads(modules_file.read_text()))


def test_reading_an_up_to_date_database_does_not_import_sqlite_utils(tmp_path, db_path):
    open_database(db_path).close()  # created and migrated: up to date
    result, modules = run_command(tmp_path, "report", "--by", "month", "--json",
                                  "--db", db_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout)["by"] == "month"
    assert "sqlite_utils" not in modules


def test_an_old_database_is_migrated_with_sqlite_utils(tmp_path, db_path):
    """The check is cheap, the migration still sqlite-utils': an old schema is brought up
    to date by the first command that opens it."""
    old = Database(db_path)
    migrations.apply(old, stop_before=migrations._migrations[-1].name)
    old.close()
    result, modules = run_command(tmp_path, "report", "--json", "--db", db_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert "sqlite_utils" in modules
    assert not migrations.pending(reopened := Database(db_path))
    reopened.close()


def test_pending_and_applied_agree_with_sqlite_utils(db_path):
    """rentbox reads `_sqlite_migrations` itself; sqlite-utils, which wrote it, finds
    the same migrations applied and pending at every step."""
    import sqlite_utils

    reference = sqlite_utils.Migrations("rentbox")
    for m in migrations._migrations:
        reference(name=m.name)(m.fn)
    db = Database(db_path)
    names = [m.name for m in migrations._migrations]
    for stop_before in [names[0], names[len(names) // 2], names[-1], None]:
        migrations.apply(db, stop_before=stop_before)
        assert ([m.name for m in migrations.pending(db)]
                == [m.name for m in reference.pending(db.utils)])
        assert ([(m.name, m.applied_at) for m in migrations.applied(db)]
                == [(m.name, m.applied_at) for m in reference.applied(db.utils)])
    assert migrations.pending(db) == []
    db.close()


def test_a_migration_name_registered_twice_is_refused():
    twice = db_module.Migrations("twice")
    twice()(test_a_migration_name_registered_twice_is_refused)
    with pytest.raises(ValueError, match="registered twice"):
        twice()(test_a_migration_name_registered_twice_is_refused)


def test_execute_commits_a_write_made_outside_a_transaction(db, db_path):
    """As sqlite-utils' execute(): a write outside a transaction is committed at once
    (another connection sees it); after an explicit BEGIN it waits for the COMMIT."""
    other = sqlite3.connect(db_path)
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (?)", (1,))
    assert not db.conn.in_transaction
    assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    db.execute("  -- a comment first\n BEGIN")
    db.execute("INSERT INTO t VALUES (2)")
    assert db.conn.in_transaction
    assert other.execute("SELECT count(*) FROM t").fetchone() == (1,)
    db.execute("COMMIT")
    assert other.execute("SELECT count(*) FROM t").fetchone() == (2,)
    other.close()


def test_a_failed_write_leaves_no_transaction_open(db):
    db.execute("CREATE TABLE t (x UNIQUE)")
    db.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO t VALUES (1)")
    assert not db.conn.in_transaction


def test_sqlite_utils_helpers_work_on_the_same_connection(db):
    """`db["table"]`, `table_names()` and `atomic()` come from sqlite-utils, on rentbox's
    own connection: inside rentbox's transaction they join it."""
    with db.transaction():
        db["notes"].insert({"id": 1, "text": "kept"}, pk="id")
        assert db.conn.in_transaction
    assert "notes" in db.table_names()
    assert db.rows("SELECT text FROM notes") == [{"text": "kept"}]
    assert db.execute("PRAGMA recursive_triggers").fetchone() == (1,)


def test_first_keyword_is_found_as_sqlite_utils_finds_it():
    from sqlite_utils.db import _first_keyword

    for sql in ["BEGIN", "  begin immediate", "-- c\nSAVEPOINT x", "/* c */ RELEASE x",
                ";;\ufeffcommit", "-- only a comment", "/* unclosed", "INSERT INTO t",
                "", "   ", "with x as (select 1) select * from x", "rollback;"]:
        assert db_module._first_keyword(sql) == _first_keyword(sql), sql


def test_status_in_a_pipe_needs_neither_sqlite_utils_nor_rich_nor_http(tmp_path, db_path):
    """Piped, `status` prints plain lines: Rich's console (colours), sqlite-utils, the
    pusher and its HTTP client are never imported."""
    open_database(db_path).close()
    result, modules = run_command(tmp_path, "status", "--db", db_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[-2:] == [
        "Warning: rentbox serve has never run on this database",
        "Warning: the pool is empty: import numbers with `rentbox numbers import`"]
    assert not {"sqlite_utils", "rich.console", "http.client", "ssl", "rentbox.push"} & modules


def test_main_builds_only_the_command_it_runs():
    from rentbox import cli

    def names(app) -> tuple[list, list]:
        return ([c.callback.__name__ for c in app.registered_commands],
                [g.name for g in app.registered_groups])

    assert names(cli._app_for(["status", "--db", "x.db"])) == (["status"], [])
    assert names(cli._app_for(["services"])) == (["services_command"], [])
    assert names(cli._app_for(["numbers", "list"])) == ([], ["numbers"])
    for args in ([], ["--help"], ["--version"], ["stauts"], ["--db", "status"]):
        assert cli._app_for(args) is cli.app, args
    assert len(cli.app.registered_commands) > 1  # the app itself is left whole


def test_the_console_script_still_knows_every_command(tmp_path):
    result, _ = run_command(tmp_path, "--help")
    assert result.returncode == 0
    for name in ("serve", "status", "report", "numbers", "ops", "backup", "restore"):
        assert f"\n  {name} " in result.stdout, name
    result, _ = run_command(tmp_path, "stauts")
    assert result.returncode == 2
    assert "No such command 'stauts'" in result.stderr
    result, _ = run_command(tmp_path, "status", "--no-such-option")
    assert result.returncode == 2
    assert "Usage: rentbox status [OPTIONS]" in result.stderr


def test_a_lazy_console_is_made_on_first_use_with_what_was_set_before(monkeypatch):
    from rentbox import render

    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    console = render.LazyConsole(highlight=False)
    console.quiet = True
    assert console.is_terminal is False  # pytest's stdout is no terminal: Rich's answer
    assert console._console is None
    console.print("not shown: quiet")  # made now, quiet as set before
    assert console.console.quiet is True and console.console.is_terminal is False
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert render.LazyConsole().is_terminal is True  # Rich reads FORCE_COLOR


# What `status` and `report` must not load: the CLI's other commands' modules, serve's
# settings, the gateway adapters and the SMS path, the pool's CSV importer, alerts and
# their HTTP client.
NOT_FOR_READING = {"sqlite_utils", "rentbox.settings", "rentbox.alerts",
                   "rentbox.housekeeping", "rentbox.retention", "rentbox.sms",
                   "rentbox.gateways.common", "rentbox.gateways.intake",
                   "rentbox.gateways.smsgate", "rentbox.push", "rentbox.selftest",
                   "rentbox.server", "rentbox.web", "csv", "tempfile", "urllib.request",
                   "http.client", "ssl", "email"}
# Nor does `report`, which reads the tallies, load what only `status` reads.
ONLY_FOR_STATUS = {"rentbox.operations", "rentbox.presence", "rentbox.buyers",
                   "rentbox.backups", "rentbox.replication", "rentbox.spool",
                   "rentbox.gateways", "logging"}


@pytest.mark.parametrize("args", [["status"], ["status", "--json"],
                                  ["report", "--by", "month"],
                                  ["report", "--by", "month", "--json"]])
def test_reading_commands_import_only_what_they_read(tmp_path, db_path, args):
    open_database(db_path).close()
    result, modules = run_command(tmp_path, *args, "--db", db_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout
    assert not NOT_FOR_READING & modules
    if args[0] == "report":
        assert not ONLY_FOR_STATUS & modules
    else:
        assert ONLY_FOR_STATUS <= modules  # what status reads: the check sees imports
