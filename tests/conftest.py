"""Shared test helpers: free ports, answers files on free ports, and running the real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

VENV_BIN = Path(sys.executable).parent
APPLIANCE = str(VENV_BIN / "appliance")
PORT_KEYS = [
    "mlflow",
    "workbench",
    "prometheus",
    "alertmanager",
    "node_exporter",
    "minio",
    "minio_console",
    "serving_http",
    "serving_grpc",
    "serving_metrics",
    "controller",
]


def free_port() -> int:
    """A TCP port nobody listens on right now (tests run beside other tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    while len(set(ports.values())) < len(PORT_KEYS):
        ports = {key: free_port() for key in PORT_KEYS}
    return ports


def write_answers(path: Path, **overrides: object) -> Path:
    """An answers file on free ports; ``overrides`` are merged at the top level."""
    data: dict[str, object] = {"ports": free_ports(), "health_timeout_seconds": 240}
    data.update(overrides)
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(
    *args: str,
    answers: Path | None = None,
    state: Path | None = None,
    check: bool = True,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``appliance`` command the way a user does."""
    cmd = [APPLIANCE]
    if answers:
        cmd += ["--answers", str(answers)]
    if state:
        cmd += ["--state-dir", str(state)]
    cmd += list(args)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=os.environ | (env or {}), check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def answers_file(tmp_path: Path) -> Path:
    return write_answers(tmp_path / "appliance.yaml")
