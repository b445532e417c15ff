"""GoIP: the UDP "SMS server" that GoIP gateways talk to, run as a thread of `rentbox serve`.

The protocol (GoIP's "SMS Interface" document), one datagram each way, clear text:

- Keep-alive, every 30 s per line: `req:<n>;id:<line id>;pass:<password>;num:<SIM number>;
  signal:…;gsm_status:LOGIN|LOGOUT;voip_status:…;imei:…;imsi:…;iccid:…;` is answered
  `reg:<n>;status:200;`, or `reg:<n>;status:400;` for a wrong password. A keep-alive is the
  presence of the line's SIM (presence gateway `goip:<line id>`, the pool number whose
  `port` is the line id): online while `gsm_status` is not LOGOUT. When `num:` is given and
  the pool has another number on that port, the log and `rentbox status` say so.
- Received SMS: `RECEIVE:<recvid>;id:<line id>;password:<password>;srcnum:<sender>;
  msg:<text>` (some firmware adds `smscnum:` before `msg:`; the text is everything after
  `msg:`, semicolons included) is answered `RECEIVE <recvid> OK` only once the SMS is
  committed. Until then the box sends it again (the document: after 3 s, at most 3 times);
  a repetition is found by (line id, recvid) and answered with the same acknowledgement. A
  wrong password is answered `RECEIVE <recvid> ERROR wrong password`, an SMS that cannot be
  used `RECEIVE <recvid> ERROR <reason>`; while the database cannot be written there is no
  answer, so the box tries again (and gives the SMS up after its last try).
- `STATE:`, `DELIVER:`, `RECORD:`, `REMAIN:` and `CELLS:` reports are acknowledged
  (`STATE <id> OK`, `CELLS <id> OK`) and not used; anything else is ignored. `CELLS:` is not
  in the document: firmware sends it unasked, `CELLS:<id>;id:<line id>;password:<password>;
  lists:<cell>,<cell>,…,` (the neighbouring cells), and sends it again when it gets no
  answer. A datagram that is not the protocol is logged, without its password, and ignored.
- A long SMS arrives as one RECEIVE per part, each with its own recvid and nothing that says
  it is a part, of which message or how many there are: each is stored, acknowledged and
  pushed as an SMS of its own (README, "Long SMS").

Anyone who can reach the port can send junk or wrong passwords, as fast as they like: those
warnings are logged per source address, the first at once and then at most one a minute,
which says how many were held back (`WarningLimit`).

Every line of a box is its own SMS client with its own id; all share RENTBOX_GOIP_PASSWORD.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
import re
import socket
from typing import Callable

from rentbox import presence, sms
from rentbox.clock import Clock
from rentbox.config import Rules
from rentbox.db import Connections, Database
from rentbox.errors import Conflict, InvalidInput, Unavailable
from rentbox.gateways.common import PortState, WarningLimit, port_name, report_ports
from rentbox.workers import Worker

log = logging.getLogger("rentbox.gateways.goip")

SOURCE = "goip"
# Larger than any datagram a GoIP sends (a RECEIVE of a long SMS is a few KiB).
MAX_DATAGRAM_BYTES = 65535
# How often the listener thread looks up from its socket to see whether it must stop.
POLL_S = 0.5
# Lines remembered for logging once (wrong password, first contact): anyone can send
# datagrams with made-up line ids, so the memory is bounded.
MAX_REMEMBERED_LINES = 1000
# Warnings about what anyone can send (junk, a wrong password): per source address, the
# first is logged, then at most one in this many seconds, with the count held back since.
WARN_EVERY_S = 60.0
# Source addresses tracked for that: far more than a partner's boxes. Anyone can spoof many:
# past this, the others share one budget, so that the memory stays bounded and the log
# takes at most this many lines (plus one) a minute.
MAX_WARNED_SOURCES = 100
# Reports that expect `<COMMAND> <id> OK` and that rentbox does not use. A report left
# unanswered is sent again and again (CELLS: a capture in NiceLabs/dbltek-goip-agent,
# sms/udpstack/notify_test.go, answered `CELLS <id> OK` by its onReplyNotify).
ACKNOWLEDGED_ONLY = frozenset({"STATE", "DELIVER", "RECORD", "REMAIN", "CELLS"})
_SECRET_FIELD = re.compile(r"(?i)((?:^|;)\s*pass(?:word)?:)[^;]*")


@dataclasses.dataclass(frozen=True)
class Datagram:
    """One datagram of a GoIP, split into its fields."""

    command: str                 # req, RECEIVE, STATE, …
    value: str                   # the keep-alive's count, or the report's id
    fields: dict[str, str]       # the other `key:value` pairs, keys in lower case
    message: str | None = None   # the text after `msg:`, in a RECEIVE


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What to answer to one datagram (None: nothing), and the SMS it stored."""

    reply: bytes | None
    accepted: sms.Accepted | None = None


def parse_datagram(data: bytes) -> Datagram:
    """Split a datagram; raises InvalidInput when it is not the protocol."""
    text = data.decode("utf-8", "replace")
    head, has_message, message = text.partition(";msg:")
    parts = [p for p in head.split(";") if p.strip()]
    if not parts:
        raise InvalidInput("empty datagram")
    command, colon, value = parts[0].partition(":")
    command, value = command.strip(), value.strip()
    if not colon or not command or not value or len(value) > 64 or not value.isprintable():
        raise InvalidInput("it does not start with <command>:<id>")
    fields = {}
    for part in parts[1:]:
        key, colon, field_value = part.partition(":")
        if colon:
            fields[key.strip().lower()] = field_value
    return Datagram(command, value, fields, message if has_message else None)


def redacted(data: bytes) -> str:
    """A datagram as it may be logged: no password, printable, short."""
    text = _SECRET_FIELD.sub(r"\1***", data[:200].decode("utf-8", "replace"))
    return "".join(c if c.isprintable() else "?" for c in text)[:120]


class GoipHandler:
    """The protocol without the socket: one datagram in, its answer out."""

    def __init__(self, password: str, rules: Rules):
        self._password = password.encode("utf-8")
        self._rules = rules
        # Lines whose wrong password was logged, and lines seen: each is logged once.
        self._refused: set[str] = set()
        self._seen: set[str] = set()
        # Warnings that anyone can cause, per source address.
        self._warnings = WarningLimit(WARN_EVERY_S, MAX_WARNED_SOURCES)

    def handle(self, db: Database, clock: Clock, data: bytes, peer: str = "?") -> Outcome:
        """Answer one datagram from `peer` (`address:port`, for the log; warnings are
        limited per address)."""
        address = peer.rpartition(":")[0] or peer
        try:
            datagram = parse_datagram(data)
            command = datagram.command
            if command != "req" and command.upper() not in ACKNOWLEDGED_ONLY | {"RECEIVE"}:
                log.debug("GoIP %s from %s ignored", redacted(command.encode()[:20]), peer)
                return Outcome(None)
            if not datagram.fields.get("id", "").strip():
                raise InvalidInput("id (the line's id) is missing")
            line = port_name(datagram.fields["id"].strip(), "id")
        except InvalidInput as error:
            held_back = self._warnings.admit(address, clock.now())
            if held_back is not None:
                log.warning("GoIP datagram from %s ignored: %s (%s)%s", peer, error,
                            redacted(data), held_back)
            return Outcome(None)
        if not self._is_password(datagram):
            held_back = (self._warnings.admit(address, clock.now())
                         if line not in self._refused else None)
            if held_back is not None:
                # Remembered only once logged: a line held back is named in a later minute.
                if len(self._refused) >= MAX_REMEMBERED_LINES:
                    self._refused.clear()
                self._refused.add(line)
                log.warning("GoIP line %s (%s): wrong password, refused; set the SMS server "
                            "password of the line to RENTBOX_GOIP_PASSWORD%s", line, peer,
                            held_back)
            if command == "req":
                return Outcome(f"reg:{datagram.value};status:400;".encode())
            return Outcome(f"{command.upper()} {datagram.value} ERROR wrong password".encode())
        self._refused.discard(line)
        if line not in self._seen:
            self._seen.add(line)
            log.info("GoIP line %s talks to rentbox from %s", line, peer)
        if command == "req":
            self._keep_alive(db, clock, datagram, line)
            return Outcome(f"reg:{datagram.value};status:200;".encode())
        if command.upper() != "RECEIVE":
            return Outcome(f"{command.upper()} {datagram.value} OK".encode())
        return self._receive(db, clock, datagram, line)

    def log_held_back(self, now: dt.datetime) -> None:
        """Log the warnings held back from addresses that have gone quiet (see
        WarningLimit.sweep); cheap to call at every datagram."""
        for line in self._warnings.sweep(now):
            log.warning("GoIP: %s", line)

    def _is_password(self, datagram: Datagram) -> bool:
        given = datagram.fields.get("password", datagram.fields.get("pass"))
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self._password)

    def _keep_alive(self, db: Database, clock: Clock, datagram: Datagram, line: str) -> None:
        online = datagram.fields.get("gsm_status", "").strip().upper() != "LOGOUT"
        number = datagram.fields.get("num", "").strip()[:64] or None
        gateway = presence.check_gateway(f"{SOURCE}:{line}")
        state = PortState(presence.Report(gateway, ports=(line,) if online else ()), line,
                          number if online else None)
        try:
            report_ports(db, clock, self._rules, [state])
        except Unavailable as error:
            # The keep-alive is still answered: the line is registered whatever the disk.
            log.warning("GoIP line %s: presence not recorded: %s", line, error)

    def _receive(self, db: Database, clock: Clock, datagram: Datagram, line: str) -> Outcome:
        recvid = datagram.value
        try:
            if datagram.message is None:
                raise InvalidInput("msg is missing")
            accepted = sms.accept_sms(db, clock, sms.IncomingSms(
                source=SOURCE, port=line, sender=datagram.fields.get("srcnum", "").strip(),
                text=datagram.message, source_id=recvid), self._rules)
        except InvalidInput as error:
            log.warning("GoIP SMS %s on line %s refused: %s", recvid, line, error)
            return Outcome(f"RECEIVE {recvid} ERROR {error}".encode()[:200])
        except Unavailable as error:
            log.warning("GoIP SMS %s on line %s not stored yet (%s): not acknowledged, so the "
                        "box sends it again", recvid, line, error)
            return Outcome(None)
        return Outcome(f"RECEIVE {recvid} OK".encode(), accepted)


class GoipListener(Worker):
    """The UDP socket and the thread that answers it, for `rentbox serve`. Binds at once
    (so that a port in use fails the start), serves from `start()` to `stop()`."""

    name = "rentbox-goip"

    def __init__(self, connections: Connections, clock: Clock, rules: Rules, *, host: str,
                 port: int, password: str, on_sms: Callable[[], None] = lambda: None):
        if not password:
            raise InvalidInput("RENTBOX_GOIP_PORT is set but RENTBOX_GOIP_PASSWORD is not: "
                               "set the password that the GoIP lines use for the SMS server")
        super().__init__()
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.bind(address)
        except OSError as error:
            self._sock.close()
            raise Conflict(f"cannot listen for GoIP on udp {host}:{port}: "
                           f"{error.strerror}") from None
        # Wait on the socket at most POLL_S at a time, so that stop() is seen promptly.
        self._sock.settimeout(POLL_S)
        self._connections = connections
        self._clock = clock
        self._handler = GoipHandler(password, rules)
        self._on_sms = on_sms

    @property
    def address(self) -> tuple[str, int]:
        """The address and port actually bound (useful with port 0)."""
        host, port = self._sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        host, port = self.address
        log.info("GoIP SMS server listening on udp %s:%d", host, port)
        super().start()

    def stop(self, timeout_s: float = 5) -> None:
        super().stop(timeout_s)
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._handler.log_held_back(self._clock.now())
            except Exception:  # a log line must not end the server
                log.exception("GoIP SMS server: could not log held-back warnings")
            try:
                data, peer = self._sock.recvfrom(MAX_DATAGRAM_BYTES)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                log.exception("GoIP SMS server: receiving failed")
                continue
            try:
                outcome = self._handler.handle(self._connections.get(), self._clock, data,
                                               f"{peer[0]}:{peer[1]}")
            except Exception:
                # One datagram must not end the server; the traceback names code, not values.
                log.exception("GoIP datagram from %s:%s could not be handled", *peer[:2])
                continue
            if outcome.reply is not None:
                try:
                    self._sock.sendto(outcome.reply, peer)
                except OSError as error:
                    log.warning("GoIP: cannot answer %s:%s: %s", peer[0], peer[1], error)
            accepted = outcome.accepted
            if accepted and accepted.push_state == "pending" and not accepted.duplicate:
                self._on_sms()
