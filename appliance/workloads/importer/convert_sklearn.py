"""scikit-learn estimators and pipelines (preprocessing included) through skl2onnx.

XGBoost's and LightGBM's scikit-learn estimators (``XGBClassifier``, ``LGBMRegressor``, ...),
alone or as the last step of a pipeline, go through the same converter with onnxmltools'
converters registered for them, as skl2onnx documents. A pipeline that picks columns by name (a
``ColumnTransformer`` on a DataFrame) is converted with one input per column; ``contract`` then
feeds those from the single served input.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.workloads.importer.contract import Columns
from appliance.workloads.importer.converted import Converted, frame_for

if TYPE_CHECKING:
    import pandas as pd

CONVERTER = "skl2onnx"
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
_registered = False


def register_boosters() -> None:
    """Teach skl2onnx the XGBoost and LightGBM estimators (onnxmltools' converters), once."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    try:
        import xgboost
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

        update_registered_converter(
            xgboost.XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
            convert_xgboost, options=options,
        )  # fmt: skip
        update_registered_converter(
            xgboost.XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )  # fmt: skip
    except ImportError:
        pass
    try:
        import lightgbm
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            lightgbm.LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
            convert_lightgbm, options=options,
        )  # fmt: skip
        update_registered_converter(
            lightgbm.LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
            convert_lightgbm, options={"split": None},
        )  # fmt: skip
    except ImportError:
        pass
    _registered = True


def handles(model: Any) -> bool:
    from sklearn.base import BaseEstimator

    return isinstance(model, BaseEstimator)


def task_of(model: Any) -> str | None:
    """What the estimator itself says it does (a pipeline says what its last step does)."""
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(model):
        return "classification"
    return "regression" if is_regressor(model) else None


def classes_of(model: Any) -> list[float] | None:
    classes = getattr(model, "classes_", None)
    try:
        return None if classes is None else [float(c) for c in classes]
    except (TypeError, ValueError):
        return None


def columns_of(model: Any) -> tuple[list[str] | None, int | None]:
    """Column names the estimator was fitted on (a DataFrame), else its feature count."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:
        return [str(n) for n in names], None
    count = getattr(model, "n_features_in_", None)
    return None, (int(count) if count is not None else None)


def _uses_column_names(model: Any) -> bool:
    """True when a ColumnTransformer inside selects columns by name."""
    from sklearn.compose import ColumnTransformer

    found = [model, *model.get_params(deep=True).values()]
    for est in found:
        if isinstance(est, ColumnTransformer):
            for _, _, selector in est.transformers:
                picked = [selector] if isinstance(selector, str) else selector
                if isinstance(picked, list | tuple) and any(isinstance(c, str) for c in picked):
                    return True
    return False


def _without_xgboost_names(model: Any) -> Any:
    """A copy whose XGBoost boosters carry no feature names: onnxmltools reads splits as
    ``f<index>`` and refuses a booster trained on a DataFrame's column names."""
    try:
        import xgboost
    except ImportError:
        return model
    found = [model, *model.get_params(deep=True).values()]
    if not any(isinstance(est, xgboost.XGBModel) for est in found):
        return model
    clone = copy.deepcopy(model)
    for est in [clone, *clone.get_params(deep=True).values()]:
        if isinstance(est, xgboost.XGBModel):
            est.get_booster().feature_names = None
    return clone


def convert(model: Any, cols: Columns, sample: pd.DataFrame) -> Converted:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType

    register_boosters()
    if _uses_column_names(model):
        types = [
            (c, Int64TensorType([None, 1]) if c in cols.int_features else FloatTensorType([None, 1]))
            for c in cols.features
        ]
    else:
        types = [("input", FloatTensorType([None, len(cols.features)]))]
    onx = convert_sklearn(_without_xgboost_names(model), initial_types=types, target_opset=TARGET_OPSET)

    def original(frame: pd.DataFrame) -> np.ndarray:
        x = frame_for(model, frame)
        if cols.task == "classification":
            return np.asarray(model.predict_proba(x), dtype=np.float64)
        return np.asarray(model.predict(x), dtype=np.float64).reshape(len(frame), -1)

    return Converted(onx, original, CONVERTER)
