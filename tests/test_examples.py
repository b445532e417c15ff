"""The examples a partner copies: they must work against a real server."""

import os
import re
import subprocess
import sys

import pytest

from conftest import EXAMPLES, GATEWAY_TOKEN, START, add_numbers


def run_gammu_hook(server, inbox_ids, **message):
    """Run the hook the way gammu-smsd runs it for one received message: the message in the
    environment (gammu-smsd-run(7)), the inbox ids of its parts as arguments."""
    env = {**os.environ, "RENTBOX_URL": server.url, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "PHONE_ID": "modem1", "RENTBOX_NUMBER_modem1": "+4917612345678", **message}
    hook = [sys.executable, str(EXAMPLES / "gammu_run_on_receive.py"), *inbox_ids]
    result = subprocess.run(hook, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def stored_sms(db):
    return db.rows("SELECT sender, text, number, source FROM sms ORDER BY id")


def test_gammu_hook_posts_a_long_sms_once_with_its_whole_text(live_server, db):
    add_numbers(db, START, ("+4917612345678", "germany", "o2"))
    parts = ["Your code is 123456. Do not share it with anyone, ", "not even with ",
             "our staff 🎉"]
    message = {"SMS_MESSAGES": "3", "DECODED_PARTS": "1", "DECODED_1_TEXT": "".join(parts)}
    for i, part in enumerate(parts, start=1):
        message |= {f"SMS_{i}_NUMBER": "+79990001122", f"SMS_{i}_TEXT": part}
    for _ in range(2):  # a re-run stores nothing twice
        run_gammu_hook(live_server, ["IN1", "IN2", "IN3"], **message)
    assert stored_sms(db) == [{"sender": "+79990001122", "text": "".join(parts),
                               "number": "4917612345678", "source": "api"}]


def test_gammu_hook_posts_each_single_sms_of_its_own_run(live_server, db):
    # A one-part SMS has no decoded text (gammu decodes only multipart and special messages).
    add_numbers(db, START, ("+4917612345678", "germany", "o2"))
    for _ in range(2):  # a re-run stores nothing twice
        run_gammu_hook(live_server, ["IN1"], SMS_MESSAGES="1", DECODED_PARTS="0",
                       SMS_1_NUMBER="+79990001122", SMS_1_TEXT="first")
        run_gammu_hook(live_server, ["IN2"], SMS_MESSAGES="1", DECODED_PARTS="0",
                       SMS_1_NUMBER="Google", SMS_1_TEXT="G-123456 is your code")
    assert stored_sms(db) == [
        {"sender": "+79990001122", "text": "first", "number": "4917612345678", "source": "api"},
        {"sender": "Google", "text": "G-123456 is your code", "number": "4917612345678",
         "source": "api"}]


def test_gammu_hook_joins_the_parts_that_gammu_could_not_decode(live_server, db):
    add_numbers(db, START, ("+4917612345678", "germany", "o2"))
    run_gammu_hook(live_server, ["IN1", "IN2"], SMS_MESSAGES="2",
                   SMS_1_NUMBER="Google", SMS_1_TEXT="G-123456 is ",
                   SMS_2_NUMBER="Google", SMS_2_TEXT="your code")
    assert stored_sms(db) == [{"sender": "Google", "text": "G-123456 is your code",
                               "number": "4917612345678", "source": "api"}]


def test_sample_pool_is_valid(db):
    from rentbox import pool
    from conftest import START as now

    result = pool.import_file(db, now, EXAMPLES / "pool.csv")
    assert result.added == 7 and result.rejected == []


def test_presence_example_reports_against_a_real_server(live_server, db):
    import json

    from rentbox import pool

    pool.import_file(db, START, EXAMPLES / "pool.csv")
    env = {**os.environ, "RENTBOX_URL": live_server.url, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN}
    result = subprocess.run(["sh", str(EXAMPLES / "presence-curl.sh")], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SUCCESS", "online": 3, "keep": [],
                                         "missing": [], "unknown": [], "ambiguous": []}


# ---- the gammu hook without a number to route by, and the systemd advice (issue 21) ------

def gammu_env(**message) -> dict:
    """gammu-smsd's environment for one received one-part SMS (gammu-smsd-run(7):
    SMS_MESSAGES, DECODED_PARTS, SMS_1_NUMBER, SMS_1_TEXT; PHONE_ID from 1.38.2 on, when
    PhoneID is set), without rentbox's settings unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENTBOX_", "PHONE_ID"))}
    return {**env, "SMS_MESSAGES": "1", "DECODED_PARTS": "0", "SMS_1_NUMBER": "+79990001122",
            "SMS_1_TEXT": "Код 1", **message}


def test_gammu_hook_without_phone_id_or_number_fails_and_says_what_to_set(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    hook = [sys.executable, str(EXAMPLES / "gammu_run_on_receive.py"), "IN1"]
    done = subprocess.run(hook, env=gammu_env(RENTBOX_SPOOL_DIR=str(spool)),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("no receiving number: neither PHONE_ID nor RENTBOX_NUMBER "
                                  "is set. Set RENTBOX_NUMBER=+<the SIM's number>")
    assert "Traceback" not in done.stderr and list(spool.iterdir()) == []


def test_gammu_hook_routes_by_the_phone_id_as_port_without_a_number(tmp_path):
    import json

    spool = tmp_path / "spool"
    spool.mkdir()
    hook = [sys.executable, str(EXAMPLES / "gammu_run_on_receive.py"), "IN1"]
    done = subprocess.run(hook, env=gammu_env(RENTBOX_SPOOL_DIR=str(spool), PHONE_ID="modem2"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    [spooled] = spool.iterdir()
    body = json.loads(spooled.read_text())
    assert {k: body[k] for k in ("port", "from", "text", "id")} == {
        "port": "modem2", "from": "+79990001122", "text": "Код 1", "id": "gammu:modem2:IN1"}
    assert "to" not in body and body["received_at"].endswith("+00:00")


def test_gammu_hook_without_spool_or_token_says_so(tmp_path):
    hook = [sys.executable, str(EXAMPLES / "gammu_run_on_receive.py"), "IN1"]
    done = subprocess.run(hook, env=gammu_env(RENTBOX_NUMBER="+4917612345678"),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "set RENTBOX_SPOOL_DIR (rentbox on this machine) or RENTBOX_GATEWAY_TOKEN" in (
        done.stderr)


def test_the_systemd_advice_sets_a_utf8_locale_and_lets_rentbox_use_the_spool():
    unit = (EXAMPLES / "rentbox.service").read_text()
    assert "\nEnvironment=LANG=C.UTF-8\n" in unit
    assert "ReadWritePaths=/var/lib/rentbox -/var/spool/rentbox" in unit
    hook = (EXAMPLES / "gammu_run_on_receive.py").read_text()
    assert "Environment=LANG=C.UTF-8" in hook and "systemctl edit gammu-smsd" in hook


# ---- the unit and the environment file a partner installs (issue 24) --------------------

UNIT = EXAMPLES / "rentbox.service"
ENV_FILE = EXAMPLES / "rentbox.env"
ROOT = EXAMPLES.parent
# What a partner may have to set, each in the file, commented out where it is optional.
PARTNER_SETS = {"RENTBOX_API_KEY", "RENTBOX_PUSH_URL", "RENTBOX_SERVICES",
                "RENTBOX_ACTIVATION_PUSH_URL", "RENTBOX_HOST", "RENTBOX_PORT",
                "RENTBOX_GOIP_PORT", "RENTBOX_DINSTAR_TZ", "RENTBOX_POLL_BOXES",
                "RENTBOX_TELEGRAM_CHAT_ID", "RENTBOX_ALERT_WEBHOOK_URL", "RENTBOX_BACKUP_DIR",
                "RENTBOX_REPLICA_URL"}


def env_file(*, commented: bool) -> dict[str, str]:
    """The file's NAME=value lines in effect, or those commented out (`#NAME=value`)."""
    pattern = r"^#([A-Z][A-Z0-9_]*)=(.*)$" if commented else r"^([A-Z][A-Z0-9_]*)=(.*)$"
    return dict(re.findall(pattern, ENV_FILE.read_text(), re.M))


def unit_entries(text: str) -> list[tuple[str, str, str, bool]]:
    """(section, key, value, commented out) of each setting line of a unit file."""
    section, found = "", []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line:
            key, _, value = line.lstrip("#").partition("=")
            if re.fullmatch(r"[A-Za-z]+", key):
                found.append((section, key, value, line.startswith("#")))
    return found


def with_backup_lines_on(text: str) -> str:
    return re.sub(r"^#(RequiresMountsFor|ReadWritePaths)=", r"\1=", text, flags=re.M)


def test_the_env_file_names_every_secret_and_what_a_partner_sets():
    from rentbox.config import SECRETS, SETTINGS

    on, off = env_file(commented=False), env_file(commented=True)
    named = {name for name in {*on, *off} if name.startswith("RENTBOX_")}
    assert set(SECRETS) <= named, set(SECRETS) - named
    assert PARTNER_SETS <= named, PARTNER_SETS - named
    assert named <= {s.env for s in SETTINGS.values()} | set(SECRETS), named
    assert "RENTBOX_API_KEY" in on  # the one setting serve cannot start without


def test_the_env_file_pushes_nowhere_until_support_gives_the_urls():
    from urllib.parse import urlsplit

    on, off = env_file(commented=False), env_file(commented=True)
    assert "RENTBOX_PUSH_URL" not in on and "RENTBOX_ACTIVATION_PUSH_URL" not in on
    urls = [v for v in {**on, **off}.values() if "://" in v and not v.startswith("s3:")]
    assert {"RENTBOX_PUSH_URL", "RENTBOX_ACTIVATION_PUSH_URL"} <= set(off)
    for url in urls:  # placeholders only: RFC 2606 keeps .example from ever being a host
        assert urlsplit(url).hostname.endswith(".example"), url
        assert urlsplit(url).scheme == "https", url


def test_the_env_file_is_what_systemd_reads():
    # systemd reads NAME=value lines, without a shell: no command substitution, no quotes,
    # no comment after a value.
    for line in ENV_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        assert equals and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), line
        assert not re.search(r"[\s'\"`$#]", value), line


@pytest.mark.parametrize("uncommented", [False, True])
def test_serve_takes_every_value_of_the_env_file(monkeypatch, uncommented):
    """The values in effect, and every commented example once uncommented, are values
    `rentbox serve` accepts (parsed as it parses them, without starting it)."""
    from pathlib import Path

    import typer.main

    from rentbox import cli, services
    from rentbox.config import SETTINGS

    values = {**env_file(commented=False), **(env_file(commented=True) if uncommented else {})}
    for name in [n for n in os.environ if n.startswith("RENTBOX_")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    serve = typer.main.get_command(cli.app).commands["serve"]
    params = serve.make_context("serve", []).params
    by_env = {s.env: s.name for s in SETTINGS.values()}
    for name, value in values.items():
        if name in by_env and value:
            assert str(params[by_env[name]]) == value, name  # read from the file, unchanged
    assert params["port"] == 8080 and params["host"] == "127.0.0.1"
    if uncommented:
        assert Path(params["backup_dir"]) == Path("/mnt/backup/rentbox")
        assert services.parse_offered(params["services"]) == ("vk", "wa", "tg")
        cli._check_push_url(params["push_url"])


def test_the_unit_reads_the_env_file_that_the_docs_name():
    entries = unit_entries(UNIT.read_text())
    [path] = [v for _, k, v, off in entries if k == "EnvironmentFile" and not off]
    assert path == "/etc/rentbox/rentbox.env"
    assert ENV_FILE.read_text().startswith(f"# {path}:")
    # Every doc and example names that path; upgrading.md also names the one it replaced.
    texts = [p for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                         *EXAMPLES.rglob("*")] if p.is_file() and p.name != "upgrading.md"]
    for doc in texts:
        for named in re.findall(r"/etc/rentbox[\w./-]*\.env\b", doc.read_text(errors="replace")):
            assert named == path, f"{doc.name} names {named}"


def test_the_unit_can_let_rentbox_write_a_backup_folder_on_another_disk():
    text = UNIT.read_text()
    entries = unit_entries(text)
    assert ("Service", "ProtectSystem", "strict", False) in entries  # else the line is moot
    [mount] = [v for s, k, v, off in entries if k == "RequiresMountsFor" and off]
    [writable] = [v for s, k, v, off in entries if k == "ReadWritePaths" and off]
    folder = env_file(commented=True)["RENTBOX_BACKUP_DIR"]
    assert mount == writable == folder
    # Uncommented, the folder is writable and its disk mounted first, each in its section.
    on = unit_entries(with_backup_lines_on(text))
    assert ("Unit", "RequiresMountsFor", folder, False) in on
    writable_paths = " ".join(v for s, k, v, off in on
                              if (s, k, off) == ("Service", "ReadWritePaths", False)).split()
    assert folder in writable_paths and "/var/lib/rentbox" in writable_paths
    # docs/backups.md shows the same lines.
    backups = (ROOT / "docs" / "backups.md").read_text()
    assert f"RequiresMountsFor={folder}" in backups and f"ReadWritePaths={folder}" in backups


@pytest.mark.parametrize("backup_lines_on", [False, True])
def test_systemd_accepts_the_unit(tmp_path, backup_lines_on):
    import shutil

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify wants ExecStart's program to exist: a stand-in for /opt/rentbox/bin/rentbox.
    program = tmp_path / "rentbox"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = UNIT.read_text().replace("ExecStart=/opt/rentbox/bin/rentbox",
                                    f"ExecStart={program}")
    assert f"ExecStart={program} serve" in text
    unit = tmp_path / "rentbox.service"
    unit.write_text(with_backup_lines_on(text) if backup_lines_on else text)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    said = [line for line in (done.stdout + done.stderr).splitlines() if "rentbox" in line]
    assert done.returncode == 0 and said == [], done.stdout + done.stderr
