"""Writes the settings table of docs/settings.md from rentbox.config.SETTINGS, the one table
of settings, so that nobody edits it by hand. Run it after changing a setting:

    .venv/bin/python docs/settings_table.py

tests/test_readme.py fails while docs/settings.md differs from what this writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent / "settings.md"
BEGIN = ("<!-- The table below is generated from rentbox/config.py by docs/settings_table.py: "
         "edit the settings there, then run it. -->")
END = "<!-- End of the generated table. -->"


def shown_default(value: object) -> str:
    """A default as the partner would type it."""
    if value is None or value == "":
        return "(none)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table(settings) -> str:
    """The Markdown table of `settings` (config.SETTINGS' values), in their order."""
    lines = ["| option | environment variable | default | meaning |", "|---|---|---|---|"]
    for s in settings:
        options = (f"`{s.option}`, `--no-{s.option[2:]}`" if isinstance(s.default, bool)
                   else f"`{s.option}`")
        lines.append(f"| {options} | `{s.env}` | {shown_default(s.default)} | {cell(s.help)} |")
    return "\n".join(lines)


def render(document: str, settings) -> str:
    """`document` with the text between its two markers replaced by the table."""
    head, found, rest = document.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"{DOC.name} lacks the markers of the generated table")
    return f"{head}{BEGIN}\n\n{table(settings)}\n\n{END}{tail}"


def main() -> int:
    sys.path.insert(0, str(DOC.parent.parent))  # run from a checkout without installing
    from rentbox.config import SETTINGS

    before = DOC.read_text()
    after = render(before, SETTINGS.values())
    if after != before:
        DOC.write_text(after)
        print(f"{DOC} updated")
    else:
        print(f"{DOC} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
