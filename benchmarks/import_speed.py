"""`rentbox numbers import` against `sqlite-utils insert --csv` of the same file.

Generates a ROWS-row pool CSV of valid numbers (German and Russian mobiles, with
operators and ports), imports it with `rentbox numbers import` into a fresh database and
with `sqlite-utils insert DB t FILE --csv` into another fresh one, prints the rows per
second of each and their ratio, and checks that the tallies (tallies.verify) match the
numbers table after the import.

    python benchmarks/import_speed.py                 # 300,000 rows
    python benchmarks/import_speed.py --rows 50000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rentbox import tallies  # noqa: E402
from rentbox.db import open_database  # noqa: E402

# (prefix, digits after it, country, operators): numbers libphonenumber holds valid.
PLANS = (
    ("49151", 8, "germany", ("telekom",)),
    ("49160", 7, "germany", ("vodafone",)),
    ("49176", 8, "germany", ("o2",)),
    ("7912", 7, "russia", ("megafon", "mts")),
    ("7916", 7, "russia", ("mts",)),
    ("7903", 7, "russia", ("beeline",)),
)


def write_csv(path: Path, rows: int) -> None:
    """ROWS distinct valid numbers, spread over PLANS, in a notation people write."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("number,country,operator,port\n")
        for i in range(rows):
            prefix, width, country, operators = PLANS[i % len(PLANS)]
            serial = i // len(PLANS)
            operator = operators[serial % len(operators)]
            f.write(f"+{prefix}{serial:0{width}d},{country},{operator},"
                    f"gw{i // 32}:{i % 32}\n")


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        csv_file = Path(tmp) / "pool.csv"
        write_csv(csv_file, args.rows)
        env = {**os.environ, "RENTBOX_DB": str(Path(tmp) / "rentbox.db")}
        env.pop("RENTBOX_COUNTRY_NAMES", None)
        rentbox_s = timed([sys.executable, "-m", "rentbox", "numbers", "import",
                           str(csv_file)], env)
        plain_s = timed([str(bin_dir / "sqlite-utils"), "insert", str(Path(tmp) / "plain.db"),
                         "t", str(csv_file), "--csv"], env)
        db = open_database(Path(tmp) / "rentbox.db")
        count = db.row("SELECT count(*) AS n FROM numbers")["n"]
        differences = tallies.verify(db)
        db.close()
    print(f"{'':<28}{'seconds':>10}{'rows/s':>10}")
    print(f"{'rentbox numbers import':<28}{rentbox_s:>10.1f}{args.rows / rentbox_s:>10.0f}")
    print(f"{'sqlite-utils insert --csv':<28}{plain_s:>10.1f}{args.rows / plain_s:>10.0f}")
    print(f"ratio rentbox / sqlite-utils: {rentbox_s / plain_s:.2f} (<= 1 is the goal)")
    print(f"numbers in the pool: {count} of {args.rows}")
    print("tallies.verify: " + ("clean" if not differences else
                                "; ".join(str(d) for d in differences)))
    if count != args.rows or differences:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
