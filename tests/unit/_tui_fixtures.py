"""A fake engine and backend for the TUI's screen tests: no process starts, nothing is random.

The fake stack is small and fixed (not ``stacks/services.yaml``) so the screens' tests and
snapshots do not change when the real stack grows; the selection rules mirror the engine's
(profile, component switch, MinIO only for the ``minio`` store).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.answers import Answers
from appliance.apply import ApplyResult, Event
from appliance.context import AppContext
from appliance.errors import CancelledError
from appliance.plan import Action, Plan
from appliance.preflight import Check
from tui.app import ApplianceApp
from tui.backend import Backend, ServiceInfo
from tui.state import WizardState

# name: (component, profiles, gpu, port keys, MiB)
FAKE_STACK: dict[str, tuple[str, tuple[str, ...], bool, tuple[str, ...], int]] = {
    "minio": ("object_store", ("lab", "edge"), False, ("minio", "minio_console"), 512),
    "mlflow": ("mlflow", ("lab",), False, ("mlflow",), 768),
    "workbench": ("workbench", ("lab",), True, ("workbench",), 1024),
    "prometheus": ("monitoring", ("lab", "edge"), False, ("prometheus",), 256),
    "alertmanager": ("monitoring", ("lab", "edge"), False, ("alertmanager",), 64),
    "serving": ("serving", ("lab", "edge"), True, ("serving_http", "serving_grpc"), 512),
    "gateway": (
        "gateway",
        ("lab", "edge"),
        False,
        ("gateway_serving", "gateway_mlflow", "gateway_workbench"),
        32,
    ),
}
FIXED_AT = 1_700_000_000.0
OUT = Path("/srv/appliance/appliance.yaml")
STATE = Path("/srv/appliance/state")


def fake_services(answers: Answers) -> dict[str, ServiceInfo]:
    chosen = {}
    switches = answers.components.model_dump()
    for name, (component, profiles, gpu, ports, mb) in FAKE_STACK.items():
        if answers.profile != "custom" and answers.profile not in profiles:
            continue
        if not switches.get(component, True) or (name == "minio" and answers.object_store.kind != "minio"):
            continue
        if name == "gateway" and not answers.tls.enabled:
            continue
        chosen[name] = ServiceInfo(name, component, gpu, ports, mb)
    return chosen


class FakeEngine:
    """Answers engine calls from the fake stack; ``up`` emits the events a real apply would."""

    def __init__(self, ctx: AppContext, backend: FakeBackend) -> None:
        self.ctx = ctx
        self.backend = backend

    def footprints(self) -> dict[str, int]:
        return {name: s.footprint_mb for name, s in fake_services(self.ctx.answers).items()}

    def preflight(self) -> list[Check]:
        return list(self.backend.checks)

    def plan(self) -> Plan:
        return Plan(tuple(Action("create", name, "new") for name in fake_services(self.ctx.answers)))

    def up(
        self, on_event: Callable[[Event], None] | None = None, cancel: threading.Event | None = None
    ) -> ApplyResult:
        self.backend.up_calls += 1
        result = ApplyResult()
        names = list(fake_services(self.ctx.answers))
        for i, name in enumerate(names):
            for step, message in (("create", "create (new)"), ("wait", "waiting for health")):
                if cancel is not None and cancel.is_set():
                    raise CancelledError()
                event = Event(name, step, i / len(names), message, at=FIXED_AT + i)
                if on_event:
                    on_event(event)
            if self.backend.hold_after_first is not None and i == 0:
                self.backend.hold_after_first.wait(10)
            if on_event:
                on_event(Event(name, "healthy", (i + 1) / len(names), "GET /health -> 200", at=FIXED_AT + i))
            result.changed.append(name)
        return result

    def status(self) -> dict[str, Any]:
        services = {}
        for i, name in enumerate(fake_services(self.ctx.answers)):
            services[name] = {
                "health": "healthy",
                "url": f"http://127.0.0.1:{7000 + i}",
                "pid": 4000 + i,
                "uptime_seconds": 65.0 + i,
                "memory_bytes": (40 + 25 * i) << 20,
            }
        return {"services": services}

    def restart(self, name: str) -> None:
        self.backend.restarted.append(name)

    def log_file(self, name: str) -> str:
        return f"{self.ctx.state_dir}/logs/{name}.log"


class FakeBackend(Backend):
    """Deterministic host: chosen busy ports, GPUs, S3 verdicts; answers files kept in memory."""

    def __init__(self, write_to: Path | None = None) -> None:
        self.checks = [
            Check("os", "pass", "Debian GNU/Linux 12"),
            Check("memory", "warn", "900 MiB free of 4096 MiB", "free memory"),
            Check("port 5000", "pass", "mlflow http: free or already ours"),
        ]
        self.busy: set[int] = set()
        self.gpus: list[str] = []
        self.written: dict[Path, str] = {}
        self.write_to = write_to
        self.up_calls = 0
        self.restarted: list[str] = []
        self.hold_after_first: threading.Event | None = None
        self.dashboard: dict[str, Any] = {"model": "-", "rps": "-", "p99": "-", "drift": [], "runs": None}

    def engine(self, ctx: AppContext) -> FakeEngine:
        return FakeEngine(ctx, self)

    def services(self, ctx: AppContext) -> dict[str, ServiceInfo]:
        return fake_services(ctx.answers)

    def minio_binary(self, answers: Answers) -> str | None:
        return None

    def weed_binary(self) -> str | None:
        return "/opt/appliance/bin/weed"

    def port_free(self, host: str, port: int) -> bool:
        return port not in self.busy

    def detect_gpus(self) -> list[str]:
        return list(self.gpus)

    def test_s3(self, endpoint: str, region: str, access_key: str, secret_key: str) -> str:
        if "bad" in endpoint:
            raise ConnectionError(f'Could not connect to the endpoint URL: "{endpoint}/"')
        return "connected: 2 bucket(s) visible"

    def write_answers(self, path: Path, text: str) -> None:
        self.written[path] = text
        if self.write_to is not None:
            self.write_to.write_text(text)

    def secret_names(self, ctx: AppContext) -> list[str]:
        return ["jupyter_token", "minio_root_password"]

    def dashboard_data(self, ctx: AppContext, status: dict[str, Any]) -> dict[str, Any]:
        return dict(self.dashboard)

    def log_tail(self, engine: Any, name: str, lines: int = 200) -> str:
        return f"{name} line 1\n{name} line 2"


def make_app(
    backend: FakeBackend | None = None,
    answers: Answers | None = None,
    mode: str = "wizard",
    out: Path = OUT,
    state_dir: Path = STATE,
) -> ApplianceApp:
    """The app over a fake backend, with fixed paths and clock."""
    state = WizardState(initial=answers or Answers(), answers_out=out, state_dir=state_dir)
    return ApplianceApp(
        state,
        backend or FakeBackend(),
        mode="status" if mode == "status" else "wizard",
        clock=lambda: "12:00:00",
        refresh_seconds=0,
    )
