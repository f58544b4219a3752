"""Step 8: write the answers file, then ``Engine.up`` in a thread worker, rendering its events.

Each service gets a progress bar driven by its apply steps (start, wait for health, healthy);
the overall bar is the engine's own progress. Cancel sets the engine's cancel event, so the
apply stops between steps and the next ``up`` (Resume here, or ``appliance up``) completes the
work. Success moves on to the Done screen.
"""

from __future__ import annotations

import threading

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Footer, Label, Log, ProgressBar, Static

from appliance.apply import Event
from appliance.errors import ApplianceError, CancelledError
from tui.messages import ApplyEvent, ApplyFinished, ApplyPlanned
from tui.screens.base import AppScreen
from tui.widgets.service_progress import ServiceProgress


class InstallScreen(AppScreen):
    """Progress per service, the current step, an event log and a clean cancel."""

    BINDINGS = [Binding("escape", "cancel", "Cancel install")]

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.running = False
        self.started_at: float | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"MLOps Appliance setup · installing · {self.state.answers_out}", id="step-title")
        with Vertical(id="body"):
            with Horizontal(classes="toolbar"):
                yield Label("overall ")
                yield ProgressBar(total=1.0, show_eta=False, id="overall")
            yield VerticalScroll(id="services")
            yield Static("writing the answers file...", id="current")
            yield Log(id="events", highlight=False)
        with Horizontal(id="nav"):
            yield Button("Cancel install", id="cancel", variant="error")
            yield Static("", id="why")
            yield Button("Back to review", id="review", disabled=True)
            yield Button("Resume install", id="resume", variant="primary", disabled=True)
        yield Footer()

    def on_mount(self) -> None:
        self.wizard.backend.write_answers(self.state.answers_out, self.state.answers_text())
        self.state.export_secret()
        self.log_line(f"wrote {self.state.answers_out}")
        self.start()

    def on_unmount(self) -> None:
        self.cancel.set()

    def start(self) -> None:
        self.cancel = threading.Event()
        self.running = True
        self.query_one("#cancel", Button).disabled = False
        self.query_one("#resume", Button).disabled = True
        self.query_one("#review", Button).disabled = True
        self.query_one("#current", Static).update("planning...")
        engine, cancel = self.wizard.engine(), self.cancel

        def on_event(event: Event) -> None:
            self.post_message(ApplyEvent(event))

        def work() -> None:
            try:
                plan = engine.plan()
                self.post_message(ApplyPlanned([a.service for a in plan.actions]))
                result = engine.up(on_event, cancel)
                self.post_message(ApplyFinished(result))
            except CancelledError as err:
                self.post_message(ApplyFinished(None, str(err), cancelled=True))
            except ApplianceError as err:
                self.post_message(ApplyFinished(None, str(err)))
            except Exception as err:  # shown to the user; the UI must survive any engine failure
                self.post_message(ApplyFinished(None, f"{type(err).__name__}: {err}"))

        self.run_worker(work, thread=True, exit_on_error=False, group="install")

    def log_line(self, text: str) -> None:
        self.query_one("#events", Log).write_line(text)

    def on_apply_planned(self, message: ApplyPlanned) -> None:
        box = self.query_one("#services", VerticalScroll)
        box.remove_children()
        box.mount_all(ServiceProgress(name) for name in message.services)
        if not message.services:
            self.log_line("nothing to do: the stack already matches the answers file")

    def on_apply_event(self, message: ApplyEvent) -> None:
        event: Event = message.event
        if self.started_at is None:
            self.started_at = event.at
        self.query_one("#overall", ProgressBar).update(progress=event.progress)
        self.log_line(f"+{event.at - self.started_at:5.1f}s {event.service:<14} {event.message}")
        if event.service == "*":
            return
        self.query_one("#current", Static).update(f"{event.service}: {event.message}")
        rows = [r for r in self.query(ServiceProgress) if r.service == event.service]
        if not rows:
            rows = [ServiceProgress(event.service)]
            self.query_one("#services", VerticalScroll).mount(rows[0])
        rows[0].advance(event.step)

    def on_apply_finished(self, message: ApplyFinished) -> None:
        self.running = False
        self.query_one("#cancel", Button).disabled = True
        if message.result is not None:
            self.query_one("#overall", ProgressBar).update(progress=1.0)
            self.query_one("#current", Static).update("installed")
            self.wizard.goto("done")
            return
        head = "CANCELLED" if message.cancelled else "FAILED"
        self.query_one("#current", Static).update(f"{head}: {message.error.splitlines()[0]}")
        for line in message.error.splitlines():
            self.log_line(line)
        self.query_one("#why", Static).update("Resume runs `up` again and finishes the work")
        self.query_one("#resume", Button).disabled = False
        self.query_one("#review", Button).disabled = False
        self.query_one("#resume", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.action_cancel()
        elif event.button.id == "resume":
            self.start()
        elif event.button.id == "review":
            self.wizard.goto("review")

    def action_cancel(self) -> None:
        if self.running and not self.cancel.is_set():
            self.cancel.set()
            self.query_one("#current", Static).update("cancelling: stopping after the current step...")
            self.log_line("cancel requested")
