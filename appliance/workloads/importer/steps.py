"""The import, step by step: load -> data -> convert -> parity -> profile -> register.

Every check runs before anything is written to MLflow: a model with no converter, columns that
are not the dataset's, a target that does not fit, a conversion that fails or a parity check
that does not hold all stop the import with the registry untouched. Each step reports progress
through ``progress(step, message)``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from appliance.workloads.importer import contract, parity, rows, source
from appliance.workloads.importer.errors import (
    ConversionError,
    ModelImportError,
    UnsupportedFlavourError,
)

Progress = Callable[[str, str], None]
STEPS = ("load", "data", "convert", "parity", "profile", "register")


@dataclass
class ImportOptions:
    """What ``appliance models import`` was asked to do."""

    source: str
    name: str
    dataset: str
    dataset_key: str | None = None
    target: str | None = None
    task: str = "auto"
    seed: int = 42
    atol: float = parity.ATOL
    rtol: float = parity.RTOL
    promote_margin: float = 0.0
    metric: str | None = None


def converter_for(src: source.Source) -> ModuleType:
    """The converter module for the loaded object (its type, not only its flavour, decides:
    an XGBClassifier logged with mlflow.sklearn goes through skl2onnx with XGBoost's converter)."""
    if src.framework == "onnx":
        from appliance.workloads.importer import convert_onnx

        return convert_onnx
    if src.framework == "pytorch":
        from appliance.workloads.importer import convert_torch

        if convert_torch.handles(src.model):
            return convert_torch
    else:
        from appliance.workloads.importer import convert_boosters, convert_sklearn

        for module in (convert_boosters, convert_sklearn):
            if module.handles(src.model):
                return module
    kind = f"{type(src.model).__module__}.{type(src.model).__name__}"
    raise UnsupportedFlavourError(src.uri, src.flavours, f"it loads as a {kind}")


def model_facts(
    src: source.Source, module: ModuleType
) -> tuple[str | None, tuple[list[str] | None, int | None]]:
    """The model's own task and columns: its signature first, else what the model records."""
    task = module.task_of(src.model) if hasattr(module, "task_of") else None
    columns: tuple[list[str] | None, int | None] = (src.columns, src.n_features)
    if columns == (None, None) and hasattr(module, "columns_of"):
        columns = module.columns_of(src.model)
    return task, columns


def ranking_metric(chosen: str | None, task: str) -> str:
    """``--metric`` or the task's default, as the trainer ranks versions (checked before any work)."""
    from appliance.workloads.trainer import metrics as metric_fns
    from appliance.workloads.trainer.errors import RegistryError

    metric = chosen or metric_fns.PRIMARY[task]
    if metric not in metric_fns.CHOICES[task]:
        choices = ", ".join(metric_fns.CHOICES[task])
        raise RegistryError(f"metric {metric!r} cannot rank {task} models", fix=f"use one of: {choices}")
    return metric


def convert_checked(
    src: source.Source, module: ModuleType, data: rows.Rows, uri: str, atol: float, rtol: float
) -> tuple[Any, Any, float]:
    """Convert to the served layout and check parity on the test rows: (graph, its test outputs,
    max abs diff). Shared by the import and by a user's training script's model."""
    cols = data.cols
    try:
        converted = module.convert(src.model, cols, data.frame("train"))
        graph = contract.normalize(converted.onnx, cols)
    except ModelImportError:
        raise
    except Exception as err:
        raise ConversionError(uri, src.framework, str(err).strip().splitlines()[0][:400]) from err
    expected = converted.original(data.frame("test"))
    actual = parity.run_graph(graph.SerializeToString(), data.split.x["test"])
    diff = parity.check(cols, expected, actual, data.row_ids["test"], atol, rtol)
    return graph, actual, diff


def run(opts: ImportOptions, progress: Progress) -> dict[str, Any]:
    """Import ``opts.source`` as a new version of ``opts.name``; returns the JSON summary."""
    from appliance.workloads.trainer import metrics as metric_fns
    from appliance.workloads.trainer import profile, tracking

    with tempfile.TemporaryDirectory(prefix="appliance-import-") as tmp:
        progress("load", f"reading {opts.source}")
        src = source.load(opts.source, Path(tmp))
        module = converter_for(src)
        progress(
            "load",
            f"framework {src.framework} (flavours: {', '.join(src.flavours)}), converter {module.CONVERTER}",
        )

    model_task, model_columns = model_facts(src, module)
    progress("data", f"reading dataset {opts.dataset!r}")
    data = rows.load(
        opts.name,
        opts.dataset,
        opts.dataset_key,
        opts.target,
        opts.task,
        opts.seed,
        model_task,
        model_columns,
    )
    if hasattr(module, "classes_of"):
        rows.check_classes(data, module.classes_of(src.model))
    cols = data.cols
    metric = ranking_metric(opts.metric, cols.task)
    sizes = {part: len(y) for part, y in data.split.y.items()}
    progress(
        "data",
        f"{data.info['uri']}: {len(cols.features)} features, target {data.spec.target!r}, {cols.task}; "
        f"split {sizes['train']}/{sizes['val']}/{sizes['test']} (seed {opts.seed})",
    )

    progress("convert", f"{src.framework} -> ONNX with {module.CONVERTER}")
    graph, actual, diff = convert_checked(src, module, data, opts.source, opts.atol, opts.rtol)
    serialized = graph.SerializeToString()
    progress("convert", f"ONNX graph: input 'input' [batch, {len(cols.features)}] -> {cols.output!r}")

    x_test, y_test = data.split.x["test"], data.split.y["test"]
    progress(
        "parity",
        f"{len(y_test)} held-out rows: max abs diff {diff:.3g} "
        f"(tolerance {opts.atol:g} + {opts.rtol:g} x |original|)",
    )

    drift = profile.build(
        cols.features, data.split.x["train"], parity.run_graph(serialized, data.split.x["train"]), cols.task
    )
    test_metrics = metric_fns.compute(cols.task, y_test, actual)
    shown = " ".join(f"{k}={v:.4f}" for k, v in test_metrics.items())
    progress("profile", f"drift profile of {sizes['train']} training rows; test {shown}")

    from appliance.workloads.importer import publish

    origin = {
        "appliance.imported_from": opts.source[:5000],
        "appliance.framework": src.framework,
        "appliance.converter": module.CONVERTER,
    }
    tracking.check_reachable()
    with tracking.run_scope(opts.name, f"import-{opts.name}") as run_id:
        import mlflow

        mlflow.log_params(
            {"dataset": data.info["name"], "dataset_key": data.info["key"], "task": cols.task}
            | {"target": data.spec.target, "n_features": len(cols.features), "split_seed": opts.seed}
            | {"imported_from": opts.source[:500], "framework": src.framework, "converter": module.CONVERTER}
        )
        mlflow.log_metric("onnx_parity_max_abs_diff", diff)
        mlflow.set_tags(
            {"appliance.dataset_uri": data.info["uri"], "appliance.dataset_sha256": data.info["sha256"]}
            | {"appliance.model_name": opts.name}
            | origin
        )
        logged = publish.log_model(
            graph,
            drift,
            {"test": test_metrics, "task": cols.task},
            x_test[:5],
            {"appliance.task": cols.task, "appliance.dataset": data.info["name"]},
        )
        tags = publish.version_tags(cols.task, data.info, diff, run_id, test_metrics, origin)
        progress("register", f"registering {opts.name} from {logged.model_uri}")
        version, decision = publish.register_and_promote(
            logged.model_uri, opts.name, tags, cols.task, metric, test_metrics[metric], x_test, y_test,
            opts.promote_margin,
        )  # fmt: skip
        mlflow.set_tags({"appliance.registered_version": version, "appliance.decision": decision.decision})
    progress("register", f"{opts.name} v{version}: {decision.decision} ({decision.reason})")
    return {
        "run_id": run_id,
        "model_name": opts.name,
        "version": version,
        "model_uri": f"models:/{opts.name}/{version}",
        "promoted": decision.decision == "promoted",
        "framework": src.framework,
        "converter": module.CONVERTER,
        "features": cols.features,
        "task": cols.task,
        "parity_max_abs_diff": diff,
        "parity_rows": len(y_test),
        "metrics": test_metrics,
        "dataset": data.info,
    } | decision.as_dict()
