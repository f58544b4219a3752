"""Triton's system shared-memory extension against a real server process, through tritonclient
(its HTTP and gRPC clients; the POSIX objects in /dev/shm come from Python's
``multiprocessing.shared_memory``, as tritonclient's ``utils.shared_memory`` makes them: mode
0600, this user's): answers read from an output region equal ONNX Runtime's and the body's, for the MLP
and for the echo model's datatypes with inputs and outputs at offsets in one region beside
tensors in the body; the bearer token is checked before any region is touched, and a valid one
opens nothing to a caller through the gateway or from another account; a server started without
``--allow-client-shm`` refuses, saying how to allow it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, serialize_byte_tensor

from tests.integration._serving_fixtures import ServerProcess, rest_models, start_server, training_data

__all__ = ["rest_models"]  # the fixture 'models': the MLP and the echo model

pytestmark = pytest.mark.integration

TOKEN = "shm-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}  # lower case: gRPC metadata keys must be


def _auth() -> dict[str, str]:
    """The headers afresh for each call: tritonclient's HTTP infer adds its
    Inference-Header-Content-Length to the dict it is given."""
    return dict(AUTH)


ENV = {"APPLIANCE_SERVING_TOKEN": TOKEN, "APPLIANCE_SERVING_ADMIN_TOKEN": "shm-admin"}
PROTOCOLS = ("http", "grpc")


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        [
            "--model",
            str(models / "mlp"),
            "--model",
            str(models / "echo"),
            "--poll-seconds",
            "0",
            "--allow-client-shm",
        ],
        tmp_path_factory.mktemp("logs"),
        env=ENV,
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def plain_server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(
        ["--model", str(models / "mlp"), "--poll-seconds", "0"], tmp_path_factory.mktemp("logs"), env=ENV
    )
    yield srv
    srv.stop()


def _client(server: ServerProcess, protocol: str) -> Any:
    if protocol == "http":
        return triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    return triton_grpc.InferenceServerClient(server.grpc_target)


def _lib(protocol: str) -> Any:
    return triton_http if protocol == "http" else triton_grpc


Regions = Callable[[str, int], tuple[SharedMemory, str]]


@pytest.fixture
def regions(server: ServerProcess) -> Iterator[Regions]:
    """Make POSIX shared-memory objects (unregistered and removed after the test)."""
    made: list[SharedMemory] = []

    def make(name: str, size: int) -> tuple[SharedMemory, str]:
        made.append(SharedMemory(f"appliance-test-{os.getpid()}-{name}", create=True, size=size))
        return made[-1], f"/{made[-1].name}"

    yield make
    httpx.post(f"{server.url}/v2/systemsharedmemory/unregister", headers=_auth(), timeout=10)
    for handle in made:
        handle.close()
        handle.unlink()


def _put(handle: SharedMemory, data: bytes, offset: int = 0) -> None:
    handle.buf[offset : offset + len(data)] = data


def _get(handle: SharedMemory, dtype: Any, shape: list[int], offset: int = 0, size: int = 0) -> np.ndarray:
    """What the server wrote at ``offset`` (BYTES: the ``size`` bytes of its length-prefixed elements)."""
    if dtype == np.object_:
        return deserialize_bytes_tensor(bytes(handle.buf[offset : offset + size])).reshape(shape)
    count = int(np.prod(shape))
    return np.frombuffer(
        bytes(handle.buf[offset : offset + count * np.dtype(dtype).itemsize]), dtype
    ).reshape(shape)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mlp_answers_through_regions_equal_onnx_runtime_and_the_body(
    server: ServerProcess, models: Path, regions: Regions, protocol: str
) -> None:
    x = training_data(5, seed=11)
    (ref,) = ort.InferenceSession(str(models / "mlp" / "model.onnx")).run(None, {"input": x})
    in_handle, in_key = regions(f"in-{protocol}", x.nbytes)
    out_handle, out_key = regions(f"out-{protocol}", ref.nbytes)
    _put(in_handle, x.tobytes())
    client, lib = _client(server, protocol), _lib(protocol)
    client.register_system_shared_memory(f"in-{protocol}", in_key, x.nbytes, headers=_auth())
    client.register_system_shared_memory(f"out-{protocol}", out_key, ref.nbytes, headers=_auth())
    inp = lib.InferInput("input", list(x.shape), "FP32")
    inp.set_shared_memory(f"in-{protocol}", x.nbytes)
    out = lib.InferRequestedOutput("probabilities")
    out.set_shared_memory(f"out-{protocol}", ref.nbytes)
    result = client.infer("mlp", [inp], outputs=[out], headers=_auth())
    got = _get(out_handle, np.float32, list(ref.shape))
    np.testing.assert_allclose(got, ref, atol=1e-5)
    described = result.get_output("probabilities")  # the answer names the output, sends no data
    assert [int(d) for d in (described["shape"] if protocol == "http" else described.shape)] == list(
        ref.shape
    )
    body = lib.InferInput("input", list(x.shape), "FP32")
    body.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("mlp", [body], headers=_auth()).as_numpy("probabilities"), got)
    status = client.get_system_shared_memory_status(
        headers=_auth(), **({} if protocol == "http" else {"as_json": True})
    )
    listed = status if protocol == "http" else list(status["regions"].values())
    assert {(r["name"], r["key"], int(r["byte_size"])) for r in listed} >= {
        (f"in-{protocol}", in_key, x.nbytes),
        (f"out-{protocol}", out_key, ref.nbytes),
    }
    client.unregister_system_shared_memory(f"in-{protocol}", headers=_auth())
    with pytest.raises(InferenceServerException, match=f"unknown shared memory region 'in-{protocol}'"):
        client.infer("mlp", [inp], headers=_auth())
    client.close()


ECHO = {
    "fp32": ("FP32", np.array([[1.5, -2.0], [3.25, 4.0]], np.float32)),
    "fp64": ("FP64", np.array([[1e300, -2.5], [0.0, 7.0]], np.float64)),
    "int64": ("INT64", np.array([[2**40, -3], [5, 6]], np.int64)),
    "int32": ("INT32", np.array([[1, -2], [3, 4]], np.int32)),
    "int8": ("INT8", np.array([[-8, 7], [0, 1]], np.int8)),
    "uint8": ("UINT8", np.array([[0, 255], [1, 2]], np.uint8)),
    "bool": ("BOOL", np.array([[True, False], [False, True]])),
    "fp16": ("FP16", np.array([[0.5, -1.0], [2.0, 3.0]], np.float16)),
    "bytes": ("BYTES", np.array([[b"a", b"bc"], [b"", "\u00e9\u20ac".encode()]], dtype=np.object_)),
}
IN_SHM = ("fp32", "int64", "bool", "bytes")  # the rest travel in the body
OUT_SHM = ("fp64", "int8", "bytes")


def _raw(array: np.ndarray) -> bytes:
    return serialize_byte_tensor(array).item() if array.dtype == np.object_ else array.tobytes()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_echo_datatypes_at_offsets_of_one_region_beside_tensors_in_the_body(
    server: ServerProcess, regions: Regions, protocol: str
) -> None:
    client, lib = _client(server, protocol), _lib(protocol)
    spans, offset = {}, 16  # each tensor at its own offset, not at the region's start
    for key in IN_SHM:
        spans[key] = (offset, len(_raw(ECHO[key][1])))
        offset += spans[key][1] + 8
    in_handle, in_key = regions(f"echo-in-{protocol}", offset)
    for key in IN_SHM:
        _put(in_handle, _raw(ECHO[key][1]), spans[key][0])
    out_size = 256
    out_handle, out_key = regions(f"echo-out-{protocol}", out_size)
    client.register_system_shared_memory(f"echo-in-{protocol}", in_key, offset, headers=_auth())
    client.register_system_shared_memory(f"echo-out-{protocol}", out_key, out_size, headers=_auth())
    inputs = []
    for key, (datatype, array) in ECHO.items():
        tensor = lib.InferInput(f"in_{key}", list(array.shape), datatype)
        if key in IN_SHM:
            tensor.set_shared_memory(f"echo-in-{protocol}", spans[key][1], offset=spans[key][0])
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs, out_at = [], {}
    for key in ECHO:
        out = lib.InferRequestedOutput(f"out_{key}")
        if key in OUT_SHM:
            out_at[key] = 64 * OUT_SHM.index(key) + 8
            out.set_shared_memory(f"echo-out-{protocol}", 48, offset=out_at[key])
        outputs.append(out)
    result = client.infer("echo", inputs, outputs=outputs, headers=_auth())
    for key, (datatype, array) in ECHO.items():
        if key in OUT_SHM:
            dtype = np.object_ if datatype == "BYTES" else array.dtype
            got = _get(out_handle, dtype, list(array.shape), out_at[key], len(_raw(array)))
        else:
            got = result.as_numpy(f"out_{key}")
        assert got.shape == array.shape, key
        assert got.tolist() == array.tolist(), key
    client.close()


def test_the_token_comes_before_any_region_and_bad_keys_are_refused(
    server: ServerProcess, regions: Regions
) -> None:
    _, key = regions("guarded", 64)
    doc = {"key": key, "offset": 0, "byte_size": 64}
    url = f"{server.url}/v2/systemsharedmemory"
    assert httpx.post(f"{url}/region/guarded/register", json=doc, timeout=10).status_code == 401
    assert httpx.get(f"{url}/status", timeout=10).status_code == 401
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    with pytest.raises(InferenceServerException) as err:
        client.register_system_shared_memory("guarded", key, 64)
    assert err.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
    client.close()
    assert httpx.get(f"{url}/status", headers=_auth(), timeout=10).json() == []  # nothing was registered
    for bad, words in (
        ({**doc, "key": "/../../etc/passwd"}, "not a POSIX shared-memory name"),
        ({**doc, "key": "/appliance-test-none"}, "no shared memory object"),
        ({**doc, "byte_size": 1 << 20}, "fewer than offset 0 + byte_size 1048576"),
        ({"key": key}, "byte_size must be a non-negative integer"),
    ):
        reply = httpx.post(f"{url}/region/guarded/register", json=bad, headers=_auth(), timeout=10)
        assert reply.status_code == 400 and words in reply.json()["error"], (bad, reply.text)
    assert (
        httpx.post(f"{url}/region/guarded/register", json=doc, headers=_auth(), timeout=10).status_code == 200
    )
    again = httpx.post(f"{url}/region/guarded/register", json=doc, headers=_auth(), timeout=10)
    assert again.status_code == 400 and "already registered" in again.json()["error"]
    cuda = httpx.post(
        f"{server.url}/v2/cudasharedmemory/region/g/register", json={}, headers=_auth(), timeout=10
    )
    assert cuda.status_code == 400 and "use system shared memory" in cuda.json()["error"]
    assert (
        "system_shared_memory"
        in httpx.get(f"{server.url}/v2", headers=_auth(), timeout=10).json()["extensions"]
    )


def test_a_server_without_the_flag_refuses_regions_and_says_how_to_allow_them(
    plain_server: ServerProcess, regions: Regions
) -> None:
    _, key = regions("refused", 64)
    client = triton_http.InferenceServerClient(f"127.0.0.1:{plain_server.http_port}")
    with pytest.raises(InferenceServerException, match="--allow-client-shm"):
        client.register_system_shared_memory("refused", key, 64, headers=_auth())
    assert client.get_system_shared_memory_status(headers=_auth()) == []
    client.unregister_system_shared_memory(
        headers=_auth()
    )  # nothing to drop: still 200 (perf_analyzer does this)
    assert "system_shared_memory" not in client.get_server_metadata(headers=_auth())["extensions"]
    client.close()


def test_forwarded_callers_get_403_even_with_the_token(server: ServerProcess, regions: Regions) -> None:
    """Through the gateway or the replica balancer (they mark what they forward with
    X-Forwarded-Proto, on gRPC too), a valid token does not open the regions."""
    _, key = regions("vouched", 64)
    doc = {"key": key, "offset": 0, "byte_size": 64}
    url = f"{server.url}/v2/systemsharedmemory"
    forwarded = {**AUTH, "x-forwarded-proto": "https"}
    reply = httpx.post(f"{url}/region/vouched/register", json=doc, headers=forwarded, timeout=10)
    assert reply.status_code == 403 and "only for clients on the serving host" in reply.json()["error"]
    assert httpx.get(f"{url}/status", headers=forwarded, timeout=10).status_code == 403
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    with pytest.raises(InferenceServerException) as err:
        client.register_system_shared_memory("vouched", key, 64, headers=forwarded)
    assert err.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)
    client.close()
    assert httpx.get(f"{url}/status", headers=_auth(), timeout=10).json() == []  # nothing was registered
    assert (
        httpx.post(f"{url}/region/vouched/register", json=doc, headers=_auth(), timeout=10).status_code == 200
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another user (CI runs as root)")
def test_a_client_of_another_account_gets_403_with_the_token(server: ServerProcess, regions: Regions) -> None:
    _, key = regions("elsewhere", 64)
    doc = {"key": key, "offset": 0, "byte_size": 64}
    url = f"{server.url}/v2/systemsharedmemory"
    code = (
        "import json, urllib.request, urllib.error\n"
        f"req = urllib.request.Request('{url}/region/elsewhere/register',"
        f" data=json.dumps({doc!r}).encode(),"
        f" headers={{'Authorization': 'Bearer {TOKEN}', 'Content-Type': 'application/json'}})\n"
        "try:\n    print(urllib.request.urlopen(req, timeout=10).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
    )
    other = subprocess.run(
        ["/usr/bin/python3", "-c", code], user=65534, cwd="/", capture_output=True, text=True, timeout=60
    )
    assert other.stdout.startswith("403") and "only for clients on the serving host" in other.stdout, other
    assert httpx.get(f"{url}/status", headers=_auth(), timeout=10).json() == []  # nothing was registered
