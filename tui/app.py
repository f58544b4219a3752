"""The Textual application: the install wizard, or the status dashboard on its own.

The app owns the wizard's state and the backend; screens are built fresh from the state each
time they are shown, so going back to any step always shows the current choices. Steps replace
each other (``switch_screen``) instead of stacking up, and modals return through ``dismiss()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from appliance.cluster.run import HostResult
from appliance.context import AppContext
from tui.backend import Backend, EngineLike
from tui.state import STEP_NAMES, WizardState

Mode = Literal["wizard", "status"]


def _screen_for(step: str) -> Screen[None]:
    from tui.screens import (
        cluster,
        components,
        done,
        gpu,
        install,
        network,
        preflight,
        review,
        storage,
        welcome,
    )
    from tui.screens.dashboard import DashboardScreen

    factories: dict[str, Callable[[], Screen[None]]] = {
        "welcome": welcome.WelcomeScreen,
        "preflight": preflight.PreflightScreen,
        "components": components.ComponentsScreen,
        "storage": storage.StorageScreen,
        "gpu": gpu.GpuScreen,
        "network": network.NetworkScreen,
        "cluster": cluster.ClusterScreen,
        "review": review.ReviewScreen,
        "install": install.InstallScreen,
        "done": done.DoneScreen,
        "dashboard": DashboardScreen,
    }
    return factories[step]()


class ApplianceApp(App[None]):
    """Wizard (``mode="wizard"``) or dashboard (``mode="status"``) over one WizardState."""

    CSS_PATH = "app.tcss"
    TITLE = "MLOps Appliance"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(
        self,
        state: WizardState,
        backend: Backend | None = None,
        mode: Mode = "wizard",
        clock: Callable[[], str] | None = None,
        refresh_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        self.state = state
        self.backend = backend or Backend()
        self.mode: Mode = mode
        self.clock = clock or (lambda: time.strftime("%H:%M:%S"))
        self.refresh_seconds = refresh_seconds
        self.step = ""
        self.cluster_results: dict[str, HostResult] = {}
        """Per host, what the last ``cluster up`` did (the done screen lists them)."""

    def on_mount(self) -> None:
        self.goto("dashboard" if self.mode == "status" else "welcome")

    def context(self) -> AppContext:
        """The engine context of the current choices (validated)."""
        return self.backend.context(self.state.answers(), self.state.answers_out, self.state.state_dir)

    def engine(self) -> EngineLike:
        return self.backend.engine(self.context())

    def goto(self, step: str) -> None:
        """Show ``step``, replacing the current step's screen."""
        self.step = step
        screen = _screen_for(step)
        if len(self.screen_stack) > 1:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def next_step(self) -> None:
        index = STEP_NAMES.index(self.step)
        self.goto(STEP_NAMES[index + 1] if index + 1 < len(STEP_NAMES) else "install")

    def previous_step(self) -> None:
        if self.step in STEP_NAMES and STEP_NAMES.index(self.step) > 0:
            self.goto(STEP_NAMES[STEP_NAMES.index(self.step) - 1])
