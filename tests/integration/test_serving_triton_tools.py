"""Triton's client tools against a real server process: the model configuration and statistics
extensions (REST and gRPC, through tritonclient), and perf_analyzer from tritonclient's wheel.

perf_analyzer sends ``-H`` headers over HTTP only, so the HTTP run carries the inference token
and the gRPC run goes to a second server started with auth off (no token: the documented way to
benchmark over gRPC, on loopback).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.integration._serving_fixtures import ServerProcess, start_server, training_data, write_mlp

pytestmark = pytest.mark.integration

TOKEN = "triton-tools-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
META = (("authorization", f"Bearer {TOKEN}"),)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_mlp(root / "mlp")
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        ["--model", str(models / "mlp"), "--poll-seconds", "0", "--allow-client-shm"],
        tmp_path_factory.mktemp("logs"),
        env={"APPLIANCE_SERVING_TOKEN": TOKEN, "APPLIANCE_SERVING_ADMIN_TOKEN": "triton-admin"},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def open_server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with auth off (no token), for perf_analyzer over gRPC."""
    srv = start_server(
        ["--model", str(models / "mlp"), "--poll-seconds", "0", "--allow-client-shm"],
        tmp_path_factory.mktemp("logs"),
        env={"APPLIANCE_SERVING_TOKEN": "", "APPLIANCE_SERVING_ADMIN_TOKEN": ""},
    )
    yield srv
    srv.stop()


def _infer(client: httpx.Client, rows: int = 1) -> None:
    x = training_data(rows, seed=3)
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    r = client.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text


def _mlp_stats(doc: dict) -> dict:
    (stats,) = [s for s in doc["model_stats"] if s["name"] == "mlp"]
    return stats


# --- model configuration --------------------------------------------------------------------


def test_rest_config_describes_the_model_as_triton_does(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        for path in ("/v2/models/mlp/config", "/v2/models/mlp/versions/1/config"):
            r = c.get(path)
            assert r.status_code == 200, r.text
            config = r.json()
            assert config["name"] == "mlp"
            assert config["platform"] == "onnxruntime_onnx"
            assert config["max_batch_size"] > 1
            assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [8]}]
            assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]}]
            assert config["dynamic_batching"]["max_queue_delay_microseconds"] >= 0
        assert c.get("/v2/models/nope/config").status_code == 404
        assert c.get("/v2/models/mlp/versions/99/config").status_code == 404
        assert "model_configuration" in c.get("/v2").json()["extensions"]
    assert httpx.get(f"{server.url}/v2/models/mlp/config", timeout=10).status_code == 401


def test_grpc_config_through_tritonclient(server: ServerProcess) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    config = client.get_model_config("mlp", headers=dict(META), as_json=True)["config"]
    assert config["name"] == "mlp"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == ["8"]  # int64 travels as a string in protobuf JSON
    assert config["output"][0]["dims"] == ["3"]
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("nope", headers=dict(META))
    assert err.value.status() == str(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("mlp")
    assert err.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
    client.close()


# --- statistics -----------------------------------------------------------------------------


def test_rest_stats_count_the_requests_sent(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        before = _mlp_stats(c.get("/v2/models/mlp/stats").json())
        sent = 7
        for _ in range(sent):
            _infer(c)
        _infer(c, rows=3)  # one request of three rows: three inferences, one success
        after = _mlp_stats(c.get("/v2/models/mlp/stats").json())
        every = c.get("/v2/models/stats").json()
        assert c.get("/v2/models/nope/stats").status_code == 404
        versioned = c.get("/v2/models/mlp/versions/1/stats").json()["model_stats"]
        assert [(m["name"], m["version"]) for m in versioned] == [("mlp", "1")]
        assert c.get("/v2/models/mlp/versions/99/stats").status_code == 404
    assert after["inference_count"] - before["inference_count"] == sent + 3
    ok_before, ok_after = before["inference_stats"]["success"], after["inference_stats"]["success"]
    assert ok_after["count"] - ok_before["count"] == sent + 1
    assert ok_after["ns"] > ok_before["ns"]
    assert after["execution_count"] > before["execution_count"]
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        d = after["inference_stats"][phase]
        assert d["count"] == ok_after["count"], phase  # counts move together (perf_analyzer checks)
    for phase in ("compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][phase]["ns"] > before["inference_stats"][phase]["ns"], phase
    assert after["last_inference"] > 0
    assert sum(b["compute_infer"]["count"] for b in after["batch_stats"]) == after["execution_count"]
    assert _mlp_stats(every)["inference_count"] >= after["inference_count"]
    assert httpx.get(f"{server.url}/v2/models/stats", timeout=10).status_code == 401


def test_rest_stats_count_a_failed_request(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        before = _mlp_stats(c.get("/v2/models/mlp/stats").json())["inference_stats"]["fail"]["count"]
        bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 7], "data": [0.0] * 7}]}
        assert c.post("/v2/models/mlp/infer", json=bad).status_code == 400
        after = _mlp_stats(c.get("/v2/models/mlp/stats").json())["inference_stats"]["fail"]["count"]
    assert after == before + 1


def test_grpc_stats_through_tritonclient(server: ServerProcess) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    headers = dict(META)
    before = client.get_inference_statistics("mlp", headers=headers, as_json=True)["model_stats"][0]
    x = np.zeros((1, 8), np.float32)
    inp = triton_grpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    sent = 5
    for _ in range(sent):
        client.infer("mlp", [inp], headers=headers)
    after = client.get_inference_statistics("mlp", headers=headers, as_json=True)["model_stats"][0]
    # uint64 travels as a string in protobuf JSON
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == sent
    ok = after["inference_stats"]["success"]
    assert int(ok["count"]) - int(before["inference_stats"].get("success", {}).get("count", 0)) == sent
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    every = client.get_inference_statistics("", headers=headers, as_json=True)["model_stats"]
    assert [s["name"] for s in every] == ["mlp"]
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("nope", headers=headers)
    assert err.value.status() == str(grpc.StatusCode.NOT_FOUND)
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("mlp")
    assert err.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
    client.close()


# --- perf_analyzer --------------------------------------------------------------------------


def _perf_analyzer() -> tuple[str, dict[str, str]]:
    """perf_analyzer from tritonclient's wheel, with the CUDA runtime library it links against
    (pip's nvidia-cuda-runtime-cu12; libb64 comes from apt). Both come with the dev extra and
    scripts/bootstrap.sh."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    assert binary.exists(), "perf_analyzer missing: install the dev extra (tritonclient[all]==2.41.0)"
    import nvidia.cuda_runtime  # the wheel's runtime library

    lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    return str(binary), env


def _run_perf_analyzer(args: list[str]) -> dict[int, float]:
    binary, env = _perf_analyzer()
    cmd = [
        binary,
        "-m",
        "mlp",
        "--concurrency-range",
        "1:8:7",
        "--measurement-interval",
        "1000",
        "--stability-percentage",
        "100",  # a shared, noisy machine: stability is not what this test is about
        "--max-trials",
        "20",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=150)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert not re.search(r"error|failed|terminate|unable", out, re.IGNORECASE), out[-3000:]
    rates = {
        int(c): float(t)
        for c, t in re.findall(r"^Concurrency: (\d+), throughput: ([\d.]+) infer/sec", out, re.MULTILINE)
    }
    assert set(rates) == {1, 8}, out[-3000:]
    assert all(rate > 0 for rate in rates.values()), rates
    # the server's side of its report comes from the statistics extension
    assert re.search(r"Successful request count: [1-9]", out), out[-3000:]
    return rates


# "system": inputs and outputs through POSIX shared memory (Triton's extension; the servers
# run with --allow-client-shm); perf_analyzer registers its regions and unregisters all of both
# kinds, system and CUDA, when it ends (any refusal there is an error in its output). Its
# requests then carry no tensor bytes, so every success was read from a region; that outputs
# land in theirs is test_serving_shared_memory.py's to check (perf_analyzer reads none back).
SHARED_MEMORY = ("none", "system")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("shared_memory", SHARED_MEMORY)
def test_perf_analyzer_over_http_with_the_token(server: ServerProcess, shared_memory: str) -> None:
    _run_perf_analyzer(
        [
            *("-u", f"127.0.0.1:{server.http_port}", "-i", "http"),
            *("-H", f"Authorization: Bearer {TOKEN}", "--shared-memory", shared_memory),
        ]
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("shared_memory", SHARED_MEMORY)
def test_perf_analyzer_over_grpc_with_auth_off(open_server: ServerProcess, shared_memory: str) -> None:
    _run_perf_analyzer(["-u", open_server.grpc_target, "-i", "grpc", "--shared-memory", shared_memory])
