"""Each host's services as ``cluster up`` brings them up: the progress a person follows.

Ansible reports tasks; a person waiting on ``up`` asks which services are up on which host. Every
unit is started and probed by the same task file (``roles/appliance_common/tasks/unit_start.yml``),
whose task names carry the unit's name: one of ``Start NAME``, ``Restart NAME`` and ``Reload NAME``
runs for it, then ``Wait for the health check of NAME``. Those results, read against the units each
host was given (its rendered host variables), are a service's states: ``running`` (already up,
untouched), ``started``, ``restarted`` (its files or environment changed), ``reloaded`` (its reload
files alone changed; started, as systemd's reload does for a unit that is not running),
``healthy`` (its probe answered), ``failed`` (its start or probe failed). A service is ready once
healthy, or once up by any of those when it has no probe; a healthy one found running again (a
unit two plays start, as the control host's object store) stays healthy. The names are matched
here alone, and a unit test holds them to the task file's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .inventory import units_by_name

START = "Start "
"""``unit_start.yml``'s task that starts a unit not running, followed by the unit's name."""
RESTART = "Restart "
"""``unit_start.yml``'s task that restarts a changed unit, followed by the unit's name."""
RELOAD = "Reload "
"""``unit_start.yml``'s task that reloads a unit whose reload files alone changed."""
ACTIONS = {START: "started", RESTART: "restarted", RELOAD: "reloaded"}
"""Each start task's name prefix and the state its change means (unchanged: ``running``)."""
UP = ("running", *ACTIONS.values())
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
    return state == "healthy" or (not probed and state in UP)


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
        action = next((prefix for prefix in ACTIONS if task.startswith(prefix)), None)
        if action is not None and task[len(action) :] in tally.probed:
            name = task[len(action) :]
            state = {"ok": "running", "changed": ACTIONS[action]}.get(status, "failed")
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
