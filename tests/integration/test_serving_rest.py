"""The REST front end against a real server process: every route, datatype and bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration._serving_fixtures import (
    ADMIN,
    ServerProcess,
    infer_body,
    reference,
    rest_client,
    rest_models,
    rest_server,
    training_data,
)

pytestmark = pytest.mark.integration

GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}
__all__ = ["rest_client", "rest_models", "rest_server"]  # fixtures: client, models, server


def test_health_is_open_and_the_rest_needs_a_token(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url) as anon:
        assert anon.get("/v2/health/live").status_code == 200
        assert anon.get("/v2/health/ready").json() == {"ready": True}
        for method, path in [
            ("GET", "/v2"),
            ("GET", "/v2/models/mlp"),
            ("GET", "/v2/models/mlp/ready"),
            ("POST", "/v2/models/mlp/infer"),
            ("POST", "/v2/repository/index"),
        ]:
            r = anon.request(method, path, json=infer_body(np.zeros((1, 8), np.float32)))
            assert r.status_code == 401, path
            assert "bearer token" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"
        wrong = anon.get("/v2", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401


def test_server_and_model_metadata(client: httpx.Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] and "binary_tensor_data" in meta["extensions"]
    model = client.get("/v2/models/mlp").json()
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    version = model["versions"][0]
    assert client.get(f"/v2/models/mlp/versions/{version}").json() == model
    assert client.get("/v2/models/mlp/ready").status_code == 200
    assert client.get(f"/v2/models/mlp/versions/{version}/ready").json()["ready"] is True
    assert client.get("/v2/models/mlp/versions/999/ready").status_code == 503


@pytest.mark.parametrize("nested", [True, False])
def test_infer_matches_onnxruntime(client: httpx.Client, models: Path, nested: bool) -> None:
    x = training_data(5, seed=3)
    data = x.tolist() if nested else x.ravel().tolist()
    body = {"id": "req-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [5, 8], "data": data}]}
    r = client.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-1" and doc["model_name"] == "mlp"
    out = doc["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [5, 3] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(out["data"]).reshape(5, 3), reference(models, x), rtol=1e-6)
    version = doc["model_version"]
    r2 = client.post(f"/v2/models/mlp/versions/{version}/infer", json=body)
    assert r2.json()["outputs"] == doc["outputs"]


ECHO_DATA: dict[str, tuple[str, list[Any]]] = {
    "fp32": ("FP32", [[1.5, -2.25], [0.0, 3.0]]),
    "fp16": ("FP16", [[1.5, -2.25], [0.0, 65504.0]]),
    "fp64": ("FP64", [[1e-300, 2.5], [3.0, -4.0]]),
    "int64": ("INT64", [[2**40, -1], [0, 7]]),
    "int32": ("INT32", [[2**31 - 1, -5], [0, 1]]),
    "int8": ("INT8", [[-128, 127], [0, 1]]),
    "uint8": ("UINT8", [[0, 255], [1, 2]]),
    "bool": ("BOOL", [[True, False], [False, True]]),
    "bytes": ("BYTES", [["héllo", ""], ["a b", "zz"]]),
}


def echo_body(binary_out: bool = False) -> dict:
    inputs = [
        {"name": f"in_{k}", "datatype": dt, "shape": [2, 2], "data": d} for k, (dt, d) in ECHO_DATA.items()
    ]
    return {"inputs": inputs, "parameters": {"binary_data_output": binary_out}}


def test_every_datatype_round_trips_as_json(client: httpx.Client) -> None:
    r = client.post("/v2/models/echo/infer", json=echo_body())
    assert r.status_code == 200, r.text
    outs = {o["name"]: o for o in r.json()["outputs"]}
    for key, (dt, data) in ECHO_DATA.items():
        out = outs[f"out_{key}"]
        assert out["datatype"] == dt and out["shape"] == [2, 2]
        assert out["data"] == [v for row in data for v in row], key


def _split_binary(r: httpx.Response) -> tuple[dict, bytes]:
    n = int(r.headers["inference-header-content-length"])
    return json.loads(r.content[:n]), r.content[n:]


def test_binary_inputs_and_outputs(client: httpx.Client) -> None:
    arrays: dict[str, np.ndarray] = {
        "fp32": np.array([[1.5, 2.5], [3.5, 4.5]], np.float32),
        "fp16": np.array([[0.5, -1.0], [2.0, 8.0]], np.float16),
        "fp64": np.array([[1.0, 2.0], [3.0, 4.0]]),
        "int64": np.array([[1, 2], [3, -4]], np.int64),
        "int32": np.array([[1, 2], [3, -4]], np.int32),
        "int8": np.array([[1, 2], [3, -4]], np.int8),
        "uint8": np.array([[1, 2], [3, 4]], np.uint8),
        "bool": np.array([[True, False], [True, True]]),
    }
    blobs: list[bytes] = []
    inputs: list[dict[str, Any]] = []
    for key, a in arrays.items():
        raw = a.tobytes()
        blobs.append(raw)
        dt = {
            "fp32": "FP32",
            "fp16": "FP16",
            "fp64": "FP64",
            "int64": "INT64",
            "int32": "INT32",
            "int8": "INT8",
            "uint8": "UINT8",
            "bool": "BOOL",
        }[key]
        inputs.append(
            {
                "name": f"in_{key}",
                "datatype": dt,
                "shape": [2, 2],
                "parameters": {"binary_data_size": len(raw)},
            }
        )
    strings = [b"ab", b"", "h\u00e9\u4e16".encode(), b"xyz"]
    raw_bytes = b"".join(struct.pack("<I", len(s)) + s for s in strings)
    blobs.append(raw_bytes)
    inputs.append(
        {
            "name": "in_bytes",
            "datatype": "BYTES",
            "shape": [2, 2],
            "parameters": {"binary_data_size": len(raw_bytes)},
        }
    )
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    r = client.post(
        "/v2/models/echo/infer",
        content=head + b"".join(blobs),
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    doc, tail = _split_binary(r)
    offset = 0
    for out in doc["outputs"]:
        size = out["parameters"]["binary_data_size"]
        chunk, offset = tail[offset : offset + size], offset + size
        key = out["name"].removeprefix("out_")
        if key == "bytes":
            assert chunk == raw_bytes
        else:
            np.testing.assert_array_equal(np.frombuffer(chunk, arrays[key].dtype).reshape(2, 2), arrays[key])
    assert offset == len(tail)
    bad = b"".join(struct.pack("<I", len(s)) + s for s in [b"\xff", b"", b"", b""])
    inputs[-1]["parameters"]["binary_data_size"] = len(bad)
    head = json.dumps({"inputs": inputs}).encode()
    r = client.post(
        "/v2/models/echo/infer",
        content=head + b"".join(blobs[:-1]) + bad,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]


def test_per_output_binary_choice_and_output_selection(client: httpx.Client) -> None:
    body = echo_body()
    body["outputs"] = [{"name": "out_fp16", "parameters": {"binary_data": True}}, {"name": "out_int8"}]
    r = client.post("/v2/models/echo/infer", json=body)
    doc, tail = _split_binary(r)
    assert [o["name"] for o in doc["outputs"]] == ["out_fp16", "out_int8"]
    assert doc["outputs"][1]["data"] == [-128, 127, 0, 1]
    np.testing.assert_array_equal(
        np.frombuffer(tail, np.float16), np.array([1.5, -2.25, 0.0, 65504.0], np.float16)
    )


def test_gzip_request_body(client: httpx.Client, models: Path) -> None:
    import gzip

    x = training_data(2, seed=5)
    r = client.post(
        "/v2/models/mlp/infer",
        content=gzip.compress(json.dumps(infer_body(x)).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.array(r.json()["outputs"][0]["data"]).reshape(2, 3), reference(models, x), rtol=1e-6
    )


def test_repository_index_unload_load(client: httpx.Client, models: Path) -> None:
    index = {m["name"]: m for m in client.post("/v2/repository/index").json()}
    assert index["echo"]["state"] == "READY"
    assert client.post("/v2/repository/models/echo/unload", headers=ADMIN).status_code == 200
    assert client.get("/v2/models/echo/ready").status_code == 503
    r = client.post("/v2/models/echo/infer", json=echo_body())
    assert r.status_code == 503 and "not loaded" in r.json()["error"]
    assert {m["name"]: m for m in client.post("/v2/repository/index").json()}["echo"][
        "state"
    ] == "UNAVAILABLE"
    ready_only = client.post("/v2/repository/index", json={"ready": True}).json()
    assert [m["name"] for m in ready_only] == ["mlp"]
    assert client.post("/v2/repository/index", content=b"[1]").status_code == 400
    assert client.post("/v2/repository/models/echo/load", headers=ADMIN).status_code == 200
    assert client.post("/v2/models/echo/infer", json=echo_body()).status_code == 200
    assert client.post("/v2/repository/models/ghost/load", headers=ADMIN).status_code == 404
    # a new name from a source the server was started with: allowed
    r = client.post(
        "/v2/repository/models/echo2/load",
        json={"parameters": {"uri": str(models / "echo")}},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/v2/repository/models/ghost/load",
        json={"parameters": {"uri": "/does/not/exist"}},
        headers=ADMIN,
    )
    assert r.status_code == 403 and "only from the sources it was started with" in r.json()["error"]


def test_metrics_are_exported_and_move(client: httpx.Client, server: ServerProcess) -> None:
    def scrape() -> str:
        return httpx.get(server.metrics_url).text

    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = scrape()
    for _ in range(3):
        client.post("/v2/models/mlp/infer", json={"inputs": [GOOD]})
    client.post("/v2/models/mlp/infer", json={"inputs": [{**GOOD, "name": "bad"}]})
    after = scrape()
    ok = 'appliance_inference_requests_total{model="mlp",outcome="success",protocol="rest"'
    bad = 'appliance_inference_requests_total{model="mlp",outcome="client_error",protocol="rest"'
    assert value(after, ok) - value(before, ok) == 3
    assert value(after, bad) - value(before, bad) == 1
    for name in [
        "appliance_inference_request_duration_seconds_bucket",
        "appliance_inference_queue_duration_seconds_bucket",
        "appliance_inference_compute_duration_seconds_bucket",
        "appliance_inference_batch_size_bucket",
        "appliance_inference_in_flight{",
        "appliance_model_info{",
        "appliance_feature_psi{",
        "appliance_prediction_psi{",
        "appliance_drift_window_rows{",
    ]:
        assert name in after, name
    assert 'appliance_model_info{model="mlp"' in after
    assert value(after, 'appliance_inference_batch_size_count{model="mlp"}') > value(
        before, 'appliance_inference_batch_size_count{model="mlp"}'
    )
