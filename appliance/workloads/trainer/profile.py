"""The drift reference profile (``drift_profile.json``, format in docs/interfaces.md).

The model server compares live traffic against this profile (PSI per feature and on the
predictions), so it is built from the very rows the model learned from: the training split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BINS = 10


def quantile_edges(values: np.ndarray, bins: int = BINS) -> list[float]:
    """Interior cut points of ``bins`` quantile bins, de-duplicated (ascending, at most bins-1)."""
    qs = np.quantile(values.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return [float(e) for e in np.unique(qs)]


def histogram(values: np.ndarray, edges: list[float]) -> list[int]:
    """Rows per bin, with a value's bin given by ``searchsorted(edges, x, side="right")``."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values.astype(np.float64), side="right")
    return [int(c) for c in np.bincount(idx, minlength=len(edges) + 1)]


def build(
    features: list[str],
    x_train: np.ndarray,
    output: np.ndarray,
    task: str,
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """The profile of the training features and of the model's predictions on them.

    An image model (``input_shape`` [channels, rows, cols]) gets no per-feature entries: a pixel's
    PSI says little, and the server then watches the distribution of its outputs alone. Its
    ``columns`` still name the dataset columns it reads (row-major into the image), so that a
    retrain can be checked against the columns the champion was trained on.
    """
    feats = []
    for i, name in enumerate([] if input_shape else features):
        edges = quantile_edges(x_train[:, i])
        feats.append({"name": name, "edges": edges, "counts": histogram(x_train[:, i], edges)})
    if task == "classification":
        n_classes = output.shape[1]
        edges = [c + 0.5 for c in range(n_classes - 1)]
        prediction = {"kind": "class", "edges": edges, "counts": histogram(output.argmax(axis=1), edges)}
    else:
        values = output[:, 0]
        edges = quantile_edges(values)
        prediction = {"kind": "value", "edges": edges, "counts": histogram(values, edges)}
    out: dict[str, Any] = {
        "version": 1,
        "input_name": "input",
        "n_rows": int(x_train.shape[0]),
        "features": feats,
        "prediction": prediction,
    }
    if input_shape:
        out["input_shape"] = list(input_shape)
        out["columns"] = list(features)
    return out
