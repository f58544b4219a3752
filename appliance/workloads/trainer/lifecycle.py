"""The whole lifecycle in one process and one MLflow run, and the JSON summary it prints.

``run`` is what ``appliance train`` and ``python -m appliance.workloads.trainer run`` call: the
same six steps the pipeline runs separately, sharing one work directory.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.workloads.trainer import release, steps, tracking
from appliance.workloads.trainer.errors import TrainerError
from appliance.workloads.trainer.workdir import Options, read_json

STEP_FUNCTIONS: dict[str, Callable[[Options], dict[str, Any]]] = {
    "validate": steps.validate,
    "train": steps.train,
    "evaluate": steps.evaluate,
    "export": release.export,
    "register": release.register,
    "promote": release.promote,
}


def experiment_for(opts: Options) -> str:
    """Runs are grouped by model: the experiment is the model name (default the dataset name)."""
    return opts.model_name or opts.dataset or "appliance"


def run_step(step: str, opts: Options) -> dict[str, Any]:
    """One step inside the active run, or a new run (``MLFLOW_RUN_ID`` when the pipeline set it)."""
    if step != "validate" and not opts.model_name and (opts.workdir / "dataset.json").exists():
        opts.model_name = read_json(opts, step, "dataset.json", "validate")["model_name"]
    with tracking.run_scope(
        experiment_for(opts), f"{step}-{opts.dataset or opts.model_name or 'model'}"
    ) as run_id:
        result = STEP_FUNCTIONS[step](opts)
    return {"step": step, "run_id": run_id} | result


def run(opts: Options) -> dict[str, Any]:
    """validate -> train -> evaluate -> export -> register -> promote; returns the summary.

    Under torchrun (``distributed``) rank 0 runs the whole lifecycle and the other ranks train
    their shards alongside it (``steps.train_follower``)."""
    from appliance.workloads.trainer import distributed

    world = distributed.world()
    if world.distributed and opts.script is not None:
        raise TrainerError(
            "--script runs your own code in one process; it is not started across hosts",
            fix="run it without torchrun (`appliance train --script ...`), "
            "or train the built-in model across hosts",
        )
    try:
        # Every rank joins before anything can fail, so that one rank's failure reaches the others
        # at their next collective (a closed connection) rather than after the join timeout.
        distributed.init(world, distributed.device_for(world))
        if world.distributed and not world.leader:
            return steps.train_follower(opts)
        return _run(opts) | ({"world_size": world.size} if world.distributed else {})
    finally:
        distributed.shutdown()


def _run(opts: Options) -> dict[str, Any]:
    tracking.check_reachable()
    if opts.script is not None:
        from appliance.workloads.trainer.user_model import check_script

        opts.script = check_script(opts.script)  # before a run is started for it
        opts.from_user_model = True
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="appliance-train-") as tmp:
        if opts.workdir == Path():
            opts.workdir = Path(tmp)
        results: dict[str, dict[str, Any]] = {}
        seconds: dict[str, float] = {}
        with tracking.run_scope(experiment_for(opts), f"train-{opts.dataset}") as run_id:
            for step, fn in STEP_FUNCTIONS.items():
                print(f"== {step}", flush=True)
                step_started = time.perf_counter()
                results[step] = fn(opts)
                seconds[step] = round(time.perf_counter() - step_started, 3)
    decision, train = results["promote"], results["train"]
    return {
        "run_id": run_id,
        "model_name": decision["model_name"],
        "version": decision["version"],
        "model_uri": results["register"]["model_uri"],
        "promoted": decision["promoted"],
        "decision": decision["decision"],
        "metric": decision["metric"],
        "challenger_score": decision["challenger_score"],
        "champion_score": decision["champion_score"],
        "champion_version": decision["champion_version"],
        "metrics": results["evaluate"]["metrics"],
        "parity_max_abs_diff": results["export"]["parity_max_abs_diff"],
        "dataset": {k: results["validate"][k] for k in ("name", "key", "uri", "sha256")},
        "task": results["validate"]["spec"]["task"],
        "epochs_run": train["epochs_run"],
        "best_epoch": train["best_epoch"],
        "device": train["device"],
        "model_kind": train["model_kind"],
        "train_seconds": train["train_seconds"],
        "step_seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 3),
    }
