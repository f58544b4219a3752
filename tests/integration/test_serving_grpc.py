"""gRPC and tritonclient against a real server process.

The raw stub is tritonclient's own generated ``service_pb2_grpc`` (built by NVIDIA from the
upstream proto, a superset of the KServe v2 service), so these tests check wire compatibility
with a stub we did not generate, plus the high-level tritonclient on HTTP and gRPC.
"""

from __future__ import annotations

import gc
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

from tests.integration._serving_fixtures import (
    ServerProcess,
    start_server,
    training_data,
    write_echo,
    write_mlp,
)

pytestmark = pytest.mark.integration

TOKEN = "grpc-token"
META = (("authorization", f"Bearer {TOKEN}"),)
ADMIN_TOKEN = "grpc-admin-token"
ADMIN_META = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_mlp(root / "mlp")
    write_echo(root / "echo")
    return root


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = start_server(
        ["--model", str(models / "mlp"), "--model", str(models / "echo"), "--poll-seconds", "0"],
        tmp_path_factory.mktemp("logs"),
        env={"APPLIANCE_SERVING_TOKEN": TOKEN, "APPLIANCE_SERVING_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    yield srv
    srv.stop()


@pytest.fixture
def stub(server: ServerProcess):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def reference(models: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(models / "mlp" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def mlp_request(x: np.ndarray, raw: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="mlp", id="r1")
    tensor = req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(x.astype(np.float32).tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    return req


def test_health_is_open_and_the_rest_needs_a_token(stub) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    for call, request in [
        (stub.ServerMetadata, pb.ServerMetadataRequest()),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp")),
        (stub.ModelReady, pb.ModelReadyRequest(name="mlp")),
        (stub.ModelInfer, mlp_request(np.zeros((1, 8)), raw=True)),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            call(request, metadata=(("authorization", "Bearer wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_metadata_and_ready(stub) -> None:
    meta = stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=META)
    assert "binary_tensor_data" in meta.extensions
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name="mlp"), metadata=META)
    assert model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 8])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("probabilities", "FP32", [-1, 3])
    ]
    assert stub.ModelReady(pb.ModelReadyRequest(name="mlp"), metadata=META).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="mlp", version="77"), metadata=META).ready


@pytest.mark.parametrize("raw", [True, False])
def test_infer_raw_and_typed(stub, models: Path, raw: bool) -> None:
    x = training_data(4, seed=7)
    resp = stub.ModelInfer(mlp_request(x, raw), metadata=META)
    assert resp.id == "r1" and resp.model_name == "mlp"
    out = resp.outputs[0]
    assert out.name == "probabilities" and list(out.shape) == [4, 3]
    got = (
        np.frombuffer(resp.raw_output_contents[0], np.float32)
        if raw
        else np.array(out.contents.fp32_contents)
    )
    np.testing.assert_allclose(got.reshape(4, 3), reference(models, x), rtol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "code", "needle"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (lambda r: setattr(r, "model_version", "9"), grpc.StatusCode.NOT_FOUND, "no version"),
        (lambda r: setattr(r.inputs[0], "name", "x"), grpc.StatusCode.INVALID_ARGUMENT, "no input 'x'"),
        (
            lambda r: setattr(r.inputs[0], "datatype", "INT32"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "datatype INT32",
        ),
        (lambda r: r.inputs[0].shape.__setitem__(1, 7), grpc.StatusCode.INVALID_ARGUMENT, "needs 28 bytes"),
        (lambda r: r.raw_input_contents.append(b"xx"), grpc.StatusCode.INVALID_ARGUMENT, "one per input"),
        (lambda r: r.outputs.add(name="zz"), grpc.StatusCode.INVALID_ARGUMENT, "no output 'zz'"),
    ],
)
def test_bad_requests_get_status_codes(stub, mutate, code, needle) -> None:
    req = mlp_request(np.zeros((1, 8)), raw=True)
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, metadata=META)
    assert err.value.code() == code
    assert needle in err.value.details()
    assert stub.ModelInfer(mlp_request(np.zeros((1, 8)), raw=True), metadata=META).outputs


def test_typed_datatype_mismatch_and_repository(stub) -> None:
    req = mlp_request(np.zeros((1, 8)), raw=False)
    req.inputs[0].datatype = "FP64"
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req, metadata=META)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fp64_contents has 0" in err.value.details()
    )
    stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="echo"), metadata=ADMIN_META)
    assert not stub.ModelReady(pb.ModelReadyRequest(name="echo"), metadata=META).ready
    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="echo"), metadata=ADMIN_META)
    assert stub.ModelReady(pb.ModelReadyRequest(name="echo"), metadata=META).ready
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelReady(pb.ModelReadyRequest(name="ghost"), metadata=META)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --- tritonclient ------------------------------------------------------------------------------

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def close_http(client: triton_http.InferenceServerClient) -> None:
    """Close the client and run the garbage collector here, in the test's thread: a client's
    __del__ closes its gevent pool again, which fails when another thread's collection runs it."""
    client.close()
    gc.collect()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http(server: ServerProcess, models: Path, binary: bool) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp", headers=dict(HEADERS))
    assert client.get_model_metadata("mlp", headers=dict(HEADERS))["inputs"][0]["shape"] == [-1, 8]
    x = training_data(6, seed=11)
    inp = triton_http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton_http.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], headers=dict(HEADERS))
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models, x), rtol=1e-6)
    with pytest.raises(InferenceServerException, match="bearer token"):
        client.infer("mlp", [inp])
    bad = triton_http.InferInput("wrong", list(x.shape), "FP32")
    bad.set_data_from_numpy(x, binary_data=binary)
    with pytest.raises(InferenceServerException, match="no input 'wrong'"):
        client.infer("mlp", [bad], headers=dict(HEADERS))
    close_http(client)


def test_tritonclient_http_every_datatype(server: ServerProcess) -> None:
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    arrays = echo_arrays()
    inputs = []
    for key, (dt, a) in arrays.items():
        inp = triton_http.InferInput(f"in_{key}", list(a.shape), dt)
        inp.set_data_from_numpy(a, binary_data=True)
        inputs.append(inp)
    result = client.infer("echo", inputs, headers=dict(HEADERS))
    for key, (_dt, a) in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{key}"), a)
    close_http(client)


def echo_arrays() -> dict[str, tuple[str, np.ndarray]]:
    return {
        "fp32": ("FP32", np.array([[1.5, 2.0], [3.0, -1.0]], np.float32)),
        "fp16": ("FP16", np.array([[1.5, 2.0], [3.0, -1.0]], np.float16)),
        "fp64": ("FP64", np.array([[1.5, 2.0], [3.0, -1.0]])),
        "int64": ("INT64", np.array([[1, 2], [3, -1]], np.int64)),
        "int32": ("INT32", np.array([[1, 2], [3, -1]], np.int32)),
        "int8": ("INT8", np.array([[1, 2], [3, -1]], np.int8)),
        "uint8": ("UINT8", np.array([[1, 2], [3, 255]], np.uint8)),
        "bool": ("BOOL", np.array([[True, False], [False, True]])),
        "bytes": ("BYTES", np.array([[b"a", b"bc"], ["\u00e9".encode(), b""]], dtype=object)),
    }


def test_tritonclient_grpc(server: ServerProcess, models: Path) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp", headers={"authorization": f"Bearer {TOKEN}"})
    meta = client.get_model_metadata("mlp", headers={"authorization": f"Bearer {TOKEN}"})
    assert meta.inputs[0].name == "input"
    x = training_data(6, seed=13)
    inp = triton_grpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], headers={"authorization": f"Bearer {TOKEN}"})
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference(models, x), rtol=1e-6)
    arrays = echo_arrays()
    inputs = []
    for key, (dt, a) in arrays.items():
        i = triton_grpc.InferInput(f"in_{key}", list(a.shape), dt)
        i.set_data_from_numpy(a)
        inputs.append(i)
    result = client.infer("echo", inputs, headers={"authorization": f"Bearer {TOKEN}"})
    for key, (_dt, a) in arrays.items():
        np.testing.assert_array_equal(result.as_numpy(f"out_{key}"), a)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("mlp", [inp])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [inp], headers={"authorization": f"Bearer {TOKEN}"})
    client.close()
