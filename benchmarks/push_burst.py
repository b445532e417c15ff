"""How long a burst of SMS takes to reach Onlinesim: one push at a time, and several.

Starts a stand-in for Onlinesim's PUSH_SMS endpoint on loopback (HTTP/1.1, kept-alive
connections, as a real server) that answers every push after DELAY, and `rentbox serve`
pushing to it, once with `--push-parallel 1` (one push at a time, as before issue 11)
and once with the default. Rents RENTALS numbers, posts the SMS (spread evenly over the
rentals) to POST /sms as fast as one client can, and waits until Onlinesim took them all.
Each figure is printed for a fast Onlinesim and one answering in 200 ms, in the same run:
the time from the first SMS posted to the last one taken, the median and p99 wait of an
SMS (accepted by rentbox -> answered by Onlinesim), the connections opened, and whether
the SMS of each rental reached Onlinesim in the order rentbox accepted them.

    python benchmarks/push_burst.py                        # 300 SMS, 100 rentals
    python benchmarks/push_burst.py --sms 600 --delays-ms 0 50 200

Loopback only; every socket has a timeout; the run stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from common import HOST, KEY, build_books, latencies, post, serving

TOKEN = "benchmark-gateway-token"


class StandIn:
    """Onlinesim's PUSH_SMS endpoint answering SUCCESS after `delay_s`; notes when each
    smsId was answered, in which order each phone's SMS came, and the connections."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self.answered_at: dict[int, float] = {}
        self.order: dict[str, list[int]] = {}
        self.connections = 0
        self.done = threading.Condition()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # As web servers do (nginx's tcp_nodelay): the answer's headers and body
                # are two writes, and Nagle would hold the second for the client's ACK.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with stand_in.done:
                    stand_in.connections += 1

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stand_in.done:
                    stand_in.order.setdefault(body["phone"], []).append(body["smsId"])
                time.sleep(stand_in.delay_s)  # the stand-in is slow, not rentbox
                answer = b'{"status":"SUCCESS"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                with stand_in.done:
                    stand_in.answered_at.setdefault(body["smsId"], time.monotonic())
                    stand_in.done.notify_all()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self.httpd.server_address[1]}/pushSmsRent"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float) -> bool:
        with self.done:
            return self.done.wait_for(lambda: len(self.answered_at) >= count, timeout_s)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def burst(delay_s: float, parallel: int | None, sms: int, rentals: int) -> dict:
    """One run on a fresh database: the figures of one line of the table."""
    stand_in = StandIn(delay_s)
    options = ["--push-url", stand_in.url, "--log-level", "warning"]
    if parallel is not None:
        options += ["--push-parallel", str(parallel)]
    try:
        with tempfile.TemporaryDirectory() as folder:
            db_path = Path(folder) / "burst.db"
            build_books(db_path, rentals)
            with serving(db_path, *options, env={"RENTBOX_GATEWAY_TOKEN": TOKEN}) as port:
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                numbers = []
                for _ in range(rentals):
                    _, answer = post(conn, "/getNumberRent", {
                        "action": "GET_NUMBER", "key": KEY, "service": "rent", "sum": 400})
                    numbers.append(str(answer["number"]))
                accepted_at, expected = {}, {}
                started = time.monotonic()
                for i in range(sms):
                    number = numbers[i % rentals]
                    conn.request("POST", "/sms", body=json.dumps(
                        {"to": number, "from": "Bench", "text": f"code {i}"}).encode(),
                        headers={"Content-Type": "application/json",
                                 "Authorization": f"Bearer {TOKEN}"})
                    answer = json.loads(conn.getresponse().read())
                    accepted_at[answer["smsId"]] = time.monotonic()
                    expected.setdefault(number, []).append(answer["smsId"])
                conn.close()
                if not stand_in.wait_for(sms, timeout_s=60 + sms * (delay_s + 0.05)):
                    raise SystemExit(f"only {len(stand_in.answered_at)} of {sms} SMS "
                                     "reached Onlinesim")
        waits = [stand_in.answered_at[i] - accepted_at[i] for i in accepted_at]
        _, p50, p99, _ = latencies(waits)
        return {"total_s": max(stand_in.answered_at.values()) - started, "p50_s": p50,
                "p99_s": p99, "connections": stand_in.connections,
                "in_order": stand_in.order == expected}
    finally:
        stand_in.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", type=int, default=300)
    parser.add_argument("--rentals", type=int, default=100)
    parser.add_argument("--delays-ms", type=float, nargs="+", default=[0, 200])
    args = parser.parse_args()
    print(f"{args.sms} SMS over {args.rentals} rentals, pushed by `rentbox serve`")
    print(f"{'Onlinesim answers in':>22} {'in flight':>10} {'all taken':>10} "
          f"{'wait p50':>9} {'wait p99':>9} {'conns':>6} {'order kept':>10}")
    for delay_ms in args.delays_ms:
        for parallel, label in ((1, "1"), (None, "default")):
            figures = burst(delay_ms / 1000, parallel, args.sms, args.rentals)
            print(f"{delay_ms:>19g} ms {label:>10} {figures['total_s']:>9.1f}s "
                  f"{figures['p50_s']:>8.2f}s {figures['p99_s']:>8.2f}s "
                  f"{figures['connections']:>6} {'yes' if figures['in_order'] else 'NO':>10}",
                  flush=True)


if __name__ == "__main__":
    main()
