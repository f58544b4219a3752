"""The controller's core: decide whether a trigger starts a run, and run it in the background.

Every trigger (cron, alert, manual POST) goes through ``trigger()``: the pipeline file is read
again (edits apply without a restart), the model's lock is taken synchronously (so the answer is
exact: started, already running, cooling down), then the run executes in its own thread. The
HTTP handler therefore answers in milliseconds whatever the pipeline does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.answers import ModelEntry
from appliance.errors import InvalidInputError
from appliance.names import check_name
from appliance.pipelines.loader import available, find_pipeline, load_pipeline, search_dirs
from appliance.pipelines.records import RunStore
from appliance.pipelines.recovery import fail_orphans
from appliance.pipelines.runner import AlreadyRunningError, Event, PipelineRunner, PreparedRun
from appliance.workloads.binding import UnboundModelError, run_params
from appliance.workloads.controller.cooldown import Cooldown

log = logging.getLogger(__name__)

STARTED, RUNNING, COOLING, REFUSED = "started", "already running", "cooling down", "refused"


@dataclass(frozen=True)
class TriggerResult:
    """What a trigger did: ``started`` (with the run id), ``already running``, ``cooling down`` or
    ``refused`` (a model with no binding: ``detail`` names the key to add)."""

    status: str
    model: str
    run_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "model": self.model, "run_id": self.run_id, "detail": self.detail}


def _log_event(event: Event) -> None:
    step = event.step or "pipeline"
    attempt = f" attempt {event.attempt}/{event.attempts}" if event.attempts > 1 else ""
    log.info("run %s %s %s%s %s", event.run_id, step, event.state, attempt, event.message)


class Controller:
    """Triggers, background runs and the state they share."""

    def __init__(
        self,
        state_dir: Path,
        pipelines_dir: Path | list[Path] | None,
        env: Mapping[str, str],
        cooldown: Cooldown,
        retrain_pipeline: str = "retrain",
        on_event: Callable[[Event], None] = _log_event,
        models: Mapping[str, ModelEntry] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.dirs = search_dirs(pipelines_dir)
        self.models = dict(models or {})
        """Every served model's binding (``models.json``): what a trigger for it runs, on what."""
        self.refusals: dict[str, int] = dict.fromkeys(self.models, 0)
        """Drift alerts refused per model (no binding), for the metrics; every known model starts
        at 0 so the series exists before the first refusal."""
        self.env = dict(env)
        self.cooldown = cooldown
        self.retrain_pipeline = retrain_pipeline
        self.runner = PipelineRunner(state_dir, self.env, on_event=on_event)
        self.store: RunStore = self.runner.store
        self._active: dict[str, tuple[threading.Thread, PreparedRun]] = {}
        self._guard = threading.Lock()

    def start_up(self) -> list[str]:
        """Check every pipeline file, fail orphaned runs, seed the cool-downs; return failed run ids."""
        for name, path in available(self.dirs).items():
            try:
                load_pipeline(path)
            except InvalidInputError as err:
                if name == self.retrain_pipeline:
                    raise  # without a valid retrain pipeline the controller has no purpose
                log.error("pipeline %s cannot run until fixed: %s", name, err)
        find_pipeline(self.retrain_pipeline, self.dirs)
        for name, entry in self.models.items():
            if entry.dataset is None:
                log.warning("model %s has no dataset binding: its drift alerts will be refused", name)
        failed = fail_orphans(self.store, self.state_dir, self.env)
        for run_id in failed:
            log.warning("run %s was running when the controller stopped: marked failed", run_id)
        for run in self.store.recent(limit=200):
            if run["trigger"] == "alert":
                self.cooldown.seed(run["model"], run["started"])
        return failed

    def pipeline_names(self) -> list[str]:
        return sorted(available(self.dirs))

    def trigger(
        self,
        pipeline_name: str | None,
        model: str | None,
        trigger: str,
        params: Mapping[str, str] | None = None,
        explicit: bool = False,
    ) -> TriggerResult:
        """Start ``pipeline_name`` (None: the model's own pipeline) for ``model`` with the model's
        binding (``appliance.workloads.binding``) unless its lock is held; ApplianceError on bad
        input (a model name breaking appliance.names, a model with no binding). ``explicit``: a
        person named the parameters (the API), so an unbound model may run with their dataset."""
        if model is not None:
            check_name(model, "model name")
        entry = self.models.get(model or "")
        path = find_pipeline(pipeline_name or (entry.pipeline if entry else self.retrain_pipeline), self.dirs)
        pipeline = load_pipeline(path)
        chosen = model or pipeline.model
        entry = self.models.get(chosen)
        values = run_params(chosen, pipeline.model, pipeline.parameters, self.models, params, explicit)
        try:
            prepared = self.runner.prepare(
                pipeline, path, model=chosen, params=values, trigger=trigger, binding=entry
            )
        except AlreadyRunningError as err:
            return TriggerResult(RUNNING, chosen, err.run_id, f"run {err.run_id} (pid {err.pid})")
        thread = threading.Thread(target=self._execute, args=(prepared,), name=f"run-{prepared.run_id}")
        with self._guard:
            self._active[prepared.run_id] = (thread, prepared)
        thread.start()
        return TriggerResult(STARTED, chosen, prepared.run_id)

    def refuse(self, model: str, why: str) -> TriggerResult:
        """Count and log a refused trigger; nothing starts and no cool-down is consumed."""
        with self._guard:
            self.refusals[model] = self.refusals.get(model, 0) + 1
        log.warning("drift alert for model %s refused: %s", model, why)
        return TriggerResult(REFUSED, model, detail=why)

    def trigger_retrain(self, model: str, trigger: str = "alert") -> TriggerResult:
        """A drift alert (or the model's schedule) for ``model``: start the model's own pipeline on
        its own data unless cooling down or running; refused when the model has no binding."""
        check_name(model, "model name")
        entry = self.models.get(model)
        if self.models and (entry is None or entry.dataset is None):
            return self.refuse(
                model, str(UnboundModelError(model, sorted(n for n, e in self.models.items() if e.dataset)))
            )
        pipeline = entry.pipeline if entry else self.retrain_pipeline
        if trigger != "alert":
            return self.trigger(pipeline, model, trigger)
        outcome: list[TriggerResult] = []

        def start() -> bool:
            try:
                outcome.append(self.trigger(pipeline, model, "alert"))
            except UnboundModelError as err:
                outcome.append(self.refuse(model, str(err)))
            return outcome[0].status == STARTED

        if self.cooldown.try_start(model, start) is None:
            left = self.cooldown.remaining(model)
            return TriggerResult(
                COOLING, model, detail=f"a retrain started recently; next one allowed in {left:.0f} s"
            )
        return outcome[0]

    def _execute(self, prepared: PreparedRun) -> None:
        try:
            self.runner.execute(prepared)
        except Exception:
            log.exception("run %s crashed", prepared.run_id)
        finally:
            with self._guard:
                self._active.pop(prepared.run_id, None)

    def active_runs(self) -> list[str]:
        with self._guard:
            return list(self._active)

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel running steps (their process groups are killed) and wait for the runs to close."""
        with self._guard:
            active = list(self._active.values())
        for _, prepared in active:
            prepared.cancel.set()
        for thread, _ in active:
            thread.join(timeout)
