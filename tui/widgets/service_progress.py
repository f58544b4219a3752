"""One service's line on the install screen: name, progress bar and the step in words.

Apply events carry the stack's overall progress only, so a service's own bar follows its step:
an action started, waiting for its health check, healthy (or failed). The word beside the bar
keeps the state readable without colour.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, ProgressBar

STEP_PROGRESS = {
    "create": (0.3, "starting"),
    "recreate": (0.3, "restarting"),
    "reload": (0.3, "reloading"),
    "start": (0.3, "starting"),
    "stop": (0.5, "stopping"),
    "remove": (0.5, "removing"),
    "wait": (0.6, "waiting for health"),
    "healthy": (1.0, "HEALTHY"),
    "failed": (1.0, "FAILED"),
}


class ServiceProgress(Horizontal):
    """Progress of one service during an apply."""

    DEFAULT_CSS = """
    ServiceProgress { height: 1; }
    ServiceProgress > .service-name { width: 16; }
    ServiceProgress > .service-step { width: 20; padding-left: 1; }
    """

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service
        self.progress = 0.0
        self.step_word = "queued"

    def compose(self) -> ComposeResult:
        yield Label(self.service, classes="service-name")
        yield ProgressBar(total=1.0, show_eta=False, show_percentage=True)
        yield Label("queued", classes="service-step")

    def advance(self, step: str) -> None:
        """Move to ``step`` (an apply event's step name); events may arrive before mounting ends."""
        progress, self.step_word = STEP_PROGRESS.get(step, (self.progress, step))
        self.progress = max(self.progress, progress) if step != "failed" else progress
        self._show()

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        # Children mount one by one: an event can land when the bar is there but the word is not
        # yet; whatever is missing shows the current state in its own on_mount.
        bars, words = self.query(ProgressBar), self.query(".service-step")
        if bars and words:
            bars.first().update(progress=self.progress)
            words.first(Label).update(self.step_word)
