"""dashboard.py: the status page's data on a seeded database, with the fake clock."""

from __future__ import annotations

import datetime as dt

from conftest import START, add_numbers
from rentbox import dashboard, tallies
from rentbox.clock import to_text

HOSTILE = "<script>alert('x')</script>&\""
DAY = dt.timedelta(days=1)


def seed(db, now: dt.datetime) -> dict:
    """A small known database relative to `now`; returns what the charts must show.

    - sold rentals: 2 closed yesterday (870 RUB each), 1 closed 100 days ago (outside);
    - 1 cancelled 3 days ago; 1 open today on a number whose SIM is offline, with 2 SMS;
    - 100 SMS delivered two days ago with delays 1..100 s, 1 yesterday with 5 s, 1 long
      before the window; 1 pending for 10 minutes;
    - an active alert about a hostile operator, and a cleared one.
    """
    add_numbers(db, now - 200 * DAY, ("+4915100000001", "germany", "telekom"),
                ("+4915100000002", "germany", "o2"), ("+4915100000003", "germany", HOSTILE),
                ("+33600000004", "france", None))

    def stamp(moment):
        return to_text(moment)

    def closed(number_id, status, finished, final, hours=1):
        opened = finished - dt.timedelta(hours=hours)
        return db.execute(
            "INSERT INTO operations (number_id, state, finish_status, initial_sum_kopecks,"
            " final_sum_kopecks, created_at, finished_at, sms_accepted_at, country)"
            " VALUES (?, 'closed', ?, 40000, ?, ?, ?, ?, 'germany')",
            (number_id, status, final, stamp(opened), stamp(finished),
             stamp(opened + dt.timedelta(minutes=2)) if status == 3 else None)).lastrowid

    with db.transaction():
        # A long rental, open from two days ago until yesterday: it holds the SMS below.
        long_one = closed(1, 3, now - DAY, 87000, hours=40)
        closed(2, 3, now - DAY, 87000)
        old_one = closed(1, 3, now - 100 * DAY, 50000, hours=24 * 21)
        closed(2, 4, now - 3 * DAY, 0)
        opened = now - dt.timedelta(hours=3)
        open_id = db.execute(
            "INSERT INTO operations (number_id, state, initial_sum_kopecks, created_at,"
            " sms_accepted_at, country) VALUES (3, 'open', 40000, ?, ?, 'germany')",
            (stamp(opened), stamp(opened + dt.timedelta(minutes=1)))).lastrowid
        db.execute("UPDATE numbers SET operation_id = ?, offline = 1, offline_since = ?,"
                   " seen_by = 'goip', seen_at = ? WHERE id = 3",
                   (open_id, stamp(now - dt.timedelta(hours=1)), stamp(now - 2 * DAY)))

        def sms(created, delay_s, state="delivered", operation_id=None):
            delivered = created + dt.timedelta(seconds=delay_s)
            db.execute(
                "INSERT INTO sms (source, number, operation_id, sender, text, received_at,"
                " created_at, push_state, delivered_at, next_attempt_at) VALUES ('api',"
                " '4915100000003', ?, 'Bank', 'code 1234', ?, ?, ?, ?, ?)",
                (operation_id, stamp(created), stamp(created), state,
                 stamp(delivered) if state == "delivered" else None,
                 stamp(created) if state == "pending" else None))

        two_days = (now - 2 * DAY).replace(hour=10, minute=0, second=0, microsecond=0)
        for delay in range(1, 101):
            sms(two_days, delay, operation_id=long_one)
        sms((now - DAY).replace(hour=9, minute=0, second=0, microsecond=0), 5,
            operation_id=long_one)
        sms(now - 120 * DAY, 7, operation_id=old_one)
        sms(opened + dt.timedelta(minutes=1), 2, operation_id=open_id)
        sms(now - dt.timedelta(minutes=10), 0, state="pending", operation_id=open_id)
        db.execute("INSERT INTO alerts (key, message, state, started_at) VALUES"
                   " ('banned:4915100000003', ?, 'active', ?)",
                   (f"operator {HOSTILE} is banned", stamp(now - dt.timedelta(hours=2))))
        db.execute("INSERT INTO alerts (key, message, state, started_at, cleared_at) VALUES"
                   " ('pool_empty', 'no number can be rented now', 'cleared', ?, ?)",
                   (stamp(now - 5 * DAY), stamp(now - 4 * DAY)))
    return {"income_points": dashboard.DAYS, "rentals_points": dashboard.DAYS,
            # days with deliveries in the window: two days ago, yesterday, today
            "delay_points": 3 if now.hour >= 3 else 2}


def test_window_is_ninety_days_ending_today():
    days = dashboard.window(START)
    assert len(days) == 90
    assert days[-1] == "2026-11-01" and days[0] == "2026-08-04"
    assert days == sorted(days) and len(set(days)) == 90


def test_income_per_day_with_zero_days_and_the_window(db):
    seed(db, START)
    data = dashboard.overview(db, START)
    days, credited = data["charts"]["days"], data["charts"]["income"]["credited_kopecks"]
    assert len(credited) == 90
    assert credited[days.index("2026-10-31")] == 2 * 87000
    # Every other day is a zero day, and the sale 100 days ago is outside the window.
    assert sum(credited) == 2 * 87000 and credited.count(0) == 89
    assert data["charts"]["income"]["credited_total_kopecks"] == 174000
    # The open rental met its guard window: its initial sum is pending.
    assert data["charts"]["income"]["pending_kopecks"] == 40000


def test_rentals_per_day_by_outcome(db):
    seed(db, START)
    rentals = dashboard.overview(db, START)["charts"]["rentals"]
    days = dashboard.window(START)
    assert rentals["sold"][days.index("2026-10-31")] == 2
    assert rentals["cancelled"][days.index("2026-10-29")] == 1
    assert rentals["open"][-1] == 1
    assert sum(rentals["sold"]) == 2 and sum(rentals["refunded"]) == 0
    assert all(len(series) == 90 for series in rentals.values())


def test_push_delay_p50_p99_per_day(db):
    seed(db, START)
    delay = dashboard.overview(db, START)["charts"]["push_delay"]
    days = dashboard.window(START)
    two_days, yesterday = days.index("2026-10-30"), days.index("2026-10-31")
    assert delay["count"][two_days] == 100
    assert delay["p50_s"][two_days] == 50 and delay["p99_s"][two_days] == 99
    assert delay["p50_s"][yesterday] == 5 == delay["p99_s"][yesterday]
    assert delay["count"][-1] == 1 and delay["p50_s"][-1] == 2
    # Days without deliveries have no figure, and the old SMS is outside the window.
    assert sum(v is not None for v in delay["p50_s"]) == 3
    assert sum(delay["count"]) == 102


def test_push_delay_remembers_closed_days_and_rereads_today(db, db_path):
    seed(db, START)
    days = dashboard.window(START)
    first = dashboard.push_delay(db, days)
    assert dashboard.push_delay(db, days) == first
    # Another SMS delivered today, 9 s after it was stored: today's figures follow.
    rental = db.row("SELECT id FROM operations WHERE state = 'open'")["id"]
    with db.transaction():
        db.execute("INSERT INTO sms (source, operation_id, sender, text, received_at,"
                   " created_at, push_state, delivered_at) VALUES ('api', ?, 'x', 'y', ?, ?,"
                   " 'delivered', ?)", (rental, to_text(START), to_text(START),
                                        to_text(START + dt.timedelta(seconds=9))))
    later = dashboard.push_delay(db, days)
    assert later["count"][-1] == 2 and later["p99_s"][-1] == 9 and later["p50_s"][-1] == 2
    assert later["count"][:-1] == first["count"][:-1]
    # A day later, yesterday is closed with the figures it had.
    tomorrow = dashboard.window(START + DAY)
    assert dashboard.push_delay(db, tomorrow)["count"][-2] == 2


def test_health_and_warnings_are_status_s_own(db):
    from rentbox import reports

    seed(db, START)
    data = dashboard.overview(db, START)
    assert data["warnings"] == reports.status(db, START)["warnings"]
    assert data["health"]["ok"] is False
    assert any("SIM offline" in w for w in data["warnings"])


def test_pool_open_rentals_outbox_and_alerts(db):
    seed(db, START)
    data = dashboard.overview(db, START)
    assert data["pool"]["by_state"]["total"] == 4 and data["pool"]["by_state"]["rented"] == 1
    assert data["pool"]["presence"]["at_risk"] == 1
    by_operator = {(r["country"], r["operator"]): r for r in data["pool"]["by_operator"]}
    assert by_operator[("germany", HOSTILE)] == {"country": "germany", "operator": HOSTILE,
                                                 "free": 0, "rented": 1}
    assert by_operator[("france", "")]["free"] == 1
    [rental] = data["rentals"]["list"]
    assert rental["age_s"] == 3 * 3600 and rental["sms"] == 2 and rental["risk"] == "sim_offline"
    assert data["outbox"]["pending"] == 1 and data["outbox"]["oldest_pending_age_s"] == 600
    assert [a["state"] for a in data["alerts"]] == ["active", "cleared"]


def test_the_seed_keeps_the_tallies_true(db):
    seed(db, START)
    assert tallies.verify(db) == []


def test_an_empty_database_has_whole_zero_series(db):
    data = dashboard.overview(db, START)
    charts = data["charts"]
    assert charts["income"]["credited_kopecks"] == [0] * 90
    assert all(series == [0] * 90 for series in charts["rentals"].values())
    assert charts["push_delay"]["p99_s"] == [None] * 90
    assert data["rentals"]["list"] == [] and data["alerts"] == []
    assert data["offline_sims"] == {"count": 0, "list": []} and data["gateways"] == []
    assert data["income"]["credited_month_kopecks"] == data["income"]["pending_kopecks"] == 0


# ---- what needs doing first: income to date, rentals, offline SIMs, gateways, push URL ----

def _sold(db, number_id: int, finished: dt.datetime, rub: int) -> None:
    db.execute("INSERT INTO operations (number_id, state, finish_status, initial_sum_kopecks,"
               " final_sum_kopecks, created_at, finished_at, sms_accepted_at, country)"
               " VALUES (?, 'closed', 3, 40000, ?, ?, ?, ?, 'germany')",
               (number_id, rub * 100, to_text(finished - dt.timedelta(hours=1)),
                to_text(finished), to_text(finished - dt.timedelta(minutes=50))))


def test_income_today_this_week_this_month_and_pending(db):
    add_numbers(db, START - 200 * DAY, ("+4915100000001", "germany", "telekom"),
                ("+4915100000002", "germany", "o2"))
    at = dt.datetime(2026, 11, 4, 9, tzinfo=dt.timezone.utc)  # a Wednesday
    with db.transaction():
        for day, rub in ((4, 100), (2, 200), (1, 400)):  # Wed, Mon, Sun before it
            _sold(db, 1, at.replace(day=day), rub)
        _sold(db, 1, at.replace(month=10, day=31), 800)  # Saturday, the month before
        db.execute("INSERT INTO operations (number_id, state, initial_sum_kopecks, created_at,"
                   " sms_accepted_at, country) VALUES (2, 'open', 40000, ?, ?, 'germany')",
                   (to_text(at.replace(month=10, day=20)), to_text(at.replace(month=10, day=20))))
    wednesday = dashboard.overview(db, at.replace(hour=12))["income"]
    assert wednesday == {"today": "2026-11-04", "week_from": "2026-11-02",
                         "month_from": "2026-11-01", "credited_today_kopecks": 10000,
                         "credited_week_kopecks": 30000, "credited_month_kopecks": 70000,
                         "pending_kopecks": 40000, "other_currencies": []}
    # On the Sunday the week began in October, the month on that day; later days are not
    # in (they cannot exist yet, but a day after today is never counted).
    sunday = dashboard.overview(db, at.replace(day=1, hour=23))["income"]
    assert (sunday["week_from"], sunday["month_from"]) == ("2026-10-26", "2026-11-01")
    assert (sunday["credited_today_kopecks"], sunday["credited_week_kopecks"],
            sunday["credited_month_kopecks"]) == (40000, 120000, 40000)


def test_open_rentals_come_at_risk_first_then_by_time_left(db):
    from rentbox.config import Rules

    add_numbers(db, START - 200 * DAY, *[(f"+491510000000{i}", "germany", "o2", f"gw1:1.0{i}")
                                         for i in range(1, 6)])
    ids = {}
    with db.transaction():
        for number_id, (name, minutes, accepted, failed) in enumerate((
                ("met", 30, True, False), ("waiting", 5, False, False),
                ("failed", 25, False, True), ("at_risk", 40, True, False),
                ("deciding", 11, False, False)), start=1):
            opened = START - dt.timedelta(minutes=minutes)
            ids[name] = db.execute(
                "INSERT INTO operations (number_id, state, initial_sum_kopecks, created_at,"
                " sms_accepted_at, failed_at, country) VALUES (?, 'open', 40000, ?, ?, ?,"
                " 'germany')", (number_id, to_text(opened),
                                to_text(opened + dt.timedelta(minutes=1)) if accepted else None,
                                to_text(opened + dt.timedelta(minutes=10)) if failed else None)
            ).lastrowid
            if not failed:  # a failed rental's number is free again
                db.execute("UPDATE numbers SET operation_id = ? WHERE id = ?",
                           (ids[name], number_id))
        # The SIMs of the rental at risk and of the failed one (its number is free now).
        db.execute("UPDATE numbers SET seen_by = 'gw1', seen_at = ?, offline = 1,"
                   " offline_since = ?, offline_reason = 'dropped' WHERE id IN (3, 4)",
                   (to_text(START), to_text(START)))
    # A 10-minute guard window, as the server says.
    listed = dashboard.open_rentals(db, START, Rules(guard_s=600))
    assert [r["id"] for r in listed] == [ids[n] for n in ("at_risk", "deciding", "waiting",
                                                           "failed", "met")]
    by_name = {name: next(r for r in listed if r["id"] == i) for name, i in ids.items()}
    assert by_name["waiting"]["window"] == "open"
    assert by_name["waiting"]["window_left_s"] == 300  # 10 min window, opened 5 min ago
    assert by_name["waiting"]["window_ends_at"] == "2026-11-01T12:05:00.000000Z"
    assert by_name["waiting"]["port"] == "gw1:1.02"
    assert [by_name[n]["window"] for n in ("met", "failed", "deciding", "at_risk")] == [
        "met", "failed", "deciding", "met"]
    assert all(by_name[n]["window_left_s"] is None for n in ("met", "failed", "deciding"))
    # Only the rental that holds the number is at risk from its SIM.
    assert [by_name[n]["risk"] for n in ("at_risk", "failed", "met")] == [
        "sim_offline", "failed", None]
    assert dashboard.open_rentals(db, START, Rules(guard_s=600), limit=2) == listed[:2]


def test_offline_sims_rented_first_with_their_ports(db):
    add_numbers(db, START - 200 * DAY, ("+4915100000001", "germany", "o2", "gw1:1.01"),
                ("+4915100000002", "germany", "o2", "gw1:1.02"),
                ("+4915100000003", "germany", "o2", "gw2:1.01"),
                ("+4915100000004", "germany", "o2", None))
    with db.transaction():
        rental = db.execute("INSERT INTO operations (number_id, state, initial_sum_kopecks,"
                            " created_at, country) VALUES (3, 'open', 40000, ?, 'germany')",
                            (to_text(START - DAY),)).lastrowid
        db.execute("UPDATE numbers SET operation_id = ? WHERE id = 3", (rental,))
        for number_id, gateway, reason, minutes in ((1, "gw1", "silent", 90),
                                                   (3, "gw2", "dropped", 5),
                                                   (2, "gw1", "by hand", 30)):
            db.execute("UPDATE numbers SET seen_by = ?, seen_at = ?, offline = 1,"
                       " offline_reason = ?, offline_since = ? WHERE id = ?",
                       (gateway, to_text(START - dt.timedelta(hours=3)), reason,
                        to_text(START - dt.timedelta(minutes=minutes)), number_id))
        db.execute("UPDATE numbers SET enabled = 0 WHERE id = 2")
    data = dashboard.overview(db, START)["offline_sims"]
    assert data["count"] == 3
    assert [(s["number"], s["port"], s["gateway"], s["offline_s"], s["reason"], s["rental"],
             s["state"]) for s in data["list"]] == [
        ("4915100000003", "gw2:1.01", "gw2", 300, "dropped", rental, "rented"),
        ("4915100000001", "gw1:1.01", "gw1", 5400, "silent", None, "free"),
        ("4915100000002", "gw1:1.02", "gw1", 1800, "by hand", None, "disabled")]
    assert dashboard.offline_sims(db, START, limit=1) == data["list"][:1]


def test_gateways_last_report_online_and_offline(db):
    from rentbox.config import Rules

    add_numbers(db, START - 200 * DAY, *[(f"+491510000000{i}", "germany", "o2")
                                         for i in range(1, 7)])
    with db.transaction():
        for number_id, gateway, seen_s, offline, reason in (
                (1, "box-a", 50, 0, None), (2, "box-a", 20, 0, None),
                (3, "box-a", 900, 1, "silent"), (4, "box-b", 700, 0, None),
                (5, "box-c", 4000, 1, "dropped"), (6, "cli", 5000, 0, None)):
            db.execute("UPDATE numbers SET seen_by = ?, seen_at = ?, offline = ?,"
                       " offline_reason = ?, offline_since = ? WHERE id = ?",
                       (gateway, to_text(START - dt.timedelta(seconds=seen_s)), offline,
                        reason, to_text(START - dt.timedelta(seconds=60)) if offline else None,
                        number_id))
    found = dashboard.gateways(db, START, Rules(presence_s=600))
    assert [(g["gateway"], g["last_report_age_s"], g["online"], g["offline"], g["silent"])
            for g in found] == [
        ("box-a", 20, 2, 1, False),
        ("box-b", 700, 1, 0, True),       # nothing for longer than the presence window
        ("box-c", 60, 0, 1, False),       # its last report dropped its SIM a minute ago
        ("cli", 5000, 1, 0, False)]       # set by hand: never silent
    assert found[0]["last_report_at"] == "2026-11-01T11:59:40.000000Z"
    assert not any(g["silent"] for g in dashboard.gateways(db, START, Rules(presence=False)))


def test_push_urls_follow_the_server(db):
    from rentbox import meta

    assert dashboard.overview(db, START)["push"] == {
        "url_set": None, "activation_url_set": None, "services": []}
    meta.put(db, START, meta.SERVER, {"started_at": to_text(START), "push_url_set": False,
                                      "version": "x", "url": "http://127.0.0.1:1"})
    assert dashboard.overview(db, START)["push"]["url_set"] is False
    meta.put(db, START, meta.SERVER, {"started_at": to_text(START), "push_url_set": True,
                                      "activation_push_url_set": False, "services": ["tg"]})
    assert dashboard.overview(db, START)["push"] == {
        "url_set": True, "activation_url_set": False, "services": ["tg"]}


# ---- buyers beside Onlinesim (issue 23) ------------------------------------------------------

HUB_FACTS = [{"name": "smshub", "protocol": "smshub", "path": "/smshub", "push_url_set": False,
              "services": None, "countries": ["france"], "share": 0.0}]


def seed_buyers(db, now: dt.datetime) -> dict:
    """`seed`, and SMSHub: a sale of 12.50 USD today and an open activation in USD on the
    French number; the server serves SMSHub (without a push URL), which called an hour
    ago. Returns the open activation's id."""
    from rentbox import meta, operations
    from rentbox.clock import FixedClock
    from rentbox.config import Buyer, Rules
    from rentbox.protocol import FinishRequest, NumberRequest

    seed(db, now)
    rules = Rules(services=("vk",), buyers=(Buyer("smshub", "smshub", key="k"),))
    clock = FixedClock(now - dt.timedelta(minutes=30))
    sold = operations.open_operation(db, clock, NumberRequest(
        1250, service="vk", buyer="smshub", currency="USD", country="germany"), rules)
    operations.finish_operation(db, clock, FinishRequest(sold.activation_id, 3,
                                                         buyer="smshub"), rules)
    held = operations.open_operation(db, clock, NumberRequest(
        300, service="vk", buyer="smshub", currency="USD", country="france"), rules)
    meta.put(db, now, meta.SERVER, {"started_at": to_text(now - DAY), "push_url_set": True,
                                    "version": "x", "url": "http://127.0.0.1:1",
                                    "guard_s": 1200, "ban_after": 3, "ban_s": 86400,
                                    "buyers": HUB_FACTS})
    meta.put(db, now, meta.last_call_key("smshub"), {
        "at": to_text(now - dt.timedelta(hours=1)), "action": "GET_NUMBER", "actions": {}})
    return held.activation_id


def test_income_per_buyer_and_currency_each_buyer_and_the_buyer_of_each_rental(db):
    held = seed_buyers(db, START)
    data = dashboard.overview(db, START)
    assert [(r["buyer"], r["currency"], r["credited_month_minor"], r["pending_minor"],
             r["open"]) for r in data["buyer_income"]] == [
        ("onlinesim", "RUB", 0, 40000, 1), ("smshub", "USD", 1250, 0, 1)]
    # The roubles hold no dollars; the dollars are named beside them.
    assert data["income"]["credited_today_kopecks"] == 0
    assert data["income"]["other_currencies"] == [{
        "currency": "USD", "credited_today_minor": 1250, "credited_week_minor": 1250,
        "credited_month_minor": 1250, "pending_minor": 0}]
    assert data["buyers"]["policy"] == ["france reserved for smshub"]
    assert [(b["name"], b["open"], b["last_call_age_s"], b["push_url_set"])
            for b in data["buyers"]["list"]] == [("onlinesim", 1, None, True),
                                                 ("smshub", 1, 3600, False)]
    buyer_of = {r["id"]: r["buyer"] for r in data["rentals"]["list"]}
    assert buyer_of.pop(held) == "smshub" and list(buyer_of.values()) == ["onlinesim"]
    assert tallies.verify(db) == []
