"""Figures of status and report on a database with known contents."""

import dataclasses
import datetime as dt
import json
import os

import pytest

from rentbox import meta, operations, push, reports, sms
from rentbox.clock import FixedClock, to_text
from rentbox.config import Rules
from rentbox.errors import InvalidInput
from rentbox.gateways import notes, smsgate
from rentbox.protocol import FinishRequest, NumberRequest

from conftest import EXAMPLES, START, FakeClock, add_numbers

RULES = Rules(guard_s=1200, ban_after=3, ban_s=86400, guard_margin_s=0)


def unwatched(count: int) -> str:
    """The warning about numbers that no reporting gateway holds (presence on)."""
    return (f"{count} number(s) not watched: no gateway reports their ports, so they are "
            "offered even when their SIM is not in a port (Onlinesim blocks a partner who "
            "over-reports); have their gateway report presence (README, SIM presence), or set "
            "RENTBOX_PRESENCE=off if none ever will")
A, B, C = "4915123456789", "4917612345678", "79123456789"
DAY1 = START                                  # Sunday 2026-11-01 12:00 UTC
DAY2 = START + dt.timedelta(days=1)           # Monday 2026-11-02 12:00 UTC


def rent(db, when, number, sum_kopecks):
    others = tuple(n for n in (A, B, C) if n != number)
    return operations.open_operation(db, FixedClock(when),
                                NumberRequest(sum_kopecks, excluded_prefixes=others),
                                RULES).activation_id


def sms_to(db, when, number, outcome=push.Outcome("delivered")):
    """An SMS for the number, pushed to Onlinesim at once with `outcome` (None: not yet)."""
    accepted = sms.accept_sms(db, FixedClock(when), sms.IncomingSms(
        source="api", to=number, sender="x", text="y"), RULES)
    if outcome is not None:
        row = db.row("SELECT * FROM sms WHERE id = ?", (accepted.sms_id,))
        push.record(db, when, row, outcome, 10, sent_at=when, rules=RULES)
    return accepted.sms_id


def finish(db, when, op, status, sum_kopecks):
    operations.finish_operation(db, FixedClock(when), FinishRequest(op, status, sum_kopecks), RULES)


@pytest.fixture
def books(db):
    """Five rentals over two days, one of each fate."""
    add_numbers(db, START - dt.timedelta(days=1), (A, "germany", "telekom"),
                (B, "germany", "o2"), (C, "russia", "mts"))
    op1 = rent(db, DAY1, A, 40000)                        # SMS, sold for 870
    sms_to(db, DAY1 + dt.timedelta(minutes=5), A)
    finish(db, DAY1 + dt.timedelta(minutes=30), op1, 3, 87000)
    op2 = rent(db, DAY1, B, 25000)                        # cancelled in the window, no SMS
    finish(db, DAY1 + dt.timedelta(minutes=10), op2, 4, 0)
    op3 = rent(db, DAY1 + dt.timedelta(hours=23), C, 50000)  # SMS, refunded on day 2
    sms_to(db, DAY2 - dt.timedelta(minutes=50), C)
    finish(db, DAY2, op3, 5, 0)
    rent(db, DAY2, A, 40000)                              # SMS, still open: pending 400
    sms_to(db, DAY2 + dt.timedelta(minutes=1), A)
    sms_to(db, DAY2 + dt.timedelta(minutes=2), A, outcome=None)  # a second one, in the outbox
    rent(db, DAY2, B, 30000)                              # guard window passes: failed, open
    with db.transaction():
        operations.apply_due_rules(db, DAY2 + dt.timedelta(minutes=21), RULES)
    return db


def row(rows, key):
    return next(dataclasses.asdict(r) for r in rows if r.key == key)


def test_report_by_day(books):
    rows, totals = reports.income_report(books, by="day")
    assert [r.key for r in rows] == ["2026-11-01", "2026-11-02"]
    assert row(rows, "2026-11-01") == {
        "key": "2026-11-01", "operations": 2, "sold": 1, "cancelled": 1, "refunded": 0,
        "wrong_service": 0, "open": 0, "failed": 1, "with_sms": 1,
        "credited_kopecks": 87000, "pending_kopecks": 0, "currency": "RUB"}
    assert row(rows, "2026-11-02") == {
        "key": "2026-11-02", "operations": 3, "sold": 0, "cancelled": 0, "refunded": 1,
        "wrong_service": 0, "open": 2, "failed": 1, "with_sms": 2,
        "credited_kopecks": 0, "pending_kopecks": 40000, "currency": "RUB"}
    assert (totals.operations, totals.credited_kopecks, totals.pending_kopecks) == (
        5, 87000, 40000)
    assert rows[0].success_rate == 0.5
    assert rows[1].success_rate == pytest.approx(2 / 3)
    assert totals.success_rate == 0.6


def test_report_by_week_month_country_number(books):
    weeks, _ = reports.income_report(books, by="week")
    assert [(r.key, r.operations) for r in weeks] == [("2026-10-26", 2), ("2026-11-02", 3)]
    months, _ = reports.income_report(books, by="month")
    assert [(r.key, r.operations, r.credited_kopecks) for r in months] == [
        ("2026-11", 5, 87000)]
    countries, _ = reports.income_report(books, by="country")
    assert [(r.key, r.operations, r.failed, r.with_sms, r.credited_kopecks, r.pending_kopecks)
            for r in countries] == [("germany", 4, 2, 2, 87000, 40000),
                                    ("russia", 1, 0, 1, 0, 0)]
    numbers, _ = reports.income_report(books, by="number")
    assert [(r.key, r.operations, r.success_rate) for r in numbers] == [
        (A, 2, 1.0), (B, 2, 0.0), (C, 1, 1.0)]


def test_report_since_until(books):
    rows, totals = reports.income_report(books, since=DAY2.replace(hour=0),
                                         until=DAY2 + dt.timedelta(hours=1))
    assert [r.key for r in rows] == ["2026-11-02"]
    assert totals.operations == 3
    with pytest.raises(InvalidInput, match="report by must be one of"):
        reports.income_report(books, by="year")


def test_status_figures_and_warnings(books):
    now = DAY2 + dt.timedelta(minutes=30)
    facts = reports.status(books, now)
    assert facts["pool"] == {"total": 3, "free": 2, "rented": 1, "banned": 0, "disabled": 0,
                             "offline": 0, "rented_disabled": 0}
    assert facts["operations"] == {"open": 2, "failed_awaiting_finish": 1, "with_sms": 1,
                                   "awaiting_sms": 0, "stale_failed": [],
                                   "lapsed_activations": [], "activations_open": 0,
                                   "by_buyer": {"onlinesim": 2}}
    assert facts["outbox"]["pending"] == 1 and facts["outbox"]["failed"] == 0
    assert facts["outbox"]["oldest_pending_age_s"] == 28 * 60
    assert facts["server"] is None and facts["last_onlinesim_call"] is None
    store = facts["database"]
    assert store["database_bytes"] == books.path.stat().st_size > 0
    assert store["wal_bytes"] >= 0 and store["free_bytes"] > 0
    assert store["write_problem"] is None
    assert facts["warnings"] == [
        "rentbox serve has never run on this database",
        "1 SMS waiting in the outbox since 2026-11-02 12:02 UTC",
        unwatched(3)]


def test_status_flags_failed_rentals_without_finish_after_a_day(books):
    """A GET_NUMBER answer lost in a crash: Onlinesim never FINISHes that rental."""
    [failed] = [r["id"] for r in operations.list_operations(books, outcome="failed",
                                                             open_only=True)]
    day_later = DAY2 + dt.timedelta(minutes=21, days=1)
    assert reports.status(books, day_later - dt.timedelta(seconds=1))["operations"][
        "stale_failed"] == []
    facts = reports.status(books, day_later)
    assert facts["operations"]["stale_failed"] == [failed]
    assert (f"1 rental(s) failed their guard window over a day ago and got no FINISH from "
            f"Onlinesim ({failed}): close each with `rentbox ops close ID`") in facts["warnings"]
    operations.close_by_hand(books, day_later, failed)
    assert reports.status(books, day_later)["operations"]["stale_failed"] == []
    shown = operations.show_operation(books, failed)
    assert (shown["state"], shown["outcome"]) == ("closed", "closed_by_hand")
    assert shown["events"][-1]["kind"] == "closed_by_hand"


def test_status_warns_when_the_database_cannot_be_written(books):
    books.health.failed("the disk is full")
    facts = reports.status(books, DAY2 + dt.timedelta(minutes=30))
    assert facts["database"]["write_problem"] == "the disk is full"
    assert any(w.startswith("the database cannot be written: the disk is full (")
               for w in facts["warnings"])


def test_status_of_a_running_server_without_push_url(books):
    now = DAY2 + dt.timedelta(minutes=30)
    meta.put(books, now, meta.SERVER, {"started_at": "2026-11-02T12:00:00.000000Z",
                                       "pid": os.getpid(), "push_url_set": False,
                                       "version": "x", "url": "http://127.0.0.1:8080"})
    meta.put(books, now, meta.LAST_ONLINESIM_CALL, {"at": "2026-11-02T12:00:00.000000Z",
                                                    "action": "GET_SERVICES"})
    sms_row = books.row("SELECT id, operation_id, number_id, attempts FROM sms"
                        " WHERE push_state = 'pending' ORDER BY id LIMIT 1")
    push.record(books, now, sms_row, push.Outcome("retry", "HTTP 500"), 10, sent_at=now,
                rules=RULES)
    books.execute("UPDATE numbers SET banned_until = '2026-11-09T00:00:00.000000Z'"
                  " WHERE number = ?", (C,))
    from rentbox.db import hold_serving_lock

    lock = hold_serving_lock(books.path)  # as `rentbox serve` does
    try:
        facts = reports.status(books, now)
    finally:
        lock.close()
    assert reports.status(books, now)["server"]["running"] is False
    assert facts["server"]["running"] is True
    assert facts["pool"]["banned"] == 1
    assert facts["warnings"] == [
        "the server runs without RENTBOX_PUSH_URL: SMS are stored but not pushed to Onlinesim",
        "1 of 3 numbers are banned after failed rentals: check that their SMS reach rentbox",
        "1 SMS not yet accepted by Onlinesim, retrying; the oldest waits since "
        "2026-11-02 12:02 UTC (last error: HTTP 500)",
        "Onlinesim has not called since 2026-11-02 12:00 UTC: check the URL it was given "
        "and the reverse proxy",
        unwatched(3)]
    # With other buyers served, the outbox holds their SMS too: the warning says so.
    meta.put(books, now, meta.SERVER, {
        **meta.get(books, meta.SERVER), "push_url_set": True, "buyers": [
            {"name": "smshub", "protocol": "smshub", "path": "/smshub",
             "push_url_set": True, "services": None, "countries": [], "share": 0.0}]})
    lock = hold_serving_lock(books.path)
    try:
        said = reports.status(books, now)["warnings"]
    finally:
        lock.close()
    assert ("1 SMS not yet accepted by their buyers, retrying; the oldest waits since "
            "2026-11-02 12:02 UTC (last error: HTTP 500)") in said


def test_number_history(books):
    history = reports.number_history(books, "+49 151 2345 6789")
    assert history["state"] == "rented"
    assert [r["outcome"] for r in history["rentals"]] == ["open", "sold"]
    assert len(history["sms"]) == 3
    assert history["events"][0]["kind"] == "number_added"


def test_status_counts_rented_numbers_that_are_disabled(books):
    from rentbox import pool

    pool.set_enabled(books, DAY2, A, False)  # rented now: leaves the pool when it ends
    pool.set_enabled(books, DAY2, C, False)  # free: disabled at once
    counts = reports.status(books, DAY2 + dt.timedelta(minutes=30))["pool"]
    assert counts == {"total": 3, "free": 1, "rented": 1, "banned": 0, "disabled": 1,
                      "offline": 0, "rented_disabled": 1}


@pytest.mark.parametrize("by", ["day", "country", "number"])
def test_test_rentals_are_not_in_the_income_report(books, by):
    clock = FixedClock(START)
    since = START - dt.timedelta(days=30)
    before = reports.income_report(books, by=by)
    before_rows = reports.income_report(books, by=by, since=since, from_rows=True)
    add_numbers(books, START, ("4930111222333", "germany", "telekom"))
    rental = operations.open_operation(books, clock, NumberRequest(sum_kopecks=40000, test=True),
                                  RULES)
    assert rental is not None
    assert reports.income_report(books, by=by) == before
    operations.finish_operation(books, clock, FinishRequest(activation_id=rental.activation_id,
                                                       status=3, sum_kopecks=87000), RULES)
    assert reports.income_report(books, by=by) == before
    assert reports.income_report(books, by=by, since=since, from_rows=True) == before_rows


# examples/gateways/smsgate-sms-received.json and smsgate-system-ping.json: SMSGate's
# envelopes as the app builds them (capcom6/android-sms-gateway, modules/webhooks/); its
# Ping (Settings → Ping → Interval (seconds), `ping.interval_seconds`) is off unless set
# (modules/ping/PingSettings.kt), and `app:started` is sent once per start.
SMSGATE_SMS = json.loads((EXAMPLES / "gateways" / "smsgate-sms-received.json").read_text())
SMSGATE_PING = json.loads((EXAMPLES / "gateways" / "smsgate-system-ping.json").read_text())
NO_PING = ("SMSGate device(s) _x3kPq9RmT2vLw8ZyB4nC send SMS but no ping, so their SIMs go "
           "offline 300 s after each report: in the app set Settings → Ping → Interval "
           "(seconds) to 100 and add a system:ping webhook to /sms/smsgate")


def smsgate_sms(db, clock, text):
    envelope = {**SMSGATE_SMS, "payload": {**SMSGATE_SMS["payload"], "message": text}}
    smsgate.accept_smsgate_sms(db, clock, smsgate.parse_smsgate(envelope), RULES)


def test_status_warns_about_an_smsgate_device_that_sends_sms_but_no_ping(db):
    clock = FakeClock(START)
    smsgate_sms(db, clock, "Code 1")
    assert NO_PING in reports.status(db, clock.now())["warnings"]
    # Its pings (every 100 s) quiet the warning, SMS or not.
    for _ in range(30):
        smsgate.note_smsgate_ping(db, clock, SMSGATE_PING)
        smsgate_sms(db, clock, f"Code at {clock.now()}")
        assert NO_PING not in reports.status(db, clock.now())["warnings"]
        clock.advance(100)
    # Ping turned off again: warned about once its SMS keep coming without one.
    clock.advance(notes.NOTE_EVERY_S + RULES.presence_s)
    smsgate_sms(db, clock, "Code 2")
    assert NO_PING in reports.status(db, clock.now())["warnings"]
    # A device that has sent nothing for a week is not warned about any more.
    clock.advance(notes.FORGET_AFTER_S + 1)
    assert NO_PING not in reports.status(db, clock.now())["warnings"]


def test_status_says_nothing_of_smsgate_pings_when_presence_is_off(db):
    clock = FakeClock(START)
    meta.put(db, START, meta.SERVER, {"started_at": "2026-11-01T12:00:00.000000Z",
                                      "guard_s": 1200, "ban_after": 3, "ban_s": 86400,
                                      "presence": False, "presence_s": 300})
    smsgate_sms(db, clock, "Code 1")
    assert not [w for w in reports.status(db, START)["warnings"] if "SMSGate" in w]


def test_status_warns_while_numbers_are_not_watched_and_presence_is_on(db):
    """Issue 21, item 10: a number on no reporting gateway's ports is offered whatever its
    SIM; `status` says so until a gateway reports it, or presence is turned off."""
    from rentbox import presence

    clock = FakeClock(START)
    add_numbers(db, START, ("4915123456789", "germany", "o2", "gw1:1"),
                ("4915123456790", "germany", "o2", "gw1:2"))
    assert unwatched(2) in reports.status(db, START)["warnings"]
    presence.report(db, clock, Rules(), presence.Report("box-1", ports=("gw1:1",)))
    facts = reports.status(db, START)
    assert facts["presence"] == {**facts["presence"], "online": 1, "offline": 1,
                                 "unwatched": 0}
    assert not [w for w in facts["warnings"] if "not watched" in w]
    add_numbers(db, START, ("4915123456791", "germany", "o2", "gw9:1"))
    assert unwatched(1) in reports.status(db, START)["warnings"]
    meta.put(db, START, meta.SERVER, {"started_at": "2026-11-01T12:00:00.000000Z",
                                      "guard_s": 1200, "ban_after": 3, "ban_s": 86400,
                                      "presence": False, "presence_s": 300})
    assert not [w for w in reports.status(db, START)["warnings"] if "not watched" in w]


# ---------------------------------------------------------------------------------------
# Buyers: the books per buyer and currency, and each buyer in `status` (issue 23)
# ---------------------------------------------------------------------------------------

from rentbox import tallies  # noqa: E402
from rentbox.config import Buyer  # noqa: E402

HUB_RULES = Rules(guard_s=1200, ban_after=3, ban_s=86400, guard_margin_s=0, services=("vk",),
                  buyers=(Buyer("smshub", "smshub", key="k"),))
D, E, F = "4930111222331", "4930111222332", "4930111222333"


def hub(db, when, number, minor, currency="USD", buyer="smshub"):
    """An SMSHub activation for vk on `number`, its sum in minor units of `currency`."""
    others = tuple(n for n in (A, B, C, D, E, F) if n != number)
    return operations.open_operation(db, FixedClock(when), NumberRequest(
        minor, service="vk", buyer=buyer, currency=currency, excluded_prefixes=others),
        HUB_RULES).activation_id


def hub_finish(db, when, op, status, buyer="smshub"):
    operations.finish_operation(db, FixedClock(when), FinishRequest(op, status, buyer=buyer),
                                HUB_RULES)


@pytest.fixture
def hub_books(books):
    """`books` (five Onlinesim rentals in RUB), and SMSHub's: a sale of 12.50 USD and one
    of 20.00 RUB on day 2, a cancelled USD one on day 1, and a USD one open with its SMS
    taken (pending 3.00 USD)."""
    add_numbers(books, START - dt.timedelta(days=1), (D, "germany", "o2"),
                (E, "germany", "o2"), (F, "germany", "o2"))
    sold = hub(books, DAY2, D, 1250)
    hub_finish(books, DAY2 + dt.timedelta(minutes=5), sold, 3)
    roubles = hub(books, DAY2, E, 2000, currency="RUB")
    hub_finish(books, DAY2 + dt.timedelta(minutes=6), roubles, 3)
    cancelled = hub(books, DAY1, F, 900)
    hub_finish(books, DAY1 + dt.timedelta(minutes=1), cancelled, 4)
    hub(books, DAY2 + dt.timedelta(minutes=10), F, 300)
    sms_to(books, DAY2 + dt.timedelta(minutes=11), F)
    return books


def test_report_by_buyer_keeps_each_currency_apart_and_equals_a_recount(hub_books):
    rows, totals = reports.income_report(hub_books, by="buyer")
    assert [(r.key, r.currency, r.operations, r.sold, r.cancelled, r.open,
             r.credited_kopecks, r.pending_kopecks) for r in rows] == [
        ("onlinesim", "RUB", 5, 1, 1, 2, 87000, 40000),
        ("smshub", "RUB", 1, 1, 0, 0, 2000, 0),
        ("smshub", "USD", 3, 1, 1, 1, 1250, 300)]
    # The tally equals a recount of the operations, and the tallies their own recount.
    assert (rows, totals) == reports.income_report(hub_books, by="buyer", from_rows=True)
    assert tallies.verify(hub_books) == []
    # The totals are every grouping's: every operation, the money of RUB operations only.
    assert totals == reports.income_report(hub_books, by="day")[1]
    assert (totals.operations, totals.credited_kopecks, totals.pending_kopecks,
            totals.currency) == (9, 89000, 40000, "RUB")
    assert [(t.key, t.currency, t.operations, t.credited_kopecks, t.pending_kopecks)
            for t in reports.currency_totals(rows)] == [
        ("total", "RUB", 6, 89000, 40000), ("total", "USD", 3, 1250, 300)]
    # A period: day 2 only, from the tally and, from a time of day, from the rows.
    day2, _ = reports.income_report(hub_books, by="buyer", since=DAY2.replace(hour=0))
    assert [(r.key, r.currency, r.operations) for r in day2] == [
        ("onlinesim", "RUB", 3), ("smshub", "RUB", 1), ("smshub", "USD", 2)]
    noon, _ = reports.income_report(hub_books, by="buyer", since=DAY2)
    assert noon == day2


@pytest.mark.parametrize("by", ["day", "week", "month", "country", "number", "product",
                                "service"])
def test_a_usd_sale_never_shows_in_the_roubles(books, by):
    before_rows, before = reports.income_report(books, by=by)
    add_numbers(books, START - dt.timedelta(days=1), (D, "germany", "o2"))
    sold = hub(books, DAY2, D, 1250)
    hub_finish(books, DAY2 + dt.timedelta(minutes=5), sold, 3)
    for from_rows in (False, True):
        rows, totals = reports.income_report(books, by=by, from_rows=from_rows)
        assert totals.operations == before.operations + 1  # counted as an operation
        assert (totals.credited_kopecks, totals.pending_kopecks) == (
            before.credited_kopecks, before.pending_kopecks)
        assert sum(r.credited_kopecks for r in rows) == sum(
            r.credited_kopecks for r in before_rows)
        assert {r.currency for r in rows} == {"RUB"}
    [usd] = reports.other_currencies(books)
    assert (usd.currency, usd.credited_kopecks, usd.pending_kopecks) == ("USD", 1250, 0)
    assert reports.other_currencies(books, until=DAY2.replace(hour=0)) == []


def server_facts(db, now, **changes):
    """The facts `rentbox serve` records, with SMSHub and grizzly as buyers."""
    meta.put(db, now, meta.SERVER, {
        "started_at": "2026-11-02T12:00:00.000000Z", "pid": os.getpid(), "version": "x",
        "url": "http://127.0.0.1:8080", "push_url_set": True, "guard_s": 1200,
        "ban_after": 3, "ban_s": 86400, "presence": False, "services": ["vk"],
        "alert_silence_s": 900,
        "buyers": [
            {"name": "smshub", "protocol": "smshub", "path": "/smshub", "push_url_set": True,
             "services": None, "countries": [], "share": 0.0},
            {"name": "grizzly", "protocol": "smshub", "path": "/buyer/grizzly",
             "push_url_set": False, "services": ["wa"], "countries": ["germany"],
             "share": 0.0}], **changes})


def test_status_names_each_buyer_its_open_operations_last_call_and_silence(hub_books):
    from rentbox.db import hold_serving_lock

    now = DAY2 + dt.timedelta(minutes=30)
    server_facts(hub_books, now)
    meta.put(hub_books, now, meta.LAST_ONLINESIM_CALL, {
        "at": "2026-11-02T12:29:00.000000Z", "action": "GET_SERVICES"})
    meta.put(hub_books, now, meta.last_call_key("smshub"), {
        "at": "2026-11-02T12:10:00.000000Z", "action": "GET_NUMBER",
        "actions": {"GET_NUMBER": "2026-11-02T12:10:00.000000Z"}})
    lock = hold_serving_lock(hub_books.path)
    try:
        facts = reports.status(hub_books, now)
    finally:
        lock.close()
    assert facts["operations"]["by_buyer"] == {"onlinesim": 2, "smshub": 1}
    assert [(b["name"], b["path"], b["push_url_set"], b["open"], b["last_call_age_s"],
             b["silent"]) for b in facts["buyers"]] == [
        ("onlinesim", None, True, 2, 60, False),
        ("smshub", "/smshub", True, 1, 1200, True),   # 20 min > RENTBOX_ALERT_SILENCE_S
        ("grizzly", "/buyer/grizzly", False, 0, None, True)]
    assert facts["buyers"][1]["last_call"]["action"] == "GET_NUMBER"
    assert facts["buyer_policy"] == ["germany reserved for grizzly"]
    buyer_warnings = [w for w in facts["warnings"] if "smshub" in w or "grizzly" in w]
    assert buyer_warnings == [
        "smshub has not called since 2026-11-02 12:10 UTC (it polls every 10-20 s): check "
        "the agent URL it was given (ending in /smshub), its key and the reverse proxy",
        "the server runs without a push URL for grizzly (push_url in [buyers.grizzly] of the "
        "buyers file): its SMS are stored but never pushed to it",
        "grizzly has never called this server: check the agent URL it was given (ending in "
        "/buyer/grizzly) and its key"]
    # Within the threshold, a buyer is not silent; a server that is not running warns of
    # none of this.
    assert not reports.status(hub_books, now)["buyers"][1]["silent"]
    assert not [w for w in reports.status(hub_books, now)["warnings"]
                if "smshub" in w or "grizzly" in w]


def test_status_lists_a_buyer_that_holds_an_open_operation_but_is_no_longer_served(
        hub_books):
    facts = reports.status(hub_books, DAY2 + dt.timedelta(minutes=30))
    assert [(b["name"], b["configured"], b["open"]) for b in facts["buyers"]] == [
        ("onlinesim", True, 2), ("smshub", False, 1)]
    assert facts["buyer_policy"] == ["first come, first served"]


def test_status_income_says_what_came_in_other_currencies(hub_books):
    income = reports.status(hub_books, DAY2 + dt.timedelta(minutes=30))["income"]
    # The roubles: Onlinesim's and SMSHub's RUB sale, never the dollars.
    assert (income["credited_today_kopecks"], income["pending_kopecks"]) == (2000, 40000)
    assert income["credited_month_kopecks"] == 89000
    assert income["other_currencies"] == [{
        "currency": "USD", "credited_today_minor": 1250, "credited_week_minor": 1250,
        "credited_month_minor": 1250, "pending_minor": 300}]
    # Next month nothing was credited in dollars, but 3.00 USD is still pending.
    later = reports.status(hub_books, dt.datetime(2026, 12, 2, tzinfo=dt.timezone.utc))
    assert later["income"]["other_currencies"] == [{
        "currency": "USD", "credited_today_minor": 0, "credited_week_minor": 0,
        "credited_month_minor": 0, "pending_minor": 300}]


def test_buyers_to_date_per_buyer_and_currency(hub_books):
    rows = reports.buyers_to_date(hub_books, DAY2 + dt.timedelta(minutes=30))
    assert [(r["buyer"], r["currency"], r["credited_month_minor"], r["pending_minor"],
             r["open"], r["success_rate"]) for r in rows] == [
        ("onlinesim", "RUB", 87000, 40000, 2, 0.6),
        ("smshub", "RUB", 2000, 0, 0, None),
        ("smshub", "USD", 1250, 300, 1, 0.5)]  # the cancelled one had no SMS: failed


# ---------------------------------------------------------------------------------------
# The same on the command line: `rentbox status` and `rentbox report --by buyer`
# ---------------------------------------------------------------------------------------


def cli(db, *args, now=None, monkeypatch=None):
    from typer.testing import CliRunner

    from rentbox import cli as cli_module

    if now is not None:
        monkeypatch.setattr(cli_module, "_now", lambda: now)
    result = CliRunner().invoke(cli_module.app, [*args, "--db", str(db.path)])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return result.stdout


def test_status_lists_each_buyer_and_income_in_other_currencies(hub_books, monkeypatch):
    now = DAY2 + dt.timedelta(minutes=30)
    server_facts(hub_books, now)
    meta.put(hub_books, now, meta.last_call_key("smshub"), {
        "at": "2026-11-02T12:10:00.000000Z", "action": "GET_NUMBER", "actions": {}})
    lines = cli(hub_books, "status", now=now, monkeypatch=monkeypatch).splitlines()
    assert lines[1:7] == [
        "Onlinesim:  last call never",
        "Buyers:     onlinesim: 2 open; never called; push URL set",
        "            smshub (/smshub): 1 open; last call 2026-11-02 12:10:00 UTC (GET_NUMBER, "
        "20 min ago); push URL set",
        "            grizzly (/buyer/grizzly): 0 open; never called; push URL NOT set",
        "            Which buyer gets what: germany reserved for grizzly",
        "Income:     20.00 RUB credited today, 890.00 RUB this month (UTC); 400.00 RUB pending "
        "in open rentals; + 12.50 USD this month, 3.00 USD pending"]
    facts = json.loads(cli(hub_books, "status", "--json", now=now, monkeypatch=monkeypatch))
    assert [b["name"] for b in facts["buyers"]] == ["onlinesim", "smshub", "grizzly"]
    assert facts["buyer_policy"] == ["germany reserved for grizzly"]
    assert facts["income"]["other_currencies"][0]["credited_month_minor"] == 1250


def test_status_of_onlinesim_alone_has_no_buyers_part(books, monkeypatch):
    lines = cli(books, "status", now=DAY2, monkeypatch=monkeypatch).splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["Server", "Onlinesim", "Income",
                                                          "Pool"]
    assert lines[2].endswith("RUB pending in open rentals")  # nothing in another currency


def test_report_by_buyer_on_the_command_line(hub_books):
    table = cli(hub_books, "report", "--by", "buyer").splitlines()
    assert table[0].split() == ["buyer", "currency", "ops", "sold", "other", "open", "failed",
                                "success", "credited", "pending"]
    assert [line.split() for line in table[2:7]] == [
        ["onlinesim", "RUB", "5", "1", "2", "2", "2", "60%", "870.00", "400.00"],
        ["smshub", "RUB", "1", "1", "0", "0", "0", "20.00", "0.00"],  # none decided
        ["smshub", "USD", "3", "1", "1", "1", "1", "50%", "12.50", "3.00"],
        ["total", "RUB", "6", "2", "2", "2", "2", "60%", "890.00", "400.00"],
        ["total", "USD", "3", "1", "1", "1", "1", "50%", "12.50", "3.00"]]
    assert "never added across currencies" in table[-1]
    csv_lines = cli(hub_books, "report", "--by", "buyer", "--csv").splitlines()
    assert csv_lines == [
        "buyer,currency,operations,sold,cancelled,refunded,wrong_service,open,failed,"
        "with_sms,success_rate,credited_minor,pending_minor",
        "onlinesim,RUB,5,1,1,1,0,2,2,3,0.6000,87000,40000",
        "smshub,RUB,1,1,0,0,0,0,0,0,,2000,0",
        "smshub,USD,3,1,1,0,0,1,1,1,0.5000,1250,300"]
    data = json.loads(cli(hub_books, "report", "--by", "buyer", "--json"))
    assert [(r["key"], r["currency"], r["credited_kopecks"]) for r in data["rows"]] == [
        ("onlinesim", "RUB", 87000), ("smshub", "RUB", 2000), ("smshub", "USD", 1250)]
    assert [(t["currency"], t["credited_kopecks"]) for t in data["totals_by_currency"]] == [
        ("RUB", 89000), ("USD", 1250)]
    assert (data["totals"]["currency"], data["totals"]["credited_kopecks"]) == ("RUB", 89000)


def test_a_report_in_roubles_says_what_it_left_out(hub_books):
    lines = cli(hub_books, "report").splitlines()
    assert lines[-1] == ("Not in these sums (RUB only): 12.50 USD credited, 3.00 USD "
                         "pending; see --by buyer.")
    assert lines[4].split()[-2:] == ["890.00", "400.00"]  # the totals, in roubles only
    before_usd = cli(hub_books, "report", "--until", "2026-11-02").splitlines()
    assert not before_usd[-1].startswith("Not in these sums")


def test_every_buyers_silence_follows_the_servers_alert_silence(books):
    from rentbox.db import hold_serving_lock

    now = DAY2 + dt.timedelta(minutes=30)
    server_facts(books, now, alert_silence_s=3600, buyers=[])
    meta.put(books, now, meta.LAST_ONLINESIM_CALL, {"at": to_text(DAY2 - dt.timedelta(
        minutes=20)), "action": "GET_SERVICES"})
    lock = hold_serving_lock(books.path)
    try:
        quiet = reports.status(books, now)  # 50 min: silent for 10 minutes, not for an hour
        late = reports.status(books, now + dt.timedelta(minutes=11))
    finally:
        lock.close()
    assert not [w for w in quiet["warnings"] if w.startswith("Onlinesim has not called")]
    assert not quiet["buyers"][0]["silent"]
    assert "Onlinesim has not called since 2026-11-02 11:40 UTC: check the URL it was given " \
           "and the reverse proxy" in late["warnings"]
    assert late["buyers"][0]["silent"]
