"""Rendering for people: aligned plain-text tables, and times, sums and texts in cells.

Tables are written directly rather than through Rich: Rich measures every cell and took
0.4 s for 500 rows (4 s for a 5,000-number pool); this takes milliseconds. Columns are
aligned by terminal cells (emoji and CJK are two wide), numbers are right-aligned, and on
a terminal the free-text columns are cut with an ellipsis so that a row fits the width.
Piped output is never cut (use --json for scripts).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from typing import Iterable, TextIO

# A cell right-aligned as a number: digits, maybe signed, grouped, decimal or a percentage;
# or empty. Not a lone '-' (no value).
_NUMERIC = re.compile(r"^(-?(?=[\d,.]*\d)[\d,]*\.?\d*%?)?$")
GAP = "  "


def table(stream: TextIO, columns: list[str], rows: list[list[str]], *,
          title: str | None = None, flexible: tuple[str, ...] = (),
          width: int | None = None) -> None:
    """Write a table: a header, a rule, one line per row. `width` (a terminal's) cuts the
    `flexible` columns so that rows fit; None never cuts."""
    if title:
        stream.write("\n" + title + "\n")
    stream_table(stream, columns, rows, flexible=flexible, width=width, sample=len(rows))


# Rows a streamed table measures its columns on before it writes the first line.
SAMPLE_ROWS = 1000


def stream_table(stream: TextIO, columns: list[str], rows: Iterable[list[str]], *,
                 flexible: tuple[str, ...] = (), width: int | None = None,
                 sample: int | None = None) -> int:
    """`table` for rows that come one at a time (a pool of any size): the columns are
    measured on the header and the first `sample` (SAMPLE_ROWS) rows only, so that the
    first lines appear at once, and each later row is written as it comes. A later cell
    wider than its column pushes the rest of its line right, except in a `flexible`
    column on a terminal (`width`), where it is cut. Returns the number of rows written."""
    from rich.cells import cell_len, set_cell_size  # here: commands without tables skip it

    rows = iter(rows)
    first = list(itertools.islice(rows, SAMPLE_ROWS if sample is None else sample))
    widths = [max([cell_len(name)] + [cell_len(row[i]) for row in first])
              for i, name in enumerate(columns)]
    if width is not None:
        widths = _fit(columns, widths, flexible, width)
    cut = [width is not None and name in flexible for name in columns]
    right = [bool(first) and name not in flexible and all(_NUMERIC.match(row[i]) for row in first)
             for i, name in enumerate(columns)]

    def line(cells: list[str]) -> str:
        parts = []
        for cell, size, align_right, may_cut in zip(cells, widths, right, cut):
            length = cell_len(cell)
            if length > size and may_cut:
                cell, length = set_cell_size(cell, size - 1) + "…", size
            pad = " " * max(0, size - length)
            parts.append(pad + cell if align_right else cell + pad)
        return GAP.join(parts).rstrip()

    stream.write(line(columns) + "\n")
    stream.write("─" * (sum(widths) + len(GAP) * (len(widths) - 1)) + "\n")
    stream.write("".join(line(row) + "\n" for row in first))
    count = len(first)
    for row in rows:
        stream.write(line(row) + "\n")
        count += 1
    return count


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 number`, `2 numbers` (`words`: the plural where it is not `word` + s)."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def _fit(columns: list[str], widths: list[int], flexible: tuple[str, ...],
         width: int) -> list[int]:
    """Share what the fixed columns leave among the flexible ones: narrow ones get what
    they need, the rest is split evenly among the wide ones (never below 6 cells)."""
    room = width - len(GAP) * (len(columns) - 1) - sum(
        w for name, w in zip(columns, widths) if name not in flexible)
    wanted = sorted((w, i) for i, (name, w) in enumerate(zip(columns, widths))
                    if name in flexible)
    fitted = list(widths)
    for index, (natural, i) in enumerate(wanted):
        fitted[i] = max(6, min(natural, room // (len(wanted) - index)))
        room -= fitted[i]
    return fitted


def when(text: str | None) -> str:
    """A stored UTC time as people read it, to the minute."""
    return f"{text[:10]} {text[11:16]}" if text else ""


def when_exactly(text: str | None) -> str:
    """A stored UTC time to the second."""
    return f"{text[:10]} {text[11:19]}" if text else ""


def rub(kopecks: int | None) -> str:
    return "" if kopecks is None else f"{kopecks / 100:,.2f}"


def money(minor: int | None, currency: str) -> str:
    """A sum in minor units of its currency (kopecks, cents), with the currency: 12.50 USD."""
    return "" if minor is None else f"{rub(minor)} {currency}"


def other_income(currencies: list[dict]) -> str:
    """Income in other currencies than RUB, for the end of `rentbox status`'s Income line
    ("; + 12.50 USD this month, 3.00 USD pending"); empty without any. Never added to the
    roubles before it."""
    said = []
    for c in currencies:
        parts = []
        if c["credited_month_minor"]:
            parts.append(f"{money(c['credited_month_minor'], c['currency'])} this month")
        elif c["credited_week_minor"]:  # a week that began last month
            parts.append(f"{money(c['credited_week_minor'], c['currency'])} this week")
        if c["pending_minor"]:
            parts.append(f"{money(c['pending_minor'], c['currency'])} pending")
        said.append(f"; + {', '.join(parts)}")
    return "".join(said)


def buyer(facts: dict) -> str:
    """One buyer in `rentbox status`: where its calls arrive, its open operations, its last
    call (to the second, and how long ago) and whether its push URL is set."""
    name = facts["name"] + (f" ({facts['path']})" if facts["path"] else "")
    call = facts["last_call"]
    if call is None:
        last = "never called"
    else:
        ago = duration(max(0, facts["last_call_age_s"]))
        last = f"last call {when_exactly(call['at'])} UTC ({call['action']}, {ago} ago)"
    if not facts["configured"]:
        push = "not served by the server now"
    else:
        push = {None: "push URL unknown", True: "push URL set",
                False: "push URL NOT set"}[facts["push_url_set"]]
    return f"{name}: {facts['open']} open; {last}; {push}"


def flat(text: str) -> str:
    """A message on one line (a table cell); the full text is in --json."""
    return " ".join(text.split())


def detail(values: dict) -> str:
    """An event's detail as `key=value` pairs, empty values left out (--json has all)."""
    return " ".join(f"{key}={value}" for key, value in values.items()
                    if value not in (None, [], ""))


def outcome(rental: dict) -> str:
    """A rental's outcome in a table, with what else holds: its SIM offline while it is
    open, or a self-test rental (`rentbox selftest --reserve`)."""
    marks = [", at risk" if rental.get("at_risk") else "", ", test" if rental.get("test") else ""]
    return rental["outcome"] + "".join(marks)


# How a rental failed its guard window, in a table's "guard" column.
GUARD = {"guard_expired": "expired", "cancelled_without_sms": "no SMS"}


def size(size_bytes: int | None) -> str:
    """A size in bytes for people: 512 B, 3.4 MiB, 12.0 GiB."""
    if size_bytes is None:
        return "unknown"
    for unit, scale in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def duration(seconds: float) -> str:
    """A duration for people: 45 s, 12 min, 3 h 20 min, 2 d 4 h."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if hours < 1:
        return f"{minutes} min"
    if days < 1:
        return f"{hours} h {minutes % 60} min"
    return f"{days} d {hours % 24} h"


def check_line(status: str, name: str, duration_s: float, detail: str) -> str:
    """One self-test check for people: ✓ passed, ✗ failed or – skipped (never shown as
    passed, and without a time: it did nothing), its name, its time, what was seen."""
    if status == "skipped":
        return f"– {name} (skipped): {detail}"
    return f"{'✓' if status == 'passed' else '✗'} {name} ({duration_s * 1000:.0f} ms): {detail}"


class LazyConsole:
    """A Rich Console, made the first time something needs it.

    Importing rich.console takes longer than `rentbox status`'s own work (issue 25), and
    most commands never need it when their output goes to a pipe: plain lines and tables
    are written directly. Attributes set before the console exists (`quiet`,
    `on_broken_pipe`) are kept and given to it when it is made.
    """

    def __init__(self, *, stderr: bool = False, **settings):
        vars(self).update(_stderr=stderr, _settings=settings, _console=None, _given={})

    @property
    def console(self):
        """The Rich Console itself (made, and rich.console imported, on first use)."""
        if self._console is None:
            from rich.console import Console

            console = Console(stderr=self._stderr, **self._settings)
            for name, value in self._given.items():
                setattr(console, name, value)
            vars(self)["_console"] = console
        return self._console

    @property
    def is_terminal(self) -> bool:
        """Rich's `is_terminal`; without making the console where Rich's answer can only
        be False: a stream that is no terminal, and neither TTY_COMPATIBLE nor
        FORCE_COLOR (which Rich reads) in the environment."""
        if self._console is None and not os.environ.get("TTY_COMPATIBLE") and (
                "FORCE_COLOR" not in os.environ):
            try:
                if not (sys.stderr if self._stderr else sys.stdout).isatty():
                    return False
            except (AttributeError, ValueError):  # no stream, or a closed one: Rich's False
                return False
        return self.console.is_terminal

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.console, name)

    def __setattr__(self, name: str, value) -> None:
        if self._console is None:
            self._given[name] = value
        else:
            setattr(self._console, name, value)
