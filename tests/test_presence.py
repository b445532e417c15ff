"""SIM presence (presence.py): reports replace per gateway, the window, SMS, by hand, at
risk, presence off, and the claim's indexes."""

import dataclasses
import datetime as dt

import pytest

from rentbox import events, operations, pool, presence, reports
from rentbox.config import Rules
from rentbox.db import Database, migrations, open_database
from rentbox.errors import InvalidInput, NotFound
from rentbox.protocol import FinishRequest, NumberRequest
from rentbox.sms import IncomingSms, accept_sms

from conftest import START, add_numbers, snapshot

RULES = Rules(presence_s=60)
A, B, C, D = "4915123456789", "4917612345678", "4915211111111", "4915222222222"


@pytest.fixture
def box(db):
    """Four German numbers on two gateway ports each of box-1 and box-2."""
    add_numbers(db, START, (A, "germany", "telekom", "1.01"), (B, "germany", "vodafone", "1.02"),
                (C, "germany", "o2", "2.01"), (D, "germany", "o2", "2.02"))
    return db


def report(db, clock, gateway="box-1", numbers=None, ports=None, rules=RULES):
    return presence.report(db, clock, rules, presence.Report(
        gateway, numbers=tuple(numbers) if numbers is not None else None,
        ports=tuple(ports) if ports is not None else None))


def offered(db, clock, rules=RULES) -> int:
    counts = operations.available_counts(db, clock.now(), rules).rent
    return counts.get("germany", {}).get("any", 0)


def rent(db, clock, rules=RULES):
    return operations.open_operation(db, clock, NumberRequest(sum_kopecks=40000), rules)


def sim(db, number) -> dict:
    return db.row("SELECT offline, offline_reason, seen_by, seen_at FROM numbers"
                  " WHERE number = ?", (number,))


def kinds(db, number) -> list[str]:
    row = pool.find_number(db, number)
    return [e["kind"] for e in events.for_number(db, row["id"]) if e["kind"].startswith("sim_")]


def test_numbers_no_source_reported_are_offered_as_before(box, clock):
    assert offered(box, clock) == 4
    clock.advance(10 * 86400)  # no window applies to them
    assert offered(box, clock) == 4
    assert presence.counts(box) == {"online": 0, "offline": 0, "unwatched": 4}


def test_a_report_governs_its_numbers_and_replaces_the_previous_one(box, clock):
    answer = report(box, clock, numbers=["+49 151 23456789"], ports=["1.02"])
    assert answer.as_dict() == {"status": "SUCCESS", "online": 2, "keep": [], "missing": [],
                                "unknown": [], "ambiguous": []}
    assert sim(box, A)["seen_by"] == "box-1" and sim(box, C)["seen_by"] is None
    assert kinds(box, A) == ["sim_watched"]
    # The next report lists only A: B goes offline at once, not when the window ends.
    clock.advance(5)
    assert report(box, clock, numbers=[A]).online == 1
    assert sim(box, B) == {"offline": 1, "offline_reason": "dropped", "seen_by": "box-1",
                           "seen_at": sim(box, B)["seen_at"]}
    assert kinds(box, B) == ["sim_watched", "sim_offline"]
    assert offered(box, clock) == 3  # A, and the two numbers no gateway reports
    # Another gateway's report leaves box-1's numbers alone.
    report(box, clock, gateway="box-2", ports=["2.01"])
    assert sim(box, A)["offline"] == 0 and sim(box, B)["offline"] == 1
    # B is back in a port.
    report(box, clock, numbers=[A, B])
    assert sim(box, B)["offline"] == 0 and kinds(box, B)[-1] == "sim_online"
    assert offered(box, clock) == 4


def test_the_window_ends_and_a_heartbeat_brings_silent_numbers_back(box, clock):
    report(box, clock, ports=["1.01", "1.02"])
    report(box, clock, ports=["1.01"])  # 1.02 dropped
    clock.advance(59)
    assert offered(box, clock) == 3
    clock.advance(2)  # box-1 silent for 61 s: its window of 60 s has ended
    assert offered(box, clock) == 2
    assert rent(box, clock).number in (C, D)
    assert sim(box, A)["offline_reason"] == "silent"
    # A heartbeat (no lists) refreshes the previous report: A is back, B stays dropped.
    answer = report(box, clock)
    assert (answer.online, sim(box, A)["offline"], sim(box, B)["offline"]) == (1, 0, 1)
    assert kinds(box, A) == ["sim_watched", "sim_offline", "sim_online"]


def test_an_unknown_gateway_heartbeat_changes_nothing(box, clock):
    before = snapshot(box)
    assert report(box, clock, gateway="box-9").online == 0
    assert snapshot(box) == before


def test_answer_names_unknown_and_ambiguous_items_and_uses_the_rest(box, clock, caplog):
    add_numbers(box, START, ("+4915233333333", "germany", "o2", "9.9"),
                ("+4915244444444", "germany", "o2", "9.9"))
    answer = report(box, clock, numbers=[A, "12", "+1 202 555 0100", "not a number"],
                    ports=["1.02", "7.77", "9.9"])
    assert answer.online == 2
    assert answer.unknown == ["12", "not a number", "+1 202 555 0100", "7.77"]
    assert answer.ambiguous == ["9.9"]
    assert "match no pool number" in caplog.text
    caplog.clear()
    report(box, clock, numbers=[A, "12", "+1 202 555 0100", "not a number"],
           ports=["1.02", "7.77", "9.9"])
    assert "match no pool number" not in caplog.text  # logged once, not at every report


def test_keep_and_missing_name_the_rented_numbers(box, clock):
    report(box, clock, ports=["1.01", "1.02", "2.01", "2.02"])
    rentals = {rent(box, clock).number for _ in range(2)}  # idle longest first: A and B
    assert rentals == {A, B}
    answer = report(box, clock, ports=["1.01", "2.01", "2.02"])
    assert (answer.keep, answer.missing) == ([A], [B])
    # The rental on B is at risk, not closed.
    at_risk = presence.at_risk(box)
    assert [(r["number"], r["offline_reason"]) for r in at_risk] == [(B, "dropped")]
    operation = box.row("SELECT id, state FROM operations WHERE number_id ="
                        " (SELECT id FROM numbers WHERE number = ?)", (B,))
    assert operation["state"] == "open"
    offline_event = events.for_number(box, pool.find_number(box, B)["id"])[-1]
    assert offline_event["kind"] == "sim_offline"
    assert offline_event["operation_id"] == operation["id"]
    assert offline_event["detail"]["at_risk"] is True
    listed = {r["number"]: r for r in pool.list_numbers(box)}
    assert (listed[B]["state"], listed[B]["sim"]) == ("rented, at risk", "offline")
    assert (listed[A]["state"], listed[A]["sim"]) == ("rented", "online")
    ops = {r["number"]: r for r in operations.list_operations(box, open_only=True)}
    assert ops[B]["at_risk"] == 1 and ops[A]["at_risk"] == 0
    facts = reports.status(box, clock.now())
    assert any(f"+{B} (rental {operation['id']})" in w for w in facts["warnings"])
    assert facts["presence"]["offline"] == 1
    # FINISH still closes it as usual, and the number is free but offline.
    operations.finish_operation(box, clock, FinishRequest(activation_id=operation["id"], status=3,
                                                     sum_kopecks=40000), RULES)
    assert pool.find_number(box, B)["state"] == "offline"
    assert report(box, clock, ports=["1.01", "2.01", "2.02"]).missing == []


def test_an_sms_proves_a_watched_sim_is_present(box, clock):
    report(box, clock, numbers=[A])
    report(box, clock, numbers=[])  # box-1 has nothing now: A is offline
    assert sim(box, A)["offline"] == 1
    accept_sms(box, clock, IncomingSms(source="api", to=A, sender="x", text="hi"), RULES)
    assert sim(box, A)["offline"] == 0 and kinds(box, A)[-1] == "sim_online"
    # An SMS does not start watching a number no gateway reports.
    accept_sms(box, clock, IncomingSms(source="api", to=C, sender="x", text="hi"), RULES)
    assert sim(box, C)["seen_by"] is None


def test_by_hand_is_all_or_nothing(box, clock):
    now = clock.now()
    assert presence.set_by_hand(box, now, RULES, [A, "+49 176 1234 5678"], online=False) == 2
    assert sim(box, A) == {"offline": 1, "offline_reason": "by hand", "seen_by": "cli",
                           "seen_at": None}
    assert offered(box, clock) == 2
    before = snapshot(box)
    with pytest.raises(NotFound, match=r"\+4915299999999 is not in the pool"):
        presence.set_by_hand(box, now, RULES, [A, "+4915299999999"], online=True)
    with pytest.raises(InvalidInput):
        presence.set_by_hand(box, now, RULES, [A, "12"], online=True)
    assert snapshot(box) == before
    assert presence.set_by_hand(box, now, RULES, [A], online=True) == 1
    assert sim(box, A)["offline"] == 0 and sim(box, A)["seen_by"] == "cli"
    clock.advance(61)  # by hand counts for the window like any report
    assert offered(box, clock) == 2


def test_presence_off_offers_everything_and_refuses_reports(box, clock):
    report(box, clock, ports=["1.01", "1.02"])
    report(box, clock, ports=["1.01"])
    assert offered(box, clock) == 3
    off = dataclasses.replace(RULES, presence=False)
    assert offered(box, clock, off) == 4  # the count applies what is due: B comes back
    assert kinds(box, B)[-1] == "sim_online"
    clock.advance(3600)
    assert offered(box, clock, off) == 4
    with pytest.raises(presence.PresenceOff):
        report(box, clock, ports=["1.01"], rules=off)
    with pytest.raises(presence.PresenceOff):
        presence.set_by_hand(box, clock.now(), off, [A], online=False)
    accept_sms(box, clock, IncomingSms(source="api", to=A, sender="x", text="hi"), off)
    assert sim(box, A)["seen_at"] < clock.now().isoformat()  # not refreshed


def test_the_claim_never_issues_a_number_out_of_its_window(box, clock, monkeypatch):
    """Even when more SIMs fell silent than one batch turns offline."""
    report(box, clock, ports=["1.01", "1.02", "2.01", "2.02"])
    clock.advance(61)
    monkeypatch.setattr(presence, "EXPIRE_BATCH", 1)
    assert rent(box, clock) is None  # one batch turned one offline; three still due
    assert box.execute("SELECT count(*) FROM numbers WHERE offline = 1").fetchone()[0] == 1
    # The count catches up in batches, each its own transaction.
    assert offered(box, clock) == 0
    assert box.execute("SELECT count(*) FROM numbers WHERE offline = 1").fetchone()[0] == 4


def test_smsgate_ping_stands_for_the_device_until_it_lists_its_sims(db, clock):
    add_numbers(db, START, (A, "germany", "o2", "dev1:1"), (B, "germany", "o2", "dev1:2"),
                (C, "germany", "o2", "dev10:1"), (D, "germany", "o2", None))
    ping = presence.Report("smsgate:dev1", device="dev1")
    assert presence.report(db, clock, RULES, ping).online == 2  # dev1:1, dev1:2; not dev10
    started = presence.Report("smsgate:dev1", ports=("dev1:1",), device="dev1",
                              port_hints=(("dev1:2", B), ("dev1:3", "+" + D)))
    assert presence.report(db, clock, RULES, started).online == 1
    assert sim(db, B)["offline"] == 1
    # D has no port in the pool: a hint, not a guess.
    assert presence.unported(db) == {D: {"port": "dev1:3", "gateway": "smsgate:dev1",
                                         "at": db.row("SELECT updated_at FROM meta WHERE"
                                                      " key = ?", (presence.UNPORTED,))[
                                             "updated_at"]}}
    assert sim(db, D)["seen_by"] is None
    assert any("no port" in w for w in reports.status(db, clock.now())["warnings"])
    # Now a ping is a heartbeat of that list.
    assert presence.report(db, clock, RULES, ping).online == 1


def test_gateway_names_are_checked(box, clock):
    for bad in ["", " ", "x" * 101, "box\n1", 5, None]:
        with pytest.raises(InvalidInput, match="gateway must be"):
            presence.report(box, clock, RULES, presence.Report(bad))


def test_the_claim_and_the_expiry_read_their_indexes(box, clock):
    def plan(sql, params=()):
        return " ".join(r[3] for r in box.execute("EXPLAIN QUERY PLAN " + sql, params))

    claim = plan(f"SELECT id FROM numbers WHERE {pool.FREE} AND numbers.country = ?"
                 " AND NOT (numbers.seen_by IS NOT NULL AND numbers.seen_at < ?)"
                 " ORDER BY idle_since, id LIMIT 1", ("germany", "x"))
    assert "numbers_free_by_country" in claim and "TEMP B-TREE" not in claim
    assert "numbers_presence_due" in plan(f"SELECT id FROM numbers WHERE {presence.DUE}"
                                          " ORDER BY seen_at LIMIT 5", ("x",))
    assert "numbers_by_gateway" in plan("SELECT id FROM numbers WHERE seen_by = ?"
                                        " AND offline = 0", ("box-1",))
    assert "numbers_by_port" in plan("SELECT id FROM numbers WHERE port = ?"
                                     " AND removed_at IS NULL", ("1.01",))


def test_an_existing_database_keeps_offering_every_number(tmp_path):
    """A database from before presence (m004): every number is offered after the upgrade,
    with presence on or off."""
    path = tmp_path / "old.db"
    old = Database(path)
    with old.transaction():
        migrations.apply(old, stop_before="m005_sim_presence")
    stamp = "2026-01-01T00:00:00.000000Z"
    for number in (A, B):
        old.execute("INSERT INTO numbers (number, country, operator, port, idle_since,"
                    " created_at, updated_at) VALUES (?, 'germany', 'o2', '1.01', ?, ?, ?)",
                    (number, stamp, stamp, stamp))
    old.close()
    db = open_database(path)
    later = START + dt.timedelta(days=30)
    for rules in (RULES, dataclasses.replace(RULES, presence=False)):
        assert operations.available_counts(db, later, rules).rent == {
            "germany": {"any": 2, "o2": 2}}
    assert presence.counts(db) == {"online": 0, "offline": 0, "unwatched": 2}


# ---- a report is the authority for its gateway's ports and box (issue 21, items 6 and 10) --


def test_a_gateway_takes_charge_of_the_ports_its_name_names(db, clock):
    """A SIM-bank controller named `bank1` lists the numbers it has in ports now; the pool
    numbers on its other ports (`bank1:…`) are offline, not offered as "not watched"."""
    add_numbers(db, START, (A, "germany", "o2", "bank1:1"), (B, "germany", "o2", "bank1:2"),
                (C, "germany", "o2", "bank1"), (D, "germany", "o2", "bank10:1"))
    assert report(db, clock, gateway="bank1", numbers=[A]).online == 1
    assert sim(db, B) == {"offline": 1, "offline_reason": presence.NOT_REPORTED,
                          "seen_by": "bank1", "seen_at": None}
    assert sim(db, C)["offline_reason"] == presence.NOT_REPORTED  # the port `bank1` itself
    assert sim(db, D)["seen_by"] is None  # bank10 is another gateway's
    assert kinds(db, B) == ["sim_offline"]
    assert offered(db, clock) == 2 and presence.counts(db) == {
        "online": 1, "offline": 2, "unwatched": 1}
    # Its next report that lists B brings it back, as any report does.
    report(db, clock, gateway="bank1", numbers=[A, B])
    assert sim(db, B)["offline"] == 0 and kinds(db, B)[-1] == "sim_online"


def test_a_port_without_a_sim_in_a_first_report_is_offline(db, clock):
    """An Ejoin port state `0 No SIM card` is the report of the port's own gateway
    (`ejoin:<port>`) with nothing online: the number on that port was never watched, and
    now is offline (before: "not watched", and offered)."""
    add_numbers(db, START, (A, "germany", "o2", "1.01"), (B, "germany", "o2", "1.02"))
    report(db, clock, gateway="ejoin:1.01", ports=["1.01"])
    report(db, clock, gateway="ejoin:1.02", ports=[])
    assert (sim(db, A)["offline"], sim(db, B)["offline"]) == (0, 1)
    assert sim(db, B)["offline_reason"] == presence.NOT_REPORTED
    assert offered(db, clock) == 1


def test_a_box_that_reports_some_ports_takes_charge_of_its_others(db, clock):
    """Ports `gw1:1.01` … are on box gw1: once one of them is reported, the box's numbers no
    gateway reports are offline (a SIM bank that lists only its active cards); another
    box's stay not watched."""
    add_numbers(db, START, (A, "germany", "o2", "gw1:1.01"), (B, "germany", "o2", "gw1:1.02"),
                (C, "germany", "o2", "gw1:2.01"), (D, "germany", "o2", "gw2:1.01"))
    report(db, clock, gateway="ejoin:gw1:1.01", ports=["gw1:1.01"])
    assert [sim(db, n)["offline"] for n in (A, B, C)] == [0, 1, 1]
    assert sim(db, D)["seen_by"] is None
    # Another port of the box reports online: its number is back, the others stay offline.
    report(db, clock, gateway="ejoin:gw1:2.01", ports=["gw1:2.01"])
    assert [sim(db, n)["offline"] for n in (A, B, C)] == [0, 1, 0]
    # A number reported by another port's gateway is that gateway's business.
    report(db, clock, gateway="ejoin:gw1:1.01", ports=["gw1:1.01"])
    assert sim(db, C) == {"offline": 0, "offline_reason": None, "seen_by": "ejoin:gw1:2.01",
                          "seen_at": sim(db, C)["seen_at"]}


def test_a_number_of_a_box_named_by_a_reported_number_is_in_its_charge_too(db, clock):
    """A SIM bank that reports numbers, not ports: the ports of the numbers it lists name its
    box."""
    add_numbers(db, START, (A, "germany", "o2", "sb:1"), (B, "germany", "o2", "sb:2"),
                (C, "germany", "o2", "7.01"))
    report(db, clock, gateway="simbank", numbers=[A])
    assert (sim(db, B)["offline_reason"], sim(db, C)["seen_by"]) == (
        presence.NOT_REPORTED, None)


def test_a_heartbeat_takes_charge_of_a_number_imported_after_the_report(db, clock):
    add_numbers(db, START, (A, "germany", "o2", "dev1:1"))
    report(db, clock, gateway="smsgate:dev1", ports=["dev1:1"])
    add_numbers(db, START, (B, "germany", "o2", "dev1:2"))
    assert sim(db, B)["seen_by"] is None  # not reported yet: nothing says otherwise
    assert report(db, clock, gateway="smsgate:dev1").online == 1  # a ping
    assert sim(db, B)["offline_reason"] == presence.NOT_REPORTED


def test_a_port_several_numbers_share_is_left_alone_by_its_report(db, clock):
    """A SIM bank's shared port holds whichever card: listing the port says nothing about
    which of its numbers is in it."""
    add_numbers(db, START, (A, "germany", "o2", "gw1:9"), (B, "germany", "o2", "gw1:9"),
                (C, "germany", "o2", "gw1:8"))
    answer = report(db, clock, gateway="ejoin:gw1:9", ports=["gw1:9"])
    assert answer.ambiguous == ["gw1:9"]
    assert (sim(db, A)["seen_by"], sim(db, B)["seen_by"]) == (None, None)
    assert sim(db, C)["offline_reason"] == presence.NOT_REPORTED


def test_a_rented_number_not_reported_by_its_box_is_at_risk(db, clock):
    add_numbers(db, START, (A, "germany", "o2", "gw1:1.01"), (B, "germany", "o2", "gw1:1.02"))
    rentals = {rent(db, clock).number for _ in range(2)}
    assert rentals == {A, B}
    answer = report(db, clock, gateway="ejoin:gw1:1.01", ports=["gw1:1.01"])
    assert [r["number"] for r in presence.at_risk(db)] == [B]
    assert answer.missing == [B]  # "bring it back": this gateway is in charge of it now


@pytest.mark.parametrize("name, own, box", [
    ("box-1", "box-1", None), ("ejoin:gw1:1.01", "gw1:1.01", "gw1:"),
    ("ejoin:1.01", "1.01", None), ("dinstar:dbd2-0325-0044-0088:1", "dbd2-0325-0044-0088:1",
                                   "dbd2-0325-0044-0088:"),
    ("goip:goip1-1", "goip1-1", None), ("smsgate:_x3kPq9RmT2vLw8ZyB4nC",
                                        "_x3kPq9RmT2vLw8ZyB4nC", None),
])
def test_the_ports_and_box_a_gateway_name_names(name, own, box):
    assert (presence.own_ports(name), presence.box_of(presence.own_ports(name))) == (own, box)


def test_taking_charge_reads_index_ranges(box, clock):
    """Flat in pool size: a report reads its own ports and its box's unwatched numbers
    through index ranges (numbers_by_port, numbers_unwatched_by_port)."""
    def plan(sql, params=()):
        return " ".join(r[3] for r in box.execute("EXPLAIN QUERY PLAN " + sql, params))

    own = plan("SELECT id FROM numbers WHERE (port = ? OR (port > ? AND port < ?))"
               " AND removed_at IS NULL AND offline = 0", ("gw1", "gw1:", "gw1;"))
    assert own.count("numbers_by_port") == 2 and "SCAN" not in own
    unwatched = plan("SELECT id FROM numbers WHERE seen_by IS NULL AND removed_at IS NULL"
                     " AND port > ? AND port < ?", ("gw1:", "gw1;"))
    assert "numbers_unwatched_by_port" in unwatched and "SCAN" not in unwatched
