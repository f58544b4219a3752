"""Each host's services as ``cluster up`` brings them up: the progress a person follows.

Ansible reports tasks; a person waiting on ``up`` asks which services are up on which host. Every
unit is started and probed by the same task file (``roles/appliance_common/tasks/unit_start.yml``),
whose task names carry the unit's name: ``Start NAME`` and ``Wait for the health check of NAME``.
Those two results, read against the units each host was given (its rendered host variables), are
a service's states: ``running`` (already up, untouched), ``started`` (started, restarted or
reloaded), ``healthy`` (its probe answered), ``failed`` (its start or probe failed). A service is
ready once healthy, or once running or started when it has no probe; a healthy one found running
again (a unit two plays start, as the control host's object store) stays healthy. The names are
matched here alone, and a unit test holds them to the task file's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .inventory import units_by_name

START = "Start "
"""``unit_start.yml``'s task that starts (or restarts) a unit, followed by the unit's name."""
HEALTH = "Wait for the health check of "
"""``unit_start.yml``'s task that waits for a unit's probe, followed by the unit's name."""


@dataclass(frozen=True)
class ServiceEvent:
    """A service on a host reached ``state``; ``ready`` of the host's ``total`` services are ready."""

    host: str
    service: str
    state: str
    ready: int
    total: int


ServiceSink = Callable[[ServiceEvent], None]


@dataclass
class _Host:
    probed: dict[str, bool]
    """Each unit of the host, and whether it has a health probe."""
    states: dict[str, str] = field(default_factory=dict)

    def ready(self) -> int:
        return sum(1 for name, state in self.states.items() if _is_ready(state, self.probed[name]))


def _is_ready(state: str, probed: bool) -> bool:
    return state == "healthy" or (not probed and state in ("running", "started"))


def host_units(host_vars: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    """Per host, its units (``appliance_ROLE_units``) and whether each has a health probe."""
    return {
        host: {name: _probed(unit) for name, unit in units_by_name(variables).items()}
        for host, variables in host_vars.items()
    }


def _probed(unit: Mapping[str, Any]) -> bool:
    return bool((unit.get("health") or {}).get("url"))


class ServiceProgress:
    """Turns task results ``(host, status, task)`` into service events, one per change of state."""

    def __init__(self, units: Mapping[str, Mapping[str, bool]]) -> None:
        self.hosts = {host: _Host(dict(probed)) for host, probed in units.items()}

    def record(self, host: str, status: str, task: str) -> ServiceEvent | None:
        """The service event this task result makes, or None (not a unit's start or probe, a
        skipped task, or no change)."""
        tally = self.hosts.get(host)
        if tally is None or status == "skipped":
            return None
        if task.startswith(START) and task[len(START) :] in tally.probed:
            name = task[len(START) :]
            state = {"ok": "running", "changed": "started"}.get(status, "failed")
        elif task.startswith(HEALTH) and task[len(HEALTH) :] in tally.probed:
            name = task[len(HEALTH) :]
            state = "healthy" if status in ("ok", "changed") else "failed"
        else:
            return None
        was = tally.states.get(name)
        if was == state or (was == "healthy" and state == "running"):  # a unit started twice stays
            return None
        tally.states[name] = state
        return ServiceEvent(host, name, state, tally.ready(), len(tally.probed))
