"""``appliance models import RUN_OR_URI --name NAME --dataset NAME``: a model trained anywhere.

The model is converted to ONNX, checked against the original on the dataset's held-out rows,
profiled, registered and promoted like a version the built-in trainer made (see
``appliance.workloads.importer``). Progress goes to stderr, one line per step; the last stdout
line is the JSON summary. The converters, torch and onnxruntime are imported inside the command
only, so the CLI's other commands never load them.
"""

from __future__ import annotations

import json
import os
import time

import click


@click.command("import")
@click.argument("source", metavar="RUN_OR_URI")
@click.option("--name", required=True, help="Registered model name to import into.")
@click.option(
    "--dataset", required=True, help="The dataset the model was trained on (see `appliance data ls`)."
)
@click.option("--dataset-key", help="A specific file of the dataset (default: the newest).")
@click.option("--target", help="Target column (default: 'target', else the last column).")
@click.option(
    "--task",
    type=click.Choice(["auto", "classification", "regression"]),
    default="auto",
    show_default=True,
    help="Only needed when neither the model nor the target says it.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Split seed (the trainer's default).")
@click.option(
    "--atol",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Parity: absolute tolerance.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=1e-5,
    show_default=True,
    help="Parity: relative tolerance.",
)
@click.option(
    "--promote-margin",
    type=float,
    default=0.0,
    show_default=True,
    help="How much the import must beat the champion by to replace it.",
)
@click.option("--metric", help="Ranking metric: accuracy or f1 (classification), rmse (regression).")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON summary.")
def import_cmd(
    source: str,
    name: str,
    dataset: str,
    dataset_key: str | None,
    target: str | None,
    task: str,
    seed: int,
    atol: float,
    rtol: float,
    promote_margin: float,
    metric: str | None,
    as_json: bool,
) -> None:
    """Convert a model logged to MLflow (scikit-learn, XGBoost, LightGBM, PyTorch or ONNX) to ONNX,
    check it against the original, and register it; champion only if better.

    RUN_OR_URI is runs:/RUN_ID/PATH, models:/NAME/VERSION, models:/MODEL_ID, a local MLflow model
    folder or a .onnx file.
    """
    from appliance.cli.common import app_context
    from appliance.names import check_name

    check_name(name, "model name")
    check_name(dataset, "dataset name")
    os.environ.update(app_context().connection_env())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress is ours, on stderr
    from appliance.workloads.importer import steps
    from appliance.workloads.trainer import tracking

    tracking.check_reachable()
    started = time.monotonic()

    def progress(step: str, message: str) -> None:
        index = steps.STEPS.index(step) + 1
        click.echo(
            f"[{time.monotonic() - started:6.1f}s] {index}/{len(steps.STEPS)} {step:<8} {message}", err=True
        )

    opts = steps.ImportOptions(
        source=source,
        name=name,
        dataset=dataset,
        dataset_key=dataset_key,
        target=target,
        task=task,
        seed=seed,
        atol=atol,
        rtol=rtol,
        promote_margin=promote_margin,
        metric=metric,
    )
    summary = steps.run(opts, progress)
    if not as_json:
        shown = " ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items())
        click.echo(f"{summary['model_name']} v{summary['version']}: {summary['decision']} ({shown})")
    click.echo(json.dumps(summary, default=str))
