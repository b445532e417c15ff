"""The examples a partner copies: they must work against a real server."""

import os
import subprocess
import sys

from conftest import EXAMPLES, GATEWAY_TOKEN, START, add_numbers


def test_gammu_hook_posts_every_message(live_server, db):
    add_numbers(db, START, ("+4917612345678", "germany", "o2"))
    env = {**os.environ, "RENTBOX_URL": live_server.url, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "PHONE_ID": "modem1", "RENTBOX_NUMBER_modem1": "+4917612345678",
           "SMS_MESSAGES": "2", "SMS_1_NUMBER": "+79990001122", "SMS_1_TEXT": "part",
           "DECODED_1_TEXT": "part one and part two, joined 🎉", "SMS_2_NUMBER": "Google",
           "SMS_2_TEXT": "G-123456 is your code"}
    hook = [sys.executable, str(EXAMPLES / "gammu_run_on_receive.py"), "IN1", "IN2"]
    for _ in range(2):  # a re-run stores nothing twice
        result = subprocess.run(hook, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    rows = db.rows("SELECT sender, text, number, source FROM sms ORDER BY id")
    assert rows == [
        {"sender": "+79990001122", "text": "part one and part two, joined 🎉",
         "number": "4917612345678", "source": "api"},
        {"sender": "Google", "text": "G-123456 is your code", "number": "4917612345678",
         "source": "api"}]


def test_sample_pool_is_valid(db):
    from rentbox import pool
    from conftest import START as now

    result = pool.import_file(db, now, EXAMPLES / "pool.csv")
    assert result.added == 7 and result.rejected == []
