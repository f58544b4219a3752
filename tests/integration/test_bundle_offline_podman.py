"""``up --bundle`` on the podman runtime with no network at all: the edge stack (model server and
monitoring) as containers, healthy, answering an inference request through its published port.

Published ports live in the network namespace of the podman service that creates the containers,
so the service runs inside the test's own namespace (``unshare -n``, only its loopback up), on its
own socket, and every command and probe enters that namespace (``nsenter --net``). Inside it
netavark builds the stack's bridge, its DNS and the port forwarding as on a connected host; nothing
outside the namespace is reachable. The image store is podman's usual one, so the bundle's images
are found there ("already in podman"); test_bundle_offline.py covers loading them.

The model is the ONNX file a user copies into the state volume once the stack is up: the server
starts live, waits for it (``--wait-for-model``) and becomes ready when it appears.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from appliance.answers_file import load_answers
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.runtimes.podman_rt import PodmanRuntime
from tests.conftest import APPLIANCE, run_cli, use_runtime, write_answers
from tests.integration._container_fixtures import MONITORING_IMAGE, ensure_images, owned
from tests.integration._serving_fixtures import N_FEATURES, infer_body, write_mlp

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.runtime("podman"),
    pytest.mark.timeout(1800),
]
MODEL_DIR = "/var/lib/appliance/models/mlp"
"""Where the model goes: a folder in the state volume (mounted at /var/lib/appliance), which does
not exist yet when the server starts. The server is given the file in it: a serving image built
before LocalSource took a missing path for a folder would watch the folder as if it were the file."""
EDGE = {
    "runtime": "podman",
    "profile": "edge",
    "object_store": {"kind": "filesystem"},
    "components": {"dashboards": False},  # Grafana's upstream image cannot be pulled here
    "images": dict.fromkeys(("prometheus", "node-exporter", "alertmanager"), MONITORING_IMAGE),
    "serving": {"model": f"{MODEL_DIR}/model.onnx", "poll_seconds": 1},
    "health_timeout_seconds": 240,
}
EDGE_SERVICES = ("serving", "prometheus", "node-exporter", "alertmanager")


@dataclass
class OfflinePodman:
    """A podman service alone in a network namespace with only its loopback up."""

    pid: int
    url: str

    def run(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the namespace, talking to this podman service."""
        return subprocess.run(
            ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ | {"CONTAINER_HOST": self.url},
            check=False,
        )


@pytest.fixture
def offline_podman() -> Iterator[OfflinePodman]:
    use_runtime("podman")
    for tool in ("unshare", "nsenter", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/bootstrap.sh installs util-linux, iproute2 and curl")
    folder = Path(tempfile.mkdtemp(prefix="podman-ns-", dir="/tmp"))  # short: a socket path has a limit
    sock = folder / "podman.sock"
    with (folder / "service.log").open("wb") as log:
        service = subprocess.Popen(
            [
                "unshare",
                "-n",
                "sh",
                "-c",
                f"ip link set lo up && exec podman system service --time=0 unix://{sock}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and service.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not sock.exists():
            pytest.fail(
                f"podman service in the namespace did not start: {(folder / 'service.log').read_text()}"
            )
        links = subprocess.run(
            ["nsenter", f"--net=/proc/{service.pid}/ns/net", "ip", "-o", "link"],
            capture_output=True,
            text=True,
        )
        assert [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"], links.stdout
        yield OfflinePodman(service.pid, f"unix://{sock}")
    finally:
        os.killpg(service.pid, signal.SIGTERM)
        service.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def edge_bundle(tmp_path: Path) -> Path:
    """An edge bundle of the images the stack runs (monitoring stand-in and model server)."""
    use_runtime("podman")
    ensure_images("podman", ("prometheus-debian", "serving"))
    answers = write_answers(tmp_path / "make.yaml", **EDGE)
    out = tmp_path / "edge.tar"
    started = time.monotonic()
    run_cli("bundle", "create", "-o", str(out), "--no-wheelhouse", answers=answers, state=tmp_path / "m")
    print(f"bundle create: {time.monotonic() - started:.1f}s, {out.stat().st_size / 2**20:.0f} MiB")
    return out


def podman_runtime(answers: Path, state: Path, url: str) -> PodmanRuntime:
    """The stack's runtime as the CLI builds it, talking to the podman service at ``url``."""
    runtime = Engine(AppContext.create(load_answers(answers), answers, state)).runtime
    assert isinstance(runtime, PodmanRuntime)
    runtime.url = url
    return runtime


def test_up_from_a_bundle_as_containers_with_no_network(
    offline_podman: OfflinePodman, edge_bundle: Path, tmp_path: Path
) -> None:
    answers = write_answers(tmp_path / "appliance.yaml", **EDGE)
    state = tmp_path / "state"
    cli = [APPLIANCE, "--answers", str(answers), "--state-dir", str(state)]
    port = yaml.safe_load(answers.read_text())["ports"]["serving_http"]
    runtime = podman_runtime(answers, state, offline_podman.url)
    try:
        started = time.monotonic()
        up = offline_podman.run(*cli, "up", "--bundle", str(edge_bundle))
        print(f"up --bundle (podman, no network): {time.monotonic() - started:.1f}s")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "intact: " in up.stderr and "already in podman" in up.stderr, up.stderr
        status = json.loads(offline_podman.run(*cli, "status", "--json").stdout)["services"]
        assert {name: s["health"] for name, s in status.items()} == dict.fromkeys(EDGE_SERVICES, "healthy")

        volume = runtime.container_name("state")
        inspect = subprocess.run(
            ["podman", "volume", "inspect", volume, "--format", "{{.Mountpoint}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        write_mlp(Path(inspect.stdout.strip()) / MODEL_DIR.removeprefix("/var/lib/appliance/"))
        token = (state / "secrets" / "serving_token").read_text().strip()
        body = json.dumps(infer_body(np.ones((2, N_FEATURES), dtype=np.float32)))
        curl = ["curl", "-sS", "-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
        answer: Any = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answer = offline_podman.run(*curl, "--data", body, f"http://127.0.0.1:{port}/v2/models/mlp/infer")
            if answer.returncode == 0 and '"outputs"' in answer.stdout:
                break
            time.sleep(1)
        else:
            pytest.fail(f"no inference answer through the published port: {answer}")
        doc = json.loads(answer.stdout)
        assert doc["model_name"] == "mlp" and doc["outputs"][0]["shape"] == [2, 3]
        # The same port is closed outside the namespace: the stack is reachable only in there.
        outside = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{port}/v2/health/live"], capture_output=True
        )
        assert outside.returncode != 0

        down = offline_podman.run(*cli, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        left = owned(runtime)
        assert left["containers"] == [] and left["networks"] == [], left
    finally:
        offline_podman.run(*cli, "down", "--purge", "--yes")
    assert owned(runtime) == {"containers": [], "networks": [], "volumes": []}
