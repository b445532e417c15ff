"""The spool: SMS that a hook of a local SMS daemon (gammu-smsd, smstools3) left as files,
taken in by `rentbox serve`, so that none is lost while rentbox is down or restarting.

gammu-smsd runs its RunOnReceive hook, and smsd its eventhandler, once per received SMS
and never again, whatever the hook answers: an SMS the hook posted to `POST /sms` while
rentbox was down was lost. So the hooks (examples/gammu_run_on_receive.py,
examples/smstools3_eventhandler.py) write each SMS as one file into RENTBOX_SPOOL_DIR,
atomically (a temporary name starting with `.`, fsync, rename to `<name>.json`), and
`serve` takes the folder in every RENTBOX_SPOOL_EVERY_S (`SpoolReader`):

- A file is the JSON body of `POST /sms` (`to` or `port`, `from`, `text`, `id`,
  `received_at`), read by the same parser and stored by `sms.accept_sms` (the one durable
  path); it is removed only after that commit. Its `id`, or else its file name, is the
  source id, so a file taken in twice (a crash between the commit and the removal) is
  stored once, and so is an SMS that a hook also posted.
- Files are taken in the order of their names (the hooks name them by the time, in
  nanoseconds, so the oldest first); names starting with `.` are files still being written.
- A file that cannot be used (unreadable, not JSON, not an SMS) is moved to `bad/` with a
  WARNING that says why: never retried for ever, never deleted.
- While the database cannot be written, the files stay and are taken at a later pass.

`backlog` tells `rentbox status` how many files wait and since when, and how many are in
`bad/`, by reading the folder itself (it works while serve is down).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rentbox.clock import Clock, to_text
from rentbox.config import Rules
from rentbox.db import Connections, Database
from rentbox.errors import InvalidInput, Unavailable
from rentbox.workers import Periodic

if TYPE_CHECKING:  # the SMS path is imported by what takes files in, not by `status`
    from rentbox import sms

log = logging.getLogger("rentbox.spool")

# What a file waiting in the spool is called: `<anything>.json`, not starting with `.`.
SUFFIX = ".json"
# Where files that cannot be used are moved, inside the spool.
BAD = "bad"
# The largest file taken, as POST /sms takes no larger body.
MAX_FILE_BYTES = 64 * 1024


def is_waiting(name: str) -> bool:
    """Whether a file name in the spool is an SMS waiting (not one still being written)."""
    return name.endswith(SUFFIX) and not name.startswith(".")


@dataclasses.dataclass
class Taken:
    """What one pass over the spool did."""

    stored: int = 0       # new SMS
    duplicates: int = 0   # files whose SMS was stored before (taken in twice)
    bad: int = 0          # files moved to bad/
    new_for_rentals: bool = False  # an SMS entered the outbox: the pusher should wake

    @property
    def did_anything(self) -> bool:
        return bool(self.stored or self.duplicates or self.bad)


class Spool:
    """One spool folder and what a pass over it remembers (files it could not remove)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        # Files stored but not removable (their folder's permissions): warned about once.
        self._unremovable: set[str] = set()

    def check(self) -> None:
        """Refuse a folder that serve cannot use, with what to do (at start)."""
        if not self.folder.is_dir():
            raise InvalidInput(f"RENTBOX_SPOOL_DIR {self.folder} is not a folder: create it "
                               "(README, \"SMS daemons on this machine\") or unset it")
        if not os.access(self.folder, os.R_OK | os.W_OK | os.X_OK):
            raise InvalidInput(f"RENTBOX_SPOOL_DIR {self.folder}: rentbox may not read and "
                               "remove files there; give its user write access to the folder")

    def waiting(self) -> list[str]:
        """The names of the files waiting, oldest name first. Unavailable when the folder
        cannot be read (a pass is tried again later)."""
        try:
            names = os.listdir(self.folder)
        except OSError as error:
            raise Unavailable(f"cannot read the spool {self.folder}: "
                              f"{error.strerror or error}") from None
        return sorted(name for name in names if is_waiting(name))

    def take_in(self, db: Database, clock: Clock, rules: Rules,
                should_stop: Callable[[], bool] = lambda: False) -> Taken:
        """Store every SMS waiting (each its own commit) and remove its file after the
        commit. `Unavailable` (the disk is full) ends the pass as is: the files stay."""
        from rentbox import sms

        taken = Taken()
        for name in self.waiting():
            if should_stop():
                break
            if name in self._unremovable:
                self._remove(name)  # stored already: only its removal is left
                continue
            path = self.folder / name
            try:
                incoming = read_sms(path)
                accepted = sms.accept_sms(db, clock, incoming, rules)
            except FileNotFoundError:
                continue  # removed meanwhile (by hand): nothing to take
            except (InvalidInput, OSError) as error:
                reason = (error.strerror or str(error)) if isinstance(error, OSError) else (
                    str(error))
                self._set_aside(name, reason)
                taken.bad += 1
                continue
            if accepted.duplicate:
                taken.duplicates += 1
            else:
                taken.stored += 1
                taken.new_for_rentals |= accepted.push_state == "pending"
            self._remove(name)
        if taken.did_anything:
            log.info("spool %s: %d SMS stored, %d taken in before, %d set aside in %s/",
                     self.folder, taken.stored, taken.duplicates, taken.bad, BAD)
        return taken

    def _remove(self, name: str) -> None:
        try:
            (self.folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as error:
            # Stored: the file is taken in again at every pass (as a duplicate) until it
            # can be removed; said once.
            if name not in self._unremovable:
                self._unremovable.add(name)
                log.warning("spool file %s is stored but cannot be removed (%s): give rentbox "
                            "write access to %s", name, error.strerror or error, self.folder)
            return
        self._unremovable.discard(name)

    def _set_aside(self, name: str, reason: str) -> None:
        """Move a file that cannot be used to bad/, keeping its name, and say why."""
        bad = self.folder / BAD
        try:
            bad.mkdir(exist_ok=True)
            target, n = bad / name, 1
            while target.exists():  # one of that name was set aside before: keep both
                target, n = bad / f"{name}.{n}", n + 1
            os.replace(self.folder / name, target)
        except FileNotFoundError:
            return  # removed meanwhile (by hand)
        except OSError as error:
            raise Unavailable(f"cannot move spool file {name} to {bad}: "
                              f"{error.strerror or error}") from None
        log.warning("spool file %s cannot be used, moved to %s: %s; correct it and move it "
                    "back, or remove it", name, bad, _printable(reason))


def read_sms(path: Path) -> sms.IncomingSms:
    """The SMS in one spool file (the body of POST /sms). Raises InvalidInput (or OSError)
    for a file that cannot be used."""
    from rentbox import gateways, protocol

    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(f"the file is larger than {MAX_FILE_BYTES} bytes")
    incoming = gateways.parse_json_sms(protocol.parse_body(raw))
    if incoming.source_id is None:
        # The name is unique in the folder, and the same when the file is taken in again.
        incoming = dataclasses.replace(incoming, source_id=f"spool:{path.name}")
    return incoming


class SpoolReader(Periodic):
    """The thread of `serve` that takes the spool in every RENTBOX_SPOOL_EVERY_S."""

    name = "rentbox-spool"
    what = "spool pass"
    log = log

    def __init__(self, connections: Connections, clock: Clock, rules: Rules, folder: Path,
                 every_s: float, on_sms: Callable[[], None] = lambda: None):
        super().__init__(every_s)
        self.spool = Spool(folder)
        self.spool.check()
        self._connections = connections
        self._clock = clock
        self._rules = rules
        self._on_sms = on_sms

    def start(self) -> None:
        log.info("taking SMS from the spool %s every %g s", self.spool.folder, self._interval_s)
        super().start()

    def run_pass(self) -> None:
        taken = self.spool.take_in(self._connections.get(), self._clock, self._rules,
                                   self._stop.is_set)
        if taken.new_for_rentals:
            self._on_sms()


# ---------------------------------------------------------------------------------------
# rentbox status
# ---------------------------------------------------------------------------------------


def backlog(folder: Path, now: dt.datetime) -> dict:
    """The spool as `rentbox status` shows it: `waiting` files, the oldest one's time
    (`oldest_at`, `oldest_age_s`, by its modification time), files in bad/ (`bad`), and a
    `problem` when the folder cannot be read (by the user running status)."""
    folder = Path(folder)
    facts: dict = {"dir": str(folder), "waiting": 0, "oldest_at": None, "oldest_age_s": None,
                   "bad": 0, "problem": None}
    oldest: float | None = None
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if not is_waiting(entry.name):
                    continue
                try:
                    modified = entry.stat().st_mtime
                except FileNotFoundError:
                    continue  # taken in meanwhile
                facts["waiting"] += 1
                oldest = modified if oldest is None else min(oldest, modified)
    except OSError as error:
        facts["problem"] = error.strerror or str(error)
        return facts
    try:
        facts["bad"] = sum(1 for name in os.listdir(folder / BAD) if not name.startswith("."))
    except FileNotFoundError:
        pass
    except OSError as error:
        facts["problem"] = f"{BAD}/: {error.strerror or error}"
    if oldest is not None:
        at = dt.datetime.fromtimestamp(oldest, dt.timezone.utc)
        facts["oldest_at"] = to_text(at)
        facts["oldest_age_s"] = max(0, round((now - at).total_seconds()))
    return facts


def _printable(text: str) -> str:
    text = str(text)[:200]
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
