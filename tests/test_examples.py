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
