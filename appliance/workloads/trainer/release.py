"""The release steps: export (ONNX + parity + drift profile), register, promote.

Export logs an MLflow LoggedModel whose artifact folder holds ``model.onnx``,
``drift_profile.json`` and ``metrics.json`` at top level, which is what the model server
downloads from ``models:/NAME@champion``. Register creates the version as ``challenger``;
promote moves ``champion`` only when the challenger wins on the same test rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import appliance
from appliance.workloads.trainer import metrics as metric_fns
from appliance.workloads.trainer import registry
from appliance.workloads.trainer.prepare import Split
from appliance.workloads.trainer.workdir import (
    Options,
    dataset_info,
    load_model,
    primary_metric,
    read_json,
    require,
    spec_of,
    write_json,
)


def export(opts: Options) -> dict[str, Any]:
    """ONNX export checked against PyTorch on the test split, the drift profile, the logged model."""
    if opts.from_user_model:
        from appliance.workloads.trainer import user_model

        return user_model.export(opts)
    import mlflow

    from appliance.workloads.trainer import export as onnx_export
    from appliance.workloads.trainer import profile
    from appliance.workloads.trainer.model import as_input

    info = dataset_info(opts, "export")
    spec = spec_of(info)
    data = Split.load(require(opts, "export", "split.npz", "validate"))
    read_json(opts, "export", "evaluation.json", "evaluate")  # evaluate ran: fail before the export work
    model = load_model(opts, "export")
    onnx_path = onnx_export.export(model, spec.task, opts.workdir / "model.onnx")
    diff = onnx_export.check_parity(model, spec.task, onnx_path, data.x["test"])
    mlflow.log_metric("onnx_parity_max_abs_diff", diff)
    print(f"onnx parity on {len(data.y['test'])} test rows: max abs diff {diff:.3g}", flush=True)
    # The served graph is what competes with the champion, so it is scored on the test rows too.
    onnx_test = metric_fns.compute(
        spec.task, data.y["test"], onnx_export.onnx_predict(onnx_path, data.x["test"])
    )
    train_out = onnx_export.onnx_predict(onnx_path, data.x["train"])
    shape = getattr(model, "input_shape", None)
    # Per-feature PSI is for tables; an image model's drift is watched on its outputs alone.
    drift = profile.build(spec.features, data.x["train"], train_out, spec.task, shape)
    result = log_served(opts, info, onnx_path, as_input(model, data.x["test"][:5]), drift, diff, {})
    result["onnx_metrics"] = onnx_test
    write_json(opts, "export.json", result)
    return result


def log_served(
    opts: Options,
    info: dict[str, Any],
    onnx_path: Path,
    example: np.ndarray,
    drift: dict[str, Any],
    diff: float,
    tags: dict[str, str],
) -> dict[str, Any]:
    """Log the ONNX graph as the LoggedModel the server downloads (with the drift profile and the
    test metrics at its top); the built-in and the user's model leave through here alike."""
    import mlflow
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    from appliance.workloads.importer.parity import run_graph

    task = info["spec"]["task"]
    evaluation = read_json(opts, "export", "evaluation.json", "evaluate")
    profile_path = opts.workdir / "drift_profile.json"
    profile_path.write_text(json.dumps(drift, indent=1))
    metrics_path = opts.workdir / "metrics.json"
    metrics_path.write_text(json.dumps({"test": evaluation["metrics"], "task": task}, indent=1))
    output = run_graph(onnx_path.read_bytes(), example).astype(np.float32)
    logged = mlflow.onnx.log_model(
        onnx.load(str(onnx_path)),
        name="model",
        signature=infer_signature(example, output),
        save_as_external_data=False,
        # Stated, not inferred: inference starts a subprocess that costs ~10 s per export.
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        tags={"appliance.task": task, "appliance.dataset": info["name"]} | tags,
    )
    client = registry.client()
    client.log_model_artifact(logged.model_id, str(profile_path))
    client.log_model_artifact(logged.model_id, str(metrics_path))
    mlflow.log_metrics({f"test_{k}": v for k, v in evaluation["metrics"].items()}, model_id=logged.model_id)
    mlflow.log_artifact(str(profile_path))
    if tags:
        mlflow.set_tags(tags)
    return {"parity_max_abs_diff": diff, "model_id": logged.model_id, "model_uri": logged.model_uri}


def register(opts: Options) -> dict[str, Any]:
    """Register the exported model as a new version of the model and give it ``challenger``."""
    import mlflow

    info = dataset_info(opts, "register")
    exported = read_json(opts, "register", "export.json", "export")
    evaluation = read_json(opts, "register", "evaluation.json", "evaluate")
    run = mlflow.active_run()
    tags = {
        "appliance.task": info["spec"]["task"],
        "appliance.dataset": info["name"],
        "appliance.dataset_key": info["key"],
        "appliance.dataset_sha256": info["sha256"],
        "appliance.version": appliance.__version__,
        "appliance.parity_max_abs_diff": f"{exported['parity_max_abs_diff']:.3g}",
        "appliance.run_id": run.info.run_id if run else "",
    } | {f"appliance.test_{k}": f"{v:.6g}" for k, v in evaluation["metrics"].items()}
    name = info["model_name"]
    version = registry.register(exported["model_uri"], name, tags)
    print(f"registered {name} version {version} as {registry.CHALLENGER}", flush=True)
    result = {"model_name": name, "version": version, "model_uri": f"models:/{name}/{version}"}
    mlflow.set_tags({"appliance.registered_version": version})
    write_json(opts, "registration.json", result)
    return result


def promote(opts: Options) -> dict[str, Any]:
    """Champion/challenger: promote only when the new version wins by more than the margin."""
    import mlflow

    info = dataset_info(opts, "promote")
    spec = spec_of(info)
    reg = read_json(opts, "promote", "registration.json", "register")
    evaluation = read_json(opts, "promote", "evaluation.json", "evaluate")
    name, version = reg["model_name"], reg["version"]
    metric = primary_metric(opts, spec.task)
    champ_ver = registry.champion_version(name)
    champ_metrics = evaluation.get("champion_metrics")
    if champ_ver is not None and champ_ver != evaluation.get("champion_version"):
        data = Split.load(require(opts, "promote", "split.npz", "validate"))
        champ_metrics = registry.score_version(name, champ_ver, spec.task, data.x["test"], data.y["test"])
    champ_score = champ_metrics.get(metric) if champ_ver is not None and champ_metrics else None
    decision = registry.decide(
        metric, evaluation["metrics"][metric], champ_score, champ_ver, opts.promote_margin
    )
    client = registry.client()
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    if decision.decision == "promoted":
        registry.set_champion(name, version, "automatic")
    mlflow.set_tags({"appliance.decision": decision.decision})
    print(f"{name} v{version}: {decision.decision} ({decision.reason})", flush=True)
    result = {"model_name": name, "version": version, "promoted": decision.decision == "promoted"}
    result |= decision.as_dict()
    write_json(opts, "decision.json", result)
    return result
