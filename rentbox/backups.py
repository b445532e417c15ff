"""Backups: scheduled copies of the database inside serve, their pruning, and restoring
the database from a backup or a replica.

A scheduled backup is `db.backup()`, the method of `rentbox backup`: SQLite's online
backup into a `.partial` file, checked (quick_check), then given its name
`rentbox-<UTC time>.db` without ever overwriting a file. It runs in its own thread and
never takes the write lock: the copy is one read snapshot (WAL lets writers go on
meanwhile), and SQLite releases the GIL while it copies and checks pages.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rentbox import events, meta, replication
from rentbox.clock import Clock, from_text, to_text
from rentbox.db import (Connections, Database, backup, hold_serving_lock, is_being_served,
                        open_database)
from rentbox.errors import Conflict, DatabaseError, InvalidInput, NotFound, RentboxError
from rentbox.workers import Worker

if TYPE_CHECKING:  # `status` reads the backups' note, and needs no plan
    from rentbox.settings import BackupPlan

log = logging.getLogger("rentbox.backups")

# rentbox-2026-11-01T12-00-00Z.db: sorting the names sorts the backups by time.
_NAME = re.compile(r"^rentbox-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)\.db$")
_NAME_TIME = "%Y-%m-%dT%H-%M-%SZ"
# What a scheduled backup that died mid-copy (kill -9, power loss) leaves behind: its
# partial copy and SQLite's side files of it, as large as the database.
_LEFTOVER = re.compile(r"^rentbox-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ\.db\.partial"
                       r"(-journal|-wal|-shm)?$")

# The restore's id jump (see `restore`): an upper bound of the ids per second one server
# could issue, several times the fastest measured (benchmarks/get_number.py: about
# 1,600 GET_NUMBER a second on two cores, all of them writes serialised on one file) ...
MAX_IDS_PER_S = 10_000
# ... over the restored point's age plus this margin (clocks that disagree, the time
# the restore itself takes).
AGE_MARGIN_S = 3600.0
# New ids start at a multiple of this, so that they stand out in the books.
ID_ROUND = 1_000_000
# The tables whose ids leave rentbox: activationId (operations) and smsId (sms).
_ISSUED_IDS = ("operations", "sms")


def backup_name(now: dt.datetime) -> str:
    """The file name of the scheduled backup taken at `now`."""
    return f"rentbox-{now.astimezone(dt.timezone.utc).strftime(_NAME_TIME)}.db"


def hand_backup_name(now: dt.datetime) -> str:
    """The file name of `rentbox backup FOLDER/` at `now`: a scheduled backup's name with
    `-by-hand`, so that the two sort together by time but pruning the scheduled ones
    never deletes it."""
    return backup_name(now)[:-len(".db")] + "-by-hand.db"


def backup_by_hand(db: Database, path: str | Path, now: dt.datetime) -> tuple[Path, int]:
    """`rentbox backup PATH`: copy the database (db.backup) to PATH, a file that must not
    exist yet, or into PATH, a folder (one that exists, or any path written with a
    trailing slash), as hand_backup_name(now). Returns the file written and its size.
    Never overwrites: a file of that name already there is refused (Conflict)."""
    target = Path(path)
    if str(path).endswith(("/", os.sep)) or target.is_dir():
        target = target / hand_backup_name(now)
    return target, backup(db, target)


def scheduled_backups(folder: Path) -> list[Path]:
    """The scheduled backups in `folder`, oldest first (other files are not theirs)."""
    try:
        names = sorted(entry.name for entry in os.scandir(folder)
                       if _NAME.match(entry.name) and entry.is_file(follow_symlinks=False))
    except OSError:
        return []
    return [Path(folder) / name for name in names]


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` scheduled backups in `folder`, and what a scheduled
    backup that died mid-copy left (its `.partial` files: only one scheduled backup is
    written at a time, and it has finished when this runs); returns the deleted ones.
    Touches no other file."""
    found = scheduled_backups(folder)
    try:
        leftovers = sorted(Path(folder) / entry.name for entry in os.scandir(folder)
                           if _LEFTOVER.match(entry.name)
                           and entry.is_file(follow_symlinks=False))
    except OSError:
        leftovers = []
    deleted = []
    for path in found[:max(0, len(found) - keep)] + leftovers:
        try:
            path.unlink()
            deleted.append(path)
        except OSError as error:
            log.warning("could not delete the old backup %s: %s", path, error.strerror)
    return deleted


def write_backup(db: Database, plan: BackupPlan, now: dt.datetime,
                 wait: Callable[[float], object] = time.sleep) -> dict:
    """One scheduled backup: write and check it, prune the old ones, note it in `meta`.
    Returns the note. Raises what `db.backup` raises (nothing is noted then). The copy
    pauses with `wait(seconds)` to keep to `plan.mib_s`."""
    target = Path(plan.folder) / backup_name(now)
    began_s = time.monotonic()
    # Consistent, checked, never overwriting; paced, so that the server's commits on the
    # same disk keep their latency.
    size = backup(db, target, bytes_per_s=plan.mib_s * 1024 * 1024, wait=wait)
    took_s = time.monotonic() - began_s
    # The copy's snapshot kept the WAL from being checkpointed, and the WAL grew (290 MB
    # during a 15 s copy under load). Checkpoint it here, in this thread, rather than in the
    # next request's commit (measured: worst GET_NUMBER 1.06 s -> 0.53 s). PASSIVE: it
    # never waits for nor blocks a writer. Not while Litestream owns the checkpoints.
    db.checkpoint()
    deleted = prune(Path(plan.folder), plan.keep)
    note = {**_plan_facts(plan), "last_at": to_text(now), "last_path": str(target),
            "last_bytes": size, "last_duration_s": round(took_s, 3),
            "verified": "quick_check ok", "pruned": len(deleted),
            "kept": len(scheduled_backups(Path(plan.folder))),
            "failed_at": None, "last_error": None}
    meta.put(db, now, meta.BACKUPS, note)
    return note


def note_failure(db: Database, plan: BackupPlan, now: dt.datetime, error: str) -> None:
    """Note in `meta` that a scheduled backup failed, keeping what the last good one was."""
    previous = meta.get(db, meta.BACKUPS) or {}
    meta.put(db, now, meta.BACKUPS, {**previous, **_plan_facts(plan),
                                     "failed_at": to_text(now), "last_error": error})


def _plan_facts(plan: BackupPlan) -> dict:
    return {"folder": str(plan.folder), "every_s": plan.every_s, "keep": plan.keep,
            "mib_s": plan.mib_s}


def next_backup_at(note: dict | None, plan: BackupPlan, now: dt.datetime) -> dt.datetime:
    """When the next scheduled backup is due: a period after the last one written into
    the same folder (so a restart neither repeats nor postpones it), else now."""
    if note and note.get("last_at") and note.get("folder") == str(plan.folder):
        return max(now, from_text(note["last_at"]) + dt.timedelta(seconds=plan.every_s))
    return now


class BackupScheduler(Worker):
    """A named background thread that writes a scheduled backup every `plan.every_s`.

    It owns its own connection (from `connections`), never holds the write lock while
    copying, survives a failed backup (noted in `meta`, shown by `rentbox status`, tried
    again a period later), and stops promptly between backups (a backup under way is
    finished first: SQLite cannot pause one).
    """

    name = "rentbox-backups"

    def __init__(self, connections: Connections, clock: Clock, plan: BackupPlan):
        folder = Path(plan.folder) if plan.folder else None
        if folder is None or not folder.is_dir():
            raise Conflict(f"the backup folder {folder} does not exist (RENTBOX_BACKUP_DIR): "
                           "create it, on another disk than the database")
        super().__init__()
        self._connections = connections
        self._clock = clock
        self._plan = plan

    def stop(self, timeout_s: float = 600) -> None:
        super().stop(timeout_s)

    def _run(self) -> None:
        try:
            due = next_backup_at(meta.get(self._connections.get(), meta.BACKUPS), self._plan,
                                 self._clock.now())
        except Exception:
            log.exception("could not read the last backup's time; backing up now")
            due = self._clock.now()
        while True:
            wait_s = max(0.0, (due - self._clock.now()).total_seconds())
            # Wait on the Event, not sleep(): stop() ends the wait at once.
            if self._stop.wait(wait_s):
                return
            now = self._clock.now()
            self.run_once(now)
            due = now + dt.timedelta(seconds=self._plan.every_s)

    def run_once(self, now: dt.datetime) -> dict | None:
        """Write one backup now; returns its note, or None if it failed (logged, noted)."""
        db = self._connections.get()
        try:
            # Its pauses wait on the stop Event: a stop ends them, and the copy finishes
            # at full speed.
            note = write_backup(db, self._plan, now, wait=self._stop.wait)
        except Exception as error:
            message = str(error) if isinstance(error, RentboxError) else repr(error)
            if isinstance(error, RentboxError):
                log.error("scheduled backup failed: %s", message)
            else:
                log.exception("scheduled backup failed")
            try:
                note_failure(db, self._plan, now, message)
            except Exception as failure:  # a full disk: status shows the old note
                log.warning("could not note the failed backup: %s", failure)
            return None
        log.info("backed up the database to %s (%d bytes, checked, %.1f s); %d kept, %d "
                 "deleted", note["last_path"], note["last_bytes"], note["last_duration_s"],
                 note["kept"], note["pruned"])
        return note


def status(note: dict | None, server: dict | None, now: dt.datetime) -> tuple[dict | None, list[str]]:
    """Scheduled backups as `rentbox status` shows them, and their warnings (`trouble`).
    None when the server (running or last run) takes none."""
    every_s = (server or {}).get("backup_every_s")
    if not every_s:
        return None, []
    facts = {"every_s": every_s, **(note or {})}
    facts["last_age_s"] = (round((now - from_text(facts["last_at"])).total_seconds())
                           if facts.get("last_at") else None)
    return facts, list(trouble(note, server, now).values())


def trouble(note: dict | None, server: dict | None, now: dt.datetime) -> dict[str, str]:
    """What is wrong with the scheduled backups, by kind: `backup_failed` when the last one
    failed, `backup_overdue` when the last good one (or the server's start) is older than
    twice the period while the server runs. Empty when all is well or none are taken."""
    every_s = (server or {}).get("backup_every_s")
    if not every_s:
        return {}
    facts = note or {}
    failed_at = facts.get("failed_at")
    if failed_at and (not facts.get("last_at") or failed_at > facts["last_at"]):
        return {"backup_failed": f"the last scheduled backup failed at {failed_at[:10]} "
                                 f"{failed_at[11:16]} UTC: {facts.get('last_error')}"}
    if server.get("running"):
        since = facts.get("last_at") or server.get("started_at")
        if since and (now - from_text(since)).total_seconds() > 2 * every_s:
            what = (f"the last scheduled backup is from {since[:10]} {since[11:16]} UTC"
                    if facts.get("last_at") else "no scheduled backup has been written")
            return {"backup_overdue": f"{what}, over twice RENTBOX_BACKUP_EVERY_S ago"}
    return {}


# ---------------------------------------------------------------------------------------
# rentbox restore
# ---------------------------------------------------------------------------------------


def restore(source: str, db_path: Path, now: dt.datetime, *,
            litestream: str | None = None) -> dict:
    """Put the books of `source` (a backup file, or a replica URL restored through
    Litestream) in place of the database at `db_path`, and return what the partner must
    know about it.

    - Refuses while a server runs on `db_path`, and holds the serving lock meanwhile, so
      that none starts.
    - The source is copied to `<db>.restoring` and checked there (SQLite's integrity
      check, rentbox's schema, migrated if older) before anything else changes.
    - The database it replaces is kept aside, not overwritten: `<db>.before-restore-<UTC
      time>` with its -wal and -shm files (and Litestream's local state folder).
    - Ids: the lost server may have issued activationIds and smsIds after the restored
      point. New ones start past `MAX_IDS_PER_S` x (the point's age + `AGE_MARGIN_S`)
      above the highest id in the restored books (or in the old database, if it can still
      be read), rounded up to a multiple of `ID_ROUND` (the next id is one more): more than
      the lost server could have issued in that time, however busy it was. An event
      records the restore.
    """
    db_path = Path(db_path)
    folder = db_path.parent if str(db_path.parent) else Path(".")
    if not folder.is_dir():
        raise Conflict(f"cannot restore into {db_path}: the folder {folder} does not exist")
    if is_being_served(db_path):
        raise Conflict(f"a rentbox serve is running on {db_path}: stop it first (restore "
                       "replaces the database it holds)")
    from_replica = replication.is_url(source)
    shown = replication.redact_url(source) if from_replica else source
    if not from_replica and not Path(source).is_file():
        raise NotFound(f"{source} does not exist or is not a file")
    lock = hold_serving_lock(db_path)  # no server can start on the file meanwhile
    try:
        staging = db_path.with_name(db_path.name + ".restoring")
        _claim(staging)
        try:
            if from_replica:
                staging.unlink()  # Litestream writes it itself, and wants no file there
                replication.restore_replica(source, staging, litestream)
            else:
                _copy(Path(source), staging)
            facts = _prepare(staging, db_path, now, shown)
        except BaseException:
            _remove_with_side_files(staging)
            raise
        facts["kept_aside"] = _move_aside(db_path, now)
        _put_in_place(staging, db_path)
    finally:
        lock.close()
    return {"database": str(db_path), "source": shown, **facts}


def what_to_check(result: dict) -> list[str]:
    """What a partner must check after a restore: what changed after the restored point is
    not in the books, and some of it is still real at Onlinesim and at the gateways."""
    return [
        f"rentals opened after it (activationIds above {result['last_activation_id']}) are "
        "unknown here, and their numbers look free: find them in Onlinesim's partner panel "
        "and `rentbox numbers disable` those numbers until the rentals end (a FINISH for "
        "one is answered NO_OPERATION)",
        f"the {result['open_rentals']} "
        f"{'rental' if result['open_rentals'] == 1 else 'rentals'} open in these books "
        "(`rentbox ops list "
        "--open`): Onlinesim may have closed some since; each holds its number until a "
        "FINISH comes",
        f"SMS received after it (smsIds above {result['last_sms_id']}) are lost: the "
        "gateways' logs show which codes never reached Onlinesim",
        "changes to the pool after it (imports, disable, enable, remove, bans lifted): make "
        "them again",
        "replication: before serving, give RENTBOX_REPLICA_URL a new path, and keep the old "
        "replica until the new one has been restored once",
    ]


def _claim(staging: Path) -> None:
    """Create the staging file exclusively; one left by an interrupted restore (or its
    SQLite side files) is in the way and must be looked at first."""
    for path in (staging, *(Path(f"{staging}{side}") for side in ("-journal", "-wal", "-shm"))):
        if os.path.lexists(path):
            raise Conflict(f"{path} already exists: an interrupted restore left it; check it, "
                           "remove it and run the restore again")
    try:
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600))
    except OSError as error:
        raise Conflict(f"cannot write {staging}: {error.strerror}") from None


def _copy(source: Path, staging: Path) -> None:
    """Copy a backup file with SQLite's backup, reading it without changing it."""
    from urllib.parse import quote

    try:
        reader = sqlite3.connect(f"file:{quote(str(source.resolve()))}?mode=ro", uri=True)
        try:
            writer = sqlite3.connect(str(staging))
            try:
                reader.backup(writer)
            finally:
                writer.close()
        finally:
            reader.close()
    except sqlite3.DatabaseError as error:
        raise InvalidInput(f"{source} cannot be read as a SQLite database: {error}") from None


def _prepare(staging: Path, db_path: Path, now: dt.datetime, source: str) -> dict:
    """Check the restored copy, move its ids past what may have been issued since, and
    record the restore in it. Returns the facts for the partner."""
    check = sqlite3.connect(str(staging))
    try:
        result = [r[0] for r in check.execute("PRAGMA integrity_check").fetchall()]
        tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise InvalidInput(f"{source} is not a SQLite database: {error}") from None
    finally:
        check.close()
    if result != ["ok"]:
        raise DatabaseError(f"the copy of {source} failed SQLite's integrity check: "
                            f"{'; '.join(result[:3])}")
    if not {"_sqlite_migrations", "operations", "sms", "meta"} <= tables:
        raise InvalidInput(f"{source} is not a rentbox database")
    db = open_database(staging)  # refuses a newer schema; migrates an older one
    try:
        point = _restored_point(db)
        age_s = max(0.0, (now - from_text(point)).total_seconds()) if point else 0.0
        highest = {table: max(_sequence(db, table), _old_sequence(db_path, table))
                   for table in _ISSUED_IDS}
        jump = math.ceil(MAX_IDS_PER_S * (age_s + AGE_MARGIN_S))
        start = {t: -(-(highest[t] + jump) // ID_ROUND) * ID_ROUND + 1 for t in _ISSUED_IDS}
        restored_ids = {t: _sequence(db, t) for t in _ISSUED_IDS}
        opened = db.row("SELECT count(*) AS n FROM operations WHERE state = 'open'")["n"]
        with db.transaction():
            for table in _ISSUED_IDS:
                _set_sequence(db, table, start[table] - 1)
            events.record(db, now, "database_restored", source=source, restored_point_at=point,
                          age_s=round(age_s), next_activation_id=start["operations"],
                          next_sms_id=start["sms"])
    finally:
        db.close()  # the last connection: SQLite folds the WAL back into the file
    return {"restored_point_at": point, "age_s": round(age_s),
            "last_activation_id": restored_ids["operations"],
            "last_sms_id": restored_ids["sms"],
            "next_activation_id": start["operations"], "next_sms_id": start["sms"],
            "open_rentals": opened,
            "id_rule": f"ids continue past the highest one plus {MAX_IDS_PER_S:,} a second "
                       f"over the restored point's age plus {AGE_MARGIN_S:g} s"}


def _restored_point(db: Database) -> str | None:
    """The time of the last change in the books: the restored point is at or after it
    (each query reads one index entry or the last row)."""
    candidates = [
        db.row("SELECT at FROM events ORDER BY id DESC LIMIT 1"),
        db.row("SELECT created_at AS at FROM operations ORDER BY id DESC LIMIT 1"),
        db.row("SELECT max(coalesce(finished_at, created_at)) AS at FROM operations"),
        db.row("SELECT created_at AS at FROM sms ORDER BY id DESC LIMIT 1"),
        db.row("SELECT max(updated_at) AS at FROM meta"),
    ]
    found = [row["at"] for row in candidates if row and row["at"]]
    return max(found) if found else None


def _sequence(db: Database, table: str) -> int:
    row = db.row("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
    return int(row["seq"]) if row else 0


def _set_sequence(db: Database, table: str, value: int) -> None:
    """The next AUTOINCREMENT id of `table` becomes `value + 1`."""
    if db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (value, table)).rowcount == 0:
        db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, value))


def _old_sequence(db_path: Path, table: str) -> int:
    """The highest id of `table` in the database being replaced, if it can still be read
    (it may be broken: that is often why it is being replaced)."""
    if not db_path.is_file():
        return 0
    from urllib.parse import quote

    try:
        old = sqlite3.connect(f"file:{quote(str(db_path.resolve()))}?mode=ro", uri=True)
        try:
            row = old.execute("SELECT seq FROM sqlite_sequence WHERE name = ?",
                              (table,)).fetchone()
        finally:
            old.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def _side_files(path: Path) -> list[Path]:
    return [Path(f"{path}{side}") for side in ("", "-wal", "-shm", "-journal")]


def _remove_with_side_files(path: Path) -> None:
    for each in _side_files(path):
        each.unlink(missing_ok=True)


def _move_aside(db_path: Path, now: dt.datetime) -> str | None:
    """Keep the database being replaced as `<db>.before-restore-<UTC time>`, with its side
    files (its -wal may hold committed changes) and Litestream's local state folder (a new
    database must not inherit it). Returns the new name, or None if there was none."""
    present = [p for p in _side_files(db_path) if os.path.lexists(p)]
    litestream_state = db_path.with_name(f".{db_path.name}-litestream")
    if not present and not litestream_state.exists():
        return None
    stamp = now.astimezone(dt.timezone.utc).strftime(_NAME_TIME)
    for attempt in range(1, 100):  # two restores within a second get distinct names
        aside = db_path.with_name(f"{db_path.name}.before-restore-{stamp}"
                                  + (f".{attempt}" if attempt > 1 else ""))
        moves = [(p, Path(str(p).replace(str(db_path), str(aside), 1))) for p in present]
        if litestream_state.exists():
            moves.append((litestream_state,
                          litestream_state.with_name(f".{aside.name}-litestream")))
        if not any(os.path.lexists(target) for _, target in moves):
            break
    else:
        raise Conflict(f"cannot find a free name to keep {db_path} aside")
    for source, target in moves:
        os.rename(source, target)
    return str(aside)


def _put_in_place(staging: Path, db_path: Path) -> None:
    """Give the checked copy the database's name, never replacing a file that appeared
    there meanwhile, and make the new name durable."""
    try:
        os.link(staging, db_path)
    except FileExistsError:
        raise Conflict(f"{db_path} appeared during the restore; the restored copy is "
                       f"{staging}") from None
    except OSError:
        if os.path.lexists(db_path):
            raise Conflict(f"{db_path} appeared during the restore; the restored copy is "
                           f"{staging}") from None
        staging.replace(db_path)
    else:
        staging.unlink()
    folder = os.open(db_path.parent if str(db_path.parent) else ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
