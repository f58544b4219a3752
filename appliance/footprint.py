"""How much memory each service of the stack holds, for `appliance status` and the dashboard.

On the local runtime a service is a process tree (MLflow's server and its workers, Jupyter and
its kernels), so its figure is the proportional set size (PSS) summed over the tree: shared
pages are split between the processes that map them, so the services' figures add up to what the
stack really costs, where resident sizes would count shared libraries once per process. PSS comes
from /proc/PID/smaps_rollup (Linux 4.14+). In containers the engine's stats API gives the
container's memory usage (its cgroup, less the inactive page cache, as `docker stats` shows it).
Reading writes nothing; a process that is gone or unreadable counts as nothing.

The containers are read at once: an engine answers a stats call when its collector next samples
(dockerd once a second, `one-shot` or not), so one call after another made `appliance status` on
docker take a second per service (15 s for the lab stack, measured; about 2 s read together).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

PROC = Path("/proc")
MEMORY_READERS = 16
"""Services whose memory is read at the same time (a stack has about a dozen)."""


def pss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """PSS of one process in bytes, or None if it is gone or unreadable."""
    try:
        text = (proc / str(pid) / "smaps_rollup").read_text()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    return None


def _parents(proc: Path) -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/PID/stat; the name may hold spaces)."""
    parents = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1].isdigit():
            parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(pid: int, proc: Path = PROC) -> list[int]:
    """``pid`` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents(proc).items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in tree:
            continue
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_pss_bytes(pid: int, proc: Path = PROC) -> int | None:
    """PSS summed over the process tree of ``pid``; None when the root itself is unreadable."""
    if pss_bytes(pid, proc) is None:
        return None
    return sum(pss_bytes(p, proc) or 0 for p in process_tree(pid, proc))


def container_memory_bytes(stats: Any) -> int | None:
    """A container's memory in use from an engine's stats answer (Docker's or podman's shape)."""
    if isinstance(stats, bytes | str):
        try:
            stats = json.loads(stats)
        except ValueError:
            return None
    if not isinstance(stats, dict):
        return None
    mem = stats.get("memory_stats")
    if isinstance(mem, dict) and isinstance(mem.get("usage"), int):
        detail = mem.get("stats") or {}
        # cgroup v1 answers carry total_inactive_file (what `docker stats` subtracts there), v2 inactive_file
        cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        return max(0, int(mem["usage"]) - int(cache or 0))
    listed = stats.get("Stats")  # podman's libpod endpoint
    if isinstance(listed, list) and listed and isinstance(listed[0], dict):
        usage = listed[0].get("MemUsage")
        return int(usage) if isinstance(usage, int) else None
    return None


def service_memory(runtime: Any, name: str, pid: int | None, proc: Path = PROC) -> tuple[int | None, str]:
    """(bytes, how it was measured) of one running service."""
    if getattr(runtime, "name", "local") != "local":
        try:
            container = runtime.client.containers.get(runtime.container_name(name))
            found = container_memory_bytes(container.stats(stream=False))
        except Exception:  # the engine is away or the container went: fall back to /proc
            found = None
        if found is not None:
            return found, "container"
    if pid:
        return tree_pss_bytes(pid, proc), "pss"
    return None, "none"


def add_memory(status: dict[str, Any], runtime: Any, proc: Path = PROC) -> dict[str, Any]:
    """Add ``memory_bytes`` (None when not running or unreadable) and ``memory_source`` to each
    service of an ``Engine.status()`` answer, and ``memory_total_bytes`` to the answer."""
    services = status.get("services", {})
    running = [
        name
        for name, s in services.items()
        if s.get("health", "stopped") != "stopped" and s.get("state") != "done"  # done: a job
    ]

    def read(name: str) -> tuple[int | None, str]:
        return service_memory(runtime, name, services[name].get("pid"), proc)

    with ThreadPoolExecutor(max(1, min(MEMORY_READERS, len(running)))) as pool:
        found_by_name = dict(zip(running, pool.map(read, running), strict=True))
    total = 0
    for name, s in services.items():
        found, source = found_by_name.get(name, (None, "none"))
        s["memory_bytes"], s["memory_source"] = found, source
        total += found or 0
    status["memory_total_bytes"] = total
    return status


def human(n: int | None) -> str:
    """Bytes as MiB or GiB for a table cell ('-' when unknown)."""
    if n is None:
        return "-"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.0f} MiB"
