"""What checking the login before a body costs the workbench's writes (``appliance.workbench_gate``).

Jupyter's own port now asks Jupyter's identity provider about a request's head before Tornado
reads its body: one more token check (a handler built on the head, the token compared) per
request that carries a body, on top of Jupyter's own. Two JupyterLab servers with the same token,
root and options, differing only in how they start:

- **gated**: ``python -m appliance.workbench_gate`` (how the appliance starts the workbench);
- **jupyter**: ``jupyter lab``, as before the gate.

The loads: **save** writes a small text file through the contents API per request (a notebook
save's shape, a JSON body of ``--small-kib``), **upload** one of ``--upload-kib`` (base64 in JSON,
as JupyterLab uploads a file); a closed loop of ``--clients`` threads, every answer a 200 or 201.
Reported per load and server: writes per second and the server's CPU milliseconds per write, both
as ratios to jupyter; the servers take turns (A-B, then B-A). Numbers compare only within one run.

    .venv/bin/python benchmarks/workbench_gate.py                 # 10 s per load, server and round
    .venv/bin/python benchmarks/workbench_gate.py --seconds 5 --clients 2
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from proc_stats import alternating_rounds, closed_loop, cpu_seconds, free_port, print_ratios, wait_ready

BIN = Path(sys.executable).parent
COMMANDS = {
    "jupyter": [str(BIN / "jupyter"), "lab"],
    "gated": [sys.executable, "-m", "appliance.workbench_gate"],
}
LOADS = ("save", "upload")


def start(command: list[str], root: Path, token: str) -> tuple[subprocess.Popen[bytes], str]:
    """A JupyterLab on a free loopback port, its files under ``root``; (process, URL) once ready."""
    port = free_port()
    (root / "files").mkdir(parents=True)
    env = os.environ | {
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_DATA_DIR": str(root / "data"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
    }
    options = [
        "--no-browser",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        f"--ServerApp.root_dir={root / 'files'}",
    ]
    log = open(root / "server.log", "wb")  # noqa: SIM115 - the server's, closed with the process
    proc = subprocess.Popen(
        [*command, *options, "--ServerApp.allow_root=True"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    wait_ready(proc, f"{url}/api/status", " ".join(command), root / "server.log", 120, headers=headers)
    return proc, url


def bodies(small_kib: int, upload_kib: int) -> dict[str, dict[str, str]]:
    """Each load's contents-API body."""
    return {
        "save": {"type": "file", "format": "text", "content": "x" * (small_kib << 10)},
        "upload": {
            "type": "file",
            "format": "base64",
            "content": base64.b64encode(os.urandom(upload_kib << 10)).decode(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load, server and round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--small-kib", type=int, default=4)
    parser.add_argument("--upload-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2, help="each load's servers in turn, A-B then B-A")
    args = parser.parse_args()
    token = secrets.token_urlsafe(24)
    payload = bodies(args.small_kib, args.upload_kib)
    with tempfile.TemporaryDirectory(prefix="workbench-gate-") as tmp:
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for name, command in COMMANDS.items():
                servers[name] = start(command, Path(tmp) / name, token)

            def measure(load: str, name: str) -> tuple[int, float, float]:
                proc, url = servers[name]

                def connect() -> httpx.Client:
                    return httpx.Client(base_url=url, headers={"Authorization": f"token {token}"}, timeout=60)

                def send(http: httpx.Client, client: int, n: int) -> httpx.Response:
                    reply = http.put(f"/api/contents/{load}-{client}-{n % 8}.txt", json=payload[load])
                    return (
                        httpx.Response(200, request=reply.request)
                        if reply.status_code in (200, 201)
                        else reply
                    )

                closed_loop(args.clients, 1.0, connect, send)  # warm up
                before, started = cpu_seconds(proc.pid), time.monotonic()
                count = closed_loop(args.clients, args.seconds, connect, send)
                return count, time.monotonic() - started, cpu_seconds(proc.pid) - before

            totals = alternating_rounds(LOADS, tuple(COMMANDS), args.rounds, measure)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    print_ratios(totals, LOADS, tuple(COMMANDS), "write")


if __name__ == "__main__":
    main()
