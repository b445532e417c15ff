"""SMS texts are removed after the retention period; rows and delivery facts stay."""

import datetime as dt

from rentbox import housekeeping, operations, retention
from rentbox.config import Rules
from rentbox.protocol import FinishRequest, NumberRequest
from rentbox.sms import IncomingSms, accept_sms

from conftest import START, add_numbers

RULES = Rules()
A, B = "4915123456789", "4917612345678"


def sms(db, clock, to, text):
    return accept_sms(db, clock, IncomingSms(source="api", to=to, sender="Bank", text=text),
                      RULES).sms_id


def deliver(db, sms_id):
    with db.transaction():
        db.execute("UPDATE sms SET push_state = 'delivered' WHERE id = ?", (sms_id,))


def texts(db) -> dict:
    return {r["id"]: (r["text"], r["pruned_at"] is not None)
            for r in db.rows("SELECT id, text, pruned_at FROM sms")}


def test_texts_go_after_the_retention_period_and_the_rows_stay(db, clock, monkeypatch):
    add_numbers(db, START, (A, "germany", "o2"), (B, "germany", "o2"))
    old = operations.open_operation(db, clock, NumberRequest(sum_kopecks=100), RULES)
    first = sms(db, clock, old.number, "code 1111")
    deliver(db, first)
    # Never delivered: it expires when its rental closes, and goes like the others.
    waiting = sms(db, clock, old.number, "code 2222")
    operations.finish_operation(db, clock, FinishRequest(old.activation_id, 3, 100), RULES)
    stray = sms(db, clock, B, "hello")  # for no rental
    clock.advance(20 * 86400)
    recent = operations.open_operation(db, clock, NumberRequest(sum_kopecks=100), RULES)
    kept = sms(db, clock, recent.number, "code 3333")
    deliver(db, kept)
    operations.finish_operation(db, clock, FinishRequest(recent.activation_id, 3, 100), RULES)
    clock.advance(11 * 86400)  # the first rental closed 31 days ago, the second 11
    assert retention.prune_due(db, clock.now(), keep_days=30) == 3
    assert texts(db) == {first: (retention.PRUNED_TEXT, True),
                         waiting: (retention.PRUNED_TEXT, True),
                         stray: (retention.PRUNED_TEXT, True),
                         kept: ("code 3333", False)}
    row = db.row("SELECT sender, push_state, operation_id FROM sms WHERE id = ?", (first,))
    assert row == {"sender": "Bank", "push_state": "delivered",
                   "operation_id": old.activation_id}
    assert retention.prune_due(db, clock.now(), keep_days=30) == 0  # nothing more is due
    assert retention.prune_due(db, clock.now() + dt.timedelta(days=30), keep_days=0) == 0
    kinds = [r["kind"] for r in db.rows("SELECT kind FROM events WHERE kind = 'sms_pruned'")]
    assert len(kinds) == 2  # one per rental (and one for the SMS of no rental)


def test_housekeeping_prunes_in_batches_and_prune_all_finishes(db, clock, monkeypatch):
    add_numbers(db, START, (A, "germany", "o2"))
    for i in range(7):
        deliver(db, sms(db, clock, A, f"stray {i}"))
    clock.advance(31 * 86400)
    monkeypatch.setattr(retention, "PRUNE_BATCH", 3)
    monkeypatch.setattr(retention.prune_due, "__defaults__", (3,))
    assert housekeeping.run_once(db, clock.now(), RULES, sms_keep_days=30) == 3
    assert retention.prune_all(db, clock.now(), keep_days=30) == 4
    assert all(pruned for _, pruned in texts(db).values())


def test_prune_command(db_path):
    from typer.testing import CliRunner

    from rentbox.cli import app
    from rentbox.db import open_database

    db = open_database(db_path)
    add_numbers(db, START, (A, "germany", "o2"))
    db.close()
    result = CliRunner().invoke(app, ["prune", "--db", str(db_path)])
    assert (result.exit_code, result.stdout) == (
        0, "Pruned the texts of 0 SMS older than 30 days.\n")
    result = CliRunner().invoke(app, ["prune", "--sms-keep-days", "0", "--db", str(db_path)])
    assert result.exit_code == 1 and "kept for ever" in result.stderr
