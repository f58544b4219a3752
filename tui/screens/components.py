"""Step 3: which parts of the stack run (``components.*``), with the RAM total as you toggle.

Each switch shows what its services cost under the chosen profile and store; a component with
no services under these choices says so, and its switch is still written to the answers file.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Checkbox, Static

from appliance.answers import Components
from tui.backend import ServiceInfo
from tui.screens.base import WizardScreen
from tui.widgets.choices import Tick

NAMES = list(Components.model_fields)


def short(text: str | None) -> str:
    """The first sentence of a field's docstring, to fit one line."""
    return (text or "").replace("``", "").split(". ")[0].rstrip(".")


class ComponentsScreen(WizardScreen):
    """A switch per component and the footprint total."""

    STEP = "components"

    def compose_body(self) -> ComposeResult:
        yield Static(
            f"Profile {self.state.get('profile')}: choose the components (Tab moves, space toggles)."
        )
        with VerticalScroll(id="components"):
            for name in NAMES:
                yield Tick(name, value=self.state.get(f"components.{name}"), id=f"comp-{name}", compact=True)
        yield Static("", id="total")

    def on_mount(self) -> None:
        saved = dict(self.state.get("components"))
        self.state.set("components", dict.fromkeys(NAMES, True))
        try:
            every = self.wizard.backend.services(self.wizard.context())
        finally:
            self.state.set("components", saved)
        for name in NAMES:
            self.query_one(f"#comp-{name}", Checkbox).label = self._label(name, every)
        self.query_one(f"#comp-{NAMES[0]}", Checkbox).focus()
        self.update_total()
        super().on_mount()

    def _label(self, name: str, every: dict[str, ServiceInfo]) -> str:
        mine = [s for s in every.values() if s.component == name]
        text = short(Components.model_fields[name].description)[:40]
        if not mine:
            return f"{name:<13} {text:<40} no services"
        cost = sum(s.footprint_mb for s in mine)
        return f"{name:<13} {text:<40} {cost:>5} MiB"

    def update_total(self) -> None:
        services = self.wizard.backend.services(self.wizard.context())
        total = sum(s.footprint_mb for s in services.values())
        names = ", ".join(sorted(services)) or "none"
        self.query_one("#total", Static).update(
            f"Total RAM: ~{total} MiB for {len(services)} service(s): {names}"
        )

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        name = (event.checkbox.id or "").removeprefix("comp-")
        self.state.set(f"components.{name}", event.value)
        self.update_total()
        self.update_nav()

    def blockers(self) -> list[str]:
        if not any(self.state.get("components").values()):
            return ["switch at least one component on"]
        return []
