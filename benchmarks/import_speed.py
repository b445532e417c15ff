"""`rentbox numbers import` against `sqlite-utils insert --csv` of the same file.

Generates a ROWS-row pool CSV of valid numbers (German and Russian mobiles, with
operators and ports), imports it with `rentbox numbers import` into a fresh database and
with `sqlite-utils insert DB t FILE --csv` into another fresh one, RUNS times each,
alternating which goes first (the machine is shared: one pair alone says little), prints
each pair's seconds and ratio and the median ratio, and checks after each import that
every row is in and the tallies (tallies.verify) match the numbers table.

    python benchmarks/import_speed.py                 # 300,000 rows, 3 runs of each
    python benchmarks/import_speed.py --rows 50000 --runs 1
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
    parser.add_argument("--runs", type=int, default=3,
                        help="runs of each, alternating which goes first (default 3)")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_file = Path(tmp) / "pool.csv"
        write_csv(csv_file, args.rows)
        for run in range(args.runs):
            rentbox_db, plain_db = Path(tmp) / f"rentbox{run}.db", Path(tmp) / f"plain{run}.db"
            env = {**os.environ, "RENTBOX_DB": str(rentbox_db)}
            env.pop("RENTBOX_COUNTRY_NAMES", None)
            commands = {
                "rentbox": [sys.executable, "-m", "rentbox", "numbers", "import", str(csv_file)],
                "plain": [str(bin_dir / "sqlite-utils"), "insert", str(plain_db), "t",
                          str(csv_file), "--csv"]}
            order = ["rentbox", "plain"] if run % 2 == 0 else ["plain", "rentbox"]
            seconds = {name: timed(commands[name], env) for name in order}
            pairs.append((seconds["rentbox"], seconds["plain"]))
            db = open_database(rentbox_db)
            count = db.row("SELECT count(*) AS n FROM numbers")["n"]
            differences = tallies.verify(db)
            db.close()
            if count != args.rows or differences:
                raise SystemExit(f"run {run + 1}: {count} of {args.rows} numbers; tallies.verify: "
                                 + "; ".join(str(d) for d in differences))
            for name in (rentbox_db, plain_db):
                for path in Path(tmp).glob(name.name + "*"):
                    path.unlink()
    print(f"{args.rows} rows, {os.cpu_count()} cores, {args.runs} runs side by side")
    print(f"{'run':<5}{'rentbox import s':>18}{'sqlite-utils s':>16}{'ratio':>8}")
    for run, (rentbox_s, plain_s) in enumerate(pairs, start=1):
        print(f"{run:<5}{rentbox_s:>18.1f}{plain_s:>16.1f}{rentbox_s / plain_s:>8.2f}")
    ratios = sorted(r / p for r, p in pairs)
    print(f"median ratio rentbox / sqlite-utils: {ratios[len(ratios) // 2]:.2f} (<= 1 is the goal)")
    print("numbers in the pool and tallies.verify after each import: all rows, clean")


if __name__ == "__main__":
    main()
