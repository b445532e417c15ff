#!/usr/bin/env python3
"""Gammu SMSD RunOnReceive hook: hand every received SMS to rentbox, durably.

In gammu-smsdrc, for the modem whose SIM has the number +49 176 1234 5678:

    [smsd]
    PhoneID = modem1
    RunOnReceive = /usr/local/bin/gammu_run_on_receive.py

and give the hook its settings in the environment of gammu-smsd. gammu-smsd is started by
its own systemd unit (gammu-smsd.service), so add them with `systemctl edit gammu-smsd`:

    [Service]
    # gammu puts the SMS text into the hook's environment in the locale's character set:
    # without a UTF-8 locale every Cyrillic letter or emoji arrives as `?`.
    Environment=LANG=C.UTF-8
    Environment=RENTBOX_SPOOL_DIR=/var/spool/rentbox
    Environment=RENTBOX_NUMBER_modem1=+4917612345678   # PhoneID "modem1"

With RENTBOX_SPOOL_DIR (rentbox serve runs on this machine with the same setting), the
hook writes the SMS as one file into that folder, atomically (a temporary name, fsync,
rename), and `rentbox serve` stores it and then removes the file. gammu-smsd runs the hook
once and never again, whatever it answers: the spool is what keeps an SMS that arrives
while rentbox is down or restarting. Without RENTBOX_SPOOL_DIR (rentbox on another
machine), the hook posts the SMS to RENTBOX_URL's POST /sms with RENTBOX_GATEWAY_TOKEN, and
an SMS that arrives while rentbox cannot be reached is lost (gammu only logs the failure).

The receiving number is RENTBOX_NUMBER_<PhoneID> (PHONE_ID, which gammu-smsd 1.38.2 and
later pass), else RENTBOX_NUMBER; with neither, the SMS goes to the pool number whose port
is the PhoneID (`modem1` in the pool CSV); with no PhoneID either, the hook fails and says
what to set.

gammu-smsd runs the hook once per received message, a long (multipart) one included, and
describes it in the environment (gammu-smsd-run(7)): SMS_MESSAGES physical parts, each with
SMS_<i>_NUMBER and SMS_<i>_TEXT, and DECODED_PARTS decoded entries with DECODED_<i>_TEXT. So
the hook hands over exactly one SMS per run, from SMS_1_NUMBER, with the decoded texts joined
in order (a long SMS decodes to one entry holding the whole text; an EMS message can decode
to several text entries around its formatting). When gammu decoded no text (DECODED_PARTS
missing or 0: a plain one-part SMS, or a long one whose missing parts gammu gave up waiting
for), it joins the physical parts' texts in order instead: they are still pieces of one
message, and handing each over as its own SMS would split a code across several SMS. The
arguments are the inbox ids of the parts; the first one names the message and is sent as
the source id, so that a re-run of the hook stores nothing twice. The time the hook ran is
sent as the time received (gammu passes none), so an SMS that waited in the spool is still
dated when it arrived. Exits non-zero if the SMS was not handed over, so that gammu logs the
failure (it closes the hook's output, so the message is only seen when run by hand).
Standard library only.
"""

import datetime as dt
import json
import os
import secrets
import sys
import time
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


def spool_sms(folder: str, body: dict, source: str = "gammu") -> str:
    """Write the SMS (the body of POST /sms) as one file into rentbox's spool: under a
    temporary name starting with `.` (which rentbox does not take), its data on disk, then
    renamed to `<time>-<source>-<pid>-<random>.json` and the folder's entry on disk too. Once
    this returns, the SMS survives a crash or a power cut. Returns the file's name."""
    name = f"{time.time_ns():020d}-{source}-{os.getpid()}-{secrets.token_hex(4)}.json"
    temporary = os.path.join(folder, f".{name}.tmp")
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.fchmod(fd, 0o640)  # readable by rentbox's group whatever the daemon's umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, os.path.join(folder, name))
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return name


def post_sms(body: dict) -> str:
    """POST the SMS to rentbox; its answer."""
    token = os.environ.get("RENTBOX_GATEWAY_TOKEN")
    if not token:
        raise OSError("set RENTBOX_SPOOL_DIR (rentbox on this machine) or "
                      "RENTBOX_GATEWAY_TOKEN (to post to RENTBOX_URL)")
    url = os.environ.get("RENTBOX_URL", "http://127.0.0.1:8080").rstrip("/") + "/sms"
    request = urllib.request.Request(
        url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json; charset=utf-8",
                 "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode("utf-8", "replace")


def main() -> int:
    if _count("SMS_MESSAGES") == 0:
        print("gammu-smsd passed no message", file=sys.stderr)
        return 1
    phone_id = os.environ.get("PHONE_ID", "").strip()
    to = ((phone_id and os.environ.get(f"RENTBOX_NUMBER_{phone_id}"))
          or os.environ.get("RENTBOX_NUMBER"))
    body = {"from": os.environ.get("SMS_1_NUMBER") or "unknown", "text": message_text(),
            "received_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if to:
        body["to"] = to
    elif phone_id:
        body["port"] = phone_id  # the pool number whose port is the PhoneID
    else:
        print("no receiving number: neither PHONE_ID nor RENTBOX_NUMBER is set. Set "
              "RENTBOX_NUMBER=+<the SIM's number> in gammu-smsd's environment, or PhoneID = "
              "<name> in gammu-smsdrc (gammu-smsd 1.38.2 or later passes it as PHONE_ID) with "
              "RENTBOX_NUMBER_<name>, or that name as the number's port in the pool CSV",
              file=sys.stderr)
        return 2
    inbox_ids = sys.argv[1:]
    if inbox_ids:
        body["id"] = f"gammu:{phone_id}:{inbox_ids[0]}"
    spool = os.environ.get("RENTBOX_SPOOL_DIR", "").strip()
    try:
        if spool:
            print(f"spooled as {spool_sms(spool, body)}")
        else:
            print(post_sms(body))
    except OSError as error:
        print(f"rentbox did not take the SMS: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
