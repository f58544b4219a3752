"""Step 7: the answers file exactly as it will be written, and the engine's plan for it.

The text comes from ``render_answers`` (the same function ``appliance init`` uses) and the plan
from ``Engine.plan().render()`` in a worker; Ctrl+E (or the button) opens a list of the steps
to go back to any of them. For a cluster the plan tab says which host runs which service (the
inventory's rule, ``Inventory.hosts_of``) and what ``up`` would do to each host's services (the
appliance's own planner per host) without contacting the hosts; ``appliance cluster plan`` also
asks Ansible what would change on each.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, Static, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState

from appliance.context import AppContext
from tui.screens.base import WizardScreen
from tui.screens.modals import StepPicker


def cluster_layout(ctx: AppContext, services: list[str]) -> str:
    """Per host, its groups and the services it will run; then what ``up`` would do to each
    host's services (``service_plans``: the answers against the record of the last ``up``, no host
    contacted), so a second pass through the wizard shows what would restart, move or stop."""
    from appliance.cluster.engine import service_plans
    from appliance.cluster.host_plan import render_host_plans
    from appliance.cluster.inventory import Inventory

    assert ctx.answers.cluster is not None
    inventory = Inventory(ctx.answers.cluster)
    lines = [f"cluster up: Ansible over SSH on {len(inventory.hosts)} hosts; each runs:"]
    for name, host in inventory.hosts.items():
        runs = [s for s in services if name in inventory.hosts_of(s)]
        groups = ",".join(host.groups) or "no group"
        lines.append(
            f"  {name} ({host.address}, {groups}): {', '.join(runs) or 'nothing but the common role'}"
        )
    lines += ["", "What up would do to each host's services:", "", render_host_plans(service_plans(ctx))]
    lines += ["", "`appliance cluster plan` also asks Ansible what would change on each host."]
    return "\n".join(lines)


class ReviewScreen(WizardScreen):
    """Answers file and plan, side by side in tabs."""

    STEP = "review"
    BINDINGS = [Binding("ctrl+e", "edit", "Edit a step", priority=True)]

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="toolbar"):
            yield Static(f"Writes {self.state.answers_out}", id="target")
            yield Button("Edit a step", id="edit", compact=True)
        with TabbedContent(id="review-tabs"):
            with TabPane("Answers file", id="tab-answers"):
                yield TextArea(
                    self.state.answers_text(),
                    read_only=True,
                    soft_wrap=False,
                    compact=True,
                    id="answers-text",
                )
            with TabPane("Plan", id="tab-plan"):
                yield Static("planning...", id="plan-text")

    def next_label(self) -> str:
        return "Install"

    def on_mount(self) -> None:
        super().on_mount()
        engine = self.wizard.engine()
        if self.state.is_cluster:
            services = list(self.wizard.backend.services(engine.ctx))
            self.run_worker(
                lambda: cluster_layout(engine.ctx, services), thread=True, exit_on_error=False, group="plan"
            )
            return
        self.run_worker(lambda: engine.plan().render(), thread=True, exit_on_error=False, group="plan")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "plan":
            return
        plan = self.query_one("#plan-text", Static)
        if event.state == WorkerState.SUCCESS:
            plan.update(str(event.worker.result))
        elif event.state == WorkerState.ERROR:
            plan.update(f"cannot plan: {event.worker.error}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "edit":
            self.action_edit()
        else:
            super().on_button_pressed(event)

    def action_edit(self) -> None:
        def chosen(step: str | None) -> None:
            if step:
                self.wizard.goto(step)

        self.app.push_screen(StepPicker(), chosen)
