"""Real TLS reverse proxies for tests: a private CA made with the openssl command, and
Caddy or nginx started unprivileged on ephemeral loopback ports, each in a folder of its own.

Without the program the test is skipped, saying so, unless RENTBOX_REQUIRE_PROXY=1 (as in
.ci/run): then it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_until


def find(program: str, *places: str) -> str | None:
    """The program on PATH, or in one of `places` (/usr/sbin is not on every user's PATH)."""
    return shutil.which(program) or next((p for p in places if Path(p).exists()), None)


CADDY = find("caddy", "/usr/bin/caddy")
NGINX = find("nginx", "/usr/sbin/nginx")
OPENSSL = find("openssl", "/usr/bin/openssl")


def needs(tool: str | None, name: str) -> str:
    """`tool`'s path; a skip when it is missing (a failure with RENTBOX_REQUIRE_PROXY=1)."""
    if tool is None:
        if os.environ.get("RENTBOX_REQUIRE_PROXY") == "1":
            pytest.fail(f"{name} is required (RENTBOX_REQUIRE_PROXY=1) but not installed")
        pytest.skip(f"{name} is not installed")
    return tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a private CA and its certificates ---------------------------------------------------

CA_CONFIG = """[ca]
default_ca = test
[test]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
copy_extensions = copy
unique_subject = no
[anything]
commonName = supplied
"""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([needs(OPENSSL, "openssl"), *args], cwd=cwd, check=True,
                   capture_output=True)


def make_ca(directory: Path) -> Path:
    """A CA in `directory` (ca.pem, ca.key and the files `openssl ca` keeps)."""
    (directory / "ca.cnf").write_text(CA_CONFIG)
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1000\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "30", "-subj", "/CN=rentbox test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return directory / "ca.pem"


def leaf(directory: Path, name: str, hosts: str, *, start: str | None = None,
         end: str | None = None) -> tuple[Path, Path]:
    """(certificate, key) for `hosts` (a subjectAltName) signed by the CA of `directory`;
    `start`/`end` (YYYYMMDDHHMMSSZ) make one valid in the past."""
    key, csr, cert = f"{name}.key", f"{name}.csr", f"{name}.pem"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", f"/CN={name}", "-addext", f"subjectAltName={hosts}", cwd=directory)
    dates = ["-startdate", start, "-enddate", end] if start else ["-days", "30"]
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key",
            "-in", csr, "-out", cert, "-notext", *dates, cwd=directory)
    return directory / cert, directory / key


# ---- the proxies -------------------------------------------------------------------------


@dataclass
class Proxy:
    process: subprocess.Popen
    home: Path
    log: Path
    stop_signal: int  # nginx: SIGQUIT is its graceful stop; Caddy stops on SIGTERM

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _started(command: list[str], home: Path, port: int, stop_signal: int,
             env: dict | None = None) -> Proxy:
    log = home / "proxy.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=home, env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    proxy = Proxy(process, home, log, stop_signal)

    def listening() -> bool:
        assert process.poll() is None, log.read_text(errors="replace")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    if not wait_until(listening):
        proxy.stop()
        raise AssertionError(f"the proxy did not start: {log.read_text(errors='replace')}")
    return proxy


def start_caddy(caddyfile: str, home: Path, port: int) -> Proxy:
    """Caddy with `caddyfile` (already pointed at loopback ports), its storage and
    configuration under `home`; `port` is the one to wait for."""
    needs(CADDY, "caddy")
    (home / "Caddyfile").write_text(caddyfile)
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home),
           "XDG_CONFIG_HOME": str(home)}
    return _started([CADDY, "run", "--config", str(home / "Caddyfile"), "--adapter",
                     "caddyfile"], home, port, signal.SIGTERM, env)


def nginx_main_conf(home: Path, site: Path) -> str:
    """The main configuration that Debian's /etc/nginx/nginx.conf stands for: everything
    nginx writes (pid, logs, temporary files) under `home`, the site file included."""
    # As root, nginx runs its workers as `nobody`, who cannot enter pytest's folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {home / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
{user}pid {home / 'nginx.pid'};
error_log {home / 'error.log'} info;
events {{
    worker_connections 256;
}}
http {{
    access_log {home / 'access.log'};
{temp}
    include {site};
}}
"""


def nginx_command(home: Path, *args: str) -> list[str]:
    return [needs(NGINX, "nginx"), "-p", str(home), "-c", str(home / "nginx.conf"),
            "-e", str(home / "error.log"), *args]


def start_nginx(site: str, home: Path, port: int) -> Proxy:
    """nginx with the site file `site` (already pointed at loopback ports and files under
    `home`), after `nginx -t` says the configuration is valid."""
    (home / "site.conf").write_text(site)
    (home / "nginx.conf").write_text(nginx_main_conf(home, home / "site.conf"))
    checked = subprocess.run(nginx_command(home, "-t"), capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    return _started(nginx_command(home), home, port, signal.SIGQUIT)
