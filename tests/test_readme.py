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
