"""Renders apply events for a person: one line per step with elapsed time and an overall bar."""

from __future__ import annotations

import time

from rich.console import Console
from rich.markup import escape

from appliance.apply import Event

STYLE = {
    "healthy": "green",
    "failed": "red",
    "create": "cyan",
    "recreate": "yellow",
    "reload": "yellow",
    "start": "cyan",
    "stop": "magenta",
    "remove": "magenta",
    "wait": "dim",
    "done": "bold green",
}


class ProgressPrinter:
    """Prints each event as it arrives (works on a terminal and in CI logs alike)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.started = time.monotonic()

    def __call__(self, event: Event) -> None:
        elapsed = time.monotonic() - self.started
        filled = int(event.progress * 20)
        bar = escape("[" + "#" * filled + "." * (20 - filled) + "]")
        style = STYLE.get(event.step, "")
        self.console.print(
            f"[{elapsed:6.1f}s] {bar} {event.service:<14} [{style}]{event.step:<9}[/] {event.message}",
            markup=True,
        )
