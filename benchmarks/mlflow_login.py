"""What a login costs MLflow's server: the appliance's check against MLflow's own, side by side.

Three MLflow servers, each started as the appliance starts one (``python -m appliance.mlflow_server
--app-name basic-auth``, SQLite stores, one worker), differing only in their ``basic_auth.ini``:

- **appliance**: ``authorization_function = appliance.mlflow_login:...`` (the slow hash once per
  password, a changed or deleted account refused at once on every server);
- **mlflow-uncached**: MLflow's check, ``auth_cache_ttl_seconds = 0`` (its default, and what a
  cluster's servers, which share the accounts, had to run);
- **mlflow-ttl-300**: MLflow's check with its time-based cache (what one host had).

The same closed-loop load drives each in turn: ``--clients`` threads, each with its own keep-alive
connection, sending authenticated ``GET /api/2.0/mlflow/experiments/get?experiment_id=0`` as a
read-only account for ``--seconds``; every answer must be 200. Reported per server: requests per
second, the server process's CPU milliseconds per request (``/proc/PID/stat``), and both as ratios
to mlflow-uncached. Numbers compare only within one run.

    .venv/bin/python benchmarks/mlflow_login.py                 # 10 s per server, 4 clients
    .venv/bin/python benchmarks/mlflow_login.py --seconds 5 --clients 2
"""

from __future__ import annotations

import argparse
import configparser
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from proc_stats import closed_loop, cpu_seconds, free_port, wait_ready

from appliance.mlflow_login import AUTHORIZATION_FUNCTION

DEFAULT_CHECK = "mlflow.server.auth:authenticate_request_basic_auth"
SERVERS = {
    "appliance": {"authorization_function": AUTHORIZATION_FUNCTION, "auth_cache_ttl_seconds": "0"},
    "mlflow-uncached": {"authorization_function": DEFAULT_CHECK, "auth_cache_ttl_seconds": "0"},
    "mlflow-ttl-300": {"authorization_function": DEFAULT_CHECK, "auth_cache_ttl_seconds": "300"},
}
READER = "bench-reader"


@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_seconds / max(self.requests, 1)


SERVER = [sys.executable, "-m", "appliance.mlflow_server"]
"""How the appliance starts MLflow (its options follow)."""


def start(
    name: str, settings: dict[str, str], folder: Path, admin: str, server: list[str] = SERVER
) -> tuple[subprocess.Popen[bytes], str]:
    """One MLflow server with ``settings`` in its auth config, started by ``server`` (the
    appliance's way unless told); its process and URL once healthy."""
    folder.mkdir()
    ini = configparser.ConfigParser()
    ini["mlflow"] = {
        "default_permission": "READ",
        "database_uri": f"sqlite:///{folder}/basic_auth.db",
        "admin_username": "admin",
        "grant_default_workspace_access": "false",
    } | settings
    with (folder / "basic_auth.ini").open("w") as out:
        ini.write(out)
    port = free_port()
    env = os.environ | {
        "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    cmd = [
        *server, "--app-name", "basic-auth", "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
        "--artifacts-destination", str(folder / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = (folder / "server.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/health", name, folder / "server.log")
    return proc, url


def load(url: str, auth: tuple[str, str], clients: int, seconds: float) -> int:
    """Closed loop of ``clients`` threads for ``seconds``; the number of answers, all 200."""
    return closed_loop(
        clients,
        seconds,
        lambda: httpx.Client(base_url=url, auth=auth, timeout=30),
        lambda http, i, n: http.get("/api/2.0/mlflow/experiments/get", params={"experiment_id": "0"}),
    )


def measure(name: str, settings: dict[str, str], root: Path, clients: int, seconds: float) -> Result:
    admin = secrets.token_urlsafe(24)
    proc, url = start(name, settings, root / name, admin)
    try:
        password = secrets.token_urlsafe(32)
        made = httpx.post(
            f"{url}/api/2.0/mlflow/users/create",
            json={"username": READER, "password": password},
            auth=("admin", admin),
            timeout=30,
        )
        made.raise_for_status()
        load(url, (READER, password), clients, 1.0)  # warm up: imports, the first slow hash
        before, started = cpu_seconds(proc.pid), time.monotonic()
        requests = load(url, (READER, password), clients, seconds)
        elapsed, used = time.monotonic() - started, cpu_seconds(proc.pid) - before
        return Result(name, requests, elapsed, used)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlflow-login-") as tmp:
        results = []
        for name, settings in SERVERS.items():
            print(f"{name}: {args.clients} clients for {args.seconds:.0f} s ...", file=sys.stderr, flush=True)
            results.append(measure(name, settings, Path(tmp), args.clients, args.seconds))
    base = next(r for r in results if r.name == "mlflow-uncached")
    print(f"\n{'server':<16} {'req/s':>8} {'x':>6} {'CPU ms/req':>11} {'x':>6}")
    for r in results:
        print(
            f"{r.name:<16} {r.per_second:8.1f} {r.per_second / base.per_second:6.2f} "
            f"{r.cpu_ms_per_request:11.2f} {r.cpu_ms_per_request / base.cpu_ms_per_request:6.2f}"
        )


if __name__ == "__main__":
    main()
