"""Catch-up polling: the SMS a box holds, fetched from it, so that an SMS whose push was
lost (rentbox down, restarting or unreachable) still reaches its rental.

The boxes are listed in a TOML file (RENTBOX_POLL_BOXES; it holds their passwords):

    [[box]]
    name = "dwg1"                 # rentbox's name for the box: log lines, its mark
    kind = "dinstar"              # or "ejoin"
    url = "https://192.168.1.20"  # the box's web interface
    user = "admin"
    password = "…"
    verify_tls = false            # optional (default true): the box's self-signed certificate
    box = "gw1"                   # Ejoin only: the `box` its pushes name (?box=gw1)

Every RENTBOX_POLL_EVERY_S, each box is asked for the SMS after the last one seen (its
mark, in the meta table as `poll.<name>`), and they are stored by `common.accept_push`
with the source and id the box's push gives them: an SMS both pushed and polled is stored
once, whichever comes first.

- Dinstar: `GET /api/query_incoming_sms?flag=all&incoming_sms_id=<last>` answers the SMS
  after that id (`flag=all`: the box's default, `unread`, marks what it returns as read).
  HTTP Digest or Basic, as the box asks (curl's --anyauth). With presence on, also
  `GET /api/get_port_info?info_type=reg,number`: the ports' states, as the presence of
  their SIMs, since the box pushes its register states only when they change.
- Ejoin: `GET /goip_get_sms.html?username=…&password=…&sms_id=<next>&sms_num=<page>&sms_del=0`
  answers a page of SMS and `next_sms`, where the next page starts; its `ssrc` changes
  when the box restarts its list (a reboot), which is then read from its start.

The first pass over a box only notes where its list ends: what it held before rentbox
polled it may be days old and is not taken. Each answer is fetched from the configured
URL only (no redirect, no proxy), with a timeout. A box that fails (unreachable, a wrong
password, an answer that is not its API's) is logged when it starts failing and every
FAIL_LOG_EVERY_S, and never holds up the others; passwords never reach the log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import logging
import re
import ssl
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from rentbox import meta
from rentbox.clock import Clock, to_text
from rentbox.config import Rules
from rentbox.db import Connections, Database
from rentbox.errors import InvalidInput, Unavailable
from rentbox.gateways import common, dinstar, ejoin
from rentbox.settings import Settings
from rentbox.workers import Periodic

log = logging.getLogger("rentbox.gateways")

KINDS = ("dinstar", "ejoin")
# The largest answer read: the first pass reads a box's whole list (about 200 bytes an SMS).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# SMS an Ejoin answer carries at most, and pages read in one pass (the rest: next pass).
EJOIN_PAGE = 100
MAX_PAGES = 20
# A failing box is logged when it starts failing, then at most this often (seconds).
FAIL_LOG_EVERY_S = 300.0
DINSTAR_SMS = "/api/query_incoming_sms"
DINSTAR_PORTS = "/api/get_port_info"
EJOIN_SMS = "/goip_get_sms.html"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_KEYS = {"name", "kind", "url", "user", "password", "verify_tls", "box"}


@dataclasses.dataclass(frozen=True)
class Box:
    """One box to poll, as the file lists it."""

    name: str
    kind: str
    url: str
    user: str
    password: str = dataclasses.field(repr=False)
    verify_tls: bool = True
    prefix: str | None = None  # Ejoin: the `box` name of its pushes (pool ports gw1:1.01)


def load_boxes(path: Path) -> list[Box]:
    """The boxes listed in RENTBOX_POLL_BOXES; InvalidInput names what is wrong (never a
    password), so that `serve` does not start with a list it cannot use."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInput(f"RENTBOX_POLL_BOXES: cannot read {path}: "
                           f"{error.strerror or error}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidInput(f"RENTBOX_POLL_BOXES: {path} is not a TOML file: {error}") from None
    extra = set(data) - {"box"}
    entries = data.get("box", [])
    if extra or not isinstance(entries, list) or not entries:
        raise InvalidInput(f"RENTBOX_POLL_BOXES: {path} must list boxes as [[box]] tables"
                           " (name, kind, url, user, password)")
    boxes = [_box(entry, f"RENTBOX_POLL_BOXES: box {n} of {path}")
             for n, entry in enumerate(entries, start=1)]
    names = [b.name for b in boxes]
    if len(set(names)) != len(names):
        raise InvalidInput(f"RENTBOX_POLL_BOXES: two boxes of {path} have the same name")
    mode = path.stat().st_mode
    if mode & 0o077:
        log.warning("RENTBOX_POLL_BOXES %s can be read by other users (mode %03o) and holds "
                    "the boxes' passwords: chmod 600 it", path, mode & 0o777)
    return boxes


def _box(entry: object, where: str) -> Box:
    if not isinstance(entry, dict):
        raise InvalidInput(f"{where} must be a table")
    unknown = set(entry) - _KEYS
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: "
                           f"{', '.join(sorted(_KEYS))})")
    name, kind, url = entry.get("name"), entry.get("kind"), entry.get("url")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"{where}: name must be 1 to 40 letters, digits and . _ -")
    where = f"{where} ({name})"
    if kind not in KINDS:
        raise InvalidInput(f"{where}: kind must be one of {', '.join(KINDS)}")
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or parts.username or parts.password or parts.query or parts.fragment):
        raise InvalidInput(f"{where}: url must be the box's http:// or https:// address, "
                           "without a query or credentials (those go in user and password)")
    for key in ("user", "password"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise InvalidInput(f"{where}: {key} is required (a string)")
    verify_tls = entry.get("verify_tls", True)
    if not isinstance(verify_tls, bool):
        raise InvalidInput(f"{where}: verify_tls must be true or false")
    prefix = entry.get("box")
    if prefix is not None:
        if kind != "ejoin" or not isinstance(prefix, str):
            raise InvalidInput(f"{where}: box (the name in the push URL) is for Ejoin boxes")
        try:
            prefix = ejoin.check_box(prefix)
        except InvalidInput as error:
            raise InvalidInput(f"{where}: {error}") from None
    return Box(name=name, kind=kind, url=url.rstrip("/"), user=entry["user"],
               password=entry["password"], verify_tls=verify_tls, prefix=prefix)


# ---------------------------------------------------------------------------------------
# Asking a box
# ---------------------------------------------------------------------------------------


class PollError(Exception):
    """A box did not answer as its API does: why, in one line without a secret."""


# Fetch(box, path, query) -> the box's JSON answer (an object), or PollError.
Fetch = Callable[[Box, str, dict], dict]


class HttpFetcher:
    """GETs a box's API over HTTP(S), from its configured URL only: no redirects, no
    proxy from the environment, a timeout on connecting and on every read."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._openers: dict[str, urllib.request.OpenerDirector] = {}

    def __call__(self, box: Box, path: str, query: dict) -> dict:
        url = f"{box.url}{path}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with self._opener(box).open(request, timeout=self.timeout_s) as answer:
                data = answer.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as error:
            error.close()
            raise PollError(f"HTTP {error.code} {_printable(error.reason, 40)}".rstrip()
                            + (": check user and password" if error.code == 401 else "")
                            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            raise PollError(_network_reason(error, self.timeout_s)) from None
        if len(data) > MAX_ANSWER_BYTES:
            raise PollError(f"an answer larger than {MAX_ANSWER_BYTES // 2**20} MiB")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            raise PollError("the answer is not JSON: is url the box's address?") from None
        if not isinstance(body, dict):
            raise PollError("the answer is not a JSON object")
        return body

    def _opener(self, box: Box) -> urllib.request.OpenerDirector:
        opener = self._openers.get(box.name)
        if opener is None:
            passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            passwords.add_password(None, box.url, box.user, box.password)
            context = ssl.create_default_context()
            if not box.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            # Digest (tried first) or Basic, whichever the box's 401 asks for.
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), _NoRedirect(),
                urllib.request.HTTPSHandler(context=context),
                urllib.request.HTTPDigestAuthHandler(passwords),
                urllib.request.HTTPBasicAuthHandler(passwords))
            self._openers[box.name] = opener
        return opener


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is here: the credentials and the query go
    to the configured address only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _network_reason(error: BaseException, timeout_s: float) -> str:
    reason = getattr(error, "reason", error)
    if isinstance(error, http.client.InvalidURL):
        return "url is not a valid address"  # (its message quotes the URL, query and all)
    if isinstance(reason, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    text = _printable(str(reason) or type(reason).__name__, 160)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        text += " (a box's own certificate: set verify_tls = false for it)"
    return text


def _printable(text: object, limit: int) -> str:
    text = str(text)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


# ---------------------------------------------------------------------------------------
# A pass
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Trouble:
    since: dt.datetime
    logged_at: dt.datetime
    failed: int = 1


class CatchUp:
    """One pass over the boxes (`run_once`), and what it remembers between passes: which
    box fails since when, for the log."""

    def __init__(self, boxes: list[Box], rules: Rules, dinstar_tz: str, fetch: Fetch):
        self.boxes = boxes
        self._rules = rules
        self._tz = dinstar.time_zone(dinstar_tz)
        self._fetch = fetch
        self._trouble: dict[tuple[str, str], _Trouble] = {}

    def run_once(self, db: Database, clock: Clock,
                 stopping: Callable[[], bool] = lambda: False) -> int:
        """Poll every box once (until `stopping()`); returns how many SMS new to rentbox
        entered the outbox. `Unavailable` (the database cannot be written) ends the pass:
        nothing is marked as seen that was not stored, so the next pass asks again."""
        new = 0
        for box in self.boxes:
            if stopping():
                break
            steps = [("SMS", self._dinstar_sms if box.kind == "dinstar" else self._ejoin_sms)]
            if box.kind == "dinstar" and self._rules.presence:
                steps.append(("ports", self._dinstar_ports))
            for step, poll in steps:
                try:
                    new += poll(db, clock, box)
                except Unavailable:
                    raise
                except Exception as error:  # one box's trouble never stops the others
                    reason = (str(error) if isinstance(error, (PollError, InvalidInput))
                              else f"{type(error).__name__}: {error}")
                    if len(box.password) >= 4:
                        reason = reason.replace(box.password, "***")
                    self._failed(box, step, _printable(reason, 300), clock.now())
                else:
                    self._worked(box, step)
        return new

    # -- Dinstar ----------------------------------------------------------------------

    def _dinstar_sms(self, db: Database, clock: Clock, box: Box) -> int:
        key = _mark_key(box)
        mark = meta.get(db, key) or {}
        answer = self._fetch(box, DINSTAR_SMS, {"flag": "all",
                                                "incoming_sms_id": mark.get("last_id", 0)})
        _check_dinstar(answer)
        serial = dinstar.serial_of(answer)
        if mark and mark.get("sn") != serial:
            log.warning("catch-up poll of %s: the box at its url is now %s, not %s: its "
                        "list is read from where it ends now", box.name, serial,
                        mark.get("sn"))
            meta.put(db, clock.now(), key, {})
            return 0
        serial, rows, last = dinstar.parse_incoming(
            answer, self._tz, clock.now(), dinstar.known_clock_offset(db, serial))
        if "last_id" not in mark:
            meta.put(db, clock.now(), key, {"kind": box.kind, "sn": serial,
                                            "last_id": last or 0})
            log.info("catch-up poll of %s (dinstar %s): from the box's SMS %d on; the %d "
                     "it held before are not taken", box.name, serial, last or 0, len(rows))
            return 0
        new = self._store(db, clock, box, dinstar.SOURCE, rows)
        if last is not None and last > mark["last_id"]:
            meta.put(db, clock.now(), key, {**mark, "last_id": last})
        return new

    def _dinstar_ports(self, db: Database, clock: Clock, box: Box) -> int:
        answer = self._fetch(box, DINSTAR_PORTS, {"info_type": "reg,number"})
        _check_dinstar(answer)
        serial = dinstar.serial_of(answer)
        common.report_ports(db, clock, self._rules, dinstar.port_states(answer, serial))
        return 0

    # -- Ejoin ------------------------------------------------------------------------

    def _ejoin_sms(self, db: Database, clock: Clock, box: Box) -> int:
        key = _mark_key(box)
        mark = meta.get(db, key) or {}
        # Until a first pass has read to the end of the list, what it reads is history.
        skipping = mark.get("skipping", True)
        start = int(mark.get("next", 1))
        new = 0
        for _ in range(MAX_PAGES):
            answer = self._fetch(box, EJOIN_SMS, {
                "username": box.user, "password": box.password, "sms_id": start,
                "sms_num": EJOIN_PAGE, "sms_del": 0})
            ssrc, rows, following = _ejoin_answer(answer)
            if "ssrc" in mark and ssrc != mark["ssrc"] and start != 1:
                log.info("catch-up poll of %s: the box restarted its SMS list (ssrc %s): "
                         "read from its start", box.name, _printable(ssrc, 40))
                mark, start = {**mark, "ssrc": ssrc}, 1
                continue
            if not skipping:
                new += self._store(db, clock, box, ejoin.SOURCE, common.parse_rows(
                    rows, lambda row: ejoin.parse_row(row, box.prefix)))
            done = len(rows) < EJOIN_PAGE or following <= start
            wanted = {"kind": box.kind, "ssrc": ssrc, "next": following,
                      "skipping": skipping and not done}
            if wanted != mark:
                meta.put(db, clock.now(), key, wanted)
                mark = wanted
            if done:
                if skipping:
                    log.info("catch-up poll of %s (ejoin): from the box's SMS %d on; what "
                             "it held before is not taken", box.name, following)
                break
            start = following
        return new

    # -- both -------------------------------------------------------------------------

    def _store(self, db: Database, clock: Clock, box: Box, source: str,
               rows: list[common.Row]) -> int:
        result = common.accept_push(db, clock, self._rules, source, rows)
        fresh = [a for a in result.accepted if not a.duplicate]
        if fresh:
            log.info("catch-up poll of %s: %d SMS that no push brought", box.name, len(fresh))
        return sum(a.push_state == "pending" for a in fresh)

    def _failed(self, box: Box, step: str, reason: str, now: dt.datetime) -> None:
        trouble = self._trouble.get((box.name, step))
        if trouble is None:
            self._trouble[(box.name, step)] = _Trouble(now, now)
            log.warning("catch-up poll of %s (%s %s) failed: %s", box.name, box.kind, step,
                        reason)
            return
        trouble.failed += 1
        if (now - trouble.logged_at).total_seconds() >= FAIL_LOG_EVERY_S:
            trouble.logged_at = now
            log.warning("catch-up poll of %s (%s %s) fails since %s (%d passes): %s",
                        box.name, box.kind, step, to_text(trouble.since), trouble.failed,
                        reason)

    def _worked(self, box: Box, step: str) -> None:
        trouble = self._trouble.pop((box.name, step), None)
        if trouble is not None:
            log.info("catch-up poll of %s (%s %s) works again after %d failed pass(es)",
                     box.name, box.kind, step, trouble.failed)


def _mark_key(box: Box) -> str:
    return f"poll.{box.name}"


def marks(db: Database, boxes: list[Box]) -> dict[str, dict]:
    """Where each box's catch-up stands: {name: its mark} (no secret in it)."""
    return {b.name: meta.get(db, _mark_key(b)) or {} for b in boxes}


def _check_dinstar(answer: dict) -> None:
    if answer.get("error_code") != 200:
        raise PollError(f"the box answered error_code "
                        f"{_printable(repr(answer.get('error_code')), 20)}, not 200")


def _ejoin_answer(answer: dict) -> tuple[str, list, int]:
    """(ssrc, rows, next_sms) of an answer of goip_get_sms.html."""
    if answer.get("code") not in (0, 200):
        raise PollError(f"the box answered code {_printable(repr(answer.get('code')), 20)}: "
                        f"{_printable(answer.get('reason', ''), 80)}")
    rows, following = answer.get("data"), answer.get("next_sms")
    rows = [] if rows is None else rows  # (an empty list may be sent as null)
    if not isinstance(rows, list):
        raise PollError("data is not a list of SMS")
    if isinstance(following, bool) or not isinstance(following, int) or following < 1:
        raise PollError("next_sms is missing: is this an Ejoin box's goip_get_sms.html?")
    return str(answer.get("ssrc", "")), rows, following


# ---------------------------------------------------------------------------------------
# The thread of `serve`
# ---------------------------------------------------------------------------------------


class Poller(Periodic):
    """The thread that runs the catch-up pass every RENTBOX_POLL_EVERY_S."""

    name = "rentbox-poll"
    what = "catch-up poll"
    log = logging.getLogger("rentbox.gateways")

    def __init__(self, connections: Connections, clock: Clock, settings: Settings,
                 on_sms: Callable[[], None], fetch: Fetch | None = None):
        super().__init__(settings.poll_every_s)
        self.boxes = load_boxes(settings.poll_boxes)
        self.catch_up = CatchUp(self.boxes, settings.rules, settings.dinstar_tz,
                                fetch or HttpFetcher(settings.poll_timeout_s))
        self._connections = connections
        self._clock = clock
        self._on_sms = on_sms
        rules = settings.rules
        if rules.presence and settings.poll_every_s >= rules.presence_s and any(
                b.kind == "dinstar" for b in self.boxes):
            log.warning("RENTBOX_POLL_EVERY_S (%g s) is not shorter than RENTBOX_PRESENCE_S "
                        "(%g s): the SIMs of the Dinstar boxes will go offline between two "
                        "readings of their ports", settings.poll_every_s, rules.presence_s)

    def run_pass(self) -> None:
        if self.catch_up.run_once(self._connections.get(), self._clock, self._stop.is_set):
            self._on_sms()
