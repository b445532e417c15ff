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

gammu-smsd passes each message in SMS_<i>_NUMBER / SMS_<i>_TEXT and, for a multipart message,
the joined text in DECODED_<i>_TEXT; the arguments are the inbox ids, used here as the source
id so that a re-run of the hook stores nothing twice. Exits non-zero if rentbox did not take
every message, so that gammu logs the failure. Standard library only.
"""

import json
import os
import sys
import urllib.request


def main() -> int:
    url = os.environ.get("RENTBOX_URL", "http://127.0.0.1:8080").rstrip("/") + "/sms"
    token = os.environ["RENTBOX_GATEWAY_TOKEN"]
    phone_id = os.environ.get("PHONE_ID", "")
    to = os.environ.get(f"RENTBOX_NUMBER_{phone_id}") or os.environ["RENTBOX_NUMBER"]
    count = int(os.environ.get("SMS_MESSAGES", "0"))
    inbox_ids = sys.argv[1:]
    failed = 0
    for i in range(1, count + 1):
        text = os.environ.get(f"DECODED_{i}_TEXT") or os.environ.get(f"SMS_{i}_TEXT", "")
        body = {"to": to, "from": os.environ.get(f"SMS_{i}_NUMBER", "unknown"), "text": text}
        if i <= len(inbox_ids):
            body["id"] = f"gammu:{phone_id}:{inbox_ids[i - 1]}"
        request = urllib.request.Request(
            url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json; charset=utf-8",
                     "Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                print(response.read().decode("utf-8", "replace"))
        except OSError as error:
            print(f"rentbox did not take SMS {i}: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
