"""The TLS gateway as a container (podman): nginx on the stack network, the certificate and key
mounted read-only from the secret store, ports published on the gateway's listen address, and
the model server behind it reached by its service name, over HTTPS and gRPC over TLS.

The upstream nginx image cannot be pulled here; ``nginx-debian`` (Debian's nginx at the upstream
image's path) stands in through an ``images.gateway`` override, as the monitoring images do.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from appliance.answers_file import load_answers
from appliance.context import AppContext
from appliance.engine import Engine
from appliance.images.catalog import get_image
from appliance.runtimes.podman_rt import PodmanRuntime
from tests.conftest import run_cli, runtime_params, use_runtime, write_answers
from tests.integration._container_fixtures import ensure_images
from tests.integration._serving_fixtures import reference, training_data, write_mlp

MODEL_DIR = "/var/lib/appliance/models/mlp"
"""Inside the state volume: the server starts before the file exists (live, not ready), then loads it."""
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module", params=runtime_params("podman"))
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path]]:
    use_runtime("podman")
    ensure_images("podman", ("serving", "nginx-debian"))
    root = tmp_path_factory.mktemp("gateway-podman")
    answers = write_answers(
        root / "appliance.yaml",
        runtime="podman",
        profile="custom",
        object_store={"kind": "filesystem"},
        components={"mlflow": False, "workbench": False, "monitoring": False, "controller": False},
        images={"gateway": get_image("nginx-debian").tag()},
        serving={"model": f"{MODEL_DIR}/model.onnx", "poll_seconds": 1},
        tls={"enabled": True},
    )
    state = root / "state"
    run_cli("up", answers=answers, state=state)
    yield answers, state
    run_cli("down", "--purge", "--yes", answers=answers, state=state, check=False)


def test_gateway_container_serves_the_model_server_over_tls(stack: tuple[Path, Path]) -> None:
    answers, state = stack
    services = json.loads(run_cli("status", "--json", answers=answers, state=state).stdout)["services"]
    assert {n: s["health"] for n, s in services.items()} == {"serving": "healthy", "gateway": "healthy"}
    port = yaml.safe_load(answers.read_text())["ports"]["gateway_serving"]
    ca = state / "secrets" / "tls_ca_cert"
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=context, timeout=10) as client:
        assert client.get(f"https://localhost:{port}/v2/health/live").status_code == 200
        assert client.get(f"https://localhost:{port}/v2/health/ready").status_code == 503  # no model yet
    mountpoint = subprocess.run(
        ["podman", "volume", "inspect", state_volume(answers, state), "--format", "{{.Mountpoint}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    write_mlp(Path(mountpoint) / MODEL_DIR.removeprefix("/var/lib/appliance/"))
    x = training_data(rows=2)
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    token = (state / "secrets" / "serving_token").read_text().strip()
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + 60
        auth = (("authorization", f"Bearer {token}"),)
        while not stub.ModelReady(pb.ModelReadyRequest(name="mlp"), metadata=auth, timeout=10).ready:
            assert time.monotonic() < deadline, "the model never loaded"
            time.sleep(1)
        reply = stub.ModelInfer(request, metadata=auth, timeout=10)
    got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_allclose(got.reshape(2, -1), reference(Path(mountpoint) / "models", x), atol=1e-6)
    # a body past the gateway's memory buffer goes through its temporary folder in the container
    many = training_data(rows=20_000)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(many.shape), "data": many.tolist()}]
    }
    with httpx.Client(verify=context, timeout=60) as client:
        resp = client.post(
            f"https://localhost:{port}/v2/models/mlp/infer",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.json()["outputs"][0]["data"]) == len(reference(Path(mountpoint) / "models", many).ravel())


def state_volume(answers: Path, state: Path) -> str:
    runtime = Engine(AppContext.create(load_answers(answers), answers, state)).runtime
    assert isinstance(runtime, PodmanRuntime)
    return runtime.container_name("state")
