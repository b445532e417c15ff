"""`rentbox numbers list` on a large pool: time to its first line, to its last, and to exit
when the reader stops early (`| head`).

Issue 24 item 13: on 300,000 numbers the command built the whole table before printing
anything (7.7 s), and `| head` ended with a BrokenPipeError traceback. It now prints rows
as SQLite reads them. For each output format this runs the command as a real process on
a pool of --numbers numbers (written with plain SQL, see common.build_books) and reports:

- first line: seconds from start until the first line reaches the pipe;
- all: seconds until the last line did, reading everything;
- head: seconds until the process exited after the reader closed the pipe at line 10,
  with its exit code and whether it wrote anything to stderr (it must not).

    python benchmarks/numbers_list.py [--numbers 300000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import build_books  # noqa: E402


def run(db: Path, options: list[str]) -> dict:
    command = [sys.executable, "-m", "rentbox", "numbers", "list", "--db", str(db), *options]
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as full:
        full.stdout.readline()
        first_s = time.perf_counter() - started
        lines = 1 + sum(1 for _ in full.stdout)
        all_s = time.perf_counter() - started
        full.wait()
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as head:
        for _ in range(10):
            head.stdout.readline()
        head.stdout.close()  # as `head` does after its tenth line
        code = head.wait(timeout=120)
        head_s = time.perf_counter() - started
        stderr = head.stderr.read().decode()
    return {"first_s": first_s, "all_s": all_s, "lines": lines, "head_s": head_s,
            "head_exit": code, "head_stderr": stderr.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=300_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "pool.db"
        began = time.perf_counter()
        build_books(db, args.numbers)
        print(f"pool of {args.numbers:,} numbers built in {time.perf_counter() - began:.1f} s")
        print(f"{'format':<8} {'first line':>11} {'all':>8} {'lines':>9} {'| head':>8}  exit")
        for name, options in (("table", []), ("csv", ["--csv"]), ("json", ["--json"])):
            figures = run(db, options)
            print(f"{name:<8} {figures['first_s']:>9.3f} s {figures['all_s']:>6.2f} s "
                  f"{figures['lines']:>9,} {figures['head_s']:>6.3f} s  {figures['head_exit']}"
                  + (f"  stderr: {figures['head_stderr'][:200]!r}"
                     if figures["head_stderr"] else ""))


if __name__ == "__main__":
    main()
