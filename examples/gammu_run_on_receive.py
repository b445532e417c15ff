#!/usr/bin/env python3
"""Gammu SMSD RunOnReceive hook: post every received SMS to rentbox's POST /sms.

In gammu-smsdrc, for the modem whose SIM has the number +49 176 1234 5678:

    [smsd]
    RunOnReceive = /usr/local/bin/gammu_run_on_receive.py

and give the hook its settings in the environment of gammu-smsd (for systemd, an
`Environment=` line in the unit), one SIM number per PhoneID:

    RENTBOX_URL=http://127.0.0.1:8080
    RENTBOX_GATEWAY_TOKEN=...
    RENTBOX_NUMBER_modem1=+4917612345678     # PhoneID "modem1" in gammu-smsdrc

gammu-smsd runs the hook once per received message, a long (multipart) one included, and
describes it in the environment (gammu-smsd-run(7)): SMS_MESSAGES physical parts, each with
SMS_<i>_NUMBER and SMS_<i>_TEXT, and DECODED_PARTS decoded entries with DECODED_<i>_TEXT. So
the hook posts exactly one SMS per run, from SMS_1_NUMBER, with the decoded texts joined in
order (a long SMS decodes to one entry holding the whole text; an EMS message can decode to
several text entries around its formatting). When gammu decoded no text (DECODED_PARTS missing
or 0: a plain one-part SMS, or a long one whose missing parts gammu gave up waiting for), it
joins the physical parts' texts in order instead: they are still pieces of one message, and
posting each as its own SMS would split a code across several SMS. The arguments are the inbox
ids of the parts; the first one names the message and is sent as the source id, so that a
re-run of the hook stores nothing twice. Exits non-zero if rentbox did not take the message,
so that gammu logs the failure. Standard library only.
"""

import json
import os
import sys
import urllib.request


def _count(name: str) -> int:
    try:
        return max(0, int(os.environ.get(name) or "0"))
    except ValueError:
        return 0


def message_text() -> str:
    """The whole text of the one message gammu-smsd passes in the environment."""
    decoded = [os.environ.get(f"DECODED_{i}_TEXT", "")
               for i in range(1, _count("DECODED_PARTS") + 1)]
    parts = decoded if any(decoded) else [
        os.environ.get(f"SMS_{i}_TEXT", "") for i in range(1, _count("SMS_MESSAGES") + 1)]
    return "".join(parts)


def main() -> int:
    url = os.environ.get("RENTBOX_URL", "http://127.0.0.1:8080").rstrip("/") + "/sms"
    token = os.environ["RENTBOX_GATEWAY_TOKEN"]
    phone_id = os.environ.get("PHONE_ID", "")
    to = os.environ.get(f"RENTBOX_NUMBER_{phone_id}") or os.environ["RENTBOX_NUMBER"]
    if _count("SMS_MESSAGES") == 0:
        print("gammu-smsd passed no message", file=sys.stderr)
        return 1
    body = {"to": to, "from": os.environ.get("SMS_1_NUMBER") or "unknown",
            "text": message_text()}
    inbox_ids = sys.argv[1:]
    if inbox_ids:
        body["id"] = f"gammu:{phone_id}:{inbox_ids[0]}"
    request = urllib.request.Request(
        url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json; charset=utf-8",
                 "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            print(response.read().decode("utf-8", "replace"))
    except OSError as error:
        print(f"rentbox did not take the SMS: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
