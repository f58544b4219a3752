"""What ``cluster up`` applied to each host, kept apart from the inventory every command writes.

Every cluster command writes ``inventory/hosts.yml`` from the answers as they are now, ``plan``
and ``preflight`` included. What runs on the hosts is what the ``up`` commands applied, host by
host: a host taken out of the answers and planned before the ``up`` is still running, and must
still be drained and stopped by that ``up``; a host outside an ``up --limit`` keeps what an earlier
``up`` gave it, and a host in the answers that no ``up`` reached runs nothing.

``inventory/applied.yml`` records that: an inventory like hosts.yml (groups included, so the
drain playbook still finds a removed serving host in ``serving``) whose hosts carry the variables
last applied to them. Two marks on a host: ``appliance_cluster_pending`` while an ``up`` runs on
it and after one that did not finish there (failed, unreachable, interrupted), so the next
``up --limit`` treats it as joining and ``plan`` shows its units starting; and
``appliance_cluster_down`` once ``cluster down`` stopped it. The file is replaced whole
(``run.dump_inventory``), never left half written, and changed only under the state lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .run import HostResult, dump_inventory, inventory_path, load_inventory

DOWN = "appliance_cluster_down"
"""The host variable that marks a host whose units ``cluster down`` stopped."""
PENDING = "appliance_cluster_pending"
"""The host variable that marks a host an ``up`` began on and did not finish."""
DONE = ("ok", "changed")
"""The ``HostResult.state`` of a host an ``up`` finished on."""
LAST_TASK = "Find the appliance's units on this host"
"""The first task of ``site.yml``'s last play (``roles/appliance_common/tasks/retire.yml``): a
host that reached it went through every play. A host's state alone does not say so: a failed
host in a ``serial`` play (the storage start, the serving rollout) ends the whole run, and the
hosts that had not reached the later plays still report ok. A unit test holds the name to the
task file."""


def applied_path(folder: Path) -> Path:
    """The record in the cluster folder ``folder``."""
    return folder / "inventory" / "applied.yml"


def needs_migrating(folder: Path) -> bool:
    """A state folder from before the record, where an ``up`` ran (its ansible-runner folder is
    there), and no record yet."""
    last = inventory_path(folder)
    return not applied_path(folder).exists() and last.exists() and (folder / "runner" / "up").is_dir()


def migrate(folder: Path) -> None:
    """Such a folder's last inventory becomes the record once, before any command writes another
    (that release's ``up`` read its removed hosts from it too). Under the state lock."""
    if needs_migrating(folder):
        dump_inventory(load_inventory(inventory_path(folder)), applied_path(folder))


def applied_inventory(folder: Path) -> Path | None:
    """The record's file for a command that writes nothing (``status``, ``train``): where an
    older release's ``up`` left no record yet (``migrate``), its last inventory; None before any
    ``up``."""
    if applied_path(folder).exists():
        return applied_path(folder)
    return inventory_path(folder) if needs_migrating(folder) else None


def load_applied(folder: Path) -> dict[str, Any]:
    """The record (``all`` with ``hosts`` and ``children``; ``applied_inventory``'s file), or {}
    before the first ``up``."""
    path = applied_inventory(folder)
    data = load_inventory(path) if path is not None else {}
    if data:
        data.setdefault("all", {})
        data["all"]["hosts"] = data["all"].get("hosts") or {}
        data["all"]["children"] = data["all"].get("children") or {}
    return data


def applied_hosts(folder: Path) -> dict[str, dict[str, Any]]:
    """Each host an ``up`` brought up (or began on), with the variables it applied there."""
    return dict(load_applied(folder).get("all", {}).get("hosts") or {})


def groups_of(data: Mapping[str, Any], host: str) -> set[str]:
    """The groups ``host`` is in, in an inventory's data."""
    children = data.get("all", {}).get("children") or {}
    return {g for g, members in children.items() if host in ((members or {}).get("hosts") or {})}


def joining(folder: Path, written: Path, hosts: Iterable[str]) -> list[str]:
    """Of ``hosts``, those the other hosts' configuration may not list yet: never brought up, an
    ``up`` on them unfinished, or in other groups than the record says (``written``: the
    inventory this command wrote)."""
    record = load_applied(folder)
    known = record.get("all", {}).get("hosts") or {}
    new = load_inventory(written)
    return [
        h
        for h in hosts
        if h not in known or known[h].get(PENDING) or groups_of(record, h) != groups_of(new, h)
    ]


def _empty() -> dict[str, Any]:
    return {"all": {"hosts": {}, "children": {}}}


def _take(record: dict[str, Any], new: Mapping[str, Any], host: str) -> None:
    """``host``'s variables and groups in ``record`` become those of ``new``."""
    _drop(record, host)
    record["all"]["hosts"][host] = dict(new["all"]["hosts"][host])
    children = record["all"]["children"]
    for group in groups_of(new, host):
        entry = children.get(group) or {}
        entry["hosts"] = (entry.get("hosts") or {}) | {host: None}
        children[group] = entry


def _drop(record: dict[str, Any], host: str) -> None:
    record["all"]["hosts"].pop(host, None)
    for members in record["all"]["children"].values():
        ((members or {}).get("hosts") or {}).pop(host, None)


def record_started(folder: Path, written: Path, hosts: Iterable[str]) -> None:
    """Before ``up`` runs on ``hosts``: each is marked pending, with the variables it had (a host
    new to the record takes the new ones), so an ``up`` interrupted anywhere leaves them known."""
    record = load_applied(folder) or _empty()
    new = load_inventory(written)
    record["all"]["vars"] = new["all"].get("vars") or {}
    for host in hosts:
        if host not in record["all"]["hosts"]:
            _take(record, new, host)
        record["all"]["hosts"][host][PENDING] = True
    dump_inventory(record, applied_path(folder))


def record_finished(
    folder: Path, written: Path, results: Mapping[str, HostResult], reached_end: Iterable[str]
) -> None:
    """After ``up``: each host it finished on (``DONE``, and it ``reached_end``: ``LAST_TASK``
    ran there) takes its new variables and groups, its marks cleared; the others stay pending."""
    record = load_applied(folder) or _empty()
    new = load_inventory(written)
    ended = set(reached_end)
    for host, result in results.items():
        if result.state in DONE and host in ended and host in new["all"]["hosts"]:
            _take(record, new, host)
    dump_inventory(record, applied_path(folder))


def forget(folder: Path, hosts: Iterable[str]) -> None:
    """Hosts that left the cluster (stopped, or out of reach): out of the record."""
    hosts = list(hosts)
    record = load_applied(folder) if hosts else {}
    if not record:
        return
    for host in hosts:
        _drop(record, host)
    dump_inventory(record, applied_path(folder))


def record_down(folder: Path, hosts: Iterable[str]) -> None:
    """After ``down`` on ``hosts``: each one recorded is marked stopped, so that ``plan`` shows
    its units starting again."""
    data = load_applied(folder)
    known = data.get("all", {}).get("hosts") or {}
    marked = [h for h in hosts if h in known]
    if not marked:
        return
    for host in marked:
        known[host][DOWN] = True
    dump_inventory(data, applied_path(folder))
