"""Errors the trainer reports to its user, each naming the problem and the fix.

A pipeline runner, the CLI and a person at a terminal all see the same text, so the messages
name the column, version or service that is wrong rather than a stack trace.
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class TrainerError(ApplianceError):
    """Base of the trainer's errors."""


class SchemaError(TrainerError):
    """The dataset does not have the shape a tabular model needs."""

    exit_code = 2

    def __init__(self, dataset: str, column: str | None, problem: str, fix: str) -> None:
        self.column = column
        where = f"column {column!r}" if column else "the table"
        super().__init__(f"dataset {dataset!r}: {where} {problem}", fix=fix)


class TrainingError(TrainerError):
    """Training could not produce a usable model (diverged, NaN loss)."""


class ParityError(TrainerError):
    """The exported ONNX model does not reproduce the PyTorch model's outputs."""

    def __init__(self, max_diff: float, tolerance: float) -> None:
        super().__init__(
            f"ONNX export parity check failed: max abs diff {max_diff:.3g} > {tolerance:g} "
            "on the test split; nothing was registered",
            fix="report this with the run id; retrain with a different --seed to work around it",
        )


class MlflowUnreachableError(TrainerError):
    """The MLflow tracking server does not answer."""

    def __init__(self, uri: str, cause: str) -> None:
        super().__init__(
            f"cannot reach MLflow at {uri}: {cause}",
            fix="start the stack with `appliance up` (or `appliance status` to see why MLflow is down), "
            "or set MLFLOW_TRACKING_URI",
        )


class MlflowAuthError(TrainerError):
    """MLflow asks for an account and got none, or a wrong one."""

    def __init__(self, uri: str, user: str | None) -> None:
        given = f"refuses the account {user!r}" if user else "asks for an account and none was given"
        super().__init__(
            f"MLflow at {uri} {given}",
            fix="run the command on the host that ran `appliance up` (it reads the stack's writer account), "
            "or set MLFLOW_TRACKING_USERNAME=appliance-writer and MLFLOW_TRACKING_PASSWORD to "
            "`appliance secrets show mlflow_writer_password`",
        )


class RegistryError(TrainerError):
    """A registry operation names a model, version or alias that does not exist."""

    exit_code = 2


class WorkdirError(TrainerError):
    """A pipeline step needs a result that an earlier step did not leave in --workdir."""

    exit_code = 2

    def __init__(self, step: str, missing: str, needs: str) -> None:
        super().__init__(
            f"step {step!r} needs {missing} in the work directory, which is missing",
            fix=f"run the {needs!r} step first with the same --workdir",
        )
