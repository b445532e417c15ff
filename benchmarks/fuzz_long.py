"""Fuzz a real `rentbox serve` from its own OpenAPI document with schemathesis, long.

    .venv/bin/python benchmarks/fuzz_long.py [--examples 400] [--seed 1] [--max-time 1800]

Starts a server on a free loopback port with a fresh database in a temporary folder (a
seeded pool, every secret set so every route is reachable), runs `schemathesis run` with
every check (`--checks all`), positive and negative data, and prints the number of
generated requests, the duration and the failures. Exit code: schemathesis'.

This run is time-boxed: schemathesis repeats fuzzing and stateful testing until
`--max-time` is spent, so how far it gets depends on the machine. CI's run
(tests/test_fuzz.py, the same `schemathesis_command` without `max_time`) is
deterministic instead: a fixed number of examples per operation, a fixed seed, no
example database.

This module is also schemathesis' hooks module (SCHEMATHESIS_HOOKS=fuzz_long, as
tests/test_fuzz.py uses it): it signs in on each route the way its caller does, from
the same environment variables the server reads. schemathesis also tries every
operation without them (its `ignored_auth` check).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import schemathesis
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
CREDENTIALS = {"RENTBOX_API_KEY": "fuzz-key", "RENTBOX_GATEWAY_TOKEN": "fuzz-gateway",
               "RENTBOX_SMSGATE_KEY": "fuzz-smsgate", "RENTBOX_CONSOLE_PASSWORD": "fuzz-console",
               "RENTBOX_METRICS_TOKEN": "fuzz-metrics", "RENTBOX_SMSHUB_KEY": "fuzz-smshub"}
# Beside SMSHub (RENTBOX_SMSHUB_KEY), one clone from a buyers file (RENTBOX_BUYERS), so that
# /smshub and /buyer/{name} are served; its key is in the file, not the environment.
CLONE, CLONE_KEY = "grizzly", "fuzz-grizzly"
BUYERS_FILE = f"""[buyers.{CLONE}]
protocol = "smshub"
key = "{CLONE_KEY}"
services = ["vk", "whatsapp"]
"""
POOL = """number,country,operator,port
+4917612345678,germany,vodafone,box1:1
+4917612345679,germany,o2,box1:2
+4915112345670,germany,telekom,box1:3
+79161234567,russia,mts,box2:1
+79261234567,russia,megafon,box2:2
+447911123456,england,,box3:1
"""


# `format: phone-number` in the document: a number libphonenumber takes as valid, as
# gateways write it (a JSON Schema pattern cannot say which country codes exist).
PHONE_NUMBERS = ["+4917612345678", "4917612345679", "+49 151 1234 5670", "+7 916 123-45-67",
                 "79261234567", "+447911123456", "+33612345678", "+12015550123"]
schemathesis.openapi.format("phone-number", st.sampled_from(PHONE_NUMBERS))


def secret(name: str) -> str:
    return os.environ.get(name, CREDENTIALS[name])


class Bearer:
    env = ""

    def get(self, case, ctx):
        return secret(self.env)

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.auth(refresh_interval=None).apply_to(path_regex=r"^/((getServices|getNumber|finishActivation)(Rent)?)?$", method="POST")
class OnlinesimKey(Bearer):
    env = "RENTBOX_API_KEY"


@schemathesis.auth(refresh_interval=None).apply_to(path_regex=r"^/(sms|sms/ejoin|sms/dinstar|presence)$")
class GatewayToken(Bearer):
    env = "RENTBOX_GATEWAY_TOKEN"


@schemathesis.auth(refresh_interval=None).apply_to(path="/metrics")
class MetricsToken(Bearer):
    env = "RENTBOX_METRICS_TOKEN"


@schemathesis.auth(refresh_interval=None).apply_to(path="/smshub", method="POST")
class SmshubKey(Bearer):
    env = "RENTBOX_SMSHUB_KEY"


@schemathesis.auth(refresh_interval=None).apply_to(path="/buyer/{name}", method="POST")
class CloneKey(Bearer):
    """The clone's key, at the clone's path (any other name is only a 404)."""

    def get(self, case, ctx):
        return CLONE_KEY

    def set(self, case, data, ctx):
        super().set(case, data, ctx)
        case.path_parameters = {**(case.path_parameters or {}), "name": CLONE}


@schemathesis.auth(refresh_interval=None).apply_to(path="/", method="GET")
class ConsolePassword:
    def get(self, case, ctx):
        return base64.b64encode(f"fuzz:{secret('RENTBOX_CONSOLE_PASSWORD')}".encode()).decode()

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Basic {data}"


@schemathesis.auth(refresh_interval=None).apply_to(path="/sms/smsgate")
class SmsgateSignature:
    """SMSGate's HMAC of the raw body and the timestamp. The body is signed as the
    transport will send it (requests: json.dumps, ASCII, no NaN)."""

    def get(self, case, ctx):
        return secret("RENTBOX_SMSGATE_KEY")

    def set(self, case, data, ctx):
        try:
            raw = json.dumps(case.body, allow_nan=False).encode()
        except (TypeError, ValueError):
            return  # not JSON (bytes, NaN): sent unsigned, answered 400 or 401
        stamp = str(int(time.time()))
        case.headers = case.headers or {}
        case.headers["X-Timestamp"] = stamp
        case.headers["X-Signature"] = hmac.new(data.encode(), raw + stamp.encode(),
                                               hashlib.sha256).hexdigest()


def schemathesis_command(url: str, *, examples: int, seed: int, max_time: int | None = None,
                         report: Path | None = None) -> list[str]:
    """`schemathesis run` against `url` with every check, positive and negative data, one
    worker.

    With `max_time` (this script's long run), schemathesis repeats fuzzing and stateful
    testing until the time is spent, so what it tries depends on the machine's speed.
    Without it (CI, tests/test_fuzz.py), every phase runs once: `examples` cases per
    operation drawn from `seed`, derandomized, with no example database read or written
    (`--generation-deterministic`), so every machine sends the same cases.
    """
    command = [str(Path(sys.executable).with_name("schemathesis")), "run",
               f"{url}/openapi.json", "--checks", "all", "--mode", "all",
               "--max-examples", str(examples), "--seed", str(seed),
               "--workers", "1", "--request-timeout", "15",
               "--suppress-health-check", "too_slow,filter_too_much"]
    if max_time is None:
        # An explicit --seed still decides the cases (schemathesis' CLI then prints "Seed:
        # not used in the deterministic mode", but its engine seeds Hypothesis with it).
        command += ["--generation-deterministic"]
    else:
        command += ["--max-time", str(max_time)]
    if report is not None:
        command += ["--report", "ndjson", "--report-ndjson-path", str(report)]
    return command


def hooks_environment(credentials: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **credentials, "SCHEMATHESIS_HOOKS": "fuzz_long",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
           "NO_COLOR": "1"}
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=400, help="test cases per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-time", type=int, default=1800, help="seconds for the whole run")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import free_port, wait_until_up

    with tempfile.TemporaryDirectory() as folder:
        # Activations on (the openapi examples ask for vk): their success paths are fuzzed too.
        env = {**os.environ, **CREDENTIALS, "RENTBOX_DB": f"{folder}/fuzz.db",
               "RENTBOX_SERVICES": "vk,wa", "RENTBOX_BUYERS": f"{folder}/buyers.toml"}
        rentbox = str(Path(sys.executable).with_name("rentbox"))
        Path(folder, "pool.csv").write_text(POOL)
        Path(folder, "buyers.toml").write_text(BUYERS_FILE)
        subprocess.run([rentbox, "numbers", "import", f"{folder}/pool.csv"], env=env,
                       check=True, capture_output=True)
        port = free_port()
        log = open(Path(folder, "serve.log"), "wb")
        server = subprocess.Popen([rentbox, "serve", "--host", "127.0.0.1", "--port", str(port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_up(port)
            report = Path(folder, "events.ndjson")
            started = time.monotonic()
            run = subprocess.run(
                schemathesis_command(f"http://127.0.0.1:{port}", examples=args.examples,
                                     seed=args.seed, max_time=args.max_time, report=report),
                env=hooks_environment(CREDENTIALS), capture_output=True, text=True)
            elapsed = time.monotonic() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
        print(run.stdout[-6000:])
        requests = sum(line.count('"ScenarioFinished"') for line in
                       report.read_text().splitlines()) if report.exists() else 0
        generated = re.search(r"(\d+) generated", run.stdout)
        # A traceback's first line, not the word: the fuzzer sends "Traceback" as data too,
        # and the presence warning echoes it.
        errors = sum(line.startswith("Traceback (most recent call last)") for line in
                     Path(folder, "serve.log").read_text(errors="replace").splitlines())
        print(f"fuzz_long: {generated.group(1) if generated else '?'} generated test cases "
              f"({requests} scenarios) in {elapsed:.0f} s, seed {args.seed}, "
              f"schemathesis exit code {run.returncode}, {errors} tracebacks in the server log")
        return run.returncode


if __name__ == "__main__":
    sys.exit(main())
