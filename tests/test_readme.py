from pathlib import Path

from rentbox.config import SECRETS, SETTINGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = [line for line in ci if line.startswith("python3 -m venv")]
    assert len(command) == 1
    assert f"\n{command[0]}\n" in (ROOT / "README.md").read_text()


def test_readme_documents_every_setting():
    text = README.read_text()
    for setting in SETTINGS.values():
        assert f"`{setting.env}`" in text, f"README lacks {setting.env}"
        assert f"`{setting.option}`" in text, f"README lacks {setting.option}"
    for secret in SECRETS:
        assert f"`{secret}`" in text, f"README lacks {secret}"


def test_the_walkthrough_works_when_pasted_twice(tmp_path):
    """The walkthrough as a newcomer pastes it (twice), from a copy of the checkout's
    examples, with this test's installed rentbox instead of a fresh install and a free
    port instead of 8088."""
    import re
    import shutil
    import socket
    import subprocess
    import sys

    text = README.read_text()
    walkthrough = text[text.index("## Walkthrough"):]
    script = walkthrough[walkthrough.index("```sh\n") + 6:walkthrough.index("\n```\n")]
    lines = script.splitlines()
    assert lines[0].startswith("python3 -m venv .venv") and lines[1] == ". .venv/bin/activate"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    venv_bin = Path(sys.executable).parent
    script = "\n".join([f'export PATH="{venv_bin}:$PATH"'] + lines[2:]).replace(
        "8088", str(port))
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for run in (1, 2):
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        assert re.search(r'"activationId":%d,"status":"SUCCESS"' % run, out), out
        assert f"SMS {run} stored: queued for Onlinesim." in out
        assert out.rstrip().endswith('{"status":"SUCCESS"}'), out
    assert "serving on" in (tmp_path / "demo-server.log").read_text()
    import sqlite3

    books = sqlite3.connect(tmp_path / "demo.db")
    assert books.execute("SELECT id, state, finish_status FROM operations").fetchall() == [
        (1, "closed", 3), (2, "closed", 3)]
    books.close()
