"""The runtime interface every implementation (local, podman, docker) follows.

The planner only needs ``observe()``; ``apply`` calls the verbs. Observed state is data so that the
planner can be tested with fake observations and no process started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from appliance.stack import RenderedService

ProcState = Literal["running", "starting", "stopped", "exited", "failed", "done"]


@dataclass(frozen=True)
class ObservedService:
    """What a runtime sees of one service it owns."""

    name: str
    config_hash: str | None
    """Hash of the config it was created with (None: known but not completely created)."""
    state: ProcState
    pid: int | None = None
    """Main process id (local) ; container id goes in ``ref``."""
    ref: str | None = None
    """Runtime-specific handle: container id, supervisord program name."""
    started_at: float | None = None
    """Unix time the current process/container started."""
    loaded_files: dict[str, str] | None = None
    """Digests of the reload files it last read (``reloads.loaded``; the engine adds them)."""

    @property
    def running(self) -> bool:
        return self.state in ("running", "starting", "done")


class Runtime(Protocol):
    """Creates, starts, stops and removes services; reports what it owns."""

    name: str

    def ensure_ready(self) -> None:
        """Start or connect to the runtime's daemon; raise RuntimeUnavailableError if impossible."""

    def observe(self) -> dict[str, ObservedService]:
        """Every service this runtime owns for this state directory."""

    def create(self, service: RenderedService) -> None:
        """Create (or replace) the service with this config and start it."""

    def start(self, service: RenderedService) -> None:
        """Start an existing, stopped service."""

    def reload(self, service: RenderedService) -> None:
        """Write a running service's reload files and have it read them again without a restart
        (``reloads``: signalled, confirmed, recorded); raise when it did not take them."""

    def stop(self, name: str) -> None:
        """Stop a service; its definition and data stay."""

    def remove(self, name: str) -> None:
        """Stop and forget a service; its data stay."""

    def log_file(self, name: str) -> str | None:
        """Where the service's log is, for the user."""

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of the service's log."""

    def shutdown(self) -> None:
        """Stop the runtime's own daemon when it belongs to the appliance (local supervisord)."""

    def purge(self) -> None:
        """Delete the stack's data kept outside its state directory (container volumes)."""
