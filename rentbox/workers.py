"""Background threads of `serve`: one named daemon thread each, stopped promptly.

Every worker waits on its `_stop` Event, never in sleep(), so that `stop()` ends a wait
at once; `Periodic` adds the loop that most of them are: a pass every few seconds that
a failure never ends (a full disk is logged when it starts and every few minutes, a bug
with its traceback).
"""

from __future__ import annotations

import logging
import threading
import time

from rentbox.errors import Unavailable

# A pass failing because the disk is full is logged at most this often (seconds).
UNAVAILABLE_LOG_EVERY_S = 300.0


class Worker:
    """A named daemon thread that runs `_run` until `stop()` sets `_stop`."""

    name = "rentbox-worker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:  # pragma: no cover - every worker has its own
        raise NotImplementedError


class Periodic(Worker):
    """A worker that calls `run_pass()` every `interval_s` seconds. A pass that raises
    Unavailable (the disk is full: /health and `rentbox status` say so throughout) is
    logged without a traceback when it starts and every UNAVAILABLE_LOG_EVERY_S; any
    other failure with its traceback; neither ends the loop."""

    log = logging.getLogger("rentbox")
    # A pass, for the log lines: "housekeeping pass", "alert delivery pass".
    what = "pass"

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._unavailable_logged_s: float | None = None

    def run_pass(self) -> None:  # pragma: no cover - every periodic worker has its own
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.run_pass()
                self._unavailable_logged_s = None
            except Unavailable as error:
                now_s = time.monotonic()
                if self._unavailable_logged_s is None or (
                        now_s - self._unavailable_logged_s >= UNAVAILABLE_LOG_EVERY_S):
                    self._unavailable_logged_s = now_s
                    self.log.warning("%s skipped: %s; trying every %g s", self.what, error,
                                     self._interval_s)
            except Exception:
                # One failing pass must not end the worker for the life of the server.
                self.log.exception("%s failed; the next one runs in %g s", self.what,
                                   self._interval_s)
