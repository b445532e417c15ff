"""SMS gateways: what each kind of box sends, checked and turned into the same facts.

Each source has its module, which turns what its box sends into `sms.IncomingSms` (stored
by `sms.accept_sms`, the one durable path) and, where the box reports it, presence
reports (`presence.Report`, or `common.PortState` per port). A new box is one new module
here and its test file.

- `intake`: the generic JSON intake (`POST /sms`) and presence reports (`POST /presence`).
- `smsgate`: SMSGate's signed webhook (`POST /sms/smsgate`).
- `ejoin`: Ejoin, Skyline and ACOM pushes (`POST /sms/ejoin`).
- `dinstar`: Dinstar's Push SMS and Push Register Status (`POST /sms/dinstar`).
- `poll`: catch-up polling of Ejoin and Dinstar boxes for the SMS they hold, a thread of
  `rentbox serve`.
- `goip`: the GoIP UDP SMS server, a thread of `rentbox serve`.
- `common`: what they share: ids, a push of several SMS, the state of a box's ports.
- `notes`: what the adapters noted for `rentbox status` (port mismatches, SMSGate pings).

The names below are imported from their modules when first used, so that a command that
only reads the notes (`rentbox status`) loads no adapter (issue 25).
"""

from __future__ import annotations

__all__ = ["BadSignature", "SMSGATE_PRESENCE_EVENTS", "parse_json_sms", "parse_presence",
           "parse_smsgate", "parse_smsgate_presence", "port_mismatches",
           "verify_smsgate_signature"]


def __getattr__(name: str) -> object:
    """A name of __all__ from its module, imported now (PEP 562)."""
    if name == "port_mismatches":
        from rentbox.gateways import notes as module
    elif name in ("parse_json_sms", "parse_presence"):
        from rentbox.gateways import intake as module
    elif name in __all__:
        from rentbox.gateways import smsgate as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
