"""Which data each model learns from, and the check that keeps a model on its own data.

A model's *binding* is its entry in the answers file's ``models`` list: its dataset, target,
pipeline and parameters. One module turns it into what the rest needs, so the controller, the
CLI and the runner decide the same way:

- ``models.json``, rendered into the controller's config folder (``controller_models``);
- the parameters of a run for a model (``run_params``): its dataset and target from the binding,
  its own parameters, never another model's defaults; a model with no binding is refused when
  the pipeline reads a dataset, naming the key to add;
- the check before ``register`` (``check_workdir``, run as ``python -m appliance.workloads.binding
  check``): the data the run trained on must be the binding's dataset, target and model, and its
  columns and dataset must match what the model's champion was trained on (the tags and drift
  profile of the registered version). A run that fails it registers nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.answers import Answers, ModelEntry
from appliance.errors import ApplianceError

MODELS_FILE = "models.json"
REGISTER_STEP = "register"
DATASET, TARGET = "dataset", "target"


class UnboundModelError(ApplianceError):
    """A run for a model the answers give no dataset: it would train on another model's data."""

    exit_code = 2

    def __init__(self, model: str, known: list[str]) -> None:
        self.model = model
        bound = f" (bound now: {', '.join(known)})" if known else ""
        super().__init__(
            f"model {model!r} has no dataset binding{bound}: nothing says which data retrains it",
            fix=f"add `models: [{{name: {model}, dataset: DATASET}}]` to the answers file (models[].dataset) "
            "and run `appliance up`",
        )


class BindingMismatchError(ApplianceError):
    """The data of a run is not the data its model is bound to."""

    exit_code = 2


def resolved_entries(answers: Answers) -> list[ModelEntry]:
    """Every served model with the answers' defaults filled in (URI, schedule, drift settings)."""
    mon = answers.monitoring
    return [
        entry.model_copy(
            update={
                "uri": entry.served_uri,
                "retrain_schedule": entry.retrain_schedule or mon.retrain_schedule,
                "drift_psi_threshold": entry.drift_psi_threshold or mon.drift_psi_threshold,
                "drift_min_rows": entry.drift_min_rows or mon.drift_min_rows,
            }
        )
        for entry in answers.served_models()
    ]


def models_json(answers: Answers) -> str:
    """The controller's ``models.json``: every model's binding, pipeline, parameters, schedule."""
    entries = [e.model_dump(mode="json") for e in resolved_entries(answers)]
    return json.dumps({"models": entries}, indent=1, sort_keys=True) + "\n"


def controller_models(ctx: Any, services: Any) -> str:
    """``config_files`` generator for the controller (``models.json``)."""
    return models_json(ctx.answers)


def load_models(path: Path | None) -> dict[str, ModelEntry]:
    """The bindings in a ``models.json`` (name -> entry); none without a file."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        entries = [ModelEntry.model_validate(e) for e in data["models"]]
    except OSError as err:
        raise ApplianceError(
            f"cannot read the models file {path}: {err.strerror}",
            fix="run `appliance up` to render it, or leave --models-file out",
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise ApplianceError(
            f"models file {path} is not a models list: {err}",
            fix="run `appliance up` to render it again from the answers file",
        ) from err
    return {e.name: e for e in entries}


def run_params(
    model: str,
    pipeline_model: str,
    pipeline_params: Mapping[str, object],
    bindings: Mapping[str, ModelEntry],
    overrides: Mapping[str, str] | None = None,
    explicit: bool = False,
) -> dict[str, str]:
    """Parameter overrides of a run of a pipeline for ``model``.

    A bound model gets its dataset and target, then its own parameters, then ``overrides`` (a
    different ``dataset`` or ``target`` is refused: that is the binding's to say). An unbound model
    is refused when the pipeline reads a dataset, unless it is the pipeline's own model (its
    defaults are meant for it) or ``explicit`` (a person named the dataset by hand)."""
    overrides = dict(overrides or {})
    entry = bindings.get(model)
    if entry is None or entry.dataset is None:
        given = DATASET in overrides and explicit
        if DATASET in pipeline_params and model != pipeline_model and not given:
            raise UnboundModelError(model, sorted(n for n, e in bindings.items() if e.dataset))
        return overrides
    params: dict[str, str] = {DATASET: entry.dataset} if DATASET in pipeline_params else {}
    if entry.target is not None and TARGET in pipeline_params:
        params[TARGET] = entry.target
    params |= {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in entry.parameters.items()}
    for key in (DATASET, TARGET):
        if key in overrides and key in params and overrides[key] != params[key]:
            raise BindingMismatchError(
                f"model {model!r} is bound to {key} {params[key]!r} (models[].{key}), not {overrides[key]!r}",
                fix=f"leave --param {key} out, or change the model's binding in the answers file",
            )
    return params | overrides


def missing_dataset(model: str, dataset: str, available: list[str]) -> str:
    """Why a run for ``model`` cannot start: its bound dataset is not in the store."""
    known = ", ".join(available[:20]) or "none yet"
    return (
        f"model {model!r} is bound to dataset {dataset!r} (models[].dataset), which is not in the "
        f"datasets store (available: {known}); fix: upload it (`appliance data seed --dataset "
        f"{dataset}` for scikit-learn's sets) or correct the model's dataset in the answers file"
    )


def _profile_features(model: str, version: str) -> list[str] | None:
    """Feature names in the drift profile of ``model`` version ``version``, None without one."""
    from appliance.workloads.serving.sources import source_for

    fetched = source_for(f"models:/{model}/{version}").fetch(version)
    try:
        if fetched.profile_path is None:
            return None
        profile = json.loads(fetched.profile_path.read_text())
        if profile.get("columns"):  # an image model keeps no per-feature bins, only its columns
            return [str(name) for name in profile["columns"]]
        return [str(f["name"]) for f in profile.get("features", [])]
    finally:
        if fetched.scratch is not None:
            shutil.rmtree(fetched.scratch, ignore_errors=True)


def _champion(model: str) -> tuple[str, dict[str, str]] | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(model, "champion")
    except MlflowException:
        return None  # a new model, or no champion yet: nothing registered to compare with
    return str(version.version), dict(version.tags or {})


def workdir_problems(info: Mapping[str, Any], model: str, dataset: str, target: str | None) -> list[str]:
    """What differs between a run's ``dataset.json`` and the model's binding (no registry)."""
    spec = info.get("spec") or {}
    problems = []
    if info.get("name") != dataset:
        problems.append(
            f"the run trained on dataset {info.get('name')!r}, but {model!r} is bound to {dataset!r}"
        )
    if info.get("model_name", model) != model:
        problems.append(f"the run would register model {info.get('model_name')!r}, not {model!r}")
    if target is not None and spec.get("target") != target:
        problems.append(
            f"the run's target is {spec.get('target')!r}, but {model!r} is bound to target {target!r}"
        )
    return problems


def registry_problems(info: Mapping[str, Any], model: str) -> list[str]:
    """What differs between a run's data and what the model's champion was trained on."""
    champion = _champion(model)
    if champion is None:
        return []
    version, tags = champion
    problems = []
    trained_on = tags.get("appliance.dataset")
    if trained_on and trained_on != info.get("name"):
        problems.append(
            f"champion version {version} of {model!r} was trained on dataset {trained_on!r}, "
            f"this run on {info.get('name')!r}"
        )
    features = list((info.get("spec") or {}).get("features") or [])
    champion_features = _profile_features(model, version)
    if champion_features is not None and features and champion_features != features:
        missing = [f for f in champion_features if f not in features][:5]
        extra = [f for f in features if f not in champion_features][:5]
        problems.append(
            f"the run's columns differ from those of champion version {version} "
            f"(missing {missing or 'none'}, new {extra or 'none'}; "
            f"{len(features)} columns, the champion {len(champion_features)})"
        )
    return problems


def check_workdir(workdir: Path, model: str, dataset: str, target: str | None, registry: bool = True) -> str:
    """Refuse (BindingMismatchError) a run whose data is not its model's; a line saying what held."""
    path = workdir / "dataset.json"
    if not path.is_file():
        raise BindingMismatchError(
            f"the run for model {model!r} wrote no dataset.json: what it trained on cannot be checked",
            fix="run the trainer's validate step (or write dataset.json as it does) before register",
        )
    info = json.loads(path.read_text())
    problems = workdir_problems(info, model, dataset, target)
    if not problems and registry:
        problems = registry_problems(info, model)
    if problems:
        raise BindingMismatchError(
            f"not registering a version of {model!r}: " + "; ".join(problems),
            fix=f"retrain {model!r} on its own dataset (models[].dataset in the answers file), or register "
            "the new data under another model name",
        )
    columns = len((info.get("spec") or {}).get("features", []))
    return f"binding of {model!r} holds: dataset {dataset!r}, {columns} columns"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m appliance.workloads.binding", description="check a run's data against its binding"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="refuse a run whose data is not its model's (exit 2)")
    check.add_argument("--workdir", type=Path, required=True)
    check.add_argument("--model", required=True)
    check.add_argument("--dataset", required=True)
    check.add_argument("--target")
    args = parser.parse_args(argv)
    try:
        print(check_workdir(args.workdir, args.model, args.dataset, args.target), flush=True)
    except ApplianceError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
