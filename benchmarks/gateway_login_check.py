"""What the gateway's login check before a large body costs an MLflow write, against a plain proxy.

The TLS gateway passes a small body (under 100,000 bytes, announced) on to MLflow from memory,
and a larger one only after asking MLflow whether the caller's credentials are good
(``auth_request`` to ``users/current``, ``appliance.gateway``): one more request to MLflow for
each such write. This measures that price with the real pieces: one MLflow
server started as the appliance starts one (``benchmarks/mlflow_login.py``'s ``start``, the
appliance's login check), and two nginx servers in front of it, run one after the other:

- **login-check**: the gateway's own MLflow server block (``gateway._mlflow_block``, the text
  the gateway renders), without TLS, whose cost is the same either way;
- **plain-proxy**: the block as it was before the check, every request proxied as it comes.

Two loads, each a closed loop of ``--clients`` threads with a keep-alive connection each, as an
account that created the experiment and run written to: **metric** logs one metric per request
(``POST /api/2.0/mlflow/runs/log-metric``, a small body: no check), **artifact** uploads a
``--artifact-kib`` file per request (``PUT /api/2.0/mlflow-artifacts/artifacts/...``, a large
body: checked). Every answer must be 200. Reported per load and front: writes per second,
MLflow's CPU milliseconds per write (``/proc/PID/stat``), and both as ratios to plain-proxy.
Numbers compare only within one run.

    .venv/bin/python benchmarks/gateway_login_check.py                 # 10 s per front, 4 clients
    .venv/bin/python benchmarks/gateway_login_check.py --seconds 5 --clients 2
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from mlflow_login import SERVERS, start
from proc_stats import alternating_rounds, closed_loop, cpu_seconds, free_port, print_ratios

from appliance.gateway import BODY_CLASS, NGINX_TEMP_PATHS, _mlflow_block, nginx_user

PLAIN = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mlflow;
            proxy_set_header Host {target};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 300s;
        }}
    }}"""
"""The MLflow block before the login check (the gateway's ``_web_block`` then), the baseline."""


FRONTS = ("plain-proxy", "login-check")
LOADS = ("metric", "artifact")


def nginx_conf(front: str, port: int, target: str) -> str:
    if front == "plain-proxy":
        server = PLAIN.format(port=port, target=target)
    else:
        server = _mlflow_block(f"listen 127.0.0.1:{port};", "", target)
    return f"""\
{nginx_user(os.geteuid() == 0)}worker_processes 1;
pid nginx.pid;
error_log stderr warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{NGINX_TEMP_PATHS}
    client_max_body_size 0;
{BODY_CLASS}
    upstream mlflow {{ server {target}; keepalive 32; }}
{server}
}}
"""


def run_nginx(front: str, folder: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    folder.mkdir()
    port = free_port()
    (folder / "nginx.conf").write_text(nginx_conf(front, port, target))
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    if nginx is None:
        raise SystemExit("nginx is not installed (scripts/bootstrap.sh installs it)")
    log = (folder / "nginx.log").open("wb")
    proc = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf")], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{front}: nginx did not answer; see {folder / 'nginx.log'}")


def writes(
    url: str, auth: tuple[str, str], run: dict[str, str], load: str, clients: int, seconds: float
) -> int:
    """Closed loop of ``load`` writes through ``url``; the number of answers, all 200."""
    blob = os.urandom(int(run["artifact_kib"]) * 1024)

    def write(http: httpx.Client, i: int, n: int) -> httpx.Response:
        if load == "metric":
            metric = {"run_id": run["id"], "key": f"m{i}", "value": 1.0, "timestamp": 0, "step": n}
            return http.post("/api/2.0/mlflow/runs/log-metric", json=metric)
        return http.put(f"/api/2.0/mlflow-artifacts/artifacts/{run['artifacts']}/blob-{i}.bin", content=blob)

    return closed_loop(clients, seconds, lambda: httpx.Client(base_url=url, auth=auth, timeout=30), write)


def prepare(url: str, admin: str, artifact_kib: int) -> tuple[tuple[str, str], dict[str, str]]:
    """A plain account, and a run of an experiment it created (so it may write there)."""
    writer = ("bench-writer", secrets.token_urlsafe(32))
    made = httpx.post(
        f"{url}/api/2.0/mlflow/users/create",
        json={"username": writer[0], "password": writer[1]},
        auth=("admin", admin),
        timeout=30,
    )
    made.raise_for_status()
    experiment = httpx.post(
        f"{url}/api/2.0/mlflow/experiments/create", json={"name": "bench"}, auth=writer, timeout=30
    ).json()["experiment_id"]
    info = httpx.post(
        f"{url}/api/2.0/mlflow/runs/create", json={"experiment_id": experiment}, auth=writer, timeout=30
    ).json()["run"]["info"]
    artifacts = info["artifact_uri"].removeprefix("mlflow-artifacts:").strip("/")
    return writer, {"id": info["run_id"], "artifacts": artifacts, "artifact_kib": str(artifact_kib)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per load, front and round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--artifact-kib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2, help="each load's fronts in turn, A-B then B-A")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-login-") as tmp:
        root, admin = Path(tmp), secrets.token_urlsafe(24)
        mlflow, url = start("mlflow", SERVERS["appliance"], root / "mlflow", admin)
        fronts: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            writer, run = prepare(url, admin, args.artifact_kib)
            for front in FRONTS:
                fronts[front] = run_nginx(front, root / front, url.removeprefix("http://"))

            def measure(load: str, front: str) -> tuple[int, float, float]:
                front_url = fronts[front][1]
                writes(front_url, writer, run, load, args.clients, 1.0)  # warm up
                before, started = cpu_seconds(mlflow.pid), time.monotonic()
                count = writes(front_url, writer, run, load, args.clients, args.seconds)
                return count, time.monotonic() - started, cpu_seconds(mlflow.pid) - before

            totals = alternating_rounds(LOADS, FRONTS, args.rounds, measure)
        finally:
            for proc, _ in fronts.values():
                proc.terminate()
                proc.wait(timeout=30)
            mlflow.terminate()
            mlflow.wait(timeout=30)
    print_ratios(totals, LOADS, FRONTS, "write")


if __name__ == "__main__":
    main()
