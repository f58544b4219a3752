"""``appliance train``: the whole model lifecycle on one dataset, from the CLI.

It runs the trainer workload in this process with the stack's data connection and MLflow URI
in the environment, the very code ``python -m appliance.workloads.trainer run`` and the
retraining pipeline run. torch is imported inside the command only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


@click.command("train")
@click.option("--dataset", required=True, help="Dataset name (see `appliance data ls`).")
@click.option("--dataset-key", help="A specific file of the dataset (default: the newest).")
@click.option("--model-name", help="Registered model name (default: the dataset name).")
@click.option("--target", help="Target column (default: 'target', else the last column).")
@click.option(
    "--task", type=click.Choice(["auto", "classification", "regression"]), default="auto", show_default=True
)
@click.option(
    "--model-kind",
    type=click.Choice(["auto", "mlp", "cnn"]),
    default="auto",
    show_default=True,
    help="auto: a small CNN for an image dataset (columns pixel_ROW_COL), else the MLP.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=60, show_default=True, help="Maximum epochs.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--promote-margin",
    type=float,
    default=0.0,
    show_default=True,
    help="How much the new version must beat the champion by to replace it.",
)
@click.option("--metric", help="Ranking metric: accuracy or f1 (classification), rmse (regression).")
@click.option(
    "--script",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Your own training script (.py) or notebook (.ipynb) instead of the built-in model; it must "
    "leave an MLflow model folder user_model/ (docs/training.md).",
)
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), help="Keep step results here.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def train_cmd(
    dataset: str,
    dataset_key: str | None,
    model_name: str | None,
    target: str | None,
    task: str,
    model_kind: str,
    epochs: int,
    seed: int,
    promote_margin: float,
    metric: str | None,
    script: Path | None,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Validate, train, evaluate, export to ONNX, register, and promote if better than the champion.

    With --script, your own code trains the model and the same steps follow it."""
    from appliance.cli.common import app_context
    from appliance.names import check_name

    check_name(dataset, "dataset name")
    if model_name is not None:
        check_name(model_name, "model name")
    os.environ.update(app_context().connection_env())
    from appliance.workloads.trainer import lifecycle
    from appliance.workloads.trainer.workdir import Options

    opts = Options(
        workdir=workdir or Path(),
        dataset=dataset,
        dataset_key=dataset_key,
        model_name=model_name,
        target=target,
        task=task,
        epochs=epochs,
        seed=seed,
        promote_margin=promote_margin,
        metric=metric,
        model_kind=model_kind,
        script=script,
    )
    summary = lifecycle.run(opts)
    if not as_json:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items())
        click.echo(f"{summary['model_name']} v{summary['version']}: {summary['decision']} ({metrics})")
    click.echo(json.dumps(summary, default=str))
