"""Log, register and promote an imported model the way the trainer's release steps do.

The logged model's folder holds ``model.onnx``, ``drift_profile.json`` and ``metrics.json`` at
its top (what the model server downloads from ``models:/NAME@champion``); the version gets the
trainer's tags plus where it came from, becomes ``challenger``, and takes ``champion`` only when
it beats the current champion on the same test rows (the champion's own ONNX graph is scored on
them). Should anything fail once the version exists, it is deleted again and the previous
``challenger`` alias restored, so a failed import registers nothing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import appliance
from appliance.workloads.trainer import registry


def log_model(
    graph: Any, profile: dict[str, Any], metrics: dict[str, Any], x_example: np.ndarray, tags: dict[str, str]
) -> Any:
    """Log the normalized graph with its profile and metrics as one MLflow LoggedModel."""
    import mlflow
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    from appliance.workloads.importer.parity import run_graph

    output = run_graph(graph.SerializeToString(), x_example).astype(np.float32)
    signature = infer_signature(x_example, output)
    logged = mlflow.onnx.log_model(
        graph,
        name="model",
        signature=signature,
        save_as_external_data=False,
        # Stated, not inferred: inference starts a subprocess that costs ~10 s.
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        tags=tags,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for filename, data in (("drift_profile.json", profile), ("metrics.json", metrics)):
            path = Path(tmp) / filename
            path.write_text(json.dumps(data, indent=1))
            registry.client().log_model_artifact(logged.model_id, str(path))
        mlflow.log_artifact(str(Path(tmp) / "drift_profile.json"))
    mlflow.log_metrics({f"test_{k}": v for k, v in metrics["test"].items()}, model_id=logged.model_id)
    return logged


def version_tags(
    task: str,
    dataset: dict[str, str],
    diff: float,
    run_id: str,
    metrics: dict[str, float],
    origin: dict[str, str],
) -> dict[str, str]:
    """The trainer's version tags, and where the imported model came from."""
    return (
        {
            "appliance.task": task,
            "appliance.dataset": dataset["name"],
            "appliance.dataset_key": dataset["key"],
            "appliance.dataset_sha256": dataset["sha256"],
            "appliance.version": appliance.__version__,
            "appliance.parity_max_abs_diff": f"{diff:.3g}",
            "appliance.run_id": run_id,
        }
        | {f"appliance.test_{k}": f"{v:.6g}" for k, v in metrics.items()}
        | origin
    )


def register_and_promote(
    model_uri: str,
    name: str,
    tags: dict[str, str],
    task: str,
    metric: str,
    score: float,
    x_test: np.ndarray,
    y_test: np.ndarray,
    margin: float,
) -> tuple[str, registry.Decision]:
    """New version as challenger, then the champion/challenger decision; undone on any failure."""
    from mlflow.exceptions import MlflowException

    client = registry.client()
    try:
        previous_challenger: str | None = client.get_registered_model(name).aliases.get(registry.CHALLENGER)
    except MlflowException:
        previous_challenger = None
    version: str | None = None
    try:
        version = registry.register(model_uri, name, tags)
        champ_ver = registry.champion_version(name)
        champ = None
        if champ_ver is not None:
            champ = registry.score_version(name, champ_ver, task, x_test, y_test)
        champ_score = champ.get(metric) if champ else None
        decision = registry.decide(metric, score, champ_score, champ_ver, margin)
        for key, value in decision.tags().items():
            client.set_model_version_tag(name, version, key, value)
        if decision.decision == "promoted":
            registry.set_champion(name, version, "automatic (import)")
        return version, decision
    except BaseException:
        if version is not None:
            _undo(client, name, version, previous_challenger)
        raise


def _undo(client: Any, name: str, version: str, previous_challenger: str | None) -> None:
    try:
        client.delete_model_version(name, version)
        if not client.search_model_versions(f"name='{name}'"):
            client.delete_registered_model(name)  # it was made by this import alone
        elif previous_challenger is not None:
            client.set_registered_model_alias(name, registry.CHALLENGER, previous_challenger)
    except Exception:
        pass  # the original error is the one to report
