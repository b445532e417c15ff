"""Log lines: UTC with the zone, text or JSON, numbers by phone number, quiet polls."""

import io
import json
import logging

from rentbox import bans, logs
from rentbox.config import Rules
from rentbox.web import wsgi

from conftest import API_KEY, START, WsgiClient, add_numbers


def test_text_and_json_lines_carry_utc_times(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logs.configure("info", "text", out)
    logging.getLogger("rentbox.test").info("hello %s", "there")
    line = out.getvalue().strip()
    assert line.endswith("Z INFO rentbox.test: hello there") and line[10] == "T"
    out.seek(0), out.truncate()
    logs.configure("warning", "json", out)
    logging.getLogger("rentbox.test").info("not shown")
    logging.getLogger("rentbox.test").warning("shown")
    record = json.loads(out.getvalue())
    assert record["level"] == "warning" and record["message"] == "shown"
    assert record["at"].endswith("Z") and record["logger"] == "rentbox.test"
    logging.getLogger().setLevel(logging.WARNING)


def test_a_ban_names_the_number_not_its_row(db, clock, caplog):
    from rentbox import operations
    from rentbox.protocol import NumberRequest

    add_numbers(db, START, ("+4915123456789", "germany", "o2"))
    rental = operations.open_operation(db, clock, NumberRequest(sum_kopecks=1), Rules())
    caplog.set_level(logging.INFO)
    with db.transaction():
        bans.record_failure(db, START, Rules(ban_after=1), number_id=1,
                            operation_id=rental.activation_id, reason="guard_expired")
    assert "+4915123456789 banned until" in caplog.text


def test_get_services_polls_are_logged_at_debug(settings, clock, connections, db, caplog):
    client = WsgiClient(wsgi(settings, clock, connections))
    caplog.set_level(logging.DEBUG, logger="rentbox.access")
    client.post("/getServicesRent", {"action": "GET_SERVICES", "key": API_KEY})
    client.post("/getNumberRent", {"action": "GET_NUMBER", "key": API_KEY, "service": "rent",
                                   "sum": 1})
    levels = {r.getMessage().split()[1]: r.levelname for r in caplog.records
              if r.name == "rentbox.access"}
    assert levels == {"/getServicesRent": "DEBUG", "/getNumberRent": "INFO"}


def test_lines_from_many_threads_are_whole_and_errors_keep_their_traceback(monkeypatch):
    """Lines are formatted outside the handler's lock and written under it: never two
    lines mixed, and an error's traceback stays with its line."""
    import threading

    out = io.StringIO()
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logs.configure("info", "json", out)
    log = logging.getLogger("rentbox.test")

    def talk(n):
        for i in range(200):
            log.info("thread %d line %d %s", n, i, "x" * 50)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 1601
    assert sorted(r["message"] for r in records[:-1]) == sorted(
        f"thread {n} line {i} {'x' * 50}" for n in range(8) for i in range(200))
    assert records[-1]["message"] == "failed" and "ValueError: boom" in records[-1]["error"]
    logging.getLogger().setLevel(logging.WARNING)
