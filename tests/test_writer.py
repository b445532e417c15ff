"""Group commit (writer.py): the writes of concurrent requests share one transaction and
one fsync; each is acknowledged only after that commit, and one failing job fails no
other."""

import sqlite3
import threading

import pytest

from rentbox import operations, tallies
from rentbox.config import Rules
from rentbox.db import Connections, open_database
from rentbox.errors import InvalidInput, TooLate
from rentbox.protocol import NumberRequest
from rentbox.writer import Inline, Writer

from conftest import START, add_numbers, wait_until


@pytest.fixture
def writer(db, db_path):
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    connections = Connections(db_path)
    running = Writer(connections)
    running.start()
    yield running
    running.stop()
    connections.close_all()


def note(text, fail=None):
    """A job: a row in `notes`, in the job's own transaction (as the core's writes are)."""
    def job(db):
        with db.transaction():
            db.execute("INSERT INTO notes (text) VALUES (?)", (text,))
            if fail is not None:
                raise fail
        return text
    return job


def run_in_threads(writer, jobs):
    """Hand every job to the writer from a thread of its own; their results or errors."""
    results = [None] * len(jobs)

    def call(i):
        try:
            results[i] = writer.write(jobs[i])
        except Exception as error:  # what the request thread would answer
            results[i] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    return threads, results


def queued_behind_the_lock(writer, db, jobs):
    """Jobs that arrive while the writer waits for the write lock (held here) all go into
    its next batch: one commit for all of them."""
    lock = writer._connections.write_lock  # the one the writer's connection queues on
    lock.acquire()
    first_threads, first = run_in_threads(writer, [note("first")])
    # The writer took it and waits for the lock with it.
    assert wait_until(lambda: lock.waiting() == 1)
    threads, results = run_in_threads(writer, jobs)
    assert wait_until(lambda: writer._jobs.qsize() == len(jobs))
    lock.release()
    for thread in first_threads + threads:
        thread.join(10)
    return first + results


def texts(db_path):
    return [r["text"] for r in open_database(db_path).rows("SELECT text FROM notes ORDER BY id")]


def test_jobs_that_arrive_together_share_one_commit(writer, db, db_path):
    results = queued_behind_the_lock(writer, db, [note(f"n{i}") for i in range(20)])
    assert results == ["first"] + [f"n{i}" for i in range(20)]
    assert (writer.batches, writer.jobs) == (2, 21)
    assert sorted(texts(db_path)) == sorted(["first"] + [f"n{i}" for i in range(20)])


def test_one_failing_job_in_a_batch_fails_no_other(writer, db, db_path):
    jobs = [note(f"n{i}", fail=InvalidInput("bad row") if i == 3 else None)
            for i in range(8)]
    results = queued_behind_the_lock(writer, db, jobs)
    assert writer.batches == 2  # the seven good ones and the bad one shared a commit
    assert isinstance(results[4], InvalidInput) and str(results[4]) == "bad row"
    assert [r for i, r in enumerate(results) if i != 4] == (
        ["first"] + [f"n{i}" for i in range(8) if i != 3])
    assert "n3" not in texts(db_path) and len(texts(db_path)) == 8


def test_a_job_that_raises_outside_its_own_transaction_leaves_nothing_either(writer, db,
                                                                             db_path):
    def sloppy(db):
        db.execute("INSERT INTO notes (text) VALUES ('half')")
        raise RuntimeError("a bug")

    results = queued_behind_the_lock(writer, db, [note("a"), sloppy, note("b")])
    assert results[0:2] == ["first", "a"] and results[3] == "b"
    assert isinstance(results[2], RuntimeError)
    assert "half" not in texts(db_path)


def test_a_commit_that_fails_fails_every_job_of_its_batch_and_keeps_none(writer, db,
                                                                        db_path):
    # A deferred foreign key is checked at COMMIT: one row breaking it fails the commit.
    db.execute("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE children (parent INTEGER REFERENCES parents(id)"
               " DEFERRABLE INITIALLY DEFERRED)")

    def orphan(db):
        with db.transaction():
            db.execute("INSERT INTO children (parent) VALUES (42)")

    results = queued_behind_the_lock(writer, db, [note("a"), orphan, note("b")])
    assert results[0] == "first"
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results[1:])
    assert texts(db_path) == ["first"]
    # The writer goes on: the next job commits.
    assert writer.write(note("after")) == "after"
    assert texts(db_path) == ["first", "after"]


def test_a_result_is_handed_back_only_once_committed(writer, db_path):
    seen = []

    def job(db):
        with db.transaction():
            db.execute("INSERT INTO notes (text) VALUES ('x')")
        # Still inside the batch: another connection does not see it yet.
        seen.append(len(open_database(db_path).rows("SELECT * FROM notes")))
        return "x"

    assert writer.write(job) == "x"
    assert seen == [0]
    assert texts(db_path) == ["x"]


def test_claims_through_the_writer_never_share_a_number(db, db_path, clock, writer):
    add_numbers(db, START, *[(f"+4915123456{i:03d}", "germany", "telekom")
                             for i in range(20)])
    rules = Rules()
    jobs = [lambda db: operations.open_operation(db, clock, NumberRequest(sum_kopecks=100),
                                                 rules) for _ in range(30)]
    threads, results = run_in_threads(writer, jobs)
    for thread in threads:
        thread.join(10)
    issued = [r.number for r in results if r is not None]
    assert len(issued) == 20 and len(set(issued)) == 20
    assert results.count(None) == 10
    assert tallies.verify(db) == []


def test_a_claim_past_its_deadline_is_rolled_back_alone(db, db_path, clock, writer):
    add_numbers(db, START, ("+4915123456789", "germany", "telekom"),
                ("+4915123456790", "germany", "telekom"))
    rules = Rules()
    late = clock.now()
    clock.advance(1)
    jobs = [lambda db: operations.open_operation(db, clock, NumberRequest(sum_kopecks=1),
                                                 rules, deadline=late),
            lambda db: operations.open_operation(db, clock, NumberRequest(sum_kopecks=1),
                                                 rules)]
    results = queued_behind_the_lock(writer, db, jobs)
    assert isinstance(results[1], TooLate) and results[2].number
    assert db.row("SELECT count(*) AS n FROM operations")["n"] == 1


def test_inline_writes_commit_each_job_on_the_callers_connection(db, db_path):
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
    connections = Connections(db_path)
    assert Inline(connections).write(note("one")) == "one"
    with pytest.raises(InvalidInput):
        Inline(connections).write(note("two", fail=InvalidInput("no")))
    assert texts(db_path) == ["one"]
    connections.close_all()


def test_a_stopped_writer_refuses_new_jobs(db, db_path):
    connections = Connections(db_path)
    writer = Writer(connections)
    with pytest.raises(RuntimeError, match="not running"):
        writer.write(note("x"))
    connections.close_all()


def test_a_job_handed_in_as_the_writer_stops_is_refused_not_waited_on(db, db_path,
                                                                     monkeypatch):
    import rentbox.writer
    from rentbox.errors import Unavailable

    monkeypatch.setattr(rentbox.writer, "STOPPED_CHECK_S", 0.01)
    connections = Connections(db_path)
    stopping = Writer(connections)
    stopping.start()
    stopping.stop()

    class Thread:
        """The race: alive when write() checks, gone once the job is in the queue."""
        answers = iter([True])

        def is_alive(self):
            return next(self.answers, False)

    stopping._thread = Thread()
    with pytest.raises(Unavailable, match="stopping"):
        stopping.write(note("late"))
    connections.close_all()
