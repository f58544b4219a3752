"""MLflow plumbing: reachability check, the run every step logs into, and the training curve.

A step logs into the run named by ``MLFLOW_RUN_ID`` when the pipeline runner set one, else into
a new run of the model's experiment. Any error inside marks that run FAILED with the message as
a tag, so the failure is visible in MLflow as well as on the terminal.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from appliance.workloads.trainer.errors import MlflowAuthError, MlflowUnreachableError, TrainerError

ERROR_TAG = "appliance.error"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise MlflowUnreachableError("(unset)", "MLFLOW_TRACKING_URI is not set")
    return uri


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast with a clear message instead of MLflow's minutes of retries."""
    import httpx

    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return  # a local store (file:, sqlite:) needs no server
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as err:
        raise MlflowUnreachableError(uri, type(err).__name__) from err
    if response.status_code != 200:
        raise MlflowUnreachableError(uri, f"/health answered HTTP {response.status_code}")
    _check_account(uri, timeout)


def _check_account(uri: str, timeout: float) -> None:
    """MLflow with its authentication on refuses a missing or wrong account: say so up front,
    with where the stack's account is, rather than after MLflow's retries."""
    import httpx

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None
    try:
        response = httpx.get(
            f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=auth,
            timeout=timeout,
        )
    except httpx.HTTPError as err:
        raise MlflowUnreachableError(uri, type(err).__name__) from err
    if response.status_code == 401:
        raise MlflowAuthError(uri, user)


@contextmanager
def run_scope(experiment: str, run_name: str) -> Iterator[str]:
    """Yield the id of the active run, starting (or resuming ``MLFLOW_RUN_ID``) when none is active."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        yield active.info.run_id
        return
    check_reachable()
    given = os.environ.get("MLFLOW_RUN_ID")
    if given:
        # The run's own experiment, so that an experiment chosen earlier in this process
        # cannot clash with the run the pipeline runner handed us.
        try:
            owner = mlflow.MlflowClient().get_run(given).info.experiment_id
        except mlflow.exceptions.MlflowException as err:
            raise TrainerError(
                f"MLFLOW_RUN_ID {given!r} is not a run on {tracking_uri()}",
                fix="unset MLFLOW_RUN_ID to start a new run, or create the run on this server first",
            ) from err
        mlflow.set_experiment(experiment_id=owner)
    else:
        mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
    with mlflow.start_run(run_name=None if given else run_name) as run:
        try:
            yield run.info.run_id
        except BaseException as err:
            mlflow.set_tag(ERROR_TAG, str(err).splitlines()[0][:4000] if str(err) else type(err).__name__)
            raise


def log_curve(history: list[dict[str, float]], task: str) -> None:
    """Plot train/val loss and the validation metric per epoch; log it as training_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    epochs = [row["epoch"] for row in history]
    metric = "val_accuracy" if task == "classification" else "val_rmse"
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    ax_metric.plot(epochs, [r.get(metric, float("nan")) for r in history], color="tab:green")
    ax_metric.set(xlabel="epoch", ylabel=metric, title=metric.replace("_", " "))
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "training_curve.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        mlflow.log_artifact(str(path))


def log_epoch(row: dict[str, Any]) -> None:
    import mlflow

    step = int(row["epoch"])
    mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=step)
