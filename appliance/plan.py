"""The planner: desired services vs what the runtime observes -> an ordered list of actions.

``plan()`` is a pure function of data (no process is started, nothing is read), so it is tested with
fake observations. Applying an unchanged stack plans zero actions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from appliance.errors import ApplianceError
from appliance.runtimes.base import ObservedService
from appliance.stack import RenderedService

Verb = Literal["create", "recreate", "reload", "start", "stop", "remove"]
"""reload: the service reads its changed files again without a restart (``unread_files`` here;
a cluster's units in ``appliance.cluster.host_plan``)."""
SYMBOL = {"create": "+", "recreate": "~", "reload": "^", "start": ">", "stop": "|", "remove": "-"}


@dataclass(frozen=True)
class Action:
    """One step of a plan."""

    verb: Verb
    service: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """Actions in the order they must run; removals and stops first, then by dependency waves."""

    actions: tuple[Action, ...]

    def __bool__(self) -> bool:
        return bool(self.actions)

    def to_dict(self) -> dict[str, list[dict[str, str]]]:
        return {"actions": [asdict(a) for a in self.actions]}

    def render(self) -> str:
        if not self.actions:
            return "nothing to do: the stack is as the answers file describes it"
        width = max(len(a.service) for a in self.actions)
        return "\n".join(
            f"{SYMBOL[a.verb]} {a.verb:<8} {a.service:<{width}}  ({a.reason})" for a in self.actions
        )


def waves(services: Mapping[str, RenderedService]) -> list[list[str]]:
    """Services grouped in dependency levels: every service after all it depends on."""
    remaining = {name: set(svc.depends_on) & set(services) for name, svc in services.items()}
    levels: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if deps <= done)
        if not ready:
            cycle = ", ".join(sorted(remaining))
            raise ApplianceError(f"services depend on each other in a cycle: {cycle}", fix="break the cycle")
        levels.append(ready)
        done.update(ready)
        for name in ready:
            del remaining[name]
    return levels


def _action_for(svc: RenderedService, seen: ObservedService | None) -> Action | None:
    if seen is None:
        return Action("create", svc.name, "new")
    if seen.config_hash is None:
        return Action("create", svc.name, "incomplete from an interrupted run")
    if seen.config_hash != svc.config_hash:
        return Action("recreate", svc.name, "config changed")
    if not seen.running:
        return Action("start", svc.name, f"{seen.state}")
    unread = unread_files(svc, seen)
    if unread:
        why = "changed" if seen.loaded_files is not None else "not recorded as read"
        reason = f"{', '.join(unread)} {why}, which it reads again without a restart"
        return Action("reload", svc.name, reason)
    return None


def unread_files(svc: RenderedService, seen: ObservedService) -> list[str]:
    """The files ``svc`` reads again on a reload whose rendering now its process has not read:
    only those changed and nothing else (``config_hash`` equal), it is reloaded, not recreated."""
    read = seen.loaded_files or {}
    return sorted(name for name, digest in svc.reload_digests.items() if read.get(name) != digest)


def plan(desired: Mapping[str, RenderedService], observed: Mapping[str, ObservedService]) -> Plan:
    """What to do so that the runtime runs exactly ``desired``."""
    actions: list[Action] = [
        Action("remove", name, "no longer in the stack") for name in sorted(observed) if name not in desired
    ]
    for level in waves(desired):
        for name in level:
            action = _action_for(desired[name], observed.get(name))
            if action:
                actions.append(action)
    return Plan(tuple(actions))


def plan_down(desired: Mapping[str, RenderedService], observed: Mapping[str, ObservedService]) -> Plan:
    """Stop every running service, dependents before what they depend on."""
    order = [name for level in reversed(waves(desired)) for name in level]
    order += sorted(set(observed) - set(order))
    return Plan(
        tuple(
            Action("stop", name, "down")
            for name in order
            if name in observed and observed[name].running and observed[name].state != "done"
        )
    )
