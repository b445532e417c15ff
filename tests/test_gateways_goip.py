"""The GoIP SMS server (rentbox/gateways/goip.py): the protocol, and a real server over UDP."""

import dataclasses
import logging
import socket
import threading

import pytest

from rentbox import reports, sms
from rentbox.config import Rules
from rentbox.db import Database
from rentbox.errors import Conflict, InvalidInput, Unavailable
from rentbox.gateways import goip
from rentbox.server import Server

from conftest import EXAMPLES, START, add_numbers, rent_number, snapshot, wait_until

A = "79123456789"
PASSWORD = "s3cret-goip"
KEEP_ALIVE = (f"req:57;id:goip1-1;pass:{PASSWORD};num:+79123456789;signal:23;gsm_status:LOGIN;"
              "voip_status:LOGOUT;imei:862345678901234;imsi:250021234567890;"
              "iccid:8970102123456789012;")


def receive(recvid="1764151200", text="Ваш код: 3141; никому: не говорите", password=PASSWORD,
            extra="") -> bytes:
    return (f"RECEIVE:{recvid};id:goip1-1;password:{password};srcnum:+79990001122;{extra}"
            f"msg:{text}").encode()


@pytest.fixture
def handler():
    return goip.GoipHandler(PASSWORD, Rules())


@pytest.fixture
def line(db):
    add_numbers(db, START, (A, "russia", "megafon", "goip1-1"))
    return db


def sims(db):
    return db.row("SELECT offline, seen_by FROM numbers WHERE number = ?", (A,))


# ---- keep-alives -----------------------------------------------------------------------


def test_a_keep_alive_is_answered_and_is_presence(handler, db, clock, line):
    outcome = handler.handle(db, clock, KEEP_ALIVE.encode())
    assert outcome == goip.Outcome(b"reg:57;status:200;")
    assert sims(db) == {"offline": 0, "seen_by": "goip:goip1-1"}
    logged_out = KEEP_ALIVE.replace("gsm_status:LOGIN", "gsm_status:LOGOUT")
    assert handler.handle(db, clock, logged_out.encode()).reply == b"reg:57;status:200;"
    assert sims(db) == {"offline": 1, "seen_by": "goip:goip1-1"}


def test_a_keep_alive_with_only_the_documented_minimum(handler, db, clock, line):
    outcome = handler.handle(db, clock, f"req:1;id:goip1-1;pass:{PASSWORD};".encode())
    assert outcome.reply == b"reg:1;status:200;"
    assert sims(db)["seen_by"] == "goip:goip1-1"


def test_a_wrong_password_is_refused_logged_once_and_never_shown(handler, db, clock, line,
                                                                 caplog):
    before = snapshot(db)
    wrong = KEEP_ALIVE.replace(PASSWORD, "guess")
    with caplog.at_level(logging.DEBUG, logger="rentbox"):
        for _ in range(3):
            assert handler.handle(db, clock, wrong.encode(), "10.0.0.7:5060") == goip.Outcome(
                b"reg:57;status:400;")
        refused = handler.handle(db, clock, receive(password="guess"))
        no_password = handler.handle(db, clock, KEEP_ALIVE.replace(f"pass:{PASSWORD};",
                                                                   "").encode())
    assert refused == goip.Outcome(b"RECEIVE 1764151200 ERROR wrong password")
    assert no_password.reply == b"reg:57;status:400;"
    assert snapshot(db) == before and db.rows("SELECT id FROM sms") == []
    assert [r.getMessage() for r in caplog.records] == [
        "GoIP line goip1-1 (10.0.0.7:5060): wrong password, refused; set the SMS server "
        "password of the line to RENTBOX_GOIP_PASSWORD"]
    assert "guess" not in caplog.text


def test_a_sim_number_other_than_the_pool_is_logged_and_shown_in_status(handler, db, clock,
                                                                        line, caplog):
    other = KEEP_ALIVE.replace("num:+79123456789", "num:+79039998877")
    with caplog.at_level(logging.WARNING, logger="rentbox.gateways"):
        for _ in range(2):  # said once, not at every keep-alive
            handler.handle(db, clock, other.encode())
    assert [r.getMessage() for r in caplog.records] == [
        "goip:goip1-1 says the SIM in port goip1-1 has the number +79039998877, but the pool "
        f"has +{A} on that port: SMS on this port go to +{A}; correct the port in the pool "
        "CSV or the number in the box"]
    assert [w for w in reports.status(db, clock.now())["warnings"] if "goip1-1" in w] == [
        "a gateway reports other numbers than the pool on its ports (port goip1-1: "
        f"+79039998877 reported, +{A} in the pool): SMS there go to the pool's number; "
        "correct the pool CSV or the box"]
    national = KEEP_ALIVE.replace("num:+79123456789", "num:89123456789")  # the same SIM
    handler.handle(db, clock, national.encode())
    assert not [w for w in reports.status(db, clock.now())["warnings"] if "goip1-1" in w]


def test_with_presence_off_a_keep_alive_is_answered_and_ignored(db, clock, line):
    before = snapshot(db)
    off = goip.GoipHandler(PASSWORD, Rules(presence=False))
    assert off.handle(db, clock, KEEP_ALIVE.encode()).reply == b"reg:57;status:200;"
    assert snapshot(db) == before


# ---- received SMS ----------------------------------------------------------------------


def test_an_sms_is_acknowledged_once_committed_and_a_retransmission_again(handler, db, clock,
                                                                        line, db_path):
    first = handler.handle(db, clock, receive())
    assert first.reply == b"RECEIVE 1764151200 OK" and not first.accepted.duplicate
    # Acknowledged only after the commit: another connection already sees it.
    other = Database(db_path)
    try:
        assert other.rows("SELECT number, port, sender, text, source FROM sms") == [
            {"number": A, "port": "goip1-1", "sender": "+79990001122",
             "text": "Ваш код: 3141; никому: не говорите", "source": "goip"}]
    finally:
        other.close()
    again = handler.handle(db, clock, receive())
    assert again.reply == b"RECEIVE 1764151200 OK" and again.accepted.duplicate
    assert db.execute("SELECT count(*) FROM sms").fetchone()[0] == 1


def test_firmware_that_adds_the_smsc(handler, db, clock, line):
    outcome = handler.handle(db, clock, receive("77", "VK: 662 901", extra="smscnum:+7916;"))
    assert outcome.reply == b"RECEIVE 77 OK"
    assert db.row("SELECT text FROM sms")["text"] == "VK: 662 901"


def test_an_sms_that_cannot_be_stored_yet_is_not_acknowledged(handler, db, clock, line,
                                                              monkeypatch):
    def disk_full(*args):
        raise Unavailable("the disk is full")

    monkeypatch.setattr(sms, "accept_sms", disk_full)
    assert handler.handle(db, clock, receive()) == goip.Outcome(None)


@pytest.mark.parametrize("data, reply", [
    (b"RECEIVE:9;id:goip1-1;password:" + PASSWORD.encode() + b";srcnum:;msg:x",
     b"RECEIVE 9 ERROR the sender ('from') is required"),
    (b"RECEIVE:9;id:goip1-1;password:" + PASSWORD.encode() + b";srcnum:+7999",
     b"RECEIVE 9 ERROR msg is missing"),
    (b"STATE:5;id:goip1-1;password:" + PASSWORD.encode() + b";gsm_remain_state:IDLE",
     b"STATE 5 OK"),
    (b"DELIVER:6;id:goip1-1;password:" + PASSWORD.encode() + b";sms_no:1;state:0;num:1",
     b"DELIVER 6 OK"),
])
def test_other_answers(handler, db, clock, line, data, reply):
    assert handler.handle(db, clock, data).reply == reply


@pytest.mark.parametrize("data", [
    b"", b"hello", b"req:;id:goip1-1", b"req:1;pass:" + PASSWORD.encode(),
    b"RECEIVE:5;password:" + PASSWORD.encode() + b";srcnum:1;msg:no line id",
    b"RECEIVE:5;id:bad id;password:" + PASSWORD.encode() + b";srcnum:1;msg:x",
    b"\xff\xfe\x00req", b"req:" + b"9" * 100 + b";id:goip1-1",
])
def test_a_malformed_datagram_is_logged_without_its_password_and_ignored(
        handler, db, clock, line, caplog, data):
    before = snapshot(db)
    with caplog.at_level(logging.WARNING, logger="rentbox.gateways"):
        assert handler.handle(db, clock, data, "10.0.0.7:5060") == goip.Outcome(None)
    assert snapshot(db) == before and db.rows("SELECT id FROM sms") == []
    [record] = caplog.records
    assert record.getMessage().startswith("GoIP datagram from 10.0.0.7:5060 ignored: ")
    assert PASSWORD not in caplog.text


# A CELLS report as a GoIP line sends it, byte for byte (capture in NiceLabs/dbltek-goip-agent,
# sms/udpstack/notify_test.go: line "goip-1", password "goip"). It is not in GoIP's SMS
# interface document, and the line sends it again when it gets no answer (issue 21).
CELLS = b"CELLS:34347;id:goip-1;password:goip;lists:689,638,783,785,640,"


def test_a_cells_report_is_acknowledged_so_that_the_line_stops_repeating_it(db, clock, line,
                                                                            caplog):
    before = snapshot(db)
    real = goip.GoipHandler("goip", Rules())
    with caplog.at_level(logging.INFO, logger="rentbox.gateways"):
        for _ in range(2):
            assert real.handle(db, clock, CELLS, "10.0.0.7:5060") == goip.Outcome(
                b"CELLS 34347 OK")
    assert snapshot(db) == before  # acknowledged, not used
    assert [r.getMessage() for r in caplog.records] == [
        "GoIP line goip-1 talks to rentbox from 10.0.0.7:5060"]
    wrong = goip.GoipHandler("other", Rules())
    assert wrong.handle(db, clock, CELLS).reply == b"CELLS 34347 ERROR wrong password"


def test_reports_rentbox_does_not_use_are_ignored_quietly(handler, db, clock, line, caplog):
    with caplog.at_level(logging.INFO, logger="rentbox.gateways"):
        assert handler.handle(db, clock, b"CELLINFO:1;id:goip1-1;x:y") == goip.Outcome(None)
    assert caplog.records == []


# ---- junk from anyone: warnings limited per source address -----------------------------

HELD_BACK = "s not logged (at most one per 60 s per address)"


def junk(count: int, seed: int = 7) -> list[bytes]:
    """Random datagrams, as a scanner or a fuzzer sends (a fixed seed: the same each run)."""
    import random

    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(0, 200)) for _ in range(count)]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name == "rentbox.gateways.goip"]


def test_a_flood_of_junk_is_one_warning_then_one_a_minute_with_the_count(handler, db, clock,
                                                                         line, caplog):
    """The issue's flood: 5,000 random datagrams gave 2,976 warnings."""
    before = snapshot(db)
    with caplog.at_level(logging.DEBUG, logger="rentbox"):
        for i, data in enumerate(junk(5000)):
            assert handler.handle(db, clock, data, f"10.0.0.7:{1024 + i}").reply is None
        [first] = warnings(caplog)
        assert first.startswith("GoIP datagram from 10.0.0.7:")
        clock.advance(61)
        handler.log_held_back(clock.now())
    [first, held_back] = warnings(caplog)
    count, _, rest = held_back.removeprefix("GoIP: ").partition(" ")
    assert rest == "more warning(s) about datagrams from 10.0.0.7 in the last 61 " + HELD_BACK
    assert int(count) > 2000
    assert snapshot(db) == before


def test_junk_warnings_per_address_and_their_counts(handler, db, clock, line, caplog):
    with caplog.at_level(logging.WARNING, logger="rentbox"):
        for i in range(100):
            for address in ("10.0.0.7", "10.0.0.8"):
                handler.handle(db, clock, b"junk %d" % i, f"{address}:{5060 + i}")
        assert [w.split(": ")[0] for w in warnings(caplog)] == [
            "GoIP datagram from 10.0.0.7:5060 ignored", "GoIP datagram from 10.0.0.8:5060 ignored"]
        clock.advance(30)
        handler.handle(db, clock, b"junk", "10.0.0.7:9")
        handler.log_held_back(clock.now())  # 10.0.0.8 is quiet, but not for a minute yet
        assert len(warnings(caplog)) == 2
        clock.advance(31)
        caplog.clear()
        # A minute after its last one logged, the next one is, with the count since.
        handler.handle(db, clock, b"junk", "10.0.0.7:9")
        # An address gone quiet for a minute has its count logged on its own.
        handler.log_held_back(clock.now())
        assert warnings(caplog) == [
            "GoIP datagram from 10.0.0.7:9 ignored: it does not start with <command>:<id> "
            "(junk); 100 more warning(s) about datagrams from 10.0.0.7 in the last 61 "
            + HELD_BACK,
            "GoIP: 99 more warning(s) about datagrams from 10.0.0.8 in the last 61 "
            + HELD_BACK]
        caplog.clear()
        clock.advance(61)
        handler.log_held_back(clock.now())
        assert warnings(caplog) == []  # nothing held back since
    assert handler._warnings.tracked == 0  # and nothing remembered


def test_spoofed_addresses_share_one_budget_past_the_tracked_ones(handler, db, clock, line,
                                                                  caplog):
    tracked = goip.MAX_WARNED_SOURCES
    with caplog.at_level(logging.WARNING, logger="rentbox"):
        for i in range(5000):
            handler.handle(db, clock, b"junk", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:1")
        assert len(warnings(caplog)) == tracked + 1  # each tracked address, then the rest
        assert handler._warnings.tracked <= tracked + 1
        caplog.clear()
        clock.advance(61)
        handler.log_held_back(clock.now())
    assert warnings(caplog) == [
        f"GoIP: {5000 - tracked - 1} more warning(s) about datagrams from other addresses in "
        "the last 61 " + HELD_BACK]


def test_wrong_passwords_for_made_up_lines_are_limited_too(handler, db, clock, line, caplog):
    with caplog.at_level(logging.WARNING, logger="rentbox"):
        for i in range(1000):
            outcome = handler.handle(db, clock, b"req:1;id:line%d;pass:guess;" % i,
                                     "10.0.0.9:5060")
            assert outcome.reply == b"reg:1;status:400;"
        assert [w.split(" (")[0] for w in warnings(caplog)] == ["GoIP line line0"]
        clock.advance(61)
        # A line whose warning was held back is named in a later minute.
        handler.handle(db, clock, b"req:1;id:line5;pass:guess;", "10.0.0.9:5060")
    assert warnings(caplog)[1] == (
        "GoIP line line5 (10.0.0.9:5060): wrong password, refused; set the SMS server "
        "password of the line to RENTBOX_GOIP_PASSWORD; 999 more warning(s) about datagrams "
        "from 10.0.0.9 in the last 61 " + HELD_BACK)


def test_redacted_hides_both_spellings_of_the_password():
    assert goip.redacted(b"req:1;id:a;pass:p1;x:y;password:p2") == (
        "req:1;id:a;pass:***;x:y;password:***")


# ---- the listener inside rentbox serve ---------------------------------------------------


def udp_exchange(address, *datagrams: bytes) -> list[bytes]:
    """Send each datagram and read its answer (every wait has a timeout)."""
    answers = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for datagram in datagrams:
            client.sendto(datagram, address)
            answers.append(client.recvfrom(65535)[0])
    return answers


def test_a_real_server_acknowledges_and_pushes_each_sms_once(start_server, db, line, onlinesim):
    server = start_server(push_url=onlinesim.url, goip_port=0, goip_host="127.0.0.1",
                          goip_password=PASSWORD)
    rent_number(server)
    answers = udp_exchange(server.goip.address, KEEP_ALIVE.encode(), receive(),
                           receive(),  # the box did not get the acknowledgement
                           receive(password="guess"))
    assert answers == [b"reg:57;status:200;", b"RECEIVE 1764151200 OK",
                       b"RECEIVE 1764151200 OK", b"RECEIVE 1764151200 ERROR wrong password"]
    onlinesim.wait_for(1)
    assert wait_until(lambda: db.row("SELECT push_state FROM sms")["push_state"] == "delivered")
    assert [(b["phone"], b["phoneFrom"], b["text"]) for b in onlinesim.bodies()] == [
        (A, "+79990001122", "Ваш код: 3141; никому: не говорите")]
    assert len(onlinesim.requests) == 1
    assert sims(db) == {"offline": 0, "seen_by": "goip:goip1-1"}
    server.stop()
    assert "rentbox-goip" not in [t.name for t in threading.enumerate()]


# A long SMS as a GoIP line delivers it: one RECEIVE per part, each with its own recvid and
# nothing that marks it as a part (GoIP's SMS interface, RECEIVE: recvid, id, password,
# srcnum, msg; NiceLabs/dbltek-goip-agent docs/protocol-stack/sms-interface-en.pdf, and
# iivorait/GoIP-SMS-receiver readme.md: "each of the parts is a separate message with a
# different $receiveId", parts "sometimes" 30 s apart). The first part is a full GSM-7 part
# (153 characters); the code 481290 straddles the two, as in examples/gateways/.
LONG_SMS = ("Example: someone is signing in to your account from a new device (Chrome on "
            "Windows, Berlin). If this was you, enter this code to finish signing in: 4812",
            "90. It expires in 10 minutes; never share it.")


def long_sms_part(recvid: str, text: str) -> bytes:
    return (f"RECEIVE:{recvid};id:goip1-1;password:{PASSWORD};srcnum:Example;"
            f"msg:{text}").encode()


def test_a_long_sms_reaches_onlinesim_as_its_parts_in_order_as_the_readme_says(
        start_server, db, line, onlinesim):
    assert len(LONG_SMS[0]) == 153
    server = start_server(push_url=onlinesim.url, goip_port=0, goip_host="127.0.0.1",
                          goip_password=PASSWORD)
    rent_number(server)
    first, second = long_sms_part("1764151320", LONG_SMS[0]), long_sms_part("1764151351",
                                                                             LONG_SMS[1])
    assert udp_exchange(server.goip.address, first, second, first) == [
        b"RECEIVE 1764151320 OK", b"RECEIVE 1764151351 OK", b"RECEIVE 1764151320 OK"]
    onlinesim.wait_for(2)
    assert wait_until(lambda: db.row("SELECT count(*) AS n FROM sms WHERE push_state = "
                                     "'delivered'")["n"] == 2)
    # Each part on its own, in the order they arrived, each with its own smsId; the repeated
    # first part is stored and pushed once.
    bodies = onlinesim.bodies()
    assert [(b["phone"], b["phoneFrom"], b["text"]) for b in bodies] == [
        (A, "Example", LONG_SMS[0]), (A, "Example", LONG_SMS[1])]
    assert len({b["smsId"] for b in bodies}) == 2 and len(onlinesim.requests) == 2
    # What the README promises a partner with a GoIP is what happened.
    readme = " ".join((EXAMPLES.parent / "docs" / "gateways.md").read_text().split())
    long_sms = readme[readme.index("## Long SMS"):readme.index("## Connecting your gateway")]
    assert "**In parts: GoIP and Ejoin.** Neither passes that header on" in long_sms
    assert ("Each part is stored, acknowledged and pushed to Onlinesim as an SMS of its own, "
            "with its own `smsId`, in the order the parts arrived") in long_sms


def test_a_real_listener_logs_a_flood_of_junk_once(start_server, db, line, caplog):
    server = start_server(goip_port=0, goip_host="127.0.0.1", goip_password=PASSWORD)
    flood = junk(5000)
    with caplog.at_level(logging.WARNING, logger="rentbox.gateways"), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for start in range(0, len(flood), 100):
            for data in flood[start:start + 100]:
                client.sendto(data, server.goip.address)
            # Datagrams are handled in order: once this is answered, those before it were.
            # (And a hundred at a time never overflow the socket's receive buffer.)
            client.sendto(KEEP_ALIVE.encode(), server.goip.address)
            while client.recvfrom(65535)[0] != b"reg:57;status:200;":
                pass  # an answer to junk that looked like the protocol
    [logged] = warnings(caplog)
    assert logged.startswith("GoIP datagram from 127.0.0.1:")


def test_the_listener_is_off_by_default_and_needs_its_password(settings, db):
    server = Server(settings)
    assert server.goip is None
    server.stop()
    with pytest.raises(InvalidInput, match="RENTBOX_GOIP_PASSWORD is not"):
        Server(dataclasses.replace(settings, goip_port=0))
    Server(settings).stop()  # the failed start left nothing held


def test_a_port_in_use_fails_the_start(settings, db):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(Conflict, match=f"cannot listen for GoIP on udp 127.0.0.1:{port}"):
            Server(dataclasses.replace(settings, goip_port=port, goip_host="127.0.0.1",
                                       goip_password=PASSWORD))
    Server(settings).stop()  # the failed start left nothing held: the database is free


def test_the_sample_datagrams_get_the_answers_they_show(db, clock):
    add_numbers(db, START, ("+79123456789", "russia", "megafon", "goip1-1"))
    sample = goip.GoipHandler("secret", Rules())
    lines = (EXAMPLES / "gateways" / "goip-datagrams.txt").read_text().splitlines()
    datagrams = [line for line in lines if line and not line.startswith("#")]
    answers = [line.split("answer: ", 1)[1] for line in lines if "# answer: " in line]
    assert len(datagrams) == len(answers) == 6
    for datagram, answer in zip(datagrams, answers):
        assert sample.handle(db, clock, datagram.encode()).reply == answer.encode()
    assert [r["text"] for r in db.rows("SELECT text FROM sms ORDER BY id")] == [
        "Ваш код: 3141; никому не говорите", "VK: 662 901 — код подтверждения.",
        LONG_SMS[0], LONG_SMS[1]]
