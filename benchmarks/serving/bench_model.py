"""The benchmark's model and the in-process ONNX Runtime floor.

An MLP with the breast-cancer shape (30 features -> 64 -> 64 -> 2, softmax), built with onnx.helper
from seeded random weights, plus a drift profile from its 'training' data so that the server's
drift statistics run during the benchmark as they do in production.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

N_IN, HIDDEN, N_OUT = 30, 64, 2


def build_model(folder: Path) -> Path:
    """model.onnx plus a drift profile from its 'training' data (so drift stats run in ours)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    dims = [N_IN, HIDDEN, HIDDEN, N_OUT]
    nodes, inits, prev = [], [], "input"
    for i in range(3):
        w = rng.normal(scale=0.2, size=(dims[i], dims[i + 1])).astype(np.float32)
        b = np.zeros(dims[i + 1], np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        prev = f"a{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", N_IN])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", N_OUT])],
        inits,
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        folder / "model.onnx",
    )
    x = rng.normal(size=(1000, N_IN)).astype(np.float32)
    (probs,) = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"input": x})
    feats = []
    for j in range(N_IN):
        edges = np.unique(np.quantile(x[:, j], np.linspace(0, 1, 11)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, x[:, j], side="right"), minlength=len(edges) + 1)
        feats.append({"name": f"f{j}", "edges": edges.tolist(), "counts": counts.tolist()})
    pred = np.bincount(probs.argmax(1), minlength=N_OUT)
    profile = {
        "version": 1,
        "input_name": "input",
        "n_rows": 1000,
        "features": feats,
        "prediction": {"kind": "class", "edges": [0.5], "counts": pred.tolist()},
    }
    (folder / "drift_profile.json").write_text(json.dumps(profile))
    return folder / "model.onnx"


def ort_floor(
    model: Path, x: np.ndarray, seconds: float, providers: tuple[str, ...] = ("CPUExecutionProvider",)
) -> dict[str, float]:
    """Latency and requests/s of one single-threaded session running ``x`` back to back."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), so, providers=list(providers))
    for _ in range(200):
        sess.run(None, {"input": x})
    lat = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        lat.append(time.perf_counter() - t0)
    a = np.array(lat)
    return {
        "p50_ms": float(np.percentile(a, 50) * 1e3),
        "p99_ms": float(np.percentile(a, 99) * 1e3),
        "rps_1": len(a) / seconds,
    }


CNN_SHAPE = (3, 64, 64)
CNN_CLASSES = 10


def build_cnn(folder: Path) -> Path:
    """A small CNN whose compute dominates: [N,3,64,64] -> three 3x3 convolutions (16, 32, 64
    channels, ReLU, 2x2 max-pools between) -> global average pool -> 10-way softmax. About 11 M
    multiply-adds per image (~0.6-1 ms on one core), against ~8 K for the MLP. No drift profile:
    an image model is watched on its outputs alone."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    nodes, inits, prev, channels = [], [], "input", CNN_SHAPE[0]
    for i, out in enumerate((16, 32, 64)):
        w = rng.normal(scale=(2 / (channels * 9)) ** 0.5, size=(out, channels, 3, 3)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"k{i}"),
            numpy_helper.from_array(np.zeros(out, np.float32), f"c{i}"),
        ]
        nodes += [
            helper.make_node("Conv", [prev, f"k{i}", f"c{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
        ]
        prev, channels = f"relu{i}", out
        if i < 2:
            nodes.append(
                helper.make_node("MaxPool", [prev], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2])
            )
            prev = f"pool{i}"
    w = rng.normal(scale=0.1, size=(channels, CNN_CLASSES)).astype(np.float32)
    inits += [
        numpy_helper.from_array(w, "wf"),
        numpy_helper.from_array(np.zeros(CNN_CLASSES, np.float32), "bf"),
    ]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *CNN_SHAPE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CNN_CLASSES])],
        inits,
    )
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
        folder / "model.onnx",
    )
    return folder / "model.onnx"


MODELS = ("mlp", "cnn")


def build_named(name: str, folder: Path, rows: int = 1) -> tuple[Path, np.ndarray]:
    """The benchmark model called ``name`` (``mlp`` or ``cnn``) built in ``folder``, and a seeded
    input of ``rows`` rows for it: what every serving benchmark starts from."""
    rng = np.random.default_rng(1)
    if name == "mlp":
        return build_model(folder), rng.normal(size=(rows, N_IN)).astype(np.float32)
    if name == "cnn":
        return build_cnn(folder), rng.normal(size=(rows, *CNN_SHAPE)).astype(np.float32)
    raise ValueError(f"unknown model {name!r}: use {', '.join(MODELS)}")


def _floor_worker(model: str, x: np.ndarray, seconds: float, out: Any, cpus: set[int] | None) -> None:
    import os

    if cpus:
        os.sched_setaffinity(0, cpus)
    out.put(ort_floor(Path(model), x, seconds)["rps_1"])


def ort_floor_cores(
    model: Path, x: np.ndarray, seconds: float, processes: int, cpus: set[int] | None = None
) -> float:
    """Requests/s of ONNX Runtime alone, in-process, on ``processes`` cores at once (one
    single-threaded session per process, no server, no network): the most replicas can reach.
    ``cpus``: the cores the processes may use (those the servers are pinned to)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_floor_worker, args=(str(model), x, seconds, queue, cpus))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    total = sum(queue.get(timeout=seconds * 10 + 120) for _ in procs)
    for p in procs:
        p.join()
    return float(total)
