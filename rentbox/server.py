"""Serving: waitress around the app, the pusher and housekeeping threads, clean shutdown."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask

from rentbox import __version__, meta, reports, smshub, web
from rentbox.clock import Clock, SystemClock, to_text
from rentbox.config import ONLINESIM, SMSHUB
from rentbox.db import CHECKPOINT_EVERY_S, Connections, hold_serving_lock, open_database
from rentbox.errors import Unavailable
from rentbox.gateways.goip import GoipListener
from rentbox.gateways.poll import Poller
from rentbox.alerts import AlertSender
from rentbox.backups import BackupScheduler
from rentbox.housekeeping import Checkpointer, Housekeeper
from rentbox.metrics import Metrics
from rentbox.push import ACTIVATION_ROUTE, RENT_ROUTE, Pusher
from rentbox.replication import Replicator
from rentbox.settings import Settings
from rentbox.spool import SpoolReader
from rentbox.writer import Writer
from rentbox.web.calls import ARRIVED_AGE_KEY

# Each protocol's push wire beside Onlinesim's (push.py): one adapter module per protocol.
WIRES = {SMSHUB: smshub.WIRE}

log = logging.getLogger("rentbox.server")

# waitress buffers a whole request before the app sees it; cap that buffer well above
# the app's own 64 KiB limit, which answers in the JSON error shape.
_WAITRESS_BODY_CAP = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much of the server one connection may hold, so that slow or idle connections
    never lock Onlinesim and the gateways out. The reverse proxy is the first line of
    defence (examples/reverse-proxy.md); these hold when it is missing or let them through.

    Measured with benchmarks/slow_clients.py, 120 connections sending their headers a byte
    a second plus 200 sending nothing: with waitress's defaults (100 connections, no
    deadline for a request to arrive) 0 of 9 GET_NUMBER were answered within 10 s; with
    these, all 2,804 calls of 30 s were, p99 21 ms.
    """

    # Seconds a request, header and body, may take to arrive from its first byte. Onlinesim
    # gives up on a call after 10 s, so a request still arriving then is already cancelled.
    request_deadline_s: float = 10.0
    # Seconds a connection may stay open without starting a request, counted from when it
    # opened or had its last answer (not from its last byte, as waitress's channel_timeout
    # is: blank lines are bytes): a fresh connection that never speaks, or one kept alive
    # after an answer. 15 s is ample for a caller to reuse it within a burst of calls.
    idle_s: int = 15
    # Open connections in all (waitress's default is 100). Far above what Onlinesim and the
    # gateways open, and well under the usual 1024 file descriptors per process.
    connection_limit: int = 500
    # Open connections from one address. Onlinesim's acceptance test opens about 30 at once.
    connections_per_address: int = 64
    # Addresses the per-address cap does not apply to: the reverse proxy's. Behind it every
    # connection comes from loopback, and capping it would starve every caller; for those,
    # the deadlines above and the proxy's own limits do the work.
    proxy_addresses: frozenset[str] = frozenset({"127.0.0.1", "::1"})


def make_waitress(app, settings: Settings, limits: Limits = Limits()):
    """A waitress server for `app` with rentbox's adjustments (also used by benchmarks)."""
    return _Waitress(
        app,
        limits,
        host=settings.host,
        port=settings.port,
        threads=settings.threads,
        ident="rentbox",
        max_request_body_size=_WAITRESS_BODY_CAP,
        channel_timeout=limits.idle_s,  # (unused: _Waitress.maintenance replaces its rule)
        connection_limit=limits.connection_limit,
        # Check the deadlines every second (waitress's default is every 30 s).
        cleanup_interval=1,
        # select() fails on a descriptor numbered 1024 or more; poll() has no such limit.
        asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True,
    )


class _JsonErrorTask(ErrorTask):
    """What waitress answers itself (a request it cannot parse, one over its size limits,
    an application that raised), in rentbox's one error shape instead of plain text."""

    def execute(self):
        error = self.request.error
        body = web.json_error_body(f"{error.reason}: {error.body}")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", web.JSON_TYPE))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _TimedRequest(HTTPRequestParser):
    """A request being received, with the time its first byte arrived; and `Expect:
    100-continue` honoured only while a body is still to come."""

    def __init__(self, adj):
        super().__init__(adj)
        self.started_at = time.time()  # waitress's clock: maintenance() is given time.time()

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.completed:
            # Complete at the end of its header: no body (no Content-Length, or 0, and not
            # chunked), or an error to answer (a bad Content-Length, one over the size
            # limit). waitress 3.0.2's channel sends "100 Continue" for any request that
            # still expects it, then marks it incomplete again: the request is never
            # handed to a task and the client waits until the request deadline. There is
            # nothing to continue with: drop the expectation, and the request is answered
            # at once, without a 100. (A request with a body to come still expects it and
            # gets its 100 Continue.)
            self.expect_continue = False
        return consumed


class _AgedTask(WSGITask):
    """A request handed to the application, with how long ago its first byte arrived: a
    request that queued behind others (a write blocked by another process) may already be
    past its caller's deadline (web/calls.py)."""

    def get_environment(self):
        environ = super().get_environment()
        environ[ARRIVED_AGE_KEY] = max(0.0, time.time() - self.request.started_at)
        return environ


class _Channel(HTTPChannel):
    """One connection; refused at once when its address already holds its share."""

    error_task_class = _JsonErrorTask
    parser_class = _TimedRequest
    task_class = _AgedTask

    def __init__(self, server, sock, addr, adj, map=None):
        super().__init__(server, sock, addr, adj, map)
        # When this connection was opened or last had a request answered: its idle time
        # counts from here. (waitress counts from the last byte, and blank lines between
        # requests are bytes that make no request: "\r\n\r\n" every few seconds would hold
        # a connection for ever.)
        self.answered_at = self.creation_time
        if not server.admits(self):
            self.will_close = True  # closed on the loop's next pass, never read

    def service(self):
        # Runs in a worker thread while maintenance() runs in the loop thread. Set before
        # as well as after: waitress takes the answered request off `requests` inside
        # service(), and in between the connection must not look idle since long ago.
        self.answered_at = time.time()
        super().service()
        self.answered_at = time.time()


class _Waitress(TcpWSGIServer):
    """waitress's TCP server with rentbox's `Limits`. One listening socket: the first
    address `host` resolves to (create_server would serve each, but `Server` needs one)."""

    channel_class = _Channel

    def __init__(self, app, limits: Limits, **adjustments):
        self.limits = limits
        self._refused = self._overdue = 0
        self._next_report_at = 0.0
        super().__init__(app, **adjustments)

    def admits(self, channel: HTTPChannel) -> bool:
        """Whether a new connection stays within the cap of its address."""
        address = channel.addr[0]
        if address in self.limits.proxy_addresses:
            return True
        held = sum(1 for c in self.active_channels.values()
                   if c.addr[0] == address and not c.will_close)  # this one included
        if held <= self.limits.connections_per_address:
            return True
        self._refused += 1
        return False

    def maintenance(self, now: float) -> None:
        """Close connections idle for `idle_s` since they opened or had their last answer,
        and those whose request is still arriving `request_deadline_s` after it began.
        (This replaces waitress's pass, which only closes connections silent that long.)"""
        idle_cutoff = now - self.limits.idle_s
        request_cutoff = now - self.limits.request_deadline_s
        for channel in self.active_channels.values():
            if channel.requests or channel.will_close:
                continue  # a request is waiting for or getting its answer; or closing
            request = channel.request  # the one still arriving, if any
            if request is None:
                if channel.answered_at < idle_cutoff:
                    channel.will_close = True
            # (A request read while the one before it was answered starts its clock then.)
            elif max(request.started_at, channel.answered_at) < request_cutoff:
                channel.will_close = True
                self._overdue += 1
        if (self._refused or self._overdue) and now >= self._next_report_at:
            # At most once a minute: under attack this would be every second.
            what = []
            if self._overdue:
                what.append(f"closed {self._overdue} connection(s) whose request took over "
                            f"{self.limits.request_deadline_s:g} s to arrive")
            if self._refused:
                what.append(f"refused {self._refused} connection(s) over "
                            f"{self.limits.connections_per_address} from one address")
            log.warning("%s (counted over up to a minute)", "; ".join(what))
            self._refused = self._overdue = 0
            self._next_report_at = now + 60


class Server:
    """A running rentbox: waitress, the pusher, the housekeeper, and their connections."""

    def __init__(self, settings: Settings, clock: Clock | None = None,
                 limits: Limits = Limits()):
        self.settings = settings
        self.clock = clock or SystemClock()
        open_database(settings.db).close()  # create and migrate before the first request
        self._lock_file = hold_serving_lock(settings.db)
        try:
            # While Litestream replicates, it owns the checkpoints (replication.py).
            # Otherwise a thread of its own checkpoints, off the write path.
            owns_checkpoints = not settings.replication.url
            self.connections = Connections(settings.db, autocheckpoint=owns_checkpoints,
                                           checkpointed_elsewhere=owns_checkpoints)
            self.checkpointer = (Checkpointer(self.connections, CHECKPOINT_EVERY_S)
                                 if owns_checkpoints else None)
            # Scheduled backups and Litestream, each in its own thread (off unless set).
            self.backups = (BackupScheduler(self.connections, self.clock, settings.backups)
                            if settings.backups.folder else None)
            self.replicator = (Replicator(self.connections, self.clock,
                                          settings.replication, settings.db)
                               if settings.replication.url else None)
            self.metrics = Metrics(self.connections, self.clock)  # GET /metrics
            # One pusher per route whose URL is set: Onlinesim's rentals' SMS, its
            # activations' SMS, and each other buyer's, in that buyer's protocol.
            self.pushers: list[Pusher] = []
            routes = [(RENT_ROUTE, settings.push_url, settings.api_key, None),
                      (ACTIVATION_ROUTE, settings.activation_push_url, settings.api_key, None)]
            routes += [(b.name, b.push_url, b.key, WIRES[b.protocol])
                       for b in settings.rules.buyers if b.protocol != ONLINESIM]
            for route, url, key, wire in routes:
                if url:
                    pusher = Pusher(self.connections, self.clock, url=url,
                                    api_key=key, retry_s=settings.push_retry_s,
                                    timeout_s=settings.push_timeout_s,
                                    parallel=settings.push_parallel, rules=settings.rules,
                                    route=route, wire=wire)
                    pusher.state.on_outcome = self.metrics.observe_push
                    self.pushers.append(pusher)
            self.housekeeper = Housekeeper(self.connections, self.clock, settings.rules,
                                           settings.housekeeping_s, settings.sms_keep_days,
                                           settings.alerting)
            self.alert_sender = (AlertSender(self.connections, self.clock, settings.alerting)
                                 if settings.alerting.channels else None)
            self.goip = None  # the GoIP SMS server, when RENTBOX_GOIP_PORT is set
            if settings.goip_port is not None:
                self.goip = GoipListener(
                    self.connections, self.clock, settings.rules, host=settings.goip_host,
                    port=settings.goip_port, password=settings.goip_password or "",
                    on_sms=self._wake_pushers)
            self.spool = None  # the local hooks' spool, when RENTBOX_SPOOL_DIR is set
            if settings.spool_dir is not None:
                self.spool = SpoolReader(
                    self.connections, self.clock, settings.rules, settings.spool_dir,
                    settings.spool_every_s,
                    on_sms=self._wake_pushers)
            self.poller = None  # the catch-up poll, when RENTBOX_POLL_BOXES lists boxes
            if settings.poll_boxes is not None:
                self.poller = Poller(self.connections, self.clock, settings,
                                     on_sms=self._wake_pushers)
            # Group commit: the requests' writes share transactions (writer.py).
            self.writer = Writer(self.connections)
            app = web.wsgi(settings, self.clock, self.connections,
                           on_sms=self._wake_pushers,
                           metrics=self.metrics, writer=self.writer)
            self._waitress = make_waitress(app, settings, limits)
        except BaseException:
            if getattr(self, "goip", None) is not None:
                self.goip.stop()
            self._lock_file.close()
            raise
        self._loop_thread: threading.Thread | None = None
        self._facts: dict | None = None
        self._stopped = threading.Event()
        self._done = threading.Event()

    def _wake_pushers(self) -> None:
        """An SMS was stored: whichever route it is on, its pusher looks now."""
        for pusher in self.pushers:
            pusher.wake()

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
        self._warn_at_start()
        self.writer.start()
        self.housekeeper.start()
        if self.checkpointer:
            self.checkpointer.start()
        if self.replicator:
            self.replicator.start()
        if self.backups:
            self.backups.start()
        for pusher in self.pushers:
            pusher.start()
        if self.alert_sender:
            self.alert_sender.start()
        if self.goip:
            self.goip.start()
        if self.spool:
            self.spool.start()
        if self.poller:
            self.poller.start()
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
                 "activation_push_url_set": bool(s.activation_push_url),
                 "services": list(s.rules.services), "activation_s": s.rules.activation_s,
                 "buyers": meta.buyer_facts(s.rules),
                 "alert_silence_s": s.alerting.silence_s,
                 "aliases": [list(pair) for pair in s.rules.aliases],
                 "sms_intake": bool(s.gateway_token), "smsgate_intake": bool(s.smsgate_key),
                 "guard_s": s.rules.guard_s, "guard_margin_s": s.rules.guard_margin_s,
                 "ban_after": s.rules.ban_after,
                 "ban_s": s.rules.ban_s, "push_retry_s": s.push_retry_s,
                 "presence": s.rules.presence, "presence_s": s.rules.presence_s,
                 "backup_every_s": s.backups.every_s if s.backups.folder else None,
                 "spool_dir": str(s.spool_dir) if s.spool_dir else None,
                 "replication": bool(s.replication.url)}
        meta.put(self.connections.get(), now, meta.SERVER, facts)
        self._facts = facts

    def _warn_at_start(self) -> None:
        """What `rentbox status` would warn about, once, in the log: an empty pool, no
        push URL, … (Onlinesim's silence is only news later)."""
        try:
            facts = reports.status(self.connections.get(), self.clock.now())
        except Exception:  # a warning that cannot be computed must not stop the server
            log.exception("could not check the server's state at start")
            return
        for warning in facts["warnings"]:
            if "has never called this server" not in warning:  # nobody has, yet
                log.warning("%s", warning)

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
            try:
                self._waitress.trigger.pull_trigger(self._close_from_loop)
            except OSError:
                pass  # the loop ended meanwhile and is shutting down on its own
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
        self.writer.stop()  # after the requests: their last writes are committed
        if self.writer.jobs:
            log.info("group commit: %d writes of requests in %d commits (%.1f per commit)",
                     self.writer.jobs, self.writer.batches,
                     self.writer.jobs / self.writer.batches)
        self.housekeeper.stop()
        if self.checkpointer:
            self.checkpointer.stop()
        if self.alert_sender:
            self.alert_sender.stop()
        if self.goip:
            self.goip.stop()
        if self.spool:
            self.spool.stop()
        if self.poller:
            self.poller.stop(timeout_s=self.settings.poll_timeout_s + 5)
        for pusher in self.pushers:
            pusher.stop(timeout_s=self.settings.push_timeout_s + 5)
        if self.backups:
            self.backups.stop()
        if self.replicator:
            self.replicator.quiesce()  # serve's last write below is its own
        if self._facts is not None:
            try:
                stopped = {**self._facts, "stopped_at": to_text(self.clock.now())}
                meta.put(self.connections.get(), self.clock.now(), meta.SERVER, stopped)
            except Unavailable as error:
                # A full disk is a state, not a bug: one line, no traceback. (`rentbox
                # status` tells that the server stopped by its serving lock, not this note.)
                log.warning("could not record the server's stop: %s", error)
            except Exception:  # a clean stop matters more than this note
                log.exception("could not record the server's stop")
        self.connections.close_all()
        if self.replicator:
            # After serve's connections are closed: Litestream's last sync has every
            # change, and Litestream, not serve, closes the file last.
            self.replicator.stop()
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
    if not settings.gateway_token:
        log.info("POST /sms is off: set RENTBOX_GATEWAY_TOKEN to take SMS from forwarders")
    if not settings.smsgate_key:
        log.info("POST /sms/smsgate is off: set RENTBOX_SMSGATE_KEY to take SMSGate webhooks")
    if settings.rules.presence:
        log.info("SIM presence is on: a number a gateway has reported is offered only while "
                 "reported within %g s", settings.rules.presence_s)
    else:
        log.info("SIM presence is off: every number is offered whatever its SIM")
    if settings.backups.folder:
        log.info("scheduled backups: every %g s into %s, the last %d kept",
                 settings.backups.every_s, settings.backups.folder, settings.backups.keep)
    else:
        log.info("scheduled backups are off: set RENTBOX_BACKUP_DIR to have them")
    server.run()
    log.info("rentbox stopped")
