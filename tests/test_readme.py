"""The README is a quick start and docs/ holds the rest: the commands, links, paths and
settings they show must be real, and the walkthrough must work as a newcomer pastes it."""

import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from rentbox.config import SECRETS, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ALL_DOCS = [README, *sorted(DOCS.glob("*.md"))]
# The docs/*.md the README's quick start hands the partner on to.
TOPICS = ("going-live", "gateways", "settings", "api", "buyers", "operations", "backups",
          "upgrading", "development")

FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
SHELL = {"", "sh", "bash", "console"}


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = [line for line in ci if line.startswith("python3 -m venv")]
    assert len(command) == 1
    assert f"\n{command[0]}\n" in (ROOT / "README.md").read_text()


def test_the_first_set_up_command_installs_and_serves_the_default_database():
    text = README.read_text()
    setup = text[text.index("## Set-up: two commands"):text.index("## Walkthrough")]
    first = FENCE.findall(setup)[0][1].strip()
    assert first == ("python3 -m venv .venv && .venv/bin/pip install . && "
                     "RENTBOX_API_KEY=your-onlinesim-api-key .venv/bin/rentbox serve")


def test_the_readme_is_a_quick_start_that_points_to_the_docs():
    text = README.read_text()
    assert len(text.splitlines()) < 200
    # Going live is linked before the first section, and the status page is shown.
    assert "](docs/going-live.md)" in text[:text.index("\n## ")]
    assert "![" in text and "](docs/status-page.png)" in text
    for topic in TOPICS:
        assert (DOCS / f"{topic}.md").is_file(), topic
        assert f"](docs/{topic}.md" in text, f"the README does not link docs/{topic}.md"


def test_the_readme_says_which_extras_the_test_command_installs():
    text = README.read_text()
    test_command = next(line for line in text.splitlines()
                        if line.startswith("python3 -m venv") and "pytest" in line)
    extras = re.search(r"pip install -e '(\.\[[^]]*\])'", test_command).group(1)
    mentioned = re.findall(r"pip install -e '([^']*)'", text)
    assert mentioned and set(mentioned) == {extras}, mentioned


def test_no_doc_installs_rentbox_from_the_package_index():
    # rentbox is not on PyPI: an extra is installed from the checkout (`.[replicate]`, or
    # `/path/to/rentbox[replicate]`), never as `rentbox[replicate]`.
    texts = {p: p.read_text(errors="replace") for p in [*ALL_DOCS, *(ROOT / "examples").rglob("*"),
                                        *(ROOT / "rentbox").rglob("*.py")] if p.is_file()}
    for path, text in texts.items():
        for spec in re.findall(r"pip install (?:-[a-zA-Z-]+ )*['\"]?([^\s'\"]+)", text):
            assert not spec.startswith("rentbox"), f"{path.name}: pip install {spec}"


# ---- settings ---------------------------------------------------------------------------


def test_docs_document_every_setting():
    text = (DOCS / "settings.md").read_text()
    for setting in SETTINGS.values():
        assert f"`{setting.env}`" in text, f"docs/settings.md lacks {setting.env}"
        assert f"`{setting.option}`" in text, f"docs/settings.md lacks {setting.option}"
    for secret in SECRETS:
        assert f"`{secret}`" in text, f"docs/settings.md lacks {secret}"


def settings_table():
    sys.path.insert(0, str(DOCS))
    try:
        import settings_table
    finally:
        sys.path.remove(str(DOCS))
    return settings_table


def test_the_settings_table_is_generated_from_the_settings():
    table = settings_table()
    text = (DOCS / "settings.md").read_text()
    assert table.render(text, SETTINGS.values()) == text, (
        "docs/settings.md is out of date: run .venv/bin/python docs/settings_table.py")


def test_the_settings_table_follows_a_changed_setting():
    import dataclasses

    table = settings_table()
    text = (DOCS / "settings.md").read_text()
    changed = [dataclasses.replace(s, help="Changed.") if s.name == "port" else s
               for s in SETTINGS.values()]
    rendered = table.render(text, changed)
    assert "| `--port` | `RENTBOX_PORT` | `8080` | Changed. |" in rendered
    assert rendered.count("| `--port` |") == 1 and rendered != text
    assert table.render(rendered, SETTINGS.values()) == text
    with pytest.raises(ValueError):
        table.render("no markers here", SETTINGS.values())


# ---- the commands the docs show ---------------------------------------------------------


def shown_lines(text: str) -> list[str]:
    """Every line of the shell and plain code blocks (continuation lines joined), and every
    inline code span outside them."""
    lines = []
    for language, body in FENCE.findall(text):
        if language in SHELL:
            lines += body.replace("\\\n", " ").splitlines()
    prose = FENCE.sub("", text)
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return lines


def words_of(line: str) -> list[str]:
    """A line as the shell splits it, operators as words of their own (a line that is not
    shell, such as a command with its description, word by word)."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        return list(lexer)
    except ValueError:  # an apostrophe in a description
        return line.split()


def rentbox_invocations(line: str) -> list[list[str]]:
    """The words after `rentbox` of every rentbox command on a line (`a|b` written without
    spaces, as the command list does, stands for each of a and b)."""
    variants = [line]
    alternatives = re.search(r"(?<![\w|-])([\w-]+(?:\|[\w-]+)+)(?![\w|-])", line)
    if alternatives:
        variants = [line[:alternatives.start()] + choice + line[alternatives.end():]
                    for choice in alternatives.group(1).split("|")]
        return [found for variant in variants for found in rentbox_invocations(variant)]
    found, segment = [], []
    for word in words_of(line) + [";"]:
        if word and set(word) <= set("();<>|&"):
            found += command_after_prefixes(segment)
            segment = []
        else:
            segment.append(word)
    return found


def command_after_prefixes(segment: list[str]) -> list[list[str]]:
    i = 0
    while i < len(segment):
        word = segment[i]
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", word) or word in (
                "env", "exec", "time", "nohup", "do", "then", "else", "!"):
            i += 1
        elif word == "sudo":
            i += 1
            while i < len(segment) and segment[i].startswith("-"):
                i += 2 if segment[i] in ("-u", "-g") else 1
        else:
            break
    if i < len(segment) and os.path.basename(segment[i]) == "rentbox":
        return [segment[i + 1:]]
    return []


def cli_command():
    import typer.main

    from rentbox import cli

    return typer.main.get_command(cli.app)


def check_invocation(root, words: list[str]) -> tuple[str | None, tuple[str, ...]]:
    """(what is wrong, or None; the command's path) for `rentbox WORDS…`."""
    command, path, rest = root, [], list(words)
    while getattr(command, "commands", None) is not None and rest:
        word = rest[0]
        if word.startswith("-"):
            break
        if word.isupper():  # a placeholder: `rentbox COMMAND --help`
            return None, tuple(path)
        if word not in command.commands:
            return f"no command `rentbox {' '.join(path + [word])}`", tuple(path)
        command, path = command.commands[word], path + [word]
        rest.pop(0)
    options = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for word in rest:
        option = re.match(r"^[\[(]?(--[a-z][a-z0-9-]*)", word)
        if option and option.group(1) not in options:
            return f"`rentbox {' '.join(path)}` has no option {option.group(1)}", tuple(path)
    return None, tuple(path)


def shown_invocations():
    for doc in ALL_DOCS:
        for line in shown_lines(doc.read_text()):
            for words in rentbox_invocations(line):
                yield doc, line, words


def test_every_rentbox_command_the_docs_show_exists_with_its_options():
    root = cli_command()
    problems, checked = [], 0
    for doc, line, words in shown_invocations():
        problem, _ = check_invocation(root, words)
        checked += 1
        if problem:
            problems.append(f"{doc.relative_to(ROOT)}: {problem}: {line}")
    assert not problems, "\n".join(problems)
    assert checked > 100  # README and docs show well over a hundred


def test_the_check_finds_a_wrong_command_or_option():
    root = cli_command()
    found = [check_invocation(root, words)[0]
             for words in rentbox_invocations("RENTBOX_DB=x rentbox numbers enable|frobnicate N")]
    assert found == [None, "no command `rentbox numbers frobnicate`"]
    [words] = rentbox_invocations("sudo -u rentbox /opt/rentbox/bin/rentbox status --jsn | jq")
    assert check_invocation(root, words)[0] == "`rentbox status` has no option --jsn"
    # Arguments of other programs are not rentbox commands.
    assert rentbox_invocations("sudo usermod -aG rentbox smsd") == []
    assert rentbox_invocations("install -d -o rentbox -g rentbox /var/spool/rentbox") == []


def test_every_command_is_shown_in_the_docs():
    root = cli_command()

    def paths(command, path=()):
        if getattr(command, "commands", None) is None:
            yield path
        else:
            for name, sub in command.commands.items():
                yield from paths(sub, path + (name,))

    shown = {check_invocation(root, words)[1] for _, _, words in shown_invocations()}
    missing = [" ".join(p) for p in paths(root) if p not in shown]
    assert not missing, f"no doc shows: rentbox {', rentbox '.join(missing)}"


# ---- links and paths --------------------------------------------------------------------


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    prose = FENCE.sub("", doc.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose, re.M)}


def test_anchors_are_the_ones_github_makes():
    assert slug("SMS daemons on this machine: gammu-smsd, smstools3") == (
        "sms-daemons-on-this-machine-gammu-smsd-smstools3")
    assert slug("Status page: rentbox at a glance in a browser") == (
        "status-page-rentbox-at-a-glance-in-a-browser")
    assert slug("The `replicate` extra's folder") == "the-replicate-extras-folder"
    assert "the-self-test-in-detail" in anchors(DOCS / "going-live.md")
    # A comment in a shell block is no heading.
    assert slug("The folder: rentbox's, and") not in {a[:len("the-folder-rentboxs-and")]
                                                     for a in anchors(DOCS / "gateways.md")}


def test_every_relative_link_resolves():
    broken = []
    for doc in ALL_DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", doc.read_text())):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (doc.parent / file).resolve() if file else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_file_the_docs_name_exists():
    named = re.compile(r"(?<![\w/.-])((?:examples|benchmarks|tests|rentbox|docs)/[\w.-]*\w)")
    missing = [f"{doc.relative_to(ROOT)}: {path}" for doc in ALL_DOCS
               for path in named.findall(doc.read_text()) if not (ROOT / path).exists()]
    assert not missing, "\n".join(missing)


# ---- the walkthrough ---------------------------------------------------------------------


def test_the_walkthrough_works_when_pasted_twice(tmp_path):
    """The walkthrough as a newcomer pastes it (twice), from a copy of the checkout's
    examples, with this test's installed rentbox instead of a fresh install and a free
    port instead of 8088; then the shell it ran in, as the partner goes on using it."""
    import shutil
    import socket
    import sqlite3
    import subprocess

    text = README.read_text()
    walkthrough = text[text.index("## Walkthrough"):]
    script = walkthrough[walkthrough.index("```sh\n") + 6:walkthrough.index("\n```\n")]
    lines = script.splitlines()
    assert lines[0].startswith("python3 -m venv .venv && .venv/bin/pip install")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv_bin = Path(sys.executable).parent
    script = "\n".join(lines[1:]).replace(".venv/bin/", f"{venv_bin}/").replace(
        "8088", str(port))
    # After the walkthrough, what the partner's shell has set.
    script += "\necho '--- after the walkthrough:'; env | grep -E '^(RENTBOX_|VIRTUAL_ENV)' || true"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RENTBOX_") and k != "VIRTUAL_ENV"}
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for run in (1, 2):
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out, after = done.stdout.split("--- after the walkthrough:\n")
        # Each run rents (ids 1, 3) and sells an activation (ids 2, 4).
        assert re.search(r'"activationId":%d,"status":"SUCCESS"' % (2 * run - 1), out), out
        assert re.search(r'"activationId":%d,"status":"SUCCESS"' % (2 * run), out), out
        assert f"SMS {run} stored: queued for Onlinesim." in out
        assert re.search(r"\nvk +yes +6 +1 +0\n", out), out  # spent for vk once sold
        assert out.rstrip().endswith("is offered for vk again."), out
        # The self-test passed, every check of it.
        assert "✓ GET_SERVICES, key in the body" in out and "✓ answers within 10 s" in out
        assert "✗" not in out, out
        # Nothing is left set or active, the log is gone, and every command used --db.
        assert after == "", after
        left = sorted(p.name for p in tmp_path.iterdir())
        assert "demo-server.log" not in left and "rentbox.db" not in left, left
        assert all(name == "examples" or name.startswith("demo.db") for name in left), left

    books = sqlite3.connect(tmp_path / "demo.db")
    assert books.execute("SELECT id, service, state, finish_status FROM operations"
                         ).fetchall() == [(1, "rent", "closed", 3), (2, "vk", "closed", 3),
                                          (3, "rent", "closed", 3), (4, "vk", "closed", 3)]
    assert books.execute("SELECT count(*) FROM service_uses").fetchone() == (0,)
    books.close()
