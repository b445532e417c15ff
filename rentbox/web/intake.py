"""The gateways' calls: SMS intakes (generic JSON, SMSGate, Ejoin, Dinstar) and presence
reports. Authenticated by the gateway token (SMSGate: its signature).

Every call that is refused (a 4xx answer: a bad token, a body that is not the box's format,
…) logs one WARNING with the reason (`RefusalLog`): a box set up wrong is otherwise only an
access-log line. Limited per gateway, since anyone can send them: the first at once, then
at most one a minute, with how many were not logged. Never the token or the body.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import threading
from typing import TYPE_CHECKING, Callable

import bottle

from rentbox import gateways, presence, protocol, sms
from rentbox.errors import InvalidInput
from rentbox.gateways import common, dinstar, ejoin, smsgate
from rentbox.web.answers import ApiError, answering, check_token, configured, header, query
from rentbox.web.answers import credentials, loggable_path, printable, query_values, read_body

if TYPE_CHECKING:
    from rentbox.clock import Clock
    from rentbox.web import Context

log = logging.getLogger("rentbox.web")


def check_path_token(environ: dict, presented: str, token: bytes) -> None:
    """The gateway token as a path segment, compared in constant time; a Bearer header or
    `?token=` presented as well must match too (`check_token`)."""
    if not hmac.compare_digest(presented.encode("utf-8", "replace"), token):
        raise ApiError(401, "BAD_TOKEN")
    if (credentials(environ.get("HTTP_AUTHORIZATION"), "bearer") is not None
            or query_values(environ, "token")):
        check_token(environ, token)


# A box or device id as a refusal's warning may name it (a port's characters).
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.:@/+-]{0,63}$")


class _KeptInput:
    """A request body stream that keeps what the route reads from it, so that a refusal
    can name the box that sent it. The route reads at most its body limit."""

    def __init__(self, stream):
        self._stream = stream
        self.kept = bytearray()

    def read(self, *size) -> bytes:
        data = self._stream.read(*size)
        self.kept += data
        return data

    def __getattr__(self, name):
        return getattr(self._stream, name)


class RefusalLog:
    """One WARNING for each refused gateway call, with the answer's reason, limited per
    gateway (`common.WarningLimit`): the box or device the call names (Ejoin's `?box=`,
    Dinstar's `sn`, SMSGate's `deviceId`), else the caller's address (behind the reverse
    proxy, the proxy's: all gateways then share one budget)."""

    def __init__(self, clock: "Clock"):
        self._clock = clock
        self._limit = common.WarningLimit(about="refused calls", per="gateway",
                                          others="other gateways")
        self._lock = threading.Lock()  # waitress may run several worker threads

    def wrap(self, callback: Callable[..., str]) -> Callable[..., str]:
        """A route's callback (already `answering`), logging its 4xx answers."""

        @functools.wraps(callback)
        def route(*args, **kwargs) -> str:
            environ = bottle.request.environ
            body = environ["wsgi.input"] = _KeptInput(environ["wsgi.input"])
            answer = callback(*args, **kwargs)
            status = bottle.response.status_code
            if 400 <= status < 500:
                self._warn(environ, status, answer, bytes(body.kept))
            self._log_held_back()
            return answer

        return route

    def _warn(self, environ: dict, status: int, answer: str, body: bytes) -> None:
        try:
            reason = str(json.loads(answer).get("error", ""))
        except (ValueError, AttributeError):
            reason = ""
        key, who = _caller(environ, body)
        with self._lock:
            held_back = self._limit.admit(key, self._clock.now())
        if held_back is not None:
            log.warning("%s %s refused (%d) for %s: %s%s", environ.get("REQUEST_METHOD"),
                        loggable_path(environ.get("PATH_INFO", "")), status, who,
                        printable(reason), held_back)

    def _log_held_back(self) -> None:
        with self._lock:
            lines = self._limit.sweep(self._clock.now())
        for line in lines:
            log.warning("gateway intake: %s", line)


def _caller(environ: dict, body: bytes) -> tuple[str, str]:
    """(the key its warnings are limited by, how the log names it): a box or device the
    call names, at its address; else the address."""
    address = printable(environ.get("REMOTE_ADDR") or "?")[:45]
    # Ejoin's forward appends `?port=…` after a query the URL had: read that seam as `&`.
    named = query({"QUERY_STRING": ejoin.mended_query(environ.get("QUERY_STRING", ""))}, "box")
    ident = f"box {named}" if named and _GATEWAY_ID.match(named) else None
    if ident is None and body[:1] == b"{":
        try:
            fields = protocol.parse_body(body)
        except InvalidInput:
            fields = {}
        for field, what in (("sn", "box"), ("deviceId", "device")):
            value = fields.get(field)
            if isinstance(value, str) and _GATEWAY_ID.match(value):
                ident = f"{what} {value}"
                break
    return (ident, f"{ident} at {address}") if ident else (address, address)


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    first_route = len(app.routes)
    settings, clock, connections = ctx.settings, ctx.clock, ctx.connections
    rules = settings.rules
    dinstar_tz = dinstar.time_zone(settings.dinstar_tz)

    def store_sms(incoming: sms.IncomingSms, accept=sms.accept_sms) -> dict:
        accepted = ctx.write(lambda db: accept(db, clock, incoming, rules))
        if accepted.push_state == "pending" and not accepted.duplicate:
            ctx.on_sms()
        return {"status": "SUCCESS", "smsId": accepted.sms_id}

    def store_push(source: str, rows: list[common.Row]) -> dict:
        result = ctx.write(lambda db: common.accept_push(db, clock, rules, source, rows))
        if result.has_new_for_rentals:
            ctx.on_sms()
        return result.as_dict()

    def gateway_body(path: str, limit: int = settings.max_body_bytes) -> dict:
        """The JSON body of a gateway's call, once its token checks out."""
        token = configured(settings.gateway_token, "RENTBOX_GATEWAY_TOKEN", path)
        check_token(bottle.request.environ, token)
        return protocol.parse_body(read_body(bottle.request.environ, limit))

    @app.post("/sms")
    @answering
    def sms_json() -> dict:
        """The generic intake for forwarders and scripts (gateway token)."""
        return store_sms(gateways.parse_json_sms(gateway_body("/sms")))

    def ejoin_call(path_token: str | None = None) -> dict:
        """An Ejoin box's call: its API push (JSON: SMS rows or port states) anywhere, or
        its web UI's "SMS to HTTP" forward (a text block) at `/sms/ejoin/<token>`."""
        environ = bottle.request.environ
        token = configured(settings.gateway_token, "RENTBOX_GATEWAY_TOKEN", "/sms/ejoin")
        if path_token is None:
            check_token(environ, token)
        else:
            # The forward appends its own `?port=…` to the URL as configured.
            environ = {**environ, "QUERY_STRING": ejoin.mended_query(
                environ.get("QUERY_STRING", ""))}
            check_path_token(environ, path_token, token)
        raw = read_body(environ, settings.max_body_bytes)
        box = query(environ, "box")
        if ejoin.is_forward(raw, environ.get("CONTENT_TYPE")):
            if path_token is None:
                # Documented as JSON only: the forward's own query spoils `?token=` here.
                raise InvalidInput("the body is not JSON; the web UI's \"SMS to HTTP\" "
                                   "forward is taken at /sms/ejoin/<token>")
            forward = ejoin.parse_forward(raw, port=query(environ, "port"),
                                          sender=query(environ, "sender"), box=box)
            return store_sms(forward, ejoin.accept_forward)
        push = ejoin.parse_push(protocol.parse_body(raw), box=box)
        if push.rows is not None:
            return store_push(ejoin.SOURCE, push.rows)
        return ctx.write(lambda db: common.report_ports(db, clock, rules, push.ports))

    @app.post("/sms/ejoin")
    @answering
    def sms_ejoin() -> dict:
        """An Ejoin box's pushes, SMS and port states (gateway token)."""
        return ejoin_call()

    @app.post("/sms/ejoin/<token>")
    def sms_ejoin_token(token: str) -> str:
        """The same with the gateway token as the last path segment, for the web UI's
        forward, which appends a query of its own to the URL; it also takes the forward."""
        return answering(lambda: ejoin_call(path_token=token))()

    # Dinstar boxes whose register pushes were said to need the catch-up poll (once each).
    register_only_told: set[str] = set()

    @app.post("/sms/dinstar")
    @answering
    def sms_dinstar() -> dict:
        """A Dinstar box's Push SMS and Push Register Status (gateway token)."""
        push = dinstar.parse_push(gateway_body("/sms/dinstar"), dinstar_tz, clock.now())
        if push.rows is not None:
            stored = store_push(dinstar.SOURCE, push.rows)
            dinstar.note_clock(connections.get(), clock, push.serial, push.clock_offset_s,
                               settings.dinstar_tz)
            return stored
        if push.ports is None:  # another push of the box (SMS results, USSD, …): not used
            return {"status": "SUCCESS", "ignored": True}
        if rules.presence and settings.poll_boxes is None and (
                push.serial not in register_only_told):
            register_only_told.add(push.serial)
            dinstar.warn_register_only(push.serial)
        return ctx.write(lambda db: common.report_ports(db, clock, rules, push.ports))

    @app.post("/sms/smsgate")
    @answering
    def sms_smsgate() -> dict:
        """SMSGate's signed webhooks: `sms:received`, and its pings as presence."""
        signing_key = configured(settings.smsgate_key, "RENTBOX_SMSGATE_KEY", "/sms/smsgate")
        raw = read_body(bottle.request.environ, settings.max_body_bytes)
        try:
            gateways.verify_smsgate_signature(
                raw, signature=header("X-Signature"), timestamp=header("X-Timestamp"),
                key=signing_key, now=clock.now(), max_skew_s=settings.smsgate_max_skew_s)
        except gateways.BadSignature as error:
            raise ApiError(401, str(error)) from None
        envelope = protocol.parse_body(raw)
        report = gateways.parse_smsgate_presence(envelope)
        if report is not None:
            smsgate.note_smsgate_ping(connections.get(), clock, envelope)
            if not rules.presence:
                return {"status": "SUCCESS", "ignored": True}
            return ctx.write(lambda db: presence.report(db, clock, rules, report)).as_dict()
        incoming = gateways.parse_smsgate(envelope)
        if incoming is None:  # another event (sms:sent …): nothing to store
            return {"status": "SUCCESS", "ignored": True}
        return store_sms(incoming, smsgate.accept_smsgate_sms)

    @app.post("/presence")
    @answering
    def presence_report() -> dict:
        """A gateway's list of the SIMs it has online now (gateway token)."""
        body = gateway_body("/presence", settings.max_presence_body_bytes)
        report = gateways.parse_presence(body)
        try:
            return ctx.write(lambda db: presence.report(db, clock, rules, report)).as_dict()
        except presence.PresenceOff as error:
            raise ApiError(409, str(error)) from None

    # Every route above logs its refusals (a Bottle route plugin: whatever the route).
    refusals = RefusalLog(clock)
    for route in app.routes[first_route:]:
        route.plugins.append(refusals.wrap)
        route.reset()
