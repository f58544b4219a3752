"""The work directory through which the lifecycle steps hand results to each other.

``validate -> train -> evaluate -> export -> register -> promote``: the retraining pipeline runs
each step as its own process (one MLflow child run per step) and ``run`` calls them in one
process and one run. Either way the same files carry the results, so a failed pipeline can be
inspected, and resumed, step by step:

- ``dataset.json``, ``split.npz``, ``train.csv`` (validate); ``model.pt``, ``train.json``
  (train); ``evaluation.json`` (evaluate); ``model.onnx``, ``drift_profile.json``,
  ``export.json`` (export); ``registration.json`` (register); ``decision.json`` (promote).
- With the user's own training code (``user_model``): ``user_model/`` (the code's model, an
  MLflow model folder) instead of ``model.pt``; evaluate writes ``model.onnx`` and
  ``user_model.json`` (the conversion and its parity), export the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.workloads.trainer import metrics as metric_fns
from appliance.workloads.trainer.errors import RegistryError, WorkdirError
from appliance.workloads.trainer.fit import FitConfig
from appliance.workloads.trainer.schema import DatasetSpec

STEPS = ("validate", "train", "evaluate", "export", "register", "promote")


@dataclass
class Options:
    """Everything a step may need; each step reads only its own part."""

    workdir: Path
    dataset: str | None = None
    dataset_key: str | None = None
    model_name: str | None = None
    target: str | None = None
    task: str = "auto"
    epochs: int = 60
    seed: int = 42
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 10
    promote_margin: float = 0.0
    metric: str | None = None
    model_kind: str = "auto"
    """``auto`` (a CNN for an image dataset, see ``images``), ``mlp`` or ``cnn``."""
    script: Path | None = None
    """The user's training script or notebook, run as the train step (``user_model``)."""
    from_user_model: bool = False
    """evaluate/export the model the user's code left in ``user_model/`` instead of ``model.pt``."""

    def fit_config(self) -> FitConfig:
        return FitConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, patience=self.patience, seed=self.seed
        )


def write_json(opts: Options, filename: str, data: Any) -> None:
    opts.workdir.mkdir(parents=True, exist_ok=True)
    (opts.workdir / filename).write_text(json.dumps(data, indent=2, default=str))


def read_json(opts: Options, step: str, filename: str, needs: str) -> Any:
    """A result left by step ``needs``; a WorkdirError naming that step when it is missing."""
    path = opts.workdir / filename
    if not path.exists():
        raise WorkdirError(step, filename, needs)
    return json.loads(path.read_text())


def require(opts: Options, step: str, filename: str, needs: str) -> Path:
    path = opts.workdir / filename
    if not path.exists():
        raise WorkdirError(step, filename, needs)
    return path


def dataset_info(opts: Options, step: str) -> dict[str, Any]:
    """What validate recorded; ``--model-name`` on a later step overrides the recorded name."""
    info: dict[str, Any] = read_json(opts, step, "dataset.json", "validate")
    if opts.model_name:
        info["model_name"] = opts.model_name
    return info


def spec_of(info: dict[str, Any]) -> DatasetSpec:
    return DatasetSpec(**info["spec"])


def load_model(opts: Options, step: str) -> Any:
    """The model (MLP or CNN, as ``model.pt`` records) saved by the train step, on CPU, in eval mode."""
    import torch

    from appliance.workloads.trainer.fit import configure_threads
    from appliance.workloads.trainer.model import build

    configure_threads()
    saved = torch.load(require(opts, step, "model.pt", "train"), map_location="cpu", weights_only=True)
    model = build(saved["arch"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def primary_metric(opts: Options, task: str) -> str:
    """The metric that ranks champion and challenger (``--metric`` or the task's default)."""
    metric = opts.metric or metric_fns.PRIMARY[task]
    if metric not in metric_fns.CHOICES[task]:
        choices = ", ".join(metric_fns.CHOICES[task])
        raise RegistryError(f"metric {metric!r} cannot rank {task} models", fix=f"use one of: {choices}")
    return metric
