"""Run a validated pipeline: lock the model, record the run, execute the steps in order.

``prepare()`` is quick and synchronous (parameters checked, model lock taken, record written) so
the controller can answer a webhook with a run id or "already running" at once; ``execute()`` is
the long part and runs in the caller's thread. The first failed step stops the run: steps after
it (the promote step is always last) never run, so the champion alias is untouched.
"""

from __future__ import annotations

import difflib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import appliance
from appliance.errors import ApplianceError
from appliance.names import check_name
from appliance.pipelines import templating
from appliance.pipelines.locks import ModelLock, holder
from appliance.pipelines.model import DATASET_PARAMETER, Pipeline, Step
from appliance.pipelines.process import run_attempt
from appliance.pipelines.records import RunStore
from appliance.pipelines.recovery import fail_orphans
from appliance.pipelines.stepexec import StepFailure, command_for, output_file, read_output, step_env
from appliance.pipelines.tracking import Tracker, TrackingUnavailableError, tracker_from_env

if TYPE_CHECKING:
    from appliance.answers import ModelEntry

REGISTER_STEP = "register"
"""Before a step of this name the run's data is checked against its model's binding."""
BINDING_CHECK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Event:
    """Progress of a run, as the CLI and the controller's log show it."""

    run_id: str
    step: str | None
    state: str
    """``started``, ``running``, ``retrying``, ``succeeded``, ``failed`` or ``skipped``."""
    attempt: int = 0
    attempts: int = 0
    message: str = ""


EventSink = Callable[[Event], None]


class AlreadyRunningError(ApplianceError):
    """Another run of the same model holds its lock."""

    def __init__(self, model: str, pid: int, run_id: str) -> None:
        self.model, self.pid, self.run_id = model, pid, run_id
        super().__init__(
            f"a pipeline run for model {model!r} is already running (run {run_id}, held by pid {pid})",
            fix=f"wait for it (`appliance pipeline show {run_id}`) and start this one again",
        )


class UnknownParameterError(ApplianceError):
    exit_code = 2


def resolve_params(pipeline: Pipeline, overrides: Mapping[str, str]) -> dict[str, str]:
    """The pipeline's parameter defaults with ``overrides`` applied; unknown names are refused."""
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in pipeline.parameters.items()}
    for key, value in overrides.items():
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownParameterError(
                f"pipeline {pipeline.name!r} has no parameter {key!r}",
                fix=f"{hint}its parameters: {', '.join(sorted(params)) or '(none)'}",
            )
        params[key] = value
    return params


@dataclass
class PreparedRun:
    """A run whose lock is held and whose record exists; ``PipelineRunner.execute`` runs it."""

    run_id: str
    pipeline: Pipeline
    source: Path
    model: str
    params: dict[str, str]
    trigger: str
    lock: ModelLock
    root: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    binding: ModelEntry | None = None
    """The model's entry in the answers (dataset, target): checked before ``register``."""

    @property
    def workdir(self) -> Path:
        return self.root / "work"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


class PipelineRunner:
    """Executes pipelines for one state directory with one data-connection environment."""

    def __init__(self, state_dir: Path, env: Mapping[str, str], on_event: EventSink | None = None) -> None:
        self.state_dir = state_dir
        self.env = dict(env)
        self.store = RunStore(state_dir)
        self.on_event = on_event or (lambda event: None)

    def prepare(
        self,
        pipeline: Pipeline,
        source: Path,
        model: str | None = None,
        params: Mapping[str, str] | None = None,
        trigger: str = "manual",
        binding: ModelEntry | None = None,
    ) -> PreparedRun:
        """Check parameters, take the model's lock and record the run; raise AlreadyRunningError if
        held. With a ``binding``, the data is checked against it before the ``register`` step."""
        model = check_name(model or pipeline.model, "model name")
        values = resolve_params(pipeline, params or {})
        if DATASET_PARAMETER in values:
            check_name(values[DATASET_PARAMETER], "dataset name")
        run_id = new_run_id()
        lock = ModelLock(self.state_dir, model)
        if not lock.acquire(run_id):
            found = holder(self.state_dir, model)
            raise AlreadyRunningError(model, found.pid if found else 0, found.run_id if found else "?")
        try:
            fail_orphans(self.store, self.state_dir, self.env, model=model)
            root = self.state_dir / "controller" / "runs" / run_id
            (root / "work").mkdir(parents=True)
            self.store.create(
                run_id,
                pipeline.name,
                model,
                trigger,
                values,
                root / "work",
                [s.name for s in pipeline.steps],
                os.getpid(),
            )
        except BaseException:
            lock.release()
            raise
        return PreparedRun(run_id, pipeline, source, model, values, trigger, lock, root, binding=binding)

    def execute(self, run: PreparedRun) -> dict[str, Any]:
        """Run every step; always releases the lock and leaves a finished record behind."""
        emit = self.on_event
        emit(Event(run.run_id, None, "started", message=f"{run.pipeline.name} for model {run.model}"))
        tracker: Tracker | None = None
        parent: str | None = None
        state, error, failed_step = "failed", None, None
        try:
            tracker = tracker_from_env(self.env, run.pipeline.experiment or run.model)
            if tracker:
                parent = tracker.start_parent(
                    f"{run.pipeline.name}-{run.run_id}",
                    {
                        "appliance.pipeline": run.pipeline.name,
                        "appliance.model": run.model,
                        "appliance.trigger": run.trigger,
                        "appliance.run_id": run.run_id,
                    },
                )
                tracker.log_params(parent, run.params)
                self.store.update_run(run.run_id, mlflow_run_id=parent)
            for step in run.pipeline.steps:
                if not self._run_step(run, step, tracker, parent):
                    failed_step = step.name
                    break
            else:
                state = "succeeded"
            if failed_step:
                row = next(
                    s for s in (self.store.get(run.run_id) or {}).get("steps", []) if s["name"] == failed_step
                )
                error = f"step {failed_step!r} failed: {row['error']}"
        except TrackingUnavailableError as err:
            error = err.message
        except OSError as err:
            error = f"cannot run the pipeline: {err}"
        except KeyboardInterrupt:
            error = "interrupted"
            raise
        finally:
            outcome = self._outcome(run, state, failed_step)
            version = _read_output(run, "version")
            if tracker and parent:
                # MLflow first, the record last: once the record says the run is over, everything
                # about it is closed (readers of the API go on to look at MLflow).
                try:
                    # A step cut short (Ctrl-C) is still running here and so is its MLflow child
                    # run; steps that failed normally ended theirs already.
                    for step in (self.store.get(run.run_id) or {}).get("steps", []):
                        if step["state"] == "running" and step["mlflow_run_id"]:
                            tracker.end(
                                step["mlflow_run_id"], "FAILED", tags={"appliance.error": error or ""}
                            )
                    tracker.end(
                        parent,
                        "FINISHED" if state == "succeeded" else "FAILED",
                        tags={"appliance.outcome": outcome, **({"appliance.error": error} if error else {})},
                    )
                except TrackingUnavailableError as err:
                    error = error or str(err)
            self.store.finish(run.run_id, state, outcome=outcome, version=version, error=error)
            run.lock.release()
        emit(Event(run.run_id, None, state, message=error or outcome))
        record = self.store.get(run.run_id)
        assert record is not None
        return record

    def run(
        self,
        pipeline: Pipeline,
        source: Path,
        model: str | None = None,
        params: Mapping[str, str] | None = None,
        trigger: str = "manual",
        binding: ModelEntry | None = None,
    ) -> dict[str, Any]:
        """``prepare`` then ``execute`` in this thread."""
        return self.execute(self.prepare(pipeline, source, model, params, trigger, binding))

    def _outcome(self, run: PreparedRun, state: str, failed_step: str | None) -> str:
        if state != "succeeded":
            return f"failed at {failed_step}" if failed_step else "failed"
        return _read_output(run, "decision") or "succeeded"

    def _resolver(self, run: PreparedRun) -> Callable[[str], str]:
        simple = {
            "workdir": str(run.workdir),
            "run_id": run.run_id,
            "model": run.model,
            "pipeline": run.pipeline.name,
            "python": sys.executable,
            "state_dir": str(self.state_dir),
        }
        steps = {s.name: s for s in run.pipeline.steps}

        def resolve(name: str) -> str:
            if name in simple:
                return simple[name]
            parts = name.split(".")
            if parts[0] == "params" and len(parts) == 2 and parts[1] in run.params:
                return run.params[parts[1]]
            rel = (
                steps[parts[1]].all_outputs.get(parts[-1]) if len(parts) == 4 and parts[1] in steps else None
            )
            if parts[0] == "steps" and rel:
                value = read_output(run.workdir, rel)
                if value is None:
                    raise templating.TemplateError(f"{{{name}}}: step {parts[1]!r} did not write {rel!r}")
                return value
            raise templating.TemplateError(f"unknown placeholder {{{name}}}")

        return resolve

    def _run_step(self, run: PreparedRun, step: Step, tracker: Tracker | None, parent: str | None) -> bool:
        """Run one step with its retries; True when it succeeded or was skipped."""
        emit, store, total = self.on_event, self.store, step.retries + 1
        log_path = run.root / "logs" / f"{step.name}.log"
        resolve = self._resolver(run)
        try:
            if step.when and not templating.evaluate_condition(step.when, resolve):
                store.update_step(run.run_id, step.name, state="skipped")
                emit(Event(run.run_id, step.name, "skipped", message=f"when: {step.when}"))
                return True
            argv = command_for(step, run.source, run.workdir, resolve)
            if step is run.pipeline.steps[0]:
                self._check_dataset(run)
            if step.name == REGISTER_STEP:
                self._check_binding(run, log_path)
        except (templating.TemplateError, StepFailure) as err:
            store.update_step(run.run_id, step.name, state="failed", error=str(err), finished=time.time())
            emit(Event(run.run_id, step.name, "failed", message=str(err)))
            return False
        child = (
            tracker.start_child(parent, step.name, {"appliance.run_id": run.run_id})
            if tracker and parent
            else None
        )
        store.update_step(
            run.run_id,
            step.name,
            state="running",
            started=time.time(),
            log_path=str(log_path),
            mlflow_run_id=child,
        )
        extra = {
            "MLFLOW_RUN_ID": child or "",
            "APPLIANCE_PIPELINE_RUN_ID": parent or "",
            "APPLIANCE_RUN_ID": run.run_id,
            "APPLIANCE_RUN_WORKDIR": str(run.workdir),
            "APPLIANCE_STEP": step.name,
        }
        started, ok, error, code = time.monotonic(), False, "", None
        for attempt in range(1, total + 1):
            emit(Event(run.run_id, step.name, "running", attempt, total))
            store.update_step(run.run_id, step.name, attempts=attempt)
            try:
                env = step_env(self.env, run.pipeline, step, resolve, extra, _source_root())
                missing = [
                    p for p in step.inputs if not (run.workdir / templating.render(p, resolve)).exists()
                ]
                if missing:
                    raise StepFailure(f"input {', '.join(missing)} missing from the workdir")
            except (templating.TemplateError, StepFailure) as err:
                error = str(err)
                break
            result = run_attempt(
                argv,
                env,
                run.workdir,
                log_path,
                step.timeout_seconds,
                f"attempt {attempt}/{total}",
                on_start=lambda pid: store.update_step(run.run_id, step.name, child_pid=pid),
                cancel=run.cancel,
            )
            code = result.exit_code
            unwritten = [o for o in step.all_outputs.values() if not (run.workdir / output_file(o)).exists()]
            if result.ok and not unwritten:
                ok = True
                break
            if result.cancelled:
                error = "cancelled: the runner stopped"
                break
            error = (
                f"timed out after {step.timeout_seconds:g} s"
                if result.timed_out
                else f"exit code {code}"
                if not result.ok
                else f"did not write its declared output {', '.join(unwritten)}"
            )
            if attempt < total:
                emit(Event(run.run_id, step.name, "retrying", attempt, total, error))
                if run.cancel.wait(step.retry_delay_seconds):
                    break
        duration = time.monotonic() - started
        store.update_step(
            run.run_id,
            step.name,
            state="succeeded" if ok else "failed",
            finished=time.time(),
            exit_code=code,
            error=None if ok else error,
            child_pid=None,
        )
        if tracker and child:
            tracker.end(
                child,
                "FINISHED" if ok else "FAILED",
                metrics={"step_duration_seconds": duration, "step_attempts": attempt},
                tags={"appliance.log": str(log_path), **({} if ok else {"appliance.error": error})},
            )
        emit(
            Event(run.run_id, step.name, "succeeded" if ok else "failed", attempt, total, "" if ok else error)
        )
        return ok

    def _check_dataset(self, run: PreparedRun) -> None:
        """StepFailure, before anything runs, when the model's bound dataset is not in the store
        (the message names the model, the dataset and the fix). An unreachable store is left to
        the steps, which say so themselves."""
        entry = run.binding
        if entry is None or entry.dataset is None:
            return
        from appliance.workloads.binding import missing_dataset

        try:
            from appliance.dataconn import DataConnection, list_datasets

            names = {d.name for d in list_datasets(DataConnection.from_env(self.env))}
        except Exception:  # no store configured or reachable here: ingest reports it
            return
        if entry.dataset not in names:
            raise StepFailure(missing_dataset(run.model, entry.dataset, sorted(names)))

    def _check_binding(self, run: PreparedRun, log_path: Path) -> None:
        """StepFailure unless the run's data is its model's (appliance.workloads.binding), so a
        version of one model is never registered from another model's data. Runs in a child
        process with the steps' environment (MLflow's address and account)."""
        entry = run.binding
        if entry is None or entry.dataset is None:
            return
        argv = [sys.executable, "-m", "appliance.workloads.binding", "check", "--workdir", str(run.workdir)]
        argv += ["--model", run.model, "--dataset", entry.dataset]
        argv += ["--target", entry.target] if entry.target else []
        env = {**os.environ, **self.env, "PYTHONPATH": _source_root()}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=BINDING_CHECK_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as err:
            raise StepFailure(f"the binding check timed out after {BINDING_CHECK_TIMEOUT_S:g} s") from err
        with log_path.open("a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            reason = " ".join(line.strip().removeprefix("error: ") for line in lines[-2:]) or "failed"
            raise StepFailure(f"binding check: {reason}")


def _source_root() -> str:
    """Folder holding the ``appliance`` package, so ``python -m appliance...`` works in steps."""
    return str(Path(appliance.__file__).resolve().parents[1])


def _read_output(run: PreparedRun, name: str) -> str | None:
    """Value of the last written output called ``name`` (``version``, ``decision``), if any."""
    for step in reversed(run.pipeline.steps):
        spec = step.all_outputs.get(name)
        value = read_output(run.workdir, spec) if spec else None
        if value:
            return value
    return None
