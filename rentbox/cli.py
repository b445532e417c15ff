"""The `rentbox` command line: thin commands that parse, call one core function, render."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from rentbox import __version__, pool
from rentbox.clock import SystemClock
from rentbox.config import API_KEY_ENV, SETTINGS, Settings
from rentbox.db import open_database
from rentbox.errors import RentboxError

app = typer.Typer(
    help="rentbox: a partner server for Onlinesim's long-term number rentals.",
    no_args_is_help=True,
    add_completion=False,
    # Rich tracebacks with local variables could print the API key.
    pretty_exceptions_enable=False,
)
numbers_app = typer.Typer(help="Import and inspect the number pool.", no_args_is_help=True)
app.add_typer(numbers_app, name="numbers")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _option(name: str, **extra) -> typer.models.OptionInfo:
    """A CLI option built from the settings table: one name, env var and help for each."""
    setting = SETTINGS[name]
    return typer.Option(setting.option, envvar=setting.env, help=setting.help,
                        show_envvar=True, **extra)


DbOption = Annotated[Path, _option("db", dir_okay=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fails_cleanly(command: Callable) -> Callable:
    """Turn a RentboxError into `Error: …` on stderr and exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RentboxError as error:
            err.print(f"Error: {error}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def say(text: str) -> None:
    """A plain line on stdout: no markup, no wrapping (file names may hold '[' or be long)."""
    out.print(text, markup=False, soft_wrap=True)


def _print_json(value: object) -> None:
    # Plain stdout, not Rich: scripts need JSON that no terminal width can re-wrap.
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _version(value: bool) -> None:
    if value:
        say(f"rentbox {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """rentbox: a partner server for Onlinesim's long-term number rentals.

    Import your numbers with `rentbox numbers import`, then run `rentbox serve`.
    """


@app.command()
@fails_cleanly
def serve(
    db: DbOption = SETTINGS["db"].default,
    host: Annotated[str, _option("host")] = SETTINGS["host"].default,
    port: Annotated[int, _option("port", min=0, max=65535)] = SETTINGS["port"].default,
    threads: Annotated[int, _option("threads", min=1, max=64)] = SETTINGS["threads"].default,
) -> None:
    """Answer Onlinesim's rent calls over HTTP until stopped (Ctrl-C or SIGTERM).

    The partner's Onlinesim API key comes from the RENTBOX_API_KEY environment variable.
    """
    from rentbox import server  # waitress is only needed here

    api_key = os.environ.get(API_KEY_ENV, "")
    if not api_key.strip():
        raise RentboxError(
            f"{API_KEY_ENV} is not set: serve needs your Onlinesim API key to check "
            "Onlinesim's calls (export RENTBOX_API_KEY=...)"
        )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = Settings(api_key=api_key.strip(), db=db, host=host, port=port, threads=threads)
    try:
        server.serve(settings)
    except OSError as error:
        raise RentboxError(f"cannot listen on {host}:{port}: {error.strerror}") from None


@numbers_app.command("import")
@fails_cleanly
def numbers_import(
    file: Annotated[Path, typer.Argument(help="CSV file with a header row: number, "
                                              "country, operator, port.")],
    country: Annotated[Optional[str], typer.Option(
        help="Country for rows without one (Onlinesim's lower-case name, e.g. germany).")] = None,
    operator: Annotated[Optional[str], typer.Option(
        help="Operator for rows without one.")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Import the valid rows even if some rows are bad.")] = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Add numbers to the pool, or update the ones already there.

    Numbers are international (country code first; '+', spaces and dashes are fine).
    If any row is bad, nothing is imported unless --skip-invalid is given.
    """
    database = open_database(db)
    result = pool.import_file(database, SystemClock().now(), file, country=country,
                              operator=operator, skip_invalid=skip_invalid)
    for problem in result.rejected:
        err.print(f"Skipped {problem}", markup=False, soft_wrap=True)
    say(f"{file}: {result.added} added, {result.updated} updated, "
        f"{result.unchanged} unchanged, {len(result.rejected)} rejected.")


@numbers_app.command("list")
@fails_cleanly
def numbers_list(json_output: JsonOption = False, db: DbOption = SETTINGS["db"].default) -> None:
    """Show the pool: every number with its country, operator, port and state."""
    rows = pool.list_numbers(open_database(db))
    if json_output:
        _print_json(rows)
        return
    if not rows:
        say("The pool is empty. Add numbers with: rentbox numbers import FILE")
        return
    table = Table("number", "country", "operator", "port", "state")
    for row in rows:
        table.add_row("+" + row["number"], row["country"], row["operator"] or "",
                      row["port"] or "", row["state"])
    out.print(table)
    say(f"{len(rows)} number(s)")


def main() -> None:
    app()
