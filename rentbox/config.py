"""Settings: every tunable of rentbox, its environment variable, default and meaning."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Setting:
    """One tunable: the CLI option and environment variable that set it, and its default."""

    name: str
    env: str
    default: object
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        """The option as Click declares it: `--x/--no-x` for an on/off setting."""
        if isinstance(self.default, bool):
            return f"{self.option}/--no-{self.option[2:]}"
        return self.option


# The one table of settings. The CLI builds its options from it and docs/settings.md's table
# is generated from it (docs/settings_table.py; tests/test_readme.py checks it is current).
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("db", "RENTBOX_DB", Path("rentbox.db"),
                "SQLite database file; serve, numbers import and sms add create it, "
                "other commands need it to exist."),
        Setting("country_names", "RENTBOX_COUNTRY_NAMES", "",
                "Country names that numbers import accepts beside Onlinesim's own "
                "(rentbox/countries.py), as name=REGION pairs, comma-separated: the name "
                "as Onlinesim writes it and the two-letter ISO code of its numbers' "
                "region (e.g. kosovo=XK)."),
        Setting("host", "RENTBOX_HOST", "127.0.0.1",
                "Address the server listens on."),
        Setting("port", "RENTBOX_PORT", 8080,
                "TCP port the server listens on."),
        # Measured with benchmarks/group_commit.py on two cores, 8 callers, GET_NUMBER +
        # FINISH: 1 thread 201 req/s, p99 230 ms; 4 threads 373 req/s, p99 96 ms; 8
        # threads 527 req/s, p99 95 ms (a loaded machine: the order held in every round).
        # Writes go through the one writer thread (group commit), which commits what the
        # threads hand it together: with one thread nothing can be batched.
        Setting("threads", "RENTBOX_THREADS", 8,
                "waitress worker threads. Their writes are committed together by one "
                "writer thread (one fsync for all that arrive at once); 8 measured "
                "fastest on two cores."),
        Setting("push_url", "RENTBOX_PUSH_URL", None,
                "Onlinesim's PUSH_SMS URL, as given by its partner support. Without it, "
                "SMS wait in the outbox."),
        Setting("push_retry_s", "RENTBOX_PUSH_RETRY_S", 10.0,
                "Seconds between attempts to push an SMS that Onlinesim did not take."),
        Setting("push_timeout_s", "RENTBOX_PUSH_TIMEOUT_S", 10.0,
                "Seconds one push attempt may take before it counts as failed."),
        # Measured with benchmarks/push_burst.py: 300 SMS against an Onlinesim answering
        # in 200 ms took 61 s one at a time, about 8 s with 8 in flight.
        Setting("push_parallel", "RENTBOX_PUSH_PARALLEL", 8,
                "Pushes in flight at once, each on its own kept-alive connection; never two "
                "SMS of one rental at a time."),
        # Onlinesim cancels a call after 10 s from when it sent it; the answer still has to
        # travel back, through the reverse proxy.
        Setting("call_deadline_s", "RENTBOX_CALL_DEADLINE_S", 9.0,
                "Seconds after a GET_NUMBER or FINISH began to arrive past which it is "
                "answered 503 and changes nothing: Onlinesim gives up after 10 s, and a "
                "rental it never received would fail and count toward a ban."),
        Setting("guard_s", "RENTBOX_GUARD_S", 1200.0,
                "Guard window: seconds a new rental has to receive its first SMS."),
        Setting("guard_margin_s", "RENTBOX_GUARD_MARGIN_S", 15.0,
                "Seconds after a guard window ends before its number is offered again: "
                "Onlinesim records a rental a moment after rentbox commits it, and a push "
                "sent before the window ended may still be on its way."),
        Setting("services", "RENTBOX_SERVICES", "",
                "Single-service activations offered beside rent: Onlinesim's service names, "
                "comma-separated (e.g. vk,wa,tg). Empty: activations are off."),
        Setting("activation_s", "RENTBOX_ACTIVATION_S", 1200.0,
                "Seconds an activation holds its number: without a FINISH by then (plus "
                "RENTBOX_GUARD_MARGIN_S) the number is offered again and the activation is "
                "flagged in status."),
        Setting("activation_push_url", "RENTBOX_ACTIVATION_PUSH_URL", None,
                "Onlinesim's v1 PUSH_SMS URL for activations, as given by its partner "
                "support (not the rent one). Without it, SMS of activations wait in the "
                "outbox."),
        Setting("smshub_push_url", "RENTBOX_SMSHUB_PUSH_URL", None,
                "SMSHub's PUSH_SMS URL, as SMSHub gives it. With RENTBOX_SMSHUB_KEY set, "
                "SMSHub is a buyer, served at POST /smshub; without this URL its SMS wait "
                "in the outbox."),
        Setting("buyers", "RENTBOX_BUYERS", None,
                "TOML file of further buyers that speak the SMSHub agent protocol "
                "(GrizzlySMS, SMSBower, ...), each served at POST /buyer/<name>, and of "
                "what each buyer is offered: services, reserved countries or a share of "
                "the pool, and service aliases (docs/buyers.md). It holds the buyers' "
                "keys: readable by rentbox only."),
        Setting("ban_after", "RENTBOX_BAN_AFTER", 3,
                "Consecutive failed rentals after which a number is banned."),
        Setting("ban_s", "RENTBOX_BAN_S", 86400.0,
                "Seconds a ban lasts; the number then returns with its count reset."),
        Setting("housekeeping_s", "RENTBOX_HOUSEKEEPING_S", 5.0,
                "Seconds between housekeeping passes (guard windows, bans, presence)."),
        Setting("sms_keep_days", "RENTBOX_SMS_KEEP_DAYS", 30.0,
                "Days after a rental closed (or an SMS for no rental arrived) before its SMS "
                "texts are removed; the rows and their delivery facts stay. 0 keeps them "
                "for ever."),
        Setting("alert_silence_s", "RENTBOX_ALERT_SILENCE_S", 900.0,
                "Alert when Onlinesim has not called for this many seconds (it polls every "
                "2 minutes: silence means rentbox cannot be reached, or is blocked)."),
        Setting("alert_undelivered_s", "RENTBOX_ALERT_UNDELIVERED_S", 600.0,
                "Alert when an SMS has waited this many seconds without Onlinesim taking it."),
        Setting("alert_disk_free_mb", "RENTBOX_ALERT_DISK_FREE_MB", 200.0,
                "Alert when the database's disk has less than this many MiB free."),
        Setting("alert_summary_hour", "RENTBOX_ALERT_SUMMARY_HOUR", 8,
                "UTC hour at which a summary of the day before is sent (-1: none)."),
        Setting("telegram_chat_id", "RENTBOX_TELEGRAM_CHAT_ID", None,
                "Telegram chat that alerts go to (with RENTBOX_TELEGRAM_BOT_TOKEN)."),
        Setting("telegram_api_url", "RENTBOX_TELEGRAM_API_URL", "https://api.telegram.org",
                "The Telegram Bot API's address (a test or a relay may stand in for it)."),
        Setting("alert_webhook_url", "RENTBOX_ALERT_WEBHOOK_URL", None,
                "A URL that alerts are POSTed to as JSON."),
        Setting("log_level", "RENTBOX_LOG_LEVEL", "info",
                "Least important log lines `serve` writes: debug (every GET_SERVICES poll "
                "too), info, warning or error."),
        Setting("log_format", "RENTBOX_LOG_FORMAT", "text",
                "Log lines as text, or as one JSON object each (json) for log shippers."),
        Setting("presence", "RENTBOX_PRESENCE", True,
                "Offer only numbers whose SIM is online, once a gateway has reported it "
                "(--no-presence, or RENTBOX_PRESENCE=off: every number is offered, as if "
                "no gateway reported any)."),
        Setting("presence_s", "RENTBOX_PRESENCE_S", 300.0,
                "Presence window: seconds after a gateway last reported a SIM present "
                "before its number counts as offline."),
        Setting("dinstar_tz", "RENTBOX_DINSTAR_TZ", "UTC",
                "Time zone of the timestamps in Dinstar pushes (the box's local time): a "
                "name such as Europe/Moscow, UTC, or an offset such as +03:00."),
        Setting("goip_port", "RENTBOX_GOIP_PORT", None,
                "UDP port of the GoIP SMS server inside serve (with RENTBOX_GOIP_PASSWORD); "
                "off unless set."),
        Setting("goip_host", "RENTBOX_GOIP_HOST", "0.0.0.0",
                "Address the GoIP SMS server listens on (UDP cannot go through the HTTP "
                "reverse proxy, so it listens on every interface unless told otherwise)."),
        Setting("poll_boxes", "RENTBOX_POLL_BOXES", None,
                "TOML file listing the Ejoin and Dinstar boxes that serve polls for the SMS "
                "they hold (catch-up for SMS pushed while rentbox was unreachable); off "
                "unless set. It holds the boxes' passwords: readable by rentbox only."),
        # A box keeps thousands of SMS, so a short interval costs one small answer a box;
        # it bounds how long an SMS whose push was lost waits.
        Setting("poll_every_s", "RENTBOX_POLL_EVERY_S", 60.0,
                "Seconds between catch-up polls of each box in RENTBOX_POLL_BOXES."),
        Setting("poll_timeout_s", "RENTBOX_POLL_TIMEOUT_S", 10.0,
                "Seconds a box may take to connect or to send each part of its answer "
                "to a catch-up poll before the poll counts as failed."),
        Setting("spool_dir", "RENTBOX_SPOOL_DIR", None,
                "Folder where the gammu-smsd and smstools3 hooks on this machine leave each "
                "received SMS as a file; serve stores each and then removes it, so none is "
                "lost while rentbox is down. Off unless set (the hooks then post to /sms)."),
        # A look into an empty folder costs one listdir; it bounds how long a spooled SMS
        # waits before it is stored and pushed.
        Setting("spool_every_s", "RENTBOX_SPOOL_EVERY_S", 1.0,
                "Seconds between two looks into RENTBOX_SPOOL_DIR."),
        Setting("backup_dir", "RENTBOX_BACKUP_DIR", None,
                "Folder where serve writes a verified backup every RENTBOX_BACKUP_EVERY_S "
                "(rentbox-<UTC time>.db); off unless set. One folder per database."),
        Setting("backup_every_s", "RENTBOX_BACKUP_EVERY_S", 3600.0,
                "Seconds between scheduled backups."),
        Setting("backup_keep", "RENTBOX_BACKUP_KEEP", 48,
                "Scheduled backups kept in RENTBOX_BACKUP_DIR; older ones are deleted."),
        # Measured with benchmarks/backup_latency.py (200 MiB file, two cores, one disk):
        # copied at once, GET_NUMBER p99 went from 29 ms to 400 ms during the backup.
        Setting("backup_mib_s", "RENTBOX_BACKUP_MIB_S", 16.0,
                "MiB a second a scheduled backup copies at most, so that its writes never "
                "crowd out the server's commits on the disk."),
        Setting("replica_url", "RENTBOX_REPLICA_URL", None,
                "Where Litestream replicates the database continuously (s3://, sftp://, "
                "file:///, ...; needs rentbox[replicate]); off unless set. Credentials come "
                "from Litestream's own environment variables."),
        Setting("replica_sync_s", "RENTBOX_REPLICA_SYNC_S", 1.0,
                "Seconds between Litestream's uploads of new changes: about the most a lost "
                "box can lose."),
        Setting("replica_restart_s", "RENTBOX_REPLICA_RESTART_S", 60.0,
                "Longest wait before Litestream is restarted after it died (the wait "
                "doubles from 1 s up to this)."),
    ]
}

# Secrets are only environment variables: on the command line they would be visible to
# every user of the machine through `ps`.
API_KEY_ENV = "RENTBOX_API_KEY"            # the partner's Onlinesim API key, both ways
GATEWAY_TOKEN_ENV = "RENTBOX_GATEWAY_TOKEN"  # Bearer token of POST /sms
SMSGATE_KEY_ENV = "RENTBOX_SMSGATE_KEY"    # signing key of SMSGate's webhooks
TELEGRAM_TOKEN_ENV = "RENTBOX_TELEGRAM_BOT_TOKEN"  # the alert bot's token
GOIP_PASSWORD_ENV = "RENTBOX_GOIP_PASSWORD"  # password of the GoIP lines (SMS server)
CONSOLE_PASSWORD_ENV = "RENTBOX_CONSOLE_PASSWORD"  # HTTP Basic password of the status page
METRICS_TOKEN_ENV = "RENTBOX_METRICS_TOKEN"  # Bearer token of GET /metrics
SMSHUB_KEY_ENV = "RENTBOX_SMSHUB_KEY"      # SMSHub's key for this partner, both ways
BUYER_KEY_ENV = "RENTBOX_BUYER_KEY"        # `selftest --buyer NAME`: that buyer's key
SECRETS = (API_KEY_ENV, GATEWAY_TOKEN_ENV, SMSGATE_KEY_ENV, TELEGRAM_TOKEN_ENV,
           GOIP_PASSWORD_ENV, CONSOLE_PASSWORD_ENV, METRICS_TOKEN_ENV, SMSHUB_KEY_ENV,
           BUYER_KEY_ENV)


def default(name: str):
    """A setting's default value."""
    return SETTINGS[name].default


# Buyers (protocol.md 7): Onlinesim, configured by RENTBOX_API_KEY and the push URLs, and
# SMSHub-protocol buyers (RENTBOX_SMSHUB_KEY, RENTBOX_BUYERS).
ONLINESIM = "onlinesim"
SMSHUB = "smshub"
PROTOCOLS = (ONLINESIM, SMSHUB)


@dataclasses.dataclass(frozen=True)
class Buyer:
    """One buyer of the pool's numbers: its name, the protocol it speaks, its key, where
    its SMS are pushed, and its terms: the services it is offered (None: those of
    RENTBOX_SERVICES; names as the buyer writes them), the countries reserved for it, and
    the share of each country's numbers kept for it (buyers.py)."""

    name: str
    protocol: str
    key: str = dataclasses.field(default="", repr=False)
    push_url: str | None = dataclasses.field(default=None, repr=False)
    services: tuple[str, ...] | None = None
    countries: tuple[str, ...] = ()
    share: float = 0.0

    @property
    def path(self) -> str | None:
        """Where its calls arrive (Onlinesim's paths are its own: web/onlinesim.py)."""
        if self.protocol == ONLINESIM:
            return None
        return "/smshub" if self.name == SMSHUB else f"/buyer/{self.name}"


@dataclasses.dataclass(frozen=True)
class Rules:
    """Onlinesim's rent rules as rentbox mirrors them (protocol.md 5)."""

    guard_s: float = default("guard_s")
    ban_after: int = default("ban_after")
    ban_s: float = default("ban_s")
    guard_margin_s: float = default("guard_margin_s")
    # SIM presence (presence.py): whether it governs which numbers are offered, and how
    # long a report of a SIM counts. Onlinesim blocks a partner who reports numbers that
    # are not physically in a port (protocol.md 3.1).
    presence: bool = default("presence")
    presence_s: float = default("presence_s")
    # Single-service activations (protocol.md 6): the services offered (none: off), and
    # how long an activation holds its number without a FINISH.
    services: tuple[str, ...] = ()
    activation_s: float = default("activation_s")
    # Buyers beside Onlinesim, and Onlinesim's own terms if the buyers file sets any
    # (buyers.py; none: Onlinesim alone, first come first served). Service aliases the
    # partner adds to buyers.ALIASES, as (alias, service) pairs.
    buyers: tuple[Buyer, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()

    @property
    def guard_decided_s(self) -> float:
        """Seconds after a rental opened when rentbox decides its guard window."""
        return self.guard_s + self.guard_margin_s

    @property
    def activation_decided_s(self) -> float:
        """Seconds after an activation opened when, without a FINISH, its number is
        offered again (the margin as for a rental's guard window)."""
        return self.activation_s + self.guard_margin_s
