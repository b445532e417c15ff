#!/usr/bin/env python3
"""smstools3 eventhandler: hand every received SMS to rentbox, durably.

In smsd.conf:

    eventhandler = /usr/local/bin/smstools3_eventhandler.py

and give the handler its settings in the environment of smsd (for systemd, `systemctl edit
smstools` and `Environment=` lines under `[Service]`):

    RENTBOX_SPOOL_DIR=/var/spool/rentbox             # rentbox serve on this machine
    RENTBOX_NUMBER_262011234567890=+4917612345678   # by the SIM's IMSI (follows the card)
    RENTBOX_NUMBER_GSM1=+4917612345678              # or by modem name ([GSM1] in smsd.conf)

With RENTBOX_SPOOL_DIR (rentbox serve runs on this machine with the same setting), the
handler writes the SMS as one file into that folder, atomically (a temporary name, fsync,
rename), and `rentbox serve` stores it and then removes the file. smsd runs the handler
once per message and never again, whatever it answers: the spool is what keeps an SMS that
arrives while rentbox is down or restarting. Without RENTBOX_SPOOL_DIR (rentbox on another
machine), the handler posts the SMS to RENTBOX_URL's POST /sms with RENTBOX_GATEWAY_TOKEN,
and an SMS that arrives while rentbox cannot be reached is lost (smsd only logs it).

smsd runs the handler as `eventhandler RECEIVED <file>` for each received message (and with
SENT, FAILED, REPORT or CALL for other events, which this handler leaves alone). The file has
header lines (`From`, `Sent`, `Received`, `Subject` = the modem's name, `IMSI`, `Alphabet`,
…), a blank line, then the text, a long SMS with its parts already joined (smsd's
internal_combine, on by default). The receiving number is RENTBOX_NUMBER_<IMSI>, else
RENTBOX_NUMBER_<modem>; with neither, the SMS goes to the pool number whose `port` is the
modem's name (`GSM1` in the pool CSV).

The text is decoded by its `Alphabet`: UCS2 as 16-bit big-endian Unicode, unless smsd
already decoded it to UTF-8 (decode_unicode_text); ISO, GSM and Latin as UTF-8 where it is
valid UTF-8 (smsd's incoming_utf8), else ISO-8859-15; UTF-8 as UTF-8. The file's name is
sent as the source id, so that running the handler twice on a file stores nothing twice;
`Received` (the local time of this machine; else the time the handler ran) is sent as the
time received, so an SMS that waited in the spool keeps its time. Exits non-zero if
the SMS was not handed over, so that smsd logs the failure. Standard library only.
"""

import datetime as dt
import json
import os
import secrets
import sys
import time
import urllib.request


def read_message(path: str) -> tuple[dict, str]:
    """The headers and the text of an smstools3 message file."""
    with open(path, "rb") as f:
        raw = f.read()
    for separator in (b"\n\n", b"\r\n\r\n"):
        head, found, body = raw.partition(separator)
        if found:
            break
    else:
        head, body = raw, b""
    headers = {}
    for line in head.decode("iso-8859-15").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return headers, decode_text(body, headers.get("Alphabet", "ISO"))


def decode_text(body: bytes, alphabet: str) -> str:
    """The text as smsd wrote it, by the first three letters of `Alphabet`."""
    kind = alphabet.strip().upper()[:3]
    if kind in ("UCS", "CHI", "UNI"):
        # UCS2 text of Latin or Cyrillic letters has bytes below a tab (its high bytes);
        # text that smsd already decoded to UTF-8 has none.
        if len(body) % 2 == 0 and any(b < 0x09 for b in body):
            return body.decode("utf-16-be", "replace")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body.decode("utf-16-be", "replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("iso-8859-15")


def received_at(stamp: str) -> str | None:
    """`Received: 26-11-26 13:00:05` (this machine's local time) as ISO-8601 with its zone."""
    for layout in ("%y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return dt.datetime.strptime(stamp, layout).astimezone().isoformat()
        except ValueError:
            continue
    return None


def spool_sms(folder: str, body: dict, source: str = "smstools") -> str:
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


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "RECEIVED":
        return 0  # SENT, FAILED, REPORT, CALL: not rentbox's business
    path = argv[2]
    headers, text = read_message(path)
    modem = headers.get("Subject") or headers.get("Modem") or ""
    imsi = headers.get("IMSI", "")
    to = ((imsi and os.environ.get(f"RENTBOX_NUMBER_{imsi}"))
          or (modem and os.environ.get(f"RENTBOX_NUMBER_{modem}")))
    body = {"from": headers.get("From") or "unknown", "text": text,
            "id": f"smstools:{os.path.basename(path)}"}
    if to:
        body["to"] = to
    elif modem:
        body["port"] = modem
    else:
        print(f"{path}: no Subject (modem name) to route it by, and no "
              f"RENTBOX_NUMBER_<IMSI> for its IMSI", file=sys.stderr)
        return 1
    # Without a `Received` it can read, the time the handler ran: a spooled SMS is still
    # dated when it arrived, not when rentbox took it in.
    body["received_at"] = (received_at(headers.get("Received", ""))
                           or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    spool = os.environ.get("RENTBOX_SPOOL_DIR", "").strip()
    try:
        if spool:
            print(f"spooled as {spool_sms(spool, body)}")
        else:
            print(post_sms(body))
    except OSError as error:
        print(f"rentbox did not take the SMS in {path}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
