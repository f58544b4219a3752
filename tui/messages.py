"""Messages that carry results from worker threads back to the screens.

Workers run engine calls off the UI thread; they ``post_message`` these (thread-safe) and the
screen updates its widgets in its own handlers, so no widget is touched from a thread.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message

from appliance.apply import ApplyResult, Event
from appliance.cluster.run import HostResult


class ApplyEvent(Message):
    """One engine apply event (a service changed step)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class ApplyPlanned(Message):
    """The services the install is about to touch, in plan order."""

    def __init__(self, services: list[str]) -> None:
        super().__init__()
        self.services = services


class ApplyFinished(Message):
    """The install ended: a result, or the error text (with its fix) and whether it was a cancel."""

    def __init__(self, result: ApplyResult | None, error: str = "", cancelled: bool = False) -> None:
        super().__init__()
        self.result = result
        self.error = error
        self.cancelled = cancelled


class DashboardRefreshed(Message):
    """A fresh dashboard snapshot: engine status plus metrics and run records."""

    def __init__(self, status: dict[str, Any], data: dict[str, Any], at: str) -> None:
        super().__init__()
        self.status = status
        self.data = data
        self.at = at


class ClusterProgress(Message):
    """One Ansible task result on one host during a cluster stage (preflight or up)."""

    def __init__(self, stage: str, host: str, status: str, task: str) -> None:
        super().__init__()
        self.stage = stage
        self.host = host
        self.status = status
        self.task = task


class ClusterStage(Message):
    """A cluster stage started (``results`` None) or ended with per-host results and an error, if any."""

    def __init__(
        self,
        stage: str,
        results: dict[str, HostResult] | None = None,
        error: str = "",
        cancelled: bool = False,
        failures: list[tuple[str, str, str]] | None = None,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.results = results
        self.error = error
        self.cancelled = cancelled
        self.failures = failures or []
        """A failed preflight's (host or check, problem, fix)."""
