"""Drift gauges from live traffic, models loaded by S3 URI (one with its weights in an external
data file) from a real S3 endpoint (the bundled SeaweedFS, read with the model server's own
read-only key), and a model that cannot be loaded at startup."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration._object_store_fixtures import seaweedfs
from tests.integration._serving_fixtures import (
    FEATURES,
    matmul_weights,
    start_server,
    training_data,
    write_external_matmul,
    write_mlp,
)

pytestmark = pytest.mark.integration


def gauges(text: str, metric: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(metric) :]] = float(value)
    return out


def send(url: str, x: np.ndarray) -> None:
    with httpx.Client(base_url=url) as c:
        for chunk in np.array_split(x, 50):
            body = {
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": list(chunk.shape), "data": chunk.tolist()}
                ]
            }
            assert c.post("/v2/models/mlp/infer", json=body).status_code == 200


def test_psi_is_near_zero_in_distribution_and_raised_when_shifted(tmp_path: Path) -> None:
    folder = write_mlp(tmp_path / "mlp")
    server = start_server(["--model", str(folder), "--drift-window", "1000", "--poll-seconds", "0"], tmp_path)
    try:
        send(server.url, training_data(1000, seed=99))  # fresh sample of the training distribution
        text = httpx.get(server.metrics_url).text
        feature = gauges(text, "appliance_feature_psi")
        assert len(feature) == len(FEATURES)
        assert max(feature.values()) < 0.05, feature
        assert gauges(text, "appliance_prediction_psi")['{model="mlp"}'] < 0.05
        assert gauges(text, "appliance_drift_window_rows")['{model="mlp"}'] == 1000

        shifted = training_data(1000, seed=98)
        shifted[:, 0] += 3.0  # feature f0 moves by three of its standard deviations
        send(server.url, shifted)
        text = httpx.get(server.metrics_url).text
        feature = gauges(text, "appliance_feature_psi")
        assert feature['{feature="f0",model="mlp"}'] > 1.0
        assert max(v for k, v in feature.items() if '"f0"' not in k) < 0.05
    finally:
        server.stop()


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """The bundled SeaweedFS: the server gets the model server's (read-only) key, as in the stack;
    the test uploads with the trainer's."""
    with seaweedfs(tmp_path / "store") as store:
        env = {"AWS_S3_ENDPOINT": store.endpoint, "AWS_DEFAULT_REGION": "us-east-1"} | store.keys("reader")
        yield env, store.client("writer")


def test_model_from_s3_uri(tmp_path: Path, s3: tuple[dict[str, str], Any]) -> None:
    env, client = s3
    folder = write_mlp(tmp_path / "mlp")
    for name in ("model.onnx", "drift_profile.json"):
        client.upload_file(str(folder / name), "models", f"clf/{name}")
    server = start_server(["--model", "s3://models/clf", "--poll-seconds", "0.3"], tmp_path, env=env)
    try:
        meta = httpx.get(f"{server.url}/v2/models/clf").json()
        assert meta["inputs"][0]["name"] == "input"
        x = training_data(2, seed=4)
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8], "data": x.tolist()}]}
        r = httpx.post(f"{server.url}/v2/models/clf/infer", json=body)
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        assert "appliance_feature_psi" in httpx.get(server.metrics_url).text  # profile came along
        client.upload_file(str(write_mlp(tmp_path / "v2", seed=3) / "model.onnx"), "models", "clf/model.onnx")
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/v2/models/clf").json()["versions"] != ["2"]:
            assert time.monotonic() < deadline, "new S3 object never loaded"
            time.sleep(0.2)
    finally:
        server.stop()


def test_a_model_with_external_data_from_s3_loads_and_reloads_when_its_weights_change(
    tmp_path: Path, s3: tuple[dict[str, str], Any]
) -> None:
    env, client = s3
    v1 = write_external_matmul(tmp_path / "v1", 1.0, "weights.bin")
    v2 = write_external_matmul(tmp_path / "v2", 3.0, "weights.bin")
    assert (v1 / "model.onnx").read_bytes() == (v2 / "model.onnx").read_bytes()
    for name in ("model.onnx", "weights.bin"):
        client.upload_file(str(v1 / name), "models", f"ext/{name}")
    server = start_server(["--model", "s3://models/ext", "--poll-seconds", "0.3"], tmp_path, env=env)
    x = np.ones((2, 3), dtype=np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]}

    def answer() -> tuple[str, np.ndarray]:
        reply = httpx.post(f"{server.url}/v2/models/ext/infer", json=body, timeout=10)
        assert reply.status_code == 200, reply.text
        out = reply.json()
        return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(2, 4)

    try:
        version, got = answer()
        np.testing.assert_allclose(got, x @ matmul_weights(1.0))
        assert version == "1"
        client.upload_file(str(v2 / "weights.bin"), "models", "ext/weights.bin")  # new weights only
        deadline = time.monotonic() + 30
        while (version := answer()[0]) != "2":
            assert time.monotonic() < deadline, "new weights never loaded"
            time.sleep(0.2)
        np.testing.assert_allclose(answer()[1], x @ matmul_weights(3.0))
        time.sleep(1.5)  # five poll rounds: the version stays, no reload of the same objects
        assert answer()[0] == "2"
    finally:
        server.stop()


def test_unloadable_model_exits_with_a_message(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.workloads.serving",
            "--model",
            str(tmp_path / "missing"),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "failed to load" in proc.stderr and "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_stops_cleanly_with_a_connection_open(tmp_path: Path) -> None:
    import json
    import socket

    server = start_server(["--model", str(write_mlp(tmp_path / "mlp")), "--poll-seconds", "0"], tmp_path)
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}]})
    request = (
        f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as s:
        s.sendall(request)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        server.proc.terminate()
        assert server.proc.wait(15) == 0
