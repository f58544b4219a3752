"""What the last ``cluster up`` applied to each host, kept apart from the inventory every command
writes.

Every cluster command writes ``inventory/hosts.yml`` from the answers as they are now, ``plan``
and ``preflight`` included. What runs on the hosts is what the ``up`` commands applied, host by
host: a host taken out of the answers and planned before the ``up`` is still running, and must
still be drained and stopped by that ``up``; a host outside an ``up --limit`` keeps what an earlier
``up`` gave it. ``inventory/applied.yml`` records that: an inventory like hosts.yml whose hosts
carry the variables last applied to them, and ``appliance_cluster_down: true`` on a host that
``cluster down`` stopped since. ``up`` stops the hosts it lists that the answers no longer do,
and ``plan`` compares the answers against it (``host_plan``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run import dump_inventory, inventory_path, load_inventory

DOWN = "appliance_cluster_down"
"""The host variable that marks a host whose units ``cluster down`` stopped."""


def applied_path(folder: Path) -> Path:
    """The record in the cluster folder ``folder``."""
    return folder / "inventory" / "applied.yml"


def applied_inventory(folder: Path) -> Path:
    """The record's file, for a playbook to run with. A state folder from before the record
    existed, where an ``up`` ran (its ansible-runner folder is there), falls back on the last
    inventory written, as that release did; before any ``up`` there is nothing applied (the
    inventory ``preflight`` or ``plan`` wrote is not)."""
    path = applied_path(folder)
    if path.exists() or not (folder / "runner" / "up").is_dir():
        return path
    return inventory_path(folder)


def load_applied(folder: Path) -> dict[str, Any]:
    """The inventory the last ``up`` applied, or {} before the first."""
    return load_inventory(applied_inventory(folder))


def applied_hosts(folder: Path) -> dict[str, dict[str, Any]]:
    """Each host the last ``up`` commands brought up, with the variables they applied to it."""
    return dict(load_applied(folder).get("all", {}).get("hosts") or {})


def record_up(folder: Path, written: Path, limit: list[str] | None, kept: list[str]) -> None:
    """After ``up`` wrote ``written`` and before it runs: the hosts it runs on (``limit``, or
    every host) take their new variables; a host outside the limit keeps what it had, and one
    never brought up before takes the new ones (the next ``plan`` shows it as new). ``kept``:
    hosts that left the answers but failed to stop, recorded as they were (with their groups),
    so the next ``up`` drains and stops them again."""
    before = load_applied(folder)
    old_hosts = before.get("all", {}).get("hosts") or {}
    new = load_inventory(written)
    hosts = new["all"]["hosts"]
    for host in hosts:
        if limit and host not in limit and host in old_hosts:
            hosts[host] = old_hosts[host]
    children = new["all"].setdefault("children", {})
    for host in kept:
        if host in old_hosts:
            hosts[host] = old_hosts[host]
            for group, members in (before["all"].get("children") or {}).items():
                if host in ((members or {}).get("hosts") or {}):
                    children.setdefault(group, {}).setdefault("hosts", {})[host] = None
    dump_inventory(new, applied_path(folder))


def record_down(folder: Path, hosts: list[str]) -> None:
    """After ``down`` on ``hosts``: each is marked stopped, so that ``plan`` shows its units
    starting again."""
    data = load_applied(folder)
    known = data.get("all", {}).get("hosts") or {}
    if not data or not any(host in known for host in hosts):
        return
    for host in hosts:
        if host in known:
            known[host][DOWN] = True
    dump_inventory(data, applied_path(folder))
