"""The model server's repository (admin) API: its own token on REST and gRPC, distinct from the
inference token, and loads only from the sources the server was started with."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tritonclient.grpc import service_pb2 as pb  # not ours: both in one process would clash
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.integration._serving_fixtures import (
    ADMIN,
    ADMIN_TOKEN,
    AUTH,
    REPO,
    TOKEN,
    ServerProcess,
    start_server,
    write_echo,
    write_mlp,
)

pytestmark = pytest.mark.integration

GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}
ADMIN_CALLS = ["/v2/repository/models/echo/unload", "/v2/repository/models/echo/load"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_mlp(root / "mlp")
    write_echo(root / "echo")
    write_mlp(root / "elsewhere", seed=3)  # a valid model the server was not started with
    (root / "token").write_text(TOKEN)
    (root / "admin").write_text(ADMIN_TOKEN)
    return root


def _start(models: Path, logs: Path, *extra: str) -> ServerProcess:
    args = ["--model", str(models / "mlp"), "--model", str(models / "echo"), "--poll-seconds", "0"]
    return start_server([*args, "--token-file", str(models / "token"), *extra], logs)


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = _start(models, tmp_path_factory.mktemp("logs"), "--admin-token-file", str(models / "admin"))
    yield srv
    srv.stop()


def _status(server: ServerProcess, path: str, headers: dict[str, str], **kw: object) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ADMIN_CALLS)
def test_rest_admin_calls_need_the_admin_token(server: ServerProcess, path: str) -> None:
    r = _status(server, path, {})
    assert r.status_code == 401 and "admin token" in r.json()["error"]
    r = _status(server, path, {"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = _status(server, path, AUTH)
    assert r.status_code == 403 and "inference token cannot" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200  # nothing moved
    assert _status(server, path, ADMIN).status_code == 200
    _status(server, "/v2/repository/models/echo/load", ADMIN)  # leave it loaded


def test_the_admin_token_reads_the_index_but_does_not_infer(server: ServerProcess) -> None:
    assert _status(server, "/v2/repository/index", ADMIN).status_code == 200
    assert _status(server, "/v2/repository/index", AUTH).status_code == 200
    assert _status(server, "/v2/repository/index", {}).status_code == 401
    r = _status(server, "/v2/models/mlp/infer", ADMIN, json={"inputs": [GOOD]})
    assert r.status_code == 401
    assert _status(server, "/v2/models/mlp/infer", AUTH, json={"inputs": [GOOD]}).status_code == 200


@pytest.mark.parametrize(
    "uri",
    ["/etc", "ELSEWHERE", "file:///etc/passwd", "s3://other-bucket/model.onnx", "models:/other@champion"],
)
def test_loads_name_only_the_sources_the_server_started_with(
    server: ServerProcess, models: Path, uri: str
) -> None:
    uri = uri.replace("ELSEWHERE", str(models / "elsewhere"))
    r = _status(server, "/v2/repository/models/intruder/load", ADMIN, json={"parameters": {"uri": uri}})
    assert r.status_code == 403, r.text
    assert "only from the sources it was started with" in r.json()["error"]
    assert str(models / "mlp") in r.json()["error"]  # it names the allowed ones
    index = _status(server, "/v2/repository/index", ADMIN).json()
    assert "intruder" not in {m["name"] for m in index}
    # another spelling of an allowed source is the same source
    same = str(models / "elsewhere" / ".." / "mlp")
    r = _status(server, "/v2/repository/models/mlp_copy/load", ADMIN, json={"parameters": {"uri": same}})
    assert r.status_code == 200, r.text


def test_grpc_repository_methods_need_the_admin_token(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [
            (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="echo")),
            (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="echo")),
        ]
        for method, request in calls:
            for metadata, code in [
                ((), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", "Bearer wrong"),), grpc.StatusCode.UNAUTHENTICATED),
                ((("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
            ]:
                with pytest.raises(grpc.RpcError) as err:
                    method(request, metadata=metadata)
                assert err.value.code() == code, (method, metadata)
            method(request, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),))
        ready = stub.ModelReady(
            pb.ModelReadyRequest(name="echo"), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
        assert ready.ready


def test_without_an_admin_token_the_repository_api_is_closed(models: Path, tmp_path: Path) -> None:
    srv = _start(models, tmp_path)
    try:
        for path in ADMIN_CALLS:
            r = _status(srv, path, AUTH)
            assert r.status_code == 403 and "without an admin token" in r.json()["error"]
            assert _status(srv, path, {}).status_code == 401
        assert httpx.get(f"{srv.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    finally:
        srv.stop()


def test_the_admin_token_must_differ_from_the_inference_token(models: Path) -> None:
    cmd = [sys.executable, "-m", "appliance.workloads.serving", "--model", str(models / "mlp")]
    cmd += ["--token-file", str(models / "token"), "--admin-token", TOKEN]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "must differ from the inference token" in proc.stderr
