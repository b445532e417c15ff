"""The smstools3 eventhandler (examples/smstools3_eventhandler.py) on sample RECEIVED files."""

import datetime as dt
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from conftest import EXAMPLES, GATEWAY_TOKEN, START, add_numbers, rent_number, wait_until

HANDLER = EXAMPLES / "smstools3_eventhandler.py"
SAMPLES = EXAMPLES / "smstools"
DE, RU = "4915123456789", "79123456789"


def run_handler(server, *args, **env) -> subprocess.CompletedProcess:
    """Run the handler as smsd does: `eventhandler RECEIVED <file>`."""
    environ = {**os.environ, "RENTBOX_URL": server.url, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
               **env}
    return subprocess.run([sys.executable, str(HANDLER), *map(str, args)], env=environ,
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def handler_module():
    spec = importlib.util.spec_from_file_location("smstools3_eventhandler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def modems(db):
    add_numbers(db, START, (DE, "germany", "telekom"), (RU, "russia", "megafon", "GSM2"))
    return db


def stored(db):
    return db.rows("SELECT number, port, sender, text, source FROM sms ORDER BY id")


def test_the_samples_by_imsi_and_by_modem_name_each_stored_once(live_server, modems):
    for _ in range(2):  # smsd ran the handler twice on each file: nothing is stored twice
        for sample in sorted(SAMPLES.iterdir()):
            done = run_handler(live_server, "RECEIVED", sample,
                               RENTBOX_NUMBER_262011234567890="+49 151 23456789")
            assert done.returncode == 0, done.stderr
    assert stored(modems) == [
        {"number": DE, "port": None, "sender": "4915901234567",
         "text": "Ihr Code: 4711. Gültig 10 Min. Preis 0€", "source": "api"},
        {"number": RU, "port": "GSM2", "sender": "79990001122", "text": "Ваш код: 5520. Никому!",
         "source": "api"},
        {"number": RU, "port": "GSM2", "sender": "VK", "text": "VK: 662 901 — код подтверждения 🔐",
         "source": "api"}]


def test_the_modem_name_can_name_the_number_too(live_server, modems):
    done = run_handler(live_server, "RECEIVED", SAMPLES / "GSM1.aB3dEf",
                       RENTBOX_NUMBER_GSM1="+4915123456789")
    assert done.returncode == 0, done.stderr
    assert [r["number"] for r in stored(modems)] == [DE]


def test_other_events_are_left_alone(live_server, modems):
    for event in ("SENT", "FAILED", "REPORT", "CALL"):
        assert run_handler(live_server, event, SAMPLES / "GSM1.aB3dEf").returncode == 0
    assert stored(modems) == []


def test_a_refused_sms_is_a_failure_smsd_logs(live_server, modems):
    done = run_handler(live_server, "RECEIVED", SAMPLES / "GSM1.aB3dEf",
                       RENTBOX_GATEWAY_TOKEN="wrong")
    assert done.returncode == 1 and "rentbox did not take the SMS" in done.stderr


@pytest.mark.parametrize("alphabet, body, text", [
    ("UCS2", "Код 1".encode("utf-16-be"), "Код 1"),
    ("UCS2", "Код 1".encode("utf-8"), "Код 1"),          # smsd's decode_unicode_text
    ("UCS-2", "Latin".encode("utf-16-be"), "Latin"),
    ("ISO", "Gültig €".encode("iso-8859-15"), "Gültig €"),
    ("ISO", "Код 2".encode("utf-8"), "Код 2"),           # smsd's incoming_utf8
    ("GSM", b"plain", "plain"),
    ("UTF-8", "Код 3 🔐".encode("utf-8"), "Код 3 🔐"),
])
def test_alphabets(handler_module, alphabet, body, text):
    assert handler_module.decode_text(body, alphabet) == text


def test_a_real_server_pushes_the_sms_once(start_server, modems, onlinesim, tmp_path):
    server = start_server(push_url=onlinesim.url)
    rent_number(server), rent_number(server)
    # The sample, received just now by this machine's clock.
    sample = tmp_path / "GSM2.Qw7RtY"
    shutil.copy(SAMPLES / "GSM2.Qw7RtY", sample)
    now = dt.datetime.now().strftime("%y-%m-%d %H:%M:%S").encode()
    sample.write_bytes(sample.read_bytes().replace(b"26-11-26 13:01:12", now))
    for _ in range(2):
        assert run_handler(server, "RECEIVED", sample).returncode == 0
    onlinesim.wait_for(1)
    assert wait_until(lambda: modems.row("SELECT push_state FROM sms")["push_state"]
                      == "delivered")
    assert [(b["phone"], b["phoneFrom"], b["text"]) for b in onlinesim.bodies()] == [
        (RU, "79990001122", "Ваш код: 5520. Никому!")]
    assert len(onlinesim.requests) == 1


def test_with_a_spool_the_handler_writes_one_file_and_needs_no_server(tmp_path):
    """rentbox may be down: the SMS waits in RENTBOX_SPOOL_DIR (issue 21, item 11)."""
    import json
    import re

    spool = tmp_path / "spool"
    spool.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENTBOX_")}
    done = subprocess.run([sys.executable, str(HANDLER), "RECEIVED", str(SAMPLES / "GSM2.Qw7RtY")],
                          env={**env, "RENTBOX_SPOOL_DIR": str(spool)}, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    [spooled] = list(spool.iterdir())
    assert re.fullmatch(r"\d{20}-smstools-\d+-[0-9a-f]{8}\.json", spooled.name)  # by time
    assert spooled.stat().st_mode & 0o777 == 0o640
    body = json.loads(spooled.read_text(encoding="utf-8"))
    assert {k: v for k, v in body.items() if k != "received_at"} == {
        "port": "GSM2", "from": "79990001122", "text": "Ваш код: 5520. Никому!",
        "id": "smstools:GSM2.Qw7RtY"}
    assert body["received_at"].startswith("2026-11-26T13:01:12")


def test_with_neither_spool_nor_token_the_handler_says_what_to_set(modems, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RENTBOX_")}
    done = subprocess.run([sys.executable, str(HANDLER), "RECEIVED", str(SAMPLES / "GSM2.Qw7RtY")],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "set RENTBOX_SPOOL_DIR (rentbox on this machine) or RENTBOX_GATEWAY_TOKEN" in (
        done.stderr)
