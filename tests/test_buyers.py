"""Buyers on one pool (buyers.py and its use in operations.py): the buyers file, service
aliases, each buyer's view of the pool, reserved countries and shares, and operations that
belong to one buyer only."""

import sqlite3

import pytest

from rentbox import buyers, operations, tallies
from rentbox.config import Buyer, Rules
from rentbox.db import open_database
from rentbox.errors import InvalidInput
from rentbox.protocol import FinishRequest, NoOperation, NumberRequest

from conftest import START, add_numbers

SMSHUB = Buyer("smshub", "smshub", key="hub-key", push_url="https://hub.example/push")
GRIZZLY = Buyer("grizzly", "smshub", key="grizzly-key", services=("whatsapp", "tg"))
RULES = Rules(services=("vk", "wa"), guard_s=60, guard_margin_s=0, activation_s=120,
              buyers=(SMSHUB, GRIZZLY))

NUMBERS = [("+79161234501", "russia", "mts"), ("+79161234502", "russia", "mts"),
           ("+79031234503", "russia", "beeline"), ("+77011234504", "kazakhstan", None)]


@pytest.fixture
def pool(db):
    add_numbers(db, START, *NUMBERS)
    return db


def claim(db, clock, buyer, service="vk", rules=RULES, **kwargs):
    return operations.open_operation(
        db, clock, NumberRequest(sum_kopecks=2000, service=service, buyer=buyer, **kwargs),
        rules)


def finish(db, clock, issued, status, buyer, rules=RULES):
    return operations.finish_operation(
        db, clock, FinishRequest(issued.activation_id, status, buyer=buyer), rules)


def view(db, clock, buyer, rules=RULES):
    return operations.pool_view(db, clock.now(), rules, buyer)


# ---------------------------------------------------------------------------------------
# The buyers file
# ---------------------------------------------------------------------------------------


def write(tmp_path, text):
    path = tmp_path / "buyers.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_buyers_file_lists_smshub_clones_their_terms_and_aliases(tmp_path):
    path = write(tmp_path, """
[buyers.grizzly]
protocol = "smshub"
key = "  grizzly-key\t"
push_url = "https://api.grizzlysms.com/agent/push"
services = ["wa", "TG", "wa"]
countries = ["Kazakhstan"]

[buyers.bower]
key = "bower-key"
share = 0.25

[buyers.smshub]
services = ["vk"]

[buyers.onlinesim]
countries = ["russia"]

[aliases]
whatsapp2 = "wa"
""")
    found, aliases = buyers.load(path, smshub_key="hub-key",
                                 smshub_push_url="https://hub.example/push")
    assert [b.name for b in found] == ["onlinesim", "smshub", "grizzly", "bower"]
    onlinesim, hub, grizzly, bower = found
    assert (onlinesim.protocol, onlinesim.countries) == ("onlinesim", ("russia",))
    assert (hub.key, hub.push_url, hub.services, hub.path) == (
        "hub-key", "https://hub.example/push", ("vk",), "/smshub")
    assert (grizzly.key, grizzly.services, grizzly.countries, grizzly.path) == (
        "grizzly-key", ("wa", "tg"), ("kazakhstan",), "/buyer/grizzly")
    assert (bower.protocol, bower.services, bower.share, bower.push_url) == (
        "smshub", None, 0.25, None)
    assert aliases == (("whatsapp2", "wa"),)
    # A key never shows in a repr (a log line, a traceback).
    assert "grizzly-key" not in repr(found) and "hub-key" not in repr(found)


def test_smshub_alone_comes_from_the_environment():
    found, aliases = buyers.load(None, smshub_key="hub-key")
    assert [(b.name, b.protocol, b.key, b.services) for b in found] == [
        ("smshub", "smshub", "hub-key", None)]
    assert buyers.load(None) == ((), ())


@pytest.mark.parametrize("text, message", [
    ("[buyers.grizzly]\nprotocol = 'smshub'\n", "needs its key"),
    ("[buyers.grizzly]\nkey = 'k'\nprotocol = 'onlinesim'\n", "protocol must be"),
    ("[buyers.grizzly]\nkey = 'k'\nshare = 1.5\n", "share must be"),
    ("[buyers.a]\nkey = 'k'\nshare = 0.6\n[buyers.b]\nkey = 'j'\nshare = 0.4\n", "add up to 1"),
    ("[buyers.grizzly]\nkey = 'k'\nservices = 'wa'\n", "services must be a list"),
    ("[buyers.grizzly]\nkey = 'k'\nservices = ['rent']\n", "rent is Onlinesim's"),
    ("[buyers.grizzly]\nkey = 'k'\ncolour = 'red'\n", "unknown keys: colour"),
    ("[buyers.rent]\nkey = 'k'\n", "not allowed"),
    ("[buyers.'Big Hub']\nkey = 'k'\n", "not allowed"),
    ("[buyers.onlinesim]\nkey = 'k'\n", "may only set services, countries and share"),
    ("[buyers.smshub]\nservices = ['vk']\n", "RENTBOX_SMSHUB_KEY is not set"),
    ("[buyer.grizzly]\nkey = 'k'\n", "unknown tables: buyer"),
    ("[buyers.grizzly\nkey = 'k'\n", "not valid TOML"),
    ("[aliases]\n'What App' = 'wa'\n", "short service name"),
])
def test_a_bad_buyers_file_is_refused_with_what_is_wrong(tmp_path, text, message):
    with pytest.raises(InvalidInput, match=message) as error:
        buyers.load(write(tmp_path, text))
    assert "'k'" not in str(error.value) and "'j'" not in str(error.value)


def test_a_missing_buyers_file_or_a_push_url_without_a_key_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        buyers.load(tmp_path / "nope.toml")
    with pytest.raises(InvalidInput, match="RENTBOX_SMSHUB_KEY is not"):
        buyers.load(None, smshub_push_url="https://hub.example/push")


# ---------------------------------------------------------------------------------------
# Services across buyers
# ---------------------------------------------------------------------------------------


def test_services_are_matched_across_buyers_by_the_alias_table():
    rules = Rules(services=("vk", "whatsapp"), buyers=(GRIZZLY,), aliases=(("zap", "wa"),))
    assert buyers.offered(rules, "onlinesim") == {"vk": "vk", "whatsapp": "wa"}
    assert buyers.offered(rules, "grizzly") == {"whatsapp": "wa", "tg": "tg"}
    assert buyers.offers(rules, "grizzly", "wa") == "wa"
    assert buyers.offers(rules, "grizzly", "zap") == "wa"  # the partner's own alias
    assert buyers.offers(rules, "grizzly", "vk") is None  # not in its list
    assert buyers.offers(rules, "onlinesim", "telegram") is None


def test_a_number_spent_for_a_service_at_one_buyer_is_spent_for_it_at_all(pool, clock):
    rules = Rules(services=("vk", "wa"), buyers=(SMSHUB, GRIZZLY))
    taken = []
    for _ in range(3):
        issued = claim(pool, clock, "smshub", "wa", rules, country="russia")
        finish(pool, clock, issued, 3, "smshub", rules)
        taken.append(issued.number)
    # Grizzly calls it whatsapp: the three russian numbers sold for wa are spent for it.
    assert claim(pool, clock, "grizzly", "whatsapp", rules, country="russia") is None
    assert {op: n["whatsapp"] for op, n in
            view(pool, clock, "grizzly", rules).services["russia"].items()} == {
        "beeline": 0, "mts": 0}
    # Onlinesim too, for wa; not for vk, nor for rent.
    assert claim(pool, clock, "onlinesim", "wa", rules, country="russia") is None
    assert claim(pool, clock, "onlinesim", "vk", rules, country="russia").number in taken
    assert tallies.verify(pool) == []


def test_rent_is_onlinesims_alone(pool, clock):
    assert claim(pool, clock, "smshub", "rent") is None
    assert view(pool, clock, "smshub").rent == {}
    assert operations.open_operation(pool, clock, NumberRequest(sum_kopecks=1), RULES)


# ---------------------------------------------------------------------------------------
# One pool: every buyer's view, and operations that belong to their buyer
# ---------------------------------------------------------------------------------------


def test_every_buyers_counts_drop_at_once_when_one_takes_a_number(pool, clock):
    before = {b: view(pool, clock, b) for b in ("onlinesim", "smshub", "grizzly")}
    assert before["smshub"].services["russia"] == {
        "beeline": {"vk": 1, "wa": 1}, "mts": {"vk": 2, "wa": 2}}
    assert before["grizzly"].services["russia"]["mts"] == {"whatsapp": 2, "tg": 2}
    assert before["onlinesim"].rent["russia"] == {"beeline": 1, "mts": 2}
    claim(pool, clock, "grizzly", "tg", country="russia", operator="mts")
    after = {b: view(pool, clock, b) for b in ("onlinesim", "smshub", "grizzly")}
    assert after["smshub"].services["russia"]["mts"] == {"vk": 1, "wa": 1}
    assert after["grizzly"].services["russia"]["mts"] == {"whatsapp": 1, "tg": 1}
    assert after["onlinesim"].rent["russia"]["mts"] == 1


def test_a_buyer_can_finish_only_its_own_operations(pool, clock):
    issued = claim(pool, clock, "smshub", country="russia")
    for other in ("onlinesim", "grizzly"):
        with pytest.raises(NoOperation):
            finish(pool, clock, issued, 3, other)
    assert finish(pool, clock, issued, 3, "smshub")
    assert not finish(pool, clock, issued, 3, "smshub")  # idempotent


def test_operations_name_their_buyer_and_currency_and_the_books_keep_currencies_apart(
        pool, clock):
    dollars = claim(pool, clock, "smshub", country="russia", currency="USD")
    roubles = claim(pool, clock, "grizzly", "wa", country="russia")
    finish(pool, clock, dollars, 3, "smshub")
    finish(pool, clock, roubles, 3, "grizzly")
    assert pool.rows("SELECT buyer, currency, service FROM operations ORDER BY id") == [
        {"buyer": "smshub", "currency": "USD", "service": "vk"},
        {"buyer": "grizzly", "currency": "RUB", "service": "wa"}]
    books = {(r["buyer"], r["currency"]): r["credited_minor"]
             for r in pool.rows("SELECT * FROM books_by_buyer")}
    assert books == {("smshub", "USD"): 2000, ("grizzly", "RUB"): 2000}
    # The RUB books never add the dollars.
    assert pool.row("SELECT sum(credited_kopecks) AS k FROM books_daily")["k"] == 2000
    assert pool.row("SELECT sum(credited_kopecks) AS k FROM books_by_service")["k"] == 2000
    assert tallies.verify(pool) == []


# ---------------------------------------------------------------------------------------
# Which buyer gets what
# ---------------------------------------------------------------------------------------


def test_a_reserved_country_is_offered_and_issued_only_to_its_buyers(pool, clock):
    rules = Rules(services=("vk",), buyers=(
        Buyer("smshub", "smshub", key="k", countries=("kazakhstan",)),
        Buyer("grizzly", "smshub", key="g")))
    assert "kazakhstan" not in view(pool, clock, "grizzly", rules).services
    assert "kazakhstan" not in view(pool, clock, "onlinesim", rules).rent
    assert view(pool, clock, "smshub", rules).services["kazakhstan"] == {"": {"vk": 1}}
    assert claim(pool, clock, "grizzly", rules=rules, country="kazakhstan") is None
    # Without a country, a claim never lands on a reserved one.
    for _ in range(3):
        assert claim(pool, clock, "grizzly", rules=rules).number.startswith("79")
    assert claim(pool, clock, "grizzly", rules=rules) is None
    assert claim(pool, clock, "smshub", rules=rules, country="kazakhstan").number == (
        "77011234504")


def test_a_share_keeps_numbers_back_from_the_others_until_its_buyer_holds_them(db, clock):
    add_numbers(db, START, *[(f"+7916123450{i}", "russia", "mts") for i in range(10)])
    rules = Rules(services=("vk",), buyers=(Buyer("smshub", "smshub", key="k", share=0.3),))
    # 30% of 10 numbers: 3 kept for SMSHub; Onlinesim sees and takes 7.
    assert operations.available_counts(db, clock.now(), rules).rent == {
        "russia": {"any": 7, "mts": 7}}
    assert view(db, clock, "smshub", rules).services["russia"] == {"mts": {"vk": 10}}
    for _ in range(7):
        assert claim(db, clock, "onlinesim", rules=rules, country="russia")
    assert claim(db, clock, "onlinesim", rules=rules, country="russia") is None
    assert operations.available_counts(db, clock.now(), rules).rent == {}
    # SMSHub takes one of its three: two are still kept back.
    assert claim(db, clock, "smshub", rules=rules, country="russia")
    assert view(db, clock, "onlinesim", rules).rent == {}
    assert view(db, clock, "smshub", rules).services["russia"] == {"mts": {"vk": 2}}
    assert buyers.policy(rules) == ["30% of each country kept for smshub"]
    assert tallies.verify(db) == []


def copy_of(db, path):
    target = sqlite3.connect(path)
    db.conn.backup(target)
    target.close()
    return open_database(path)


def test_counts_are_never_above_what_each_buyer_could_be_issued(db, clock, tmp_path):
    """Over-reporting is punished by every buyer: after a few claims, every count each
    buyer sees (per operator and service, and per country) is issued to it in full, each
    on a copy of the database as it was at the answer."""
    add_numbers(db, START, *[(f"+7916123450{i}", "russia", "mts" if i % 3 else "tele2")
                             for i in range(10)])
    rules = Rules(services=("vk", "wa"), buyers=(
        Buyer("smshub", "smshub", key="k", share=0.2),
        Buyer("grizzly", "smshub", key="g", share=0.1, services=("whatsapp",))))
    claim(db, clock, "smshub", "vk", rules, country="russia")
    finish(db, clock, claim(db, clock, "grizzly", "wa", rules, country="russia"), 3,
           "grizzly", rules)
    claim(db, clock, "onlinesim", "wa", rules, country="russia")
    copies = 0
    for buyer in ("onlinesim", "smshub", "grizzly"):
        seen = view(db, clock, buyer, rules)
        for operator, per_service in seen.services["russia"].items():
            for service, n in per_service.items():
                copies += 1
                twin = copy_of(db, tmp_path / f"{copies}.db")
                for _ in range(n):
                    assert claim(twin, clock, buyer, service, rules, country="russia",
                                 operator=operator)
                twin.close()
        for service in buyers.offered(rules, buyer):
            # Any operator: the sum over operators, as far as the buyer's cap allows.
            n = min(seen.caps["russia"],
                    sum(per[service] for per in seen.services["russia"].values()))
            twin = copy_of(db, tmp_path / f"{buyer}-{service}.db")
            for _ in range(n):
                assert claim(twin, clock, buyer, service, rules, country="russia")
            twin.close()
    assert copies == 10  # onlinesim and smshub: 2 operators x 2 services; grizzly 2 x 1


def test_an_upgrade_keeps_numbers_spent_for_a_long_service_name_spent_for_its_code(tmp_path):
    """A partner who offered `whatsapp` before buyers existed: after m014 the spent number
    is spent for `wa` (as every buyer asks for it), its tries merged with any `wa` use,
    its operations renamed, a held number counted for Onlinesim, and the tallies exact."""
    from rentbox.db import Database, migrations, open_database

    path = tmp_path / "old.db"
    old = Database(path)
    with old.transaction():
        migrations.apply(old, stop_before="m014_buyers")
    stamp = "2026-11-01T12:00:00.000000Z"
    for number, country, operator in NUMBERS[:3]:  # as that rentbox's import wrote them
        old.execute("INSERT INTO numbers (number, country, operator, idle_since, created_at,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (number[1:], country, operator, stamp, stamp, stamp))
    old.execute("INSERT INTO operations (number_id, service, state, initial_sum_kopecks,"
                " final_sum_kopecks, finish_status, created_at, finished_at, country)"
                " VALUES (1, 'whatsapp', 'closed', 2000, 2000, 3, ?, ?, 'russia')",
                (stamp, stamp))
    old.execute("INSERT INTO operations (number_id, service, state, initial_sum_kopecks,"
                " created_at, country) VALUES (3, 'rent', 'open', 40000, ?, 'russia')",
                (stamp,))
    old.execute("UPDATE numbers SET operation_id = 2 WHERE id = 3")
    old.execute("INSERT INTO service_uses VALUES (1, 'whatsapp', 0, ?, ?)", (stamp, stamp))
    old.execute("INSERT INTO service_uses VALUES (2, 'whatsapp', 2, NULL, ?)", (stamp,))
    old.execute("INSERT INTO service_uses VALUES (2, 'wa', 1, NULL, ?)", (stamp,))
    old.close()

    db = open_database(path)
    assert db.rows("SELECT number_id, service, tries, spent_at IS NOT NULL AS spent"
                   " FROM service_uses ORDER BY number_id") == [
        {"number_id": 1, "service": "wa", "tries": 0, "spent": 1},
        {"number_id": 2, "service": "wa", "tries": 2, "spent": 0}]
    assert db.rows("SELECT service, buyer, currency FROM operations ORDER BY id") == [
        {"service": "wa", "buyer": "onlinesim", "currency": "RUB"},
        {"service": "rent", "buyer": "onlinesim", "currency": "RUB"}]
    assert db.rows("SELECT buyer, country, n FROM held_counts") == [
        {"buyer": "onlinesim", "country": "russia", "n": 1}]
    assert tallies.verify(db) == []
