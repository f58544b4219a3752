"""Real services for the lifecycle tests: the bundled SeaweedFS store and an ``mlflow server``.

Imported explicitly by ``test_lifecycle*.py``. SeaweedFS is started as the product starts it
(tests/integration/_object_store_fixtures.py); the tests reach it as an external ``s3`` store
with the writer's generated key (``S3_KEYS``, filled in when the store is up), as the trainer
does. The MLflow server runs with ``--serve-artifacts`` and its artifacts in ``s3://mlflow``, so
every artifact upload goes through MLflow's proxy to the real store; the clients never see S3
credentials for it. Every process is started in its own process group and killed in teardown.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration._object_store_fixtures import SeaweedStore, seaweedfs

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
S3_KEYS: dict[str, str] = {}
"""The writer's key of the module's store (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``),
set by the ``services`` fixture (or ``seaweedfs_keys``) once the store is up."""


def seaweedfs_keys(store: SeaweedStore, identity: str = "writer") -> dict[str, str]:
    """``store``'s key of ``identity``, also put in ``S3_KEYS`` for the helpers below."""
    S3_KEYS.update(store.keys(identity))
    return dict(S3_KEYS)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class Services:
    """Where the test services listen."""

    s3_endpoint: str
    mlflow_port: int
    mlflow_uri: str
    root: Path


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """SeaweedFS + MLflow (sqlite backend, artifact proxy to s3://mlflow) for one test module."""
    root = tmp_path_factory.mktemp("lifecycle")
    mlflow_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    with seaweedfs(root / "store") as store:
        endpoint = store.endpoint
        seaweedfs_keys(store)
        env = os.environ | S3_KEYS | {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
        cmd += ["--serve-artifacts", "--artifacts-destination", "s3://mlflow"]
        cmd += ["--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
        procs.append(start(cmd, root / "mlflow.log", env))
        uri = f"http://127.0.0.1:{mlflow_port}"
        try:
            wait_http(f"{uri}/health", procs[0], root / "mlflow.log")
            yield Services(endpoint, mlflow_port, uri, root)
        finally:
            for proc in reversed(procs):
                stop(proc)


def s3_client(services: Services) -> Any:
    from appliance.dataconn.client import s3_client as client

    return client(services.s3_endpoint, S3_KEYS["AWS_ACCESS_KEY_ID"], S3_KEYS["AWS_SECRET_ACCESS_KEY"])


def answers(path: Path, services: Services, kind: str, mlflow_port: int | None = None) -> Path:
    """An answers file whose MLflow port and object store point at the test services."""
    store = {"kind": kind} | ({"endpoint": services.s3_endpoint} if kind == "s3" else {})
    data = {"ports": {"mlflow": mlflow_port or services.mlflow_port}, "object_store": store}
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def appliance_cmd() -> list[str]:
    """The installed ``appliance`` script, or the same entry point through this interpreter."""
    script = BIN / "appliance"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from appliance.cli import main; sys.exit(main())"]


def cli(
    answers_file: Path, state_dir: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``appliance --answers FILE --state-dir DIR ARGS`` with S3 keys in its environment."""
    cmd = [*appliance_cmd(), "--answers", str(answers_file), "--state-dir", str(state_dir), *args]
    env = os.environ | S3_KEYS | {"PYTHONPATH": str(REPO)}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "APPLIANCE_STATE_DIR", "APPLIANCE_ANSWERS"):
        env.pop(name, None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON summary: the last stdout line."""
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    data: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return data
