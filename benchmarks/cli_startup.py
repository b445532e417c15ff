"""`rentbox status` and `rentbox report --by month` on a 1,000,000-row database, against
Python importing typer, rich and sqlite-utils.

Issue 25 (start-up): a command that only reads should cost less than importing the CLI's
libraries, because it imports only what it uses (sqlite-utils only to migrate, Rich's
heavy parts only to draw them). The goal: each command at most 0.75x `deps`, Python's
`import typer, rich, sqlite_utils`.

The commands and `deps` run side by side in one run: --runs rounds, each running every
one of them once (in turn, so that noise from other processes falls on all alike), after
one warm-up round that writes the bytecode cache as an installed rentbox would have it.
Prints the median wall seconds of each, and each command's ratio to `deps`.

The database (--size numbers and as many closed rentals over the last year, written with
plain SQL by common.build_books) is built once and reused from --db on later runs.

Each runs as on a partner's machine, where the README installs rentbox with `pip install .`:
from a throwaway virtualenv holding such a regular install of this checkout, which finds
the libraries in this Python's site-packages. A development checkout's editable install
(`pip install -e`) adds about 20 ms to every start of Python, rentbox or not, through its
import finder; `--editable` measures that way instead (this Python, as it is).

    python benchmarks/cli_startup.py                  # 1,000,000 rows, 15 rounds
    python benchmarks/cli_startup.py --runs 31 --db /tmp/big.db
    python benchmarks/cli_startup.py --editable     # this checkout's own venv, as it is
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_books  # noqa: E402

GOAL = 0.75
REPO = Path(__file__).resolve().parent.parent
LIBRARIES = "import typer, rich, sqlite_utils"
# Python as on a partner's machine: writing and reading its bytecode cache.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def books(path: Path, size: int) -> Path:
    """A database of `size` numbers and `size` closed rentals at `path`: the one there if
    it has them, else built anew (into a side file first, so a half-built one is never
    reused)."""
    if path.exists():
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                numbers, = conn.execute("SELECT count(*) FROM numbers").fetchone()
                operations, = conn.execute("SELECT count(*) FROM operations").fetchone()
            conn.close()
            if numbers == operations == size:
                print(f"reusing {path} ({size:,} numbers and rentals)")
                return path
        except sqlite3.Error:
            pass
        print(f"{path} does not hold {size:,} numbers and rentals: building it anew")
    partial = path.with_name(path.name + ".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    build_books(partial, size, size)
    with sqlite3.connect(partial) as conn:  # one file: nothing left in a -wal beside it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    partial.replace(path)
    print(f"built {path} ({size:,} numbers and rentals) in {time.perf_counter() - started:.0f} s")
    return path


def installed_python(folder: Path) -> str:
    """A Python in a virtualenv under `folder` with rentbox installed as `pip install .`
    does (a regular package, built from this checkout) and this Python's libraries on
    its path (a .pth line, so that their own .pth files, the editable finder among them,
    are not run)."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip()
    libraries = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "libraries.pth").write_text("\n".join(libraries) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", site, str(REPO)], check=True, stdout=subprocess.DEVNULL)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000,
                        help="numbers, and as many closed rentals over the last year")
    parser.add_argument("--runs", type=int, default=15, help="rounds counted (median)")
    parser.add_argument("--db", type=Path, default=None,
                        help="the database to build or reuse (default: one in the "
                             "temporary folder named by --size)")
    parser.add_argument("--editable", action="store_true",
                        help="run this Python as it is (a development checkout's editable "
                             "install) rather than a regular install of this checkout")
    args = parser.parse_args()
    db = books(args.db or Path(tempfile.gettempdir()) / f"rentbox-cli-startup-{args.size}.db",
               args.size)
    with tempfile.TemporaryDirectory() as folder:
        python = sys.executable if args.editable else installed_python(Path(folder))
        measure(python, db, args)


def measure(python: str, db: Path, args: argparse.Namespace) -> None:
    rentbox = [python, "-m", "rentbox"]
    commands = {
        "deps": [python, "-c", LIBRARIES],
        "rentbox status": [*rentbox, "status", "--db", str(db)],
        "rentbox report --by month": [*rentbox, "report", "--by", "month", "--db", str(db)],
        "rentbox --version": [*rentbox, "--version"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_ in range(args.runs + 1):  # round 0 warms the bytecode cache: not counted
        # Each round starts with another command, so none always runs first.
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            started = time.perf_counter()
            subprocess.run(commands[name], check=True, env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if round_:
                times[name].append(time.perf_counter() - started)
    how = "this Python as it is" if python == sys.executable else "a regular install"
    print(f"Python {sys.version.split()[0]} ({how}), {os.cpu_count()} cores; median wall "
          f"seconds of {args.runs} rounds, each command once per round; goal: at most "
          f"{GOAL}x deps")
    floor = statistics.median(times["deps"])
    print(f"{'':<34}{'median s':>10}{'min s':>8}{'x deps':>8}")
    for name, values in times.items():
        ratio = statistics.median(values) / floor
        verdict = ("" if name in ("deps", "rentbox --version")
                   else "  ok" if ratio <= GOAL else "  over the goal")
        label = "deps (typer, rich, sqlite-utils)" if name == "deps" else name
        print(f"{label:<34}{statistics.median(values):>10.3f}{min(values):>8.3f}"
              f"{ratio:>8.2f}{verdict}")


if __name__ == "__main__":
    main()
