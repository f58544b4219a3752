"""The engine's front door: preflight, plan, up, down, status for one AppContext.

The CLI and the TUI both call these, so a wizard run and ``appliance up --answers FILE`` take the
same path. Nothing here prints: progress leaves as events, results as values.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from appliance.apply import Applier, ApplyResult, EventSink
from appliance.context import AppContext
from appliance.errors import ApplianceError, PreflightError, ServiceNotFoundError
from appliance.health import probe
from appliance.plan import Plan, plan, plan_down
from appliance.preflight import Check, run_preflight
from appliance.render import render_stack, selected
from appliance.runtimes import get_runtime
from appliance.runtimes.base import ObservedService, Runtime
from appliance.stack import RenderedService, load_stack

STARTING_GRACE_SECONDS = 90


class Engine:
    """Preflight, plan, apply and inspect the stack an AppContext describes."""

    def __init__(self, ctx: AppContext, runtime: Runtime | None = None) -> None:
        self.ctx = ctx
        self.runtime = runtime or get_runtime(ctx)

    @cached_property
    def desired(self) -> dict[str, RenderedService]:
        return render_stack(self.ctx)

    def footprints(self) -> dict[str, int]:
        specs = selected(self.ctx, load_stack())
        return {name: spec.footprint_mb for name, spec in specs.items()}

    def observed(self) -> dict[str, ObservedService]:
        return self.runtime.observe()

    def plan(self) -> Plan:
        return plan(self.desired, self.observed())

    def preflight(self) -> list[Check]:
        return run_preflight(self.ctx, self.desired, self.observed(), self.footprints())

    def up(self, on_event: EventSink | None = None, cancel: threading.Event | None = None) -> ApplyResult:
        """Bring the stack to the desired state; re-running an unchanged stack does nothing."""
        failures = [c for c in self.preflight() if c.status == "fail"]
        if failures:
            raise PreflightError([(c.name, c.detail, c.fix) for c in failures])
        self.ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.state_dir.chmod(0o700)
        self.runtime.ensure_ready()
        the_plan = self.plan()
        applier = Applier(
            self.runtime, self.desired, self.ctx.answers.health_timeout_seconds, on_event, cancel
        )
        return applier.run(the_plan)

    def down(self, on_event: EventSink | None = None) -> ApplyResult:
        """Stop every service and the runtime's own daemon; data stay."""
        result = ApplyResult()
        if self.ctx.state_dir.exists():
            the_plan = plan_down(self.desired, self.observed())
            result = Applier(self.runtime, self.desired, 30, on_event).run(the_plan)
            self.runtime.shutdown()
        return result

    def purge(self) -> None:
        """Remove the state directory (data, logs, secrets) and the runtime's data volumes after
        ``down``."""
        self.runtime.purge()
        if self.ctx.state_dir.exists():
            shutil.rmtree(self.ctx.state_dir)

    def restart(self, name: str) -> None:
        svc = self._service(name)
        self.runtime.ensure_ready()
        self.runtime.stop(name)
        self.runtime.start(svc)

    def _service(self, name: str) -> RenderedService:
        if name not in self.desired:
            raise ServiceNotFoundError(name, list(self.desired))
        return self.desired[name]

    def log_file(self, name: str) -> str:
        self._service(name)
        path = self.runtime.log_file(name)
        if not path:
            raise ApplianceError(f"no log for {name!r} yet", fix="run `appliance up` first")
        return path

    def status(self) -> dict[str, Any]:
        """``{"services": {NAME: {"health", "url", "pid", "uptime_seconds", ...}}}``."""
        observed = self.observed() if self.ctx.state_dir.exists() else {}
        return {"services": {name: self._one_status(svc, observed) for name, svc in self.desired.items()}}

    def _one_status(self, svc: RenderedService, observed: Mapping[str, ObservedService]) -> dict[str, Any]:
        seen = observed.get(svc.name)
        uptime = round(time.time() - seen.started_at, 1) if seen and seen.started_at else None
        health = "stopped"
        detail: str = seen.state if seen else "not created"
        if seen and seen.running:
            ok, detail = probe(svc.health.model_copy(update={"timeout": 2.0}), svc.env)
            if ok:
                health = "healthy"
            elif seen.state == "starting" or (uptime is not None and uptime < STARTING_GRACE_SECONDS):
                health = "starting"
            else:
                health = "unhealthy"
        return {
            "health": health,
            "state": seen.state if seen else "absent",
            "url": svc.url,
            "pid": seen.pid if seen else None,
            "uptime_seconds": uptime,
            "detail": detail,
            "description": svc.description,
            "up_to_date": bool(seen and seen.config_hash == svc.config_hash),
        }
