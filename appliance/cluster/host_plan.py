"""The appliance's own plan per host, beside Ansible's check mode in ``cluster plan``.

Ansible's check mode says which tasks would change a host, in its own words ("Write the unit
files", "Install the virtualenv's packages"). A person deciding whether to run ``up`` asks which
services will start, restart or stop where: the one-host ``appliance plan``'s question. The answer
comes from data alone, as the one-host planner's does: the units each host was given by the last
``up`` (``applied``: kept apart from the inventory ``plan`` and ``preflight`` write) against the
units rendered now. A unit whose command, environment, files or start settings
differ is recreated (its service restarts), unless the only files that differ are ones its service
reads again on a reload (rendered with ``reload``: the store's guard), when it is reloaded; a unit
new on a host is created; one no longer on it
is removed (``roles/appliance_common/tasks/retire.yml``); a host no longer in the answers has every
unit stopped, drained first; and on a host ``cluster down`` stopped, or one the last ``up`` did not
finish on, every unit starts again. Values are
never shown (an environment may hold a password), only which keys differ.

It does not see what changed on a host behind the appliance's back: Ansible's check mode, run
beside it, does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from appliance.plan import Action, Plan

from .applied import DOWN, PENDING
from .inventory import units_by_name

UNIT_FIELDS = ("command", "env", "files", "oneshot", "restart", "after", "health", "description")
"""The parts of a rendered unit (``appliance.cluster.units.unit``) that the roles write into its
systemd unit or files: a difference in any of them restarts the service."""


def _reloaded_files(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``file KEY`` for each file of the new rendering its service reads again on a reload that
    differs from the old one's (a file new to the unit is read at its start, so not among them)."""
    before = {f["key"]: f["value"] for f in old.get("files") or []}
    return [
        f"file {f['key']}"
        for f in new.get("files") or []
        if f.get("reload") and f["key"] in before and before[f["key"]] != f["value"]
    ]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two renderings of a unit, named without values: ``env KEY`` for an
    environment variable, ``file KEY`` for a config file, the field's name otherwise."""
    found: list[str] = []
    for field in UNIT_FIELDS:
        before, after = old.get(field), new.get(field)
        if before == after:
            continue
        if field == "env" and isinstance(before, dict) and isinstance(after, dict):
            found += [f"env {k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        elif field == "files" and isinstance(before, list) and isinstance(after, list):
            old_files = {f["key"]: f["value"] for f in before}
            new_files = {f["key"]: f["value"] for f in after}
            keys = sorted(set(old_files) | set(new_files))
            found += [f"file {k}" for k in keys if old_files.get(k) != new_files.get(k)]
        else:
            found.append(field)
    return found


def _reason(changed: list[str]) -> str:
    shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    return f"{shown} changed"


def _host_actions(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Iterator[Action]:
    before = units_by_name(old) if old is not None else {}
    after = units_by_name(new)
    for name in before:
        if name not in after:
            yield Action("remove", name, "no longer on this host: stopped, its unit removed, its data kept")
    for name, unit in after.items():
        if name not in before:
            yield Action("create", name, "first up of this host" if old is None else "new on this host")
            continue
        changed = _differences(before[name], unit)
        reloaded = _reloaded_files(before[name], unit)
        if changed and changed == reloaded:
            yield Action("reload", name, _reason(changed) + ", which it reads again without a restart")
        elif changed:
            yield Action("recreate", name, _reason(changed))
        elif old is not None and old.get(PENDING):
            yield Action("start", name, "the last up did not finish on this host")
        elif old is not None and old.get(DOWN):
            yield Action("start", name, "stopped by cluster down")


def plan_hosts(
    applied: Mapping[str, Mapping[str, Any]],
    desired: Mapping[str, Mapping[str, Any]],
    limit: list[str] | None = None,
) -> dict[str, Plan]:
    """Per host, what ``up`` would do to its services: ``applied`` is each host's variables as the
    last ``up`` gave them (empty before the first), ``desired`` as rendered now. A host only in
    ``applied`` leaves the cluster. ``limit`` keeps those hosts alone, as ``--limit`` does; hosts
    leave the cluster only in an ``up`` without it, so none is shown leaving under a limit."""
    plans: dict[str, Plan] = {}
    for host, variables in desired.items():
        if not limit or host in limit:
            plans[host] = Plan(tuple(_host_actions(applied.get(host), variables)))
    if not limit:
        for host in sorted(set(applied) - set(desired)):
            reason = "the host left the answers: drained, then stopped (its data stay)"
            stopped = reversed(units_by_name(applied[host]))  # dependents first
            plans[host] = Plan(tuple(Action("stop", name, reason) for name in stopped))
    return plans


NOTHING = "no service to start, restart or stop"


def render_host_plans(plans: Mapping[str, Plan]) -> str:
    """Each host's plan under its name, in ``Plan.render``'s words: what ``cluster plan`` prints
    after its table, and what the wizard's review shows before a cluster ``up``."""
    blocks = []
    for host, planned in sorted(plans.items()):
        shown = planned.render() if planned else NOTHING
        blocks.append(f"{host}:\n" + "\n".join(f"  {line}" for line in shown.splitlines()))
    return "\n\n".join(blocks)
