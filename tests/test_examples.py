"""The examples a partner copies: they must work against a real server."""

import os
import subprocess
import sys

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
