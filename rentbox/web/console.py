"""The partner's browser and monitoring: health (and, beside it, nothing Onlinesim calls)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import bottle

from rentbox import __version__
from rentbox.web.answers import error_answer, json_answer

if TYPE_CHECKING:
    from rentbox.web import Context

log = logging.getLogger("rentbox.web")


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    connections = ctx.connections

    @app.get("/health")
    def health():
        """Liveness for monitors and proxies: no authentication, nothing secret. 503 when
        the database cannot be read, or cannot be written (every rental would fail)."""
        try:
            db = connections.get()
            db.ping()
            problem = db.write_problem()
        except Exception:
            log.exception("health check: database unavailable")
            return error_answer(503, "database unavailable")
        if problem is not None:
            return error_answer(503, f"database cannot be written: {problem}")
        return json_answer(200, {"status": "SUCCESS", "version": __version__})
