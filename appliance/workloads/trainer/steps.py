"""The data and training steps: validate, train and evaluate.

Each reads its inputs from the work directory (see ``workdir``), logs into the active MLflow run
and leaves its results for the next step.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import appliance
from appliance.workloads.trainer import metrics as metric_fns
from appliance.workloads.trainer import registry
from appliance.workloads.trainer.errors import WorkdirError
from appliance.workloads.trainer.prepare import Split
from appliance.workloads.trainer.schema import DatasetSpec
from appliance.workloads.trainer.workdir import (
    Options,
    dataset_info,
    load_model,
    primary_metric,
    require,
    spec_of,
    write_json,
)


def validate(opts: Options) -> dict[str, Any]:
    """Read the dataset through the data connection, check it, split it; log where it came from."""
    import mlflow

    from appliance.dataconn import DataConnection, read_dataset
    from appliance.workloads.trainer import images, prepare, schema, user_model

    if not opts.dataset:
        raise WorkdirError("validate", "a dataset name", "validate --dataset NAME")
    loaded = read_dataset(DataConnection.from_env(), opts.dataset, opts.dataset_key)
    spec = schema.validate(loaded.frame, opts.dataset, opts.target, opts.task)
    kind, shape = images.choose_kind(opts.model_kind, opts.dataset, spec.features)
    data = prepare.split(loaded.frame, spec, opts.seed)
    opts.workdir.mkdir(parents=True, exist_ok=True)
    data.save(opts.workdir / "split.npz")
    # The rows a user's own training code learns from (user_model's contract), test rows held back.
    user_model.write_train_csv(opts.workdir, spec, data)
    rows = {s: len(data.y[s]) for s in data.y}
    info = {
        "name": loaded.name,
        "key": loaded.key,
        "uri": loaded.uri,
        "sha256": loaded.sha256,
        "model_name": opts.model_name or opts.dataset,
        "seed": opts.seed,
        "spec": asdict(spec),
        "rows": rows,
        "model_kind": kind,
        "image_shape": list(shape) if shape else None,
    }
    write_json(opts, "dataset.json", info)
    mlflow.log_params(
        {"dataset": loaded.name, "dataset_key": loaded.key, "task": spec.task, "target": spec.target}
        | {"n_features": len(spec.features), "split_seed": opts.seed}
        | {f"n_{s}": n for s, n in rows.items()}
    )
    mlflow.set_tags(
        {"appliance.dataset_uri": loaded.uri, "appliance.dataset_sha256": loaded.sha256}
        | {"appliance.version": appliance.__version__, "appliance.model_name": info["model_name"]}
    )
    shown = f", images {'x'.join(map(str, shape))}" if shape else ""
    print(
        f"dataset {loaded.uri}: {spec.n_rows} rows, {len(spec.features)} features, {spec.task}{shown}; "
        f"model {kind}",
        flush=True,
    )
    return info


def train(opts: Options) -> dict[str, Any]:
    """Fit the MLP (or CNN), printing and logging every epoch; save the weights and the curve.
    With ``--script`` the user's own training code runs instead (``user_model``)."""
    if opts.script is not None:
        from appliance.workloads.trainer import user_model

        return user_model.train(opts)
    import mlflow
    import torch

    from appliance.workloads.trainer import distributed, fit, images, tracking

    info = dataset_info(opts, "train")
    spec = spec_of(info)
    data = Split.load(require(opts, "train", "split.npz", "validate"))
    chosen = opts.model_kind if opts.model_kind != "auto" else info.get("model_kind", "auto")
    kind, shape = images.choose_kind(chosen, info["name"], spec.features)
    cfg = opts.fit_config()
    cfg.model_kind, cfg.image_shape = kind, shape or ()
    mlflow.log_params(cfg.params() | {"appliance_version": appliance.__version__})

    def progress(row: dict[str, float]) -> None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
        print(f"epoch {int(row['epoch'])}/{cfg.epochs} {shown}", flush=True)
        tracking.log_epoch(row)

    world = distributed.world()
    result = fit.fit(data, spec.task, spec.n_outputs, cfg, progress, world)
    arch = {"n_features": len(spec.features), "n_outputs": spec.n_outputs, "hidden": list(cfg.hidden)}
    arch |= {"kind": kind, "image_shape": list(shape or ())}
    torch.save(
        {"state_dict": result.model.state_dict(), "arch": arch | {"dropout": cfg.dropout}},
        opts.workdir / "model.pt",
    )
    tracking.log_curve(result.history, spec.task)
    summary = {
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "device": result.device,
        "model_kind": kind,
        "train_seconds": round(result.seconds, 3),
    }
    mlflow.log_params({"device": result.device, "world_size": result.world_size})
    if world.distributed:
        across = {"nodes": world.nodes, "nproc_per_node": world.local_size, "dist_backend": result.backend}
        mlflow.log_params(across | {"rank_batch_size": result.rank_batch_size})
        summary |= {"world_size": world.size, "nodes": world.nodes, "dist_backend": result.backend}
    mlflow.log_metrics({"train_seconds": result.seconds, "best_epoch": result.best_epoch})
    write_json(opts, "train.json", summary | {"history": result.history})
    return summary


def evaluate(opts: Options) -> dict[str, Any]:
    """Test metrics of the new model and of the current champion on the same test rows."""
    if opts.from_user_model:
        from appliance.workloads.trainer import user_model

        return user_model.evaluate(opts)
    from appliance.workloads.trainer.fit import predict

    info = dataset_info(opts, "evaluate")
    spec = spec_of(info)
    data = Split.load(require(opts, "evaluate", "split.npz", "validate"))
    model = load_model(opts, "evaluate")
    test = metric_fns.compute(spec.task, data.y["test"], predict(model, spec.task, data.x["test"]))
    return compare_with_champion(opts, info, spec, data, test)


def compare_with_champion(
    opts: Options, info: dict[str, Any], spec: DatasetSpec, data: Split, test: dict[str, float]
) -> dict[str, Any]:
    """Log the new model's test metrics, score the champion on the same rows, write evaluation.json."""
    import mlflow

    mlflow.log_metrics({f"test_{k}": v for k, v in test.items()})
    metric = primary_metric(opts, spec.task)
    champ_ver = registry.champion_version(info["model_name"])
    champ = None
    if champ_ver is not None:
        champ = registry.score_version(
            info["model_name"], champ_ver, spec.task, data.x["test"], data.y["test"]
        )
    result = {"metrics": test, "metric": metric, "champion_version": champ_ver, "champion_metrics": champ}
    if champ is not None:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in champ.items()})
    print("test " + " ".join(f"{k}={v:.4f}" for k, v in test.items()), flush=True)
    write_json(opts, "evaluation.json", result)
    return result


def train_follower(opts: Options) -> dict[str, Any]:
    """A rank other than 0 under torchrun: read the dataset through the data connection, make the
    same seeded split and train its shard in step with rank 0, which alone validates, logs and
    registers (``distributed``). Nothing is written to MLflow from here."""
    from appliance.dataconn import DataConnection, read_dataset
    from appliance.workloads.trainer import distributed, fit, images, prepare, schema

    if not opts.dataset:
        raise WorkdirError("train", "a dataset name", "run --dataset NAME")
    world = distributed.world()
    loaded = read_dataset(DataConnection.from_env(), opts.dataset, opts.dataset_key)
    spec = schema.validate(loaded.frame, opts.dataset, opts.target, opts.task)
    kind, shape = images.choose_kind(opts.model_kind, opts.dataset, spec.features)
    data = prepare.split(loaded.frame, spec, opts.seed)
    cfg = opts.fit_config()
    cfg.model_kind, cfg.image_shape = kind, shape or ()
    print(
        f"rank {world.rank}/{world.size}: dataset {loaded.uri} ({loaded.sha256[:12]}), "
        f"{len(data.y['train'])} training rows, {distributed.rank_batch(cfg.batch_size, world)} per step",
        flush=True,
    )
    result = fit.fit(data, spec.task, spec.n_outputs, cfg, lambda row: None, world)
    return {
        "rank": world.rank,
        "world_size": world.size,
        "dataset_sha256": loaded.sha256,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 3),
    }
