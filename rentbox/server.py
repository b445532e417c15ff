"""Serving: waitress around the app, start-up checks, and a clean shutdown."""

from __future__ import annotations

import logging
import signal
import threading

from waitress.server import create_server

from rentbox import web
from rentbox.clock import Clock, SystemClock
from rentbox.config import Settings
from rentbox.db import Connections, open_database

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
    """A running rentbox: the waitress server and the connections it uses."""

    def __init__(self, settings: Settings, clock: Clock | None = None):
        self.settings = settings
        self.clock = clock or SystemClock()
        open_database(settings.db).close()  # create and migrate before the first request
        self.connections = Connections(settings.db)
        self._stopped = threading.Event()
        self._waitress = make_waitress(web.wsgi(settings, self.clock, self.connections),
                                       settings)

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
        try:
            self._waitress.run()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.stop()

    def start_in_thread(self) -> threading.Thread:
        """Serve from a background thread (tests, benchmarks)."""
        thread = threading.Thread(target=self.run, name="rentbox-waitress", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop serving and close every connection. Safe to call more than once."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        # Shut the worker threads down first, or they linger after close().
        self._waitress.task_dispatcher.shutdown()
        self._waitress.close()
        self.connections.close_all()


def serve(settings: Settings) -> None:
    """Run `rentbox serve` in the foreground until SIGINT or SIGTERM."""
    server = Server(settings)

    def on_signal(signum, frame):
        raise SystemExit(0)  # unwinds waitress's loop in the main thread

    signal.signal(signal.SIGTERM, on_signal)
    # waitress warns "Task queue depth is N" whenever requests wait for the worker; with
    # one worker (the measured best, see config.py) that is every burst, not a problem.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    log.info("rentbox %s serving on %s (database %s, %d threads)",
             web.__version__, server.url, settings.db, settings.threads)
    server.run()
    log.info("rentbox stopped")
