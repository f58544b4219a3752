"""Which datasets are images, and which model kind the built-in trainer fits on them.

A table is an image dataset when its feature columns are exactly the pixels of one grid, named
``pixel_ROW_COL`` in row-major order (``pixel_0_0, pixel_0_1, ..., pixel_7_7``): the naming of
scikit-learn's ``digits``, which ``appliance data seed --dataset digits`` stores as a table. Each
row is then one single-channel image of shape [1, ROWS, COLS], and the model takes a tensor
[batch, 1, ROWS, COLS]. The rule is on the names alone so that a user can bring any grid (a
28x28 set flattened the same way) without a flag, and a table whose columns merely happen to be
numeric is never mistaken for one.
"""

from __future__ import annotations

import re

from appliance.workloads.trainer.errors import SchemaError

PIXEL = re.compile(r"^pixel_(\d+)_(\d+)$")
KINDS = ("auto", "mlp", "cnn")


def image_shape(features: list[str]) -> tuple[int, int, int] | None:
    """[channels, rows, cols] when ``features`` are a full pixel grid in row-major order, else None."""
    cells = [PIXEL.match(name) for name in features]
    if not features or not all(cells):
        return None
    coords = [(int(m.group(1)), int(m.group(2))) for m in cells if m]
    rows = max(r for r, _ in coords) + 1
    cols = max(c for _, c in coords) + 1
    if coords != [(r, c) for r in range(rows) for c in range(cols)]:
        return None
    return (1, rows, cols)


def choose_kind(kind: str, dataset: str, features: list[str]) -> tuple[str, tuple[int, int, int] | None]:
    """The model kind to fit (``auto``: a CNN for an image dataset, else the MLP) and the image shape."""
    if kind not in KINDS:
        raise SchemaError(
            dataset, None, f"cannot be trained as model kind {kind!r}", f"use one of: {', '.join(KINDS)}"
        )
    shape = image_shape(features)
    if kind == "cnn" and shape is None:
        shown = ", ".join(features[:4]) + (", ..." if len(features) > 4 else "")
        raise SchemaError(
            dataset,
            None,
            f"is not an image dataset (its features are {shown})",
            "name the feature columns pixel_ROW_COL in row-major order (as `appliance data seed --dataset "
            "digits` does), or train it with --model-kind mlp",
        )
    if kind == "auto":
        kind = "cnn" if shape is not None else "mlp"
    return kind, (shape if kind == "cnn" else None)
