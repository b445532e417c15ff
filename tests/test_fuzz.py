"""schemathesis attacks a real `rentbox serve` from its own OpenAPI document (GET
/openapi.json): every check it has (`--checks all`: no 5xx, status codes, content types,
headers and bodies as documented, invalid data rejected, valid data accepted, auth not
ignored), positive and negative data, a fixed seed, bounded in examples and time.

Credentials come from benchmarks/fuzz_long.py, which is schemathesis' hooks module here:
it signs in on every route as its caller does (API key, gateway token, SMSGate's HMAC
signature, console password, metrics token); schemathesis also calls each operation
without them. The long run is `benchmarks/fuzz_long.py` (see its docstring).

Exclusions: none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import START, add_numbers

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import fuzz_long  # noqa: E402  (the hooks module, and its command line)


def test_schemathesis_finds_nothing(start_server, db, tmp_path):
    credentials = fuzz_long.CREDENTIALS
    add_numbers(db, START, ("+4917612345678", "germany", "vodafone", "box1:1"),
                ("+4917612345679", "germany", "o2", "box1:2"),
                ("+79161234567", "russia", "mts", "box2:1"))
    server = start_server(api_key=credentials["RENTBOX_API_KEY"],
                          gateway_token=credentials["RENTBOX_GATEWAY_TOKEN"],
                          smsgate_key=credentials["RENTBOX_SMSGATE_KEY"],
                          console_password=credentials["RENTBOX_CONSOLE_PASSWORD"],
                          metrics_token=credentials["RENTBOX_METRICS_TOKEN"])
    command = fuzz_long.schemathesis_command(server.url, examples=10, seed=1, max_time=90)
    run = subprocess.run(command, env=fuzz_long.hooks_environment(credentials),
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "12 selected / 12 total" in run.stdout, run.stdout[-5000:]
