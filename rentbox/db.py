"""The database: connections, the write transaction, and the schema as ordered migrations."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import os
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from rentbox.errors import Conflict, DatabaseError, Unavailable

if TYPE_CHECKING:
    import sqlite_utils

# How long a writer in *another process* (a CLI import beside the server) waits for the
# write lock before giving up. Writers inside one process queue on `Database.write_lock`
# instead, which wakes a waiter as soon as it is released rather than polling like
# SQLite's busy handler (it is not strictly first-come, first-served).
BUSY_TIMEOUT_S = 10.0
# The longest pause between two tries for another process's write lock.
LOCK_POLL_MAX_S = 0.002
# Below this much free space on the database's filesystem, writes are taken to be
# failing before one fails: a commit needs room for its WAL frames, and a checkpoint
# for the pages it copies back.
MIN_FREE_BYTES = 1024 * 1024
# A connection checkpoints the WAL (PASSIVE) after a commit that leaves it holding at
# least this many pages: SQLite's own default, about 4 MiB. The checkpoint runs inside
# that commit, under the process's write lock, and syncs the database file, so every
# writer waiting (Onlinesim's acknowledgements too) waits for it: measured with
# benchmarks/crash_loop.py, checkpointing every 128 pages instead doubled the tail of the
# time from Onlinesim's SUCCESS to the rental's next push (p90 17.9 ms against 8.4 ms).
WAL_AUTOCHECKPOINT_PAGES = 1000
# Inside `rentbox serve` a Checkpointer thread (housekeeping.py) copies the WAL back every
# CHECKPOINT_EVERY_S without the write lock, so that no request and no acknowledgement
# waits for a checkpoint; the connections' own automatic checkpoint is then only a
# backstop, for a WAL the thread could not keep up with.
BACKSTOP_WAL_PAGES = 4000
CHECKPOINT_EVERY_S = 0.25
# When a checkpoint has emptied the WAL, the next write starts it again from its
# beginning and truncates the file to this size. Without a limit a WAL that once grew (a
# long import, a backup's snapshot holding checkpoints off) keeps its size for ever, and
# on a full disk freeing a little space would not be enough to write again (field notes).
JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
# On a small disk, 4 MiB of WAL is more than it has free: the WAL took the last of a
# 4 MiB filesystem before its first checkpoint, and from then on no write could succeed
# (a GET_NUMBER with its FINISH writes about 160 KiB of frames). A connection opened with
# less than SMALL_DISK_BYTES free checkpoints every 128 pages, 512 KiB at SQLite's 4 KiB
# pages: half of MIN_FREE_BYTES, so that while the disk has MIN_FREE_BYTES free the WAL
# can reach its checkpoint and the checkpoint can still grow the database file by as
# much; and cuts the WAL back to twice that, so that its usual peak is reused as it is.
SMALL_DISK_BYTES = 64 * 1024 * 1024
SMALL_DISK_WAL_PAGES = 128
SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES = 2 * SMALL_DISK_WAL_PAGES * 4096
# How long a truncating checkpoint waits for the readers and writers of other
# connections (SQLite's busy handler) before it gives up until its next try. It runs
# where a write has just failed for lack of space, in a request: short, so that the
# answer (503) is not held up; rentbox's reads hold their snapshot for one query.
CHECKPOINT_BUSY_TIMEOUT_S = 0.1

# SQLite's primary result codes that mean "cannot write now, nothing is wrong with the
# request": the write can succeed later, so callers get a retryable Unavailable.
_UNWRITABLE = {
    5: "the database is locked by another process",   # SQLITE_BUSY
    6: "the database is locked",                      # SQLITE_LOCKED
    8: "the database file is read-only",              # SQLITE_READONLY
    10: "disk I/O error",                             # SQLITE_IOERR
    13: "the disk is full",                           # SQLITE_FULL
    14: "the database file cannot be opened",         # SQLITE_CANTOPEN
}
# The reasons above that can mean "no space left on the disk", after which a truncating
# checkpoint gives the WAL's space back (Database.truncate_wal): SQLite reports ENOSPC as
# SQLITE_FULL where it writes a file, but as an I/O error where it grows the -shm file.
_NO_SPACE = {_UNWRITABLE[13], _UNWRITABLE[10]}


class WriteLock:
    """The write lock of one process's connections to one file: first come, first
    served, with a fast lane.

    Writers queue here rather than on SQLite's busy handler (see Database.transaction),
    in the order they came: under steady load the Writer (group commit) takes the lock
    again as soon as it let it go, and a lock that let whoever wakes first have it would
    keep any other writer (a housekeeping pass, a last-call note) waiting for seconds.
    An `urgent` writer goes ahead of every ordinary one waiting: the pusher storing
    Onlinesim's acknowledgements uses it, because until an acknowledgement is committed
    a crash would push that SMS again (push.py).
    """

    def __init__(self):
        self._changed = threading.Condition(threading.Lock())
        self._held = False
        # The waiters in the order they get the lock: urgent ones first, each lane
        # first come, first served.
        self._queue: collections.deque[object] = collections.deque()
        self._urgent_waiting = 0

    def acquire(self, urgent: bool = False) -> None:
        with self._changed:
            ticket = object()
            if urgent:
                self._queue.insert(self._urgent_waiting, ticket)
                self._urgent_waiting += 1
            else:
                self._queue.append(ticket)
            try:
                while self._held or self._queue[0] is not ticket:
                    self._changed.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._urgent_waiting -= urgent
                self._changed.notify_all()
                raise
            self._queue.popleft()
            self._urgent_waiting -= urgent
            self._held = True

    def waiting(self) -> int:
        """How many threads wait for the lock now."""
        with self._changed:
            return len(self._queue)

    def release(self) -> None:
        with self._changed:
            self._held = False
            self._changed.notify_all()

    def __enter__(self) -> "WriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


class WriteHealth:
    """Whether writes to one database file are working, shared by one process's connections.

    A failed write (disk full, I/O error, a lock held past the busy timeout) marks writes
    as failing until a write succeeds again. The server reads this to answer 503 from
    /health and to advertise nothing in GET_SERVICES; housekeeping probes with a small
    write while it is set, so the state clears as soon as the disk has room again.
    """

    def __init__(self):
        # One assignment is atomic under the GIL: no lock needed to set or read it.
        self.reason: str | None = None  # why the last write failed; None: writes work

    def failed(self, reason: str) -> None:
        self.reason = reason

    def succeeded(self) -> None:
        self.reason = None

    @property
    def failing(self) -> bool:
        return self.reason is not None


def unwritable_reason(error: BaseException) -> str | None:
    """The reason, if `error` is SQLite saying that the file cannot be written now."""
    if not isinstance(error, sqlite3.Error):
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return _UNWRITABLE.get(code & 0xFF)
    text = str(error)  # errors raised before a statement ran carry no code
    if "locked" in text:
        return _UNWRITABLE[5]
    if "disk is full" in text:
        return _UNWRITABLE[13]
    if "disk I/O error" in text:
        return _UNWRITABLE[10]
    return None


# Statements that begin or end a transaction themselves: execute() never commits after them.
_TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"}
# What SQLite skips before a statement's first keyword: blanks, `;`, comments, a BOM.
_FIRST_KEYWORD = re.compile(r"(?:[\s;\ufeff]+|--[^\n]*\n|/\*.*?\*/)*([A-Za-z_]*)", re.DOTALL)


def _first_keyword(sql: str) -> str:
    """A statement's first keyword in capitals ('' if it has none), as sqlite-utils
    finds it."""
    return _FIRST_KEYWORD.match(sql).group(1).upper()


class Database:
    """rentbox's connection to the database for one thread, with its write transaction.

    Every connection uses WAL and `synchronous=FULL`: an answer such as "number N is
    yours" or "closed" is an acknowledgement to Onlinesim, so its commit must survive a
    power cut, not only a killed process (field notes, Durability). FULL is a
    per-connection setting, which is why it is set here and not stored in the file.

    Everything else a sqlite-utils Database offers (`db["table"]`, `table_names()`,
    `atomic()`, ...) is there too, from one wrapped around the same connection (`utils`).
    sqlite-utils is imported the first time one of those is used, not before: importing
    it takes longer than a read-only command's whole work (issue 25), and such a command
    needs only `execute`, `rows` and `query`, which are rentbox's own.
    """

    def __init__(self, path: Path | str, *, write_lock: WriteLock | None = None,
                 health: WriteHealth | None = None, read_only: bool = False,
                 owns_checkpoints: bool = True, checkpointed_elsewhere: bool = False):
        # check_same_thread=False only so that Connections.close_all() can close every
        # connection at shutdown; each one is still used by the thread that opened it.
        if read_only:
            conn = _connect_read_only(Path(path))
        else:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        self.conn = conn
        # What a sqlite-utils Database sets on its connection by default: a trigger's
        # statements fire triggers too. Here from the start, as when this class was one.
        self.execute("PRAGMA recursive_triggers = on")
        self.path = Path(path)
        self.read_only = read_only
        self._batching = False  # inside a Writer's batch: transaction() is a savepoint
        self._savepoints = 0
        # Shared by every connection of one process to this file (see Connections).
        self.write_lock = write_lock or WriteLock()
        self.health = health or WriteHealth()
        if not read_only:
            self.execute("PRAGMA journal_mode = WAL")
        self.execute("PRAGMA synchronous = FULL")
        self.execute("PRAGMA foreign_keys = ON")
        # Whether this connection may checkpoint the WAL: False while Litestream
        # replicates the file, which then owns the checkpoints (see Connections). Then
        # it never starts one, neither automatically nor in truncate_wal().
        self.owns_checkpoints = owns_checkpoints and not read_only
        # Per connection, like synchronous: the checkpointing connection applies them.
        if not read_only:
            free = self.free_bytes()
            small = free is not None and free < SMALL_DISK_BYTES
            self.execute("PRAGMA journal_size_limit = "
                         f"{SMALL_DISK_JOURNAL_SIZE_LIMIT_BYTES if small else JOURNAL_SIZE_LIMIT_BYTES}")
            pages = (SMALL_DISK_WAL_PAGES if small else BACKSTOP_WAL_PAGES
                     if checkpointed_elsewhere else WAL_AUTOCHECKPOINT_PAGES)
            self.execute(f"PRAGMA wal_autocheckpoint = {pages if self.owns_checkpoints else 0}")

    @functools.cached_property
    def utils(self) -> "sqlite_utils.Database":
        """A sqlite-utils Database on this connection, made (and sqlite-utils imported)
        on first use: for migrations and table helpers, never on a plain read."""
        import sqlite_utils

        # recursive_triggers is already on (__init__); plugins are not rentbox's.
        return sqlite_utils.Database(self.conn, recursive_triggers=False,
                                     execute_plugins=False)

    def __getattr__(self, name: str):
        # Only reached for a name this class does not have: sqlite-utils' helpers.
        if name.startswith("_") or name in ("conn", "utils"):
            raise AttributeError(name)
        return getattr(self.utils, name)

    def __getitem__(self, table: str):
        """sqlite-utils' Table (or View) of that name: `db["sms"].columns`."""
        return self.utils[table]

    def execute(self, sql: str, parameters: Iterable | dict | None = None) -> sqlite3.Cursor:
        """Run one statement and return its cursor, as sqlite-utils' execute() does: a
        write outside a transaction is committed at once; inside one, it joins it."""
        conn = self.conn
        was_in_transaction = conn.in_transaction
        try:
            cursor = conn.execute(sql) if parameters is None else conn.execute(sql, parameters)
        except Exception:
            if not was_in_transaction and conn.in_transaction:
                # Python's sqlite3 opened a transaction for the failed write: nothing
                # would ever commit it, and it would capture every later write.
                conn.execute("ROLLBACK")
            raise
        if (not was_in_transaction and conn.in_transaction and cursor.description is None
                and _first_keyword(sql) not in _TRANSACTION_CONTROL):
            conn.execute("COMMIT")  # the transaction Python's sqlite3 opened for a write
        return cursor

    def query(self, sql: str, params: Iterable | dict = ()) -> Iterator[dict]:
        """Run a read query and yield its rows as dicts as SQLite reads them. The read
        stays open until the iterator is exhausted or closed (see `rows`)."""
        cursor = self.conn.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return (dict(zip(keys, row)) for row in cursor)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self, *, urgent: bool = False) -> Iterator["Database"]:
        """A short write transaction: `BEGIN IMMEDIATE` under the process's write lock.

        IMMEDIATE takes SQLite's write lock up front, so a read-then-write (claiming a
        free number) cannot interleave with another writer; a deferred BEGIN would fail
        with "database is locked" when it upgrades (field notes, Claiming a number).
        Threads of this process first queue on a Python lock, so they never meet
        SQLite's busy handler, whose polling sleeps turn sub-millisecond transactions
        into a tail of hundreds of milliseconds. Keep the body tiny: no I/O, no network.

        A write that fails because the file cannot be written now (disk full, I/O
        error, another process's lock held past BUSY_TIMEOUT_S) is rolled back and
        raised as `Unavailable`, and marks `health` as failing until a write succeeds.
        When it failed for lack of space, the WAL is checkpointed and truncated first
        (truncate_wal): the WAL itself may be what filled the disk.

        `urgent`: go ahead of the ordinary writers waiting for the lock (WriteLock).

        Inside a batch of the Writer (writer.py: group commit), this is a savepoint of
        the batch's transaction instead: its changes are undone if it raises, and
        committed with the batch.
        """
        if self._batching:
            with self.savepoint():
                yield self
            return
        self.write_lock.acquire(urgent)
        try:
            try:
                self._begin_immediate()
                try:
                    yield self
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (disk full, I/O error) can leave the transaction
                    # open, and with it SQLite's write lock: every later write would fail.
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                reason = unwritable_reason(error)
                if reason is None:
                    raise
                self.health.failed(reason)
                if reason in _NO_SPACE:
                    # The WAL may be what filled the disk: give its space back, so that
                    # a later write can fit. Here the transaction is rolled back (or
                    # never began) and the process's write lock is still held.
                    self._truncate_wal_holding_lock()
                raise Unavailable(f"the database cannot be written now: {reason}") from None
        finally:
            self.write_lock.release()
        self.health.succeeded()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator["Database"]:
        """A savepoint inside the open transaction: undone if the block raises. A write
        that fails because the file cannot be written now is raised as Unavailable and
        marks `health`, as in transaction()."""
        name = f"rentbox_{self._savepoints}"
        self._savepoints += 1
        try:
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield self
            except BaseException:
                # SQLite may have rolled the whole transaction back already (a full
                # disk, an I/O error): then there is no savepoint left to go back to.
                if self.conn.in_transaction:
                    self.conn.execute(f"ROLLBACK TO {name}")
                    self.conn.execute(f"RELEASE {name}")
                raise
            self.conn.execute(f"RELEASE {name}")
        except sqlite3.Error as error:
            reason = unwritable_reason(error)
            if reason is None:
                raise
            self.health.failed(reason)
            raise Unavailable(f"the database cannot be written now: {reason}") from None
        finally:
            self._savepoints -= 1

    @contextlib.contextmanager
    def batch(self) -> Iterator["Database"]:
        """Inside the caller's open transaction: every transaction() is a savepoint of
        it (the Writer's batches, writer.py)."""
        self._batching = True
        try:
            yield self
        finally:
            self._batching = False

    def _begin_immediate(self) -> None:
        """BEGIN IMMEDIATE, waiting for another *process* (a CLI import) in short steps.

        SQLite's own busy handler sleeps 1, 2, 5 … up to 100 ms between tries; against a
        process that takes the lock batch after batch it can miss every gap and starve
        for seconds (measured: 2.5 s during a 100,000-row import). Here the wait is
        polled every few milliseconds, so the server gets in between two batches.
        """
        self.conn.execute("PRAGMA busy_timeout = 0")
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_S
            delay_s = 0.0005
            while True:
                try:
                    self.conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        raise
                # Waiting for another process's lock: no logic runs while this sleeps.
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, LOCK_POLL_MAX_S)
        finally:
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def write_problem(self) -> str | None:
        """Why writes cannot be expected to work now, or None when they can.

        Either a write failed and none has succeeded since (in this process), or the
        filesystem has less than MIN_FREE_BYTES free. Cheap: no query, one statvfs.
        """
        if self.health.failing:
            return self.health.reason
        free = self.free_bytes()
        if free is not None and free < MIN_FREE_BYTES:
            return "the disk is full"
        return None

    def free_bytes(self) -> int | None:
        """Free space this process can write to beside the database (None if unknown):
        root may also use the blocks the filesystem reserves for it."""
        try:
            stat = os.statvfs(self.path.parent if str(self.path.parent) else ".")
        except OSError:
            return None
        return (stat.f_bfree if os.geteuid() == 0 else stat.f_bavail) * stat.f_frsize

    def storage(self) -> dict:
        """Sizes of the database and its -wal file, and the free space beside them, in
        bytes (`rentbox status`), and why writes fail now, if they do."""
        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except OSError:
                return 0

        return {"path": str(self.path), "database_bytes": size(self.path),
                "wal_bytes": size(Path(str(self.path) + "-wal")),
                "free_bytes": self.free_bytes(), "write_problem": self.write_problem()}

    def checkpoint(self) -> bool:
        """Copy the WAL back into the database file as far as it can without waiting
        (PASSIVE), and without the write lock: writers go on meanwhile, and the next one
        to find everything copied back starts the WAL from its beginning. True if every
        frame was copied back. Never while Litestream owns the checkpoints."""
        if not self.owns_checkpoints or self.conn.in_transaction:
            return False
        busy, frames, copied = self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return not busy and frames == copied

    def truncate_wal(self) -> bool:
        """Checkpoint the WAL into the database file and truncate the -wal file to zero
        bytes, giving its space on the disk back. True if it did.

        False, leaving the WAL as it is, when it cannot now: these connections do not
        own the checkpoints (Litestream does), this one is inside a transaction, another
        connection kept reading an older snapshot (or writing) for longer than
        CHECKPOINT_BUSY_TIMEOUT_S, or the checkpoint could not write (copying the WAL
        back can grow the database file, and the disk is full). Never raises for these:
        a full disk is a state that the next failed write or housekeeping pass retries.
        Takes the process's write lock, so that no writer of this process meets
        SQLite's lock (and its polling busy handler) behind the checkpoint.
        """
        if not self.owns_checkpoints:
            return False
        with self.write_lock:
            return self._truncate_wal_holding_lock()

    def _truncate_wal_holding_lock(self) -> bool:
        """truncate_wal() for a caller that holds the process's write lock."""
        # Inside a transaction SQLite refuses to checkpoint, and this connection's own
        # snapshot would keep the WAL from being reset: only between transactions.
        if not self.owns_checkpoints or self.conn.in_transaction:
            return False
        try:
            # TRUNCATE waits, through the busy handler, until no other connection is
            # writing or reading a snapshot older than the whole WAL; those of this
            # process hold theirs for one query (Database.rows), a backup's paced copy
            # for its whole length. Waiting long would hold up the request that runs it.
            self.conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_BUSY_TIMEOUT_S * 1000)}")
            try:
                busy = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error:
            # SQLITE_FULL when the database file cannot grow: a checkpoint stops where it
            # failed and leaves the WAL whole, so the next try starts over safely.
            return False
        return busy == 0  # 1: another connection kept it from finishing in time

    def probe_write(self, stamp: str) -> None:
        """One tiny real write (a row in `meta`), to learn whether writing works again.
        Raises Unavailable if it still does not; clears `health` if it does. First the
        WAL is truncated (truncate_wal): on a full disk it may hold the space the write
        needs, and an automatic checkpoint never gives that space back."""
        self.truncate_wal()
        with self.transaction():
            self.execute(
                "INSERT INTO meta (key, value, updated_at) VALUES ('write_probe', '{}', ?)"
                " ON CONFLICT (key) DO UPDATE SET updated_at = excluded.updated_at",
                (stamp,))

    def ping(self) -> None:
        """A trivial read of rentbox's schema; raises if the database is unusable."""
        self.execute("SELECT 1 FROM numbers LIMIT 1").fetchall()

    def rows(self, sql: str, params: tuple | list | dict = ()) -> list[dict]:
        """Run a read query and return every row as a dict.

        Always fetches everything: a half-read cursor keeps a read transaction open,
        which stops WAL checkpoints and lets the -wal file grow without bound.
        """
        cursor = self.conn.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row)) for row in cursor.fetchall()]

    def row(self, sql: str, params: tuple | list | dict = ()) -> dict | None:
        """The first row of a read query as a dict, or None."""
        found = self.rows(sql, params)
        return found[0] if found else None


def backup(db: Database, target: Path, *, bytes_per_s: float | None = None,
           wait: Callable[[float], object] = time.sleep) -> int:
    """Copy the database to `target` with SQLite's online backup: a consistent snapshot,
    safe while the server writes. Written to `<target>.partial`, a file this backup
    creates itself, and given its name at the end, so a backup that is there is complete.
    It never writes through, replaces or deletes a file that was there before it (the
    target, the partial, or SQLite's side files of the partial). Returns its size in bytes.

    With `bytes_per_s`, the copy is paced (see `_paced_copy`), pausing with `wait(seconds)`
    (the scheduled backups pass their stop Event's wait, so that a stop ends the pauses).
    """
    target = Path(target)
    if os.path.lexists(target):
        raise Conflict(_backup_exists_message(target))
    if not target.parent.is_dir():
        raise Conflict(f"cannot write {target}: the folder {target.parent} does not exist")
    partial = target.with_name(target.name + ".partial")
    _create_backup_partial(partial)
    try:
        copy = sqlite3.connect(str(partial))
        try:
            if bytes_per_s:
                _paced_copy(db, copy, bytes_per_s, wait)
            else:
                db.conn.backup(copy)  # all pages in one step: one consistent read snapshot
            if copy.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise DatabaseError(f"the copy in {partial} failed SQLite's check")
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            copy.close()
        _move_without_overwriting(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise Conflict(f"cannot write {target}: {error.strerror}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target.stat().st_size


# A paced backup copies this much per step. Each step is its own commit in the copy, so
# at most this much waits to be flushed to disk at a time.
BACKUP_STEP_BYTES = 1024 * 1024


def _paced_copy(db: Database, copy: sqlite3.Connection, bytes_per_s: float,
                wait: Callable[[float], object]) -> None:
    """Copy in steps of BACKUP_STEP_BYTES, at most `bytes_per_s`. Copied in one step, a
    large database is one long burst of writes whose flush stalls the server's commits on
    the same disk (benchmarks/backup_latency.py: GET_NUMBER p99 from 29 ms to 400 ms on a
    200 MiB file). All steps read one snapshot: a read transaction stays open on `db`
    throughout (WAL lets writers go on); without it, SQLite would restart the copy each
    time another connection writes."""
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = max(1, BACKUP_STEP_BYTES // page_size)
    step_s = pages * page_size / bytes_per_s
    db.conn.execute("BEGIN")
    try:
        db.conn.execute("SELECT count(*) FROM sqlite_master").fetchall()  # the snapshot
        began_s = time.monotonic()

        def pace(status, remaining, total):
            nonlocal began_s
            pause_s = step_s - (time.monotonic() - began_s)
            if pause_s > 0 and remaining:
                wait(pause_s)  # pacing the copy's own writes: no logic waits on it
            began_s = time.monotonic()

        db.conn.backup(copy, pages=pages, progress=pace)
    finally:
        if db.conn.in_transaction:
            db.conn.execute("COMMIT")  # ends the read transaction (nothing was written)


def _backup_exists_message(target: Path) -> str:
    return f"{target} already exists; choose a new name (a backup never overwrites a file)"


def _create_backup_partial(partial: Path) -> None:
    """Create `partial`, empty and private, for this backup alone. SQLite opens the file by
    name and follows a symlink there (another program's database would be overwritten),
    and it reads a -journal or -wal file it finds beside it into the copy; so each of
    them must be absent, and the file is created exclusively, never through a link."""
    def in_the_way(path: Path) -> Conflict:
        return Conflict(f"{path} already exists: an interrupted backup left it, or it is "
                        "not rentbox's; check it, remove it and run the backup again")

    for path in (partial, *(Path(f"{partial}{side}") for side in ("-journal", "-wal", "-shm"))):
        if os.path.lexists(path):
            raise in_the_way(path)
    try:
        handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # created in the instant since the check
        raise in_the_way(partial) from None
    except OSError as error:
        raise Conflict(f"cannot write {partial}: {error.strerror}") from None
    os.close(handle)


def _move_without_overwriting(partial: Path, target: Path) -> None:
    """Give the finished copy its name, unless a file took that name meanwhile: a hard
    link fails on an existing name, where a rename would replace it."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise Conflict(_backup_exists_message(target)) from None
    except OSError:
        # A file system without hard links (FAT on a USB stick, some network shares):
        # check, then rename; only a file created in the instant between is replaced.
        if os.path.lexists(target):
            raise Conflict(_backup_exists_message(target)) from None
        partial.replace(target)
        return
    partial.unlink()


def _serving_lock_path(db_path: Path | str) -> Path:
    """`<db>.serve.lock` beside the real database file: through symlinks, so that every
    name of one database leads to one lock. (A hard link is another name the lock cannot
    see: the lock file is found by name, and a hard link has its own.)"""
    return Path(os.path.realpath(db_path) + ".serve.lock")


def _open_lock_file(path: Path):
    """Open (creating) the lock file itself, never a file a symlink planted there points
    to: the server truncates it to write its pid."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        if os.path.islink(path):
            raise Conflict(f"{path} is a symbolic link; rentbox keeps its own lock file "
                           "there: remove the link") from None
        raise Conflict(f"cannot open {path}: {error.strerror}") from None
    return os.fdopen(fd, "r+")


def hold_serving_lock(db_path: Path | str):
    """Hold an exclusive lock on `<db>.serve.lock` for as long as the returned file stays
    open: two servers on one database would both push the outbox, and Onlinesim would get
    every SMS twice. The OS drops the lock when the process dies, however it dies."""
    handle = _open_lock_file(_serving_lock_path(db_path))
    # A few tries: `rentbox status` holds the lock shared for an instant to test it.
    for attempt in range(20):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt < 19:
                time.sleep(0.05)  # start-up only, never while serving
    else:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise Conflict(f"another rentbox serve (pid {holder}) is running on {db_path}; "
                       "run one server per database")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def is_being_served(db_path: Path | str) -> bool:
    """Whether a `rentbox serve` holds this database's serving lock right now (a shared
    lock on the file opened for reading: any user who can read it can tell)."""
    path = _serving_lock_path(db_path)
    if not path.exists():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if os.path.islink(path):
            raise Conflict(f"{path} is a symbolic link; rentbox keeps its own lock file "
                           "there: remove the link") from None
        raise Conflict(f"cannot open {path}: {error.strerror}") from None
    with os.fdopen(fd, "r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class Connections:
    """One Database per thread for one file, all sharing one write lock.

    A sqlite3 connection must not be shared between threads, and one opened in one
    thread refuses to work in another; waitress runs requests on a pool of threads, so
    each thread opens its own the first time it needs one.
    """

    def __init__(self, path: Path | str, *, autocheckpoint: bool = True,
                 checkpointed_elsewhere: bool = False):
        self.path = Path(path)
        # True when a Checkpointer thread keeps the WAL short (serve): the connections'
        # automatic checkpoint is only a backstop (BACKSTOP_WAL_PAGES).
        self.checkpointed_elsewhere = checkpointed_elsewhere
        self.write_lock = WriteLock()
        self.health = WriteHealth()
        # False while Litestream replicates the file: it owns the checkpoints (its docs:
        # an application's checkpoint racing its own forces a new snapshot), so these
        # connections never start one: no automatic checkpoint (wal_autocheckpoint = 0),
        # and no truncating one on a full disk (Database.owns_checkpoints).
        self.autocheckpoint = autocheckpoint
        self._local = threading.local()
        self._all: list[Database] = []
        self._all_lock = threading.Lock()

    def get(self) -> Database:
        """This thread's connection, opened on first use."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = Database(self.path, write_lock=self.write_lock, health=self.health,
                          owns_checkpoints=self.autocheckpoint,
                          checkpointed_elsewhere=self.checkpointed_elsewhere)
            self._local.db = db
            with self._all_lock:
                self._all.append(db)
        return db

    def close_all(self) -> None:
        """Close every connection (at shutdown, once the worker threads have stopped)."""
        with self._all_lock:
            for db in self._all:
                with contextlib.suppress(sqlite3.Error):
                    db.close()
            self._all.clear()


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for a database this process may not write (a
    monitoring account). A WAL database needs its -shm file: while a server runs, the
    -wal and -shm files exist and are read; when none does, nothing is writing the file,
    and it is opened as immutable, which needs no -shm."""
    from urllib.parse import quote

    immutable = "" if Path(f"{path}-wal").exists() else "&immutable=1"
    return sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro{immutable}", uri=True,
                           timeout=BUSY_TIMEOUT_S, check_same_thread=False)


def _writable(path: Path) -> bool:
    """Whether this process can write the database and create its -wal and -shm files."""
    folder = path.parent if str(path.parent) else Path(".")
    return os.access(path, os.W_OK) and os.access(folder, os.W_OK)


def open_database(path: Path | str, *, create: bool = True) -> Database:
    """Open and migrate the database file: what every command does first.

    - `create=False` (every command that only works on existing books) refuses a missing
      file, so that a mistyped `--db` does not quietly start empty books.
    - A database this process cannot write is opened read-only: reading works (a
      monitoring account runs `status --json`); a write fails with Unavailable.
    - A database migrated by a newer rentbox is refused, and so is migrating a database
      that an older running server holds: it would change the schema under it.
    """
    path = Path(path)
    if not path.exists():
        if not create:
            raise DatabaseError(
                f"{path} does not exist: check --db (or RENTBOX_DB); `rentbox numbers "
                "import` or `rentbox serve` creates a new database")
        if path.parent and not path.parent.exists():
            raise DatabaseError(f"cannot create {path}: the folder {path.parent} does not exist")
    try:
        read_only = path.exists() and not _writable(path)
        db = Database(path, read_only=read_only)
        check_version(db)
        if migrations.pending(db):
            if read_only:
                raise DatabaseError(f"{path} needs upgrading to this rentbox's schema, and this "
                                    "user cannot write it: run rentbox as its owner once")
            if is_being_served(path):
                raise DatabaseError(
                    f"a running rentbox serve holds {path} with an older schema than this "
                    f"rentbox {_version()}: upgrade rentbox where the server runs and restart "
                    "it (the server migrates the database when it starts)")
            migrate(db)
    except sqlite3.DatabaseError as error:
        raise DatabaseError(f"cannot open {path} as a rentbox database: {error}") from None
    return db


def check_version(db: Database) -> None:
    """Refuse a database that a newer rentbox has migrated: this one does not know its
    schema, and would read or write it wrongly."""
    known = {m.name for m in migrations._migrations}
    unknown = [m.name for m in migrations.applied(db) if m.name not in known]
    if unknown:
        raise DatabaseError(
            f"{db.path} was upgraded by a newer rentbox (schema {', '.join(unknown)}); this is "
            f"rentbox {_version()}, which knows only up to {migrations._migrations[-1].name}: "
            "upgrade rentbox")


def _version() -> str:
    from rentbox import __version__

    return __version__


# ---------------------------------------------------------------------------------------
# The schema. Migrations are applied in order, each in its own transaction with its
# bookkeeping row in _sqlite_migrations. Never edit one that has shipped: add a new one.
# ---------------------------------------------------------------------------------------

class Migrations:
    """The schema's migrations, registered as with sqlite-utils' `Migrations` (the same
    `@migrations()` decorator, `pending`, `applied`, `apply`) and applied by it.

    Whether any is pending is read here with one query of the `_sqlite_migrations` table
    sqlite-utils keeps, so that opening an up-to-date database, what nearly every command
    does, needs no sqlite-utils (importing it takes longer than `rentbox status`'s whole
    work). sqlite-utils is imported only to apply migrations.
    """

    migrations_table = "_sqlite_migrations"

    # Plain classes, not dataclasses: making a dataclass costs start-up time.
    class _Migration:
        def __init__(self, name: str, fn: Callable[[Database], None], transactional: bool):
            self.name, self.fn, self.transactional = name, fn, transactional

        def __repr__(self) -> str:
            return f"<migration {self.name}>"

    class _AppliedMigration:
        def __init__(self, name: str, applied_at: str):
            self.name, self.applied_at = name, applied_at

        def __repr__(self) -> str:
            return f"<migration {self.name} applied {self.applied_at}>"

    def __init__(self, name: str):
        self.name = name
        self._migrations: list[Migrations._Migration] = []

    def __call__(self, *, name: str | None = None, transactional: bool = True):
        """Register the decorated function as the next migration (see sqlite-utils)."""
        def register(fn: Callable[[Database], None]) -> Callable[[Database], None]:
            if any(m.name == (name or fn.__name__) for m in self._migrations):
                raise ValueError(f"migration {name or fn.__name__} is registered twice")
            self._migrations.append(self._Migration(name or fn.__name__, fn, transactional))
            return fn

        return register

    def applied(self, db: Database) -> list["Migrations._AppliedMigration"]:
        """The migrations of this set applied to `db`, in the order they were; read only."""
        if db.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                           (self.migrations_table,)).fetchone() is None:
            return []
        return [self._AppliedMigration(**row) for row in db.rows(
            f"SELECT name, applied_at FROM [{self.migrations_table}]"
            " WHERE migration_set = ? ORDER BY rowid", (self.name,))]

    def pending(self, db: Database) -> list["Migrations._Migration"]:
        """The migrations not yet applied to `db`, in order; read only."""
        done = {m.name for m in self.applied(db)}
        return [m for m in self._migrations if m.name not in done]

    def apply(self, db: Database, *, stop_before: str | Iterable[str] | None = None) -> None:
        """Apply the pending migrations with sqlite-utils (each in a savepoint or a
        transaction of its own, with its row in `_sqlite_migrations`)."""
        import sqlite_utils

        applier = sqlite_utils.Migrations(self.name)
        for m in self._migrations:
            applier(name=m.name, transactional=m.transactional)(m.fn)
        applier.apply(db, stop_before=stop_before)


migrations = Migrations("rentbox")


def _run(db: Database, script: str) -> None:
    """Run a script of statements inside the open transaction.

    Not executescript(): Python's sqlite3 would COMMIT before it, breaking the
    migration's transaction. sqlite3.complete_statement() knows comments and literals,
    so a ';' inside them does not split a statement.
    """
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                db.execute(pending)
            pending = ""
    if pending.strip(" \n;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending[:60]!r}")


@migrations()
def m001_pool_operations_events(db: Database) -> None:
    _run(db, """
    -- The pool. `number` is international digits without '+'.
    CREATE TABLE numbers (
        id INTEGER PRIMARY KEY,
        number TEXT NOT NULL UNIQUE,
        country TEXT NOT NULL,              -- Onlinesim's lower-case country name
        operator TEXT,                      -- NULL: offered only under 'any'
        port TEXT,                          -- the SIM's slot in the partner's gateway
        enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
        -- The open rent operation that holds this number; NULL when free. One column,
        -- so a number can never be held by two operations at once.
        operation_id INTEGER REFERENCES operations(id),
        idle_since TEXT NOT NULL,           -- when it last became free: wear levelling
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    -- No operation holds two numbers. Partial, so that the planner never picks it for
    -- "operation_id IS NULL" (every free number) over the free-number indexes below.
    CREATE UNIQUE INDEX numbers_by_operation ON numbers(operation_id)
        WHERE operation_id IS NOT NULL;
    -- The free numbers, one index per shape of GET_NUMBER, each already in the order of
    -- the claim (idle longest first, then id), so a claim reads one index entry:
    -- no country given (and GET_SERVICES's total);
    CREATE INDEX numbers_free_by_idle ON numbers(idle_since)
        WHERE operation_id IS NULL AND enabled = 1;
    -- a country, any operator;
    CREATE INDEX numbers_free_by_country ON numbers(country, idle_since)
        WHERE operation_id IS NULL AND enabled = 1;
    -- a country and an operator (and GET_SERVICES's counts per country and operator).
    CREATE INDEX numbers_free_by_operator ON numbers(country, operator, idle_since)
        WHERE operation_id IS NULL AND enabled = 1;

    -- Rent operations. The id is Onlinesim's activationId: AUTOINCREMENT so that an id is
    -- never reused, even after rows are deleted.
    CREATE TABLE operations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        number_id INTEGER NOT NULL REFERENCES numbers(id),
        service TEXT NOT NULL DEFAULT 'rent',
        state TEXT NOT NULL CHECK (state IN ('open', 'closed')),
        requested_country TEXT,
        requested_operator TEXT,
        initial_sum_kopecks INTEGER NOT NULL,   -- GET_NUMBER's sum, RUB x 100
        final_sum_kopecks INTEGER,              -- FINISH's total sum, RUB x 100
        finish_status INTEGER,                  -- 1, 3, 4 or 5 (protocol.md 3.3)
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    -- A number's rental history.
    CREATE INDEX operations_by_number ON operations(number_id, created_at);
    -- The open operations (status, and the rules that act on them as time passes).
    CREATE INDEX operations_open ON operations(created_at) WHERE state = 'open';

    -- Every change of state leaves a row here: history and debugging for free.
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        operation_id INTEGER REFERENCES operations(id),
        number_id INTEGER REFERENCES numbers(id),
        detail TEXT                              -- JSON object, or NULL
    );
    -- An operation's events (ops show).
    CREATE INDEX events_by_operation ON events(operation_id) WHERE operation_id IS NOT NULL;
    -- A number's events (numbers show).
    CREATE INDEX events_by_number ON events(number_id) WHERE number_id IS NOT NULL
    """)


@migrations()
def m002_sms_outbox_and_rent_rules(db: Database) -> None:
    _run(db, """
    -- The rent rules (protocol.md 5): consecutive failed rentals, and the ban they lead to.
    ALTER TABLE numbers ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE numbers ADD COLUMN banned_until TEXT;

    -- "Free" now also means "not banned": rebuild the free-number indexes on the new
    -- predicate (pool.FREE), same columns and purposes as in m001.
    DROP INDEX numbers_free_by_idle;
    DROP INDEX numbers_free_by_country;
    DROP INDEX numbers_free_by_operator;
    CREATE INDEX numbers_free_by_idle ON numbers(idle_since)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL;
    CREATE INDEX numbers_free_by_country ON numbers(country, idle_since)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL;
    CREATE INDEX numbers_free_by_operator ON numbers(country, operator, idle_since)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL;
    -- Bans due to be lifted (housekeeping, and the catch-up before every claim).
    CREATE INDEX numbers_banned ON numbers(banned_until) WHERE banned_until IS NOT NULL;

    ALTER TABLE operations ADD COLUMN first_sms_at TEXT;   -- the guard window is met
    ALTER TABLE operations ADD COLUMN failed_at TEXT;      -- counted as a failed rental
    ALTER TABLE operations ADD COLUMN failure TEXT;        -- guard_expired | cancelled_without_sms
    -- Guard windows that may expire: open, no SMS yet, not failed yet.
    CREATE INDEX operations_awaiting_sms ON operations(created_at)
        WHERE state = 'open' AND first_sms_at IS NULL AND failed_at IS NULL;

    -- Every SMS taken in, and its way to Onlinesim. The id is the smsId of PUSH_SMS:
    -- AUTOINCREMENT, so an id is never reused for another SMS.
    CREATE TABLE sms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,                 -- api | smsgate | cli
        -- The source's own id, scoped by source (and device): a redelivery is found here.
        dedupe_key TEXT UNIQUE,
        number TEXT,                          -- receiving number (digits); NULL: unknown
        port TEXT,                            -- the gateway slot it came in on, if known
        number_id INTEGER REFERENCES numbers(id),
        operation_id INTEGER REFERENCES operations(id),
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at TEXT NOT NULL,            -- as the source reports it
        created_at TEXT NOT NULL,             -- when rentbox stored it
        -- unrouted (no open rental: kept, never pushed) | pending | delivered | failed
        push_state TEXT NOT NULL
            CHECK (push_state IN ('unrouted', 'pending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT,                 -- when pending
        last_error TEXT,
        delivered_at TEXT
    );
    -- The outbox: pending SMS in the order they fall due.
    CREATE INDEX sms_outbox ON sms(next_attempt_at) WHERE push_state = 'pending';
    -- An operation's SMS (ops show, sms list --operation).
    CREATE INDEX sms_by_operation ON sms(operation_id) WHERE operation_id IS NOT NULL;
    -- A number's SMS (sms list --number).
    CREATE INDEX sms_by_number ON sms(number, id);
    -- Failed pushes (sms list --failed, status).
    CREATE INDEX sms_failed ON sms(id) WHERE push_state = 'failed'
    """)


@migrations()
def m003_removed_numbers_and_meta(db: Database) -> None:
    _run(db, """
    -- A removed number leaves the pool but keeps its history (and its id, should it be
    -- imported again). Removal also clears `enabled`, so pool.FREE needs no change.
    ALTER TABLE numbers ADD COLUMN removed_at TEXT;

    -- Small facts about the running server that the CLI reports: when it started and how
    -- it is set up (never a secret), and when Onlinesim last called.
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,                  -- JSON
        updated_at TEXT NOT NULL
    )
    """)


@migrations()
def m004_guard_met_by_accepted_sms(db: Database) -> None:
    _run(db, """
    -- The guard window is met by an SMS that Onlinesim *accepted* within it (protocol.md
    -- 5), not by one rentbox merely stored: the column says so now. Values written
    -- before this migration are when the first SMS was stored. The partial index
    -- operations_awaiting_sms follows the rename.
    ALTER TABLE operations RENAME COLUMN first_sms_at TO sms_accepted_at
    """)


@migrations()
def m005_sim_presence(db: Database) -> None:
    _run(db, """
    -- SIM presence (presence.py). A number is governed by presence once a source has
    -- reported it (`seen_by` set); until then it is offered as before. `offline` is 1
    -- only for a governed number whose SIM is not in a port now; every existing number
    -- starts at 0, so an upgraded database offers exactly what it offered before.
    ALTER TABLE numbers ADD COLUMN offline INTEGER NOT NULL DEFAULT 0
        CHECK (offline IN (0, 1));
    ALTER TABLE numbers ADD COLUMN offline_reason TEXT;  -- silent | dropped | by hand
    ALTER TABLE numbers ADD COLUMN offline_since TEXT;
    ALTER TABLE numbers ADD COLUMN seen_at TEXT;         -- last reported present
    ALTER TABLE numbers ADD COLUMN seen_by TEXT;         -- the source of that report

    -- "Free" now also means "SIM not offline" (pool.FREE): the free-number indexes are
    -- rebuilt on the new predicate, same columns and purposes as in m001, so that a claim
    -- on a pool that is mostly offline still reads one index entry.
    DROP INDEX numbers_free_by_idle;
    DROP INDEX numbers_free_by_country;
    DROP INDEX numbers_free_by_operator;
    CREATE INDEX numbers_free_by_idle ON numbers(idle_since)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL AND offline = 0;
    CREATE INDEX numbers_free_by_country ON numbers(country, idle_since)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL AND offline = 0;
    CREATE INDEX numbers_free_by_operator ON numbers(country, operator, idle_since)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL AND offline = 0;

    -- Online governed numbers by last report: the ones whose window has ended are a
    -- range at the head, whatever the history.
    CREATE INDEX numbers_presence_due ON numbers(seen_at)
        WHERE offline = 0 AND seen_by IS NOT NULL;
    -- The offline numbers (status, presence turned off).
    CREATE INDEX numbers_offline ON numbers(offline_since) WHERE offline = 1;
    -- One gateway's numbers (its report replaces its previous one).
    CREATE INDEX numbers_by_gateway ON numbers(seen_by) WHERE seen_by IS NOT NULL;
    -- Numbers by gateway port (presence by port, SMS routed by port).
    CREATE INDEX numbers_by_port ON numbers(port) WHERE port IS NOT NULL
    """)


@migrations()
def m006_counters_and_books(db: Database) -> None:
    """Figures kept as the books change, so that reading them costs the same at 1,000 and
    1,000,000 numbers or operations: triggers update them in the very transaction that
    changes a row, whichever code path changes it. `rentbox housekeep --verify` recounts
    them from the rows (books.verify). The expressions below are this migration's own
    copies (a shipped migration never changes); later ones must keep them in step."""
    free = ("{r}.operation_id IS NULL AND {r}.enabled = 1 AND {r}.banned_until IS NULL"
            " AND {r}.offline = 0")
    state = ("CASE WHEN {r}.removed_at IS NOT NULL THEN NULL"
             " WHEN {r}.operation_id IS NOT NULL AND {r}.enabled = 0 THEN 'rented_disabled'"
             " WHEN {r}.operation_id IS NOT NULL THEN 'rented'"
             " WHEN {r}.enabled = 0 THEN 'disabled'"
             " WHEN {r}.banned_until IS NOT NULL THEN 'banned'"
             " WHEN {r}.offline = 1 THEN 'offline' ELSE 'free' END")
    sim = ("CASE WHEN {r}.removed_at IS NOT NULL THEN NULL"
           " WHEN {r}.offline = 1 THEN 'sim_offline'"
           " WHEN {r}.seen_by IS NULL THEN 'sim_unwatched' ELSE 'sim_online' END")
    # An operation's contribution to the books, and the day and country it counts under
    # (reports.py: a closed rental on the day it closed, an open one on the day it began).
    day = "substr(coalesce({r}.finished_at, {r}.created_at), 1, 10)"
    country = ("coalesce({r}.country,"
               " (SELECT country FROM numbers WHERE numbers.id = {r}.number_id))")
    figures = {
        "operations": "1",
        "sold": "coalesce({r}.finish_status = 3, 0)",
        "cancelled": "coalesce({r}.finish_status = 4, 0)",
        "refunded": "coalesce({r}.finish_status = 5, 0)",
        "wrong_service": "coalesce({r}.finish_status = 1, 0)",
        "open": "{r}.state = 'open'",
        "failed": "{r}.failed_at IS NOT NULL",
        "with_sms": "{r}.sms_accepted_at IS NOT NULL",
        "credited_kopecks": "CASE WHEN {r}.finish_status = 3"
                            " THEN coalesce({r}.final_sum_kopecks, 0) ELSE 0 END",
        "pending_kopecks": "CASE WHEN {r}.state = 'open' AND {r}.sms_accepted_at IS NOT NULL"
                           " AND {r}.failed_at IS NULL THEN {r}.initial_sum_kopecks ELSE 0 END",
    }
    names = ", ".join(figures)

    def on(template: str, row: str) -> str:
        return template.format(r=row)

    def add_books(row: str, sign: str) -> str:
        values = ", ".join(f"{sign}({on(v, row)})" for v in figures.values())
        updates = ", ".join(f"{k} = {k} + excluded.{k}" for k in figures)
        return (f"INSERT INTO books_daily (day, country, {names}) SELECT {on(day, row)},"
                f" {on(country, row)}, {values} WHERE true"
                f" ON CONFLICT (day, country) DO UPDATE SET {updates};")

    def count_keys(row: str, sign: int) -> str:
        return (f"INSERT INTO pool_counts (key, n) SELECT key, {sign} FROM"
                f" (SELECT {on(state, row)} AS key UNION ALL SELECT {on(sim, row)})"
                f" WHERE key IS NOT NULL ON CONFLICT (key) DO UPDATE SET n = n + {sign};")

    free_changed = (f"({on(free, 'OLD')}) IS NOT ({on(free, 'NEW')}) OR NEW.country IS NOT"
                    " OLD.country OR NEW.operator IS NOT OLD.operator")
    _run(db, f"""
    -- The country a rental is booked under: its number's when it was issued (a number
    -- whose country is corrected later keeps its past rentals where they were booked).
    ALTER TABLE operations ADD COLUMN country TEXT;
    UPDATE operations SET country =
        (SELECT country FROM numbers WHERE numbers.id = operations.number_id);

    -- What GET_SERVICES reports: free numbers per country and operator ('' for none).
    CREATE TABLE free_counts (
        country TEXT NOT NULL,
        operator TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (country, operator)
    ) WITHOUT ROWID;
    -- The pool by state (free, rented, …) and by SIM presence, for `rentbox status`.
    CREATE TABLE pool_counts (key TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
    -- The books per day and country, for `rentbox report` by day, week, month, country.
    CREATE TABLE books_daily (
        day TEXT NOT NULL,
        country TEXT NOT NULL,
        operations INTEGER NOT NULL, sold INTEGER NOT NULL, cancelled INTEGER NOT NULL,
        refunded INTEGER NOT NULL, wrong_service INTEGER NOT NULL, open INTEGER NOT NULL,
        failed INTEGER NOT NULL, with_sms INTEGER NOT NULL,
        credited_kopecks INTEGER NOT NULL, pending_kopecks INTEGER NOT NULL,
        PRIMARY KEY (day, country)
    ) WITHOUT ROWID;

    CREATE TRIGGER numbers_counted_insert AFTER INSERT ON numbers BEGIN
        INSERT INTO free_counts (country, operator, n)
            SELECT NEW.country, coalesce(NEW.operator, ''), 1 WHERE {on(free, 'NEW')}
            ON CONFLICT (country, operator) DO UPDATE SET n = n + 1;
        {count_keys('NEW', 1)}
    END;
    CREATE TRIGGER numbers_counted_delete AFTER DELETE ON numbers BEGIN
        UPDATE free_counts SET n = n - 1 WHERE country = OLD.country
            AND operator = coalesce(OLD.operator, '') AND {on(free, 'OLD')};
        {count_keys('OLD', -1)}
    END;
    CREATE TRIGGER numbers_counted_free AFTER UPDATE
        OF operation_id, enabled, banned_until, offline, country, operator ON numbers
        WHEN {free_changed}
    BEGIN
        UPDATE free_counts SET n = n - 1 WHERE country = OLD.country
            AND operator = coalesce(OLD.operator, '') AND {on(free, 'OLD')};
        INSERT INTO free_counts (country, operator, n)
            SELECT NEW.country, coalesce(NEW.operator, ''), 1 WHERE {on(free, 'NEW')}
            ON CONFLICT (country, operator) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER numbers_counted_state AFTER UPDATE
        OF operation_id, enabled, banned_until, offline, removed_at, seen_by ON numbers
        WHEN ({on(state, 'OLD')}) IS NOT ({on(state, 'NEW')})
          OR ({on(sim, 'OLD')}) IS NOT ({on(sim, 'NEW')})
    BEGIN
        {count_keys('OLD', -1)}
        {count_keys('NEW', 1)}
    END;

    CREATE TRIGGER operations_booked_insert AFTER INSERT ON operations BEGIN
        {add_books('NEW', '')}
    END;
    CREATE TRIGGER operations_booked_update AFTER UPDATE OF state, finish_status,
        final_sum_kopecks, initial_sum_kopecks, failed_at, sms_accepted_at, finished_at,
        created_at, number_id ON operations
    BEGIN
        {add_books('OLD', '-')}
        {add_books('NEW', '')}
    END;

    INSERT INTO free_counts (country, operator, n)
        SELECT country, coalesce(operator, ''), count(*) FROM numbers
        WHERE {on(free, 'numbers')} GROUP BY 1, 2;
    INSERT INTO pool_counts (key, n)
        SELECT key, count(*) FROM (SELECT {on(state, 'numbers')} AS key FROM numbers
            UNION ALL SELECT {on(sim, 'numbers')} FROM numbers)
        WHERE key IS NOT NULL GROUP BY key;
    INSERT INTO books_daily (day, country, {names})
        SELECT {on(day, 'operations')}, {on(country, 'operations')},
            {", ".join(f"sum({on(v, 'operations')})" for v in figures.values())}
        FROM operations GROUP BY 1, 2;

    -- The claim when a client's exclusions cover the head of the idle order: free numbers
    -- in number order, to seek each allowed prefix range (operations.open_rent).
    CREATE INDEX numbers_free_by_number ON numbers(number)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL AND offline = 0;
    CREATE INDEX numbers_free_by_country_number ON numbers(country, number)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL AND offline = 0;
    CREATE INDEX numbers_free_by_operator_number ON numbers(country, operator, number)
        WHERE operation_id IS NULL AND enabled = 1 AND banned_until IS NULL AND offline = 0;
    -- Operations by when they count in the books (a report over a period of the raw rows).
    CREATE INDEX operations_by_booking ON operations(coalesce(finished_at, created_at))
    """)


@migrations()
def m007_sms_retention(db: Database) -> None:
    _run(db, """
    -- SMS texts (one-time codes) are not kept for ever (retention.py): when one is pruned,
    -- its text is replaced and this says when; the row and its delivery facts stay.
    ALTER TABLE sms ADD COLUMN pruned_at TEXT;
    -- SMS that belong to no rental, not yet pruned, by age.
    CREATE INDEX sms_unrouted_unpruned ON sms(created_at)
        WHERE operation_id IS NULL AND pruned_at IS NULL
    """)


@migrations()
def m008_alerts(db: Database) -> None:
    _run(db, """
    -- Conditions the partner must hear about (alerts.py): one row per condition, active
    -- from when it started until it cleared. Kept across restarts, so a condition that
    -- still holds after one is not announced again.
    CREATE TABLE alerts (
        key TEXT PRIMARY KEY,                -- e.g. onlinesim_silent, banned:4915123456789
        message TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'cleared')),
        started_at TEXT NOT NULL,
        cleared_at TEXT
    );
    CREATE INDEX alerts_active ON alerts(started_at) WHERE state = 'active';
    CREATE INDEX alerts_recent ON alerts(coalesce(cleared_at, started_at));
    -- Messages to the partner's channels, sent by their own thread (like the SMS outbox).
    CREATE TABLE alert_outbox (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,               -- telegram | webhook
        kind TEXT NOT NULL,                  -- alert | summary | test
        text TEXT NOT NULL,
        detail TEXT,                         -- JSON for the webhook
        created_at TEXT NOT NULL,
        next_attempt_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        sent_at TEXT,
        last_error TEXT
    );
    CREATE INDEX alert_outbox_due ON alert_outbox(next_attempt_at) WHERE sent_at IS NULL
    """)


@migrations()
def m009_test_rentals(db: Database) -> None:
    """Rentals opened by `rentbox selftest --reserve` (GET_NUMBER with X-Rentbox-Test: 1)
    are marked: they never count as failures and are never in the books. m006's two book
    triggers keep their bodies (its figures) and only gain a WHEN that leaves tests out;
    the flag is set when a rental opens and never changes."""
    _run(db, """
    -- 1 for a self-test rental: no income, no failure, not in the books (tallies.py).
    ALTER TABLE operations ADD COLUMN test INTEGER NOT NULL DEFAULT 0 CHECK (test IN (0, 1))
    """)
    for name, head, guarded in (
        ("operations_booked_insert", "AFTER INSERT ON operations BEGIN",
         "AFTER INSERT ON operations WHEN NEW.test = 0 BEGIN"),
        ("operations_booked_update", "ON operations\n    BEGIN",
         "ON operations WHEN OLD.test = 0 AND NEW.test = 0\n    BEGIN"),
    ):
        sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                         (name,)).fetchone()[0]
        if sql.count(head) != 1:
            raise RuntimeError(f"m009: trigger {name} is not the one m006 created")
        db.execute(f"DROP TRIGGER {name}")
        db.execute(sql.replace(head, guarded))


@migrations()
def m010_expired_sms(db: Database) -> None:
    """An SMS of a rental that ended (FINISH, a close by hand, or a failed guard window)
    before Onlinesim took it is `expired`: never pushed, since Onlinesim routes a push by
    the phone number, and the number may be rented to someone else by then. The table is
    rebuilt with the wider CHECK (SQLite cannot alter one in place), as SQLite documents:
    a new table, the rows copied, the old one dropped, the new one renamed, the indexes
    created again from their own SQL; the AUTOINCREMENT sequence is carried over, so no
    smsId is ever reused."""
    old_check = "CHECK (push_state IN ('unrouted', 'pending', 'delivered', 'failed'))"
    new_check = "CHECK (push_state IN ('unrouted', 'pending', 'delivered', 'failed', 'expired'))"
    table_sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table'"
                           " AND name = 'sms'").fetchone()[0]
    if table_sql.count(old_check) != 1 or not table_sql.startswith("CREATE TABLE sms ("):
        raise RuntimeError("m010: table sms is not the one m002 and m007 made")
    indexes = [sql for (sql,) in db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sms'"
        " AND sql IS NOT NULL ORDER BY name")]
    triggers = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
                          " AND tbl_name = 'sms'").fetchone()[0]
    if triggers:
        raise RuntimeError("m010: table sms has triggers this migration does not carry over")
    sequence = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sms'").fetchone()
    columns = ", ".join(c.name for c in db["sms"].columns)
    db.execute(table_sql.replace(old_check, new_check)
               .replace("| pending | delivered | failed",
                        "| pending | delivered | failed | expired", 1)
               .replace("CREATE TABLE sms (", "CREATE TABLE sms_m010 (", 1))
    db.execute(f"INSERT INTO sms_m010 ({columns}) SELECT {columns} FROM sms")
    db.execute("DROP TABLE sms")
    db.execute("ALTER TABLE sms_m010 RENAME TO sms")
    for sql in indexes:
        db.execute(sql)
    if sequence is not None:
        db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'sms'",
                   (sequence[0],))
    _run(db, """
    -- What an earlier rentbox left waiting for rentals that have ended: expired now.
    UPDATE sms SET push_state = 'expired', next_attempt_at = NULL,
        last_error = 'its rental ended before Onlinesim took it (on upgrade)'
        WHERE push_state = 'pending' AND operation_id IN
            (SELECT id FROM operations WHERE state = 'closed' OR failed_at IS NOT NULL);
    -- The expired SMS (status, the status page).
    CREATE INDEX sms_expired ON sms(id) WHERE push_state = 'expired'
    """)


@migrations()
def m012_presence_by_gateway_ports(db: Database) -> None:
    _run(db, """
    -- The numbers of a box that no gateway has reported yet, by port (presence.py
    -- _take_charge: the range of ports after `gw1:` once any port of box gw1 reports).
    -- Only unwatched numbers are in it, so after a box's first report its range is empty
    -- and every later report of each of its ports reads nothing here.
    CREATE INDEX numbers_unwatched_by_port ON numbers(port)
        WHERE seen_by IS NULL AND port IS NOT NULL AND removed_at IS NULL
    """)


@migrations()
def m013_activations(db: Database) -> None:
    """Single-service activations on the same pool (protocol.md 6). An activation is an
    operation whose `service` is not 'rent' (the column is m001's): one id sequence and
    one `numbers.operation_id` for both kinds, so a number is in one operation at a time.

    Like m006, the expressions below are this migration's own copies: FREE (pool.py) and
    the books' figures (tallies.py) must stay in step with them."""
    free = ("{r}.operation_id IS NULL AND {r}.enabled = 1 AND {r}.banned_until IS NULL"
            " AND {r}.offline = 0")
    figures = {
        "operations": "1",
        "sold": "coalesce({r}.finish_status = 3, 0)",
        "cancelled": "coalesce({r}.finish_status = 4, 0)",
        "refunded": "coalesce({r}.finish_status = 5, 0)",
        "wrong_service": "coalesce({r}.finish_status = 1, 0)",
        "open": "{r}.state = 'open'",
        "failed": "{r}.failed_at IS NOT NULL",
        "with_sms": "{r}.sms_accepted_at IS NOT NULL",
        "credited_kopecks": "CASE WHEN {r}.finish_status = 3"
                            " THEN coalesce({r}.final_sum_kopecks, 0) ELSE 0 END",
        "pending_kopecks": "CASE WHEN {r}.state = 'open' AND {r}.sms_accepted_at IS NOT NULL"
                           " AND {r}.failed_at IS NULL THEN {r}.initial_sum_kopecks ELSE 0 END",
    }
    names = ", ".join(figures)
    day = "substr(coalesce({r}.finished_at, {r}.created_at), 1, 10)"

    def on(template: str, row: str) -> str:
        return template.format(r=row)

    def add_books(row: str, sign: str) -> str:
        values = ", ".join(f"{sign}({on(v, row)})" for v in figures.values())
        updates = ", ".join(f"{k} = {k} + excluded.{k}" for k in figures)
        return (f"INSERT INTO books_by_service (day, service, {names}) SELECT {on(day, row)},"
                f" {row}.service, {values} WHERE true"
                f" ON CONFLICT (day, service) DO UPDATE SET {updates};")

    def spent_of(number: str, sign: int) -> str:
        """Move the services `number` is spent for in or out of spent_free_counts."""
        if sign < 0:
            return (f"UPDATE spent_free_counts SET n = n - 1 WHERE country = {number}.country"
                    f" AND operator = coalesce({number}.operator, '') AND service IN"
                    f" (SELECT service FROM service_uses WHERE number_id = {number}.id"
                    f" AND spent_at IS NOT NULL) AND {on(free, number)};")
        return (f"INSERT INTO spent_free_counts (country, operator, service, n)"
                f" SELECT {number}.country, coalesce({number}.operator, ''), service, 1"
                f" FROM service_uses WHERE number_id = {number}.id AND spent_at IS NOT NULL"
                f" AND {on(free, number)}"
                " ON CONFLICT (country, operator, service) DO UPDATE SET n = n + 1;")

    def use_counted(use: str, sign: int) -> str:
        """Count one spent service_uses row in (or out of) spent_free_counts if its
        number is free."""
        return (f"INSERT INTO spent_free_counts (country, operator, service, n)"
                f" SELECT numbers.country, coalesce(numbers.operator, ''), {use}.service,"
                f" {sign} FROM numbers WHERE numbers.id = {use}.number_id"
                f" AND {use}.spent_at IS NOT NULL AND {on(free, 'numbers')}"
                f" ON CONFLICT (country, operator, service) DO UPDATE SET n = n + {sign};")

    free_changed = (f"({on(free, 'OLD')}) IS NOT ({on(free, 'NEW')}) OR NEW.country IS NOT"
                    " OLD.country OR NEW.operator IS NOT OLD.operator")
    _run(db, f"""
    -- An activation whose time ran out without a FINISH (RENTBOX_ACTIVATION_S): its number
    -- was offered again; it stays open, flagged, until its FINISH or a close by hand.
    ALTER TABLE operations ADD COLUMN lapsed_at TEXT;
    -- Activations whose time may run out (operations.lapse_activations).
    CREATE INDEX operations_activation_due ON operations(created_at)
        WHERE state = 'open' AND service <> 'rent' AND lapsed_at IS NULL
          AND failed_at IS NULL;

    -- A number's history with each service it was sold for: cancelled tries, and when it
    -- was spent (sold, or refused as already used, or cancelled too often): a spent
    -- number is never offered for that service again (services.py).
    CREATE TABLE service_uses (
        number_id INTEGER NOT NULL REFERENCES numbers(id),
        service TEXT NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,   -- activations cancelled (FINISH 4)
        spent_at TEXT,                      -- NULL: may still be offered for it
        updated_at TEXT NOT NULL,
        PRIMARY KEY (number_id, service)
    ) WITHOUT ROWID;

    -- Free numbers (pool.FREE) spent for a service, per country and operator ('' for
    -- none): what GET_SERVICES takes from free_counts to count a service, so that the
    -- count is exact and costs the same at any pool size.
    CREATE TABLE spent_free_counts (
        country TEXT NOT NULL,
        operator TEXT NOT NULL,
        service TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (country, operator, service)
    ) WITHOUT ROWID;
    CREATE TRIGGER service_uses_counted_insert AFTER INSERT ON service_uses
        WHEN NEW.spent_at IS NOT NULL
    BEGIN
        {use_counted('NEW', 1)}
    END;
    CREATE TRIGGER service_uses_counted_update AFTER UPDATE OF spent_at, number_id, service
        ON service_uses
    BEGIN
        {use_counted('OLD', -1)}
        {use_counted('NEW', 1)}
    END;
    CREATE TRIGGER service_uses_counted_delete AFTER DELETE ON service_uses
        WHEN OLD.spent_at IS NOT NULL
    BEGIN
        {use_counted('OLD', -1)}
    END;
    CREATE TRIGGER numbers_counted_spent AFTER UPDATE
        OF operation_id, enabled, banned_until, offline, country, operator ON numbers
        WHEN {free_changed}
    BEGIN
        {spent_of('OLD', -1)}
        {spent_of('NEW', 1)}
    END;
    CREATE TRIGGER numbers_counted_spent_delete AFTER DELETE ON numbers BEGIN
        {spent_of('OLD', -1)}
    END;

    -- The books per day and service ('rent', or an activation's service): `report --by
    -- product` and `--by service`, the status page, /metrics. Self-test operations are
    -- left out, as in books_daily.
    CREATE TABLE books_by_service (
        day TEXT NOT NULL,
        service TEXT NOT NULL,
        operations INTEGER NOT NULL, sold INTEGER NOT NULL, cancelled INTEGER NOT NULL,
        refunded INTEGER NOT NULL, wrong_service INTEGER NOT NULL, open INTEGER NOT NULL,
        failed INTEGER NOT NULL, with_sms INTEGER NOT NULL,
        credited_kopecks INTEGER NOT NULL, pending_kopecks INTEGER NOT NULL,
        PRIMARY KEY (day, service)
    ) WITHOUT ROWID;
    CREATE TRIGGER operations_booked_by_service_insert AFTER INSERT ON operations
        WHEN NEW.test = 0
    BEGIN
        {add_books('NEW', '')}
    END;
    CREATE TRIGGER operations_booked_by_service_update AFTER UPDATE OF state, finish_status,
        final_sum_kopecks, initial_sum_kopecks, failed_at, sms_accepted_at, finished_at,
        created_at, service ON operations WHEN OLD.test = 0 AND NEW.test = 0
    BEGIN
        {add_books('OLD', '-')}
        {add_books('NEW', '')}
    END;
    INSERT INTO books_by_service (day, service, {names})
        SELECT {on(day, 'operations')}, service,
            {", ".join(f"sum({on(v, 'operations')})" for v in figures.values())}
        FROM operations WHERE test = 0 GROUP BY 1, 2;

    -- Where a pending SMS is pushed: 'rent' (RENTBOX_PUSH_URL) or 'activation'
    -- (RENTBOX_ACTIVATION_PUSH_URL), from its operation's kind when it was routed. Each
    -- route has its own pusher, which reads only its own due SMS.
    ALTER TABLE sms ADD COLUMN route TEXT;
    UPDATE sms SET route = 'rent' WHERE push_state = 'pending';
    CREATE INDEX sms_outbox_by_route ON sms(route, next_attempt_at)
        WHERE push_state = 'pending'
    """)


@migrations()
def m014_buyers(db: Database) -> None:
    """Several buyers on one pool (protocol.md 7, buyers.py): each operation names its
    buyer and the currency of its sums (minor units: kopecks for RUB, cents for USD).

    - `held_counts`: numbers held by an operation, per buyer and country (a buyer's
      reserved share is what it holds against the country's numbers in use);
    - `books_by_buyer`: the books per day, buyer and currency;
    - the RUB books (books_daily, books_by_service) keep their triggers and count money
      of RUB operations only: a USD income is never added to roubles;
    - service names that the shipped aliases (buyers.ALIASES, as of this migration) map
      to a short code are stored under it, so a number spent for `whatsapp` stays spent
      for `wa` whichever buyer asks."""
    figures = {
        "operations": "1",
        "sold": "coalesce({r}.finish_status = 3, 0)",
        "cancelled": "coalesce({r}.finish_status = 4, 0)",
        "refunded": "coalesce({r}.finish_status = 5, 0)",
        "wrong_service": "coalesce({r}.finish_status = 1, 0)",
        "open": "{r}.state = 'open'",
        "failed": "{r}.failed_at IS NOT NULL",
        "with_sms": "{r}.sms_accepted_at IS NOT NULL",
        "credited_minor": "CASE WHEN {r}.finish_status = 3"
                          " THEN coalesce({r}.final_sum_kopecks, 0) ELSE 0 END",
        "pending_minor": "CASE WHEN {r}.state = 'open' AND {r}.sms_accepted_at IS NOT NULL"
                         " AND {r}.failed_at IS NULL THEN {r}.initial_sum_kopecks ELSE 0 END",
    }
    names = ", ".join(figures)
    day = "substr(coalesce({r}.finished_at, {r}.created_at), 1, 10)"

    def on(template: str, row: str) -> str:
        return template.format(r=row)

    def add_books(row: str, sign: str) -> str:
        values = ", ".join(f"{sign}({on(v, row)})" for v in figures.values())
        updates = ", ".join(f"{k} = {k} + excluded.{k}" for k in figures)
        return (f"INSERT INTO books_by_buyer (day, buyer, currency, {names})"
                f" SELECT {on(day, row)}, {row}.buyer, {row}.currency, {values} WHERE true"
                f" ON CONFLICT (day, buyer, currency) DO UPDATE SET {updates};")

    _run(db, f"""
    -- Who bought the operation ('onlinesim', 'smshub', or a buyers-file name), and the
    -- currency of its sums (ISO 4217 letters).
    ALTER TABLE operations ADD COLUMN buyer TEXT NOT NULL DEFAULT 'onlinesim';
    ALTER TABLE operations ADD COLUMN currency TEXT NOT NULL DEFAULT 'RUB';

    CREATE TABLE held_counts (
        buyer TEXT NOT NULL,
        country TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (buyer, country)
    ) WITHOUT ROWID;
    CREATE TRIGGER numbers_held_update AFTER UPDATE OF operation_id, country ON numbers
        WHEN OLD.operation_id IS NOT NEW.operation_id OR OLD.country IS NOT NEW.country
    BEGIN
        UPDATE held_counts SET n = n - 1 WHERE country = OLD.country
            AND buyer = (SELECT buyer FROM operations WHERE id = OLD.operation_id);
        INSERT INTO held_counts (buyer, country, n)
            SELECT buyer, NEW.country, 1 FROM operations WHERE id = NEW.operation_id
            ON CONFLICT (buyer, country) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER numbers_held_delete AFTER DELETE ON numbers
        WHEN OLD.operation_id IS NOT NULL
    BEGIN
        UPDATE held_counts SET n = n - 1 WHERE country = OLD.country
            AND buyer = (SELECT buyer FROM operations WHERE id = OLD.operation_id);
    END;
    INSERT INTO held_counts (buyer, country, n)
        SELECT o.buyer, n.country, count(*) FROM numbers n
        JOIN operations o ON o.id = n.operation_id GROUP BY 1, 2;

    CREATE TABLE books_by_buyer (
        day TEXT NOT NULL,
        buyer TEXT NOT NULL,
        currency TEXT NOT NULL,
        operations INTEGER NOT NULL, sold INTEGER NOT NULL, cancelled INTEGER NOT NULL,
        refunded INTEGER NOT NULL, wrong_service INTEGER NOT NULL, open INTEGER NOT NULL,
        failed INTEGER NOT NULL, with_sms INTEGER NOT NULL,
        credited_minor INTEGER NOT NULL, pending_minor INTEGER NOT NULL,
        PRIMARY KEY (day, buyer, currency)
    ) WITHOUT ROWID;
    CREATE TRIGGER operations_booked_by_buyer_insert AFTER INSERT ON operations
        WHEN NEW.test = 0
    BEGIN
        {add_books('NEW', '')}
    END;
    CREATE TRIGGER operations_booked_by_buyer_update AFTER UPDATE OF state, finish_status,
        final_sum_kopecks, initial_sum_kopecks, failed_at, sms_accepted_at, finished_at,
        created_at, buyer, currency ON operations WHEN OLD.test = 0 AND NEW.test = 0
    BEGIN
        {add_books('OLD', '-')}
        {add_books('NEW', '')}
    END;
    INSERT INTO books_by_buyer (day, buyer, currency, {names})
        SELECT {on(day, 'operations')}, buyer, currency,
            {", ".join(f"sum({on(v, 'operations')})" for v in figures.values())}
        FROM operations WHERE test = 0 GROUP BY 1, 2, 3
    """)
    # The RUB books: their money figures gain `currency = 'RUB'` (as m009 did for tests,
    # each trigger keeps its body otherwise). No operation has another currency yet.
    money = [(re.compile(r"CASE WHEN (NEW|OLD)\.finish_status = 3 THEN"),
              r"CASE WHEN \1.finish_status = 3 AND \1.currency = 'RUB' THEN"),
             (re.compile(r"CASE WHEN (NEW|OLD)\.state = 'open' AND"),
              r"CASE WHEN \1.currency = 'RUB' AND \1.state = 'open' AND")]
    for name, expected in (("operations_booked_insert", 1), ("operations_booked_update", 2),
                           ("operations_booked_by_service_insert", 1),
                           ("operations_booked_by_service_update", 2)):
        sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                         (name,)).fetchone()[0]
        for pattern, replacement in money:
            sql, found = pattern.subn(replacement, sql)
            if found != expected:
                raise RuntimeError(f"m014: trigger {name} is not the one m006/m013 created")
        db.execute(f"DROP TRIGGER {name}")
        db.execute(sql)
    # Long service names stored under their short codes (this migration's own copy of the
    # aliases). A number's uses of both names become one: the most tries, the first spend.
    for alias, code in (("whatsapp", "wa"), ("telegram", "tg"), ("vkontakte", "vk"),
                        ("vkcom", "vk"), ("google", "go"), ("gmail", "go"),
                        ("instagram", "ig"), ("facebook", "fb"), ("twitter", "tw"),
                        ("viber", "vi"), ("odnoklassniki", "ok"), ("avito", "av"),
                        ("yandex", "ya"), ("mailru", "ma"), ("discord", "ds"),
                        ("tiktok", "lf"), ("amazon", "am"), ("openai", "dr")):
        db.execute(
            "INSERT INTO service_uses (number_id, service, tries, spent_at, updated_at)"
            " SELECT number_id, ?, tries, spent_at, updated_at FROM service_uses"
            " WHERE service = ? AND true ON CONFLICT (number_id, service) DO UPDATE SET"
            " tries = max(tries, excluded.tries),"
            " spent_at = min(coalesce(spent_at, excluded.spent_at),"
            "                coalesce(excluded.spent_at, spent_at)),"
            " updated_at = max(updated_at, excluded.updated_at)", (code, alias))
        db.execute("DELETE FROM service_uses WHERE service = ?", (alias,))
        db.execute("UPDATE operations SET service = ? WHERE service = ?", (code, alias))


@migrations()
def m015_numbers_counted_in_bulk(db: Database) -> None:
    """Let a bulk import add its new numbers to the tallies once per batch instead of
    row by row (tallies.numbers_inserted_in_bulk): m006's insert trigger on `numbers` was
    about half of an import's merge. The trigger now stands aside while `tallies_deferred`
    holds its row. Only an import's own write transaction puts that row there, and it
    deletes it again (after counting the batch) before it commits: no other connection
    ever sees it, and an import rolled back (Ctrl-C, a crash) takes it back with it.

    The trigger keeps its body, given a WHEN clause. The batch's count stands in for
    exactly that body (free_counts and pool_counts), so a trigger that does anything
    else by now is refused here rather than deferred."""
    found = db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'"
                       " AND name = 'numbers_counted_insert'").fetchone()
    head = "CREATE TRIGGER numbers_counted_insert AFTER INSERT ON numbers BEGIN"
    # The tables its statements write (an upsert's DO UPDATE is its INSERT's).
    writes = re.findall(r"(?<!DO )\b(INSERT INTO|UPDATE|DELETE FROM|REPLACE INTO)\s+(\w+)",
                        found[0] if found else "")
    if not found or not found[0].startswith(head) or writes != [
            ("INSERT INTO", "free_counts"), ("INSERT INTO", "pool_counts")]:
        raise RuntimeError("m015: numbers_counted_insert is not the trigger m006 made; "
                           "tallies.numbers_inserted_in_bulk counts only what that one did")
    db.execute("""
    -- One row, or none: while it has its row, inserted numbers are left to the
    -- transaction that put it there to count (tallies.numbers_inserted_in_bulk).
    CREATE TABLE tallies_deferred (only INTEGER PRIMARY KEY CHECK (only = 1))""")
    db.execute("DROP TRIGGER numbers_counted_insert")
    db.execute(found[0].replace(head, "CREATE TRIGGER numbers_counted_insert AFTER INSERT"
                                " ON numbers\n    WHEN NOT EXISTS (SELECT 1 FROM tallies_deferred)"
                                "\nBEGIN", 1))


def migrate(db: Database) -> None:
    """Bring the schema up to date. Safe to call on every start; never rebuilds data.

    All pending migrations run in one IMMEDIATE transaction (sqlite-utils nests each
    one in a savepoint), so two processes starting at once cannot both apply one. An
    up-to-date file, the usual case, is only read: a CLI command beside the running
    server takes no write lock just to open the database.
    """
    if not migrations.pending(db):
        return
    with db.transaction():
        migrations.apply(db)
