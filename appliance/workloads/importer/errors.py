"""What an import reports to its user: each error names the model, what is wrong and the fix.

Every one of them is raised before anything is logged or registered (``steps`` orders the work
so), so a refused import leaves the registry as it was.
"""

from __future__ import annotations

from appliance.errors import ApplianceError

SUPPORTED = ("sklearn", "xgboost", "lightgbm", "pytorch", "onnx")


class ModelImportError(ApplianceError):
    """Base of the importer's errors: invalid input, so exit 2 unless a subclass says otherwise."""

    exit_code = 2


class SourceNotFoundError(ModelImportError):
    """RUN_OR_URI names no MLflow model (or .onnx file) that can be read."""

    def __init__(self, source: str, cause: str) -> None:
        super().__init__(
            f"cannot read a model from {source!r}: {cause}",
            fix="give runs:/RUN_ID/PATH, models:/NAME/VERSION, models:/MODEL_ID (the logged model), "
            "a local MLflow model folder (with an MLmodel file) or a .onnx file",
        )


class UnsupportedFlavourError(ModelImportError):
    """The MLflow model was logged with a flavour that has no ONNX converter here."""

    def __init__(self, source: str, flavours: list[str], detail: str = "") -> None:
        self.flavours = flavours
        named = ", ".join(flavours) or "none"
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"model {source!r} has the MLflow flavour(s) {named}{extra}, and none of them has an ONNX "
            f"converter; supported: {', '.join(SUPPORTED)}",
            fix="log the model with mlflow.sklearn, mlflow.xgboost, mlflow.lightgbm or mlflow.pytorch, "
            "or convert it to ONNX yourself and log it with mlflow.onnx",
        )


class ConversionError(ModelImportError):
    """The framework's converter could not turn the model into ONNX."""

    exit_code = 1

    def __init__(self, source: str, framework: str, cause: str) -> None:
        super().__init__(
            f"model {source!r} ({framework}) could not be converted to ONNX: {cause}",
            fix="check that every step of the model has an ONNX converter (skl2onnx lists them), "
            "or convert it to ONNX yourself and log it with mlflow.onnx",
        )


class ColumnMismatchError(ModelImportError):
    """The dataset's feature columns are not the ones the model's signature takes."""

    def __init__(
        self, name: str, dataset: str, missing: list[str], extra: list[str], detail: str = ""
    ) -> None:
        self.missing, self.extra = missing, extra
        parts = []
        if missing:
            parts.append(f"missing from the dataset: {', '.join(missing)}")
        if extra:
            parts.append(f"in the dataset but not taken by the model: {', '.join(extra)}")
        if detail:
            parts.append(detail)
        super().__init__(
            f"model {name!r} does not match dataset {dataset!r}: " + "; ".join(parts),
            fix="import with --dataset naming the data the model was trained on (and --target its "
            "target column), or log the model with a signature of the dataset's feature columns",
        )


class TaskMismatchError(ModelImportError):
    """The model's outputs do not fit the dataset's target (task or classes)."""

    def __init__(self, name: str, dataset: str, problem: str) -> None:
        super().__init__(
            f"model {name!r} does not fit dataset {dataset!r}: {problem}",
            fix="check --dataset and --target (and --task when the target's kind is ambiguous)",
        )


class ParityFailedError(ModelImportError):
    """The ONNX model does not reproduce the original's outputs on the held-out rows."""

    exit_code = 1

    def __init__(
        self,
        name: str,
        atol: float,
        rtol: float,
        row: int,
        original: list[float],
        converted: list[float],
        diff: float,
        rows: int,
    ) -> None:
        self.row, self.diff = row, diff
        super().__init__(
            f"model {name!r}: the ONNX model does not match the original on {rows} held-out rows: "
            f"worst row {row} of the dataset: original {_fmt(original)} vs ONNX {_fmt(converted)} "
            f"(abs diff {diff:.3g}, "
            f"tolerance {atol:g} + {rtol:g} x |original|); nothing was registered",
            fix="check that the logged model is the one trained on this dataset; if the difference is "
            "float32 rounding the model can live with, raise --atol/--rtol",
        )


def _fmt(values: list[float]) -> str:
    shown = ", ".join(f"{v:.6g}" for v in values[:6])
    return f"[{shown}{', ...' if len(values) > 6 else ''}]"
