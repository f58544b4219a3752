"""The memory figures of `appliance status`: PSS over a process tree, container stats answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from appliance.footprint import (
    add_memory,
    container_memory_bytes,
    human,
    process_tree,
    pss_bytes,
    service_memory,
    tree_pss_bytes,
)


def fake_proc(root: Path, procs: dict[int, tuple[int, str, int | None]]) -> Path:
    """A /proc with pid -> (parent, name, PSS in kB or None for an unreadable smaps_rollup)."""
    for pid, (parent, name, pss) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "stat").write_text(f"{pid} ({name}) S {parent} {pid} {pid} 0 -1 4194560\n")
        if pss is not None:
            (d / "smaps_rollup").write_text(
                "00400000-7ffd0000 ---p 00000000 00:00 0    [rollup]\n"
                f"Rss:              {pss * 2} kB\nPss:              {pss} kB\nPss_Anon:  1 kB\n"
            )
    (root / "self").mkdir()  # not a pid: skipped
    return root


def test_tree_pss_sums_the_service_tree_and_nothing_else(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            1: (0, "init", 10),
            100: (1, "mlflow server", 1000),  # a name with a space and a ) is still parsed
            101: (100, "uvicorn) worker", 500),
            102: (101, "huey", 250),
            103: (100, "gone", None),  # exited between listing and reading: counts as nothing
            200: (1, "prometheus", 4000),
        },
    )
    assert sorted(process_tree(100, proc)) == [100, 101, 102, 103]
    assert pss_bytes(101, proc) == 500 * 1024
    assert tree_pss_bytes(100, proc) == (1000 + 500 + 250) * 1024
    assert tree_pss_bytes(200, proc) == 4000 * 1024
    assert tree_pss_bytes(999, proc) is None  # not running


def test_pss_of_this_process_and_its_child_is_real() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in process_tree(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.05)
        own = pss_bytes(os.getpid())
        assert own is not None and own > 1 << 20  # a Python interpreter holds more than 1 MiB
        total = tree_pss_bytes(os.getpid())
        assert total is not None and total > own  # the child is part of the tree
    finally:
        child.kill()
        child.wait()


def test_container_stats_answers_of_docker_and_podman() -> None:
    docker = {"memory_stats": {"usage": 300 << 20, "stats": {"inactive_file": 100 << 20}}}
    assert container_memory_bytes(docker) == 200 << 20
    cgroup_v1 = {"memory_stats": {"usage": 50 << 20, "stats": {"total_inactive_file": 10 << 20}}}
    assert container_memory_bytes(cgroup_v1) == 40 << 20
    assert container_memory_bytes(b'{"Stats": [{"MemUsage": 1234}]}') == 1234
    assert container_memory_bytes({"memory_stats": {}}) is None
    assert container_memory_bytes(b"not json") is None


def test_add_memory_reads_running_services_only(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {1: (0, "init", 1), 10: (1, "a", 100), 11: (10, "a2", 50)})
    status = {
        "services": {
            "a": {"health": "healthy", "pid": 10, "state": "running"},
            "b": {"health": "stopped", "pid": None, "state": "absent"},
        }
    }
    local = SimpleNamespace(name="local")
    assert service_memory(local, "a", 10, proc) == (150 * 1024, "pss")
    add_memory(status, local, proc)
    assert status["services"]["a"]["memory_bytes"] == 150 * 1024
    assert status["services"]["b"]["memory_bytes"] is None
    assert status["services"]["b"]["memory_source"] == "none"
    assert status["memory_total_bytes"] == 150 * 1024


def test_a_container_runtime_asks_the_engine(tmp_path: Path) -> None:
    class Container:
        def stats(self, stream: bool) -> dict:
            assert stream is False
            return {"memory_stats": {"usage": 64 << 20, "stats": {"inactive_file": 0}}}

    asked = []

    def get(name: str) -> Container:
        asked.append(name)
        return Container()

    runtime = SimpleNamespace(
        name="podman",
        container_name=lambda service: f"appliance-{service}",
        client=SimpleNamespace(containers=SimpleNamespace(get=get)),
    )
    assert service_memory(runtime, "mlflow", 1234) == (64 << 20, "container")
    assert asked == ["appliance-mlflow"]


def test_human() -> None:
    assert human(None) == "-"
    assert human(300 << 20) == "300 MiB"
    assert human(3 << 29) == "1.50 GiB"
