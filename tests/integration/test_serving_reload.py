"""Hot reload under concurrent load: the source moves, the server swaps, no request fails.

Two sources are covered: a local folder whose model.onnx is replaced (fast, always runs) and an
MLflow registry alias moved between two registered versions on a real ``mlflow server`` with
SQLite (slow tier: the MLflow server takes a while to start).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from appliance.workloads.serving import downloads
from tests.integration._serving_fixtures import ServerProcess, start_server, training_data, write_mlp

pytestmark = pytest.mark.integration

X = training_data(3, seed=21)
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 8], "data": X.tolist()}]}


def predict(folder: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": X})[0]


class Load:
    """Threads posting requests without pause, recording every failure and version seen."""

    def __init__(self, server: ServerProcess, threads: int = 4) -> None:
        self.url = server.url
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.results: list[tuple[str, list[float]]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    r = c.post("/v2/models/mlp/infer", json=BODY)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code} {r.text}")
                        continue
                    doc = r.json()
                    self.results.append((doc["model_version"], doc["outputs"][0]["data"]))
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def wait_for_version(self, version: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(v == version for v, _ in self.results[-20:]):
                return
            time.sleep(0.05)
        raise AssertionError(f"version {version} never served; failures: {self.failures[:3]}")


def check_swap(load: Load, old: np.ndarray, new: np.ndarray, old_v: str, new_v: str) -> None:
    assert not load.failures, load.failures[:5]
    versions = [v for v, _ in load.results]
    assert old_v in versions and new_v in versions
    first_new = versions.index(new_v)
    assert old_v not in versions[first_new + 50 :]  # once swapped, stays swapped (allowing in-flight)
    for v, data in load.results:
        np.testing.assert_allclose(np.array(data).reshape(3, 3), old if v == old_v else new, rtol=1e-6)


def test_local_model_replaced_under_load(tmp_path: Path) -> None:
    folder = write_mlp(tmp_path / "mlp", seed=0)
    other = write_mlp(tmp_path / "next", seed=1)
    old, new = predict(folder), predict(other)
    assert not np.allclose(old, new)
    server = start_server(["--model", str(folder), "--poll-seconds", "0.2"], tmp_path)
    try:
        with Load(server) as load:
            load.wait_for_version("1")  # traffic flows on the old version before the swap
            tmp = folder / "model.onnx.tmp"
            shutil.copy(other / "model.onnx", tmp)
            os.replace(tmp, folder / "model.onnx")
            load.wait_for_version("2")
            time.sleep(0.5)
        check_swap(load, old, new, "1", "2")
        index = httpx.post(f"{server.url}/v2/repository/index").json()
        assert index == [{"name": "mlp", "version": "2", "state": "READY", "reason": ""}]
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _free_port()
    log = open(tmp_path / "mlflow.log", "wb")  # noqa: SIM115 - closed in teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--default-artifact-root",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError((tmp_path / "mlflow.log").read_text()[-3000:])
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def register(url: str, folder: Path, name: str) -> str:
    """Log a model folder as run artifacts and register it as a new version of ``name``."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(url)
    mlflow.set_experiment("serving-reload")  # this server's, whatever an earlier test chose
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    client = MlflowClient(url)
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(mv.version)


@pytest.mark.slow
def test_registry_alias_moved_under_load(tmp_path: Path, mlflow_server: str) -> None:
    from mlflow import MlflowClient

    v1 = register(mlflow_server, write_mlp(tmp_path / "m1", seed=0), "clf")
    v2 = register(mlflow_server, write_mlp(tmp_path / "m2", seed=1), "clf")
    client = MlflowClient(mlflow_server)
    client.set_registered_model_alias("clf", "champion", v1)
    temp = tmp_path / "temp"  # the server's temporary folder: its downloads go there
    temp.mkdir()
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "TMPDIR": str(temp)}
    server = start_server(
        ["--model", "models:/clf@champion", "--name", "mlp", "--poll-seconds", "0.5"], tmp_path, env=env
    )
    try:
        meta = httpx.get(f"{server.url}/v2/models/mlp").json()
        assert meta["versions"] == [v1]
        with Load(server) as load:
            load.wait_for_version(v1)
            client.set_registered_model_alias("clf", "champion", v2)
            load.wait_for_version(v2)
            time.sleep(0.5)
        check_swap(load, predict(tmp_path / "m1"), predict(tmp_path / "m2"), v1, v2)
        metrics = httpx.get(server.metrics_url).text
        assert (
            f'appliance_model_info{{model="mlp",source="models:/clf@champion",version="{v2}"}} 1.0' in metrics
        )
        # the copy of the version served, in the server's own downloads folder; v1's is gone
        held = sorted(p.name.rsplit("-", 1)[0] for p in temp.glob(f"{downloads.PREFIX}{server.proc.pid}-*/*"))
        assert held == [f"clf-v{v2}"], held
    finally:
        server.stop()
    assert list(temp.glob(f"{downloads.PREFIX}*")) == [], "the server's downloads outlived it"


def test_waits_for_a_model_that_is_not_there_yet(tmp_path: Path) -> None:
    """The stack starts serving before the first champion exists: live, not ready, then ready."""
    folder = tmp_path / "later"
    target = folder / "model.onnx"
    server = start_server(
        ["--model", f"later={target}", "--poll-seconds", "0.3", "--wait-for-model"], tmp_path
    )
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert client.get("/v2/health/live").status_code == 200
            assert client.get("/v2/health/ready").status_code == 503
            assert client.get("/v2/models/later/ready").status_code == 503
            refused = client.post("/v2/models/later/infer", json=BODY)
            assert refused.status_code == 503 and "not loaded" in refused.json()["error"]
            index = client.post("/v2/repository/index", json={}).json()
            assert index == [
                {"name": "later", "version": "", "state": "UNAVAILABLE", "reason": index[0]["reason"]}
            ]
            assert "load failed" in index[0]["reason"]

            staging = tmp_path / "staging"
            write_mlp(staging)
            folder.mkdir()
            shutil.copy(staging / "model.onnx", folder / "model.tmp")
            os.replace(folder / "model.tmp", target)
            deadline = time.monotonic() + 30
            while client.get("/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline, server.log.read_text()[-2000:]
                time.sleep(0.2)
            answer = client.post("/v2/models/later/infer", json=BODY)
            assert answer.status_code == 200, answer.text
            got = np.array(answer.json()["outputs"][0]["data"]).reshape(3, -1)
            np.testing.assert_allclose(got, predict(staging), atol=1e-6)
    finally:
        server.stop()


def test_exits_with_the_reason_when_not_asked_to_wait(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.workloads.serving",
            "--model",
            str(tmp_path / "none.onnx"),
            "--http-port",
            "0",
            "--grpc-port",
            "-1",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0
    assert "none.onnx" in proc.stderr and "--model" in proc.stderr
