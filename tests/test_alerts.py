"""Alerts (alerts.py): conditions start and clear once, survive restarts, and reach
Telegram or a webhook from their own thread."""

import dataclasses
import json

import pytest

from rentbox import alerts, bans, operations, presence
from rentbox.config import Rules
from rentbox.settings import Alerting
from rentbox.db import open_database
from rentbox.protocol import NumberRequest

from conftest import (API_KEY, GATEWAY_TOKEN, START, FakeOnlinesim, add_numbers, http_post,
                      wait_until)

TOKEN = "123456:telegram-secret-token"
A, B = "4915123456789", "4917612345678"


def alerting(fake_url: str = "http://127.0.0.1:9", **changes) -> Alerting:
    base = fake_url.rsplit("/", 1)[0]
    return dataclasses.replace(Alerting(
        telegram_token=TOKEN, telegram_chat_id="42", telegram_api_url=base,
        webhook_url=base + "/hook", summary_hour=-1, disk_free_mb=0, silence_s=600,
        undelivered_s=300), **changes)


def queued(db) -> list[dict]:
    return db.rows("SELECT channel, kind, text, detail FROM alert_outbox ORDER BY id")


def test_conditions_start_once_and_clear_once(db, clock):
    add_numbers(db, START, (A, "germany", "o2", "1.01"), (B, "germany", "o2", "1.02"))
    setup = alerting()
    assert alerts.evaluate(db, clock.now(), setup) == 0
    rental = operations.open_operation(db, clock, NumberRequest(sum_kopecks=1), Rules())  # on A
    presence.report(db, clock, Rules(), presence.Report("box", ports=("1.01", "1.02")))
    with db.transaction():  # B fails a rental and is banned
        bans.record_failure(db, clock.now(), Rules(ban_after=1), number_id=2,
                            operation_id=rental.activation_id, reason="guard_expired")
    presence.report(db, clock, Rules(), presence.Report("box", ports=("1.02",)))  # A's SIM out
    assert alerts.evaluate(db, clock.now(), setup) == 3
    keys = [r["key"] for r in alerts.recent(db)]
    assert sorted(keys) == [f"banned:{B}", "pool_empty", f"sim_offline:{A}"]
    messages = queued(db)
    assert [m["channel"] for m in messages] == ["telegram", "webhook"]  # one message each
    text = messages[0]["text"]
    assert f"+{B} is banned until" in text and f"the SIM of +{A} (rental 1)" in text
    assert "no number can be rented now" in text
    assert json.loads(messages[1]["detail"])["kind"] == "alert"
    # While the conditions hold, nothing more; a restart (a new connection) neither.
    assert alerts.evaluate(db, clock.now(), setup) == 0
    again = open_database(db.path)
    assert alerts.evaluate(again, clock.now(), setup) == 0
    again.close()
    assert len(queued(db)) == 2
    # The ban is lifted: that one clears, once.
    bans.lift_ban(db, clock.now(), B)
    assert alerts.evaluate(db, clock.now(), setup) == 2  # the ban, and the empty pool
    last = queued(db)[-1]
    assert "resolved" in last["text"] and f"+{B} is banned" in last["text"]
    states = {r["key"]: r["state"] for r in alerts.recent(db)}
    assert states == {f"banned:{B}": "cleared", "pool_empty": "cleared",
                      f"sim_offline:{A}": "active"}


def test_silence_and_undelivered_sms_and_the_daily_summary(db, clock):
    from rentbox import meta
    from rentbox.clock import to_text

    add_numbers(db, START, (A, "germany", "o2"))
    clock.current = START.replace(hour=7)
    meta.put(db, clock.now(), meta.SERVER, {"started_at": to_text(clock.now())})
    setup = alerting(summary_hour=8)
    assert alerts.evaluate(db, clock.now(), setup) == 0
    clock.advance(601)
    assert alerts.evaluate(db, clock.now(), setup) == 1
    assert "Onlinesim has not called since" in alerts.recent(db)[0]["message"]
    clock.current = START.replace(hour=8, minute=29)
    meta.put(db, clock.now(), meta.LAST_ONLINESIM_CALL, {"at": to_text(clock.now()),
                                                         "action": "GET_SERVICES"})
    clock.advance(60)
    assert alerts.evaluate(db, clock.now(), setup) == 1  # silence cleared, summary queued
    kinds = [m["kind"] for m in queued(db)]
    assert kinds.count("summary") == 2  # one per channel
    assert alerts.evaluate(db, clock.now(), setup) == 0  # once a day


def test_delivery_retries_with_a_growing_pause(db, clock):
    add_numbers(db, START, (A, "germany", "o2"))
    with db.transaction():
        db.execute("UPDATE numbers SET enabled = 0")
    setup = alerting(webhook_url=None)
    alerts.evaluate(db, clock.now(), setup)
    answers = [alerts.Delivery(False, "HTTP 502: bad gateway"), alerts.Delivery(True, "ok")]
    calls = []

    def sender(alerting, channel, text, detail):
        calls.append(channel)
        return answers[len(calls) - 1]

    assert alerts.deliver_due(db, clock.now(), setup, sender) == 0
    row = db.row("SELECT attempts, last_error, next_attempt_at FROM alert_outbox")
    assert row["attempts"] == 1 and row["last_error"] == "HTTP 502: bad gateway"
    assert alerts.deliver_due(db, clock.now(), setup, sender) == 0  # not due yet
    clock.advance(alerts.RETRY_S)
    assert alerts.deliver_due(db, clock.now(), setup, sender) == 1
    assert calls == ["telegram", "telegram"]


def test_send_speaks_the_bot_api_and_keeps_the_token_out_of_answers():
    telegram = FakeOnlinesim(answers=[(200, b'{"ok":true,"result":{}}'),
                                      (401, b'{"ok":false,"description":"Unauthorized"}'),
                                      (200, b"{}")])
    try:
        setup = alerting(telegram.url)
        assert alerts.send(setup, "telegram", "hello", {}) == alerts.Delivery(True, "HTTP 200, ok")
        request = telegram.requests[0]
        assert request["path"] == f"/bot{TOKEN}/sendMessage"
        assert json.loads(request["body"]) == {"chat_id": "42", "text": "hello",
                                               "disable_web_page_preview": True}
        failed = alerts.send(setup, "telegram", "hello", {})
        assert failed == alerts.Delivery(False, "HTTP 401: Unauthorized")
        assert alerts.send(setup, "webhook", "hello", {"kind": "test"}).ok
        assert json.loads(telegram.requests[2]["body"]) == {"text": "hello", "kind": "test"}
    finally:
        telegram.close()
    dead = alerts.send(alerting("http://127.0.0.1:9/x"), "telegram", "hello", {})
    assert not dead.ok and TOKEN not in dead.answer and dead.answer.startswith("no answer")


def test_a_real_server_alerts_once_and_a_dead_channel_delays_nothing(start_server, db):
    """The webhook hangs on its first message: GET_NUMBER is answered meanwhile, and the
    alert arrives once, however many passes see the condition."""
    add_numbers(db, START, (A, "germany", "o2"))
    hook = FakeOnlinesim(answers=["hang", (204, b"")], hang_s=3)
    try:
        setup = alerting(hook.url, telegram_token=None, telegram_chat_id=None,
                         webhook_url=hook.url)
        server = start_server(alerting=setup, housekeeping_s=0.05)
        get_number = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 1}
        assert http_post(server.url + "/getNumberRent", get_number).json["status"] == "SUCCESS"
        assert hook.wait_for(1)  # "no number can be rented now": the webhook hangs on it
        rented = http_post(server.url + "/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "key": API_KEY, "service": "rent",
            "activationId": 1, "status": 3, "sum": 1})
        assert rented.json == {"status": "SUCCESS"}  # answered while the channel hangs
        assert wait_until(lambda: len(hook.requests) >= 2)  # "resolved", after the hang
        bodies = [json.loads(r["body"]) for r in hook.requests]
        assert [b["started"] and b["started"][0]["key"] for b in bodies] == ["pool_empty", []]
        assert bodies[1]["cleared"][0]["key"] == "pool_empty"
    finally:
        hook.close()


@pytest.mark.parametrize("with_token", [True, False])
def test_alerts_cli(db_path, monkeypatch, with_token):
    from typer.testing import CliRunner

    from rentbox.cli import app

    hook = FakeOnlinesim(answers=[(200, b"ok")])
    try:
        env = {"RENTBOX_ALERT_WEBHOOK_URL": hook.url}
        if with_token:
            env["RENTBOX_TELEGRAM_BOT_TOKEN"] = TOKEN
        result = CliRunner().invoke(app, ["alerts", "test"], env=env)
        if with_token:  # a token without a chat is a mistake, said plainly
            assert result.exit_code == 1
            assert "need both RENTBOX_TELEGRAM_BOT_TOKEN and RENTBOX_TELEGRAM_CHAT_ID" in \
                result.stderr
            return
        assert (result.exit_code, result.stdout) == (0, "webhook: sent (HTTP 200)\n")
        assert json.loads(hook.requests[0]["body"])["kind"] == "test"
    finally:
        hook.close()
    db = open_database(db_path)
    add_numbers(db, START, (A, "germany", "o2"))
    with db.transaction():
        db.execute("UPDATE numbers SET enabled = 0")
    alerts.evaluate(db, START, alerting())
    db.close()
    listed = CliRunner().invoke(app, ["alerts", "list", "--json", "--db", str(db_path)])
    assert [r["key"] for r in json.loads(listed.stdout)] == ["pool_empty"]
    none = CliRunner().invoke(app, ["alerts", "test"], env={"RENTBOX_ALERT_WEBHOOK_URL": ""})
    assert none.exit_code == 1 and "no alert channel is set up" in none.stderr


def test_backups_failing_or_overdue_and_the_replica_behind_alert_once(db, clock):
    from rentbox import meta
    from rentbox.clock import to_text

    add_numbers(db, START, (A, "germany", "o2"))
    setup = alerting(silence_s=10 ** 9)
    meta.put(db, clock.now(), meta.SERVER, {"started_at": to_text(clock.now()),
                                            "backup_every_s": 3600, "replication": True})
    meta.put(db, clock.now(), meta.REPLICATION, {"state": "running",
                                                 "caught_up_at": to_text(clock.now())})
    assert alerts.evaluate(db, clock.now(), setup) == 0
    clock.advance(2 * 3600 + 1)  # no backup written in twice the period
    meta.put(db, clock.now(), meta.REPLICATION, {"state": "running",
                                                 "caught_up_at": to_text(clock.now())})
    assert alerts.evaluate(db, clock.now(), setup) == 1
    assert alerts.recent(db)[0]["key"] == "backup_overdue"
    assert "no scheduled backup has been written" in alerts.recent(db)[0]["message"]
    assert alerts.evaluate(db, clock.now(), setup) == 0  # no repeat while it holds
    good = {"last_at": to_text(clock.now()), "last_path": "/b/1.db", "failed_at": None}
    meta.put(db, clock.now(), meta.BACKUPS, good)
    assert alerts.evaluate(db, clock.now(), setup) == 1  # cleared
    clock.advance(60)
    meta.put(db, clock.now(), meta.BACKUPS, {**good, "failed_at": to_text(clock.now()),
                                             "last_error": "disk I/O error"})
    meta.put(db, clock.now(), meta.REPLICATION, {"state": "restarting", "restarts": 3,
                                                 "last_error": "exit status 1"})
    assert alerts.evaluate(db, clock.now(), setup) == 2
    active = {r["key"]: r["message"] for r in alerts.recent(db) if r["state"] == "active"}
    assert active.keys() == {"backup_failed", "replica_down"}
    assert "disk I/O error" in active["backup_failed"]
    assert "restarted 3 time(s)" in active["replica_down"]
    text = queued(db)[-1]["text"]
    assert "the last scheduled backup failed" in text and "Litestream is restarting" in text
    # The same failure judged again (a restart of the pass) announces nothing new.
    again = open_database(db.path)
    assert alerts.evaluate(again, clock.now(), setup) == 0
    again.close()


def _announced(hook: FakeOnlinesim) -> list[tuple[str, str]]:
    """("started"|"cleared", key) for every alert a webhook received, in order."""
    changes = []
    for body in hook.bodies():
        if body.get("kind") == "alert":
            changes += [("started", a["key"]) for a in body["started"]]
            changes += [("cleared", a["key"]) for a in body["cleared"]]
    return changes


def test_a_real_server_announces_each_condition_once_on_both_channels(start_server, db):
    """Telegram's Bot API and a webhook, both fakes on loopback: the empty pool, an SMS
    Onlinesim does not take, a ban and a rented SIM going offline each start once and
    clear once, on both channels, with the same text."""
    from rentbox.config import Rules

    add_numbers(db, START, (A, "germany", "o2", "1.01"), (B, "germany", "o2", "1.02"))
    telegram = FakeOnlinesim(answers=[(200, b'{"ok":true,"result":{"message_id":1}}')])
    hook = FakeOnlinesim(answers=[(204, b"")])
    onlinesim = FakeOnlinesim(answers=[(500, b"busy")])
    auth = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
    try:
        server = start_server(
            alerting=alerting(telegram.url, webhook_url=hook.url, undelivered_s=0.5,
                              silence_s=3600),
            # x's SMS is undelivered for 0.5 s (an alert) long before its rental fails
            # its window and the SMS expires, which ends that alert too: a margin of
            # seconds for a slow machine's housekeeping passes.
            rules=Rules(ban_after=1, guard_s=5, guard_margin_s=0, presence_s=3600),
            push_url=onlinesim.url, push_retry_s=0.2, housekeeping_s=0.1)

        def post(path, body, headers=None):
            return http_post(server.url + path, body, headers=headers).json

        assert post("/presence", {"gateway": "box", "ports": ["1.01", "1.02"]}, auth)[
            "online"] == 2
        get_number = {"action": "GET_NUMBER", "key": API_KEY, "service": "rent", "sum": 1}
        first, second = post("/getNumberRent", get_number), post("/getNumberRent", get_number)
        x, y = str(first["number"]), str(second["number"])
        ports = {A: "1.01", B: "1.02"}
        # x receives an SMS that Onlinesim refuses; y none, so its guard window expires
        # and one failure bans it; then x's SIM leaves its port.
        assert post("/sms", {"to": f"+{x}", "from": "Bank", "text": "code 1"}, auth)[
            "status"] == "SUCCESS"
        assert post("/presence", {"gateway": "box", "ports": [ports[y]]}, auth)[
            "online"] == 1
        expected = {"pool_empty", "sms_undelivered", f"banned:{y}", f"sim_offline:{x}"}
        assert wait_until(lambda: {k for s, k in _announced(hook) if s == "started"}
                          >= expected, timeout_s=20), _announced(hook)
        # Each cause is removed: Onlinesim takes the SMS, the SIM is back, the ban is
        # lifted by hand, and x's rental ends so that x is offered again.
        onlinesim.answers[:] = [(200, b'{"status":"SUCCESS"}')]
        post("/presence", {"gateway": "box", "ports": ["1.01", "1.02"]}, auth)
        bans.lift_ban(db, START, y)
        assert post("/finishActivationRent", {
            "action": "FINISH_ACTIVATION", "key": API_KEY, "service": "rent",
            "activationId": first["activationId"], "status": 3, "sum": 1})["status"] == \
            "SUCCESS"
        assert wait_until(lambda: {k for s, k in _announced(hook) if s == "cleared"}
                          >= expected, timeout_s=20), _announced(hook)
        changes = _announced(hook)
        for key in expected:
            assert [s for s, k in changes if k == key] == ["started", "cleared"], changes
        # The same messages reached Telegram, to the configured chat, in the same order.
        assert wait_until(lambda: len(telegram.requests) == len(hook.requests))
        sent = telegram.bodies()
        assert all(m["chat_id"] == "42" for m in sent)
        assert [m["text"] for m in sent] == [b["text"] for b in hook.bodies()]
        assert all(TOKEN in r["path"] for r in telegram.requests)
    finally:
        for fake in (telegram, hook, onlinesim):
            fake.close()


def test_a_restart_announces_nothing_already_known(start_server, db, settings):
    """A full disk and Onlinesim's silence, announced by one server, are not announced
    again by the next one on the same database; they clear once, when their causes go."""
    import time

    from rentbox import meta

    add_numbers(db, START, (A, "germany", "o2"))
    hook = FakeOnlinesim(answers=[(204, b"")])
    try:
        noisy = alerting(hook.url, telegram_token=None, telegram_chat_id=None,
                         webhook_url=hook.url, silence_s=0.5, disk_free_mb=10 ** 9)
        first = start_server(alerting=noisy, housekeeping_s=0.1)
        assert wait_until(lambda: {k for _, k in _announced(hook)} ==
                          {"disk_low", "onlinesim_silent"}), _announced(hook)
        started = meta.get(db, meta.SERVER)["started_at"]
        first.stop()
        second = start_server(alerting=noisy, housekeeping_s=0.1)
        assert wait_until(lambda: (meta.get(db, meta.SERVER) or {}).get("started_at", "")
                          > started)
        # Several passes of the second server see both conditions hold (its silence
        # counted from its own start, too): none of them is announced again.
        time.sleep(1.5)
        assert sorted(_announced(hook)) == [("started", "disk_low"),
                                            ("started", "onlinesim_silent")]
        second.stop()
        calm = dataclasses.replace(noisy, silence_s=3600, disk_free_mb=0)
        third = start_server(alerting=calm, housekeeping_s=0.1)
        assert http_post(third.url + "/getServicesRent",
                         {"action": "GET_SERVICES", "key": API_KEY}).status == 200
        assert wait_until(lambda: len(_announced(hook)) == 4), _announced(hook)
        assert sorted(_announced(hook)[2:]) == [("cleared", "disk_low"),
                                                ("cleared", "onlinesim_silent")]
    finally:
        hook.close()


def test_only_a_call_ends_an_announced_silence(db, clock):
    """A restart gives a new server time before silence is announced, but it is no news
    that Onlinesim is back: an announced silence lasts until Onlinesim calls."""
    from rentbox import meta
    from rentbox.clock import to_text

    add_numbers(db, START, (A, "germany", "o2"))
    setup = alerting(silence_s=600)
    meta.put(db, clock.now(), meta.SERVER, {"started_at": to_text(clock.now())})
    clock.advance(601)
    assert alerts.evaluate(db, clock.now(), setup) == 1
    clock.advance(60)
    meta.put(db, clock.now(), meta.SERVER, {"started_at": to_text(clock.now())})  # restart
    assert alerts.evaluate(db, clock.now(), setup) == 0
    assert alerts.recent(db)[0]["state"] == "active"
    clock.advance(5)
    meta.put(db, clock.now(), meta.LAST_ONLINESIM_CALL, {"at": to_text(clock.now()),
                                                         "action": "GET_SERVICES"})
    assert alerts.evaluate(db, clock.now(), setup) == 1
    assert alerts.recent(db)[0]["state"] == "cleared"


# --- buyers beside Onlinesim (issue 23) ------------------------------------------------------

BUYER_FACTS = [
    {"name": "smshub", "protocol": "smshub", "path": "/smshub", "push_url_set": True,
     "services": None, "countries": [], "share": 0.0},
    {"name": "grizzly", "protocol": "smshub", "path": "/buyer/grizzly", "push_url_set": True,
     "services": None, "countries": [], "share": 0.0}]


def started(db, clock, buyers=BUYER_FACTS):
    from rentbox import meta
    from rentbox.clock import to_text

    meta.put(db, clock.now(), meta.SERVER, {"started_at": to_text(clock.now()),
                                            "buyers": buyers})


def called(db, clock, buyer):
    from rentbox import meta
    from rentbox.clock import to_text

    meta.put(db, clock.now(), meta.last_call_key(buyer), {
        "at": to_text(clock.now()), "action": "GET_SERVICES",
        "actions": {"GET_SERVICES": to_text(clock.now())}})


def active(db) -> dict:
    return {r["key"]: r["message"] for r in alerts.recent(db) if r["state"] == "active"}


def test_each_buyer_that_stops_calling_is_an_alert_of_its_own(db, clock):
    add_numbers(db, START, (A, "germany", "o2"))
    setup = alerting()  # silence_s = 600
    started(db, clock)
    called(db, clock, "onlinesim")
    clock.advance(300)
    called(db, clock, "smshub")
    called(db, clock, "onlinesim")
    clock.advance(300)
    # grizzly never called: it counts from the server's start, as Onlinesim would.
    assert alerts.evaluate(db, clock.now(), setup) == 1
    assert active(db) == {"buyer_silent:grizzly": (
        "grizzly has not called since 2026-11-01 12:00 UTC (it polls every 10-20 s): check "
        "the agent URL it was given (ending in /buyer/grizzly), its key, and that rentbox can "
        "be reached from the internet")}
    clock.advance(300)
    assert alerts.evaluate(db, clock.now(), setup) == 2  # SMSHub and Onlinesim, 10 min on
    assert set(active(db)) == {"buyer_silent:grizzly", "buyer_silent:smshub",
                               "onlinesim_silent"}
    assert "smshub has not called since 2026-11-01 12:05 UTC" in active(db)[
        "buyer_silent:smshub"]
    # A restart is no news that a buyer is back: the alerts hold, and say nothing new.
    started(db, clock)
    assert alerts.evaluate(db, clock.now(), setup) == 0
    # A call ends its own buyer's alert only.
    clock.advance(1)
    called(db, clock, "smshub")
    assert alerts.evaluate(db, clock.now(), setup) == 1
    assert set(active(db)) == {"buyer_silent:grizzly", "onlinesim_silent"}
    assert "✅ resolved: smshub has not called since" in queued(db)[-1]["text"]


def test_a_buyer_no_longer_served_is_no_longer_silent(db, clock):
    setup = alerting()
    started(db, clock)
    called(db, clock, "onlinesim")
    clock.advance(601)
    called(db, clock, "onlinesim")
    assert alerts.evaluate(db, clock.now(), setup) == 2
    started(db, clock, buyers=BUYER_FACTS[:1])  # restarted without grizzly
    assert alerts.evaluate(db, clock.now(), setup) == 1
    assert set(active(db)) == {"buyer_silent:smshub"}
    started(db, clock, buyers=[])
    assert alerts.evaluate(db, clock.now(), setup) == 1 and active(db) == {}


def test_the_daily_summary_says_other_currencies_apart(db, clock):
    import datetime as dt

    from rentbox.config import Buyer
    from rentbox.protocol import FinishRequest

    add_numbers(db, START, (A, "germany", "o2"), (B, "germany", "o2"))
    rules = Rules(services=("vk",), buyers=(Buyer("smshub", "smshub", key="k"),))
    for minor, currency in ((1250, "USD"), (2000, "RUB")):
        issued = operations.open_operation(db, clock, NumberRequest(
            minor, service="vk", buyer="smshub", currency=currency), rules)
        operations.finish_operation(db, clock, FinishRequest(
            issued.activation_id, 3, buyer="smshub"), rules)
    clock.advance(24 * 3600)
    alerts.evaluate(db, clock.now(), alerting(summary_hour=0, silence_s=10 ** 9))
    [summary] = [m for m in queued(db) if m["kind"] == "summary"][:1]
    assert ("2 rentals (2 sold, 0 failed), credited 20.00 RUB, pending 0.00 RUB, in USD: "
            "credited 12.50 USD, pending 0.00 USD, 0 number(s) banned") in summary["text"]
    detail = json.loads(summary["detail"])
    assert (detail["credited_kopecks"], detail["other_currencies"]) == (
        2000, [{"currency": "USD", "credited_minor": 1250, "pending_minor": 0}])
    assert dt.date.fromisoformat(detail["day"]) == START.date()
