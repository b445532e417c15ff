"""The HTTP face, one module per caller: `onlinesim` (the rent calls), `intake` (the
gateways' SMS and presence), `console` (the partner's browser), `monitoring` (Prometheus),
`docs` (the OpenAPI document). `answers` holds what they share (one JSON error shape,
bodies, tokens); `middleware` wraps them all (path checks, gzip answers, the access log).

Routes are thin: read the body, authenticate, parse, call one core function, shape the
answer. No SQL here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

import bottle

from rentbox import meta
from rentbox.clock import Clock
from rentbox.settings import Settings
from rentbox.db import Connections, Database
from rentbox.metrics import Metrics
from rentbox.writer import Inline, Writer
from rentbox.web import console, docs, intake, monitoring, onlinesim, smshub
from rentbox.web.answers import JSON_TYPE, error_answer, json_error_body
from rentbox.web.middleware import AccessLog, GzipAnswers, StrictPaths

T = TypeVar("T")

__all__ = ["Context", "JSON_TYPE", "json_error_body", "make_app", "wsgi"]


@dataclasses.dataclass
class Context:
    """What the routes of every group are made with."""

    settings: Settings
    clock: Clock
    connections: Connections
    # Called after an SMS was stored for a rental (it wakes the pusher).
    on_sms: Callable[[], None] = lambda: None
    # When each buyer last called, per action (status, alerts).
    calls: meta.CallLog = dataclasses.field(default_factory=meta.CallLog)
    # Prometheus' registry and instruments (GET /metrics; Onlinesim's calls observed).
    metrics: Metrics | None = None
    # Where the requests' writes are committed: the server's Writer (group commit), or
    # each in its own transaction on the request's thread.
    writer: Writer | Inline | None = None

    def write(self, job: Callable[[Database], T]) -> T:
        """Run a request's write `job(db)` and return its result once committed."""
        return (self.writer or Inline(self.connections)).write(job)


def make_app(settings: Settings, clock: Clock, connections: Connections,
             on_sms: Callable[[], None] = lambda: None,
             metrics: Metrics | None = None, writer: Writer | None = None) -> bottle.Bottle:
    """The Bottle app with every group's routes. Serve it via `wsgi()`. `metrics`: the
    server's (shared with its pusher); by default one of the app's own. `writer`: the
    server's group commit (writer.py); without it each write commits on its own."""
    app = bottle.Bottle()
    # Onlinesim's last call is noted at most every 30 s (a poll should not always be a
    # write), and often enough that a short silence threshold never sees a false silence.
    calls = meta.CallLog(every_s=min(30.0, settings.alerting.silence_s / 4))
    ctx = Context(settings, clock, connections, on_sms, calls=calls,
                  metrics=metrics or Metrics(connections, clock), writer=writer)
    for group in (onlinesim, smshub, intake, console, monitoring, docs):
        group.routes(app, ctx)

    def error_page(res: bottle.HTTPError) -> str:
        if res.status_code == 404:
            message = f"no such path: {bottle.request.path}"
        elif res.status_code == 405:
            message = (f"method {bottle.request.method} is not allowed on "
                       f"{bottle.request.path}; allowed: {res.headers.get('Allow', '')}")
        else:
            message = "internal error; see the server log"
        return error_answer(res.status_code, message)

    # Bottle answers with an HTML page unless told otherwise, for every status.
    app.default_error_handler = error_page
    return app


def wsgi(settings: Settings, clock: Clock, connections: Connections,
         on_sms: Callable[[], None] = lambda: None, metrics: Metrics | None = None,
         writer: Writer | None = None):
    """The app as served: Bottle wrapped in path checks, gzip answers and the access log."""
    return AccessLog(GzipAnswers(StrictPaths(make_app(settings, clock, connections, on_sms,
                                                      metrics, writer))))
