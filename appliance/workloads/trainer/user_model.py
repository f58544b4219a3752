"""A user's own training code (a script or a notebook) as the ``train`` step, and its model as the
one that is evaluated, exported, registered and promoted like the built-in trainer's.

The contract (docs/training.md), in the work directory, which is the code's current directory:

- given before it starts: ``dataset.json`` (validate's record: the dataset, its pinned file, the
  target, the feature columns, the task and classes) and ``train.csv`` (the training and
  validation rows of that file, feature columns then the target; the test rows are held back,
  so that evaluate and the champion comparison score every version on rows none has seen);
  the environment has ``APPLIANCE_WORKDIR``, ``APPLIANCE_DATASET``, ``APPLIANCE_TARGET``,
  ``APPLIANCE_MODEL_NAME``, ``APPLIANCE_TRAIN_CSV``, the data connection, MLflow's address and
  account with ``MLFLOW_RUN_ID`` (so ``mlflow.start_run()`` logs into the step's own run) and
  the host's ``CUDA_VISIBLE_DEVICES``;
- to leave behind: ``user_model/``, an MLflow model folder written with ``save_model`` of the
  sklearn, xgboost, lightgbm, pytorch or onnx flavour, taking the dataset's feature columns.

``evaluate --from-user-model`` converts that model with the importer's converter for its
framework (``appliance.workloads.importer``) and checks parity on the test rows before anything
is scored; ``export --from-user-model`` logs the converted graph with its drift profile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from appliance.workloads.trainer import metrics as metric_fns
from appliance.workloads.trainer.errors import TrainerError, TrainingError
from appliance.workloads.trainer.prepare import Split
from appliance.workloads.trainer.schema import DatasetSpec
from appliance.workloads.trainer.workdir import (
    Options,
    dataset_info,
    read_json,
    require,
    spec_of,
    write_json,
)

USER_MODEL = "user_model"
CONTRACT_FILE = f"{USER_MODEL}/MLmodel"
TRAIN_CSV = "train.csv"
SCRIPT_LOG = "train_script.log"
LOG_TAIL = 20
SUFFIXES = (".py", ".ipynb")


class ScriptError(TrainerError):
    """The user's training code failed or broke the contract."""


class NotAScriptError(ScriptError):
    """``--script`` names no Python script or notebook: invalid input."""

    exit_code = 2


def check_script(script: Path) -> Path:
    """The script as an absolute path, or NotAScriptError saying what a trainer can be."""
    if script.suffix not in SUFFIXES or not script.is_file():
        problem = "does not exist" if not script.exists() else f"is not a {' or '.join(SUFFIXES)} file"
        raise NotAScriptError(
            f"training script {script} {problem}",
            fix="give a Python script (.py) or a Jupyter notebook (.ipynb) that writes user_model/ "
            "(docs/training.md)",
        )
    return script.resolve()


def write_train_csv(workdir: Path, spec: DatasetSpec, data: Split) -> Path:
    """The training and validation rows with the dataset's column names and target values."""
    import numpy as np
    import pandas as pd

    x = np.concatenate([data.x["train"], data.x["val"]])
    y = np.concatenate([data.y["train"], data.y["val"]])
    frame = pd.DataFrame(x.astype(np.float64), columns=spec.features)
    labels = np.asarray(spec.classes)[y] if spec.task == "classification" else y.astype(np.float64)
    frame[spec.target] = labels
    path = workdir / TRAIN_CSV
    frame.to_csv(path, index=False)
    return path


def script_env(opts: Options, info: dict[str, Any]) -> dict[str, str]:
    """The process environment (data connection, MLflow account, GPU) plus what the contract names."""
    import mlflow

    env = dict(os.environ)
    active = mlflow.active_run()
    if active is not None:
        env |= {"MLFLOW_RUN_ID": active.info.run_id, "MLFLOW_EXPERIMENT_ID": active.info.experiment_id}
        env.pop("MLFLOW_EXPERIMENT_NAME", None)
    workdir = opts.workdir.resolve()
    return env | {
        "APPLIANCE_WORKDIR": str(workdir),
        "APPLIANCE_DATASET": info["name"],
        "APPLIANCE_TARGET": info["spec"]["target"],
        "APPLIANCE_MODEL_NAME": info["model_name"],
        "APPLIANCE_TRAIN_CSV": str(workdir / TRAIN_CSV),
    }


def command(script: Path, workdir: Path) -> list[str]:
    """A script runs with this interpreter; a notebook headless with papermill (as pipeline steps)."""
    if script.suffix == ".py":
        return [sys.executable, str(script)]
    return [
        sys.executable, "-m", "papermill", str(script), str(workdir / f"train-{script.stem}.ipynb"),
        "--cwd", str(workdir), "--log-output", "--no-progress-bar", "-k", "python3", "--language", "python",
    ]  # fmt: skip


def train(opts: Options) -> dict[str, Any]:
    """Run the user's script or notebook as the train step; check that it left ``user_model/``."""
    import mlflow

    assert opts.script is not None
    script = check_script(opts.script)
    info = dataset_info(opts, "train")
    require(opts, "train", TRAIN_CSV, "validate")
    env = script_env(opts, info)
    leftover = opts.workdir / USER_MODEL
    if leftover.exists():
        raise ScriptError(
            f"{leftover} already exists before {script.name} ran",
            fix="use an empty --workdir for each training run",
        )
    mlflow.log_params({"trainer": "user code", "script": script.name})
    print(f"running {script} in {opts.workdir}", flush=True)
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    with (opts.workdir / SCRIPT_LOG).open("w") as log:
        proc = subprocess.Popen(
            command(script, opts.workdir),
            cwd=opts.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            print(f"  | {line.rstrip()}", file=sys.stderr, flush=True)  # stdout is for the summary
        code = proc.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        shown = "\n".join(f"  | {line}" for line in tail) or "  | (no output)"
        raise TrainingError(
            f"training script {script.name} exited with {code}; the last lines of its log "
            f"({opts.workdir / SCRIPT_LOG}):\n{shown}",
            fix="fix the script and run it again; nothing was registered",
        )
    require_model(opts, "train", script.name)
    mlflow.log_metrics({"train_seconds": seconds})
    summary = {
        "script": str(script),
        "epochs_run": None,
        "best_epoch": None,
        "device": "user code",
        "model_kind": "user",
        "train_seconds": round(seconds, 3),
    }
    write_json(opts, "train.json", summary)
    return summary


def require_model(opts: Options, step: str, by: str = "the training script") -> Path:
    """``user_model/`` as the contract says, or a ScriptError naming the contract file."""
    folder = opts.workdir / USER_MODEL
    if not (folder / "MLmodel").is_file():
        raise ScriptError(
            f"step {step!r}: {by} left no model: {opts.workdir / CONTRACT_FILE} is missing",
            fix="save the fitted model as an MLflow model folder named user_model in the current directory, "
            "e.g. mlflow.sklearn.save_model(model, 'user_model') (docs/training.md)",
        )
    return folder


def evaluate(opts: Options) -> dict[str, Any]:
    """Convert ``user_model/`` to the served ONNX layout, check parity, score it on the test rows."""
    import mlflow

    from appliance.workloads.importer import parity, rows, source
    from appliance.workloads.importer.steps import convert_checked, converter_for, model_facts
    from appliance.workloads.trainer.steps import compare_with_champion

    info = dataset_info(opts, "evaluate")
    spec = spec_of(info)
    folder = require_model(opts, "evaluate")
    with tempfile.TemporaryDirectory() as tmp:
        src = source.load(str(folder), Path(tmp))
    module = converter_for(src)
    model_task, columns = model_facts(src, module)
    data = rows.load(
        info["model_name"],
        info["name"],
        info["key"],
        spec.target,
        spec.task,
        info["seed"],
        model_task,
        columns,
    )
    if hasattr(module, "classes_of"):
        rows.check_classes(data, module.classes_of(src.model))
    graph, actual, diff = convert_checked(src, module, data, str(folder), parity.ATOL, parity.RTOL)
    (opts.workdir / "model.onnx").write_bytes(graph.SerializeToString())
    if data.cols.features != spec.features:
        # The model takes the columns in its own order: later steps read the split in that order.
        data.split.save(opts.workdir / "split.npz")
        info["spec"]["features"] = data.cols.features
        write_json(opts, "dataset.json", info)
    print(
        f"{src.framework} model converted with {module.CONVERTER}; parity on {len(data.split.y['test'])} "
        f"test rows: max abs diff {diff:.3g}",
        flush=True,
    )
    mlflow.log_params({"framework": src.framework, "converter": module.CONVERTER})
    mlflow.log_metric("onnx_parity_max_abs_diff", diff)
    test = metric_fns.compute(spec.task, data.split.y["test"], actual)
    write_json(
        opts,
        "user_model.json",
        {"framework": src.framework, "converter": module.CONVERTER, "parity_max_abs_diff": diff},
    )
    return compare_with_champion(opts, info, spec, data.split, test)


def export(opts: Options) -> dict[str, Any]:
    """Log the converted graph (from evaluate) with the drift profile of the training rows."""
    from appliance.workloads.importer.parity import run_graph
    from appliance.workloads.trainer import profile
    from appliance.workloads.trainer.release import log_served

    info = dataset_info(opts, "export")
    spec = spec_of(info)
    converted = read_json(opts, "export", "user_model.json", "evaluate")
    onnx_path = require(opts, "export", "model.onnx", "evaluate")
    data = Split.load(require(opts, "export", "split.npz", "validate"))
    graph = onnx_path.read_bytes()
    drift = profile.build(spec.features, data.x["train"], run_graph(graph, data.x["train"]), spec.task)
    onnx_test = metric_fns.compute(spec.task, data.y["test"], run_graph(graph, data.x["test"]))
    tags = {"appliance.framework": converted["framework"], "appliance.converter": converted["converter"]}
    result = log_served(
        opts, info, onnx_path, data.x["test"][:5], drift, converted["parity_max_abs_diff"], tags
    )
    result["onnx_metrics"] = onnx_test
    write_json(opts, "export.json", result)
    print(f"exported {onnx_path} ({json.dumps(tags)})", flush=True)
    return result
