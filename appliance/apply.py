"""Executing a plan: runtime calls in dependency waves, health gates, events, and a result value.

Events are plain data (service, step, progress, message) so the CLI, the TUI and tests render or
assert them the same way. Services in one wave start together and are waited for together; a
service that never turns healthy is stopped again, so the next ``up`` plans it as a start instead of
counting a broken process as done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from appliance.errors import ApplianceError, CancelledError, ServiceUnhealthyError
from appliance.health import probe
from appliance.plan import Action, Plan, waves
from appliance.runtimes.base import Runtime
from appliance.stack import RenderedService


@dataclass(frozen=True)
class Event:
    """Something that happened while applying, for progress displays."""

    service: str
    step: str
    progress: float
    message: str
    at: float = field(default_factory=time.time)


@dataclass
class ApplyResult:
    """What an apply did."""

    status: str = "ok"
    changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    seconds: float = 0.0


RESTARTS_BEFORE_GIVING_UP = 3
EventSink = Callable[[Event], None]


class Applier:
    """Runs one plan against one runtime."""

    def __init__(
        self,
        runtime: Runtime,
        desired: Mapping[str, RenderedService],
        timeout: float,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.cancel = cancel or threading.Event()
        """Set from another thread (the TUI's cancel button) to stop between steps."""
        self.runtime = runtime
        self.desired = desired
        self.timeout = timeout
        self.on_event = on_event
        self.result = ApplyResult()
        self._total = 1
        self._done = 0

    def emit(self, service: str, step: str, message: str) -> None:
        event = Event(service, step, min(1.0, self._done / self._total), message)
        self.result.events.append(event)
        if self.on_event:
            self.on_event(event)

    def run(self, plan: Plan) -> ApplyResult:
        started = time.monotonic()
        self._total = max(1, 2 * len(plan.actions))
        by_service = {a.service: a for a in plan.actions}
        try:
            for action in plan.actions:
                if action.verb in ("stop", "remove"):
                    self._do(action)
            for level in waves(self.desired):
                todo = [by_service[n] for n in level if n in by_service]
                todo = [a for a in todo if a.verb not in ("stop", "remove")]
                for action in todo:
                    self._do(action)
                self._wait_healthy([a.service for a in todo])
        except ApplianceError as err:
            self.result.status = "failed"
            self.result.errors.append(str(err))
            raise
        finally:
            self.result.seconds = time.monotonic() - started
        self.emit("*", "done", f"{len(plan.actions)} action(s) in {self.result.seconds:.1f}s")
        return self.result

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            self.emit("*", "cancelled", "cancelled: run `appliance up` again to finish")
            raise CancelledError()

    def _do(self, action: Action) -> None:
        self._check_cancel()
        name = action.service
        self.emit(name, action.verb, f"{action.verb} ({action.reason})")
        svc = self.desired.get(name)
        if action.verb == "remove":
            self.runtime.remove(name)
        elif action.verb == "stop":
            self.runtime.stop(name)
        elif svc is not None and action.verb in ("create", "recreate"):
            self.runtime.create(svc)
        elif svc is not None and action.verb == "reload":
            self.runtime.reload(svc)
        elif svc is not None:
            self.runtime.start(svc)
        self._done += 2 if action.verb in ("stop", "remove") else 1
        self.result.changed.append(name)

    def _wait_healthy(self, names: list[str]) -> None:
        if not names:
            return
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            outcomes = list(pool.map(self._wait_one, names))
        failures = [err for err in outcomes if err is not None]
        self._check_cancel()
        if failures:
            raise failures[0]

    def _wait_one(self, name: str) -> ServiceUnhealthyError | None:
        svc = self.desired[name]
        self.emit(name, "wait", f"waiting for health ({_describe(svc)})")
        deadline = time.monotonic() + self.timeout
        detail = "no probe ran"
        pids: set[int] = set()
        while time.monotonic() < deadline and not self.cancel.is_set():
            ok, detail = probe(svc.health, svc.env)
            if ok:
                self._done += 1
                self.emit(name, "healthy", detail)
                return None
            seen = self.runtime.observe().get(name)
            if seen is not None and seen.pid:
                pids.add(seen.pid)
            if (seen is not None and seen.state == "failed") or len(pids) > RESTARTS_BEFORE_GIVING_UP:
                detail = f"the process keeps exiting ({detail})"
                break
            time.sleep(svc.health.interval)
        self.emit(name, "failed", detail)
        self.runtime.stop(name)
        return ServiceUnhealthyError(name, detail, self.runtime.log_file(name), self.runtime.log_tail(name))


def _describe(svc: RenderedService) -> str:
    check = svc.health
    return check.http or check.tcp or " ".join(check.command or [])
