"""The ONNX graph against the original model on the held-out rows.

A row passes when every output is within ``atol + rtol * |original|`` (numpy's ``isclose`` rule):
absolute for probabilities, relative as well for regression targets in the hundreds, where
float32 arithmetic alone moves the fifth digit. A failure names the worst row.
"""

from __future__ import annotations

import numpy as np

from appliance.workloads.importer.contract import Columns
from appliance.workloads.importer.errors import ParityFailedError, TaskMismatchError

ATOL = 1e-4
RTOL = 1e-5


def run_graph(serialized: bytes, x: np.ndarray) -> np.ndarray:
    """The served graph's output for ``x`` with ONNX Runtime (CPU), as float64.

    Not the trainer's ``onnx_predict``: its module imports torch, which an import of a
    scikit-learn model has no use for (seconds of start-up per import)."""
    import onnxruntime as ort

    session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    return out.astype(np.float64)


def check(
    cols: Columns,
    original: np.ndarray,
    converted: np.ndarray,
    row_ids: np.ndarray,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> float:
    """Max abs difference; ParityFailedError (worst row, both outputs) beyond the tolerance."""
    if original.shape != converted.shape or converted.shape[1:] != (cols.n_outputs,):
        raise TaskMismatchError(
            cols.name,
            cols.dataset,
            f"the model gives {original.shape[1:] or 'a scalar'} per row where {cols.task} on this "
            f"dataset needs ({cols.n_outputs},) ({cols.output})",
        )
    if original.size == 0:
        return 0.0
    diff = np.abs(original - converted)
    excess = diff - (atol + rtol * np.abs(original))
    excess[np.isnan(original) != np.isnan(converted)] = np.inf
    excess[np.isnan(original) & np.isnan(converted)] = -np.inf
    per_row = excess.max(axis=1)
    worst = int(np.argmax(per_row))
    if per_row[worst] > 0:
        row = int(row_ids[worst]) if row_ids[worst] >= 0 else worst
        raise ParityFailedError(
            cols.name,
            atol,
            rtol,
            row,
            [float(v) for v in original[worst]],
            [float(v) for v in converted[worst]],
            float(np.nanmax(diff[worst])) if not np.isnan(diff[worst]).all() else float("nan"),
            len(original),
        )
    return float(np.nanmax(diff)) if not np.isnan(diff).all() else 0.0
