"""The frame every wizard step shares: a title with the step number, the body, Back/Next.

A step says what stops the way forward by returning ``blockers()``; the Next button is disabled
and the first blocker is shown beside it, so a busy port or a bad endpoint is visible where the
user is, not after an install fails. Ctrl+N and Esc move forward and back from anywhere, even
while typing in a field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Static

from tui.state import STEP_NAMES, STEPS, WizardState

if TYPE_CHECKING:
    from tui.app import ApplianceApp


class AppScreen(Screen[None]):
    """A screen with typed access to the app, its state and backend."""

    @property
    def wizard(self) -> ApplianceApp:
        from tui.app import ApplianceApp

        return cast(ApplianceApp, self.app)

    @property
    def state(self) -> WizardState:
        return self.wizard.state


class WizardScreen(AppScreen):
    """One wizard step; subclasses give ``STEP``, ``compose_body`` and optionally ``blockers``."""

    STEP: ClassVar[str] = ""
    BINDINGS = [
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("escape", "back", "Back"),
    ]

    def compose(self) -> ComposeResult:
        number = STEP_NAMES.index(self.STEP) + 1
        title = dict(STEPS)[self.STEP]
        yield Static(f"MLOps Appliance setup · step {number}/{len(STEPS)} · {title}", id="step-title")
        with Vertical(id="body"):
            yield from self.compose_body()
        with Horizontal(id="nav"):
            yield Button("Back", id="back", disabled=number == 1)
            yield Static("", id="why")
            yield Button(self.next_label(), id="next", variant="primary")
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def next_label(self) -> str:
        return "Next"

    def blockers(self) -> list[str]:
        """Reasons the user cannot go on yet; empty when the step is complete."""
        return []

    def on_mount(self) -> None:
        self.update_nav()

    def update_nav(self) -> None:
        """Enable Next only when nothing blocks, and say why otherwise."""
        blockers = self.blockers()
        self.query_one("#next", Button).disabled = bool(blockers)
        why = self.query_one("#why", Static)
        why.update(f"blocked: {blockers[0]}" if blockers else "")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "next":
            event.stop()
            self.action_next()
        elif event.button.id == "back":
            event.stop()
            self.action_back()

    def action_next(self) -> None:
        blockers = self.blockers()
        if blockers:
            self.notify(blockers[0], title="Cannot continue", severity="warning")
            return
        self.wizard.next_step()

    def action_back(self) -> None:
        self.wizard.previous_step()
