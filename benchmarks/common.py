"""What the benchmark scripts share: loopback ports, waiting for a server, latency figures."""

from __future__ import annotations

import http.client
import socket
import statistics
import time

HOST = "127.0.0.1"
KEY = "benchmark-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until_up(port: int, deadline_s: float = 20) -> None:
    """Poll GET /health until the server answers (bounded)."""
    until = time.monotonic() + deadline_s
    while time.monotonic() < until:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up")


def latencies(values: list[float]) -> tuple[int, float, float, float]:
    """(count, p50, p99, worst) of a list of latencies."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(ordered), statistics.median(ordered), p99, ordered[-1]
