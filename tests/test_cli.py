import json

import click
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
    assert result.stdout == f"{EXAMPLES / 'pool.csv'}: 7 added, 0 updated, 0 unchanged, " \
                            "0 rejected.\n"
    assert result.stderr == ""
    listed = run("numbers", "list", "--json", "--db", db_path)
    rows = json.loads(listed.stdout)
    assert len(rows) == 7
    assert rows[0] == {"number": "4915123456789", "country": "germany", "operator": "telekom",
                       "port": "gw1:1", "state": "free"}
    table = run("numbers", "list", "--db", db_path)
    assert "+4915123456789" in table.stdout and "telekom" in table.stdout
    assert table.stdout.rstrip().endswith("7 number(s)")
    again = run("numbers", "import", EXAMPLES / "pool.csv", "--db", db_path)
    assert again.stdout.endswith("0 added, 0 updated, 7 unchanged, 0 rejected.\n")


def test_db_from_environment(db_path):
    result = run("numbers", "list", env={"RENTBOX_DB": str(db_path)})
    assert result.exit_code == 0
    assert result.stdout == "The pool is empty. Add numbers with: rentbox numbers import FILE\n"
    assert db_path.exists()


def test_bad_rows_are_reported_and_nothing_imported(db_path, tmp_path):
    csv = tmp_path / "pool.csv"
    csv.write_text("number,country\n+4915123456789,germany\n+49 1,germany\n")
    result = run("numbers", "import", csv, "--db", db_path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Error: 1 invalid row(s), nothing imported (fix them, or pass --skip-invalid to "
        "import the valid rows):\n  line 3: '+49 1' is not a valid international number "
        "(country code first, as in +49 151 2345 6789)\n")
    assert json.loads(run("numbers", "list", "--json", "--db", db_path).stdout) == []
    skipped = run("numbers", "import", csv, "--skip-invalid", "--country", "x", "--db", db_path)
    assert skipped.exit_code == 0
    assert skipped.stderr.startswith("Skipped line 3: '+49 1' is not a valid")
    assert skipped.stdout.endswith("1 added, 0 updated, 0 unchanged, 1 rejected.\n")


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
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _all_commands(sub, path + (name,))


@pytest.mark.parametrize("path, command", list(_all_commands(get_command(app))),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_and_option_has_help(path, command):
    assert (command.help or "").strip(), f"rentbox {' '.join(path)} has no help"
    for param in command.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{' '.join(path)} {param.name} has no help"
    result = run(*path, "--help")
    assert result.exit_code == 0
