"""The partner's browser and monitoring: health, and the status page at GET /.

Nothing here answers Onlinesim (its `POST /` lives in onlinesim.py). The status page is
read-only, behind HTTP Basic with RENTBOX_CONSOLE_PASSWORD (any user name), and off while
that is unset. A browser (`Accept` preferring text/html) gets the page; any other caller
gets the same data as JSON. So with the errors: a browser without the password (or while
the page is off) gets a short page for a person, with the same status code and
`WWW-Authenticate` (so that it asks for the password), any other caller the one JSON
error shape. HEAD answers what GET would, without the body.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from typing import TYPE_CHECKING

import bottle

from rentbox import __version__, dashboard
from rentbox.web import page
from rentbox.web.answers import credentials, error_answer, header, json_answer

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

    @app.get("/")
    def status_page():
        """The status page (HTML for a browser, JSON for a script): 404 while
        RENTBOX_CONSOLE_PASSWORD is unset, 401 without the password."""
        bottle.response.set_header("Cache-Control", "no-store")
        bottle.response.set_header("Vary", "Accept, Authorization")
        bottle.response.set_header("X-Content-Type-Options", "nosniff")
        html = wants_html(header("Accept") or "")
        password = ctx.settings.console_password
        if not password:
            # 404, not 503: nothing is down, and nothing will come back by retrying.
            return refusal(html, 404, "the status page is off: set RENTBOX_CONSOLE_PASSWORD "
                                      "on the server to turn it on", OFF_PAGE)
        if not authorized(header("Authorization"), password.encode("utf-8")):
            bottle.response.set_header("WWW-Authenticate", 'Basic realm="rentbox"')
            return refusal(html, 401, "the status page needs the console password "
                                      "(HTTP Basic, any user name)", PASSWORD_PAGE)
        try:
            data = dashboard.overview(connections.get(), ctx.clock.now(), ctx.settings.rules)
        except Exception:
            log.exception("status page: could not read the database")
            return refusal(html, 500, "internal error; see the server log", ERROR_PAGE)
        if not html:
            return json_answer(200, {"status": "SUCCESS", **data})
        return html_answer(200, page.render(data))


# What a person sees instead of the page: (title, paragraphs).
PASSWORD_PAGE = ("rentbox status: password needed", [
    "This page shows your income, numbers and SMS, so it needs the console password.",
    "Your browser asks for it: type any user name, and as the password the value of "
    "RENTBOX_CONSOLE_PASSWORD in the environment of rentbox serve.",
    "If you closed that dialog or typed a wrong password, reload the page to be asked "
    "again."])
OFF_PAGE = ("rentbox status: the page is off", [
    "rentbox is running, but its status page is off: it shows your income, numbers and "
    "SMS, so rentbox serves it only behind a password.",
    "To turn it on, set RENTBOX_CONSOLE_PASSWORD in the environment of rentbox serve and "
    "restart it; then reload this page and give that password (any user name).",
    "Until then, `rentbox status` on the server shows the same at a glance."])
ERROR_PAGE = ("rentbox status: not available", [
    "The status page could not be read from the database just now: the server log says "
    "why. Reload the page in a moment."])


def refusal(html: bool, status: int, error: str, shown: tuple[str, list[str]]) -> str:
    """An error of the status page: for a browser a page for a person, otherwise the JSON
    error shape; the same status code either way."""
    if not html:
        return error_answer(status, error)
    return html_answer(status, page.message(*shown))


def html_answer(status: int, body: str) -> str:
    """An HTML answer from this module's pages, with their security headers."""
    bottle.response.status = status
    bottle.response.content_type = "text/html; charset=utf-8"
    bottle.response.set_header("Content-Security-Policy", page.CSP)
    bottle.response.set_header("Referrer-Policy", "no-referrer")
    bottle.response.set_header("X-Frame-Options", "DENY")
    return body


def authorized(authorization: str | None, password: bytes) -> bool:
    """HTTP Basic with any user name and this password, compared in constant time. The
    header is latin-1 text as WSGI hands it over; anything malformed is simply wrong."""
    value = credentials(authorization, "basic")
    if value is None:
        return False
    try:
        decoded = base64.b64decode(value.encode("latin-1", "replace"), validate=True)
    except (binascii.Error, ValueError):
        return False
    _, colon, presented = decoded.partition(b":")
    return bool(colon) and hmac.compare_digest(presented, password)


def wants_html(accept: str) -> bool:
    """True when `Accept` names text/html and prefers it at least as much as JSON: what a
    browser sends. No Accept, `*/*` or application/json: the JSON."""
    html = json = None
    wildcard = 0.0
    for item in accept.split(","):
        media, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        for param in params:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            html = max(html or 0.0, q)
        elif media == "application/json":
            json = max(json or 0.0, q)
        elif media in ("*/*", "application/*"):
            wildcard = max(wildcard, q)
    if not html:
        return False
    return html >= (json if json is not None else wildcard)
