"""The gateways' calls: SMS intakes (generic JSON, SMSGate, Ejoin, Dinstar) and presence
reports. Authenticated by the gateway token (SMSGate: its signature)."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import bottle

from rentbox import gateways, presence, protocol, sms
from rentbox.errors import InvalidInput
from rentbox.gateways import common, dinstar, ejoin, smsgate
from rentbox.web.answers import ApiError, answering, check_token, configured, header, query
from rentbox.web.answers import credentials, query_values, read_body

if TYPE_CHECKING:
    from rentbox.web import Context


def check_path_token(environ: dict, presented: str, token: bytes) -> None:
    """The gateway token as a path segment, compared in constant time; a Bearer header or
    `?token=` presented as well must match too (`check_token`)."""
    if not hmac.compare_digest(presented.encode("utf-8", "replace"), token):
        raise ApiError(401, "BAD_TOKEN")
    if (credentials(environ.get("HTTP_AUTHORIZATION"), "bearer") is not None
            or query_values(environ, "token")):
        check_token(environ, token)


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    settings, clock, connections = ctx.settings, ctx.clock, ctx.connections
    rules = settings.rules
    dinstar_tz = dinstar.time_zone(settings.dinstar_tz)

    def store_sms(incoming: sms.IncomingSms, accept=sms.accept_sms) -> dict:
        accepted = accept(connections.get(), clock, incoming, rules)
        if accepted.push_state == "pending" and not accepted.duplicate:
            ctx.on_sms()
        return {"status": "SUCCESS", "smsId": accepted.sms_id}

    def store_push(source: str, rows: list[common.Row]) -> dict:
        result = common.accept_push(connections.get(), clock, rules, source, rows)
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
        return common.report_ports(connections.get(), clock, rules, push.ports)

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
        return common.report_ports(connections.get(), clock, rules, push.ports)

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
            return presence.report(connections.get(), clock, rules, report).as_dict()
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
            return presence.report(connections.get(), clock, rules, report).as_dict()
        except presence.PresenceOff as error:
            raise ApiError(409, str(error)) from None
