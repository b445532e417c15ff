"""The `rentbox` command line: thin commands that parse, call one core function, render."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import datetime as dt
import functools
import gc
import importlib
import itertools
import json
import math
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, Iterable, Optional

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

# Only what building the commands needs: each command imports the modules it uses when
# it runs, so that `rentbox status` never loads the pool's importer, the gateways, alerts
# or backups (issue 25; tests/test_startup.py).
from rentbox import __version__, meta, render, reports
from rentbox.clock import SystemClock
from rentbox.config import (API_KEY_ENV, BUYER_KEY_ENV, CONSOLE_PASSWORD_ENV,
                            GATEWAY_TOKEN_ENV, GOIP_PASSWORD_ENV, METRICS_TOKEN_ENV, SETTINGS,
                            SMSGATE_KEY_ENV, SMSHUB_KEY_ENV, TELEGRAM_TOKEN_ENV, Rules, Setting)
from rentbox.db import LOCK_POLL_MAX_S, open_database
from rentbox.errors import InvalidInput, RentboxError

if TYPE_CHECKING:
    from rentbox.settings import Alerting

# `rentbox --help` lists the commands in these groups, in this order: running and
# watching the server first, the day-to-day work next, maintenance last.
COMMAND_GROUPS = {
    "Run and watch": ("serve", "status", "report", "selftest"),
    "Numbers, rentals and SMS": ("numbers", "services", "sms", "ops", "bans", "alerts"),
    "Maintenance": ("housekeep", "prune", "backup", "restore"),
}


class _Group(TyperGroup):
    """Typer's group, with its commands in the order and panels of GROUPS; in plain text
    (a pipe, where Rich is off) in the same groups, each with its first sentence whole
    rather than cut at 45 characters."""

    GROUPS: dict[str, tuple[str, ...]] = {}

    def __init__(self, **attrs):
        super().__init__(**attrs)
        for panel, names in self.GROUPS.items():
            for name in names:
                if name in self.commands:
                    self.commands[name].rich_help_panel = panel

    def list_commands(self, ctx) -> list[str]:
        order = [name for names in self.GROUPS.values() for name in names]
        return sorted(super().list_commands(ctx),
                      key=lambda name: order.index(name) if name in order else len(order))

    def format_commands(self, ctx, formatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                panel = getattr(command, "rich_help_panel", None) or "Commands"
                sections.setdefault(panel, []).append(
                    (name, command.get_short_help_str(limit=1_000_000)))
        for panel, rows in sections.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


class _Commands(_Group):
    """`rentbox` itself: its commands in COMMAND_GROUPS."""

    GROUPS = COMMAND_GROUPS


class _Command(TyperCommand):
    """Typer's command, with placeholders that say what to write: `--port PORT`, `URL`,
    `[day|week|...]`, instead of Typer's `<int range>`, `{url}`, `<text>`. An option or
    argument without a `metavar` gets its name in capitals, or its choices."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                # Rich's help prints an argument's type beside its name (`<text>`): the
                # placeholder already says it.
                param.type = copy.copy(param.type)
                param.type.get_metavar = lambda param, ctx: ""
            if param.metavar is not None or getattr(param, "is_flag", False):
                continue
            choices = getattr(param.type, "choices", None)
            param.metavar = ("[" + "|".join(map(str, choices)) + "]" if choices
                             else (param.name or "").upper())
            if param.nargs != 1:
                param.metavar += "..."

    def collect_usage_pieces(self, ctx) -> list[str]:
        # Typer writes a required argument as {URL}.
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


class _Typer(typer.Typer):
    """rentbox's Typer apps: the group and command classes above, help as Markdown
    (lines of one paragraph are joined, `code` is marked), no completion installer."""

    def __init__(self, *, cls: type[_Group] = _Group, **settings):
        super().__init__(cls=cls, no_args_is_help=True, add_completion=False,
                         rich_markup_mode="markdown", **settings)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    cls=_Commands,
    help="rentbox: a partner server for Onlinesim's rentals and activations.",
    # Rich tracebacks with local variables could print the API key.
    pretty_exceptions_enable=False,
)
numbers_app = _Typer(help="Import and inspect the number pool.")
sms_app = _Typer(help="Add, list and re-queue SMS.")
ops_app = _Typer(help="Inspect operations: rentals and activations.")
bans_app = _Typer(help="Inspect and lift bans of numbers.")
alerts_app = _Typer(help="See alerts, and test the channels they go to.")
app.add_typer(numbers_app, name="numbers")
app.add_typer(sms_app, name="sms")
app.add_typer(ops_app, name="ops")
app.add_typer(bans_app, name="bans")
app.add_typer(alerts_app, name="alerts")

# Rich's consoles, made when first used: plain lines (say) and tables need neither.
out = render.LazyConsole(highlight=False)
err = render.LazyConsole(stderr=True, highlight=False)


def _reader_gone() -> None:
    """Rich's own answer to a closed pipe is exit code 1; raise it as the BrokenPipeError
    it is, for fails_cleanly to end the output quietly with 0 (`numbers list | head`)."""
    out.quiet = True
    raise BrokenPipeError


out.on_broken_pipe = _reader_gone


def _option(name: str, **extra) -> typer.models.OptionInfo:
    """A CLI option built from the settings table: one name, env var and help for each."""
    setting = SETTINGS[name]
    return typer.Option(setting.flag, envvar=setting.env, help=setting.help,
                        show_envvar=True, **_takes(setting, extra))


# What a setting's option takes, where its name does not say it (SECONDS for `_s`, URL
# for `_url`).
_METAVARS = {"db": "FILE", "poll_boxes": "FILE", "buyers": "FILE", "spool_dir": "FOLDER",
             "backup_dir": "FOLDER", "host": "ADDRESS", "goip_host": "ADDRESS",
             "port": "PORT", "goip_port": "PORT", "threads": "N", "push_parallel": "N",
             "ban_after": "N", "backup_keep": "N", "alert_summary_hour": "HOUR",
             "alert_disk_free_mb": "MIB", "backup_mib_s": "MIB", "sms_keep_days": "DAYS",
             "services": "NAMES", "country_names": "NAME=REGION,...",
             "telegram_chat_id": "CHAT", "dinstar_tz": "ZONE"}


def _takes(setting: Setting, extra: dict) -> dict:
    """A setting's option's placeholder (SECONDS, URL, FILE, ...) and, for a number with
    bounds (`min`, `max`), a parser that says them in words where Click would print
    `<float range>` and `x>=0.1`."""
    extra = dict(extra)
    low, high = extra.pop("min", None), extra.pop("max", None)
    if isinstance(setting.default, bool):
        return extra
    extra.setdefault("metavar", _METAVARS.get(setting.name) or (
        "SECONDS" if setting.name.endswith("_s") else
        "URL" if setting.name.endswith("_url") else setting.name.upper()))
    if low is not None or high is not None:
        floats = float in (type(setting.default), type(low), type(high))
        extra["parser"] = _number(float if floats else int, low, high)
    return extra


def _number(kind: type, low: float | None = None, high: float | None = None,
            what: str | None = None) -> Callable[[str], float]:
    """A parser of a number (`kind`: int or float) within bounds, whose error says what it
    takes (`what`, else the bounds in words)."""
    if what is None:
        noun = "a whole number" if kind is int else "a number"
        what = (f"{noun} from {low:g} to {high:g}" if low is not None and high is not None
                else f"{noun} of at least {low:g}" if low is not None
                else f"{noun} of at most {high:g}")

    def parse(value) -> float:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            number = None
        if (number is None or not math.isfinite(number) or (low is not None and number < low)
                or (high is not None and number > high)):
            raise typer.BadParameter(f"{value!r} is not {what}")
        return number

    return parse


DbOption = Annotated[Path, _option("db", dir_okay=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON, for scripts.")]
CsvOption = Annotated[bool, typer.Option("--csv", help="Print CSV, for spreadsheets.")]
GuardOption = Annotated[float, _option("guard_s", min=0)]
GuardMarginOption = Annotated[float, _option("guard_margin_s", min=0)]
BanAfterOption = Annotated[int, _option("ban_after", min=1)]
BanOption = Annotated[float, _option("ban_s", min=0)]


def _rule_option(name: str, **extra) -> typer.models.OptionInfo:
    """A rule option for commands that work beside the server: by default they follow the
    rules the server last started with, so that they never apply other ones."""
    setting = SETTINGS[name]
    default = (("on" if setting.default else "off") if isinstance(setting.default, bool)
               else f"{setting.default:g}")
    return typer.Option(setting.flag, envvar=setting.env, show_envvar=True,
                        help=f"{setting.help} Default: as `rentbox serve` last started on "
                             f"this database, else {default}.", **_takes(setting, extra))


ServerGuardOption = Annotated[Optional[float], _rule_option("guard_s", min=0)]
ServerGuardMarginOption = Annotated[Optional[float], _rule_option("guard_margin_s", min=0)]
ServerBanAfterOption = Annotated[Optional[int], _rule_option("ban_after", min=1)]
ServerBanOption = Annotated[Optional[float], _rule_option("ban_s", min=0)]
ServerPresenceOption = Annotated[Optional[bool], _rule_option("presence")]
ServerPresenceWindowOption = Annotated[Optional[float], _rule_option("presence_s", min=1)]


def _server_rules(database, **given: float | int | bool | None) -> Rules:
    """The rules given on the command line, else the server's, else the defaults."""
    recorded = meta.server_rules(database) or Rules()
    return dataclasses.replace(recorded, **{k: v for k, v in given.items() if v is not None})


def _choices(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """Choices as Typer's choices: listed in --help, and a wrong one is a usage error."""
    return enum.Enum(name, [(v, v) for v in values], type=str)


class _LaterChoices:
    """Choices from modules that only some commands import, made when Typer builds a
    command that takes them (it reads the command's annotations then: `_later.Outcome`),
    so that `ops` alone imports operations.py, and `serve` alone logging."""

    # A choice's name: the module and the constant that list its values.
    _SOURCES = {"Outcome": ("operations", "OUTCOMES"), "Kind": ("operations", "KINDS"),
                "LogLevel": ("logs", "LEVELS"), "LogFormat": ("logs", "FORMATS")}

    def __getattr__(self, name: str) -> type[enum.Enum]:
        if name not in self._SOURCES:
            raise AttributeError(name)
        module, values = self._SOURCES[name]
        made = _choices(name, getattr(importlib.import_module(f"rentbox.{module}"), values))
        setattr(self, name, made)  # made once
        return made


_later = _LaterChoices()
Grouping = _choices("Grouping", reports.GROUPINGS)
LimitOption = Annotated[int, typer.Option(help="Show at most this many rows.", metavar="N",
                                          parser=_number(int, 1, 1_000_000))]
# SQLite integers are 64-bit: a larger id could not exist, and would overflow.
MAX_ID = 2**63 - 1
_id = _number(int, 1, MAX_ID, "an id (a whole number, 1 or more)")


def fails_cleanly(command: Callable) -> Callable:
    """Turn a RentboxError into `Error: …` on stderr and exit code 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()  # here, where a reader that went away can be told apart
            return result
        except BrokenPipeError:
            # The reader of a pipe stopped reading (`rentbox numbers list | head`): the
            # output ends there, and that is no error. What is still buffered goes nowhere.
            _discard_stdout()
            raise typer.Exit(0)
        except RentboxError as error:
            message = str(error)
        except sqlite3.OperationalError as error:
            message = ("the database is busy: another process held it too long, try again"
                       if "locked" in str(error) else f"database error: {error}")
        except sqlite3.DatabaseError as error:
            message = f"database error: {error}"
        err.print(f"Error: {message}", markup=False, soft_wrap=True)
        raise typer.Exit(1)

    return wrapper


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a stdout without a file (tests)
        pass


def say(text: str) -> None:
    """A plain line on stdout: no markup, no wrapping (file names may hold '[' or be long)."""
    sys.stdout.write(text + "\n")  # not through Rich: a plain line needs none of it


def _print_csv(rows: Iterable[dict]) -> None:
    """Rows as CSV with a header row (nothing for no rows); nested values as JSON. Each
    row is written as it comes."""
    import csv

    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(first.keys())
    for row in itertools.chain([first], rows):
        writer.writerow(json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list))
                        else "" if v is None else v for v in row.values())


def _print_json(value: object) -> None:
    # Plain stdout, not Rich: scripts need JSON that no terminal width can re-wrap.
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


def _print_json_rows(rows: Iterable[dict]) -> None:
    """Rows as the JSON array _print_json writes, each row written as it comes."""
    count = 0
    for count, row in enumerate(rows, start=1):
        text = json.dumps(row, ensure_ascii=False, indent=2).replace("\n", "\n  ")
        sys.stdout.write(("[\n  " if count == 1 else ",\n  ") + text)
    sys.stdout.write("\n]\n" if count else "[]\n")


def _wants_table(rows: list[dict], json_output: bool, *, empty: str,
                 csv_output: bool = False) -> bool:
    """The convention of every list command: with --json or --csv, every field of the rows
    for scripts and spreadsheets; with no rows, `empty`; otherwise True, and the command
    prints its table for people."""
    if json_output and csv_output:
        raise InvalidInput("choose one of --json and --csv")
    if json_output:
        _print_json(rows)
        return False
    if csv_output:
        _print_csv(rows)
        return False
    if not rows:
        say(empty)
        return False
    return True


def _table(title: str | None, columns: list[str], rows: list[list[str]],
           flexible: tuple[str, ...] = ()) -> None:
    """A table for people on stdout; on a terminal, cut to its width."""
    width = out.width if out.is_terminal else None
    render.table(sys.stdout, columns, rows, title=title, flexible=flexible, width=width)


def _books(db: Path):
    """The database of a command that works on existing books: a missing file is an
    error, not new empty books (only serve, numbers import and sms add create one)."""
    return open_database(db, create=False)


def _now() -> dt.datetime:
    return SystemClock().now()


# Dates and times as the CLI takes them (a wrong one is a usage error, exit 2).
TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S"]


def _moment(text: str) -> dt.datetime:
    """A DATE option's value: a date, or a date and time, with or without a zone."""
    for pattern in TIME_FORMATS:
        try:
            return dt.datetime.strptime(text.strip(), pattern)
        except ValueError:
            pass
    raise typer.BadParameter(
        f"{text!r} is not a date: write a date like 2026-12-03, or a time like "
        "2026-12-03T14:30:00 (UTC, unless a zone follows, as in 2026-12-03T14:30:00+03:00)")


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    """A date or time given on the command line; without a zone it is UTC."""
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _version(value: bool) -> None:
    if value:
        say(f"rentbox {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """rentbox: a partner server for Onlinesim's rentals and activations.

    Import your numbers with `rentbox numbers import`, then run `rentbox serve`.
    """


# ---------------------------------------------------------------------------------------
# serve, housekeep
# ---------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def serve(
    db: DbOption = SETTINGS["db"].default,
    host: Annotated[str, _option("host")] = SETTINGS["host"].default,
    port: Annotated[int, _option("port", min=0, max=65535)] = SETTINGS["port"].default,
    threads: Annotated[int, _option("threads", min=1, max=64)] = SETTINGS["threads"].default,
    push_url: Annotated[Optional[str], _option("push_url")] = None,
    services: Annotated[str, _option("services")] = SETTINGS["services"].default,
    activation_s: Annotated[float, _option("activation_s", min=1)] = SETTINGS[
        "activation_s"].default,
    activation_push_url: Annotated[Optional[str], _option("activation_push_url")] = None,
    smshub_push_url: Annotated[Optional[str], _option("smshub_push_url")] = None,
    buyers: Annotated[Optional[Path], _option("buyers", dir_okay=False)] = None,
    push_retry_s: Annotated[float, _option("push_retry_s", min=0.1)] = SETTINGS[
        "push_retry_s"].default,
    push_timeout_s: Annotated[float, _option("push_timeout_s", min=0.1)] = SETTINGS[
        "push_timeout_s"].default,
    push_parallel: Annotated[int, _option("push_parallel", min=1, max=64)] = SETTINGS[
        "push_parallel"].default,
    call_deadline_s: Annotated[float, _option("call_deadline_s", min=0.1)] = SETTINGS[
        "call_deadline_s"].default,
    guard_s: GuardOption = SETTINGS["guard_s"].default,
    guard_margin_s: GuardMarginOption = SETTINGS["guard_margin_s"].default,
    ban_after: BanAfterOption = SETTINGS["ban_after"].default,
    ban_s: BanOption = SETTINGS["ban_s"].default,
    housekeeping_s: Annotated[float, _option("housekeeping_s", min=0.1)] = SETTINGS[
        "housekeeping_s"].default,
    presence: Annotated[bool, _option("presence")] = SETTINGS["presence"].default,
    presence_s: Annotated[float, _option("presence_s", min=1)] = SETTINGS[
        "presence_s"].default,
    sms_keep_days: Annotated[float, _option("sms_keep_days", min=0)] = SETTINGS[
        "sms_keep_days"].default,
    alert_silence_s: Annotated[float, _option("alert_silence_s", min=1)] = SETTINGS[
        "alert_silence_s"].default,
    alert_undelivered_s: Annotated[float, _option("alert_undelivered_s", min=1)] = SETTINGS[
        "alert_undelivered_s"].default,
    alert_disk_free_mb: Annotated[float, _option("alert_disk_free_mb", min=0)] = SETTINGS[
        "alert_disk_free_mb"].default,
    alert_summary_hour: Annotated[int, _option("alert_summary_hour", min=-1, max=23)] = SETTINGS[
        "alert_summary_hour"].default,
    telegram_chat_id: Annotated[Optional[str], _option("telegram_chat_id")] = None,
    telegram_api_url: Annotated[str, _option("telegram_api_url")] = SETTINGS[
        "telegram_api_url"].default,
    alert_webhook_url: Annotated[Optional[str], _option("alert_webhook_url")] = None,
    # Their placeholders list their choices (metavar None: see _Command).
    log_level: Annotated[_later.LogLevel, _option("log_level", metavar=None)
                         ] = SETTINGS["log_level"].default,
    log_format: Annotated[_later.LogFormat, _option("log_format", metavar=None)
                          ] = SETTINGS["log_format"].default,
    dinstar_tz: Annotated[str, _option("dinstar_tz")] = SETTINGS["dinstar_tz"].default,
    goip_port: Annotated[Optional[int], _option("goip_port", min=0, max=65535)] = None,
    goip_host: Annotated[str, _option("goip_host")] = SETTINGS["goip_host"].default,
    poll_boxes: Annotated[Optional[Path], _option("poll_boxes", dir_okay=False)] = None,
    poll_every_s: Annotated[float, _option("poll_every_s", min=1)] = SETTINGS[
        "poll_every_s"].default,
    poll_timeout_s: Annotated[float, _option("poll_timeout_s", min=0.1)] = SETTINGS[
        "poll_timeout_s"].default,
    spool_dir: Annotated[Optional[Path], _option("spool_dir", file_okay=False)] = None,
    spool_every_s: Annotated[float, _option("spool_every_s", min=0.1)] = SETTINGS[
        "spool_every_s"].default,
    backup_dir: Annotated[Optional[Path], _option("backup_dir", file_okay=False)] = None,
    backup_every_s: Annotated[float, _option("backup_every_s", min=1)] = SETTINGS[
        "backup_every_s"].default,
    backup_keep: Annotated[int, _option("backup_keep", min=1)] = SETTINGS["backup_keep"].default,
    backup_mib_s: Annotated[float, _option("backup_mib_s", min=0.1)] = SETTINGS[
        "backup_mib_s"].default,
    replica_url: Annotated[Optional[str], _option("replica_url")] = None,
    replica_sync_s: Annotated[float, _option("replica_sync_s", min=0.1)] = SETTINGS[
        "replica_sync_s"].default,
    replica_restart_s: Annotated[float, _option("replica_restart_s", min=1)] = SETTINGS[
        "replica_restart_s"].default,
) -> None:
    """Answer Onlinesim's calls, take in SMS and push them, until Ctrl-C or SIGTERM.

    Secrets come from the environment only: RENTBOX_API_KEY (required),
    RENTBOX_GATEWAY_TOKEN (turns on POST /sms and the gateways' routes),
    RENTBOX_SMSGATE_KEY (turns on POST /sms/smsgate), RENTBOX_GOIP_PASSWORD (needed with
    --goip-port), RENTBOX_CONSOLE_PASSWORD (turns on the status page at GET /),
    RENTBOX_METRICS_TOKEN (turns on GET /metrics), RENTBOX_SMSHUB_KEY (SMSHub as a buyer,
    at POST /smshub).
    """
    from rentbox import replication
    from rentbox import buyers as buyers_module
    from rentbox import services as services_module
    from rentbox import logs, server  # waitress is only needed here
    from rentbox.settings import BackupPlan, ReplicaPlan, Settings

    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        raise RentboxError(
            f"{API_KEY_ENV} is not set: serve needs your Onlinesim API key to check "
            "Onlinesim's calls (export RENTBOX_API_KEY=...)"
        )
    if push_url:
        _check_push_url(push_url)
    if activation_push_url:
        _check_outbound_url(activation_push_url, "--activation-push-url", "the API key")
    offered = services_module.parse_offered(services)
    others, aliases = buyers_module.load(
        buyers, smshub_key=os.environ.get(SMSHUB_KEY_ENV, "").strip() or None,
        smshub_push_url=smshub_push_url or None)
    for buyer in others:
        if buyer.push_url:
            _check_outbound_url(buyer.push_url, f"the push URL of buyer {buyer.name}",
                                "its key")
    if replica_url:
        replication.check_replica_url(replica_url)
    logs.configure(_later.LogLevel(log_level).value, _later.LogFormat(log_format).value)
    settings = Settings(
        api_key=api_key,
        gateway_token=os.environ.get(GATEWAY_TOKEN_ENV, "").strip() or None,
        smsgate_key=os.environ.get(SMSGATE_KEY_ENV, "").strip() or None,
        dinstar_tz=dinstar_tz, goip_port=goip_port, goip_host=goip_host,
        poll_boxes=poll_boxes, poll_every_s=poll_every_s, poll_timeout_s=poll_timeout_s,
        spool_dir=spool_dir, spool_every_s=spool_every_s,
        goip_password=os.environ.get(GOIP_PASSWORD_ENV, "").strip() or None,
        console_password=os.environ.get(CONSOLE_PASSWORD_ENV, "").strip() or None,
        metrics_token=os.environ.get(METRICS_TOKEN_ENV, "").strip() or None,
        db=db, host=host, port=port, threads=threads, push_url=push_url or None,
        activation_push_url=activation_push_url or None,
        push_retry_s=push_retry_s, push_timeout_s=push_timeout_s, push_parallel=push_parallel,
        call_deadline_s=call_deadline_s, housekeeping_s=housekeeping_s,
        sms_keep_days=sms_keep_days,
        alerting=_alerting(alert_silence_s, alert_undelivered_s, alert_disk_free_mb,
                           alert_summary_hour, telegram_chat_id, telegram_api_url,
                           alert_webhook_url),
        rules=Rules(guard_s=guard_s, ban_after=ban_after, ban_s=ban_s,
                    guard_margin_s=guard_margin_s, presence=presence, presence_s=presence_s,
                    services=offered, activation_s=activation_s, buyers=others,
                    aliases=aliases),
        backups=BackupPlan(folder=backup_dir, every_s=backup_every_s, keep=backup_keep,
                           mib_s=backup_mib_s),
        replication=ReplicaPlan(url=replica_url or None, sync_s=replica_sync_s,
                                restart_s=replica_restart_s),
    )
    try:
        server.serve(settings)
    except OSError as error:
        raise RentboxError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def _alerting(silence_s: float, undelivered_s: float, disk_free_mb: float, summary_hour: int,
              chat_id: str | None, api_url: str, webhook_url: str | None) -> Alerting:
    """Where alerts go: the bot token from the environment only, as every secret."""
    from rentbox.settings import Alerting

    token = os.environ.get(TELEGRAM_TOKEN_ENV, "").strip() or None
    if bool(token) != bool(chat_id):
        raise InvalidInput(f"Telegram alerts need both {TELEGRAM_TOKEN_ENV} and "
                           "RENTBOX_TELEGRAM_CHAT_ID")
    for name, url in (("--telegram-api-url", api_url), ("--alert-webhook-url", webhook_url)):
        if url:
            _check_outbound_url(url, name)
    return Alerting(silence_s=silence_s, undelivered_s=undelivered_s,
                    disk_free_mb=disk_free_mb, summary_hour=summary_hour,
                    telegram_token=token, telegram_chat_id=chat_id,
                    telegram_api_url=api_url, webhook_url=webhook_url or None)


def _check_outbound_url(url: str, option: str, what: str = "what it carries") -> None:
    """A URL rentbox sends to: http(s), and https unless it stays on this machine."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{option} must be an https:// URL, not {url!r}")
    local = parts.hostname in ("localhost", "::1") or parts.hostname.startswith("127.")
    if parts.scheme == "http" and not local:
        raise InvalidInput(f"{option} must use https: {what} would cross the "
                           f"network in clear text ({url!r})")


def _check_push_url(url: str) -> None:
    """The API key travels in every push: HTTPS, except to this machine (tests, a local
    relay)."""
    _check_outbound_url(url, "--push-url", "the API key")


@app.command()
@fails_cleanly
def housekeep(
    db: DbOption = SETTINGS["db"].default,
    guard_s: ServerGuardOption = None,
    guard_margin_s: ServerGuardMarginOption = None,
    ban_after: ServerBanAfterOption = None,
    ban_s: ServerBanOption = None,
    presence: ServerPresenceOption = None,
    presence_s: ServerPresenceWindowOption = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Also recount the tallies (GET_SERVICES's counts, status, the "
                         "books per day) from the rows, and repair any that differ.")] = False,
) -> None:
    """Run one housekeeping pass now: expire guard windows, lift ended bans, turn offline
    the SIMs whose presence window ended.

    With `--verify`, exit code 1 if a tally differed from its recount (it is repaired; a
    difference means a bug worth reporting).

    `rentbox serve` does this by itself every few seconds; run it by hand only when
    the server is stopped and you want the books brought up to date.
    """
    from rentbox import housekeeping, tallies

    database = _books(db)
    rules = _server_rules(database, guard_s=guard_s, guard_margin_s=guard_margin_s,
                          ban_after=ban_after, ban_s=ban_s, presence=presence,
                          presence_s=presence_s)
    changed = housekeeping.run_once(database, _now(), rules)
    say(f"Housekeeping: {render.plural(changed, 'change')}.")
    if verify:
        differences = tallies.verify(database)
        if not differences:
            say("Tallies: every one equals a recount of the rows.")
            return
        tallies.rebuild(database)
        for difference in differences:
            err.print(f"Tally differed: {difference}", markup=False, soft_wrap=True)
        err.print(f"Error: {render.plural(len(differences), 'tally figure')} differed from the "
                  "rows and were rebuilt", markup=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
@fails_cleanly
def prune(
    sms_keep_days: Annotated[float, _option("sms_keep_days", min=0)] = SETTINGS[
        "sms_keep_days"].default,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Remove the texts of SMS older than the retention period now.

    `rentbox serve` does this by itself, a little at each housekeeping pass. The rows
    stay, with sender, times and delivery state; an SMS still waiting to be pushed is
    kept whole.
    """
    from rentbox import retention

    if sms_keep_days <= 0:
        raise InvalidInput("--sms-keep-days is 0: SMS texts are kept for ever, nothing to prune")
    count = retention.prune_all(_books(db), _now(), sms_keep_days)
    say(f"Pruned the texts of {count} SMS older than {sms_keep_days:g} days.")


# ---------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------


@numbers_app.command("import")
@fails_cleanly
def numbers_import(
    file: Annotated[Path, typer.Argument(help="CSV file with a header row: number, "
                                              "country, operator, port.")],
    country: Annotated[Optional[str], typer.Option(
        help="Country for rows without one: Onlinesim's name, e.g. germany.")] = None,
    operator: Annotated[Optional[str], typer.Option(
        help="Operator for rows without one.")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Import the valid rows even if some rows are bad.")] = False,
    country_names: Annotated[str, _option("country_names")] = SETTINGS[
        "country_names"].default,
    json_output: JsonOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Add numbers to the pool, or update the ones already there, then say how many are
    ready to offer.

    FILE `-` reads standard input. Columns may be separated by commas or semicolons
    (spreadsheets in many locales write `;`). Numbers are international (country code
    first; '+', spaces and dashes are fine). A country is Onlinesim's name for it
    (germany, russia, usa, england, ...), and the number must be one of that country:
    +7 7xx is kazakhstan, not russia. If any row is bad, nothing is imported (and no
    database is created) unless --skip-invalid is given. Stopped with Ctrl-C while
    merging, it says how many rows are in; running it again completes it.
    """
    from rentbox import countries

    names = countries.table(country_names)
    if str(file) == "-":
        with _stdin_as_file() as copy:
            return _import(copy, "standard input", country, operator, names, skip_invalid,
                           json_output, db)
    _import(file, str(file), country, operator, names, skip_invalid, json_output, db)


@contextlib.contextmanager
def _stdin_as_file():
    """Standard input spooled to a private temporary file: the import reads its file
    twice (to count rows for the progress bar, then to check them)."""
    import shutil
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="rentbox-import-", suffix=".csv") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy)
        copy.flush()
        yield Path(copy.name)


def _import(file: Path, name: str, country: str | None, operator: str | None,
            names: dict, skip_invalid: bool, json_output: bool, db: Path) -> None:
    from rentbox import pool
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    # A progress bar for people; none when stderr is not a terminal (scripts, cron).
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        tasks: dict[str, object] = {}

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(f"{phase.capitalize()} rows", total=total)
            progress.update(tasks[phase], completed=done, total=total)

        # Between two batches, leave the lock free a little longer than a waiting server
        # polls for it, or this process could take it again before the server notices.
        # The database is opened (and created) only once there is something to import.
        try:
            result = pool.import_file(lambda: open_database(db), _now(), file,
                                      country=country, operator=operator, country_names=names,
                                      skip_invalid=skip_invalid, on_progress=on_progress,
                                      between_batches=lambda: time.sleep(2 * LOCK_POLL_MAX_S))
        except pool.ImportInterrupted as stopped:
            progress.stop()
            err.print(f"Error: {stopped}", markup=False, soft_wrap=True)
            raise typer.Exit(130)
    database = _books(db) if Path(db).exists() else None  # none if nothing was imported
    offered = pool.count_available(database) if database else {}
    not_offered = pool.count_not_offered(database) if database else {}
    if json_output:
        _print_json({"file": name, "added": result.added, "updated": result.updated,
                     "unchanged": result.unchanged, "rejected": result.rejected_count,
                     "errors": [dataclasses.asdict(e) for e in result.rejected],
                     "offered": offered, "not_offered": not_offered})
        return
    for problem in result.rejected:
        err.print(f"Skipped {problem}", markup=False, soft_wrap=True)
    if result.rejected_count > len(result.rejected):
        more = result.rejected_count - len(result.rejected)
        err.print(f"… and {render.plural(more, 'more row')} skipped", markup=False,
                  soft_wrap=True)
    say(f"{name}: {result.added} added, {result.updated} updated, "
        f"{result.unchanged} unchanged, {result.rejected_count} rejected.")
    if database:
        _say_offered(offered, not_offered)


# Why numbers are not offered, as `numbers import` says it.
_NOT_OFFERED = {"rented": "rented", "banned": "banned", "disabled": "disabled",
                "offline": "with their SIM offline"}


def _say_offered(offered: dict[str, dict[str, int]], not_offered: dict[str, int]) -> None:
    """What Onlinesim is offered now, per country and operator (GET_SERVICES's figures),
    and the numbers of the pool that are not, by reason."""
    total = sum(operators["any"] for operators in offered.values())
    say(f"Ready to offer: {render.plural(total, 'number')}" + (":" if total else "."))
    for country, operators in offered.items():
        named = sorted((o, n) for o, n in operators.items() if o != "any")
        without = operators["any"] - sum(n for _, n in named)
        parts = [f"{o} {n}" for o, n in named] + ([f"{without} without an operator"]
                                                   if without else [])
        say(f"  {country} {operators['any']}: {', '.join(parts)}")
    reasons = [f"{n} {_NOT_OFFERED[why]}" for why, n in not_offered.items() if n]
    if reasons:
        say(f"Not offered now: {', '.join(reasons)}.")


@numbers_app.command("list")
@fails_cleanly
def numbers_list(
    include_removed: Annotated[bool, typer.Option("--all", help="Include removed numbers.")
                               ] = False,
    online: Annotated[bool, typer.Option(
        "--online", help="Only numbers whose SIM a gateway reports online now.")] = False,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Only numbers whose SIM is offline (not offered).")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Show at most this many numbers.",
                                                 metavar="N", parser=_number(int, 1))] = None,
    json_output: JsonOption = False,
    csv_output: CsvOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Show the pool: every number with its country, operator, port, state and SIM.

    SIM: `online` (a gateway reported it within the presence window), `offline` (not
    offered), or `-` (no gateway ever reported it: offered whenever free). `rented, at
    risk`: a rented number whose SIM is offline. Rows are printed as they are read, so
    the first ones appear at once on a pool of any size; the columns are as wide as the
    first 1,000 rows need.
    """
    from rentbox import pool

    if online and offline:
        raise InvalidInput("--online and --offline exclude each other")
    if json_output and csv_output:
        raise InvalidInput("choose one of --json and --csv")
    rows = pool.iter_numbers(_books(db), include_removed=include_removed,
                             sim="online" if online else "offline" if offline else None,
                             limit=limit)
    if json_output:
        _print_json_rows(rows)
        return
    if csv_output:
        _print_csv(rows)
        return
    first = next(rows, None)
    if first is None:
        say("No number matches." if online or offline else
            "The pool is empty. Add numbers with: rentbox numbers import FILE")
        return
    count = render.stream_table(
        sys.stdout, ["number", "country", "operator", "port", "state", "SIM",
                     "last seen (UTC)"],
        (["+" + r["number"], r["country"], r["operator"] or "", r["port"] or "", r["state"],
          r["sim"], render.when(r["seen_at"]) or ""] for r in itertools.chain([first], rows)),
        flexible=("port",), width=out.width if out.is_terminal else None)
    say(render.plural(count, "number"))


NumberArgument = Annotated[str, typer.Argument(help="The number (international, e.g. "
                                                   "+4915123456789).", metavar="NUMBER")]


@numbers_app.command("show")
@fails_cleanly
def numbers_show(number: NumberArgument, json_output: JsonOption = False,
                 db: DbOption = SETTINGS["db"].default) -> None:
    """Show one number: its state, rentals, SMS, failures and ban history."""
    history = reports.number_history(_books(db), number)
    if json_output:
        _print_json(history)
        return
    h = history
    ban = f", banned until {render.when(h['banned_until'])} UTC" if h["banned_until"] else ""
    say(f"+{h['number']} ({h['country']}, {h['operator'] or 'no operator'}"
        f"{', port ' + h['port'] if h['port'] else ''}): {h['state']}; "
        f"{render.plural(h['failures'], 'failed rental')} in a row{ban}")
    say(f"SIM: {_sim_line(h)}")
    spent = [u["service"] for u in h["services"] if u["spent_at"]]
    tried = [f"{u['service']} ({u['tries']} cancelled)" for u in h["services"]
             if not u["spent_at"] and u["tries"]]
    if spent or tried:
        say("Activations: " + "; ".join(filter(None, [
            f"spent for {', '.join(spent)} (never offered for it again; "
            "`rentbox numbers unspend` undoes it)" if spent else "",
            f"tries: {', '.join(tried)}" if tried else ""])))
    if h["rentals"]:
        _table("Operations", ["id", "service", "created (UTC)", "outcome", "guard", "SMS",
                              "sum (RUB)"],
               [[str(r["id"]), r["service"], render.when(r["created_at"]), render.outcome(r),
                 render.GUARD.get(r["failure"], ""),
                 str(r["sms_count"]), render.rub(r["final_sum_kopecks"] if r["final_sum_kopecks"]
                                           is not None else r["initial_sum_kopecks"])]
                for r in h["rentals"]])
    else:
        say("No operations yet.")
    if h["sms"]:
        _table("SMS", ["id", "received (UTC)", "state", "from", "text"],
               [[str(m["id"]), render.when(m["received_at"]), m["push_state"], m["sender"],
                 render.flat(m["text"])] for m in h["sms"]], flexible=("from", "text"))
    _table("Events", ["at (UTC)", "event", "detail"],
           [[render.when(e["at"]), e["kind"], render.detail(e["detail"])] for e in h["events"]],
           flexible=("detail",))


def _sim_line(h: dict) -> str:
    if h["sim"] == "offline":
        seen = (f"last seen {render.when(h['seen_at'])} UTC via {h['seen_by']}"
                if h["seen_at"] else "never reported present")
        return f"offline since {render.when(h['offline_since'])} UTC ({h['offline_reason']}; {seen})"
    if h["sim"] == "online":
        return f"online, last seen {render.when(h['seen_at'])} UTC via {h['seen_by']}"
    return "not reported by any gateway (offered whenever free)"


@numbers_app.command("disable")
@fails_cleanly
def numbers_disable(number: NumberArgument, db: DbOption = SETTINGS["db"].default) -> None:
    """Stop offering a number (an open rental on it is left alone)."""
    _switch(number, db, enabled=False)


@numbers_app.command("enable")
@fails_cleanly
def numbers_enable(number: NumberArgument, db: DbOption = SETTINGS["db"].default) -> None:
    """Offer a disabled number again."""
    _switch(number, db, enabled=True)


def _switch(number: str, db: Path, *, enabled: bool) -> None:
    from rentbox import pool

    digits = pool.normalize_number(number)
    word = "enabled" if enabled else "disabled"
    changed = pool.set_enabled(_books(db), _now(), digits, enabled)
    say(f"+{digits} is {word}." if changed else f"+{digits} was already {word}.")


@numbers_app.command("online")
@fails_cleanly
def numbers_online(
    numbers: Annotated[list[str], typer.Argument(help="Numbers whose SIM is in a port now.",
                                                 metavar="NUMBER...")],
    db: DbOption = SETTINGS["db"].default,
    presence: ServerPresenceOption = None,
    presence_s: ServerPresenceWindowOption = None,
) -> None:
    """Report SIMs as online now, as a gateway would (for scripts).

    Like a gateway's report, this counts for the presence window: a script repeats it
    more often than that, or the numbers go offline when it ends.
    """
    _presence_by_hand(numbers, db, presence, presence_s, online=True)


@numbers_app.command("offline")
@fails_cleanly
def numbers_offline(
    numbers: Annotated[list[str], typer.Argument(help="Numbers whose SIM is out of its port.",
                                                 metavar="NUMBER...")],
    db: DbOption = SETTINGS["db"].default,
    presence: ServerPresenceOption = None,
    presence_s: ServerPresenceWindowOption = None,
) -> None:
    """Report SIMs as offline: they are not offered until a source reports them again.

    A number in an open rental stays rented (only Onlinesim closes a rental) and is
    shown as at risk.
    """
    _presence_by_hand(numbers, db, presence, presence_s, online=False)


def _presence_by_hand(numbers: list[str], db: Path, presence_on: bool | None,
                      presence_s: float | None, *, online: bool) -> None:
    from rentbox import presence

    database = _books(db)
    rules = _server_rules(database, presence=presence_on, presence_s=presence_s)
    changed = presence.set_by_hand(database, _now(), rules, numbers, online)
    word, before = ("online", "offline") if online else ("offline", "online or not reported")
    say(f"{render.plural(len(numbers), 'number')} {word} now ({changed} of them "
        f"{'was' if changed == 1 else 'were'} {before}).")


@numbers_app.command("remove")
@fails_cleanly
def numbers_remove(number: NumberArgument, db: DbOption = SETTINGS["db"].default) -> None:
    """Take a number out of the pool for good, keeping its history.

    Refused while the number is in an open rental. Its history stays readable with
    `numbers show`, and importing it again brings it back.
    """
    from rentbox import pool

    digits = pool.normalize_number(number)
    pool.remove_number(_books(db), _now(), digits)
    say(f"+{digits} is removed from the pool.")


@numbers_app.command("unspend")
@fails_cleanly
def numbers_unspend(
    number: NumberArgument,
    service: Annotated[str, typer.Argument(help="The service it is spent for (vk, wa, ...).")],
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Offer a number for a service again after it was spent for it.

    An activation sold (FINISH 3), refused as already used (FINISH 1) or cancelled four
    times spends its number for that service: it is never offered for it again. Undo that
    when the account on it is gone (recorded as an event).
    """
    from rentbox import pool
    from rentbox import services as services_module

    digits = pool.normalize_number(number)
    books = _books(db)
    services_module.unspend(books, _now(), digits, service,
                            meta.server_rules(books) or Rules())
    say(f"+{digits} is offered for {service.strip().lower()} again.")


# ---------------------------------------------------------------------------------------
# sms
# ---------------------------------------------------------------------------------------


@sms_app.command("add")
@fails_cleanly
def sms_add(
    to: Annotated[str, typer.Option("--to", help="The receiving number (international).",
                                    metavar="NUMBER")],
    sender: Annotated[str, typer.Option("--from", help="The sender: a name or a number.",
                                        metavar="SENDER")],
    text: Annotated[str, typer.Option("--text", help="The message text, exactly as received.",
                                      metavar="TEXT")],
    source_id: Annotated[Optional[str], typer.Option(
        "--id", help="The source's own message id: the same id is stored only once.",
        metavar="ID")] = None,
    json_output: JsonOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Store an SMS, as a gateway would (for hooks such as Gammu's RunOnReceive).

    If the number is in an open rental, a running `rentbox serve` pushes it to
    Onlinesim within a second or two. Guard windows and bans follow the rules `rentbox
    serve` last started with on this database (else the defaults), as the server would
    apply them.
    """
    from rentbox import sms

    incoming = sms.IncomingSms(source="cli", to=to, sender=sender, text=text,
                               source_id=source_id)
    database = open_database(db)
    accepted = sms.accept_sms(database, SystemClock(), incoming, _server_rules(database))
    if json_output:
        _print_json({"sms_id": accepted.sms_id, "duplicate": accepted.duplicate,
                     "push_state": accepted.push_state})
        return
    where = {"pending": "queued for Onlinesim",
             "unrouted": "kept, not pushed: the number is in no open rental"}
    state = where.get(accepted.push_state, accepted.push_state)
    again = " (already stored before)" if accepted.duplicate else ""
    say(f"SMS {accepted.sms_id} stored{again}: {state}.")


@sms_app.command("list")
@fails_cleanly
def sms_list(
    number: Annotated[Optional[str], typer.Option(help="Only SMS to this number.")] = None,
    operation: Annotated[Optional[int], typer.Option(help="Only SMS of this operation.",
                                                     metavar="ID", parser=_id)] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Only SMS waiting to be pushed.")
                       ] = False,
    failed: Annotated[bool, typer.Option("--failed", help="Only SMS Onlinesim refused for good.")
                      ] = False,
    expired: Annotated[bool, typer.Option(
        "--expired", help="Only SMS never pushed because their rental ended first.")] = False,
    limit: LimitOption = 100,
    json_output: JsonOption = False,
    csv_output: CsvOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Show SMS, newest first, with their delivery state, attempts and last error."""
    from rentbox import sms

    if pending + failed + expired > 1:
        raise InvalidInput("--pending, --failed and --expired exclude each other")
    state = "pending" if pending else "failed" if failed else "expired" if expired else None
    rows = sms.list_sms(_books(db), number=number, operation_id=operation, state=state,
                        limit=limit)
    if not _wants_table(rows, json_output, empty="No SMS.", csv_output=csv_output):
        return
    columns = ["id", "received (UTC)", "to", "state", "tries", "from", "text", "last error"]
    cells = [[str(r["id"]), render.when(r["received_at"]),
              "+" + r["number"] if r["number"] else f"port {r['port']}" if r["port"] else "?",
              r["push_state"], str(r["attempts"]),
              r["sender"], render.flat(r["text"]), r["last_error"] or ""] for r in rows]
    if not any(r["last_error"] for r in rows):  # room for the text instead
        columns, cells = columns[:-1], [c[:-1] for c in cells]
    _table(None, columns, cells, flexible=("from", "text", "last error"))
    _more_rows(len(rows), limit)


def _more_rows(shown: int, limit: int) -> None:
    if shown == limit:
        say(f"Showing the newest {limit}; --limit shows more, --json gives every field.")


@sms_app.command("retry")
@fails_cleanly
def sms_retry(
    sms_id: Annotated[int, typer.Argument(help="The id shown by `rentbox sms list`.",
                                          parser=_id)],
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Put an SMS whose push Onlinesim refused for good back into the outbox."""
    from rentbox import sms

    sms.retry_sms(_books(db), _now(), sms_id)
    say(f"SMS {sms_id} is queued again; a running `rentbox serve` pushes it within seconds.")


# ---------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------


@ops_app.command("list")
@fails_cleanly
def ops_list(
    open_only: Annotated[bool, typer.Option("--open", help="Only operations not finished yet.")
                         ] = False,
    number: Annotated[Optional[str], typer.Option(help="Only operations on this number.")
                      ] = None,
    since: Annotated[Optional[dt.datetime], typer.Option(
        parser=_moment, metavar="DATE",
        help="Only operations created at or after this date or time (UTC unless it has a "
             "zone).")] = None,
    outcome: Annotated[Optional[_later.Outcome], typer.Option(
        help="Only this outcome ('failed': no SMS accepted by Onlinesim in the guard window, "
             "whatever FINISH said).")] = None,
    kind: Annotated[Optional[_later.Kind], typer.Option(
        help="Only rentals, or only activations.")] = None,
    service: Annotated[Optional[str], typer.Option(
        help="Only operations for this service (rent, vk, wa, ...).")] = None,
    buyer: Annotated[Optional[str], typer.Option(
        help="Only this buyer's operations (onlinesim, smshub, or a name from the buyers "
             "file).")] = None,
    limit: LimitOption = 100,
    json_output: JsonOption = False,
    csv_output: CsvOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Show operations, rentals and activations, newest first (sums: RUB in the table
    unless another currency is named, minor units in JSON and CSV)."""
    from rentbox import operations

    books = _books(db)
    rows = operations.list_operations(books, open_only=open_only, number=number,
                                      since=_utc(since),
                                      outcome=outcome.value if outcome else None,
                                      kind=kind.value if kind else None, service=service,
                                      buyer=buyer, rules=meta.server_rules(books), limit=limit)
    if not _wants_table(rows, json_output, empty="No operations.", csv_output=csv_output):
        return
    # The buyer only once there is another than Onlinesim.
    by = any(r["buyer"] != "onlinesim" for r in rows)
    _table(None, ["id", *(["buyer"] if by else []), "service", "number", "created (UTC)",
                  "outcome", "guard", "SMS", "sum (RUB)"],
           [[str(r["id"]), *([r["buyer"]] if by else []), r["service"], "+" + r["number"],
             render.when(r["created_at"]), render.outcome(r),
             render.GUARD.get(r["failure"], ""), str(r["sms_count"]),
             _money(r["final_sum_kopecks"] if r["final_sum_kopecks"] is not None
                    else r["initial_sum_kopecks"], r["currency"])] for r in rows])
    _more_rows(len(rows), limit)


def _money(minor: int | None, currency: str) -> str:
    """A sum in a table whose column says RUB: another currency is named."""
    shown = render.rub(minor)
    return shown if currency == "RUB" or not shown else f"{shown} {currency}"


@ops_app.command("show")
@fails_cleanly
def ops_show(
    operation_id: Annotated[int, typer.Argument(help="The operation's id (activationId).",
                                                parser=_id)],
    json_output: JsonOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Show one operation with its events and SMS."""
    from rentbox import buyers, operations

    op = operations.show_operation(_books(db), operation_id)
    if json_output:
        _print_json(op)
        return
    kind = "rental" if op["service"] == "rent" else f"activation for {op['service']}"
    if op["buyer"] != "onlinesim":
        kind += f" sold to {op['buyer']}"
    say(f"Operation {op['id']}, {kind}, on +{op['number']} ({op['country']}): {op['state']}, "
        f"outcome {op['outcome']}" + (f", failed: {op['failure']}" if op["failure"] else "")
        + (f", out of time since {render.when(op['lapsed_at'])} (its number is offered "
           "again)" if op["lapsed_at"] else "")
        + (", at risk: the number's SIM is offline" if op["at_risk"] else ""))
    say(f"Created {render.when(op['created_at'])}, first SMS accepted by "
        f"{buyers.display(op['buyer'])} "
        f"{render.when(op['sms_accepted_at']) or '-'}, "
        f"finished {render.when(op['finished_at']) or '-'}; initial sum "
        f"{render.rub(op['initial_sum_kopecks'])} {op['currency']}, final sum "
        + ("-" if op["final_sum_kopecks"] is None
           else f"{render.rub(op['final_sum_kopecks'])} {op['currency']}"))
    _table("Events", ["at (UTC)", "event", "detail"],
           [[render.when(e["at"]), e["kind"], render.detail(e["detail"])] for e in op["events"]],
           flexible=("detail",))
    if op["sms"]:
        _table("SMS", ["id", "received (UTC)", "state", "tries", "from", "text"],
               [[str(m["id"]), render.when(m["received_at"]), m["push_state"], str(m["attempts"]),
                 m["sender"], render.flat(m["text"])] for m in op["sms"]], flexible=("from", "text"))


@ops_app.command("close")
@fails_cleanly
def ops_close(
    operation_id: Annotated[int, typer.Argument(help="The operation's id (activationId).",
                                                parser=_id)],
    force: Annotated[bool, typer.Option(
        "--force", help="Close it even though it holds its number, and free the number.")
    ] = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Close by hand a rental that Onlinesim will never FINISH.

    Onlinesim closes every rental with FINISH_ACTIVATION, but one whose GET_NUMBER
    answer was lost (a crash before it left) is unknown to Onlinesim and would stay
    open for ever; `rentbox status` lists those after a day. Without --force only a
    rental that failed its guard window is closed: one that holds its number waits for
    Onlinesim. --force closes any open rental and frees its number (for a FINISH that
    can never arrive). The close is recorded as made by hand, with no income and no
    failure; a FINISH that still comes later is recorded too. SMS of the rental that
    Onlinesim has not taken expire: they are never pushed.
    """
    from rentbox import operations

    operations.close_by_hand(_books(db), _now(), operation_id, force=force)
    say(f"Operation {operation_id} closed by hand" + (": its number is free again." if force
                                                      else "."))


# ---------------------------------------------------------------------------------------
# bans
# ---------------------------------------------------------------------------------------


@bans_app.command("list")
@fails_cleanly
def bans_list(json_output: JsonOption = False, csv_output: CsvOption = False,
              db: DbOption = SETTINGS["db"].default) -> None:
    """Show banned numbers, and numbers with failed rentals on their way to a ban."""
    from rentbox import bans

    rows = bans.list_bans(_books(db))
    if not _wants_table(rows, json_output, csv_output=csv_output,
                        empty="No bans, and no number has failed rentals."):
        return
    _table(None, ["number", "country", "operator", "failures", "banned until (UTC)"],
           [["+" + r["number"], r["country"], r["operator"] or "", str(r["failures"]),
             render.when_exactly(r["banned_until"])] for r in rows])


@bans_app.command("lift")
@fails_cleanly
def bans_lift(
    number: Annotated[str, typer.Argument(help="The banned number (international).")],
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """End a number's ban now and reset its failure count (recorded as an event).

    On a number with failed rentals but no ban, only the count is reset.
    """
    from rentbox import bans, pool

    digits = pool.normalize_number(number)
    bans.lift_ban(_books(db), _now(), digits)
    say(f"+{digits} is no longer banned and is offered again.")


# ---------------------------------------------------------------------------------------
# alerts
# ---------------------------------------------------------------------------------------


@alerts_app.command("list")
@fails_cleanly
def alerts_list(json_output: JsonOption = False, csv_output: CsvOption = False,
                limit: LimitOption = 50, db: DbOption = SETTINGS["db"].default) -> None:
    """Show the alerts that hold now, then the ones cleared most recently."""
    from rentbox import alerts

    rows = alerts.recent(_books(db), limit)
    if not _wants_table(rows, json_output, csv_output=csv_output,
                        empty="No alerts: nothing has needed you yet."):
        return
    _table(None, ["state", "since (UTC)", "cleared (UTC)", "alert"],
           [[r["state"], render.when(r["started_at"]), render.when(r["cleared_at"]) or "",
             r["message"]] for r in rows], flexible=("alert",))


@alerts_app.command("test")
@fails_cleanly
def alerts_test(
    telegram_chat_id: Annotated[Optional[str], _option("telegram_chat_id")] = None,
    telegram_api_url: Annotated[str, _option("telegram_api_url")] = SETTINGS[
        "telegram_api_url"].default,
    alert_webhook_url: Annotated[Optional[str], _option("alert_webhook_url")] = None,
) -> None:
    """Send one test message through every configured channel and say what each answered.

    Exit code 1 if a channel failed or none is configured.
    """
    from rentbox import alerts

    alerting = _alerting(1, 1, 0, -1, telegram_chat_id, telegram_api_url, alert_webhook_url)
    if not alerting.channels:
        raise InvalidInput(f"no alert channel is set up: set {TELEGRAM_TOKEN_ENV} and "
                           "RENTBOX_TELEGRAM_CHAT_ID, or RENTBOX_ALERT_WEBHOOK_URL")
    answers = alerts.try_channels(alerting, _now())
    for channel, delivery in answers.items():
        say(f"{channel}: {'sent' if delivery.ok else 'FAILED'} ({delivery.answer})")
    if not all(d.ok for d in answers.values()):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------
# status, report, backup
# ---------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def selftest(
    url: Annotated[str, typer.Argument(help="The server's public URL, e.g. "
                                            "https://rent.example.com (with any path prefix).")],
    reserve: Annotated[int, typer.Option(help="Also reserve this many numbers at once, as "
                                              "Onlinesim's acceptance test does, and finish "
                                              "them.", metavar="N",
                                              parser=_number(int, 0, 200))] = 0,
    service: Annotated[Optional[str], typer.Option(
        help="What --reserve reserves: rent (Onlinesim's default), or activations for this "
             "service (vk, wa, ...; finished as refunded, so nothing is spent). With --buyer, "
             "by default the service offered with the most numbers.",
        metavar="SERVICE")] = None,
    buyer: Annotated[str, typer.Option(
        help="The buyer to play: onlinesim, or smshub (POST /smshub, key from "
             "RENTBOX_SMSHUB_KEY), or a buyer of the buyers file (POST /buyer/NAME, key from "
             "RENTBOX_BUYER_KEY, else from its entry in the RENTBOX_BUYERS file), both in "
             "the SMSHub agent protocol.", metavar="NAME")] = "onlinesim",
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the checks as JSON instead of lines.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.",
                                           metavar="SECONDS",
                                           parser=_number(float, 0.1, 120))] = 10.0,
    allow_http: Annotated[bool, typer.Option(
        "--allow-http", help="Accept a plain http:// URL (Onlinesim needs HTTPS).")] = False,
) -> None:
    """Play Onlinesim (or, with --buyer, an SMSHub-protocol buyer) against a partner server
    through its proxy and TLS: certificate, health, GET_SERVICES, keys, gzip, POST /,
    NO_OPERATION, timing.

    The key comes from RENTBOX_API_KEY. A private CA is trusted through the standard
    SSL_CERT_FILE variable. Rentals made by --reserve carry the X-Rentbox-Test header:
    rentbox keeps them out of income and failure counts. Exit code 0 only when no check
    failed (a check that did not run is shown as skipped).

    With --buyer, the self-test plays that buyer in the SMSHub agent protocol on its path:
    GET_SERVICES's shape (integer counts, no `any` beside real operators), a wrong key
    refused, gzip; with --reserve N, N numbers at once in roubles, integer number and
    activationId, each finished twice as returned (status 5, nothing spent or booked), one
    more excluding them by exceptionPhoneSet, and every GET_NUMBER within the protocol's
    3 s. Keys come from the environment or the buyers file, never the command line.
    """
    from rentbox import protocol
    from rentbox import selftest as selftest_module

    buyer = buyer.strip().lower()
    if buyer == "onlinesim":
        api_key = os.environ.get(API_KEY_ENV, "").strip()
        if not api_key:
            raise RentboxError("RENTBOX_API_KEY is not set: the self-test needs the API key "
                               "(export RENTBOX_API_KEY=...)")
        service = protocol.service_name(service or protocol.RENT, "--service")
        caller = selftest_module.ONLINESIM
    else:
        caller, api_key = selftest_module.play_buyer(
            buyer, smshub_key=os.environ.get(SMSHUB_KEY_ENV, "").strip() or None,
            buyer_key=os.environ.get(BUYER_KEY_ENV, "").strip() or None,
            buyers_file=os.environ.get(SETTINGS["buyers"].env, "").strip() or None)
        if service is not None:
            service = protocol.service_name(service, "--service")
            if service == protocol.RENT:
                raise InvalidInput("--service rent: rent is Onlinesim's alone; with --buyer, "
                                   "name an activation service (vk, wa, ...) or leave it out")
    checks = selftest_module.run(url, api_key, now=_now(), timeout_s=timeout,
                                 allow_http=allow_http, reserve=reserve, service=service,
                                 caller=caller)
    if json_output:
        _print_json(selftest_module.as_json(checks))
    else:
        # Advice once per cause: a proxy that forwards nothing fails many checks.
        for check, advice in zip(checks, selftest_module.advice_once(checks)):
            line = render.check_line(check.status, check.name, check.duration_s, check.detail)
            colour = {"passed": "green", "failed": "red"}.get(check.status, "yellow")
            out.print(f"[{colour}]{_escape(line[0])}[/]{_escape(line[1:])}", soft_wrap=True)
            if advice:
                out.print(f"  → {_escape(advice)}", soft_wrap=True)
        out.print(_escape(selftest_module.summary(checks)), soft_wrap=True)
    if not selftest_module.has_passed(checks):
        raise typer.Exit(1)


@app.command()
@fails_cleanly
def status(json_output: JsonOption = False, db: DbOption = SETTINGS["db"].default) -> None:
    """Show at a glance whether rentbox is healthy: Onlinesim's last call, the other buyers
    (their open operations, last call and push URL, and which buyer gets what), income,
    pool, rentals, outbox, warnings.

    Exit code 0 either way; with --json, monitoring can read `warnings`.
    """
    from rentbox import spool

    facts = reports.status(_books(db), _now())
    if json_output:
        _print_json(facts)
        return
    p, o, box = facts["pool"], facts["operations"], facts["outbox"]
    server = facts["server"]
    if server is None:
        say("Server:     never started on this database")
    else:
        running = "running" if server["running"] else "not running"
        say(f"Server:     {running}, rentbox {server['version']} at {server['url']}, "
            f"started {render.when(server['started_at'])} UTC")
    say(f"Onlinesim:  {_last_calls(facts['last_onlinesim_call'])}")
    if len(facts["buyers"]) > 1:  # buyers beside Onlinesim: each, and who gets what
        for i, buyer in enumerate(facts["buyers"]):
            say(f"{'Buyers:' if i == 0 else '':<12}{render.buyer(buyer)}")
        say(f"{'':<12}Which buyer gets what: {'; '.join(facts['buyer_policy'])}")
    income = facts["income"]
    say(f"Income:     {render.rub(income['credited_today_kopecks'])} RUB credited today, "
        f"{render.rub(income['credited_month_kopecks'])} RUB this month (UTC); "
        f"{render.rub(income['pending_kopecks'])} RUB pending in open rentals"
        + render.other_income(income["other_currencies"]))
    leaving = (f" ({p['rented_disabled']} of them disabled)" if p["rented_disabled"] else "")
    # "offline" is the SIMs' word (next line): these would be free but for their SIM.
    offline = f", {p['offline']} waiting for their SIM" if p["offline"] else ""
    say(f"Pool:       {p['total']} numbers: {p['free']} free, {p['rented']} rented{leaving}, "
        f"{p['banned']} banned, {p['disabled']} disabled{offline}")
    sims = facts["presence"]
    risk = f", {len(sims['at_risk'])} rented at risk" if sims["at_risk"] else ""
    say(f"SIMs:       {sims['online']} online, {sims['offline']} offline{risk}, "
        f"{sims['unwatched']} not reported by any gateway")
    stale = f" ({len(o['stale_failed'])} for over a day)" if o["stale_failed"] else ""
    say(f"Rentals:    {o['open']} open: {o['with_sms']} met their guard window, "
        f"{o['awaiting_sms']} waiting for an SMS, {o['failed_awaiting_finish']} failed and "
        f"awaiting FINISH{stale}")
    oldest = (f", the oldest for {render.duration(box['oldest_pending_age_s'])}"
              if box["oldest_pending_age_s"] is not None else "")
    say(f"Outbox:     {box['pending']} SMS waiting ({box['retrying']} retrying){oldest}, "
        f"{box['failed']} refused for good, {box['expired']} expired (rental ended first)")
    if facts["spool"] is not None:  # RENTBOX_SPOOL_DIR: the hooks' files not yet stored
        spooled = facts["spool"]
        age = (f", the oldest for {render.duration(spooled['oldest_age_s'])}"
               if spooled["oldest_age_s"] is not None else "")
        say(f"Spool:      {spooled['waiting']} file(s) waiting in {spooled['dir']}{age}, "
            f"{spooled['bad']} set aside in {spool.BAD}/"
            + (f"; cannot be read: {spooled['problem']}" if spooled["problem"] else ""))
    store = facts["database"]
    say(f"Database:   {render.size(store['database_bytes'])} (WAL "
        f"{render.size(store['wal_bytes'])}), {render.size(store['free_bytes'])} free on its "
        f"disk" + (f"; cannot be written: {store['write_problem']}"
                   if store["write_problem"] else ""))
    _say_safekeeping(facts["backups"], facts["replication"])
    if not out.is_terminal:  # no colours to show: plain lines, and Rich stays unimported
        for warning in facts["warnings"]:
            say(f"Warning: {warning}")
        if not facts["warnings"]:
            say("No warnings.")
    elif facts["warnings"]:
        for warning in facts["warnings"]:
            out.print(f"[bold yellow]Warning:[/] {_escape(warning)}", soft_wrap=True)
    else:
        out.print("[green]No warnings.[/]")


def _last_calls(call: dict | None) -> str:
    """Onlinesim's last call, to the second, then the last call of each other action."""
    if call is None:
        return "last call never"
    others = sorted(((at, action) for action, at in (call.get("actions") or {}).items()
                     if action != call["action"]), reverse=True)
    before = "".join(f"; before it {action} {render.when_exactly(at)} UTC"
                     if i == 0 else f", {action} {render.when_exactly(at)} UTC"
                     for i, (at, action) in enumerate(others))
    return f"last call {render.when_exactly(call['at'])} UTC ({call['action']}){before}"


def _say_safekeeping(kept: dict | None, replica: dict | None) -> None:
    """The status lines of scheduled backups and of the replica."""
    if kept is None:
        say("Backups:    no scheduled backups (RENTBOX_BACKUP_DIR is not set)")
    else:
        last = ("none yet" if not kept.get("last_at") else
                f"last {render.when(kept['last_at'])} UTC ({render.size(kept['last_bytes'])}, "
                f"{kept.get('verified', 'checked')}), {kept.get('kept', 0)} kept")
        failed = (f"; FAILED {render.when(kept['failed_at'])} UTC: {kept['last_error']}"
                  if kept.get("failed_at") and kept["failed_at"] > (kept.get("last_at") or "")
                  else "")
        say(f"Backups:    every {render.duration(kept['every_s'])} into "
            f"{kept.get('folder', '?')}: {last}{failed}")
    if replica is None:
        say("Replica:    none (RENTBOX_REPLICA_URL is not set)")
        return
    lag = (f", current as of {render.duration(replica['lag_s'])} ago"
           if replica.get("lag_s") is not None else "")
    restarts = (f", restarted {render.plural(replica['restarts'], 'time')}"
                if replica.get("restarts") else "")
    say(f"Replica:    Litestream {replica.get('state', 'not started')} to "
        f"{replica.get('replica', '?')}{lag}{restarts}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command("services")
@fails_cleanly
def services_command(
    offered: Annotated[Optional[str], typer.Option(
        "--services", metavar="NAMES",
        help="The services to show (comma-separated); by default those the "
                           "server last started with (RENTBOX_SERVICES).")] = None,
    json_output: JsonOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Show the activations' services: each with the numbers that can be issued for it
    now, the numbers spent for it, and its open activations."""
    from rentbox import services as services_module

    books = _books(db)
    rules = meta.server_rules(books) or Rules()
    if offered is not None:
        rules = dataclasses.replace(rules, services=services_module.parse_offered(offered))
    rows = services_module.overview(books, rules)
    if json_output:
        _print_json(rows)
        return
    if not rows:
        say("No service is offered: activations are off (set RENTBOX_SERVICES, e.g. "
            "vk,wa,tg, and restart rentbox serve).")
        return
    _table(None, ["service", "offered", "available now", "spent", "open"],
           [[r["service"], "yes" if r["offered"] else "no", str(r["available"]),
             str(r["spent"]), str(r["open"])] for r in rows])


@app.command()
@fails_cleanly
def report(
    by: Annotated[Grouping, typer.Option(help="How to group the operations (product: rent or activations; buyer: a row per buyer and currency).")] = "day",
    since: Annotated[Optional[dt.datetime], typer.Option(
        parser=_moment, metavar="DATE",
        help="From this date or time (UTC unless it has a zone), inclusive.")] = None,
    until: Annotated[Optional[dt.datetime], typer.Option(
        parser=_moment, metavar="DATE",
        help="Up to this date or time (UTC unless it has a zone), exclusive.")] = None,
    json_output: JsonOption = False,
    csv_output: CsvOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Income and operations: credited (FINISH status 3) and pending (open ones with SMS).

    A closed operation counts on the day it closed, an open one on the day it started.
    Success rate: operations that met their window (Onlinesim accepted an SMS sent
    within it), of those decided. --by product or service keeps rentals and each
    activation service apart. Sums are in RUB, of RUB operations only; --by buyer gives
    a row per buyer and currency (a USD income is never added to roubles).
    """
    if json_output and csv_output:
        raise InvalidInput("choose one of --json and --csv")
    since_at, until_at = _utc(since), _utc(until)
    if since_at and until_at and since_at >= until_at:
        raise InvalidInput("--since must be before --until")
    by = Grouping(by).value
    books = _books(db)
    rows, totals = reports.income_report(books, by=by, since=since_at, until=until_at)
    by_buyer = by == "buyer"
    if json_output:
        _print_json({"by": by, "rows": [r.as_dict() for r in rows], "totals": totals.as_dict(),
                     **({"totals_by_currency": [t.as_dict()
                                                for t in reports.currency_totals(rows)]}
                        if by_buyer else {})})
        return
    if csv_output:
        import csv

        # For spreadsheets: plain numbers, the success rate as a fraction, sums in kopecks
        # as in --json (the unit is in the column's name).
        # By buyer, each row's currency, and its sums in minor units of it (cents for USD).
        columns = ["operations", "sold", "cancelled", "refunded", "wrong_service", "open",
                   "failed", "with_sms", "success_rate",
                   *(("credited_minor", "pending_minor") if by_buyer
                     else ("credited_kopecks", "pending_kopecks"))]
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([by, *(["currency"] if by_buyer else [])] + columns)
        for row in rows:
            rate = row.success_rate
            writer.writerow([row.key, *([row.currency] if by_buyer else []), row.operations,
                             row.sold, row.cancelled, row.refunded,
                             row.wrong_service, row.open, row.failed, row.with_sms,
                             "" if rate is None else f"{rate:.4f}",
                             row.credited_kopecks, row.pending_kopecks])
        return
    if not rows:
        say("No operations in this period.")
        return
    # The table folds cancelled, refunded and wrong_service into "other"; --csv and --json
    # have each.
    label = ("+{}" if by == "number" else "{}").format
    if by_buyer:  # a row per buyer and currency, and the totals of each currency
        _table(None, ["buyer", "currency", "ops", "sold", "other", "open", "failed", "success",
                      "credited", "pending"],
               [[r.key, r.currency, str(r.operations), str(r.sold),
                 str(r.cancelled + r.refunded + r.wrong_service), str(r.open), str(r.failed),
                 "" if r.success_rate is None else f"{r.success_rate:.0%}",
                 render.rub(r.credited_kopecks), render.rub(r.pending_kopecks)]
                for r in rows + reports.currency_totals(rows)])
    else:
        _table(None, [by, "ops", "sold", "other", "open", "failed", "success",
                      "credited (RUB)", "pending (RUB)"],
               [[label(r.key) if r is not totals else "total", str(r.operations), str(r.sold),
                 str(r.cancelled + r.refunded + r.wrong_service), str(r.open), str(r.failed),
                 "" if r.success_rate is None else f"{r.success_rate:.0%}",
                 render.rub(r.credited_kopecks), render.rub(r.pending_kopecks)]
                for r in rows + [totals]])
    say("credited: FINISH status 3. pending: open operations with SMS, at their GET_NUMBER sum.")
    if by_buyer:
        say("Sums in each row's currency, never added across currencies. other: cancelled, "
            "refunded or wrong service. --json and --csv give minor units (kopecks, cents).")
        return
    say("other: cancelled, refunded or wrong service. --json and --csv give kopecks.")
    others = reports.other_currencies(books, since=since_at, until=until_at)
    if others:  # never added to the roubles above, never hidden either
        say(f"Not in these sums (RUB only): {', '.join(_in_other(t) for t in others)}; "
            "see --by buyer.")


def _in_other(totals: reports.ReportRow) -> str:
    """One other currency's income of a report period, in words."""
    return ", ".join(f"{render.money(minor, totals.currency)} {what}" for minor, what in (
        (totals.credited_kopecks, "credited"), (totals.pending_kopecks, "pending")) if minor)


@app.command()
@fails_cleanly
def backup(
    path: Annotated[str, typer.Argument(
        help="The file to write, which must not exist yet; or a folder (one that exists, "
             "or a path ending in /) to write it in, named by the UTC time, e.g. "
             "rentbox-2026-12-03T14-30-00Z-by-hand.db.")],
    json_output: JsonOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Copy the database to PATH, consistently, even while the server runs.

    Never overwrites a file. To restore it: stop the server and run `rentbox restore`
    with the file written.
    """
    from rentbox import backups

    target, size = backups.backup_by_hand(_books(db), path, _now())
    if json_output:
        _print_json({"database": str(db), "backup": str(target), "bytes": size})
        return
    say(f"Backed up {db} to {target} ({render.size(size)}).")


@app.command()
@fails_cleanly
def restore(
    source: Annotated[str, typer.Argument(
        help="A backup file, or a replica URL (s3://..., file:///...) read through "
             "Litestream.")],
    json_output: JsonOption = False,
    db: DbOption = SETTINGS["db"].default,
) -> None:
    """Put a backup or a replica in place of the database, and say what may be missing.

    Refused while a server runs on the database. The database it replaces is kept aside
    under its name with `.before-restore-` and the UTC time added (e.g.
    `rentbox.db.before-restore-2026-12-03T14-30-00Z`). The copy is checked first (SQLite's integrity
    check, rentbox's schema), and new activationIds and smsIds continue past any that the
    lost server may have issued after the restored point.
    """
    from rentbox import backups

    result = backups.restore(source, db, _now())
    if json_output:
        _print_json(result)
        return
    point = result["restored_point_at"]
    when = (f"the books as of {render.when(point)} UTC, {render.duration(result['age_s'])} ago"
            if point else "empty books")
    say(f"Restored {db} from {result['source']}: {when}.")
    if result["kept_aside"]:
        say(f"The database it replaced is kept as {result['kept_aside']} (with its -wal and "
            "-shm files, if any).")
    say(f"New activationIds continue from {result['next_activation_id']} and smsIds from "
        f"{result['next_sms_id']}: past any the lost server could have issued since.")
    since = f"{render.when(point)} UTC" if point else "the start"
    say(f"What changed after {since} is not in these books. Check:")
    for line in backups.what_to_check(result):
        say(f"- {line}")


def main() -> None:
    """The console script `rentbox`."""
    if not sys.stdout.isatty():
        # Help and usage errors as plain text in a pipe or a file, not Rich's boxes.
        # (Typer reads this switch, set from TYPER_USE_RICH, each time it formats.)
        import typer.core

        typer.core.HAS_RICH = False
    # What start-up made (modules, Typer's and the settings' objects) lives until exit:
    # the cyclic garbage collector need not walk it again, neither while the command runs
    # nor at exit, where that walk cost `rentbox status` a tenth of its time (issue 25).
    gc.freeze()
    _app_for(sys.argv[1:])()


def _app_for(args: list[str]) -> typer.Typer:
    """`app` with only the command or group that `args` run, or all of them where `args`
    name none (`rentbox --help`, a mistyped name). Typer builds a Click command of every
    command it has, parameters and all, before it runs one: for all of rentbox's, that
    took longer than `rentbox status`'s own work."""
    name = args[0] if args else None
    commands = [c for c in app.registered_commands
                if (c.name or typer.main.get_command_name(c.callback.__name__)) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = commands, groups
    return only
