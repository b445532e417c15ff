"""Monitoring: GET /metrics for Prometheus, behind its own Bearer token
(RENTBOX_METRICS_TOKEN; off when unset)."""

from __future__ import annotations

import hmac
import logging
from typing import TYPE_CHECKING

import bottle

from rentbox.config import METRICS_TOKEN_ENV
from rentbox.web.answers import ApiError, configured, credentials, error_answer, header

if TYPE_CHECKING:
    from rentbox.web import Context

log = logging.getLogger("rentbox.web")

BAD_TOKEN = ApiError(401, "BAD_TOKEN")


def routes(app: bottle.Bottle, ctx: "Context") -> None:

    @app.get("/metrics")
    def metrics():
        """Prometheus' exposition, plain text or OpenMetrics as the Accept header asks.
        Errors (off, a wrong token) are the one JSON error shape."""
        try:
            # Off: 503, as the gateways' intakes answer when their token is unset.
            # Prometheus marks the target down either way; 503 says "not served here
            # until the server is set up", where a 401 would send the partner hunting
            # for a wrong token on Prometheus' side.
            token = configured(ctx.settings.metrics_token, METRICS_TOKEN_ENV, "/metrics")
            check_bearer(header("Authorization"), token)
            body, content_type = ctx.metrics.exposition(header("Accept"))
        except ApiError as error:
            return error_answer(error.status, error.error)
        except Exception:
            log.exception("could not answer /metrics")
            return error_answer(500, "internal error; see the server log")
        bottle.response.content_type = content_type
        return body


def check_bearer(authorization: str | None, token: bytes) -> None:
    """A Bearer header only (never the query string: URLs end up in logs), compared in
    constant time."""
    value = credentials(authorization, "bearer")
    if value is None or not hmac.compare_digest(value.encode("latin-1", "replace"), token):
        raise BAD_TOKEN
