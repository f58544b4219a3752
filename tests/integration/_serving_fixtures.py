"""Test models and a real server process for the serving tests (imported explicitly).

The models are built with onnx.helper from numpy weights: an MLP classifier with the layout of
docs/interfaces.md (input ``input`` float32 [batch, 8] -> ``probabilities`` [batch, 3]) plus a
drift profile computed from its training data, and an ``echo`` model with one Identity per
datatype to check every protocol datatype round trip.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
N_FEATURES = 8
N_CLASSES = 3
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def training_data(rows: int = 2000, seed: int = 0) -> np.ndarray:
    """The 'training' distribution: independent normals with per-feature mean and scale."""
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(rows, N_FEATURES)) * np.arange(1, N_FEATURES + 1) + np.arange(N_FEATURES)
    ).astype(np.float32)


def mlp_graph(seed: int = 0, hidden: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(scale=0.3, size=(N_FEATURES, hidden)).astype(np.float32)
    b1 = rng.normal(scale=0.1, size=(hidden,)).astype(np.float32)
    w2 = rng.normal(scale=0.3, size=(hidden, N_CLASSES)).astype(np.float32)
    b2 = rng.normal(scale=0.1, size=(N_CLASSES,)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", N_CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def drift_profile(x: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> dict:
    """A profile per docs/interfaces.md: quantile edges per feature, class counts of the argmax."""
    features = []
    for j, name in enumerate(FEATURES):
        edges = np.unique(np.quantile(x[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, x[:, j], side="right"), minlength=len(edges) + 1)
        features.append({"name": name, "edges": edges.tolist(), "counts": counts.tolist()})
    cls = probabilities.argmax(axis=1)
    class_edges = [c + 0.5 for c in range(N_CLASSES - 1)]
    class_counts = np.bincount(np.searchsorted(class_edges, cls, side="right"), minlength=N_CLASSES)
    return {
        "version": 1,
        "input_name": "input",
        "n_rows": int(x.shape[0]),
        "features": features,
        "prediction": {"kind": "class", "edges": class_edges, "counts": class_counts.tolist()},
    }


def write_mlp(folder: Path, seed: int = 0) -> Path:
    """A model folder (model.onnx + drift_profile.json) as the trainer registers it."""
    folder.mkdir(parents=True, exist_ok=True)
    model = mlp_graph(seed)
    onnx.save(model, folder / "model.onnx")
    x = training_data()
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(None, {"input": x})
    (folder / "drift_profile.json").write_text(json.dumps(drift_profile(x, probs)))
    return folder


def matmul_weights(scale: float = 1.0) -> np.ndarray:
    """The one tensor of ``matmul_graph``: [3, 4] float32, 0..11 times ``scale``."""
    return (np.arange(12, dtype=np.float32).reshape(3, 4) * scale).astype(np.float32)


def matmul_graph(scale: float = 1.0) -> onnx.GraphProto:
    """``y = x @ w`` with x [batch, 3] and y [batch, 4]: one weights tensor, so where its bytes are
    kept (inside the model or beside it) is all that differs between two saves."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(matmul_weights(scale), "w")],
    )


def write_external_matmul(folder: Path, scale: float = 1.0, location: str | None = None) -> Path:
    """A model folder whose model.onnx keeps its weights in a file beside it: ``location``, or a
    name made of a uuid as MLflow's ``onnx.log_model`` saves by default. Models of one
    ``location`` and different ``scale`` differ in that file alone (model.onnx byte for byte the
    same)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = helper.make_model(matmul_graph(scale), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(
        model, str(folder / "model.onnx"), save_as_external_data=True, location=location, size_threshold=0
    )
    return folder


ECHO_TYPES = {
    "fp32": TensorProto.FLOAT,
    "fp16": TensorProto.FLOAT16,
    "fp64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
    "bytes": TensorProto.STRING,
}


def write_echo(folder: Path) -> Path:
    """A model whose output ``out_T`` is its input ``in_T`` for each datatype T."""
    folder.mkdir(parents=True, exist_ok=True)
    nodes, inputs, outputs = [], [], []
    for key, t in ECHO_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{key}"], [f"out_{key}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{key}", t, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{key}", t, ["batch", 2]))
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        folder / "model.onnx",
    )
    return folder


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class ServerProcess:
    """A running ``python -m appliance.workloads.serving``."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stop(self) -> None:
        stop_process(self.proc, 10)


def start_server(
    args: list[str], log_dir: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> ServerProcess:
    """Start the server on free ports and wait for its ready line (the ports it bound)."""
    log = log_dir / f"serving-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable,
        "-m",
        "appliance.workloads.serving",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--metrics-port",
        "0",
        *args,
    ]
    full_env = {**os.environ, **(env or {})}
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, env=full_env)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        if sel.select(0.2):
            chunk = os.read(proc.stdout.fileno(), 65536)
            buf += chunk
            for line in buf.splitlines():
                if line.startswith(b"{") and b'"ready"' in line:
                    ready = json.loads(line)
                    return ServerProcess(
                        proc,
                        ready["http_port"],
                        ready.get("grpc_port", -1),
                        ready.get("metrics_port", -1),
                        log,
                    )
    proc.kill()
    raise RuntimeError(f"server not ready in {timeout}s: {log.read_text()[-3000:]}")


@dataclass
class Supervised:
    """A running serving supervisor (nginx in front of model-server replicas): its public ports,
    its admin API (the replica count, /metrics) and its log."""

    proc: subprocess.Popen[bytes]
    http: str
    grpc_target: str
    admin: str
    log: Path
    admin_headers: dict[str, str]

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"{self.admin}/replicas", headers=self.admin_headers, timeout=10)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def scale(self, n: int) -> httpx.Response:
        return httpx.put(
            f"{self.admin}/replicas", headers=self.admin_headers, json={"replicas": n}, timeout=10
        )

    def metrics(self) -> str:
        return httpx.get(f"{self.admin}/metrics", timeout=30).text

    def wait_ready(self, n: int, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the supervisor exited: {self.tail()}"
            st = self.status()
            if st["ready"] == n and len(st["replicas"]) == n:
                return st
            time.sleep(0.2)
        raise AssertionError(f"not {n} ready replicas within {timeout}s: {self.status()}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text()[-4000:]

    def stop(self) -> None:
        stop_process(self.proc, 60)


def start_supervisor(
    tmp: Path,
    supervisor_args: list[str],
    server_args: list[str],
    admin_token: str | None = None,
    ready: int = 1,
    timeout: float = 90,
) -> Supervised:
    """``python -m appliance.workloads.serving.supervisor`` on free ports with ``supervisor_args``
    (the replica bounds), the model servers with ``server_args``; back once ``ready`` replicas are
    in the balancer. ``admin_token`` goes to ``tmp/admin``, which server_args may name too."""
    from tests.conftest import free_port

    http, grpc_port, admin = free_port(), free_port(), free_port()
    admin_args = []
    if admin_token is not None:
        (tmp / "admin").write_text(admin_token)
        admin_args = ["--admin-token-file", str(tmp / "admin")]
    log = tmp / "supervisor.log"
    cmd = [
        sys.executable, "-m", "appliance.workloads.serving.supervisor", *supervisor_args,
        "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(admin),
        *admin_args, "--run-dir", str(tmp / "run"), "--", *server_args,
    ]  # fmt: skip
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    svc = Supervised(
        proc,
        f"http://127.0.0.1:{http}",
        f"127.0.0.1:{grpc_port}",
        f"http://127.0.0.1:{admin}",
        log,
        {"Authorization": f"Bearer {admin_token}"} if admin_token else {},
    )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, svc.tail()
        try:
            svc.status()
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, f"the supervisor's admin port never answered: {svc.tail()}"
            time.sleep(0.2)
    svc.wait_ready(ready, timeout)
    return svc


# --- the REST test modules' server: import rest_models, rest_server, rest_client (fixtures
# 'models', 'server', 'client'); module-scoped, so one server per importing module ---

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = "adm1n-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module", name="models")
def rest_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_mlp(root / "mlp")
    write_echo(root / "echo")
    return root


@pytest.fixture(scope="module", name="server")
def rest_server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    token_file = models / "token"
    token_file.write_text(TOKEN + "\n")
    admin_file = models / "admin_token"
    admin_file.write_text(ADMIN_TOKEN + "\n")
    srv = start_server(
        [
            "--model",
            str(models / "mlp"),
            "--model",
            str(models / "echo"),
            "--token-file",
            str(token_file),
            "--admin-token-file",
            str(admin_file),
            "--limit",
            "max_body_bytes=200000",
            "--poll-seconds",
            "0",
        ],
        tmp_path_factory.mktemp("logs"),
    )
    yield srv
    srv.stop()


@pytest.fixture(name="client")
def rest_client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as c:
        yield c


def reference(models: Path, x: np.ndarray, model: str = "mlp") -> np.ndarray:
    """What ONNX Runtime on the CPU answers for ``x`` with ``models/model``'s model."""
    sess = ort.InferenceSession(str(models / model / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}],
        **extra,
    }


# Raw HTTP/1.1 on a socket, for the tests that need to see exactly what the server sends.


def read_response(s: socket.socket, buf: bytearray | None = None) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket (``buf`` carries bytes read past it between calls)."""
    data = buf if buf is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {bytes(data)!r}")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        rest += chunk
    data[:] = rest[length:]
    return status, headers, rest[:length]


def head(method: str, target: str, *lines: str, token: str | None = TOKEN) -> bytes:
    auth = [f"Authorization: Bearer {token}"] if token else []
    return "\r\n".join([f"{method} {target} HTTP/1.1", "Host: x", *auth, *lines, "", ""]).encode()
