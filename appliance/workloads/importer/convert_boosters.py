"""XGBoost and LightGBM models logged through their native API (a ``Booster``), via onnxmltools.

Their scikit-learn estimators go through ``convert_sklearn``; a bare booster has no
``predict_proba``, so its task comes from its objective and a binary booster's P(class 1) is
widened to the two columns the served layout has.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.workloads.importer.contract import Columns
from appliance.workloads.importer.converted import Converted

if TYPE_CHECKING:
    import pandas as pd

CONVERTER = "onnxmltools"
TARGET_OPSET = 15  # onnxmltools takes the default domain's opset alone, 15 at most


def _kind(model: Any) -> str | None:
    module = type(model).__module__.split(".")[0]
    name = type(model).__name__
    return module if name == "Booster" and module in ("xgboost", "lightgbm") else None


def handles(model: Any) -> bool:
    return _kind(model) is not None


def _objective(model: Any) -> str:
    if _kind(model) == "xgboost":
        return str(json.loads(model.save_config())["learner"]["objective"]["name"])
    return str(model.dump_model().get("objective", "")).split()[0]


def task_of(model: Any) -> str | None:
    objective = _objective(model)
    if objective.startswith(("binary", "multi")) or objective in ("multiclass", "multiclassova"):
        return "classification"
    return (
        "regression"
        if objective.startswith(("reg", "regression")) or objective in ("huber", "l1", "l2")
        else None
    )


def columns_of(model: Any) -> tuple[list[str] | None, int | None]:
    if _kind(model) == "xgboost":
        names = model.feature_names
        return ([str(n) for n in names] if names else None), int(model.num_features())
    names = model.feature_name()
    generic = all(n.startswith("Column_") for n in names)
    return (None if generic else [str(n) for n in names]), int(model.num_feature())


def convert(model: Any, cols: Columns, sample: pd.DataFrame) -> Converted:
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    types = [("input", FloatTensorType([None, len(cols.features)]))]
    if _kind(model) == "xgboost":
        bare = model.copy()
        bare.feature_names = None  # onnxmltools reads splits as f<index>
        onx = onnxmltools.convert_xgboost(bare, initial_types=types, target_opset=TARGET_OPSET)
    else:
        onx = onnxmltools.convert_lightgbm(
            model, initial_types=types, target_opset=TARGET_OPSET, zipmap=False
        )

    def original(frame: pd.DataFrame) -> np.ndarray:
        x = frame.to_numpy(dtype=np.float32)
        if _kind(model) == "xgboost":
            import xgboost

            names = model.feature_names
            out = model.predict(xgboost.DMatrix(x, feature_names=names))
        else:
            out = model.predict(x)
        out = np.asarray(out, dtype=np.float64)
        if cols.task == "classification" and out.ndim == 1:
            return np.stack([1.0 - out, out], axis=1)
        return out.reshape(len(frame), -1)

    return Converted(onx, original, CONVERTER)
