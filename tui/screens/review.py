"""Step 7: the answers file exactly as it will be written, and the engine's plan for it.

The text comes from ``render_answers`` (the same function ``appliance init`` uses) and the plan
from ``Engine.plan().render()`` in a worker; Ctrl+E (or the button) opens a list of the steps
to go back to any of them.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, Static, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState

from tui.screens.base import WizardScreen
from tui.screens.modals import StepPicker


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
