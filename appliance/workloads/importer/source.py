"""Where the model to import is, which framework made it, and the original model itself.

RUN_OR_URI is ``runs:/RUN_ID/PATH``, ``models:/NAME/VERSION`` (or ``@ALIAS``), a logged model's
``models:/MODEL_ID``, a local MLflow model folder or a ``.onnx`` file. Remote models are
downloaded once into a temporary folder; the framework comes from the flavours in its
``MLmodel`` file, and the model is loaded with that flavour's own loader, so the original that
parity is checked against is exactly what the author logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.workloads.importer.errors import SourceNotFoundError, UnsupportedFlavourError

# Checked in this order: a model logged with mlflow.xgboost also carries python_function.
FLAVOURS = ("onnx", "pytorch", "xgboost", "lightgbm", "sklearn")


@dataclass
class Source:
    """The model as logged: its framework, the loaded object and what MLflow recorded about it."""

    uri: str
    framework: str
    model: Any
    flavours: list[str]
    columns: list[str] | None = None
    n_features: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def local_folder(uri: str, tmp: Path) -> Path:
    """The model's files on local disk: the path itself, or a download of the MLflow URI."""
    path = Path(uri).expanduser()
    if path.exists():
        return path
    if "://" not in uri and not uri.startswith(("runs:", "models:")):
        raise SourceNotFoundError(uri, "no such file or folder")
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
    except (MlflowException, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceNotFoundError(uri, first[:300]) from err


def detect(uri: str, folder: Path) -> tuple[str, list[str], Any]:
    """(framework, every flavour, the MLflow Model) of a model folder, or an ONNX file's ("onnx", ...)."""
    if folder.is_file():
        if folder.suffix.lower() != ".onnx":
            raise SourceNotFoundError(uri, "a file that is not .onnx")
        return "onnx", ["onnx"], None
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        raise SourceNotFoundError(uri, f"{folder} has no MLmodel file (not an MLflow model)")
    from mlflow.models import Model

    meta = Model.load(str(mlmodel))
    flavours = sorted(meta.flavors)
    for name in FLAVOURS:
        if name in meta.flavors:
            return name, flavours, meta
    raise UnsupportedFlavourError(uri, flavours)


def _signature(meta: Any) -> tuple[list[str] | None, int | None]:
    """Input column names (a column-based signature) or feature count (a tensor signature)."""
    if meta is None or meta.signature is None or meta.signature.inputs is None:
        return None, None
    inputs = meta.signature.inputs
    if inputs.has_input_names() and not getattr(inputs, "is_tensor_spec", lambda: False)():
        return [str(n) for n in inputs.input_names()], None
    shapes = [getattr(spec, "shape", None) for spec in inputs.inputs]
    if len(shapes) == 1 and shapes[0] and len(shapes[0]) == 2 and shapes[0][1] > 0:
        return None, int(shapes[0][1])
    return None, None


def load(uri: str, tmp: Path) -> Source:
    """Resolve, detect and load; UnsupportedFlavourError before any heavy framework is imported."""
    folder = local_folder(uri, tmp)
    framework, flavours, meta = detect(uri, folder)
    columns, count = _signature(meta)
    if framework == "onnx":
        import onnx

        target = folder if folder.is_file() else folder / meta.flavors["onnx"]["data"]
        model: Any = onnx.load(str(target))
    else:
        import importlib

        loader = importlib.import_module(f"mlflow.{framework}")
        kwargs = {"map_location": "cpu"} if framework == "pytorch" else {}
        try:
            model = loader.load_model(str(folder), **kwargs)
        except Exception as err:
            raise SourceNotFoundError(uri, f"mlflow.{framework} could not load it: {err}") from err
    return Source(uri, framework, model, flavours, columns, count)
