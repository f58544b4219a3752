"""ONNX export with a dynamic batch dimension, checked against PyTorch on the test split.

The served artifact is the ONNX graph, not the PyTorch weights, so a model whose export drifts
from what was evaluated must never reach the registry: ``check_parity`` raises, and the caller
registers nothing.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from appliance.workloads.trainer.errors import ParityError
from appliance.workloads.trainer.fit import predict
from appliance.workloads.trainer.model import ImageCNN, ServingModel, TabularMLP

INPUT_NAME = "input"
PARITY_TOLERANCE = 1e-4


def output_name(task: str) -> str:
    return "probabilities" if task == "classification" else "prediction"


def export(model: TabularMLP | ImageCNN, task: str, path: Path) -> Path:
    """Write ``model`` as ONNX to ``path``: input ``input`` [batch, n_features] float32, or
    [batch, channels, rows, cols] for an image model.

    The TorchScript exporter is tried first: for a small MLP it takes well under a second where
    the dynamo exporter takes ten; dynamo is the fallback once the older exporter is gone.
    """
    cpu_model = ServingModel(model.to("cpu"), task).eval()
    shape = getattr(model, "input_shape", None) or (int(model.x_mean.shape[0]),)
    example = torch.zeros(2, *shape, dtype=torch.float32)
    out = output_name(task)
    # The exporters report progress on stdout; keep stdout for the trainer's own summary.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                cpu_model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[out],
                dynamic_axes={INPUT_NAME: {0: "batch"}, out: {0: "batch"}},
                dynamo=False,
            )
        except Exception:
            program = torch.onnx.export(
                cpu_model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[out],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                dynamo=True,
            )
            assert program is not None
            program.save(str(path), external_data=False)
    return path


def graph_input(shape: list[object], x: np.ndarray) -> np.ndarray:
    """Rows of flat features in the graph's input shape: an image model's [batch, C, H, W] takes
    each row reshaped (row-major, as ``images`` names the pixels); a table's input is unchanged."""
    fixed = shape[1:]
    if len(shape) == x.ndim or not all(isinstance(d, int) for d in fixed):
        return x
    return x.reshape(-1, *fixed)


def onnx_predict(path: Path | bytes, x: np.ndarray) -> np.ndarray:
    """Run an ONNX model on ``x`` (rows of the table) with ONNX Runtime (CPU); its first output."""
    import onnxruntime as ort

    source = str(path) if isinstance(path, Path) else path
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    out: np.ndarray = session.run(None, {spec.name: graph_input(spec.shape, x.astype(np.float32))})[0]
    return out


def check_parity(model: TabularMLP | ImageCNN, task: str, path: Path, x_test: np.ndarray) -> float:
    """Max abs difference between ONNX Runtime and PyTorch on ``x_test``; raises above tolerance."""
    expected = predict(model, task, x_test, torch.device("cpu"))
    actual = onnx_predict(path, x_test)
    diff = float(np.abs(actual - expected).max()) if expected.size else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ParityError(diff, PARITY_TOLERANCE)
    return diff
