"""The image model kind: how an image dataset is recognised, and the CNN's fit, export and parity
on scikit-learn's digits as 1x8x8 images (in process, no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from appliance.workloads.trainer.errors import SchemaError
from appliance.workloads.trainer.export import check_parity, export, onnx_predict
from appliance.workloads.trainer.fit import FitConfig, fit, predict
from appliance.workloads.trainer.images import choose_kind, image_shape
from appliance.workloads.trainer.prepare import split
from appliance.workloads.trainer.schema import validate

GRID = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]


def test_a_full_row_major_pixel_grid_is_an_image() -> None:
    assert image_shape(GRID) == (1, 8, 8)
    assert image_shape([f"pixel_{r}_{c}" for r in range(2) for c in range(3)]) == (1, 2, 3)


@pytest.mark.parametrize(
    "features",
    [
        GRID[:-1],  # a pixel missing
        [*GRID[1:], GRID[0]],  # not row-major
        [*GRID, "age"],  # another column
        ["mean radius", "mean texture"],
        [],
    ],
)
def test_anything_else_is_a_table(features: list[str]) -> None:
    assert image_shape(features) is None
    assert choose_kind("auto", "t", features) == ("mlp", None)


def test_cnn_on_a_table_names_the_columns_and_the_fix() -> None:
    with pytest.raises(SchemaError) as err:
        choose_kind("cnn", "wine", ["alcohol", "malic_acid"])
    assert "wine" in err.value.message and "alcohol" in err.value.message
    assert "pixel_ROW_COL" in (err.value.fix or "") and "--model-kind mlp" in (err.value.fix or "")
    assert choose_kind("mlp", "digits", GRID) == ("mlp", None)
    assert choose_kind("auto", "digits", GRID) == ("cnn", (1, 8, 8))


def test_cnn_learns_digits_and_exports_a_4d_input_with_parity(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    spec = validate(frame, "digits")
    data = split(frame, spec, 0)
    kind, shape = choose_kind("auto", "digits", spec.features)
    cfg = FitConfig(epochs=6, seed=1, patience=3, model_kind=kind, image_shape=shape or ())
    result = fit(data, spec.task, spec.n_outputs, cfg, lambda row: None)
    accuracy = float(
        (predict(result.model, spec.task, data.x["test"]).argmax(axis=1) == data.y["test"]).mean()
    )
    assert accuracy > 0.85  # ten classes: chance is 0.1
    path = export(result.model, spec.task, tmp_path / "model.onnx")
    import onnx

    graph_input = onnx.load(str(path)).graph.input[0]
    dims = [d.dim_value or d.dim_param for d in graph_input.type.tensor_type.shape.dim]
    assert dims[1:] == [1, 8, 8] and isinstance(dims[0], str)
    assert check_parity(result.model, spec.task, path, data.x["test"]) <= 1e-4
    images = data.x["test"][:3].reshape(-1, 1, 8, 8)
    assert np.allclose(onnx_predict(path, images), onnx_predict(path, data.x["test"][:3]))
