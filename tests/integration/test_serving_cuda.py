"""The CUDA execution provider: replicas sharing one GPU serve two models with the CPU's answers.

Where onnxruntime-gpu sees a GPU, one supervisor runs two replicas with ``--execution-provider
cuda`` and two models (an MLP classifier and a small CNN): both replicas hold a CUDA context on the
same GPU (nvidia-smi lists their processes), every model warms up on CUDA, and answers over REST
and gRPC match ONNX Runtime on the CPU (within TF32's rounding: ONNX Runtime's CUDA matrix
products and convolutions run in TF32 by default). Without a GPU (CI) those tests skip with the
reason, and one test checks what a user without the CUDA provider sees: ``--execution-provider
cuda`` refuses to start, naming the provider and the fix, instead of serving slowly on the CPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.integration._serving_fixtures import (
    REPO,
    Supervised,
    infer_body,
    reference,
    start_supervisor,
    training_data,
    write_mlp,
)

TOKEN = "cuda-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CNN_SHAPE = (3, 32, 32)


def gpu_missing() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi is not installed"
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    if listed.returncode != 0 or "GPU" not in listed.stdout:
        return f"no GPU: nvidia-smi -L says {listed.stdout or listed.stderr!r}"
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        return "nginx (the replicas' balancer) is not installed"
    return None


NO_GPU = gpu_missing()
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=str(NO_GPU))


def write_cnn(folder: Path, seed: int = 1) -> Path:
    """A small CNN, [N,3,32,32] -> two 3x3 convolutions (8, 16 channels) -> global average pool ->
    5-way softmax: the convolutions are what CUDA and the CPU compute differently."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w0 = rng.normal(scale=0.3, size=(8, 3, 3, 3)).astype(np.float32)
    w1 = rng.normal(scale=0.2, size=(16, 8, 3, 3)).astype(np.float32)
    wf = rng.normal(scale=0.5, size=(16, 5)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w0, "w0"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(wf, "wf"),
        numpy_helper.from_array(np.zeros(5, np.float32), "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p0", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *CNN_SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, folder / "model.onnx")
    return folder


def smi(*query: str) -> str:
    """nvidia-smi's CSV answer (no header, no units) to ``query``."""
    return subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def gpu_memory_used_mib() -> int:
    return int(smi("--query-gpu=memory.used").split()[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cuda-models")
    write_mlp(root / "mlp")
    write_cnn(root / "cnn")
    return root


@pytest.fixture(scope="module")
def service(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Supervised, int]]:
    """The supervisor with two CUDA replicas, and the GPU memory in use before it started (MiB)."""
    if NO_GPU is not None:
        pytest.skip(NO_GPU)
    tmp = tmp_path_factory.mktemp("cuda")
    (tmp / "token").write_text(TOKEN)
    before = gpu_memory_used_mib()
    svc = start_supervisor(
        tmp,
        ["--min-replicas", "2", "--max-replicas", "2"],
        ["--model", f"mlp={models / 'mlp'}", "--model", f"cnn={models / 'cnn'}",
         "--execution-provider", "cuda", "--poll-seconds", "0", "--token-file", str(tmp / "token")],
        ready=2,
        timeout=180,
    )  # fmt: skip
    yield svc, before
    svc.stop()


@needs_gpu
def test_both_replicas_hold_a_context_on_the_one_gpu(service: tuple[Supervised, int]) -> None:
    svc, memory_before_mib = service
    pids = {r["pid"] for r in svc.status()["replicas"]}
    assert len(pids) == 2
    apps = smi("--query-compute-apps=pid,used_memory")
    on_gpu = {int(line.split(",")[0]) for line in apps.splitlines() if line.strip()}
    assert pids <= on_gpu, f"replicas {sorted(pids)} not all on the GPU: nvidia-smi lists {apps!r}"
    grown = gpu_memory_used_mib() - memory_before_mib
    assert grown > 100, f"GPU memory grew by {grown} MiB with two CUDA replicas"


@needs_gpu
def test_every_model_warmed_up_on_cuda_in_every_replica(service: tuple[Supervised, int]) -> None:
    text = service[0].log.read_text()
    for model in ("mlp", "cnn"):
        providers = re.findall(rf"model {model} v\S+ warm on (\w+)", text)
        assert providers == ["CUDAExecutionProvider"] * 2, f"{model}: warmed up on {providers}"


def rest_infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    r = httpx.post(f"{url}/v2/models/{model}/infer", json=infer_body(x), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    return np.array(out["data"], np.float32).reshape(out["shape"])


def grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, x: np.ndarray) -> np.ndarray:
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    resp = stub.ModelInfer(req, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
    shape = list(resp.outputs[0].shape)
    return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(shape)


@needs_gpu
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_answers_match_the_cpu_over_rest_and_grpc(
    service: tuple[Supervised, int], models: Path, model: str
) -> None:
    svc = service[0]
    rng = np.random.default_rng(7)
    # ONNX Runtime runs matrix products and convolutions in TF32 on CUDA by default: probabilities
    # moved by up to 4e-4 (MLP) on an H200
    tol = 2e-3 if model == "mlp" else 5e-3
    with grpc.insecure_channel(svc.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for rows in (1, 3, 16, 1, 5):  # several batch sizes, spread over both replicas
            if model == "mlp":
                x = training_data(rows, seed=rows)
            else:
                x = rng.normal(size=(rows, *CNN_SHAPE)).astype(np.float32)
            want = reference(models, x, model)
            for got in (rest_infer(svc.http, model, x), grpc_infer(stub, model, x)):
                assert got.shape == want.shape
                np.testing.assert_allclose(got, want, atol=tol)


@pytest.mark.skipif(
    NO_GPU is None, reason="the CUDA provider is here: the refusal needs a machine without it"
)
def test_cuda_refused_where_onnxruntime_has_no_cuda(models: Path, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    cmd = [
        sys.executable, "-m", "appliance.workloads.serving",
        "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
        "--model", f"cnn={models / 'cnn'}", "--execution-provider", "cuda",
        "--token-file", str(tmp_path / "token"),
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "CUDAExecutionProvider" in err, err[-2000:]
    assert "--execution-provider cpu or auto" in err, err[-2000:]
    assert '"ready"' not in proc.stdout
