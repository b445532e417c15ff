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


# The one table of settings. The CLI builds its options from it and the README's settings
# table mirrors it (tests/test_config.py checks that the README names every variable).
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in [
        Setting("db", "RENTBOX_DB", Path("rentbox.db"),
                "SQLite database file; created and migrated on first use."),
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
    ]
}

# The partner's Onlinesim API key. Only an environment variable: a secret on the command
# line is visible to every user of the machine through `ps`.
API_KEY_ENV = "RENTBOX_API_KEY"


def default(name: str) -> object:
    return SETTINGS[name].default


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `rentbox serve` runs with. Built by the CLI; tests build their own."""

    api_key: str
    db: Path = default("db")  # type: ignore[assignment]
    host: str = default("host")  # type: ignore[assignment]
    port: int = default("port")  # type: ignore[assignment]
    threads: int = default("threads")  # type: ignore[assignment]
    # Largest request body accepted, after gzip decoding too.
    max_body_bytes: int = 64 * 1024

    def __repr__(self) -> str:
        # Never let the key reach a log line or a traceback through repr().
        fields = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "api_key"
        )
        return f"Settings(api_key=<hidden>, {fields})"
