"""PyTorch modules through torch.onnx, with the served output inside the exported graph.

A classifier that returns logits gets its softmax in the graph (decided on the reference rows:
outputs that are not already probabilities are logits); a regressor's output becomes [batch, 1].
The TorchScript exporter is tried first (well under a second for a small network) and the dynamo
exporter is the fallback, as the built-in trainer does it.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.workloads.importer.contract import INPUT, Columns
from appliance.workloads.importer.converted import Converted

if TYPE_CHECKING:
    import pandas as pd

CONVERTER = "torch.onnx"


def handles(model: Any) -> bool:
    import torch

    return isinstance(model, torch.nn.Module)


def _served(model: Any, cols: Columns, sample: np.ndarray) -> Any:
    import torch

    class Served(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, softmax: bool) -> None:
            super().__init__()
            self.inner, self.softmax = inner, softmax

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            if self.softmax:
                out = torch.softmax(out, dim=-1)
            return out.reshape(x.shape[0], -1)

    model = model.to("cpu")
    _eval(model)
    softmax = False
    if cols.task == "classification":
        with torch.no_grad():
            raw = model(torch.as_tensor(sample, dtype=torch.float32)).reshape(len(sample), -1).numpy()
        probabilities = bool(
            (raw >= 0).all() and (raw <= 1).all() and np.allclose(raw.sum(axis=1), 1.0, atol=1e-3)
        )
        softmax = not probabilities
    served = Served(model, softmax)
    served.training = False  # not .eval(): it would reach the inner module again
    return served


def _eval(model: Any) -> bool:
    """Inference mode; False for a module MLflow saved as a torch.export program (its default when
    given an input example), which is in that mode already and refuses ``eval()``."""
    try:
        model.eval()
    except NotImplementedError:
        return False
    return True


def export(served: Any, n_features: int, output: str, torchscript: bool = True) -> bytes:
    """ONNX bytes of ``served``; ``torchscript=False`` goes straight to the dynamo exporter (the
    TorchScript one switches modes, which an exported program refuses)."""
    import torch

    example = torch.zeros(2, n_features, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        # The exporters report progress on stdout; keep stdout for the command's own summary.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if not torchscript:
                    raise NotImplementedError("an exported program")
                torch.onnx.export(
                    served, (example,), str(path), input_names=[INPUT], output_names=[output],
                    dynamic_axes={INPUT: {0: "batch"}, output: {0: "batch"}}, dynamo=False,
                )  # fmt: skip
            except Exception as first:
                if torchscript:
                    print(f"TorchScript export failed ({first}); trying the dynamo exporter", file=sys.stderr)
                program = torch.onnx.export(
                    served, (example,), input_names=[INPUT], output_names=[output],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True,
                )  # fmt: skip
                assert program is not None
                program.save(str(path), external_data=False)
        return path.read_bytes()


def convert(model: Any, cols: Columns, sample: pd.DataFrame) -> Converted:
    import onnx
    import torch

    served = _served(model, cols, sample.to_numpy(dtype=np.float32)[:256])
    onx = onnx.load_model_from_string(export(served, len(cols.features), cols.output, _eval(model)))

    def original(frame: pd.DataFrame) -> np.ndarray:
        with torch.no_grad():
            out = served(torch.as_tensor(frame.to_numpy(dtype=np.float32)))
        return np.asarray(out.numpy(), dtype=np.float64)

    return Converted(onx, original, CONVERTER)
