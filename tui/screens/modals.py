"""Modal screens; each returns its answer through ``dismiss()`` to the callback that opened it.

- ``StepPicker``: which wizard step to go back to (or None).
- ``ConfirmScreen``: yes/no before an action that disturbs a running service.
- ``LogScreen``: a service's log tail, refreshed in a worker while it is open.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Log, OptionList, Static
from textual.widgets.option_list import Option
from textual.worker import Worker, WorkerState

from tui.state import STEPS


class StepPicker(ModalScreen[str | None]):
    """Pick a step to return to."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Go back to which step? (Enter chooses, Esc cancels)")
            yield OptionList(
                *(Option(f"{i}. {title}", id=name) for i, (name, title) in enumerate(STEPS[:-1], 1)),
                id="steps",
            )

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question."""

    BINDINGS = [Binding("escape", "no", "No"), Binding("y", "yes", "Yes"), Binding("n", "no", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question)
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="warning", compact=True)
                yield Button("No (n)", id="no", compact=True)

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class LogScreen(ModalScreen[None]):
    """The last lines of one service's log; ``read`` runs in a worker every couple of seconds."""

    BINDINGS = [Binding("escape,q", "close", "Close"), Binding("r", "reload", "Reload")]

    def __init__(self, name: str, read: Callable[[], str], refresh_seconds: float = 2.0) -> None:
        super().__init__()
        self.service = name
        self.read = read
        self.refresh_seconds = refresh_seconds
        self.last = ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(f"Log of {self.service} (last lines; Esc closes)", id="log-title")
            yield Log(id="log", highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()
        if self.refresh_seconds > 0:
            self.set_interval(self.refresh_seconds, self.action_reload)

    def action_reload(self) -> None:
        self.run_worker(self.read, thread=True, exit_on_error=False, exclusive=True, group="log")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.SUCCESS:
            text = str(event.worker.result)
        elif event.state == WorkerState.ERROR:
            text = f"cannot read the log: {event.worker.error}"
        else:
            return
        if text != self.last:
            self.last = text
            log = self.query_one("#log", Log)
            log.clear()
            log.write(text)

    def action_close(self) -> None:
        self.dismiss(None)
