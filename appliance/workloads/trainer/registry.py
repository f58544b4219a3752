"""The model registry side: versions, the ``champion``/``challenger`` aliases and their history.

A new version always becomes ``challenger``; it takes ``champion`` only when it beats the current
champion on the challenger's own test split (the champion's ONNX model is downloaded and scored
on those rows), or when there is no champion yet. Every decision, manual promotion and rollback
is written as tags, and the registered model keeps the champion history that rollback walks back.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.workloads.trainer import metrics as metric_fns
from appliance.workloads.trainer.errors import RegistryError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "appliance.champion_history"


def client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def champion_version(name: str) -> str | None:
    """The version the ``champion`` alias points at, or None (also when the model is new)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases: dict[str, str] = client().get_registered_model(name).aliases
    except MlflowException:
        return None
    return aliases.get(CHAMPION)


def score_version(
    name: str, version: str, task: str, x: np.ndarray, y: np.ndarray
) -> dict[str, float] | None:
    """Metrics of a registered version's ONNX model on (x, y); None when it cannot take x."""
    import mlflow

    from appliance.workloads.trainer.export import onnx_predict

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        model_path = Path(local) / "model.onnx"
        if not model_path.exists():
            return None
        try:
            output = onnx_predict(model_path, x)
        except Exception:  # different feature count or output: not comparable on this data
            return None
    if task == "classification" and output.ndim != 2:
        return None
    return metric_fns.compute(task, y, output)


@dataclass
class Decision:
    """Why a version did or did not become champion (also its tags)."""

    decision: str
    metric: str
    challenger_score: float
    champion_score: float | None
    champion_version: str | None
    reason: str

    def tags(self) -> dict[str, str]:
        return {
            "appliance.decision": self.decision,
            "appliance.metric": self.metric,
            "appliance.challenger_score": f"{self.challenger_score:.6g}",
            "appliance.champion_score": "none"
            if self.champion_score is None
            else f"{self.champion_score:.6g}",
            "appliance.champion_version": self.champion_version or "none",
            "appliance.decision_reason": self.reason,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(
    metric: str, challenger: float, champion: float | None, champion_ver: str | None, margin: float
) -> Decision:
    """Promote when there is no comparable champion or the challenger wins by more than ``margin``."""
    if champion_ver is None:
        return Decision("promoted", metric, challenger, None, None, "no champion yet")
    if champion is None:
        reason = f"champion v{champion_ver} cannot be scored on this data (different features)"
        return Decision("kept_challenger", metric, challenger, None, champion_ver, reason)
    gain = challenger - champion if metric_fns.higher_is_better(metric) else champion - challenger
    won = gain > margin
    verdict = "beats" if won else "does not beat"
    reason = (
        f"{metric} {challenger:.4g} {verdict} champion v{champion_ver} {champion:.4g} by more than {margin:g}"
    )
    return Decision(
        "promoted" if won else "kept_challenger", metric, challenger, champion, champion_ver, reason
    )


def _history(name: str) -> list[str]:
    tags: dict[str, str] = client().get_registered_model(name).tags
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]
    except json.JSONDecodeError:
        return []


def set_champion(name: str, version: str, how: str) -> None:
    """Point ``champion`` at ``version``, drop its ``challenger`` alias, append to the history."""
    c = client()
    c.set_registered_model_alias(name, CHAMPION, version)
    if c.get_registered_model(name).aliases.get(CHALLENGER) == version:
        c.delete_registered_model_alias(name, CHALLENGER)
    history = [*_history(name), version]
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    c.set_model_version_tag(
        name, version, "appliance.promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    c.set_model_version_tag(name, version, "appliance.promoted_by", how)


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Create a version from a logged model and make it the ``challenger``."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags).version
    client().set_registered_model_alias(name, CHALLENGER, str(version))
    return str(version)


def _version(name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version(name, version)
    except MlflowException as err:
        raise RegistryError(
            f"model {name!r} has no version {version!r}", fix="see `appliance models list` for the versions"
        ) from err


def promote(name: str, version: str) -> None:
    """Explicit override: make ``version`` champion whatever the scores say, and record it."""
    _version(name, version)
    user = os.environ.get("USER") or "unknown"
    client().set_model_version_tag(name, version, "appliance.decision", "promoted_manually")
    set_champion(name, version, f"manual ({user})")


def rollback(name: str) -> tuple[str, str]:
    """Move ``champion`` back to the previous champion; returns (from_version, to_version)."""
    current = champion_version(name)
    if current is None:
        raise RegistryError(f"model {name!r} has no champion to roll back", fix="see `appliance models list`")
    history = _history(name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise RegistryError(
            f"model {name!r} has no earlier champion than v{current}",
            fix="promote a version explicitly with `appliance models promote NAME VERSION`",
        )
    previous = history[-1]
    c = client()
    c.set_registered_model_alias(name, CHAMPION, previous)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    c.set_registered_model_tag(name, "appliance.last_rollback", f"{current}->{previous}")
    c.set_model_version_tag(
        name, current, "appliance.rolled_back", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    return current, previous


def list_versions(name: str | None = None) -> list[dict[str, Any]]:
    """Every version (of ``name``, or of all models) with its aliases, primary metric and date."""
    from mlflow.exceptions import MlflowException

    c = client()
    try:
        models = [c.get_registered_model(name)] if name else c.search_registered_models(max_results=1000)
    except MlflowException as err:
        raise RegistryError(f"no registered model named {name!r}", fix="run `appliance models list`") from err
    rows = []
    for model in models:
        by_version: dict[str, list[str]] = {}
        for alias, ver in model.aliases.items():
            by_version.setdefault(str(ver), []).append(alias)
        for mv in c.search_model_versions(f"name='{model.name}'"):
            tags = mv.tags or {}
            rows.append(
                {
                    "name": model.name,
                    "version": str(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "metric": tags.get("appliance.metric", ""),
                    "score": tags.get("appliance.challenger_score", ""),
                    "decision": tags.get("appliance.decision", ""),
                    "created": int(mv.creation_timestamp or 0),
                }
            )
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))
