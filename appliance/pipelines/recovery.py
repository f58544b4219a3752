"""Runs left "running" by a process that died (kill -9, power loss) are failed, not left hanging.

A run's model lock dies with its process, so a record that says running while nobody holds its
lock (or while the lock belongs to a newer run) is an orphan: it is marked failed, its MLflow
parent and running child runs are set FAILED, and any step process it left behind is killed.
The controller calls this at start-up; a new run calls it for its own model once it holds the lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

from appliance.pipelines.locks import holder
from appliance.pipelines.process import kill_group
from appliance.pipelines.records import RunStore
from appliance.pipelines.tracking import TrackingUnavailableError, tracker_from_env

log = logging.getLogger(__name__)

RESTART_REASON = "controller restarted mid-run"


def _belongs_to(pid: int, run_id: str) -> bool:
    """Whether process ``pid`` is a step of ``run_id`` (pids get reused; the environment tells)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"APPLIANCE_RUN_ID={run_id}".encode() in environ.split(b"\0")


def fail_orphans(
    store: RunStore,
    state_dir: Path,
    env: Mapping[str, str],
    model: str | None = None,
    reason: str = RESTART_REASON,
) -> list[str]:
    """Mark every orphaned running run (of ``model``, or all) failed; return their ids."""
    failed: list[str] = []
    for run in store.recent(limit=1000, state="running", model=model):
        owner = holder(state_dir, run["model"])
        if owner is not None and owner.run_id == run["id"]:
            continue
        for step in run["steps"]:
            if step["state"] == "running":
                if step["child_pid"] and _belongs_to(step["child_pid"], run["id"]):
                    kill_group(step["child_pid"], grace=1.0)
                store.update_step(
                    run["id"],
                    step["name"],
                    state="failed",
                    error=reason,
                    finished=time.time(),
                    child_pid=None,
                )
        store.finish(run["id"], "failed", outcome="failed", error=reason)
        _fail_in_mlflow(env, run, reason)
        failed.append(run["id"])
    return failed


def _fail_in_mlflow(env: Mapping[str, str], run: dict, reason: str) -> None:
    ids = [s["mlflow_run_id"] for s in run["steps"] if s["state"] == "running" and s["mlflow_run_id"]]
    ids += [run["mlflow_run_id"]] if run["mlflow_run_id"] else []
    if not ids:
        return
    try:
        tracker = tracker_from_env(dict(env), run["model"])
        for mlflow_id in ids:
            if tracker:
                tracker.end(mlflow_id, "FAILED", tags={"appliance.error": reason})
    except TrackingUnavailableError as err:
        log.warning("run %s: could not mark its MLflow runs FAILED: %s", run["id"], err)
