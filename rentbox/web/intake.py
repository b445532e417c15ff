"""The gateways' calls: SMS intakes (generic JSON, SMSGate, Ejoin, Dinstar) and presence
reports. Authenticated by the gateway token (SMSGate: its signature)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import bottle

from rentbox import gateways, presence, protocol, sms
from rentbox.gateways import common, dinstar, ejoin
from rentbox.web.answers import ApiError, answering, check_token, configured, header, query
from rentbox.web.answers import read_body

if TYPE_CHECKING:
    from rentbox.web import Context


def routes(app: bottle.Bottle, ctx: "Context") -> None:
    settings, clock, connections = ctx.settings, ctx.clock, ctx.connections
    rules = settings.rules
    dinstar_tz = dinstar.time_zone(settings.dinstar_tz)

    def store_sms(incoming: sms.IncomingSms) -> dict:
        accepted = sms.accept_sms(connections.get(), clock, incoming, rules)
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

    @app.post("/sms/ejoin")
    @answering
    def sms_ejoin() -> dict:
        """An Ejoin box's pushes, SMS and port states (gateway token)."""
        body = gateway_body("/sms/ejoin")
        push = ejoin.parse_push(body, box=query(bottle.request.environ, "box"))
        if push.rows is not None:
            return store_push(ejoin.SOURCE, push.rows)
        return common.report_ports(connections.get(), clock, rules, push.ports)

    @app.post("/sms/dinstar")
    @answering
    def sms_dinstar() -> dict:
        """A Dinstar box's Push SMS (gateway token)."""
        rows = dinstar.parse_push(gateway_body("/sms/dinstar"), dinstar_tz)
        if rows is None:  # another push of the box (SMS results, USSD, …): not used
            return {"status": "SUCCESS", "ignored": True}
        return store_push(dinstar.SOURCE, rows)

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
            if not rules.presence:
                return {"status": "SUCCESS", "ignored": True}
            return presence.report(connections.get(), clock, rules, report).as_dict()
        incoming = gateways.parse_smsgate(envelope)
        if incoming is None:  # another event (sms:sent …): nothing to store
            return {"status": "SUCCESS", "ignored": True}
        return store_sms(incoming)

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
