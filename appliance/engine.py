"""The engine's front door: preflight, plan, up, down, status for one AppContext.

The CLI and the TUI both call these, so a wizard run and ``appliance up --answers FILE`` take the
same path. Nothing here prints: progress leaves as events, results as values.

``plan``, ``preflight`` and ``status`` only look: they render in the secret store's read-only
mode (no secret, certificate or state directory is made; ``up`` makes them) and take no lock.
``up``, ``down`` and ``purge`` hold the state directory's lock (``state_lock``) for their whole
run, so two of them never interleave.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
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
from appliance.secrets_store import is_read_only, read_only
from appliance.stack import RenderedService, load_stack
from appliance.state_lock import state_lock
from appliance.state_version import require_compatible, write_stamp
from appliance.upgrade.journal import check_before_up

STARTING_GRACE_SECONDS = 90


class Engine:
    """Preflight, plan, apply and inspect the stack an AppContext describes."""

    def __init__(
        self, ctx: AppContext, runtime: Runtime | None = None, stack_file: Path | None = None
    ) -> None:
        self.ctx = ctx
        self.runtime = runtime or get_runtime(ctx)
        self.stack_file = stack_file
        """Another stack file than the project's ``stacks/services.yaml`` (tests run small ones)."""
        self._rendered: dict[bool, dict[str, RenderedService]] = {}

    @property
    def desired(self) -> dict[str, RenderedService]:
        """The rendered stack. Rendered once per mode: a read-only render holds placeholders for
        secrets not made yet, so ``up`` never applies it; a read-only caller reuses the real one."""
        if False in self._rendered:
            return self._rendered[False]
        mode = is_read_only()
        if mode not in self._rendered:
            self._rendered[mode] = render_stack(self.ctx, self.stack_file)
        return self._rendered[mode]

    def footprints(self) -> dict[str, int]:
        specs = selected(self.ctx, load_stack(self.stack_file))
        return {name: spec.footprint_mb for name, spec in specs.items()}

    def observed(self) -> dict[str, ObservedService]:
        return self.runtime.observe()

    def plan(self) -> Plan:
        """What ``up`` would do; writes nothing."""
        with read_only():
            return plan(self.desired, self.observed())

    def preflight(self) -> list[Check]:
        """Host checks for this stack; writes nothing."""
        with read_only():
            return self._preflight()

    def _preflight(self) -> list[Check]:
        return run_preflight(self.ctx, self.desired, self.observed(), self.footprints())

    def up(self, on_event: EventSink | None = None, cancel: threading.Event | None = None) -> ApplyResult:
        """Bring the stack to the desired state; re-running an unchanged stack does nothing.
        Holds the state directory's lock throughout (StateLockedError while another holds it)."""
        with state_lock(self.ctx.state_dir):
            require_compatible(self.ctx.state_dir)
            check_before_up(self.ctx.state_dir)
            failures = [c for c in self._preflight() if c.status == "fail"]
            if failures:
                raise PreflightError([(c.name, c.detail, c.fix) for c in failures])
            self.runtime.ensure_ready()
            write_stamp(self.ctx.state_dir)
            the_plan = plan(self.desired, self.observed())
            applier = Applier(
                self.runtime, self.desired, self.ctx.answers.health_timeout_seconds, on_event, cancel
            )
            return applier.run(the_plan)

    def down(self, on_event: EventSink | None = None) -> ApplyResult:
        """Stop every service and the runtime's own daemon; data stay. Holds the lock."""
        result = ApplyResult()
        if self.ctx.state_dir.exists():
            with state_lock(self.ctx.state_dir):
                the_plan = plan_down(self.desired, self.observed())
                result = Applier(self.runtime, self.desired, 30, on_event).run(the_plan)
                self.runtime.shutdown()
        return result

    def purge(self) -> None:
        """Remove the state directory (data, logs, secrets) and the runtime's data volumes after
        ``down``. Holds the lock until the directory (with the lock file) is gone."""
        if not self.ctx.state_dir.exists():
            self.runtime.purge()
            return
        with state_lock(self.ctx.state_dir):
            self.runtime.purge()
            shutil.rmtree(self.ctx.state_dir)

    def restart(self, name: str) -> None:
        svc = self._service(name)
        with state_lock(self.ctx.state_dir):
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
        """``{"services": {NAME: {"health", "url", "pid", "uptime_seconds", ...}}}``; writes nothing."""
        with read_only():
            observed = self.observed() if self.ctx.state_dir.exists() else {}
            desired = self.desired
        return {"services": {name: self._one_status(svc, observed) for name, svc in desired.items()}}

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
