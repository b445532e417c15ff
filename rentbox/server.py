"""Serving: waitress around the app, the pusher and housekeeping threads, clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading

from waitress import wasyncore
from waitress.server import create_server

from rentbox import __version__, meta, web
from rentbox.clock import Clock, SystemClock, to_text
from rentbox.config import Settings
from rentbox.db import Connections, hold_serving_lock, open_database
from rentbox.housekeeping import Housekeeper
from rentbox.push import Pusher

log = logging.getLogger("rentbox.server")

# waitress buffers a whole request before the app sees it; cap that buffer well above
# the app's own 64 KiB limit, which answers in the JSON error shape.
_WAITRESS_BODY_CAP = 1024 * 1024


def make_waitress(app, settings: Settings):
    """A waitress server for `app` with rentbox's adjustments (also used by benchmarks)."""
    return create_server(
        app,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        ident="rentbox",
        max_request_body_size=_WAITRESS_BODY_CAP,
        # Onlinesim cancels a call after 10 s; a connection idle for a minute is dead.
        channel_timeout=60,
        clear_untrusted_proxy_headers=True,
    )


class Server:
    """A running rentbox: waitress, the pusher, the housekeeper, and their connections."""

    def __init__(self, settings: Settings, clock: Clock | None = None):
        self.settings = settings
        self.clock = clock or SystemClock()
        open_database(settings.db).close()  # create and migrate before the first request
        self._lock_file = hold_serving_lock(settings.db)
        try:
            self.connections = Connections(settings.db)
            self.pusher = None
            if settings.push_url:
                self.pusher = Pusher(self.connections, self.clock, url=settings.push_url,
                                     api_key=settings.api_key, retry_s=settings.push_retry_s,
                                     timeout_s=settings.push_timeout_s,
                                     rules=settings.rules)
            self.housekeeper = Housekeeper(self.connections, self.clock, settings.rules,
                                           settings.housekeeping_s)
            app = web.wsgi(settings, self.clock, self.connections,
                           on_sms=self.pusher.wake if self.pusher else lambda: None)
            self._waitress = make_waitress(app, settings)
        except BaseException:
            self._lock_file.close()
            raise
        self._loop_thread: threading.Thread | None = None
        self._facts: dict | None = None
        self._stopped = threading.Event()
        self._done = threading.Event()

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return self._waitress.effective_port

    @property
    def url(self) -> str:
        host = self._waitress.effective_host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def run(self) -> None:
        """Serve until `stop()` is called (from another thread or a signal handler)."""
        if self._stopped.is_set():  # stopped before it started
            self._done.set()
            return
        self._loop_thread = threading.current_thread()
        self._record_start()
        self.housekeeper.start()
        if self.pusher:
            self.pusher.start()
        try:
            self._waitress.run()  # returns on SystemExit/KeyboardInterrupt in its loop
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self._shut_down()
            self._done.set()

    def _record_start(self) -> None:
        """What `rentbox status` tells about this server; no secret, only whether one is set."""
        s = self.settings
        now = self.clock.now()
        facts = {"started_at": to_text(now), "version": __version__, "pid": os.getpid(),
                 "url": self.url, "push_url_set": bool(s.push_url),
                 "sms_intake": bool(s.gateway_token), "smsgate_intake": bool(s.smsgate_key),
                 "guard_s": s.rules.guard_s, "guard_margin_s": s.rules.guard_margin_s,
                 "ban_after": s.rules.ban_after,
                 "ban_s": s.rules.ban_s, "push_retry_s": s.push_retry_s}
        meta.put(self.connections.get(), now, meta.SERVER, facts)
        self._facts = facts

    def start_in_thread(self) -> threading.Thread:
        """Serve from a background thread (tests, benchmarks)."""
        thread = threading.Thread(target=self.run, name="rentbox-waitress", daemon=True)
        thread.start()
        return thread

    def stop(self, timeout_s: float = 30) -> None:
        """Stop serving and close every connection. Safe to call more than once.

        From another thread, the loop is asked, through waitress's trigger (a self-pipe),
        to close its own sockets, which ends it: closing them under its select() from
        here would fail with EBADF in the loop thread.
        """
        loop = self._loop_thread
        if loop is not None and loop is not threading.current_thread() and loop.is_alive():
            # (A stop() that races a start_in_thread() before run() began shuts down here,
            # below; run() then finds the server closed.)
            self._waitress.trigger.pull_trigger(self._close_from_loop)
            self._done.wait(timeout_s)
        else:
            self._shut_down()

    def _close_from_loop(self) -> None:
        # Runs in the loop thread. With every channel closed the loop's map is empty
        # and waitress.run() returns (what waitress's own MultiSocketServer.close does).
        self._waitress.task_dispatcher.shutdown()
        wasyncore.close_all(self._waitress._map)

    def _shut_down(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        # Shut the worker threads down first, or they linger after close().
        self._waitress.task_dispatcher.shutdown()
        self._waitress.close()
        self.housekeeper.stop()
        if self.pusher:
            self.pusher.stop(timeout_s=self.settings.push_timeout_s + 5)
        if self._facts is not None:
            try:
                stopped = {**self._facts, "stopped_at": to_text(self.clock.now())}
                meta.put(self.connections.get(), self.clock.now(), meta.SERVER, stopped)
            except Exception:  # a clean stop matters more than this note
                log.exception("could not record the server's stop")
        self.connections.close_all()
        # Last: a new server may start once this one can no longer push anything.
        self._lock_file.close()


def serve(settings: Settings) -> None:
    """Run `rentbox serve` in the foreground until SIGINT or SIGTERM."""
    server = Server(settings)

    def on_signal(signum, frame):
        raise SystemExit(0)  # unwinds waitress's loop in the main thread

    signal.signal(signal.SIGTERM, on_signal)
    # waitress warns "Task queue depth is N" whenever requests wait for the worker; with
    # one worker (the measured best, see config.py) that is every burst, not a problem.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    log.info("rentbox %s serving on %s (database %s, %d worker thread%s)", __version__,
             server.url, settings.db, settings.threads, "" if settings.threads == 1 else "s")
    if not settings.push_url:
        log.warning("RENTBOX_PUSH_URL is not set: SMS are stored and wait in the outbox, "
                    "nothing is pushed to Onlinesim")
    if not settings.gateway_token:
        log.info("POST /sms is off: set RENTBOX_GATEWAY_TOKEN to take SMS from forwarders")
    if not settings.smsgate_key:
        log.info("POST /sms/smsgate is off: set RENTBOX_SMSGATE_KEY to take SMSGate webhooks")
    server.run()
    log.info("rentbox stopped")
