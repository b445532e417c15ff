"""Measure GET_NUMBER latency while scheduled backups of a large database run, beside the
same load without them.

Builds a database of 20,000 numbers and 1,000,000 closed rentals with plain SQL
(common.build_books: the tallies' triggers fire as in production), then serves it with
`rentbox serve` in its own process, in alternating rounds:

  without  no scheduled backups;
  paced    RENTBOX_BACKUP_DIR set and RENTBOX_BACKUP_EVERY_S=1: as each backup of the
           large file takes longer than a second, one follows another for the whole
           round, so every request of the round meets a backup under way; copied at
           RENTBOX_BACKUP_MIB_S (its default unless --mib-s is given);
  unpaced  the same, copied as fast as the disk takes it (RENTBOX_BACKUP_MIB_S=100000),
           which is what pacing avoids.

In each round CALLERS client processes drive GET_NUMBER/FINISH pairs (get_number.drive).
Prints p50, p99 and the worst GET_NUMBER latency per round, and the backups written
during the "with" rounds (count, size, seconds each, share of the round spent backing up).

    python benchmarks/backup_latency.py                 # 1,000,000 rentals, 8 callers
    python benchmarks/backup_latency.py --operations 200000 --pairs 200

Loopback only; every request has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HOST, KEY, build_books, free_port, latencies, wait_until_up
from get_number import drive

# The backup thread's line for each backup written (backups.BackupScheduler.run_once).
_BACKED_UP = re.compile(r"backed up the database to \S+ \((\d+) bytes, checked, ([\d.]+) s\)")


def serve_round(db_path: Path, backup_dir: Path | None, mib_s: float | None, callers: int,
                pairs: int, log_path: Path) -> tuple[dict, float, list[tuple[int, float]]]:
    """One round on a fresh `rentbox serve`: (latencies, wall seconds, backups written)."""
    port = free_port()
    env = {**os.environ, "RENTBOX_API_KEY": KEY, "RENTBOX_DB": str(db_path)}
    for name in ("RENTBOX_BACKUP_DIR", "RENTBOX_BACKUP_MIB_S"):
        env.pop(name, None)
    if backup_dir is not None:
        env.update(RENTBOX_BACKUP_DIR=str(backup_dir), RENTBOX_BACKUP_EVERY_S="1",
                   RENTBOX_BACKUP_KEEP="2")
    if mib_s is not None:
        env["RENTBOX_BACKUP_MIB_S"] = str(mib_s)
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "rentbox", "serve", "--host", HOST, "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_until_up(port, deadline_s=60)
            drive(port, callers, 20, False)  # warm up
            results, wall = drive(port, callers, pairs, False)
        finally:
            server.terminate()
            server.wait(timeout=120)  # a backup under way is finished first
    written = [(int(size), float(seconds))
               for size, seconds in _BACKED_UP.findall(log_path.read_text())]
    return results, wall, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=20_000, help="numbers in the pool")
    parser.add_argument("--operations", type=int, default=1_000_000,
                        help="closed rentals in the books")
    parser.add_argument("--callers", type=int, default=8, help="concurrent client processes")
    parser.add_argument("--pairs", type=int, default=600,
                        help="GET_NUMBER/FINISH pairs per caller and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each kind, alternating")
    parser.add_argument("--mib-s", type=float, default=None,
                        help="RENTBOX_BACKUP_MIB_S for the paced rounds")
    args = parser.parse_args()
    kinds = (("without", False, None), ("paced", True, args.mib_s),
             ("unpaced", True, 100_000.0))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db_path = folder / "large.db"
        started = time.perf_counter()
        build_books(db_path, args.numbers, args.operations)
        print(f"{args.numbers:,} numbers and {args.operations:,} rentals built in "
              f"{time.perf_counter() - started:.0f} s: {db_path.stat().st_size / 2**20:.0f} MiB")
        backup_dir = folder / "backups"
        backup_dir.mkdir()
        rows = []
        for number in range(1, args.rounds + 1):
            for kind, backing_up, mib_s in kinds:
                results, wall, written = serve_round(
                    db_path, backup_dir if backing_up else None, mib_s, args.callers,
                    args.pairs, folder / f"{kind}.log")
                rows.append((number, kind, results, wall, written))

    from rentbox.config import default

    print(f"{args.callers} callers x {args.pairs} GET_NUMBER/FINISH pairs per round, backups "
          f"paced at {args.mib_s or default('backup_mib_s'):g} MiB/s, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'':<22}{'requests':>9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  backups")
    for number, kind, results, wall, written in rows:
        count, p50, p99, worst = latencies(results["get"])
        label = f"round {number}, {kind}"
        line = f"{label:<22}{count:>9}{count / wall:>8.0f}{p50:>9.2f}{p99:>9.2f}{worst:>9.2f}"
        if written:
            line += (f"  {len(written)} x {written[0][0] / 2**20:.0f} MiB in "
                     f"{min(s for _, s in written):.1f}-{max(s for _, s in written):.1f} s, "
                     f"back to back through the {wall:.0f} s measured")
        print(line)
    for kind, _, _ in kinds:
        values = [v for _, k, r, _, _ in rows if k == kind for v in r["get"]]
        count, p50, p99, worst = latencies(values)
        print(f"all rounds {kind:<11}{count:>9}{'':>8}{p50:>9.2f}{p99:>9.2f}{worst:>9.2f}")


if __name__ == "__main__":
    main()
