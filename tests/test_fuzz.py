"""schemathesis attacks a real `rentbox serve` from its own OpenAPI document (GET
/openapi.json): every check it has (`--checks all`: no 5xx, status codes, content types,
headers and bodies as documented, invalid data rejected, valid data accepted, auth not
ignored), positive and negative data.

Deterministic, so that CI fails on every machine or on none: a fixed number of examples
per operation and a fixed seed, no time limit (with `--max-time`, schemathesis repeats
fuzzing until the time is spent, so a slower machine tries other cases), and no example
database (`--generation-deterministic`). Every run sends the same requests (but for
SMSGate's clock-based timestamp and signature), in the same order, and reports the same
number of generated test cases, as long as schemathesis and Hypothesis stay the same
versions.

Credentials come from benchmarks/fuzz_long.py, which is schemathesis' hooks module here:
it signs in on every route as its caller does (API key, gateway token, SMSGate's HMAC
signature, console password, metrics token, SMSHub's key, and its clone's key and name
in /buyer/{name}); schemathesis also calls each operation without them. The long,
time-boxed run is `benchmarks/fuzz_long.py` (see its docstring).

Exclusions: none.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from rentbox import buyers
from conftest import START, add_numbers

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import fuzz_long  # noqa: E402  (the hooks module, and its command line)

# 4,707 test cases over 18 operations (schemathesis 4.32.5, Hypothesis 6.170.17): a minute
# and a half on 2 cores. SMSHub's and its clone's URLs are 709 of them, about 10% more CPU
# time than the other 16 operations' 3,998.
EXAMPLES = 200
SEED = 1
SERVICES = ("vk", "wa")


def test_the_ci_run_is_bounded_by_examples_not_by_time():
    command = fuzz_long.schemathesis_command("http://127.0.0.1:1", examples=EXAMPLES,
                                             seed=SEED)
    assert "--max-time" not in command
    assert "--generation-deterministic" in command
    assert command[command.index("--max-examples") + 1] == str(EXAMPLES)
    assert command[command.index("--seed") + 1] == str(SEED)
    assert command[command.index("--workers") + 1] == "1"


def test_schemathesis_finds_nothing(start_server, settings, db, tmp_path):
    credentials = fuzz_long.CREDENTIALS
    add_numbers(db, START, ("+4917612345678", "germany", "vodafone", "box1:1"),
                ("+4917612345679", "germany", "o2", "box1:2"),
                ("+79161234567", "russia", "mts", "box2:1"),
                ("+79031234567", "russia", "beeline", "box2:2"),
                ("+77011234567", "kazakhstan", None, "box3:1"))
    # Activations offered for two services, so that /getServices counts, and /getNumber
    # and POST / issue numbers for them, not only NO_NUMBERS. SMSHub and a clone (the
    # buyers file of fuzz_long, read as `serve` reads it) buy from the same pool.
    (tmp_path / "buyers.toml").write_text(fuzz_long.BUYERS_FILE)
    others, aliases = buyers.load(tmp_path / "buyers.toml",
                                  smshub_key=credentials["RENTBOX_SMSHUB_KEY"])
    assert [b.name for b in others] == ["smshub", fuzz_long.CLONE]
    server = start_server(api_key=credentials["RENTBOX_API_KEY"],
                          gateway_token=credentials["RENTBOX_GATEWAY_TOKEN"],
                          smsgate_key=credentials["RENTBOX_SMSGATE_KEY"],
                          console_password=credentials["RENTBOX_CONSOLE_PASSWORD"],
                          metrics_token=credentials["RENTBOX_METRICS_TOKEN"],
                          rules=dataclasses.replace(settings.rules, services=SERVICES,
                                                    buyers=others, aliases=aliases))
    command = fuzz_long.schemathesis_command(server.url, examples=EXAMPLES, seed=SEED)
    run = subprocess.run(command, env=fuzz_long.hooks_environment(credentials),
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "18 selected / 18 total" in run.stdout, run.stdout[-5000:]
    assert re.search(r"^\s*Tested: 18$", run.stdout, re.MULTILINE), run.stdout[-5000:]
    # The activation paths were driven to success, not only to NO_NUMBERS and errors: an
    # activation was issued (the document's /getNumber example names an offered service),
    # and one was finished.
    activations = db.rows("SELECT finish_status FROM operations WHERE service != 'rent'")
    assert activations, "no activation was issued"
    assert any(row["finish_status"] is not None for row in activations), activations
    # So were the SMSHub protocol's: an activation of a buyer other than Onlinesim was
    # issued and finished.
    hub = db.rows("SELECT buyer, finish_status FROM operations WHERE buyer != 'onlinesim'")
    assert any(row["finish_status"] is not None for row in hub), hub
    generated = re.search(r"(\d+) generated", run.stdout)
    print(f"schemathesis: {generated.group(1) if generated else '?'} generated test cases")
