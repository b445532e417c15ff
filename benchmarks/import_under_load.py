"""GET_NUMBER latency while a large pool CSV is imported beside the running server.

Starts `rentbox serve` on a loopback port with a small pool, then runs
`rentbox numbers import` of a ROWS-row CSV in another process while CALLERS client
threads keep calling GET_NUMBER/FINISH. Prints the latency of those calls before and
during the import, and how long the import took.

    python benchmarks/import_under_load.py              # 200,000 rows
    python benchmarks/import_under_load.py --rows 1000000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import HOST, KEY, latencies, serving

def call(conn: http.client.HTTPConnection, path: str, payload: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    conn.request("POST", path, body=json.dumps(payload),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    return time.perf_counter() - started, body


def drive(port: int, stop: threading.Event, samples: list[tuple[float, float]]) -> None:
    """GET_NUMBER then FINISH, again and again, recording (time, GET_NUMBER latency)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    deadline = time.monotonic() + 3600
    while not stop.is_set() and time.monotonic() < deadline:
        elapsed, answer = call(conn, "/getNumberRent", {
            "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 1, "country": "russia"})
        samples.append((time.monotonic(), elapsed * 1000))
        if answer.get("status") == "SUCCESS":
            call(conn, "/finishActivationRent", {
                "action": "FINISH_ACTIVATION", "key": KEY, "service": "rent",
                "activationId": answer["activationId"], "status": 4, "sum": 0})
    conn.close()


def summary(label: str, values: list[float]) -> str:
    if not values:
        return f"{label:<22} no samples"
    count, p50, p99, worst = latencies(values)
    return f"{label:<22}{count:>8}{p50:>9.2f}{p99:>9.2f}{worst:>9.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "load.db"
        small = Path(tmp) / "small.csv"
        small.write_text("number,country,operator\n" + "".join(
            f"+7912{i:07d},russia,mts\n" for i in range(50)))
        big = Path(tmp) / "big.csv"
        with open(big, "w") as f:
            f.write("number,country,operator,port\n")
            for i in range(args.rows):
                f.write(f"+49 1512 {i:07d},germany,telekom,gw{i // 8}:{i % 8}\n")
        env = {**os.environ, "RENTBOX_API_KEY": KEY, "RENTBOX_DB": str(db)}
        rentbox = [sys.executable, "-m", "rentbox"]
        subprocess.run(rentbox + ["numbers", "import", str(small)], env=env, check=True,
                       capture_output=True, timeout=120)
        with serving(db) as port:
            stop, samples = threading.Event(), []
            threads = [threading.Thread(target=drive, args=(port, stop, samples))
                       for _ in range(args.callers)]
            for t in threads:
                t.start()
            time.sleep(3)
            import_started = time.monotonic()
            result = subprocess.run(rentbox + ["numbers", "import", str(big)], env=env,
                                    capture_output=True, text=True, timeout=3600)
            import_ended = time.monotonic()
            # The largest child waited for so far is the import (the server is still up).
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            time.sleep(1)
            stop.set()
            for t in threads:
                t.join(timeout=30)
    print(result.stdout.strip() or result.stderr.strip())
    print(f"import of {args.rows} rows took {import_ended - import_started:.1f}s "
          f"(peak memory {peak_mb:.0f} MB), {args.callers} callers doing GET_NUMBER/FINISH "
          "meanwhile")
    print(f"{'GET_NUMBER latency ms':<22}{'calls':>8}{'p50':>9}{'p99':>9}{'max':>9}")
    print(summary("before the import", [ms for t, ms in samples if t < import_started]))
    print(summary("during the import", [ms for t, ms in samples
                                        if import_started <= t <= import_ended]))


if __name__ == "__main__":
    main()
