"""Settings: what `rentbox serve` runs with, and the plans of its threads (alerts,
backups, the replica); the defaults and meaning of each are in config.py's table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rentbox.config import Rules, default


@dataclasses.dataclass(frozen=True)
class Alerting:
    """Where alerts go and when conditions start (alerts.py)."""

    silence_s: float = default("alert_silence_s")
    undelivered_s: float = default("alert_undelivered_s")
    disk_free_mb: float = default("alert_disk_free_mb")
    summary_hour: int = default("alert_summary_hour")
    telegram_token: str | None = None
    telegram_chat_id: str | None = default("telegram_chat_id")
    telegram_api_url: str = default("telegram_api_url")
    webhook_url: str | None = default("alert_webhook_url")

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels that are set up."""
        found = []
        if self.telegram_token and self.telegram_chat_id:
            found.append("telegram")
        if self.webhook_url:
            found.append("webhook")
        return tuple(found)

    def __repr__(self) -> str:
        return f"Alerting(channels={self.channels!r}, silence_s={self.silence_s!r}, ...)"


@dataclasses.dataclass(frozen=True)
class BackupPlan:
    """Scheduled backups inside serve (backups.py): off unless `folder` is set."""

    folder: Path | None = default("backup_dir")
    every_s: float = default("backup_every_s")
    keep: int = default("backup_keep")
    mib_s: float = default("backup_mib_s")


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
    """Continuous replication by Litestream (replication.py): off unless `url` is set."""

    url: str | None = default("replica_url")
    sync_s: float = default("replica_sync_s")
    restart_s: float = default("replica_restart_s")

    def __repr__(self) -> str:
        # A replica URL may carry a password (sftp://user:password@host/...).
        shown = "<set>" if self.url else None
        return f"ReplicaPlan(url={shown}, sync_s={self.sync_s!r}, restart_s={self.restart_s!r})"


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
    activation_push_url: str | None = default("activation_push_url")
    push_retry_s: float = default("push_retry_s")
    push_timeout_s: float = default("push_timeout_s")
    push_parallel: int = default("push_parallel")
    call_deadline_s: float = default("call_deadline_s")
    housekeeping_s: float = default("housekeeping_s")
    sms_keep_days: float = default("sms_keep_days")
    rules: Rules = Rules()
    alerting: Alerting = Alerting()
    # Largest request body accepted, after gzip decoding too.
    max_body_bytes: int = 64 * 1024
    # Largest presence report: a SIM bank controller lists thousands of numbers.
    max_presence_body_bytes: int = 512 * 1024
    # SMSGate webhooks older or newer than this are refused (replay protection).
    smsgate_max_skew_s: float = 300.0
    # Gateways (gateways/): Dinstar's time zone, and the GoIP SMS server (off: no port).
    dinstar_tz: str = default("dinstar_tz")
    goip_port: int | None = default("goip_port")
    goip_host: str = default("goip_host")
    goip_password: str | None = None
    # Catch-up polling of boxes (gateways/poll.py): the file listing them (off: None).
    poll_boxes: Path | None = default("poll_boxes")
    poll_every_s: float = default("poll_every_s")
    poll_timeout_s: float = default("poll_timeout_s")
    # The spool of the local SMS daemons' hooks (spool.py): its folder (off: None).
    spool_dir: Path | None = default("spool_dir")
    spool_every_s: float = default("spool_every_s")
    # The status page at GET / (HTTP Basic, any user name) and GET /metrics (Bearer):
    # each off until its secret is set.
    console_password: str | None = None
    metrics_token: str | None = None
    # Keeping the books safe: scheduled backups and continuous replication.
    backups: BackupPlan = BackupPlan()
    replication: ReplicaPlan = ReplicaPlan()

    def __repr__(self) -> str:
        # Never let a secret reach a log line or a traceback through repr().
        hidden = {"api_key", "gateway_token", "smsgate_key", "goip_password",
                  "console_password", "metrics_token"}
        fields = ", ".join(
            f"{f.name}={'<hidden>' if f.name in hidden else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"Settings({fields})"
