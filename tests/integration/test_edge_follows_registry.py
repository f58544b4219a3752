"""An edge model server follows a central MLflow registry with its read-only account.

A real MLflow (basic-auth, SQLite, artifact proxy) holds two registered models of different
shapes (one version with its weights in an external data file); the edge server follows
``@champion`` of both with MLflow's reader account, a cache folder of its own and nothing else of
the central stack. The champion is promoted: the edge serves the new versions. MLflow stops: the
edge keeps answering with the last good versions, and a restart of the edge itself while MLflow
is gone loads them from its cache. MLflow comes back and a newer champion is promoted: the edge
catches up. An edge stack (``appliance up``, edge profile) reads with a box's own account, as the
central answers' ``edge_boxes`` make it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from appliance.mlflow_auth import (
    ADMIN_USER,
    EDGE_PASSWORDS_ENV,
    PASSWORD_ENV,
    READER_USER,
    WRITER_USER,
    edge_account,
    edge_secret,
)
from appliance.mlflow_login import AUTHORIZATION_FUNCTION
from tests.integration._controller_fixtures import wait_for
from tests.integration._serving_fixtures import ServerProcess, start_server, training_data, write_mlp

pytestmark = pytest.mark.integration

PASSWORDS = {ADMIN_USER: "edge-admin-pw-1", WRITER_USER: "edge-writer-pw-2", READER_USER: "edge-reader-pw-3"}
BOX, BOX_PASSWORD = "shop-12", "edge-box-pw-4"
"""A standalone box with its own account (the central answers' ``edge_boxes``), as the central
stack's accounts job makes it."""
MLP_X = training_data(3, seed=5)
LIN_X = np.random.default_rng(9).normal(size=(2, 4)).astype(np.float32)


def write_linear(folder: Path, seed: int, external: bool = False) -> Path:
    """A second kind of model: 4 features of another 'dataset' -> one score (sigmoid); with
    ``external``, its weights in a file beside it, as MLflow's ``onnx.log_model`` saves by default
    (named by a uuid)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(4, 1)).astype(np.float32)
    b = rng.normal(size=(1,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["score"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        folder / "model.onnx",
        save_as_external_data=external,
        size_threshold=0,
    )
    assert len(list(folder.iterdir())) == (2 if external else 1)
    return folder


def expected(folder: Path, name: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mlflow:
    """MLflow as the stack runs it (appliance.mlflow_server, basic-auth), stoppable and
    restartable on the same port and database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        (root / "basic_auth.ini").write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{root}/basic_auth.db\nadmin_username = {ADMIN_USER}\n"
            f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
            "grant_default_workspace_access = false\n"
        )

    def start(self) -> None:
        env = os.environ | {
            "MLFLOW_AUTH_CONFIG_PATH": str(self.root / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORDS[ADMIN_USER],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "edge-test-flask-key",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        cmd = [sys.executable, "-m", "appliance.mlflow_server", "--app-name", "basic-auth"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root}/mlflow.db", "--serve-artifacts"]
        cmd += ["--artifacts-destination", str(self.root / "artifacts")]
        log = open(self.root / "mlflow.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root)
        log.close()
        wait_for("MLflow", lambda: self._healthy() or None, 120)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError((self.root / "mlflow.log").read_text()[-3000:])
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mlflow]:
    server = Mlflow(tmp_path)
    server.start()
    try:
        env = (
            os.environ
            | {"MLFLOW_TRACKING_URI": server.url}
            | {v: PASSWORDS[u] for u, v in PASSWORD_ENV.items()}
            | {EDGE_PASSWORDS_ENV: json.dumps({edge_account(BOX): BOX_PASSWORD})}
        )
        job = subprocess.run(
            [sys.executable, "-m", "appliance.mlflow_auth"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job.returncode == 0, job.stderr
        # this process registers and promotes as the writer, like the trainer and the controller
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", WRITER_USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS[WRITER_USER])
        yield server
    finally:
        server.stop()


def register(folder: Path, name: str, experiment: str = "edge") -> str:
    """A new version of ``name`` from the model folder, logged as a run of ``experiment``."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), artifact_path="model")
    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)
    return str(
        client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version
    )


def promote(name: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, "champion", version)


def answer(server: ServerProcess, model: str, x: np.ndarray, input_name: str) -> tuple[str, np.ndarray]:
    body = {
        "inputs": [
            {"name": input_name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    r = httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(x.shape[0], -1)


def serves(server: ServerProcess, model: str, version: str, folder: Path) -> None:
    """``server`` answers for ``model`` with ``version``, and the answer is that version's."""
    x, input_name = (MLP_X, "input") if model == "fraud" else (LIN_X, "x")
    wait_for(f"{model} version {version}", lambda: answer(server, model, x, input_name)[0] == version, 60)
    got_version, got = answer(server, model, x, input_name)
    assert got_version == version
    np.testing.assert_allclose(got, expected(folder, input_name, x), rtol=1e-5, atol=1e-6)


def index(server: ServerProcess) -> dict[str, dict[str, str]]:
    return {e["name"]: e for e in httpx.post(f"{server.url}/v2/repository/index", timeout=10).json()}


@pytest.mark.slow
def test_edge_follows_the_champion_serves_through_an_outage_and_catches_up(
    tmp_path: Path, mlflow: Mlflow
) -> None:
    folders = {
        ("fraud", 1): write_mlp(tmp_path / "fraud1", seed=0),
        ("fraud", 2): write_mlp(tmp_path / "fraud2", seed=1),
        ("fraud", 3): write_mlp(tmp_path / "fraud3", seed=2),
        ("churn", 1): write_linear(tmp_path / "churn1", seed=0),
        ("churn", 2): write_linear(tmp_path / "churn2", seed=1, external=True),  # through the outage
    }
    versions = {key: register(folder, key[0]) for key, folder in folders.items() if key != ("fraud", 3)}
    promote("fraud", versions["fraud", 1])
    promote("churn", versions["churn", 1])

    edge = tmp_path / "edge"
    edge.mkdir()
    password = edge / "registry_reader_password"
    password.write_text(PASSWORDS[READER_USER] + "\n")
    password.chmod(0o600)
    args = [
        "--registry-url",
        mlflow.url,
        "--registry-user",
        READER_USER,
        "--registry-password-file",
        str(password),
    ]
    args += ["--cache-dir", str(edge / "cache"), "--poll-seconds", "0.5", "--wait-for-model"]
    args += ["--model", "fraud=models:/fraud@champion", "--model", "churn=models:/churn@champion"]
    # the edge has the reader's account only: nothing of the writer's reaches it
    env = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_TRACKING_USERNAME": "",
        "MLFLOW_TRACKING_PASSWORD": "",
    }
    server = start_server(args, tmp_path, env=env)
    try:
        serves(server, "fraud", versions["fraud", 1], folders["fraud", 1])
        serves(server, "churn", versions["churn", 1], folders["churn", 1])

        promote("fraud", versions["fraud", 2])
        promote("churn", versions["churn", 2])
        serves(server, "fraud", versions["fraud", 2], folders["fraud", 2])
        serves(server, "churn", versions["churn", 2], folders["churn", 2])

        mlflow.stop()
        wait_for("the outage noted", lambda: "unreachable" in index(server)["fraud"]["reason"], 60)
        for _ in range(3):
            serves(server, "fraud", versions["fraud", 2], folders["fraud", 2])
            serves(server, "churn", versions["churn", 2], folders["churn", 2])
            time.sleep(0.5)
        assert {e["state"] for e in index(server).values()} == {"READY"}
        server.stop()

        started = time.monotonic()
        server = start_server(args, tmp_path, env=env)  # restarted while the registry is gone
        restart_s = time.monotonic() - started
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        serves(server, "fraud", versions["fraud", 2], folders["fraud", 2])
        serves(server, "churn", versions["churn", 2], folders["churn", 2])
        assert "cached version" in index(server)["churn"]["reason"]
        print(f"edge restart with the registry down: ready in {restart_s:.1f}s")

        mlflow.start()
        versions["fraud", 3] = register(folders["fraud", 3], "fraud")
        promote("fraud", versions["fraud", 3])
        serves(server, "fraud", versions["fraud", 3], folders["fraud", 3])
        serves(server, "churn", versions["churn", 2], folders["churn", 2])
        wait_for("the outage cleared", lambda: index(server)["churn"]["reason"] == "", 30)
    finally:
        server.stop()
        print(server.log.read_text()[-2000:])


@pytest.mark.slow
def test_an_edge_stack_named_after_the_central_registry_comes_up_and_serves_its_champions(
    tmp_path: Path, mlflow: Mlflow
) -> None:
    """The edge profile's own ``appliance up`` (local runtime, the model server alone), reading
    with the box's own account: preflight fails, naming the central secret to copy, until that
    password is copied in; then the stack serves both champions; with the registry gone, preflight
    passes on the cached versions with a warning."""
    from tests.conftest import run_cli, write_answers

    folders = {
        "fraud": write_mlp(tmp_path / "fraud", seed=7),
        "churn": write_linear(tmp_path / "churn", seed=8),
    }
    versions = {name: register(folder, name) for name, folder in folders.items()}
    for name, version in versions.items():
        promote(name, version)
    answers = write_answers(
        tmp_path / "edge.yaml",
        profile="edge",
        object_store={"kind": "filesystem"},
        components={"monitoring": False},
        models=[{"name": "fraud"}, {"name": "churn"}],
        serving={"registry": {"url": mlflow.url, "username": edge_account(BOX)}, "poll_seconds": 1},
    )
    state = tmp_path / "state"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, answers=answers, state=state, check=False, timeout=600)

    refused = cli("preflight")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    said = refused.stdout + refused.stderr
    assert "mlflow_reader_password" in said and edge_secret(BOX) in said, said
    secret = state / "secrets" / "mlflow_reader_password"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(BOX_PASSWORD)
    secret.chmod(0o600)
    try:
        up = cli("up")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        port = yaml.safe_load(answers.read_text())["ports"]["serving_http"]
        token = (state / "secrets" / "serving_token").read_text().strip()
        for name, (x, input_name) in {"fraud": (MLP_X, "input"), "churn": (LIN_X, "x")}.items():
            body = {
                "inputs": [
                    {
                        "name": input_name,
                        "datatype": "FP32",
                        "shape": list(x.shape),
                        "data": x.ravel().tolist(),
                    }
                ]
            }

            def answered(name: str = name, body: dict[str, Any] = body) -> httpx.Response | None:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/v2/models/{name}/infer",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
                return r if r.status_code == 200 else None

            doc = wait_for(f"{name} served", answered, 120).json()
            assert doc["model_version"] == versions[name]
            got = np.array(doc["outputs"][0]["data"]).reshape(x.shape[0], -1)
            np.testing.assert_allclose(got, expected(folders[name], input_name, x), rtol=1e-5, atol=1e-6)
        mlflow.stop()
        offline = cli("preflight")
        out = offline.stdout + offline.stderr
        assert offline.returncode == 0, out
        assert "cannot be reached" in out and f"version {versions['fraud']} cached" in out
    finally:
        cli("down")
