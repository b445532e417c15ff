"""Logs: how `rentbox serve` writes its log lines (stderr), in text or JSON, times in UTC.

Every line carries a UTC time with its zone, as the CLI shows times, so that a line can
be matched with `rentbox ops show` or Onlinesim's support without guessing the server's
time zone. `json` writes one object per line for log shippers (Loki, Vector, journald's
JSON readers). Messages never hold a secret: the code that logs makes sure of that.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


class UtcFormatter(logging.Formatter):
    """`2026-11-28T21:05:03.120Z INFO rentbox.rules: message`."""

    converter = time.gmtime

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record, datefmt=None):  # noqa: N802 (logging's name)
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + \
            f".{int(record.msecs):03d}Z"


class JsonFormatter(UtcFormatter):
    """One JSON object per line: at, level, logger, message (and the error, if any)."""

    def format(self, record):
        line = {"at": self.formatTime(record), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class _LineHandler(logging.StreamHandler):
    """A StreamHandler that formats a line before it takes the handler's lock, and holds
    the lock only to write it: with eight request threads logging each call, formatting
    under the lock made them queue for it (a fifth of their time, benchmarks/buyers.py
    under py-spy)."""

    def handle(self, record: logging.LogRecord) -> bool:
        passed = self.filter(record)
        if passed:
            try:
                line = self.format(record) + self.terminator
            except Exception:
                self.handleError(record)
                return bool(passed)
            with self.lock:
                try:
                    self.stream.write(line)
                    self.flush()
                except Exception:
                    self.handleError(record)
        return bool(passed)


def configure(level: str = "info", fmt: str = "text", stream=None) -> None:
    """Send every rentbox (and waitress) log line at `level` or above to `stream`."""
    # A line names no thread, process or source line: logging need not look them up for
    # each record (the logging HOWTO's "Optimization"; a quarter of a line's cost).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = _LineHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else UtcFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
