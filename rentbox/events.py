"""Events: the append-only record of every change of state, who made it and why."""

from __future__ import annotations

import datetime as dt
import json

from rentbox.clock import to_text
from rentbox.db import Database


def record(
    db: Database,
    now: dt.datetime,
    kind: str,
    *,
    operation_id: int | None = None,
    number_id: int | None = None,
    **detail: object,
) -> None:
    """Append one event. Call it inside the transaction that makes the change."""
    db.execute(
        "INSERT INTO events (at, kind, operation_id, number_id, detail) VALUES (?, ?, ?, ?, ?)",
        (
            to_text(now),
            kind,
            operation_id,
            number_id,
            json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else None,
        ),
    )


def for_operation(db: Database, operation_id: int) -> list[dict]:
    """An operation's events, oldest first."""
    return _decode(db.rows(
        "SELECT * FROM events WHERE operation_id = ? ORDER BY id", (operation_id,)
    ))


def for_number(db: Database, number_id: int) -> list[dict]:
    """A number's events, oldest first."""
    return _decode(db.rows(
        "SELECT * FROM events WHERE number_id = ? ORDER BY id", (number_id,)
    ))


def _decode(rows: list[dict]) -> list[dict]:
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    return rows
