"""Time every console command on a database with months of history.

Builds a database through rentbox's own core functions with a simulated clock: a pool of
NUMBERS numbers and OPERATIONS rentals over DAYS days (about 70% receive an SMS in time;
FINISH statuses 3, 4, 5 and 1 in realistic shares; bans where failures pile up), then
runs each read command as a user would (`python -m rentbox ...`) and prints its wall time.

    python benchmarks/console.py                  # 500 numbers, 5,000 operations
    python benchmarks/console.py --keep demo.db   # keep the database to look around
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rentbox import operations, pool, push, sms
from rentbox.clock import FixedClock
from rentbox.config import Rules
from rentbox.db import open_database
from rentbox.protocol import FinishRequest, NumberRequest

RULES = Rules()


def build(path: Path, numbers: int, rentals: int, days: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    db = open_database(path)
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    countries = [("germany", "491512", ("telekom", "o2", "vodafone")),
                 ("russia", "7912", ("mts", "beeline", "megafon"))]
    entries = []
    for i in range(numbers):
        country, prefix, operators = countries[i % 2]
        digits = f"{prefix}{i:07d}" if country == "germany" else f"{prefix}{i:07d}"
        entries.append(pool.PoolEntry(digits, country, operators[i % 3], f"gw{i // 8}:{i % 8}",
                                      i + 2))
    pool.import_entries(db, start, entries)
    step = dt.timedelta(seconds=days * 86400 / rentals)
    now = start
    opened: list[tuple[int, str, bool]] = []
    for n in range(rentals):
        now += step
        rental = operations.open_operation(
            db, FixedClock(now), NumberRequest(rng.choice([40000, 25000, 90000]),
                                               country=countries[n % 2][0]), RULES)
        if rental is None:
            continue
        got_sms = rng.random() < 0.7
        if got_sms:
            accepted = sms.accept_sms(db, FixedClock(now + dt.timedelta(minutes=3)), sms.IncomingSms(
                source="api", to=rental.number, sender=rng.choice(["Google", "Telegram", "+7999"]),
                text=f"Your code is {rng.randint(100000, 999999)}"), RULES)
            row = {"id": accepted.sms_id, "operation_id": rental.activation_id,
                   "number_id": None, "attempts": 0}
            outcome = push.Outcome("delivered") if rng.random() < 0.98 else push.Outcome(
                "terminal", "NO_OPERATION")
            pushed_at = now + dt.timedelta(minutes=3)
            push.record(db, pushed_at, row, outcome, 10, sent_at=pushed_at, rules=RULES)
        opened.append((rental.activation_id, rental.number, got_sms))
        # Finish most rentals some hours later; leave the last ones open.
        while len(opened) > 40:
            activation_id, _, had_sms = opened.pop(0)
            status = (rng.choices([3, 5, 1], [90, 8, 2])[0] if had_sms
                      else rng.choices([4, 1], [95, 5])[0])
            operations.finish_operation(db, FixedClock(now), FinishRequest(
                activation_id, status, rng.choice([40000, 87000, 120000]) if status == 3 else 0),
                RULES)
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=500)
    parser.add_argument("--operations", type=int, default=5000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--keep", type=Path, help="copy the database here afterwards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "console.db"
        started = time.perf_counter()
        build(path, args.numbers, args.operations, args.days)
        print(f"built {args.operations} operations on {args.numbers} numbers over {args.days} "
              f"days in {time.perf_counter() - started:.1f}s")
        some_number = "+4915120000004"
        commands = [
            ["status"], ["status", "--json"], ["report"], ["report", "--by", "week"],
            ["report", "--by", "month", "--csv"], ["report", "--by", "number", "--json"],
            ["report", "--by", "country"], ["numbers", "list"], ["numbers", "show", some_number],
            ["ops", "list"], ["ops", "list", "--open"], ["ops", "show", "1"], ["sms", "list"],
            ["sms", "list", "--failed"], ["bans", "list"],
            ["backup", str(Path(tmp) / "copy.db")],
        ]
        print(f"{'command':<40}{'seconds':>9}")
        for command in commands:
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "rentbox", *command, "--db", str(path)],
                                    capture_output=True, text=True, timeout=120)
            elapsed = time.perf_counter() - started
            flag = "" if result.returncode == 0 else f"  exit {result.returncode}: {result.stderr}"
            print(f"{' '.join(command)[:39]:<40}{elapsed:>9.2f}{flag}")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import rentbox.cli"], check=True, timeout=60)
        print(f"{'(python start + import rentbox.cli)':<40}{time.perf_counter() - started:>9.2f}")
        if args.keep:
            shutil.copy(path, args.keep)
            print(f"kept the database as {args.keep}")


if __name__ == "__main__":
    main()
