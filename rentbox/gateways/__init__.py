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
"""

from rentbox.gateways.common import port_mismatches
from rentbox.gateways.intake import parse_json_sms, parse_presence
from rentbox.gateways.smsgate import (SMSGATE_PRESENCE_EVENTS, BadSignature, parse_smsgate,
                                      parse_smsgate_presence, verify_smsgate_signature)

__all__ = ["BadSignature", "SMSGATE_PRESENCE_EVENTS", "parse_json_sms", "parse_presence",
           "parse_smsgate", "parse_smsgate_presence", "port_mismatches",
           "verify_smsgate_signature"]
