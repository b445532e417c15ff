"""Group commit: the writes of concurrent requests share one transaction and one fsync.

With `synchronous=FULL`, every commit waits for the disk (about 0.2–0.4 ms here, far
more on a busy or networked disk), and one commit per request makes that wait the
ceiling of the whole server. The Writer is one thread with its own connection that runs
the write jobs handed to it by the request threads (`write(job)`): it takes every job
waiting, runs them one after the other inside one IMMEDIATE transaction, each in a
savepoint of its own, commits once, and only then hands each job's result back. So:

- nothing is acknowledged before the commit that holds it (a request's answer waits for
  its job's result, which exists only after the COMMIT returned);
- one job's failure fails no other: its savepoint is rolled back and its exception is
  raised in its own request (the others in the batch commit as if it never ran);
- a failed COMMIT (disk full, I/O error) fails every job of the batch with Unavailable,
  and none of them changed anything;
- the batch forms by itself: jobs that arrive while a commit waits for the disk go into
  the next one; under no load a job is committed alone, at once (no added wait).

A job is a function of a Database (`job(db) -> result`) that makes its changes inside
`db.transaction()` as usual: on the Writer's connection, inside a batch, that is a
savepoint (Database.transaction). A job must not do I/O, or wait: the whole batch waits
for it. Reads that need no write stay on the request's own connection.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable, TypeVar

from rentbox.db import Connections, Database
from rentbox.errors import Unavailable
from rentbox.workers import Worker

log = logging.getLogger("rentbox.db")

T = TypeVar("T")

# How often a request waiting for its job looks whether the writer still runs.
STOPPED_CHECK_S = 1.0

# The most jobs committed together: a bound on how long the first of them waits for the
# others (each runs in well under a millisecond).
MAX_BATCH = 64


class _Job:
    __slots__ = ("run", "result", "error", "done")

    def __init__(self, run: Callable[[Database], object]):
        self.run = run
        self.result: object = None
        self.error: BaseException | None = None
        # Held until the job is answered: the writer releases it, the request's acquire
        # returns. A bare lock is one wake-up; an Event's Condition makes the woken
        # thread queue again for the Condition's own lock, which the writer still holds.
        self.done = threading.Lock()
        self.done.acquire()


class Writer(Worker):
    """The one thread that commits the request threads' writes in batches."""

    name = "rentbox-writer"

    def __init__(self, connections: Connections, max_batch: int = MAX_BATCH):
        super().__init__()
        self._connections = connections
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.batches = 0  # how many commits, and how many jobs they held (metrics, tests)
        self.jobs = 0
        self._pending = 0  # jobs handed in and not answered yet
        self._pending_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """How many requests wait for their writes to be committed now."""
        with self._pending_lock:
            return self._pending

    def write(self, job: Callable[[Database], T]) -> T:
        """Run `job` in the next batch; return its result once that batch is committed,
        or raise its exception (or the commit's). Called by request threads."""
        if not self._thread.is_alive():
            raise RuntimeError("the writer is not running")
        entry = _Job(job)
        with self._pending_lock:
            self._pending += 1
        try:
            self._jobs.put(entry)
            # The writer answers every job it takes; one handed in as it stopped (it
            # stops after the requests, so only by a race) is refused, never waited on
            # for ever.
            while not entry.done.acquire(timeout=STOPPED_CHECK_S):
                if not self._thread.is_alive():
                    raise Unavailable("the server is stopping: nothing was written")
        finally:
            with self._pending_lock:
                self._pending -= 1
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    def stop(self, timeout_s: float = 10) -> None:
        """Stop after the batch in progress and every job already handed in."""
        self._stop.set()
        self._jobs.put(None)  # wakes the thread if it waits for a job
        super().stop(timeout_s)

    def _run(self) -> None:
        db = self._connections.get()
        while True:
            first = self._jobs.get()
            batch = [first] if first is not None else []
            while len(batch) < self._max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is not None:
                    batch.append(more)
            if batch:
                self._commit(db, batch)
            if self._stop.is_set() and self._jobs.empty():
                return

    def _commit(self, db: Database, batch: list[_Job]) -> None:
        try:
            with db.transaction(), db.batch():
                for job in batch:
                    try:
                        # Its own savepoint (and its db.transaction() one inside): a
                        # failure undoes this job's changes alone.
                        with db.savepoint():
                            job.result = job.run(db)
                    except BaseException as error:  # handed back to its own request
                        job.error = error
                        if not db.conn.in_transaction:
                            # SQLite rolled the whole batch back (a full disk, an I/O
                            # error): no job of it is kept, and the rest cannot run.
                            raise
        except BaseException as error:  # the batch's BEGIN or COMMIT: nothing was kept
            for job in batch:
                if job.error is None:
                    job.error = error
                    job.result = None
        finally:
            self.batches += 1
            self.jobs += len(batch)
            for job in batch:
                job.done.release()


class Inline:
    """Writes without a Writer thread: each job in its own transaction on the calling
    thread's connection (the CLI, and the app served in process by tests)."""

    def __init__(self, connections: Connections):
        self._connections = connections

    def write(self, job: Callable[[Database], T]) -> T:
        return job(self._connections.get())
