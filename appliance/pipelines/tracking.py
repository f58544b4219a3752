"""MLflow bookkeeping of a pipeline run: one parent run, one child run per executed step.

The runner creates the runs itself (``MlflowClient``, no fluent active-run state, so controller
threads never share one) and hands each step its child run id in ``MLFLOW_RUN_ID``; a step that
uses ``mlflow.start_run()`` then logs into it. The runner alone ends the runs, so a step that
crashes still leaves a FAILED run behind rather than a RUNNING one. mlflow is imported lazily:
the CLI core must stay light.
"""

from __future__ import annotations

import os
from typing import Any

from appliance.errors import ApplianceError

PARENT_TAG = "mlflow.parentRunId"


class TrackingUnavailableError(ApplianceError):
    """The MLflow server cannot be reached or refused a call."""

    def __init__(self, uri: str, cause: Exception) -> None:
        super().__init__(
            f"MLflow at {uri} could not record the pipeline run: {cause}",
            fix="check that MLflow is up (`appliance status`) and that MLFLOW_TRACKING_URI points at it",
        )


class Tracker:
    """Parent and child runs in one experiment of one tracking server."""

    def __init__(self, uri: str, experiment: str) -> None:
        # Fail within seconds when the server is down instead of MLflow's two-minute backoff.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # Progress goes through our events; MLflow would print a "View run" line on every terminate.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment = experiment
        self._experiment_id: str | None = None

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException, connection errors: one message for the user
            raise TrackingUnavailableError(self.uri, err) from err

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self._call(self.client.get_experiment_by_name, self.experiment)
            self._experiment_id = (
                found.experiment_id if found else self._call(self.client.create_experiment, self.experiment)
            )
        return self._experiment_id

    def start_parent(self, name: str, tags: dict[str, str]) -> str:
        run = self._call(self.client.create_run, self.experiment_id(), run_name=name, tags=tags)
        return str(run.info.run_id)

    def start_child(self, parent_id: str, step: str, tags: dict[str, str]) -> str:
        tags = {**tags, PARENT_TAG: parent_id, "appliance.step": step}
        run = self._call(self.client.create_run, self.experiment_id(), run_name=step, tags=tags)
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        for key, value in params.items():
            self._call(self.client.log_param, run_id, key, value)

    def end(
        self,
        run_id: str,
        status: str,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Record final metrics and tags, then terminate the run with ``status`` (FINISHED, FAILED...)."""
        for metric, number in (metrics or {}).items():
            self._call(self.client.log_metric, run_id, metric, number)
        for tag, text in (tags or {}).items():
            self._call(self.client.set_tag, run_id, tag, text)
        self._call(self.client.set_terminated, run_id, status)


def tracker_from_env(env: dict[str, str], experiment: str) -> Tracker | None:
    """A Tracker on the data connection's ``MLFLOW_TRACKING_URI``; None when it is not set."""
    uri = env.get("MLFLOW_TRACKING_URI")
    return Tracker(uri, experiment) if uri else None
