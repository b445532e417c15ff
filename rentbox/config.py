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


# The one table of settings. The CLI builds its options from it and the README's settings
# table mirrors it (tests/test_readme.py checks that the README names every one).
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("db", "RENTBOX_DB", Path("rentbox.db"),
                "SQLite database file; serve, numbers import and sms add create it, "
                "other commands need it to exist."),
        Setting("host", "RENTBOX_HOST", "127.0.0.1",
                "Address the server listens on."),
        Setting("port", "RENTBOX_PORT", 8080,
                "TCP port the server listens on."),
        # Measured with benchmarks/get_number.py on two cores, 8 callers: 1 thread gave
        # 326 req/s, p99 34 ms; 2 threads 221 req/s, p99 48 ms; 4 threads the same or
        # worse. Writes are serialised anyway, and waitress does all socket I/O in its
        # own thread, so a slow client never holds the worker.
        Setting("threads", "RENTBOX_THREADS", 1,
                "waitress worker threads. Writes to SQLite are serialised, so more "
                "threads only add GIL and lock hand-overs; 1 measured fastest."),
        Setting("push_url", "RENTBOX_PUSH_URL", None,
                "Onlinesim's PUSH_SMS URL, as given by its partner support. Without it, "
                "SMS wait in the outbox."),
        Setting("push_retry_s", "RENTBOX_PUSH_RETRY_S", 10.0,
                "Seconds between attempts to push an SMS that Onlinesim did not take."),
        Setting("push_timeout_s", "RENTBOX_PUSH_TIMEOUT_S", 10.0,
                "Seconds one push attempt may take before it counts as failed."),
        Setting("guard_s", "RENTBOX_GUARD_S", 1200.0,
                "Guard window: seconds a new rental has to receive its first SMS."),
        Setting("guard_margin_s", "RENTBOX_GUARD_MARGIN_S", 15.0,
                "Seconds after a guard window ends before its number is offered again: "
                "Onlinesim records a rental a moment after rentbox commits it, and a push "
                "sent before the window ended may still be on its way."),
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
    ]
}

# Secrets are only environment variables: on the command line they would be visible to
# every user of the machine through `ps`.
API_KEY_ENV = "RENTBOX_API_KEY"            # the partner's Onlinesim API key, both ways
GATEWAY_TOKEN_ENV = "RENTBOX_GATEWAY_TOKEN"  # Bearer token of POST /sms
SMSGATE_KEY_ENV = "RENTBOX_SMSGATE_KEY"    # signing key of SMSGate's webhooks
SECRETS = (API_KEY_ENV, GATEWAY_TOKEN_ENV, SMSGATE_KEY_ENV)


def default(name: str):
    """A setting's default value."""
    return SETTINGS[name].default


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

    @property
    def guard_decided_s(self) -> float:
        """Seconds after a rental opened when rentbox decides its guard window."""
        return self.guard_s + self.guard_margin_s


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `rentbox serve` runs with. Built by the CLI; tests build their own."""

    api_key: str
    gateway_token: str | None = None
    smsgate_key: str | None = None
    db: Path = default("db")
    host: str = default("host")
    port: int = default("port")
    threads: int = default("threads")
    push_url: str | None = default("push_url")
    push_retry_s: float = default("push_retry_s")
    push_timeout_s: float = default("push_timeout_s")
    housekeeping_s: float = default("housekeeping_s")
    sms_keep_days: float = default("sms_keep_days")
    rules: Rules = Rules()
    # Largest request body accepted, after gzip decoding too.
    max_body_bytes: int = 64 * 1024
    # Largest presence report: a SIM bank controller lists thousands of numbers.
    max_presence_body_bytes: int = 512 * 1024
    # SMSGate webhooks older or newer than this are refused (replay protection).
    smsgate_max_skew_s: float = 300.0

    def __repr__(self) -> str:
        # Never let a secret reach a log line or a traceback through repr().
        hidden = {"api_key", "gateway_token", "smsgate_key"}
        fields = ", ".join(
            f"{f.name}={'<hidden>' if f.name in hidden else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"Settings({fields})"
