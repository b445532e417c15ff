"""Background workers (workers.py): a failing pass never ends the loop, a full disk is
logged without a traceback and not on every pass, and stop() ends a wait at once."""

import logging
import threading

from rentbox.errors import Unavailable
from rentbox.workers import Periodic

from conftest import wait_until


class Scripted(Periodic):
    name = "rentbox-test-worker"
    what = "test pass"
    log = logging.getLogger("rentbox.test-worker")

    def __init__(self, outcomes, interval_s=0.01):
        super().__init__(interval_s)
        self.outcomes = list(outcomes)
        self.passes = 0
        self.done = threading.Event()

    def run_pass(self):
        self.passes += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if not self.outcomes:
            self.done.set()
        if outcome is not None:
            raise outcome


def test_failures_never_end_the_loop_and_a_full_disk_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="rentbox.test-worker")
    full = Unavailable("the disk is full")
    worker = Scripted([full, full, full, ValueError("a bug"), None, full])
    worker.start()
    try:
        assert worker.done.wait(10)
        assert wait_until(lambda: worker.passes >= 7)  # it goes on after the script
    finally:
        worker.stop()
    assert not worker._thread.is_alive()
    assert worker._thread.name == "rentbox-test-worker"
    skipped = [r for r in caplog.records if "test pass skipped" in r.getMessage()]
    # Three passes in a row on a full disk: one line; after a good pass, a new line.
    assert len(skipped) == 2 and all(r.exc_info is None for r in skipped)
    failed = [r for r in caplog.records if "test pass failed" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None


def test_stop_ends_a_long_wait_at_once():
    worker = Scripted([], interval_s=3600)
    worker.start()
    worker.stop(timeout_s=5)
    assert not worker._thread.is_alive() and worker.passes == 0
