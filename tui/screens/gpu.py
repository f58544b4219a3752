"""Step 5: the GPUs this host has (``nvidia-smi``, in a worker) and which services get them.

``gpu.mode: on`` is refused here when no GPU was found, because preflight would fail on it;
``auto`` is always safe: services use a GPU only when one is present.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Checkbox, RadioSet, Static
from textual.worker import Worker, WorkerState

from appliance.answers import Gpu
from tui.screens.base import WizardScreen
from tui.widgets.choices import Choice, Tick

MODES = {
    "auto": "use a GPU when the host has one",
    "on": "require a GPU (preflight fails without one)",
    "off": "never pass a GPU through",
}
CANDIDATES = list(Gpu().services)
"""The services the answers model offers a GPU to by default."""


class GpuScreen(WizardScreen):
    """Detected GPUs, GPU mode and the services that get one."""

    STEP = "gpu"

    def __init__(self) -> None:
        super().__init__()
        self.gpus: list[str] | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("GPUs detected: looking (nvidia-smi)...", id="detected")
        mode = self.state.get("gpu.mode")
        with RadioSet(id="mode", compact=True):
            for name, text in MODES.items():
                yield Choice(f"{name:<5} {text}", value=name == mode, id=f"mode-{name}")
        yield Static("Services that get the GPU:")
        chosen = self.state.get("gpu.services")
        with Horizontal(id="gpu-services"):
            for name in [*CANDIDATES, *(s for s in chosen if s not in CANDIDATES)]:
                yield Tick(name, value=name in chosen, id=f"gpu-{name}", compact=True)

    def on_mount(self) -> None:
        self.query_one("#mode", RadioSet).focus()
        self.run_worker(self.wizard.backend.detect_gpus, thread=True, exit_on_error=False, group="gpus")
        super().on_mount()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "gpus" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        self.gpus = list(event.worker.result or []) if event.state == WorkerState.SUCCESS else []
        text = "; ".join(self.gpus) if self.gpus else "none (services run on the CPU)"
        self.query_one("#detected", Static).update(f"GPUs detected: {text}")
        self.update_nav()

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        self.state.set("gpu.mode", (event.pressed.id or "").removeprefix("mode-"))
        self.update_nav()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        order = [str(c.label) for c in self.query(Checkbox)]
        chosen = {str(c.label) for c in self.query(Checkbox) if c.value}
        self.state.set("gpu.services", [name for name in order if name in chosen])
        self.update_nav()

    def blockers(self) -> list[str]:
        if self.state.get("gpu.mode") != "on":
            return []
        if self.gpus is None:
            return ["looking for GPUs..."]
        if not self.gpus:
            return ["gpu mode 'on' needs an NVIDIA GPU and none was found: choose auto or off"]
        return []
