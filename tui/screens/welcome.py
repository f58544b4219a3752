"""Step 1: choose a profile and a runtime, seeing what each one costs (RAM, disk, GPU) before choosing.

RAM is the sum of the engine's per-service footprints for the services the profile would run
with the current component switches; the GPU column names the services that can use one. Disk
has no per-service figure in the stack yet, so it shows the thresholds preflight applies.
"""

from __future__ import annotations

from typing import get_args

from textual.app import ComposeResult
from textual.widgets import DataTable, RadioSet, Static

from appliance.answers import Answers
from tui.screens.base import WizardScreen
from tui.widgets.choices import Choice

PROFILES = {
    "lab": "the whole lifecycle on one machine",
    "edge": "serving and monitoring alone",
    "custom": "the components you choose",
}
RUNTIMES = {
    "local": "host processes under supervisord (no containers needed)",
    "podman": "containers through podman's API",
    "docker": "containers through the Docker daemon",
}
OFFERED_RUNTIMES = [r for r in get_args(Answers.model_fields["runtime"].annotation) if r in RUNTIMES]
"""The runtimes this version of the answers file accepts, in the order above."""
DISK = "2 GiB min, 10 advised"
"""Preflight fails under 2 GiB free and warns under 10 GiB (appliance.preflight)."""


class WelcomeScreen(WizardScreen):
    """Profile choice with each profile's footprint beside it."""

    STEP = "welcome"

    def compose_body(self) -> ComposeResult:
        yield Static(
            "Welcome. This wizard writes an answers file and installs the stack it describes.\n"
            "Choose a profile (arrows, then space):",
            classes="intro",
        )
        current = self.state.get("profile")
        with RadioSet(id="profile", compact=True):
            for name, text in PROFILES.items():
                yield Choice(f"{name:<7} {text}", value=name == current, id=f"profile-{name}")
        yield DataTable(id="footprints", cursor_type="none", zebra_stripes=False)
        yield Static("Runtime (Tab, then arrows and space):", classes="intro")
        runtime = self.state.get("runtime")
        with RadioSet(id="runtime", compact=True):
            for name in OFFERED_RUNTIMES:
                yield Choice(f"{name:<7} {RUNTIMES[name]}", value=name == runtime, id=f"runtime-{name}")

    def on_mount(self) -> None:
        table = self.query_one("#footprints", DataTable)
        table.can_focus = False  # read-only: Tab goes from the profile straight to the runtime
        table.add_columns("profile", "RAM", "disk", "GPU")
        for name in PROFILES:
            ram, gpu = self._footprint(name)
            table.add_row(name, ram, DISK, gpu)
        self.query_one("#profile", RadioSet).focus()
        super().on_mount()

    def _footprint(self, profile: str) -> tuple[str, str]:
        saved = self.state.get("profile")
        self.state.set("profile", profile)
        try:
            services = self.wizard.backend.services(self.wizard.context())
        finally:
            self.state.set("profile", saved)
        ram = sum(s.footprint_mb for s in services.values())
        gpu = sorted(s.name for s in services.values() if s.gpu)
        return f"~{ram} MiB", ("optional: " + ", ".join(gpu)) if gpu else "not used"

    def on_radio_set_changed(self, event: RadioSet.Changed) -> None:
        group, _, value = (event.pressed.id or "").partition("-")
        self.state.set(group, value)
        self.update_nav()
