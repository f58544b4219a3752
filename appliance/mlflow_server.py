"""Runs ``mlflow server`` as one process: MLflow's own command line, then uvicorn in its place.

``mlflow server`` parses its options, prepares the environment its app reads (the stores, the
artifact proxy, the basic-auth bootstrap) and then starts uvicorn as a *child* and waits for it.
That parent holds every module the CLI imported (measured about 220 MiB PSS of the lab stack's
MLflow 427 MiB at idle) only to forward signals. Here the same CLI runs with its process start
replaced by ``execve``: uvicorn takes over this process, with the same command line and
environment MLflow built, so nothing MLflow decides is coded twice, and the supervisor's SIGTERM
reaches uvicorn itself. With ``--app-name basic-auth`` uvicorn serves that app behind a login
check made before a request's body is read (``appliance.mlflow_gate`` says why).

Server-side job execution stays off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): its runner
is started by the parent after the child, which this process no longer is; the appliance submits
no such jobs.

Usage: ``python -m appliance.mlflow_server [mlflow server options]``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def exec_in_place(cmd: list[str], extra_env: dict[str, str] | None = None, **_: Any) -> None:
    """Stands in for ``mlflow.utils.process._exec_cmd``: the server replaces this process, serving
    MLflow's ``basic-auth`` app behind the login check that runs before a body is read
    (``mlflow_gate``)."""
    from appliance.mlflow_gate import GATED_APP, MLFLOW_AUTH_APP

    cmd = [GATED_APP if arg == MLFLOW_AUTH_APP else arg for arg in cmd]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, {**os.environ, **(extra_env or {})})


def main(argv: list[str]) -> int:
    if os.environ.get(JOB_EXECUTION, "false").lower() not in ("false", "0"):
        print(
            f"error: {JOB_EXECUTION} must be false: its job runner needs `mlflow server` as the "
            "server's parent process (unset it, or run `mlflow server` itself)",
            file=sys.stderr,
        )
        return 2
    os.environ[JOB_EXECUTION] = "false"
    import mlflow.server
    from mlflow.cli import cli

    mlflow.server._exec_cmd = exec_in_place
    cli.main(args=["server", *argv], prog_name="mlflow server")
    return 0  # not reached when the server started: uvicorn replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
