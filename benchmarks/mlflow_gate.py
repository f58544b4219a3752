"""What checking the login before a body costs MLflow's writes (``appliance.mlflow_gate``).

MLflow's own port now refuses a request carrying a body before reading it unless its basic
credentials log in: one more login check per such request (the account's row read, the slow hash
only once per password, ``appliance.mlflow_login``), on top of MLflow's own check. Two MLflow
servers, started as the appliance starts one (``mlflow_login.start``: SQLite stores, one worker,
the appliance's login check), differing only in the app uvicorn serves:

- **gated**: the appliance's (``appliance.mlflow_gate:create_app``);
- **mlflow**: MLflow's ``basic-auth`` app alone, as before the gate (the same start, the gate's
  factory name pointed back at MLflow's).

The loads are ``gateway_login_check.py``'s, sent straight to MLflow's port: **metric** logs one
metric per request (a small JSON body), **artifact** uploads a ``--artifact-kib`` file per request;
a closed loop of ``--clients`` threads, every answer a 200. Reported per load and server: writes
per second, MLflow's CPU milliseconds per write, both as ratios to mlflow; the servers take turns
(A-B, then B-A). Numbers compare only within one run.

    .venv/bin/python benchmarks/mlflow_gate.py                 # 10 s per load, server and round
    .venv/bin/python benchmarks/mlflow_gate.py --seconds 5 --clients 2
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway_login_check import prepare, writes
from mlflow_login import SERVER, SERVERS, start
from proc_stats import alternating_rounds, cpu_seconds, print_ratios

UNGATED = [
    sys.executable,
    "-c",
    "import sys; import appliance.mlflow_gate as gate; gate.GATED_APP = gate.MLFLOW_AUTH_APP; "
    "from appliance.mlflow_server import main; sys.exit(main(sys.argv[1:]))",
]
"""The appliance's MLflow start with MLflow's own app served (the gate's name pointed back)."""
APPS = {"mlflow": UNGATED, "gated": SERVER}
LOADS = ("metric", "artifact")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load, server and round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--artifact-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2, help="each load's servers in turn, A-B then B-A")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlflow-gate-") as tmp:
        root = Path(tmp)
        servers: dict[str, tuple[subprocess.Popen[bytes], str, tuple[str, str], dict[str, str]]] = {}
        try:
            for app, server in APPS.items():
                admin = secrets.token_urlsafe(24)
                proc, url = start(app, SERVERS["appliance"], root / app, admin, server)
                servers[app] = (proc, url, *prepare(url, admin, args.artifact_kib))

            def measure(load: str, app: str) -> tuple[int, float, float]:
                proc, url, writer, run = servers[app]
                writes(url, writer, run, load, args.clients, 1.0)  # warm up
                before, started = cpu_seconds(proc.pid), time.monotonic()
                count = writes(url, writer, run, load, args.clients, args.seconds)
                return count, time.monotonic() - started, cpu_seconds(proc.pid) - before

            totals = alternating_rounds(LOADS, tuple(APPS), args.rounds, measure)
        finally:
            for proc, *_ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    print_ratios(totals, LOADS, tuple(APPS), "write")


if __name__ == "__main__":
    main()
