"""`rentbox report --by month` and `rentbox status` on a small and a large database.

Both read tallies (rentbox/tallies.py) and partial indexes, so their wall time, Python's
start included, should be the same with 1,000 and with 1,000,000 numbers and closed
rentals. Prints the median of --runs runs of each command, beside `rentbox --version`
(the cost of starting Python and importing the CLI, which no query can go below) and
`deps`: Python importing only the CLI's chosen libraries (typer, rich, sqlite-utils),
the floor of any command that reads the database.

Python runs as on a partner's machine, writing and reusing its bytecode cache
(PYTHONDONTWRITEBYTECODE is removed from the environment; one warm-up run first).

    python benchmarks/reports_flat.py                     # 1,000 and 1,000,000
    python benchmarks/reports_flat.py --sizes 1000 100000 --runs 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import build_books

COMMANDS = {"--version": ["--version"], "report --by month": ["report", "--by", "month"],
            "status": ["status"]}
DEPS = ["-c", "import typer, rich.console, sqlite_utils"]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(argv: list[str], runs: int, module: bool = True) -> float:
    command = [sys.executable, *(["-m", "rentbox"] if module else []), *argv]
    times = []
    for run in range(runs + 1):  # the first run warms the bytecode cache and is not counted
        started = time.perf_counter()
        subprocess.run(command, check=True, env=ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        if run:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000],
                        help="numbers, and as many closed rentals over the last year")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; median wall seconds "
          f"of {args.runs} runs")
    floor = wall(DEPS, args.runs, module=False)
    print(f"deps (typer, rich and sqlite-utils imported, nothing else): {floor:.3f}")
    print(f"{'numbers/rentals':>16}" + "".join(f"{name:>20}" for name in COMMANDS))
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            db_path = Path(tmp) / "bench.db"
            build_books(db_path, size, size)
            figures = [wall([*argv, *([] if argv == ["--version"] else ["--db", str(db_path)])],
                            args.runs) for argv in COMMANDS.values()]
        print(f"{size:>16,}" + "".join(f"{f:>20.3f}" for f in figures))


if __name__ == "__main__":
    main()
